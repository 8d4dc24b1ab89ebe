"""Cascade benchmark on real Fashion-MNIST: calibration, the threshold guarantee, cascade accuracy, serving speed.

What it does, through the product's own code paths:

1. imports the first ``--limit`` images of each Fashion-MNIST source split (Debian ``dataset-fashion-mnist``) and
   makes splits (val / calib / stream fixed, test = the source's test images);
2. labels ``--n-train`` random train items + val + calib with the **SIMULATED** teacher (2 passes + tie-break);
3. trains the default image student (``image-cnn``) on those labels;
4. calibrates on the calib split (teacher labels as reference) for each goal given (accuracy target and/or teacher
   budget) and runs the cascade on the test split with the simulated teacher answering deferred items (one pass);
   reports accuracy vs gold with 95 % Wilson CIs and the teacher fraction; then labels every test item like the
   calib split (2 passes) and scores the accepted answers against those teacher labels -- what the guarantee is
   about -- and against gold;
5. serving speed, side by side on this machine: in-process ``Cascade.predict_items`` (store items, batched) and
   ``POST /v1/predict`` over loopback HTTP (one image per request; sequential and 8 concurrent clients), student
   answers only (threshold 0), so the numbers measure the service, not the simulated teacher's latency.

    python benchmarks/bench_cascade.py [--limit 6000] [--n-train 3000] [--goals acc:0.85,budget:0.1]

Teacher answers come from the SIMULATED teacher (gold labels through an error model, ~85 % accurate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from llm_flywheel.store.workspace import Workspace

DATASET = "fashion-mnist"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wilson(k: int, n: int) -> tuple[float, float]:
    z, p = 1.96, k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def pct(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def import_dataset(ws: Workspace, limit: int) -> None:
    from llm_flywheel.data.registry import add_dataset

    with ws.store() as s:
        if DATASET in s.dataset_names():
            return
    log(f"importing Fashion-MNIST (first {limit} of each source split)")
    log(add_dataset(ws, DATASET, limit=limit, val=300, calib=1000, stream=500, progress=False).summary())


def prepare(ws: Workspace, n_train: int, seed: int, teacher) -> None:
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items

    with ws.store() as s:
        train = [it.id for it in s.items(DATASET, split="train")]
        other = [it.id for it in s.items(DATASET, split=("val", "calib"))]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(train)[:n_train].tolist())
    log(f"labelling {len(chosen)} train + {len(other)} val/calib items with the SIMULATED teacher (cached)")
    res = label_items(ws, DATASET, chosen + other, teacher, LabelConfig(passes=2, concurrency=32), progress=False)
    log(f"  calls {res.calls_made}, cached {res.answers_cached}")


def train(ws: Workspace, seed: int, epochs: int | None) -> str:
    from llm_flywheel.pipeline.training import train_student

    version = f"bench-cascade-image-cnn-s{seed}"
    with ws.store() as s:
        if s.query("SELECT 1 FROM models WHERE version=?", (version,)):
            return version
        labels = s.effective_labels(DATASET, split="train")
    log(f"training image-cnn on {len(labels)} teacher labels")
    tm = train_student(ws, DATASET, kind="image-cnn", labels=labels, seed=seed, epochs=epochs, progress=False,
                       version=version)
    log(f"  val acc (teacher labels) {tm.metrics['val_acc']:.3f}, {tm.metrics['train_seconds']} s")
    return version


def run_goal(ws: Workspace, version: str, goal: str, teacher, delta: float) -> dict:
    from llm_flywheel.pipeline.calibration import calibrate
    from llm_flywheel.pipeline.cascade import Cascade

    kind, _, val = goal.partition(":")
    kw = {"target_accuracy": float(val)} if kind == "acc" else {"max_teacher_fraction": float(val)}
    rep = calibrate(ws, DATASET, version, delta=delta, **kw)
    ch = rep["choice"]
    with ws.store() as s:
        items = s.items(DATASET, split="test")
    casc = Cascade.from_store(ws, DATASET, version=version, teacher=teacher)
    answers = casc.predict_items(items, origin="eval", log=False, teacher_concurrency=32)
    gold = [it.gold_label for it in items]
    n = len(items)
    acc = [a.source == "student" for a in answers]
    out = {
        "goal": goal, "delta": delta, "threshold": ch["threshold"], "feasible": ch["feasible"],
        "temperature": rep["temperature"], "ece_before": rep["ece_before"], "ece_after": rep["ece_after"],
        "calib_coverage": ch["coverage"], "calib_accuracy_accepted": ch["accuracy_accepted"],
        "calib_accuracy_bound": ch["accuracy_bound"], "n_test": n,
        "test_teacher_fraction": 1 - sum(acc) / n,
        "student_acc": pct(sum(a.student_label == g for a, g in zip(answers, gold)), n),
        "cascade_acc": pct(sum(a.label == g for a, g in zip(answers, gold)), n),
    }
    k_acc = sum(acc)
    if k_acc:
        out["accepted_acc_gold"] = pct(sum(a.label == g for a, g, ok in zip(answers, gold, acc) if ok), k_acc)
    out["_accepted"] = {it.id: a.label for it, a, ok in zip(items, answers, acc) if ok}
    return out


def guarantee_check(ws: Workspace, results: list[dict], teacher) -> None:
    """Label every test item like the calib split (2 passes + tie-break) and score each goal's accepted answers
    against those teacher labels -- the quantity the accuracy guarantee is about."""
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items

    with ws.store() as s:
        ids = [it.id for it in s.items(DATASET, split="test")]
    log(f"labelling all {len(ids)} test items with the SIMULATED teacher (2 passes) to check the guarantee")
    label_items(ws, DATASET, ids, teacher, LabelConfig(passes=2, concurrency=32), progress=False)
    with ws.store() as s:
        tl = s.effective_labels(DATASET, split="test")
    for r in results:
        acc = r.pop("_accepted")
        ref = [(lab, tl[i]) for i, lab in acc.items() if i in tl]
        if ref:
            r["accepted_acc_teacher_labels"] = pct(sum(a == t for a, t in ref), len(ref))


def serving_speed(ws: Workspace, version: str, n_req: int) -> dict:
    import concurrent.futures as cf

    import httpx

    from llm_flywheel.pipeline.cascade import Cascade
    from llm_flywheel.interfaces.serve import create_app
    from llm_flywheel.teachers.simulated import serve_app

    with ws.store() as s:
        items = s.items(DATASET, split="test", limit=n_req)
    pngs = [(ws.root / it.blob_path).read_bytes() for it in items]
    casc = Cascade.from_store(ws, DATASET, version=version, threshold=0.0)
    casc.predict_items(items[:64], log=False)  # warm-up
    t = time.perf_counter()
    casc.predict_items(items, log=False)
    inproc = len(items) / (time.perf_counter() - t)

    async def raw_seq() -> float:
        t0 = time.perf_counter()
        for b in pngs:
            await casc.apredict_raw(b, log=False)
        return len(pngs) / (time.perf_counter() - t0)

    raw = asyncio.run(raw_seq())
    app = create_app(ws, DATASET, version=version, threshold=0.0, log_sample_rate=1.0)
    out = {"in_process_batched_items_per_s": inproc, "in_process_one_at_a_time_items_per_s": raw}
    with serve_app(app) as url, httpx.Client() as c:
        for b in pngs[:20]:
            c.post(f"{url}/v1/predict", content=b, headers={"Content-Type": "image/png"})
        lat = []
        t = time.perf_counter()
        for b in pngs:
            t1 = time.perf_counter()
            r = c.post(f"{url}/v1/predict", content=b, headers={"Content-Type": "image/png"})
            lat.append((time.perf_counter() - t1) * 1000)
            assert r.status_code == 200, r.text
        out["http_sequential_req_per_s"] = len(pngs) / (time.perf_counter() - t)
        lat.sort()
        out["http_latency_ms_p50"] = statistics.median(lat)
        out["http_latency_ms_p95"] = lat[int(0.95 * (len(lat) - 1))]

        def client(chunk: list[bytes]) -> None:
            with httpx.Client() as cc:
                for b in chunk:
                    assert cc.post(f"{url}/v1/predict", content=b, headers={"Content-Type": "image/png"}).status_code == 200

        t = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(client, [pngs[i::8] for i in range(8)]))
        out["http_8_clients_req_per_s"] = len(pngs) / (time.perf_counter() - t)
    out["n_requests"] = len(pngs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=os.environ.get("BENCH_WS", "/tmp/flywheel-bench-cascade"))
    ap.add_argument("--limit", type=int, default=6000, help="first N images of each source split")
    ap.add_argument("--n-train", type=int, default=3000, help="teacher-labelled train items")
    ap.add_argument("--goals", default="acc:0.85,budget:0.1", help="comma list of acc:TARGET / budget:FRACTION")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--requests", type=int, default=1000, help="HTTP requests for the speed part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results JSON here")
    a = ap.parse_args()

    from llm_flywheel.core.task import builtin_task
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

    ws = Workspace.open(a.workspace)
    results: dict = {}
    cfg = SimConfig(latency_ms=5, rate_429=0.0)
    task = builtin_task(DATASET)
    import_dataset(ws, a.limit)  # the simulated teacher reads the gold labels, so import first
    with run_simulated_teacher(ws, DATASET, cfg) as url:
        teacher = teacher_from_spec(f"{url}|{model_id(DATASET, cfg)}", task, api_key_env="", workspace=ws)
        prepare(ws, a.n_train, a.seed, teacher)
        version = train(ws, a.seed, a.epochs)
        results["goals"] = []
        for g in [g for g in a.goals.split(",") if g]:
            log(f"calibrating for {g} and running the cascade on test")
            results["goals"].append(run_goal(ws, version, g, teacher, a.delta))
        guarantee_check(ws, results["goals"], teacher)
    log("serving speed (student answers only)")
    results["speed"] = serving_speed(ws, version, a.requests)
    results["version"] = version
    print()
    print(f"Fashion-MNIST, image-cnn on {a.n_train} SIMULATED-teacher labels; calib 1,000 (teacher labels); "
          f"test n = {results['goals'][0]['n_test'] if results['goals'] else 0}; 95 % Wilson CIs")
    print("| goal | feasible | threshold | T | ECE before→after | teacher fraction (test) | student acc | cascade acc "
          "| accepted acc (gold) | accepted acc (teacher labels) | calib bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["goals"]:
        print(f"| {r['goal']} (δ={r['delta']}) | {r['feasible']} | {min(r['threshold'], 1):.4f} | {r['temperature']:.2f} "
              f"| {r['ece_before']:.3f}→{r['ece_after']:.3f} | {100 * r['test_teacher_fraction']:.1f} % | {r['student_acc']} "
              f"| {r['cascade_acc']} | {r.get('accepted_acc_gold', '-')} | {r.get('accepted_acc_teacher_labels', '-')} "
              f"| {100 * r['calib_accuracy_bound']:.1f} % |")
    sp = results["speed"]
    print()
    print(f"serving ({sp['n_requests']} test images, student only, this machine): in-process batched "
          f"{sp['in_process_batched_items_per_s']:,.0f} items/s; in-process one at a time "
          f"{sp['in_process_one_at_a_time_items_per_s']:,.0f} items/s; HTTP sequential "
          f"{sp['http_sequential_req_per_s']:,.0f} req/s (p50 {sp['http_latency_ms_p50']:.1f} ms, p95 "
          f"{sp['http_latency_ms_p95']:.1f} ms); HTTP 8 clients {sp['http_8_clients_req_per_s']:,.0f} req/s")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
