"""Accuracy benchmark: Fashion-MNIST, <= 1,500 teacher labels, student vs its gold-label ceiling vs the teacher.

What it does (all through the product's own code paths):

1. imports real Fashion-MNIST (Debian ``dataset-fashion-mnist``) with ``add_dataset`` -- the first ``--limit`` images
   of each source split -- and makes the stored splits (val/calib/stream counts fixed, test = the source's test);
2. labels ``--n-train`` train items + every val item (together <= 1,500 labels for the student) and every test item
   (for measuring the teacher only) with the **SIMULATED** teacher (an OpenAI-compatible server on 127.0.0.1 that
   answers from gold labels through an explicit error model, ~85 % accurate) via ``label_items`` (2 diverse passes +
   tie-break, consensus, soft targets, quality);
3. trains each student (early stopping on the teacher-labelled val split, never on test), with soft targets and
   quality weights, and -- for comparison -- the plain hard-label variant;
4. evaluates on the test split: accuracy with Wilson 95 % CIs, the gold-label ceiling (same student, same items,
   gold labels; paired difference with CI) and the teacher's own accuracy on the same test items.

Everything is cached in the workspace (teacher answers, models by fixed version names), so re-running is cheap.
Run:  python benchmarks/bench_accuracy.py [--students image-cnn,efficientnet-lite0] [--hard]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from llm_flywheel.pipeline.evaluation import evaluate
from llm_flywheel.pipeline.training import train_student
from llm_flywheel.store.workspace import Workspace

DATASET = "fashion-mnist"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(ws: Workspace, limit: int, val: int, calib: int, stream: int) -> None:
    from llm_flywheel.data.registry import add_dataset

    with ws.store() as store:
        if DATASET in store.dataset_names():
            return
    log(f"importing Fashion-MNIST (first {limit} of each source split)")
    rep = add_dataset(ws, DATASET, limit=limit, val=val, calib=calib, stream=stream, progress=False)
    log(rep.summary())


def label(ws: Workspace, n_train: int, seed: int, latency_ms: float) -> dict:
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items
    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

    with ws.store() as store:
        task = Task.from_json(store.dataset_task_json(DATASET))
        train_ids = [it.id for it in store.items(DATASET, split="train")]
        val_ids = [it.id for it in store.items(DATASET, split="val")]
        test_ids = [it.id for it in store.items(DATASET, split="test")]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(train_ids)[:n_train].tolist())
    ids = chosen + val_ids + test_ids
    log(f"labelling {len(chosen)} train + {len(val_ids)} val (student labels: {len(chosen) + len(val_ids)}) "
        f"+ {len(test_ids)} test (teacher measurement only) with the SIMULATED teacher")
    cfg = SimConfig(latency_ms=latency_ms)
    with run_simulated_teacher(ws, DATASET, cfg) as url:
        teacher = teacher_from_spec(f"{url}|{model_id(DATASET, cfg)}", task, api_key_env="")
        res = label_items(ws, DATASET, ids, teacher, LabelConfig(passes=2, concurrency=16), progress=False)
    log(f"labelled: calls {res.calls_made}, cached {res.answers_cached}, simulated cost ${res.cost_usd:.3f}")
    return {"train_labels": len(chosen), "val_labels": len(val_ids), "test_labelled_for_measurement": len(test_ids),
            "calls": res.calls_made, "simulated_cost_usd": res.cost_usd}


def run_student(ws: Workspace, kind: str, *, soft: bool, seed: int, epochs: int | None, extra: dict,
                ceiling: bool = True) -> dict:
    variant = "soft" if soft else "hard"
    size = f"-{extra['size']}px" if extra.get("size") else ""
    version = f"bench-{kind}{size}-{variant}-s{seed}"
    with ws.store() as store:
        exists = store.query("SELECT 1 FROM models WHERE version=?", (version,))
    if not exists:
        log(f"training {kind} ({variant} labels)")
        tm = train_student(ws, DATASET, kind=kind, soft=soft, weight_by_quality=soft, seed=seed, epochs=epochs,
                           progress=False, version=version, **extra)
        log(f"  val acc {tm.metrics['val_acc']:.3f} (teacher-labelled val), {tm.metrics['epochs_run']} epochs, "
            f"{tm.metrics['train_seconds']} s")
    log(f"evaluating {version} on test" + (" (+ gold-label ceiling)" if ceiling else ""))
    return evaluate(ws, DATASET, version, ceiling=ceiling)


def diff(d: dict | None, key: str) -> str:
    """A paired difference in points with its 95 % CI, or '-'."""
    if not d or key not in d:
        return "-"
    lo, hi = d["diff_ci95"]
    return f"{100 * d[key]:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def fmt(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{100 * d['accuracy']:.1f} % [{100 * d['ci95'][0]:.1f}, {100 * d['ci95'][1]:.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=os.environ.get("BENCH_WS", "/tmp/flywheel-bench-accuracy"))
    ap.add_argument("--limit", type=int, default=4000, help="first N images of each source split")
    ap.add_argument("--n-train", type=int, default=1350, help="teacher-labelled train items")
    ap.add_argument("--val", type=int, default=150, help="val split size (teacher-labelled; counts toward the 1,500)")
    ap.add_argument("--students", default="image-cnn,efficientnet-lite0")
    ap.add_argument("--hard", action="store_true", help="also train plain hard-label students (no soft targets, no weights)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="image students: input resolution (default: the kind's)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the gold-label ceiling (halves the time)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=5.0, help="simulated teacher latency (does not affect labels)")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    a = ap.parse_args()
    if a.n_train + a.val > 1500:
        print("n-train + val must be <= 1500 (the issue's label budget)", file=sys.stderr)
        return 2
    ws = Workspace.open(a.workspace)
    prepare(ws, a.limit, a.val, min(200, a.limit // 20), min(500, a.limit // 8))
    info = label(ws, a.n_train, a.seed, a.latency_ms)
    results = []
    for kind in [k for k in a.students.split(",") if k]:
        for soft in ([True, False] if a.hard else [True]):
            extra = {"size": a.size} if a.size and kind != "image-cnn" else {}
            rep = run_student(ws, kind, soft=soft, seed=a.seed, epochs=a.epochs, extra=extra, ceiling=not a.no_ceiling)
            results.append({"kind": kind, "labels": "soft+weights" if soft else "hard", "student": rep["student"],
                            "ceiling": rep.get("ceiling"), "teacher_on_test": rep["teacher_on_split"],
                            "teacher_single_call": rep["teacher_single_call_on_split"],
                            "training_label_accuracy": rep.get("training_label_accuracy"), "version": rep["version"]})
    print()
    print(f"Fashion-MNIST, {info['train_labels'] + info['val_labels']} teacher labels "
          f"({info['train_labels']} train + {info['val_labels']} val), SIMULATED teacher; test n = "
          f"{results[0]['student']['n'] if results else 0}; 95 % Wilson CIs; gap = student - ceiling (paired 95 % CI)")
    print("| student | labels | student acc | gold-label ceiling | gap to ceiling | teacher consensus (same test items) "
          "| student - consensus | teacher single call | student - single call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c, t, t1 = r["ceiling"], r["teacher_on_test"], r["teacher_single_call"]
        print(f"| {r['kind']} | {r['labels']} | {fmt(r['student'])} | {fmt(c)} | {diff(c, 'student_minus_ceiling')} "
              f"| {fmt(t)} | {diff(t, 'student_minus_teacher')} | {fmt(t1)} | {diff(t1, 'student_minus_teacher')} |")
    print("teacher consensus = 2 passes + a tie-break pass per item; single call = pass 0 (T=0) alone")
    tl = results[0]["training_label_accuracy"] if results else None
    if tl:
        print(f"teacher labels the students learned from (train split, vs gold): {fmt(tl)}")
    if a.out:
        Path(a.out).write_text(json.dumps({"info": info, "results": results}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
