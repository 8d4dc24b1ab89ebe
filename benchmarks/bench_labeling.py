"""Labelling throughput and cache benchmark against the SIMULATED teacher.

Labels N generated 28x28 images (default 2,000; Fashion-MNIST's task and error model) with k=2 diverse passes +
tie-breaks, through the real OpenAI-compatible client over HTTP on 127.0.0.1, at 100 ms median teacher latency and
concurrency 32.  Prints items/s of the first run (target >= 100) and the calls made by an identical second run
(target 0).  The simulated teacher runs in its own process (`flywheel teacher simulate`), as a remote API would.

    python benchmarks/bench_labeling.py [--items 2000] [--latency-ms 100] [--concurrency 32] [--fixed]

It then scores the consensus against gold twice from the same stored answers -- with the label's token
probability (``exp(label_logprob)``, the default) and with the verbalised confidence only -- and prints, each with
a 95 % interval: accuracy of the resolved labels (Wilson), ECE of the consensus quality, AUROC of quality for
right vs wrong, accuracy of the 80 % of labels with the highest quality (Wilson), and the log-loss of the soft
target against gold (bootstrap over items; paired bootstrap for the differences).

Results come from the SIMULATED teacher: they measure this client, cache and store, not an LLM.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from llm_flywheel.data import Record, register
from llm_flywheel.pipeline.labeling import LabelConfig, consensus, final_answers, label_items
from llm_flywheel.core.stats import reliability, wilson_interval
from llm_flywheel.core.task import builtin_task
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import model_id, sim_stats
from llm_flywheel.store.workspace import Workspace


def make_items(ws: Workspace, n: int, seed: int = 0) -> list[int]:
    task = builtin_task("fashion-mnist")
    task = type(task)(**{**task.__dict__, "name": "bench"})
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        y = int(rng.integers(len(task.labels)))
        img = rng.normal(40, 25, (28, 28))
        img[4 + y : 10 + y, 3:25] += 150  # class-dependent band, unique noise -> unique content hash
        recs.append(Record(f"gen:{i}", image=np.clip(img, 0, 255).astype(np.uint8), gold_label=task.labels[y]))
    register(ws, task, recs, progress=False)
    s = ws.store()
    try:
        return [it.id for it in s.items("bench")]
    finally:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auroc(score: np.ndarray, pos: np.ndarray) -> float:
    """Probability that a right label gets a higher quality than a wrong one (ties count half)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return float("nan")
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def consensus_vs_gold(ws: Workspace, dataset: str, model: str, pv: str, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, dict[str, object]]:
    """Consensus with and without logprobs against gold, from the same stored answers."""
    s = ws.store()
    try:
        items = s.items(dataset)
        task_labels = list(json.loads(s.dataset_task_json(dataset))["labels"])
        answers = final_answers(s, model, pv, [it.content_hash for it in items])
    finally:
        s.close()
    gold = {it.content_hash: it.gold_label for it in items}
    per: dict[str, dict[str, np.ndarray]] = {}
    for name, use in (("logprob", True), ("verbalised", False)):
        q, right, nll, resolved = [], [], [], []
        for h, ans in answers.items():
            c = consensus(ans, task_labels, use_logprobs=use)
            if c is None:
                continue
            nll.append(-np.log(max(c.soft.get(gold[h], 0.0), 1e-6)) if c.soft else np.nan)
            resolved.append(c.label is not None)
            q.append(c.quality)
            right.append(c.label == gold[h])
        per[name] = {"q": np.array(q), "right": np.array(right), "nll": np.array(nll), "res": np.array(resolved)}
    rng = np.random.default_rng(seed)
    n = len(per["logprob"]["q"])
    boots = [rng.integers(0, n, n) for _ in range(n_boot)]

    def metrics(d: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
        sel = np.arange(len(d["q"])) if idx is None else idx
        res = d["res"][sel]
        q, right, nll = d["q"][sel][res], d["right"][sel][res], d["nll"][sel]
        top = np.argsort(-q, kind="stable")[: int(round(0.8 * len(q)))]
        return {"ece": reliability(q, right)[0], "auroc": _auroc(q, right), "acc_top80": float(right[top].mean()),
                "nll": float(np.nanmean(nll)), "acc": float(right.mean())}

    out: dict[str, dict[str, object]] = {}
    point = {k: metrics(v) for k, v in per.items()}
    bs = {k: [metrics(v, b) for b in boots] for k, v in per.items()}
    for k, d in per.items():
        res = d["res"]
        right = d["right"][res]
        top = np.argsort(-d["q"][res], kind="stable")[: int(round(0.8 * res.sum()))]
        row: dict[str, object] = {"resolved": int(res.sum()), "items": int(len(res))}
        row["accuracy"] = (point[k]["acc"], *wilson_interval(int(right.sum()), int(len(right))))
        row["accuracy_top80_by_quality"] = (point[k]["acc_top80"], *wilson_interval(int(right[top].sum()), len(top)))
        for m in ("ece", "auroc", "nll"):
            vals = np.array([b[m] for b in bs[k]])
            row[m] = (point[k][m], float(np.nanpercentile(vals, 2.5)), float(np.nanpercentile(vals, 97.5)))
        out[k] = row
    diff: dict[str, object] = {}
    for m in ("ece", "auroc", "acc_top80", "nll"):
        vals = np.array([a[m] - b[m] for a, b in zip(bs["logprob"], bs["verbalised"])])
        diff[m] = (point["logprob"][m] - point["verbalised"][m], float(np.nanpercentile(vals, 2.5)),
                   float(np.nanpercentile(vals, 97.5)))
    out["logprob_minus_verbalised"] = diff
    return out


def _ci(t: tuple) -> str:
    return f"{t[0]:.4f} [{t[1]:.4f}, {t[2]:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--fixed", action="store_true", help="fixed concurrency (default: adaptive, capped at --concurrency)")
    ap.add_argument("--workspace", help="workspace folder (default: a temporary one)")
    args = ap.parse_args()

    root = Path(args.workspace or tempfile.mkdtemp(prefix="bench-labeling-"))
    ws = Workspace.open(root)
    t0 = time.perf_counter()
    ids = make_items(ws, args.items)
    print(f"generated {len(ids)} items in {time.perf_counter() - t0:.1f}s (workspace {root})")

    port = free_port()
    flywheel = str(Path(sys.executable).with_name("flywheel"))
    srv = subprocess.Popen([flywheel, "-w", str(root), "teacher", "simulate", "--dataset", "bench", "--port", str(port),
                            "--latency-ms", str(args.latency_ms)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.HTTPError:
                if srv.poll() is not None:
                    raise SystemExit("the simulated teacher did not start")
                time.sleep(0.1)
        task = builtin_task("fashion-mnist")
        task = type(task)(**{**task.__dict__, "name": "bench"})
        teacher = teacher_from_spec(f"{url}|{model_id('bench')}", task)
        cfg = LabelConfig(passes=args.passes, concurrency=args.concurrency, adaptive=not args.fixed)
        t0 = time.perf_counter()
        r1 = label_items(ws, "bench", ids, teacher, cfg, progress=False)
        dt = time.perf_counter() - t0
        before = sim_stats(url)["requests"]
        t1 = time.perf_counter()
        r2 = label_items(ws, "bench", ids, teacher, cfg, progress=False)
        dt2 = time.perf_counter() - t1
        after = sim_stats(url)["requests"]
    finally:
        srv.terminate()
        srv.wait(timeout=10)
    out = {
        "teacher": "SIMULATED (" + teacher.model + ")",
        "items": len(ids), "passes": args.passes, "concurrency": args.concurrency, "adaptive": not args.fixed,
        "concurrency_search": r1.concurrency,
        "latency_ms_median": args.latency_ms,
        "first_run_s": round(dt, 2), "items_per_s": round(len(ids) / dt, 1),
        "calls_first_run": r1.calls_made, "calls_per_s": round(r1.calls_made / dt, 1),
        "tie_break_calls": r1.tie_break_calls, "failed_calls": r1.failed, "http_requests_seen_by_server": before,
        "cost_usd_first_run": round(r1.cost_usd, 4),
        "second_run_s": round(dt2, 2), "calls_second_run": r2.calls_made,
        "http_requests_second_run": after - before,
        "note": "second-run calls are the first run's failed calls (malformed replies), retried by design"
        if r2.calls_made else "second run made no call",
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    cons = consensus_vs_gold(ws, "bench", teacher.model, r1.prompt_version)
    print("\nconsensus against gold (same stored answers; 95 % intervals: Wilson for accuracies, bootstrap otherwise)")
    print("| confidence from | resolved | accuracy | acc. of top 80 % by quality | ECE of quality | AUROC of quality | "
          "soft-target log-loss |")
    print("|---|---|---|---|---|---|---|")
    for k in ("logprob", "verbalised"):
        c = cons[k]
        print(f"| {k} | {c['resolved']}/{c['items']} | {_ci(c['accuracy'])} | {_ci(c['accuracy_top80_by_quality'])} | "
              f"{_ci(c['ece'])} | {_ci(c['auroc'])} | {_ci(c['nll'])} |")
    d = cons["logprob_minus_verbalised"]
    print("logprob minus verbalised (paired bootstrap): " + ", ".join(f"{m} {_ci(v)}" for m, v in d.items()))
    print(f"\nitems/s: {out['items_per_s']} (target >= 100); calls on the second run: {r2.calls_made} (target 0; "
          f"any are retries of the {r1.failed} failed calls of run 1)")


if __name__ == "__main__":
    main()
