"""Serving benchmark: `flywheel serve` under a bounded closed-loop load on loopback, bad inputs, and a dead teacher.

What it does (loopback only; every phase stops by itself):

1. model: imports ``--limit`` Fashion-MNIST images per source split (Debian ``dataset-fashion-mnist``), trains a
   small ``image-cnn`` on the train split's GOLD labels (a reference model, served by naming its version: the
   serving path is the same, and this bench measures the service, not the model's accuracy) and calibrates it
   (reference = gold).  Cached in ``--workspace``; training is timed.
2. load: starts ``flywheel serve`` as its own process (no teacher: deferred answers come back without a label, so
   the numbers are the service's, not a teacher's) and drives it with a lean keep-alive HTTP/1.1 client (asyncio
   streams, one connection per client) at concurrency 1 / 8 / 32: requests/s, p50 / p95 / p99, status counts.
   Inputs cycle through the test images (distinct PNGs: each one is logged and kept as feedback).
3. memory: the server's RSS before and after ``--rss-requests`` requests at concurrency 8.
4. bad inputs: a fixed set (deep JSON, pixel bombs under and over the pixel limit, garbage, truncated PNG,
   oversize, wrong content types, wrong JSON) -> the 2xx/4xx/5xx counts; and /healthz + small-request latency
   while four under-the-limit pixel bombs are being decoded.
5. replicas: the same load, memory and bad-input phases against ``flywheel serve --replicas 2`` (Ray Serve on a
   local cluster the server starts; its HTTP proxy on loopback), side by side with the single process in this run
   (``--ray-replicas 0`` skips it).  RSS is the replica processes' (and, apart, everything Ray runs).  Then Ray
   Serve's own floor: an empty FastAPI app on as many replicas, the same client.
6. teacher down: the service with a teacher whose port refuses connections, and one that accepts and never
   answers (frozen), ``--deadline`` s: p99 of the deferred requests vs deadline + 100 ms.

    python benchmarks/bench_serve.py [--limit 3000] [--epochs 3] [--requests 3000] [--rss-requests 20000]
                                     [--ray-replicas 2]

Targets (issue 11, 2 cores): >= 500 req/s at concurrency 8 with p99 <= 50 ms, zero 5xx, RSS growth <= 50 MB over
20,000 requests; teacher down: p99 of deferred <= deadline + 100 ms.  The load average is printed with the numbers:
on a shared machine they are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DATASET = "fashion-mnist"
VERSION = "bench-serve-image-cnn"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the model -------------------------------------------------------------------------------------------------------


def prepare_model(root: Path, limit: int, epochs: int) -> tuple[float | None, list[bytes]]:
    """(training seconds, or None when cached; PNG bytes of the test images)."""
    from llm_flywheel.data.registry import add_dataset
    from llm_flywheel.pipeline.calibration import calibrate
    from llm_flywheel.pipeline.training import train_student
    from llm_flywheel.store.workspace import Workspace

    ws = Workspace.open(root)
    with ws.store() as s:
        have = DATASET in s.dataset_names()
    if not have:
        log(f"importing Fashion-MNIST (first {limit} of each source split)")
        add_dataset(ws, DATASET, limit=limit, val=200, calib=500, stream=100, progress=False)
    secs = None
    with ws.store() as s:
        cached = s.model(VERSION) is not None
        train = s.items(DATASET, split="train")
        test = s.items(DATASET, split="test")
    if not cached:
        t0 = time.perf_counter()
        train_student(ws, DATASET, kind="image-cnn", labels={it.id: it.gold_label for it in train}, epochs=epochs,
                      progress=False, version=VERSION, role="reference", val_labels="gold")
        secs = time.perf_counter() - t0
        calibrate(ws, DATASET, VERSION, max_teacher_fraction=0.1, reference="gold")
        log(f"trained {VERSION} on {len(train)} gold labels in {secs:.1f} s (load {loadavg()})")
    return secs, [(ws.root / it.blob_path).read_bytes() for it in test]


# -- the server ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``flywheel serve`` in its own process on loopback."""

    extra_path: str | None = None  # prepended to the server's PYTHONPATH (e.g. where httptools/uvloop live)

    def __init__(self, root: Path, *extra: str, start_timeout_s: float = 120.0) -> None:
        import tempfile

        self.port = free_port()
        exe = Path(sys.executable).with_name("flywheel")
        cmd = [str(exe), "-w", str(root), "serve", DATASET, "--version", VERSION, "--port", str(self.port), *extra]
        env = dict(os.environ)
        if self.extra_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.extra_path, env.get("PYTHONPATH")) if p)
        self.err = tempfile.TemporaryFile()  # a file, not a pipe: Ray's log lines would fill a pipe and block
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + start_timeout_s
        while True:  # ready = /readyz answers 200 (behind Ray's proxy the port opens before the replicas run)
            if self.proc.poll() is not None:
                self.err.seek(0)
                raise RuntimeError(f"flywheel serve exited: {self.err.read().decode()[-2000:]}")
            try:
                if send(self.port, b"", None, "/readyz", "GET")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"flywheel serve was not ready in {start_timeout_s:g} s")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def replica_pids(self, tries: int = 40) -> list[int]:
        """The pids that answer predictions (the X-Flywheel-Replica header's host:pid), seen over ``tries`` requests."""
        body = self.bodies[0] if self.bodies else png_of("L", 28)
        pids = set()
        for _ in range(tries):
            pids.add(int(send_headers(self.port, body, "image/png")["x-flywheel-replica"].rsplit(":", 1)[1]))
        return sorted(pids)

    bodies: list[bytes] = []

    def tree_rss_mb(self) -> float:
        """Every process under the server (for --replicas: the local Ray cluster's GCS, raylet, proxy, controller,
        replicas, agents)."""
        return sum(rss_mb(p) for p in process_tree(self.proc.pid))

    def stop(self) -> float:
        """SIGTERM; returns the seconds it took to exit (bounded shutdown)."""
        t0 = time.perf_counter()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


