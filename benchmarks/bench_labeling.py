"""Labelling throughput and cache benchmark against the SIMULATED teacher.

Labels N generated 28x28 images (default 2,000; Fashion-MNIST's task and error model) with k=2 diverse passes +
tie-breaks, through the real OpenAI-compatible client over HTTP on 127.0.0.1, at 100 ms median teacher latency and
concurrency 32.  Prints items/s of the first run (target >= 100) and the calls made by an identical second run
(target 0).  The simulated teacher runs in its own process (`flywheel teacher simulate`), as a remote API would.

    python benchmarks/bench_labeling.py [--items 2000] [--latency-ms 100] [--concurrency 32]

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
from llm_flywheel.labeling import LabelConfig, label_items
from llm_flywheel.task import builtin_task
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import model_id, sim_stats
from llm_flywheel.workspace import Workspace


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--passes", type=int, default=2)
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
        cfg = LabelConfig(passes=args.passes, concurrency=args.concurrency)
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
        "items": len(ids), "passes": args.passes, "concurrency": args.concurrency,
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
    print(f"\nitems/s: {out['items_per_s']} (target >= 100); calls on the second run: {r2.calls_made} (target 0; "
          f"any are retries of the {r1.failed} failed calls of run 1)")


if __name__ == "__main__":
    main()
