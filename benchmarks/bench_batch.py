"""Online vs Batch API labelling of the same items, side by side, against the SIMULATED teacher.

Labels N generated 28x28 images (Fashion-MNIST's task and error model, ``bench_labeling.make_items``) with k=2
passes (fixed, or ``--adaptive``) + tie-breaks twice, each into its own fresh workspace holding the identical items: once online
(``label_items``, concurrency 32, ``--latency-ms`` median per call) and once through the Batch API
(``label_items_batch``: /v1/files + /v1/batches, ``--batch-latency-s`` from create to completed, polled every
``--poll-s``).  Prints, per mode: teacher calls (answer lines), failed calls, HTTP requests the client sent, USD,
USD per answer, wall time, and how many (item, pass) answers are identical across the two modes.

    python benchmarks/bench_batch.py [--items 1000] [--latency-ms 100] [--batch-latency-s 20] [--poll-s 1] [--adaptive]

The batch cost ratio is the provider's batch price ratio by construction (the simulated provider bills batch
lines at ``batch_price_ratio`` of the online price, 0.5 by default, as OpenAI does); what the benchmark checks is
that nothing else changes -- the same answers, the same number of calls -- and what the wait costs in wall time.
Results come from the SIMULATED teacher: they measure this client, cache and store, not an LLM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labeling import make_items

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import (
    SimConfig,
    model_id,
    run_simulated_teacher,
    sim_stats,
)


def _answers(ws: Workspace, pv: str) -> dict[tuple[str, int], tuple[str | None, float | None]]:
    """(content_hash, pass) -> (label, confidence) of every final answer."""
    with ws.store() as s:
        rows = s.final_answers(model_id("bench"), pv, [it.content_hash for it in s.items("bench")])
    return {(h, a["pass_index"]): (a["label"], a["confidence"]) for h, lst in rows.items() for a in lst}


def run_mode(mode: str, root: Path, args: argparse.Namespace, sim: SimConfig) -> dict[str, object]:
    ws = Workspace.open(root / mode)
    ids = make_items(ws, args.items)
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json("bench"))
    cfg = LabelConfig(passes=2, concurrency=32, adaptive_passes=args.adaptive)
    with run_simulated_teacher(ws, "bench", sim) as url:
        t = teacher_from_spec(f"{url}|{model_id('bench')}", task, backoff_base=0.05)
        t0 = time.monotonic()
        if mode == "online":
            r = label_items(ws, "bench", ids, t, cfg, progress=False)
        else:
            r = label_items_batch(ws, "bench", ids, t, cfg, BatchConfig(poll_s=args.poll_s), progress=False)
        wall = time.monotonic() - t0
        st = sim_stats(url)
    return {"ws": ws, "pv": t.prompt_version_for(task), "calls": r.calls_made, "failed": r.failed, "cost": r.cost_usd, "wall": wall,
            "http": st["requests"] if mode == "online" else st["batch_lines"], "labelled": r.labelled + r.disagreed,
            "batches": getattr(r, "batches_submitted", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--batch-latency-s", type=float, default=20.0)
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--adaptive", action="store_true",
                    help="adaptive passes in both modes (later passes only where pass 0 is unsure)")
    args = ap.parse_args()
    sim = SimConfig(latency_ms=args.latency_ms, batch_latency_s=args.batch_latency_s)
    with tempfile.TemporaryDirectory() as tmp:
        res = {m: run_mode(m, Path(tmp), args, sim) for m in ("online", "batch")}
        a_on, a_b = (_answers(res[m]["ws"], res[m]["pv"]) for m in ("online", "batch"))
    same = sum(1 for k in a_on.keys() & a_b.keys() if a_on[k] == a_b[k])
    kind = "adaptive" if args.adaptive else "fixed"
    print(f"SIMULATED teacher, {args.items} items, k=2 {kind} passes + tie-breaks; online median latency "
          f"{args.latency_ms:g} ms at concurrency 32; batch latency {args.batch_latency_s:g} s, polled every "
          f"{args.poll_s:g} s; batch price ratio {sim.batch_price_ratio:g}")
    print(f"{'mode':8} {'calls':>7} {'failed':>7} {'requests':>9} {'batches':>8} {'labelled':>9} {'cost USD':>10} "
          f"{'USD/answer':>11} {'wall s':>8}")
    for m, r in res.items():
        per = r["cost"] / r["calls"] if r["calls"] else float("nan")
        print(f"{m:8} {r['calls']:>7} {r['failed']:>7} {r['http']:>9} {r['batches']:>8} {r['labelled']:>9} "
              f"{r['cost']:>10.4f} {per:>11.7f} {r['wall']:>8.1f}")
    on, b = res["online"], res["batch"]
    print(f"batch / online: cost {b['cost'] / on['cost']:.3f}, calls {b['calls'] / on['calls']:.3f}, "
          f"wall time {b['wall'] / on['wall']:.2f}x")
    print(f"answers identical in both modes: {same} of {len(a_on.keys() & a_b.keys())} common (item, pass) keys "
          f"(online {len(a_on)}, batch {len(a_b)})")


if __name__ == "__main__":
    main()
