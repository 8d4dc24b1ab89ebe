"""Batch serving benchmark: images a second through ``POST /v1/predict`` one at a time vs ``/v1/predict/batch``.

Same model, server and client as ``bench_serve.py`` (Fashion-MNIST ``image-cnn``, ONNX Runtime, ``flywheel serve``
in its own process, a keep-alive closed-loop client on loopback, no teacher), side by side in one run on one
server: single requests as raw ``image/png`` and as JSON ``image_base64`` (what a batch element is), then batches
of 8, 32 and 64 JSON inputs.  Prints images/s and request latency; the ratios are measured in the same run.

    python benchmarks/bench_serve_batch.py [--limit 3000] [--images 6000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import Server, load, loadavg, prepare_model  # noqa: E402


def batch_bodies(pngs: list[bytes], size: int) -> list[bytes]:
    items = [{"image_base64": base64.b64encode(p).decode()} for p in pngs]
    return [json.dumps({"inputs": items[i:i + size]}).encode() for i in range(0, len(items) - size + 1, size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/bench-serve-ws"))
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=6000, help="images per phase")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    _, pngs = prepare_model(a.workspace, a.limit, a.epochs)
    srv = Server(a.workspace, "--workers", str(a.workers))
    rows = []
    try:
        b64 = [json.dumps({"image_base64": base64.b64encode(p).decode()}).encode() for p in pngs]
        load(srv.port, pngs, 300, a.concurrency)  # warm-up
        print(f"load average {loadavg()}; {len(pngs)} distinct test PNGs; concurrency {a.concurrency}, "
              f"--workers {a.workers}")
        for name, bodies, ctype, per in (("single, image/png", pngs, "image/png", 1),
                                         ("single, JSON image_base64", b64, "application/json", 1),
                                         *((f"batch of {k}", batch_bodies(pngs, k), "application/json", k)
                                           for k in (8, 32, 64))):
            path = "/v1/predict" if per == 1 else "/v1/predict/batch"
            r = load(srv.port, bodies, max(1, a.images // per), a.concurrency, ctype=ctype, path=path)
            ips = r.n * per / r.seconds
            rows.append((name, ips, r))
            print(f"  {name:<28} {ips:8.1f} images/s   request p50 {r.q(0.5):7.1f} ms  p99 {r.q(0.99):7.1f} ms  "
                  f"statuses {r.statuses}", flush=True)
    finally:
        srv.stop()
    base = rows[1][1]
    print("\nratio to single JSON requests (same server, same run): "
          + ", ".join(f"{name} {ips / base:.2f}x" for name, ips, _ in rows))
    print(f"load average at the end {loadavg()}")


if __name__ == "__main__":
    main()