# -- a lean keep-alive client -------------------------------------------------------------------------------------


def request_bytes(path: str, body: bytes, ctype: str | None, method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode() + b"\r\n" + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "connection" and "close" in v.lower():
            close = True
    body = await reader.readexactly(length) if length else b""
    if close:
        raise ConnectionResetError("connection: close")
    return status, body


@dataclass
class LoadResult:
    concurrency: int
    n: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    server_ms: list[float] = field(default_factory=list)  # the latency_ms the service reports in each answer

    def q(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    def line(self) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (f"c={self.concurrency:>2}  {self.n / self.seconds:7.1f} req/s  p50 {self.q(0.50):6.1f} ms  "
                f"p95 {self.q(0.95):6.1f} ms  p99 {self.q(0.99):6.1f} ms  ({self.n} requests; {codes})")


async def _load(port: int, bodies: list[bytes], n: int, concurrency: int, ctype: str, parse: bool,
                path: str = "/v1/predict") -> LoadResult:
    res = LoadResult(concurrency, n, 0.0)
    counter = iter(range(n))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                raw = request_bytes(path, bodies[i % len(bodies)], ctype)
                t0 = time.perf_counter()
                try:
                    status, body = await _one(reader, writer, raw)
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    status, body = 0, b""
                res.latencies.append(time.perf_counter() - t0)
                res.statuses[status] = res.statuses.get(status, 0) + 1
                if parse and status == 200:
                    d = json.loads(body)
                    res.sources[d["source"]] = res.sources.get(d["source"], 0) + 1
                    res.server_ms.append(float(d["latency_ms"]))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    res.seconds = time.perf_counter() - t0
    return res


def load(port: int, bodies: list[bytes], n: int, concurrency: int, *, ctype: str = "image/png",
         parse: bool = False, path: str = "/v1/predict") -> LoadResult:
    return asyncio.run(_load(port, bodies, n, concurrency, ctype, parse, path))


# -- bad inputs ------------------------------------------------------------------------------------------------------


def png_of(mode: str, side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, "PNG")
    return buf.getvalue()


def bad_inputs(good: bytes) -> list[tuple[str, bytes, str | None]]:
    deep = b'{"image_base64": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    return [
        ("deep JSON (1,000 levels)", deep, "application/json"),
        ("deep JSON (100,000 levels)", b"[" * 100_000 + b"]" * 100_000, "application/json"),
        ("pixel bomb over the limit (8000x8000, 1-bit)", png_of("1", 8000), "image/png"),
        ("garbage bytes", os.urandom(2000), "image/png"),
        ("truncated PNG", good[:60], "image/png"),
        ("oversize body (9 MB)", b"\0" * (9 * 1024 * 1024), "image/png"),
        ("text/plain to an image model", b"a shirt", "text/plain"),
        ("application/xml", b"<xml/>", "application/xml"),
        ("no Content-Type, not JSON", b"hello", None),
        ('JSON {"text": ...} to an image model', b'{"text": "a shirt"}', "application/json"),
        ("JSON with bad base64", b'{"image_base64": "%%%"}', "application/json"),
        ("JSON array", b"[1, 2]", "application/json"),
        ("empty body", b"", "image/png"),
        ("multipart without a file field", b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
         "multipart/form-data; boundary=b"),
    ]


def send(port: int, body: bytes, ctype: str | None, path: str = "/v1/predict", method: str = "POST"
         ) -> tuple[int, float]:
    async def go() -> tuple[int, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        try:
            status, _ = await _one(reader, writer, request_bytes(path, body, ctype, method))
        except (ConnectionError, asyncio.IncompleteReadError):
            status = 0
        finally:
            writer.close()
        return status, time.perf_counter() - t0
    return asyncio.run(go())


def send_headers(port: int, body: bytes, ctype: str | None) -> dict[str, str]:
    """One POST /v1/predict; the answer's headers (lower-case names)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_bytes("/v1/predict", body, ctype).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head)}


def bad_input_phase(port: int, good: bytes) -> None:
    print("\nbad inputs (status per input; every one should be a 4xx):")
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    for name, body, ctype in bad_inputs(good):
        status, secs = send(port, body, ctype)
        key = f"{status // 100}xx" if status // 100 in (2, 4, 5) else "other"
        counts[key] += 1
        print(f"  {status}  {secs * 1000:8.1f} ms  {name}")
    print(f"  totals: {counts}")
    bomb = png_of("RGBA", 6300)  # 39.7 M pixels: under the 40 M limit, ~0.2 MB, hundreds of MB decoded
    print(f"\nfour {len(bomb):,}-byte 6300x6300 RGBA PNGs (under the pixel limit) in flight; meanwhile:")
    results: list[tuple[int, float]] = []
    threads = [threading.Thread(target=lambda: results.append(send(port, bomb, "image/png"))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    health = [send(port, b"", None, "/healthz", "GET") for _ in range(20)]
    small = [send(port, good, "image/png") for _ in range(20)]
    for t in threads:
        t.join()
    hl = sorted(s for _, s in health)
    sl = sorted(s for _, s in small)
    print(f"  /healthz: {sum(c == 200 for c, _ in health)}/20 ok, max {hl[-1] * 1000:.1f} ms; small predict: "
          f"{sum(c == 200 for c, _ in small)}/20 ok, max {sl[-1] * 1000:.1f} ms")
    print(f"  the four bombs: statuses {sorted(c for c, _ in results)}, "
          f"{', '.join(f'{s:.2f}' for _, s in sorted(results, key=lambda r: r[1]))} s")


# -- teacher down ----------------------------------------------------------------------------------------------------


class FrozenTeacher:
    """Accepts connections on loopback and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.conns: list[socket.socket] = []
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def teacher_down_phase(root: Path, bodies: list[bytes], n: int, deadline: float) -> None:
    print(f"\nteacher down, every request deferred (threshold 1.01), deadline {deadline:g} s, concurrency 8, {n} "
          "requests:")
    frozen = FrozenTeacher()
    for name, url in (("refusing connections", f"http://127.0.0.1:{free_port()}/v1"),
                      ("frozen (accepts, never answers)", f"http://127.0.0.1:{frozen.port}/v1")):
        srv = Server(root, "--teacher", f"{url}|down-model", "--api-key-env", "", "--threshold", "1.01",
                     "--deadline", str(deadline), "--log-sample-rate", "0")
        try:
            r = load(srv.port, bodies, n, 8, parse=True)
            stop_s = srv.stop()
        except BaseException:
            srv.stop()
            raise
        ok = r.q(0.99) <= deadline * 1000 + 100
        srv_ms = sorted(r.server_ms)
        srv_p99 = srv_ms[min(len(srv_ms) - 1, int(0.99 * len(srv_ms)))] if srv_ms else float("nan")
        slow = sum(x > deadline for x in r.latencies)
        print(f"  {name}: {r.line()}\n    sources {r.sources}; p99 {r.q(0.99):.0f} ms vs deadline + 100 ms = "
              f"{deadline * 1000 + 100:.0f} ms -> {'MET' if ok else 'MISSED'} ({slow} requests over the deadline; "
              f"p99 inside the service, from its answers' latency_ms: {srv_p99:.0f} ms); SIGTERM to exit {stop_s:.2f} s")
    frozen.close()


# -- main ------------------------------------------------------------------------------------------------------------


def load_phase(a: argparse.Namespace, pngs: list[bytes], stack: str, srv: Server | None = None,
               what: str | None = None) -> None:
    own = srv is None
    srv = srv or Server(a.workspace, "--workers", str(a.workers))
    try:
        load(srv.port, pngs, 300, 8)  # warm-up
        print(f"\nload: closed loop, keep-alive, {what or f'one process (--workers {a.workers})'}, HTTP stack {stack}, "
              f"load average {loadavg()}")
        for c in (1, 8, 32):
            r = load(srv.port, pngs, a.requests, c, parse=True)
            print(f"  {r.line()}  sources {r.sources}; inside the service p50 {_p50(r.server_ms):.2f} ms")
    finally:
        if own:
            srv.stop()


def memory_and_bad_inputs(a: argparse.Namespace, srv: Server, pngs: list[bytes], replicas: bool) -> None:
    pids = srv.replica_pids() if replicas else [srv.proc.pid]
    rss0, tree0 = sum(rss_mb(p) for p in pids), srv.tree_rss_mb()
    r = load(srv.port, pngs, a.rss_requests, 8)
    rss1, tree1 = sum(rss_mb(p) for p in pids), srv.tree_rss_mb()
    what = f"the {len(pids)} replica processes together" if replicas else "the process"
    print(f"\nmemory: RSS of {what} {rss0:.1f} MB -> {rss1:.1f} MB over {a.rss_requests:,} requests "
          f"(+{rss1 - rss0:.1f} MB)" + (f"; everything under the server (Ray's GCS, raylet, proxy, controller, "
                                        f"agents, replicas) {tree0:.0f} -> {tree1:.0f} MB" if replicas else "")
          + f"; that run: {r.line()}")
    bad_input_phase(srv.port, pngs[0])
    print(f"  load average {loadavg()}")


def replicas_phase(a: argparse.Namespace, pngs: list[bytes]) -> None:
    print(f"\n=== {a.ray_replicas} Ray Serve replicas: flywheel serve --replicas {a.ray_replicas} --workers "
          f"{a.workers} (a local Ray cluster started by the server; Ray's HTTP proxy on 127.0.0.1) ===")
    t0 = time.perf_counter()
    srv = Server(a.workspace, "--workers", str(a.workers), "--replicas", str(a.ray_replicas), start_timeout_s=300)
    srv.bodies = pngs
    try:
        pids = srv.replica_pids()
        print(f"started in {time.perf_counter() - t0:.1f} s (to /readyz 200); answering pids {pids}")
        load_phase(a, pngs, "Ray Serve's proxy (uvicorn) -> replica", srv,
                   what=f"{a.ray_replicas} replicas (--workers {a.workers} each)")
        if not a.only_load:
            memory_and_bad_inputs(a, srv, pngs, replicas=True)
    finally:
        stop_s = srv.stop()
    print(f"  SIGTERM to exit (serve.shutdown + ray.shutdown): {stop_s:.2f} s")


def _p50(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def ray_floor_phase(a: argparse.Namespace, pngs: list[bytes]) -> None:
    """Ray Serve's own cost on this machine: a FastAPI app that only reads the body (no model, no store) on the same
    number of replicas, same client and inputs -- what is left of the replicas' numbers above is the service's."""
    import ray
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    def build() -> FastAPI:
        app = FastAPI()

        async def predict(request):  # type: ignore[no-untyped-def]  # reads the body: pulled from the proxy
            t0 = time.perf_counter()
            n = len(await request.body())
            return JSONResponse({"source": f"{n} bytes", "latency_ms": (time.perf_counter() - t0) * 1000})

        app.add_route("/v1/predict", predict, methods=["POST"])  # plain Starlette: no annotation to resolve

        return app

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        dep = serve.deployment(num_replicas=a.ray_replicas, ray_actor_options={"num_cpus": 0.5},
                               max_ongoing_requests=66)(serve.ingress(build)())
        serve.run(dep.bind(), name="floor", route_prefix="/")
        load(port, pngs, 300, 8)  # warm-up
        print(f"\nRay Serve's own floor: a FastAPI app that only reads the body, {a.ray_replicas} replicas, same "
              f"client and PNGs, load average {loadavg()}")
        for c in (1, 8, 32):
            r = load(port, pngs, a.requests, c, parse=True)
            print(f"  {r.line()}  reading the body in the replica: p50 {_p50(r.server_ms):.2f} ms")
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/bench-serve-ws"))
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000, help="requests per concurrency level")
    ap.add_argument("--rss-requests", type=int, default=20_000)
    ap.add_argument("--deadline", type=float, default=1.0)
    ap.add_argument("--down-requests", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ray-replicas", type=int, default=2, help="Ray Serve replicas in the replicas phase (0: skip)")
    ap.add_argument("--extra-path", help="prepend to the server's PYTHONPATH, e.g. a folder with httptools and uvloop "
                                         "(what uvicorn[standard] installs; uvicorn uses them when importable)")
    ap.add_argument("--only-load", action="store_true", help="only the load phases (to compare HTTP stacks)")
    ap.add_argument("--only-down", action="store_true", help="only the teacher-down phase")
    a = ap.parse_args()
    Server.extra_path = None

    print(f"machine: {os.cpu_count()} CPUs, load average {loadavg()} (1/5/15 min)")
    train_s, pngs = prepare_model(a.workspace, a.limit, a.epochs)
    print(f"model: {VERSION} (image-cnn, ONNX Runtime), " + (f"trained in {train_s:.1f} s" if train_s else "cached")
          + f"; {len(pngs)} distinct test PNGs of ~{statistics.mean(len(p) for p in pngs):.0f} bytes")
    if a.only_down:
        teacher_down_phase(a.workspace, pngs, a.down_requests, a.deadline)
        return
    if a.extra_path:  # side by side in this run: uvicorn's pure-Python defaults, then the faster stack
        Server.extra_path = None
        load_phase(a, pngs, "h11 + asyncio (uvicorn's pure-Python defaults)")
        Server.extra_path = a.extra_path
    print("\n=== one process: flywheel serve ===")
    srv = Server(a.workspace, "--workers", str(a.workers))
    try:
        stack = "httptools + uvloop (from --extra-path)" if a.extra_path else "h11 + asyncio (uvicorn's pure-Python defaults)"
        load_phase(a, pngs, stack, srv)
        if not a.only_load:
            memory_and_bad_inputs(a, srv, pngs, replicas=False)
    finally:
        stop_s = srv.stop()
    print(f"  SIGTERM to exit: {stop_s:.2f} s")
    if a.ray_replicas > 0:
        replicas_phase(a, pngs)
        ray_floor_phase(a, pngs)
    if a.only_load:
        return
    teacher_down_phase(a.workspace, pngs, a.down_requests, a.deadline)
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
