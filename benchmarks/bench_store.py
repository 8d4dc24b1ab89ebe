"""The store's write rate on SQLite and on PostgreSQL, side by side in one run.

What docs/scale.md needs to know: how many small write transactions per second one store takes when several
processes share it -- a served request's log batch (``log_cascade_rows``) and a teacher purchase's claim + release
(``claim_teacher_purchase`` / ``release_teacher_claim``), both under the store's one-writer lock.  Each engine gets
the same work from 1 and from 4 processes at once (separate processes, as replicas are); PostgreSQL is a real server
started here (tests/pg_server.py, loopback, fsync on: the default durability) -- nothing is mocked.

    python benchmarks/bench_store.py                 # ~1 minute on 2 cores
    python benchmarks/bench_store.py --seconds 10 --procs 1 4 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llm_flywheel.store import Store  # noqa: E402
from llm_flywheel.store.serving import CascadeLogRow  # noqa: E402


def _row(i: int) -> CascadeLogRow:
    return CascadeLogRow(ts=time.time(), dataset="bench", item_id=None, content_hash=f"h{i}", source="student",
                         label="a", confidence=0.9, student_label="a", student_confidence=0.9, teacher_label=None,
                         model_version="m", threshold=0.5, latency_ms=1.0, round=None, origin="serve",
                         payload_ref=None)


def _worker(args: tuple[str, str, float, int, mp.Barrier]) -> tuple[int, list[float]]:
    where, kind, seconds, batch, barrier = args
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    lat: list[float] = []
    with Store(where) as s:
        barrier.wait()
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            if kind == "log":
                s.log_cascade_rows([_row(n * batch + j) for j in range(batch)])
            else:
                h = f"{owner}-{n}"
                assert s.claim_teacher_purchase(h, "m", "p", owner, stale_after_s=30.0)
                s.release_teacher_claim(h, "m", "p", owner)
            lat.append((time.perf_counter() - t) * 1000)
            n += 1
    return n, lat


def run(where: str, kind: str, procs: int, seconds: float, batch: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(procs)
    with ctx.Pool(procs) as pool:
        out = pool.map(_worker, [(where, kind, seconds, batch, barrier)] * procs)
    n = sum(o[0] for o in out)
    lat = sorted(x for o in out for x in o[1])
    return {"ops_per_s": n / seconds, "p50_ms": statistics.median(lat), "p99_ms": lat[int(0.99 * (len(lat) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batch", type=int, default=32, help="rows per log batch (the service writes in batches)")
    a = ap.parse_args()
    from pg_server import LocalPostgres

    print(f"# bench_store: {a.seconds:.0f} s per cell, log batches of {a.batch} rows; load average "
          f"{os.getloadavg()[0]:.1f} at start, {os.cpu_count()} CPUs")
    print("| engine | work | processes | ops/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres(durable=True) as pg:
        engines = {"sqlite": str(Path(tmp) / "bench.db"), "postgresql": f"{pg.url}?schema=bench"}
        for name, where in engines.items():
            Store(where).close()  # create and migrate once, outside the timing
            for kind in ("log", "claim"):
                for procs in a.procs:
                    r = run(where, kind, procs, a.seconds, a.batch)
                    what = f"log batch ({a.batch} rows)" if kind == "log" else "claim + release"
                    print(f"| {name} | {what} | {procs} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                          f"{r['p99_ms']:.2f} |", flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
