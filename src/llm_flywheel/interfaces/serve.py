"""The HTTP service: the calibrated cascade behind ``POST /v1/predict``, with health, metrics and OpenAPI docs.

Why these choices:
- **Loopback by default**, no auth: the service is meant to sit behind your own gateway.
- **Bounded input**: the body is read in chunks and refused with 413 once it passes ``max_bytes`` (before it is
  all in memory); images are decoded once to check them (400 for undecodable bytes, 413 for pixel bombs).
- **Non-blocking teacher**: the student runs in a worker thread and a deferred item's teacher call is awaited on
  the event loop, so one slow teacher answer never holds up the student's answers to other requests.
- **Feedback**: every answered request is logged to ``cascade_log`` (sampled by ``log_sample_rate``); the input
  itself is kept under ``exports/served/`` only when it is at most ``max_logged_payload_bytes`` -- the wheel can
  later label or review what the service saw.
- **Metrics** in the Prometheus text format (written by hand, no extra dependency): requests by source, rejected
  requests by status, teacher fraction, a latency histogram.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from llm_flywheel.pipeline.cascade import SOURCES, Cascade, CascadeAnswer
from llm_flywheel.store.workspace import Workspace

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_LOGGED_PAYLOAD_BYTES = 256 * 1024
MAX_IMAGE_PIXELS = 40_000_000
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PredictJSON(BaseModel):
    """Exactly one of the fields: the input in the task's modality."""

    model_config = ConfigDict(extra="forbid")
    image_base64: str | None = Field(None, description="an image (PNG/JPEG/...) as base64, or a data: URL")
    text: str | None = Field(None, description="the text to classify (text tasks)")
    features: list[float] | None = Field(None, description="feature values (tabular tasks)")


class PredictResponse(BaseModel):
    label: str | None = Field(description="the answer; null only when deferred with no teacher configured")
    source: str = Field(description="student | teacher | teacher_failed | deferred")
    confidence: float
    student_label: str
    student_confidence: float = Field(description="calibrated student confidence")
    teacher_label: str | None
    model_version: str
    threshold: float
    latency_ms: float
    request_id: str


