"""The FastAPI app: ``POST /v1/predict`` through the bounded pools and the cascade, plus health, readiness, metrics.

Why the request path looks like this: the event loop only reads bodies and awaits; JSON/base64 parsing, image
decoding and the student run on a bounded worker pool (503 + Retry-After when its queue is full), large images on
a pool of their own, and a deferred item waits for the teacher at most until the request's deadline.  ``/healthz``
is answered by the loop alone, so it stays fast whatever the pools are doing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_flywheel.interfaces.serve.batch import BatchResponse, answer_batch
from llm_flywheel.interfaces.serve.batch import request_body as batch_request_body
from llm_flywheel.interfaces.serve.config import REPLICA_HEADER, ServeConfig
from llm_flywheel.interfaces.serve.feedback_log import FeedbackLog
from llm_flywheel.interfaces.serve.follow import follow_promoted, warm
from llm_flywheel.interfaces.serve.inputs import (HTTPProblem, RawInput, check_content_type, content_type, decode_image,
                                                  extract, open_image, parse_multipart, read_limited)
from llm_flywheel.interfaces.serve.metrics import BREAKER_STATES, Metrics
from llm_flywheel.interfaces.serve.openapi import RESPONSES, request_body
from llm_flywheel.interfaces.serve.pool import Overloaded, WorkerPool
from llm_flywheel.interfaces.serve.retention import apply_retention
from llm_flywheel.interfaces.serve.unseen import UnseenLog
from llm_flywheel.pipeline.cascade import Cascade, CascadeAnswer
from llm_flywheel.pipeline.cascade_guard import DeadlineExceeded
from llm_flywheel.pipeline.predict_files import table_text_columns
from llm_flywheel.pipeline.unseen import unseen_categories
from llm_flywheel.pipeline.served_model import check_served_model
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.errors import require_readable_labels

logger = logging.getLogger(__name__)


class PredictResponse(BaseModel):
    label: str | None = Field(description="the answer; null only when deferred with no teacher configured")
    source: str = Field(description="student | teacher | teacher_failed | deferred | student_fallback")
    confidence: float
    student_label: str
    student_confidence: float = Field(description="calibrated student confidence")
    teacher_label: str | None
    model_version: str
    threshold: float
    latency_ms: float
    request_id: str = Field(description="unique per request (quote it when reporting a problem)")
    input_hash: str = Field(description="the first 16 hex digits of the input's content hash: the same input gives "
                                        "the same hash; its cascade_log row's content_hash starts with it")
    unseen_categories: dict[str, str] = Field(description="a table's values the model never saw in training, by "
                                                          "column (answered as missing values); empty otherwise")


@dataclass
class ServeState:
    """Everything one app instance holds; ``app.state.serve``."""

    ws: Workspace
    cascade: Cascade
    cfg: ServeConfig
    metrics: Metrics
    pool: WorkerPool
    heavy: WorkerPool
    feedback: FeedbackLog
    rng: random.Random
    rng_lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    draining: bool = False
    retention_task: asyncio.Task[None] | None = None
    follow_task: asyncio.Task[None] | None = None
    swaps: int = 0  # models swapped in since start (.follow)
    unloadable: str | None = None  # the promoted version that could not be loaded (warned once)
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    cap: Any = None  # the teacher's spend cap (pipeline.serve_budget.TeacherSpendCap), when one is set
    unseen_log: UnseenLog = field(default_factory=UnseenLog)
    text_columns: tuple[str, ...] = ("text",)  # a text dataset's source columns: JSON {"fields": {...}} joins them

    @property
    def modality(self) -> str:
        return self.cascade.task.modality

    def columns(self, cascade: Cascade) -> tuple[str, ...]:
        """What a JSON input names by key: a table's feature columns, a text dataset's source columns."""
        return self.text_columns if self.modality == "text" else tuple(cascade.task.features)

    def answered(self, ans: CascadeAnswer, inp: RawInput, seconds: float) -> None:
        """Count an answer (and any category its model never saw) and queue it as feedback when sampled."""
        self.metrics.answered(ans.source, seconds)
        if inp.unseen:
            self.metrics.unseen(list(inp.unseen))
            self.unseen_log.add(inp.unseen, ans.model_version)
        if self.sampled():
            self.feedback.put(ans, inp)

    def sampled(self) -> bool:
        if self.cfg.log_sample_rate >= 1.0:
            return True
        with self.rng_lock:
            return self.rng.random() < self.cfg.log_sample_rate

    # -- the request path ------------------------------------------------------------------------------------
    async def read_input(self, request: Request) -> tuple[bytes, str, RawInput | None]:
        body = await read_limited(request, self.cfg.max_bytes)
        ctype = content_type(request, body)
        check_content_type(ctype, self.modality)
        inp = await parse_multipart(request, body, self.modality) if ctype == "multipart/form-data" else None
        return body, ctype, inp

    def prepare(self, cascade: Cascade, body: bytes, ctype: str, inp: RawInput | None,
                heavy: bool) -> tuple[RawInput, tuple[str, float] | None]:
        """(input, student guess) -- or (input, None) when it is a large image that belongs on the heavy pool."""
        if inp is None:
            inp = extract(body, ctype, self.modality, self.cfg.max_bytes, self.columns(cascade),
                          cascade.task.categorical)
        if inp.kind == "image":
            im = open_image(inp.raw, self.cfg.max_image_pixels)
            if im.size[0] * im.size[1] > self.cfg.heavy_pixels and not heavy:
                return inp, None
            decode_image(inp, im)
        try:
            guess = cascade.student_guess(inp.content)
        except Exception as e:  # e.g. a feature vector of the wrong length for a tabular student
            raise HTTPProblem(422, f"the model cannot use this input ({type(e).__name__}: {e})") from None
        inp.unseen = unseen_categories(cascade, [inp.content])[0]
        return inp, guess

    async def answer(self, request: Request, t0: float) -> JSONResponse:
        cascade = self.cascade  # this request's model from start to end, whatever .follow swaps in meanwhile
        body, ctype, inp = await self.read_input(request)
        inp, guess = await self.pool.run(self.prepare, cascade, body, ctype, inp, False)
        if guess is None:
            inp, guess = await self.heavy.run(self.prepare, cascade, body, ctype, inp, True)
        assert guess is not None
        left = self.cfg.deadline_s - (time.perf_counter() - t0)
        try:
            ans: CascadeAnswer = await cascade.adecide(inp.content, *guess, content_hash=inp.hash,
                                                       deadline_s=left, on_deadline=self.cfg.on_deadline)
        except DeadlineExceeded:
            raise HTTPProblem(504, f"the teacher did not answer within the {self.cfg.deadline_s:g} s deadline (or its "
                                   f"breaker is open, or its spend cap reached); the student's guess was {guess[0]!r} "
                                   f"at confidence {guess[1]:.3f}") from None
        seconds = time.perf_counter() - t0
        ans.latency_ms = seconds * 1000
        self.answered(ans, inp, seconds)
        # a plain JSONResponse (the fields of PredictResponse): FastAPI would validate a model a second time
        return JSONResponse({"label": ans.label, "source": ans.source, "confidence": ans.confidence,
                             "student_label": ans.student_label, "student_confidence": ans.student_confidence,
                             "teacher_label": ans.teacher_label, "model_version": ans.model_version,
                             "threshold": cascade.threshold, "latency_ms": round(ans.latency_ms, 3),
                             "request_id": uuid.uuid4().hex[:16], "input_hash": inp.hash[:16],
                             "unseen_categories": inp.unseen},
                            headers={REPLICA_HEADER: self.replica})

    # -- readiness and lifecycle -----------------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        store_ok, store_err = True, None
        try:
            await asyncio.wait_for(asyncio.to_thread(self._check_store), timeout=2.0)
        except Exception as e:
            store_ok, store_err = False, f"{type(e).__name__}: {e}"
        b = self.cascade.breaker.state()
        spend = None
        if self.cap is not None and store_ok:  # read again: the cap's own figures are as of its last call
            spend = asdict(await asyncio.to_thread(self.cap.refresh))
        elif self.cap is not None:
            spend = asdict(self.cap.state())
        ok = self.ready and store_ok and not self.draining
        body = {"status": "ready" if ok else "not_ready", "replica": self.replica, "model_loaded": self.ready,
                "draining": self.draining,
                "store_writable": store_ok, "store_error": store_err,
                "teacher": None if self.cascade.teacher is None else {
                    "breaker": b.state, "consecutive_failures": b.consecutive_failures,
                    "retry_in_s": round(b.retry_in_s, 3), "calls_in_flight": self.cascade.teacher_calls_in_flight,
                    "spend_cap": spend},
                "queue": {"main": self.pool.admitted, "main_capacity": self.pool.capacity,
                          "heavy": self.heavy.admitted, "heavy_capacity": self.heavy.capacity}}
        return ok, body

    def _check_store(self) -> None:
        with self.ws.store() as s:
            s.check_writable()

    async def retention_loop(self) -> None:
        while True:
            try:
                rep = await asyncio.to_thread(
                    apply_retention, self.ws, max_age_days=self.cfg.retention_max_age_days,
                    max_rows=self.cfg.retention_max_rows, max_payload_bytes=self.cfg.retention_max_payload_bytes)
                with self.metrics.lock:
                    self.metrics.retention_deleted_rows += rep.rows_deleted
                    self.metrics.retention_deleted_payloads += rep.payloads_deleted
            except Exception as e:  # retention must never take the service down
                logger.warning("retention pass failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(self.cfg.retention_interval_s)

    async def shutdown(self) -> None:
        """Bounded: stop taking work, write the queued feedback, cancel teacher calls still running."""
        self.draining = True
        for task in (self.retention_task, self.follow_task):
            if task is not None:
                task.cancel()
        await asyncio.to_thread(self.feedback.close, self.cfg.shutdown_grace_s)
        await self.cascade.aclose()
        self.pool.shutdown()
        self.heavy.shutdown()
        self.cascade.close()


# -- building the app ----------------------------------------------------------------------------------------------


def create_app(ws: Workspace, dataset: str, *, version: str | None = None, teacher_spec: str | None = None,
               api_key_env: str | None = None, teacher: Any = None, threshold: float | None = None,
               config: ServeConfig | None = None, **overrides: Any) -> FastAPI:
    """Build the service for ``dataset``'s promoted (or given) calibrated model.

    ``teacher_spec`` (e.g. ``openrouter:google/gemini-2.5-flash``) or a ready ``teacher`` answers deferred requests;
    with neither, deferred requests come back with ``source="deferred"`` and ``label=null``; ``api_key_env`` names the
    key's variable for ``teacher_spec`` (None: the provider's default, "": no key).  ``threshold``
    overrides the calibrated threshold (the guarantee then no longer applies).  ``config`` (or keyword overrides of
    its fields, e.g. ``deadline_s=2``) sets the limits; a bad value raises ``ValueError`` here, at startup.
    """
    from dataclasses import replace

    from llm_flywheel.pipeline.cascade_guard import TeacherBreaker
    from llm_flywheel.pipeline.serve_budget import TeacherSpendCap

    cfg = replace(config or ServeConfig(), **overrides)
    if teacher is None and teacher_spec:
        from llm_flywheel.core.task import Task
        from llm_flywheel.teachers.registry import teacher_from_spec

        with ws.store() as s:
            task = Task.from_json(s.dataset_task_json(dataset))
        teacher = teacher_from_spec(teacher_spec, task, api_key_env=api_key_env, workspace=ws)
    if teacher is not None:
        teacher.check_ready()  # a missing API key is a startup error, not a failure on every request
        require_readable_labels(getattr(teacher, "task", None), teacher.is_simulated)
        with ws.store() as s:  # as is a local server now serving another model under a name with cached answers
            check_served_model(s, teacher)
    cascade = Cascade.from_store(ws, dataset, version=version, teacher=teacher, threshold=threshold,
                                 breaker=TeacherBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s))
    cap = None
    if cfg.spend_capped:
        if teacher is None:
            raise ValueError("a teacher budget (teacher_budget_usd / teacher_max_calls) needs a teacher")
        cap = TeacherSpendCap(cfg.teacher_budget_usd, cfg.teacher_max_calls, cfg.teacher_budget_hours * 3600)
    if teacher is not None:
        cascade.limit_teacher(cap=cap, concurrency=cfg.teacher_calls_at_once(bool(getattr(teacher, "local", False))))
    st = ServeState(ws, cascade, cfg, Metrics(cascade.version, dataset), WorkerPool("main", cfg.workers, cfg.queue),
                    WorkerPool("heavy", 1, cfg.heavy_queue),
                    FeedbackLog(cascade, ws.root, cfg.max_logged_payload_bytes), random.Random(cfg.seed))
    st.cap = cap
    if st.modality == "text":
        st.text_columns = table_text_columns(ws, dataset, None)
    _warm_up(st)
    _gauges(st)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if cfg.retention_on:
            st.retention_task = asyncio.create_task(st.retention_loop())
        if cfg.follow_promoted_s > 0 and version is None:  # a model named at startup stays
            st.follow_task = asyncio.create_task(follow_promoted(st, cfg.follow_promoted_s))
        yield
        await st.shutdown()

    app = FastAPI(lifespan=lifespan, title=f"llm-flywheel cascade: {dataset}", version=cascade.version,
                  description=(f"Calibrated student-or-teacher cascade for a {st.modality} model. The student "
                               f"answers when its calibrated confidence clears the threshold ({cascade.threshold:.4g});"
                               " otherwise the teacher is asked, for at most the request's deadline "
                               f"({cfg.deadline_s:g} s). Each answer says its source, confidence and model version."))
    app.state.serve = st  # st.cascade is the model answering now (.follow swaps it)
    app.state.metrics = st.metrics
    _handlers(app, st)
    _routes(app, st)
    return app


def _warm_up(st: ServeState) -> None:
    """Run the student once so the first request does not pay for lazy loading; /readyz says ready after it."""
    warm(st.cascade)
    st.ready = True


def _gauges(st: ServeState) -> None:
    g = st.metrics.gauges
    g["flywheel_queue_depth"] = ("Requests admitted to the main worker pool (running + waiting).",
                                 lambda: st.pool.admitted)
    g["flywheel_heavy_queue_depth"] = ("Large images admitted to their own pool.", lambda: st.heavy.admitted)
    g["flywheel_overloaded_total"] = ("Requests refused with 503 because a queue was full (counter).",
                                      lambda: st.pool.refused + st.heavy.refused)
    g["flywheel_teacher_breaker_state"] = ("Teacher circuit breaker: 0 closed, 1 half-open, 2 open.",
                                           lambda: BREAKER_STATES.index(st.cascade.breaker.state().state))
    g["flywheel_teacher_calls_in_flight"] = ("Teacher calls running (some outlive their request's deadline).",
                                             lambda: st.cascade.teacher_calls_in_flight)
    g["flywheel_model_swaps_total"] = ("Newly promoted models swapped in since start (counter).", lambda: st.swaps)
    if st.cap is not None:
        g["flywheel_teacher_spend_usd"] = ("Teacher USD bought by serving in the cap's window, every process on the "
                                           "store (as last read).", lambda: st.cap.state().spent_usd)
        g["flywheel_teacher_spend_refused_total"] = ("Teacher calls not made because the spend cap was reached "
                                                     "(counter).", lambda: st.cap.state().refused_total)
    g["flywheel_log_dropped_total"] = ("Served answers not logged because the store could not keep up (counter).",
                                       lambda: st.feedback.dropped)


def _handlers(app: FastAPI, st: ServeState) -> None:
    def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        st.metrics.rejected(status)
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        return problem(exc.status, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return problem(503, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in a request")
        return problem(500, f"internal error ({type(exc).__name__}); see the server log")


def _routes(app: FastAPI, st: ServeState) -> None:
    @app.get("/healthz", summary="Liveness: the process answers (never waits on the pools, store or teacher)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **st.cascade.describe(), "replica": st.replica,
                "uptime_s": round(time.time() - st.metrics.started, 3)}

    @app.get("/readyz", summary="Readiness: model loaded, store writable, not draining; teacher breaker state")
    async def readyz() -> JSONResponse:
        ok, body = await st.readiness()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prom() -> PlainTextResponse:
        return PlainTextResponse(st.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/predict", response_model=PredictResponse, summary="Classify one input with the cascade",
              openapi_extra=request_body(st.modality), responses=RESPONSES)
    async def predict(request: Request) -> JSONResponse:
        return await _counted(st, st.answer, request)

    @app.post("/v1/predict/batch", response_model=BatchResponse,
              summary=f"Classify up to {st.cfg.max_batch} inputs in one request (one result each, errors included)",
              openapi_extra=batch_request_body(st.modality, st.cfg.max_batch), responses=RESPONSES)
    async def predict_batch(request: Request) -> JSONResponse:
        resp = await _counted(st, lambda r, t0: answer_batch(st, r, t0), request)
        resp.headers[REPLICA_HEADER] = st.replica
        return resp


async def _counted(st: ServeState, handler: Any, request: Request) -> JSONResponse:
    t0 = time.perf_counter()
    with st.metrics.lock:
        st.metrics.inflight += 1
    try:
        return await handler(request, t0)
    finally:
        with st.metrics.lock:
            st.metrics.inflight -= 1
