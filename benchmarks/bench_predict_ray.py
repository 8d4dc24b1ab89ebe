"""Batch prediction throughput: the local engine vs Ray Data (``flywheel predict --split S --engine ray``), side by
side in one run on this machine, on real Fashion-MNIST.

What it does, through the product's own code paths:

1. imports the first ``--limit`` images of each Fashion-MNIST source split (Debian ``dataset-fashion-mnist``),
   labels ``--n-train`` train items + val + calib with the **SIMULATED** teacher, trains ``image-cnn`` and
   calibrates it (teacher budget 10 %) -- the same preparation as ``bench_cascade.py``, cached in the workspace;
2. answers the test split (``--limit`` items) with threshold 0 (the student answers every item, so the numbers
   measure the engines, not the teacher) and every answer logged to ``cascade_log`` as ``flywheel predict`` does:
   - local: ``Cascade.predict_items`` in chunks of 1,000 in this process (what ``--engine local`` runs);
   - ray: :func:`predict_with_ray` with 1 and with ``--workers`` actors on a local Ray cluster it starts itself
     (``num_cpus`` = this machine's cores), cluster start and actor start (student load) included;
   - local again, to show the run-to-run noise of a shared machine.
   "end to end" counts everything from the call to the last answer logged; "after the 1st batch" is the rate
   between the first and the last batch the driver received -- the workers already up, but flattered by Ray Data's
   pipelining (later batches were being answered while the first travelled to the driver).

    python benchmarks/bench_predict_ray.py [--limit 6000] [--workers 2] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cascade import DATASET, import_dataset, log, prepare, train  # noqa: E402

from llm_flywheel.store.workspace import Workspace  # noqa: E402


def run_local(ws: Workspace, version: str) -> dict:
    from llm_flywheel.pipeline.cascade import Cascade

    t0 = time.perf_counter()
    casc = Cascade.from_store(ws, DATASET, version=version, threshold=0.0)
    with ws.store() as s:
        items = s.items(DATASET, split="test")
    for k in range(0, len(items), 1000):
        casc.predict_items(items[k : k + 1000], origin="predict", log=True)
    casc.close()
    dt = time.perf_counter() - t0
    return {"engine": "local (this process)", "n": len(items), "end_to_end": len(items) / dt, "seconds": dt,
            "steady": None, "first": None}


def run_ray(ws: Workspace, version: str, workers: int, batch_size: int) -> dict:
    from llm_flywheel.pipeline.predict_ray import RayPredictConfig, predict_with_ray

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    res = predict_with_ray(ws, DATASET, split="test", version=version, threshold=0.0,
                           config=RayPredictConfig(workers=workers, batch_size=batch_size, local_cpus=os.cpu_count()),
                           progress=lambda p: marks.append((time.perf_counter(), p.done)))
    dt = time.perf_counter() - t0
    steady = None
    if len(marks) >= 2 and marks[-1][0] > marks[0][0]:
        steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    return {"engine": f"ray, {workers} worker{'s' if workers > 1 else ''}", "n": res.n,
            "end_to_end": res.n / dt, "seconds": dt, "steady": steady, "first": marks[0][0] - t0 if marks else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="/tmp/flywheel-bench-predict-ray")
    ap.add_argument("--limit", type=int, default=6000, help="images imported per source split (= test items)")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args()

    from llm_flywheel.pipeline.calibration import calibrate
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import model_id, run_simulated_teacher

    ws = Workspace.open(Path(args.workspace))
    import_dataset(ws, args.limit)
    with ws.store() as s:
        from llm_flywheel.core.task import Task

        task = Task.from_json(s.dataset_task_json(DATASET))
    with run_simulated_teacher(ws, DATASET) as url:
        prepare(ws, args.n_train, 0, teacher_from_spec(f"{url}|{model_id(DATASET)}", task, api_key_env="",
                                                       workspace=ws))
    version = train(ws, 0, args.epochs)
    with ws.store() as s:
        if s.latest_report("calibration", version) is None:
            calibrate(ws, DATASET, version, max_teacher_fraction=0.1)
    log(f"machine: {os.cpu_count()} CPUs; model {version}; every answer logged to cascade_log")
    rows = [run_local(ws, version)]
    log(f"  {rows[-1]}")
    for w in sorted({1, args.workers}):
        rows.append(run_ray(ws, version, w, args.batch_size))
        log(f"  {rows[-1]}")
    rows.append(run_local(ws, version))
    rows[-1]["engine"] += ", again"
    print(f"\npredict on the Fashion-MNIST test split, student only (threshold 0), batches of {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'engine':<30} {'items':>6} {'seconds':>8} {'first batch at s':>17} {'items/s end to end':>19} "
          f"{'items/s after 1st batch':>24}")
    for r in rows:
        steady = f"{r['steady']:.0f}" if r["steady"] is not None else "-"
        first = f"{r['first']:.1f}" if r["first"] is not None else "-"
        print(f"{r['engine']:<30} {r['n']:>6} {r['seconds']:>8.1f} {first:>17} {r['end_to_end']:>19.0f} {steady:>24}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
