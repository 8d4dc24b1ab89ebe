"""``POST /v1/predict/batch``: many inputs in one request, the student run once over all of them.

Why: a client with thousands of inputs made one HTTP request each, although ONNX Runtime answers several times more
inputs a second in batches (``benchmarks/bench_speed.py``).  A batch is a JSON object ``{"inputs": [...]}`` whose
elements are exactly the JSON bodies ``/v1/predict`` takes for the model's modality, at most ``max_batch`` of them and
``max_bytes`` in all.  Each element gets its own result -- an answer, or an ``error`` with the status and message the
single endpoint would have given -- so one bad input does not cost the other answers.  Decoding and the student run
on the same bounded worker pool as single requests (one job per batch); deferred inputs ask the teacher
concurrently, all within the request's one deadline; every answer is logged as feedback like a single request's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from llm_flywheel.interfaces.serve.inputs import (HINT, JSON_MODELS, HTTPProblem, RawInput, content_type, decode_image,
                                                  from_json_object, load_json, open_image, read_limited)
from llm_flywheel.pipeline.cascade import Cascade, CascadeAnswer
from llm_flywheel.pipeline.cascade_guard import DeadlineExceeded
from llm_flywheel.pipeline.unseen import unseen_categories

ServeState = Any  # app.ServeState (which imports this module): its cfg, pool, metrics, modality, answered()


class ItemError(BaseModel):
    status: int = Field(description="the HTTP status /v1/predict would have answered this input with")
    detail: str


class BatchResult(BaseModel):
    """One input's result: the fields of a /v1/predict answer, or ``error``."""

    label: str | None = None
    source: str | None = None
    confidence: float | None = None
    student_label: str | None = None
    student_confidence: float | None = None
    teacher_label: str | None = None
    input_hash: str | None = None
    unseen_categories: dict[str, str] | None = None
    error: ItemError | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult] = Field(description="one per input, in the order sent")
    model_version: str
    threshold: float
    latency_ms: float
    request_id: str


def request_body(modality: str, max_batch: int) -> dict[str, Any]:
    item = JSON_MODELS[modality].model_json_schema()
    schema = {"type": "object", "additionalProperties": False, "required": ["inputs"],
              "properties": {"inputs": {"type": "array", "minItems": 1, "maxItems": max_batch, "items": item}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def parse_batch(body: bytes, modality: str, max_bytes: int, max_batch: int,
                columns: Any = (), categorical: Any = ()) -> list[RawInput | HTTPProblem]:
    """The batch's inputs, each parsed as /v1/predict parses a JSON body; a body that is no batch at all is one
    :class:`HTTPProblem` for the whole request."""
    obj = load_json(body)
    if not isinstance(obj, dict) or set(obj) != {"inputs"} or not isinstance(obj["inputs"], list):
        raise HTTPProblem(422, 'a batch is a JSON object {"inputs": [...]} whose elements are what /v1/predict '
                               f"takes as JSON: for this {modality} model, {HINT[modality]}")
    n = len(obj["inputs"])
    if not 1 <= n <= max_batch:
        raise HTTPProblem(413 if n else 422, f"a batch holds 1 to {max_batch} inputs (--max-batch), got {n}")
    out: list[RawInput | HTTPProblem] = []
    for el in obj["inputs"]:
        try:
            if not isinstance(el, dict):
                raise HTTPProblem(422, f"each input is a JSON object: {HINT[modality]}")
            out.append(from_json_object(el, modality, max_bytes, columns, categorical))
        except HTTPProblem as p:
            out.append(p)
    return out


def _decode(st: ServeState, inp: RawInput) -> RawInput:
    """Images over the large-image size are refused here: /v1/predict decodes them one at a time on a pool of their
    own, and a batch of them would hold a worker (and its memory) for all of them."""
    if inp.kind == "image":
        im = open_image(inp.raw, st.cfg.max_image_pixels)
        if im.size[0] * im.size[1] > st.cfg.heavy_pixels:
            raise HTTPProblem(413, f"image is {im.size[0]}x{im.size[1]} pixels; a batch takes images up to "
                                   f"{st.cfg.heavy_pixels:,} pixels: send larger ones to /v1/predict one at a time")
        decode_image(inp, im)
    return inp


def prepare(st: ServeState, cascade: Cascade, body: bytes) -> list[tuple[RawInput, tuple[str, float]] | HTTPProblem]:
    """Parse, decode and run the student over every input that decodes, in one student call (worker-pool work)."""
    items: list[Any] = parse_batch(body, st.modality, st.cfg.max_bytes, st.cfg.max_batch, st.columns(cascade),
                                   cascade.task.categorical)
    for i, it in enumerate(items):
        if isinstance(it, RawInput):
            try:
                items[i] = _decode(st, it)
            except HTTPProblem as p:
                items[i] = p
    ok = [i for i, it in enumerate(items) if isinstance(it, RawInput)]
    guesses: dict[int, tuple[str, float]] = {}
    try:
        guesses = dict(zip(ok, cascade.student_guesses([items[i].content for i in ok])))
    except Exception:  # one input the model cannot use (a row of the wrong length): find it, answer the rest
        for i in ok:
            try:
                guesses[i] = cascade.student_guess(items[i].content)
            except Exception as e:
                items[i] = HTTPProblem(422, f"the model cannot use this input ({type(e).__name__}: {e})")
    good = [i for i in ok if i in guesses]
    for i, u in zip(good, unseen_categories(cascade, [items[i].content for i in good])):
        items[i].unseen = u
    return [(it, guesses[i]) if isinstance(it, RawInput) else it for i, it in enumerate(items)]


async def answer_batch(st: ServeState, request: Request, t0: float) -> JSONResponse:
    cascade = st.cascade  # this request's model from start to end, whatever .follow swaps in meanwhile
    body = await read_limited(request, st.cfg.max_bytes)
    ctype = content_type(request, body)
    if ctype != "application/json":
        raise HTTPProblem(415, f"a batch is JSON (Content-Type application/json), not {ctype or '(none)'!r}")
    prepared = await st.pool.run(prepare, st, cascade, body)
    end = t0 + st.cfg.deadline_s

    async def one(p: tuple[RawInput, tuple[str, float]] | HTTPProblem) -> dict[str, Any]:
        if isinstance(p, HTTPProblem):
            st.metrics.rejected(p.status)
            return {"error": {"status": p.status, "detail": p.message}}
        inp, guess = p
        try:
            ans: CascadeAnswer = await cascade.adecide(inp.content, *guess, content_hash=inp.hash,
                                                       deadline_s=end - time.perf_counter(),
                                                       on_deadline=st.cfg.on_deadline)
        except DeadlineExceeded:
            st.metrics.rejected(504)
            return {"error": {"status": 504, "detail": f"the teacher did not answer within the {st.cfg.deadline_s:g} s "
                                                       f"deadline (or its breaker is open, or its spend cap reached); "
                                                       f"the student's guess was {guess[0]!r} at confidence "
                                                       f"{guess[1]:.3f}"}}
        seconds = time.perf_counter() - t0
        ans.latency_ms = seconds * 1000
        st.answered(ans, inp, seconds)
        return {"label": ans.label, "source": ans.source, "confidence": ans.confidence,
                "student_label": ans.student_label, "student_confidence": ans.student_confidence,
                "teacher_label": ans.teacher_label, "input_hash": inp.hash[:16], "unseen_categories": inp.unseen}

    results = await asyncio.gather(*(one(p) for p in prepared))
    return JSONResponse({"results": results, "model_version": cascade.version, "threshold": cascade.threshold,
                         "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                         "request_id": uuid.uuid4().hex[:16]})
