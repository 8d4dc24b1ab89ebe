"""Adaptive concurrency vs fixed concurrency against a loopback server whose latency grows with load.

The server (run in its own process) models a CPU-bound local LLM server such as llama.cpp's ``llama-server`` on
a few cores -- it is a *model* of one, with sleeps instead of matrix products, so that the benchmark is
repeatable on a shared machine:

* ``--slots`` parallel decode slots (default 8); further requests wait in a FIFO queue (``-np`` in llama.cpp);
* processor sharing: with ``a`` requests decoding at once each runs at speed ``1 / (1 + alpha (a-1) +
  beta max(0, a-4)^2)`` -- batching helps up to about 4 at once, then the cores thrash -- so aggregate throughput
  peaks at about 4-5 in flight (what DESIGN.md measured for llama-server on 2 cores);
* a KV cache that holds ``--kv-seqs`` sequences (default 6): a request admitted while that many are decoding
  runs out of context halfway with probability ``--kv-fail-p`` (default 0.25; prompts differ in length) and gets
  ``HTTP 500 {"error": "Context size has been exceeded"}`` -- the work done is wasted;
* a client that disconnects (its timeout) cancels its request, as llama.cpp does ("cancelled task").

The same N items (one pass, no tie-break) are labelled through the real client (`label_items`) at fixed
concurrency 1, 2, 4, 8, 16, 32 and then in adaptive mode (cap 32, cold start, not told the answer).  Prints the
table of calls/s, failed attempts and mean latency, and whether adaptive is within 10 % of the best fixed level.

    nice -n 10 python benchmarks/bench_concurrency.py [--items 400] [--work-ms 100] [--timeout 2]

``--url BASE_URL --model MODEL`` runs the same comparison against a real server instead of the model (e.g. a
``llama-server`` you started; pick ``--levels`` and ``--items`` to fit its speed, and a realistic ``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
from bench_labeling import free_port  # the sibling benchmark's (benchmarks/ is on sys.path)


# --- the server model ------------------------------------------------------------------------------------------------
class _Job:
    __slots__ = ("work", "remaining", "doomed", "done", "outcome")

    def __init__(self, work: float) -> None:
        self.work = self.remaining = work
        self.doomed = False
        self.done = asyncio.Event()
        self.outcome = "ok"


class CpuServerModel:
    """Processor-sharing slots + FIFO queue + KV-cache limit, advanced by a 5 ms ticker."""

    def __init__(self, slots: int, work_s: float, alpha: float, beta: float, kv_seqs: int, sigma: float,
                 kv_fail_p: float = 0.25, seed: int = 0) -> None:
        self.slots, self.work_s, self.alpha, self.beta = slots, work_s, alpha, beta
        self.kv_fail_p = kv_fail_p
        self.kv_seqs, self.sigma = kv_seqs, sigma
        self.rng = random.Random(seed)
        self.active: list[_Job] = []
        self.queue: deque[_Job] = deque()
        self.stats = {"requests": 0, "ok": 0, "context_exceeded": 0, "cancelled": 0, "max_active": 0, "max_queue": 0}
        self._ticker: asyncio.Task[Any] | None = None

    def speed(self, a: int) -> float:
        return 1.0 / (1.0 + self.alpha * (a - 1) + self.beta * max(0, a - 4) ** 2)

    def _admit(self) -> None:
        while self.queue and len(self.active) < self.slots:
            job = self.queue.popleft()
            # no room left in the KV cache for a long prompt
            job.doomed = len(self.active) >= self.kv_seqs and self.rng.random() < self.kv_fail_p
            self.active.append(job)
        self.stats["max_active"] = max(self.stats["max_active"], len(self.active))

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            dt, last = now - last, now
            if not self.active:
                continue
            v = self.speed(len(self.active)) * dt
            still = []
            for job in self.active:
                job.remaining -= v
                if job.doomed and job.remaining <= job.work / 2:
                    job.outcome = "context_exceeded"
                    job.done.set()
                elif job.remaining <= 0:
                    job.done.set()
                else:
                    still.append(job)
            self.active = still
            self._admit()

    async def serve(self, is_disconnected: Any) -> str:
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick())
        self.stats["requests"] += 1
        job = _Job(self.work_s * math.exp(self.sigma * self.rng.gauss(0, 1)))
        self.queue.append(job)
        self.stats["max_queue"] = max(self.stats["max_queue"], len(self.queue))
        self._admit()
        while not job.done.is_set():
            try:
                await asyncio.wait_for(job.done.wait(), 0.05)
            except asyncio.TimeoutError:
                if await is_disconnected():  # the client gave up: cancel the task, free its slot
                    job.outcome = "cancelled"
                    if job in self.active:
                        self.active.remove(job)
                    elif job in self.queue:
                        self.queue.remove(job)
                    self._admit()
                    break
        self.stats[job.outcome] += 1
        return job.outcome


def server_main(args: argparse.Namespace) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    model = CpuServerModel(args.slots, args.work_ms / 1000.0, args.alpha, args.beta, args.kv_seqs, args.sigma,
                           args.kv_fail_p)
    answer = json.dumps({"label": "spam", "confidence": 0.9, "reason": "r"})

    async def chat(request: Request) -> Response:
        body = await request.json()
        outcome = await model.serve(request.is_disconnected)
        if outcome == "context_exceeded":
            return JSONResponse({"error": {"code": 500, "message": "Context size has been exceeded.",
                                           "type": "server_error"}}, 500)
        if outcome == "cancelled":
            return Response(status_code=499)
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body.get("model", "m"),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132}})

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(model.stats))

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "cpu-model"}]})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/_stats", stats), Route("/v1/models", models)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


# --- the client side -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--work-ms", type=float, default=100.0, help="service time of one request alone (median)")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--kv-seqs", type=int, default=6)
    ap.add_argument("--kv-fail-p", type=float, default=0.25)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--beta", type=float, default=0.15)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--timeout", type=float, default=2.0, help="client timeout per request (s)")
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--cap", type=int, default=32, help="the adaptive mode's cap (--concurrency)")
    ap.add_argument("--url", help="benchmark this OpenAI-compatible base URL instead of the server model")
    ap.add_argument("--model", default="cpu-model", help="model name to send with --url")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        server_main(args)
        return

    from llm_flywheel.data import Record, register
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items
    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.concurrency import forget_levels
    from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher
    from llm_flywheel.store.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    ws = Workspace.open(root)
    task = Task(name="cc", modality="text", labels=("spam", "ham"), instructions="Is this email spam?")
    register(ws, task, [Record(f"t:{i}", text=f"email number {i}: win a prize {i * 7919 % 1000}") for i in
                        range(args.items)], progress=False)
    s = ws.store()
    ids = [it.id for it in s.items("cc")]
    s.close()

    port = free_port()
    srv = None if args.url else subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(port), "--slots", str(args.slots),
         "--kv-seqs", str(args.kv_seqs), "--work-ms", str(args.work_ms), "--alpha", str(args.alpha),
         "--beta", str(args.beta), "--sigma", str(args.sigma), "--kv-fail-p", str(args.kv_fail_p)])
    url = args.url.rstrip("/") if args.url else f"http://127.0.0.1:{port}/v1"

    def server_stats() -> dict[str, int]:
        if args.url:
            return {"requests": 0, "ok": 0, "context_exceeded": 0, "cancelled": 0}
        return httpx.get(f"{url}/_stats").json()

    rows = []
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.HTTPError:
                if srv is not None and srv.poll() is not None:
                    raise SystemExit("the benchmark server did not start")
                time.sleep(0.05)
        if args.url:
            print(f"real server at {url}, model {args.model}; client timeout {args.timeout:g}s; {len(ids)} items x "
                  f"1 pass per mode (server-side counts not available: HTTP/500/cancelled columns are 0)")
        else:
            print(f"server model: {args.slots} slots, KV cache for {args.kv_seqs} sequences (beyond: 500 with p "
                  f"{args.kv_fail_p:g}), {args.work_ms:g} ms per request alone, speed 1/(1+{args.alpha}(a-1)+{args.beta}max(0,a-4)^2); "
                  f"client timeout {args.timeout:g}s; {len(ids)} items x 1 pass per mode")
        modes: list[tuple[str, int, bool]] = [(f"fixed {c}", c, False) for c in map(int, args.levels.split(","))]
        modes.append((f"adaptive (cap {args.cap})", args.cap, True))
        for name, conc, adaptive in modes:
            forget_levels()  # cold start: adaptive is not told what an earlier mode found
            before = server_stats()
            if args.url:  # the cache is keyed by model: a fresh workspace per mode instead
                ws = Workspace.open(root / name.replace(" ", "-").replace("(", "").replace(")", ""))
                register(ws, task, [Record(f"t:{i}", text=f"email number {i}: win a prize {i * 7919 % 1000}")
                                    for i in range(args.items)], progress=False)
                st = ws.store()
                ids = [it.id for it in st.items("cc")]
                st.close()
            model = args.model if args.url else f"cpu-model-{name.replace(' ', '-')}"
            teacher = OpenAICompatTeacher(url, model, api_key_env=None, task=task, timeout=args.timeout,
                                          logprobs=False)
            t0 = time.perf_counter()
            r = label_items(ws, "cc", ids, teacher, LabelConfig(passes=1, tie_break=False, concurrency=conc,
                                                                adaptive=adaptive), progress=False)
            dt = time.perf_counter() - t0
            after = server_stats()
            d = {k: after[k] - before[k] for k in ("requests", "ok", "context_exceeded", "cancelled")}
            s = ws.store()
            lat = s.query("SELECT AVG(latency_s) AS m FROM teacher_answers WHERE model=? AND ok=1", (teacher.model,))
            s.close()
            ok = r.calls_made - r.failed
            rows.append({"mode": name, "calls_per_s": ok / dt, "elapsed_s": dt, "ok": ok, "failed": r.failed,
                         "http_requests": d["requests"], "ctx_exceeded": d["context_exceeded"],
                         "cancelled": d["cancelled"], "mean_latency_s": lat[0]["m"] or float("nan"),
                         "final_level": r.concurrency.get("final"), "max_level": r.concurrency.get("max"),
                         "changes": r.concurrency.get("changes")})
            x = rows[-1]
            print(f"  {name:<18} {x['calls_per_s']:6.1f} ok calls/s  {dt:6.1f}s  failed {r.failed:3d}  http "
                  f"{d['requests']:4d}  500s {d['context_exceeded']:3d}  cancelled {d['cancelled']:3d}  "
                  f"latency {x['mean_latency_s']:.2f}s", flush=True)
    finally:
        if srv is not None:
            srv.terminate()
            srv.wait(timeout=10)

    fixed = [r for r in rows if r["mode"].startswith("fixed")]
    best = max(fixed, key=lambda r: r["calls_per_s"])
    ad = rows[-1]
    print("\n| mode | ok calls/s | elapsed s | failed calls | HTTP requests | 500 ctx exceeded | cancelled | mean latency s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['calls_per_s']:.1f} | {r['elapsed_s']:.1f} | {r['failed']} | {r['http_requests']} | "
              f"{r['ctx_exceeded']} | {r['cancelled']} | {r['mean_latency_s']:.2f} |")
    ratio = ad["calls_per_s"] / best["calls_per_s"]
    print(f"\nbest fixed: {best['mode']} at {best['calls_per_s']:.1f} calls/s; adaptive {ad['calls_per_s']:.1f} calls/s "
          f"= {100 * ratio:.0f} % of it (target >= 90 %); adaptive settled at {ad['final_level']} "
          f"(largest tried {ad['max_level']})")
    print("adaptive level changes (s since start, level, why):")
    for ch in ad["changes"] or []:
        print(f"  {ch}")


if __name__ == "__main__":
    main()