class HTTPProblem(Exception):
    """A request we refuse, with the status code and a message that says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- metrics ---------------------------------------------------------------------------------------------------------


class Metrics:
    """Counters and a histogram, rendered in the Prometheus text exposition format (version 0.0.4)."""

    def __init__(self, version: str, dataset: str) -> None:
        self.lock = threading.Lock()
        self.version, self.dataset = version, dataset
        self.by_source: dict[str, int] = {s: 0 for s in SOURCES}
        self.errors: dict[int, int] = {}
        self.buckets: dict[str, list[int]] = {s: [0] * len(LATENCY_BUCKETS) for s in SOURCES}
        self.lat_sum: dict[str, float] = {s: 0.0 for s in SOURCES}
        self.inflight = 0
        self.logged = 0
        self.payloads_kept = 0
        self.started = time.time()

    def answered(self, source: str, seconds: float) -> None:
        with self.lock:
            self.by_source[source] = self.by_source.get(source, 0) + 1
            b = self.buckets.setdefault(source, [0] * len(LATENCY_BUCKETS))
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    b[i] += 1
            self.lat_sum[source] = self.lat_sum.get(source, 0.0) + seconds

    def rejected(self, status: int) -> None:
        with self.lock:
            self.errors[status] = self.errors.get(status, 0) + 1

    def render(self) -> str:
        with self.lock:
            total = sum(self.by_source.values())
            lines = [
                "# HELP flywheel_requests_total Prediction requests answered, by who answered.",
                "# TYPE flywheel_requests_total counter",
                *(f'flywheel_requests_total{{source="{s}"}} {n}' for s, n in sorted(self.by_source.items())),
                "# HELP flywheel_request_errors_total Prediction requests refused, by HTTP status.",
                "# TYPE flywheel_request_errors_total counter",
                *(f'flywheel_request_errors_total{{code="{c}"}} {n}' for c, n in sorted(self.errors.items())),
                "# HELP flywheel_teacher_fraction Share of answered requests deferred by the student (since start).",
                "# TYPE flywheel_teacher_fraction gauge",
                f"flywheel_teacher_fraction {((total - self.by_source.get('student', 0)) / total) if total else 0.0!r}",
                "# HELP flywheel_inflight_requests Prediction requests being processed.",
                "# TYPE flywheel_inflight_requests gauge",
                f"flywheel_inflight_requests {self.inflight}",
                "# HELP flywheel_logged_requests_total Answers logged to the store as feedback (sampled).",
                "# TYPE flywheel_logged_requests_total counter",
                f"flywheel_logged_requests_total {self.logged}",
                "# HELP flywheel_model_info The model version being served.",
                "# TYPE flywheel_model_info gauge",
                f'flywheel_model_info{{version="{_esc(self.version)}",dataset="{_esc(self.dataset)}"}} 1',
                "# HELP flywheel_request_latency_seconds End-to-end latency of answered prediction requests.",
                "# TYPE flywheel_request_latency_seconds histogram",
            ]
            for s in sorted(self.buckets):
                b = self.buckets[s]
                n = self.by_source.get(s, 0)
                for le, c in zip(LATENCY_BUCKETS, b):
                    lines.append(f'flywheel_request_latency_seconds_bucket{{source="{s}",le="{le:g}"}} {c}')
                lines.append(f'flywheel_request_latency_seconds_bucket{{source="{s}",le="+Inf"}} {n}')
                lines.append(f'flywheel_request_latency_seconds_sum{{source="{s}"}} {self.lat_sum.get(s, 0.0)!r}')
                lines.append(f'flywheel_request_latency_seconds_count{{source="{s}"}} {n}')
        return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- input parsing ---------------------------------------------------------------------------------------------------


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            if int(cl) > max_bytes:
                raise HTTPProblem(413, f"request body is {int(cl):,} bytes; the limit is {max_bytes:,} bytes")
        except ValueError:
            raise HTTPProblem(400, "Content-Length is not a number") from None
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise HTTPProblem(413, f"request body exceeds the limit of {max_bytes:,} bytes")
    return bytes(buf)


def _check_image(data: bytes) -> None:
    from PIL import Image

    if not data:
        raise HTTPProblem(400, "the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise HTTPProblem(413, f"image is {w}x{h} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels")
            im.load()
    except HTTPProblem:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, bomb errors)
        raise HTTPProblem(400, f"cannot decode the image ({type(e).__name__}); send a PNG, JPEG, GIF, BMP or WebP file") from None


def _b64(s: str, max_bytes: int) -> bytes:
    if s.startswith("data:"):
        head, sep, s = s.partition(",")
        if not sep or ";base64" not in head:
            raise HTTPProblem(400, "image_base64 data: URL must be of the form data:image/png;base64,...")
    if len(s) * 3 // 4 > max_bytes:
        raise HTTPProblem(413, f"decoded image would exceed the limit of {max_bytes:,} bytes")
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPProblem(400, "image_base64 is not valid base64") from None


class _Input:
    def __init__(self, kind: str, content: Any, raw: bytes, ext: str) -> None:
        self.kind, self.content, self.raw, self.ext = kind, content, raw, ext
        self.hash = hashlib.sha256(raw).hexdigest()


async def parse_input(request: Request, modality: str, max_bytes: int) -> _Input:
    """The request body as one input of the task's modality, or an :class:`HTTPProblem`."""
    body = await _read_limited(request, max_bytes)
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        inp = await _parse_multipart(request, body)
    elif ctype == "application/json" or (ctype == "" and body.lstrip()[:1] in (b"{", b"[")):
        inp = _parse_json(body, max_bytes)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        inp = _Input("image", body, body, ".img")
    elif ctype == "text/plain":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPProblem(400, "text/plain body is not valid UTF-8") from None
        inp = _Input("text", text, body, ".txt")
    else:
        raise HTTPProblem(415, f"unsupported Content-Type {ctype or '(none)'!r}; send multipart/form-data with a 'file' "
                               "field, application/json with image_base64/text/features, or raw image/* bytes")
    if inp.kind != modality:
        hint = {"image": "an image (multipart 'file' or JSON image_base64)", "text": 'JSON {"text": ...}',
                "tabular": 'JSON {"features": [...]}'}[modality]
        raise HTTPProblem(422, f"this service's task takes {modality} input, got {inp.kind}; send {hint}")
    if inp.kind == "image":
        _check_image(inp.raw)
        inp.ext = _image_ext(inp.raw)
    elif inp.kind == "text" and not inp.content.strip():
        raise HTTPProblem(422, "text is empty")
    return inp


def _image_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    return ".img"


async def _parse_multipart(request: Request, body: bytes) -> _Input:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form()
    except Exception as e:
        raise HTTPProblem(400, f"cannot parse the multipart form ({type(e).__name__})") from None
    try:
        for key in ("file", "image"):
            f = form.get(key)
            if f is not None and hasattr(f, "read"):
                data = await f.read()
                return _Input("image", data, data, ".img")
        for key in ("text",):
            v = form.get(key)
            if isinstance(v, str):
                return _Input("text", v, v.encode("utf-8"), ".txt")
    finally:
        await form.close()
    raise HTTPProblem(422, "multipart form needs a 'file' field (an image) or a 'text' field")


def _parse_json(body: bytes, max_bytes: int) -> _Input:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPProblem(400, f"body is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise HTTPProblem(422, 'JSON body must be an object: {"image_base64": ...} or {"text": ...} or {"features": [...]}')
    try:
        req = PredictJSON.model_validate(obj)
    except Exception as e:
        errs = getattr(e, "errors", lambda: [])()
        detail = "; ".join(f"{'.'.join(str(x) for x in er.get('loc', ()))}: {er.get('msg')}" for er in errs) or str(e)
        raise HTTPProblem(422, f"invalid request: {detail}") from None
    given = [k for k in ("image_base64", "text", "features") if getattr(req, k) is not None]
    if len(given) != 1:
        raise HTTPProblem(422, f"give exactly one of image_base64, text, features (got {', '.join(given) or 'none'})")
    if req.image_base64 is not None:
        data = _b64(req.image_base64, max_bytes)
        return _Input("image", data, data, ".img")
    if req.text is not None:
        return _Input("text", req.text, req.text.encode("utf-8"), ".txt")
    feats = [float(x) for x in req.features or []]
    return _Input("tabular", feats, json.dumps(feats).encode(), ".json")


# -- the app ---------------------------------------------------------------------------------------------------------


def _keep_payload(ws: Workspace, inp: _Input) -> str:
    rel = f"exports/served/{inp.hash[:2]}/{inp.hash}{inp.ext}"
    dest = ws.root / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(inp.raw)
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return rel


def create_app(
    ws: Workspace,
    dataset: str,
    *,
    version: str | None = None,
    teacher_spec: str | None = None,
    teacher: Any = None,
    threshold: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    log_sample_rate: float = 1.0,
    max_logged_payload_bytes: int = DEFAULT_MAX_LOGGED_PAYLOAD_BYTES,
    seed: int | None = None,
) -> FastAPI:
    """Build the service for ``dataset``'s promoted (or given) calibrated model.

    ``teacher_spec`` (e.g. ``openrouter:google/gemini-2.5-flash``) or a ready ``teacher`` answers deferred requests;
    with neither, deferred requests come back with ``source="deferred"`` and ``label=null``.
    ``threshold`` overrides the calibrated threshold (the guarantee then no longer applies).
    """
    if not 0.0 <= log_sample_rate <= 1.0:
        raise ValueError(f"log_sample_rate must be in [0, 1], got {log_sample_rate}")
    if max_bytes <= 0 or max_logged_payload_bytes < 0:
        raise ValueError("max_bytes must be > 0 and max_logged_payload_bytes >= 0")
    if teacher is None and teacher_spec:
        from llm_flywheel.core.task import Task
        from llm_flywheel.teachers.registry import teacher_from_spec

        with ws.store() as s:
            task = Task.from_json(s.dataset_task_json(dataset))
        teacher = teacher_from_spec(teacher_spec, task, workspace=ws)
    if teacher is not None and hasattr(teacher, "check_ready"):
        teacher.check_ready()  # a missing API key is a startup error, not a failure on every request
    cascade = Cascade.from_store(ws, dataset, version=version, teacher=teacher, threshold=threshold)
    metrics = Metrics(cascade.version, dataset)
    rng = random.Random(seed)
    rng_lock = threading.Lock()
    modality = cascade.task.modality

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await cascade.aclose()
        cascade.close()

    app = FastAPI(
        lifespan=lifespan,
        title=f"llm-flywheel cascade: {dataset}",
        version=cascade.version,
        description=("Calibrated student-or-teacher cascade. The student answers when its calibrated confidence "
                     f"clears the threshold ({cascade.threshold:.4g}); otherwise the teacher is asked. "
                     "Each answer says its source, confidence and model version."),
    )
    app.state.cascade = cascade
    app.state.metrics = metrics

    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        metrics.rejected(exc.status)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/healthz", summary="Liveness and what is being served")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **cascade.describe(), "uptime_s": round(time.time() - metrics.started, 3)}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prom() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    openapi_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary", "description": "an image file"},
                    "text": {"type": "string", "description": "a text (text tasks)"}}}},
                "application/json": {"schema": PredictJSON.model_json_schema()},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        }
    }

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        summary="Classify one input with the cascade",
        openapi_extra=openapi_body,
        responses={400: {"description": "undecodable input or bad JSON"}, 413: {"description": "input too large"},
                   415: {"description": "unsupported Content-Type"}, 422: {"description": "wrong fields or modality"}},
    )
    async def predict(request: Request) -> PredictResponse:
        t0 = time.perf_counter()
        with metrics.lock:
            metrics.inflight += 1
        try:
            inp = await parse_input(request, modality, max_bytes)
            with rng_lock:
                sampled = log_sample_rate >= 1.0 or rng.random() < log_sample_rate
            try:
                ans: CascadeAnswer = await cascade.apredict_raw(inp.content, origin="serve", log=False,
                                                                content_hash=inp.hash)
            except Exception as e:  # e.g. a feature vector of the wrong length for a tabular student
                raise HTTPProblem(422, f"the model cannot use this input ({type(e).__name__}: {e})") from None
            seconds = time.perf_counter() - t0
            ans.latency_ms = seconds * 1000
            metrics.answered(ans.source, seconds)
            if sampled:
                await _log(ans, inp)
            return PredictResponse(label=ans.label, source=ans.source, confidence=ans.confidence,
                                   student_label=ans.student_label, student_confidence=ans.student_confidence,
                                   teacher_label=ans.teacher_label, model_version=ans.model_version,
                                   threshold=cascade.threshold, latency_ms=round(ans.latency_ms, 3),
                                   request_id=inp.hash[:16])
        finally:
            with metrics.lock:
                metrics.inflight -= 1

    async def _log(ans: CascadeAnswer, inp: _Input) -> None:
        import asyncio

        def work() -> None:
            ref = None
            if len(inp.raw) <= max_logged_payload_bytes:
                ref = _keep_payload(ws, inp)
                with metrics.lock:
                    metrics.payloads_kept += 1
            cascade.log_answers([ans], origin="serve", payload_refs=[ref])
            with metrics.lock:
                metrics.logged += 1

        try:
            await asyncio.to_thread(work)
        except Exception as e:  # logging feedback must never fail a request
            logger.warning("could not log a served request: %s: %s", type(e).__name__, e)

    return app


def parse_prometheus(text: str) -> dict[str, float]:
    """Parse exposition text into {'name{labels}': value}; raises ValueError on a malformed line (used by tests
    and by anyone scraping without a Prometheus client)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        if not key:
            raise ValueError(f"malformed metrics line: {line!r}")
        out[key] = float(val)
    return out


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def serve_forever(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


__all__: Sequence[str] = ("create_app", "parse_prometheus", "serve_forever", "Metrics", "PredictJSON",
                          "PredictResponse", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_LOGGED_PAYLOAD_BYTES")
