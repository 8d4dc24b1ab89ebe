"""A SIMULATED teacher: an OpenAI-compatible HTTP server that answers from the dataset's gold labels through an
explicit error model.

Why it exists: no vision LLM can be reached offline, yet the whole wheel (labelling, budgets, retries, cascade,
cost planning) must be exercised end to end.  The simulated teacher is used through the very same
:class:`~llm_flywheel.teachers.openai_compat.OpenAICompatTeacher` client as a real one, over real HTTP on
127.0.0.1.  Its model id starts with ``simulated/`` so every printout and report can say plainly that results
come from it.  Its accuracy is a *parameter* (default about 85 %), not a finding.

Error model (deterministic where a real LLM would be):

* it recognises an item by the sha256 of the image bytes / text it receives (the store's ``content_hash``);
* per-class error rates concentrated on look-alike classes (Fashion-MNIST: shirt / T-shirt / pullover / coat /
  dress, sneaker / sandal / ankle boot); other tasks get a neighbour confusion over the label list;
* correlated errors: a latent "difficulty" per item plus a per-pass draw keyed on (content hash, temperature,
  system prompt), so identical calls repeat their answer, diverse passes can differ, and hard items err on
  every pass more often than independent passes would;
* over-confident verbalised confidence (0.80-0.99 even when wrong, only weakly related to being right: a
  noisy function of the same margin as the logprobs below), ~1 % malformed replies and ~1 % 429s with
  ``Retry-After`` (random per request, like the real thing), lognormal latency, realistic token usage and a
  ``usage.cost`` priced like Gemini 2.5 Flash via OpenRouter;
* token log-probabilities when asked, behaving like a real model's: the label's probability follows the answer's
  *margin* -- how far the item's latent score lies from the point where the model would switch to the look-alike
  -- ``logit p = logprob_sharpness x |margin| + noise``.  Near the boundary a pass is torn (p ~ 0.5, right or
  wrong); far from it, sure (p > 0.99) -- and sure also when far on the wrong side (confidently wrong items
  exist).  So p is informative but no copy of gold, and mildly over-confident, as real logprobs are.

Batch API: ``/v1/files`` + ``/v1/batches`` with the lifecycle of OpenAI's (see
:mod:`llm_flywheel.teachers.simulated.batches`); each line is answered exactly as the same request online, at
``SimConfig.batch_price_ratio`` of its price.

Layout: :mod:`.errors` (the error model, pure), :mod:`.chat` (one chat-completions body -> reply),
:mod:`.batches` (files and batches), this module (the FastAPI app and running it on loopback).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from llm_flywheel.core.task import Task
from llm_flywheel.data.base import sha256
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.images import image_max_side_from_env, teacher_image
from llm_flywheel.teachers.prompts import row_content
from llm_flywheel.teachers.simulated.batches import BatchSim
from llm_flywheel.teachers.simulated.chat import ChatSim, text_key
from llm_flywheel.teachers.texts import over_limit, teacher_text, text_max_chars_from_env
from llm_flywheel.teachers.simulated.errors import (
    FASHION_CONFUSION,
    FASHION_DIFFICULTY,
    ErrorModel,
    SimConfig,
    model_id,
    variant_key,
)

__all__ = ["FASHION_CONFUSION", "FASHION_DIFFICULTY", "ErrorModel", "SimConfig", "model_id", "run_simulated_teacher",
           "serve_app", "sim_stats", "simulated_app", "variant_key"]


def _json(payload: Any, status: int = 200) -> Response:
    # pre-encoded: FastAPI's generic encoder is slow on nested dicts
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def _load(ws: Workspace, dataset: str) -> tuple[Task, dict[str, str | None], dict[str, str]]:
    aliases: dict[str, str] = {}
    with ws.store(readonly=True) as store:
        task = Task.from_json(store.dataset_task_json(dataset))
        if task.modality == "tabular":
            # a row reaches the server as text (prompts.row_content), not as the bytes the store hashed: key its
            # gold by what is sent, as texts and images are
            gold = {text_key(row_content(it.features or [])): it.gold_label for it in store.items(dataset)}
        else:
            gold = store.gold_by_hash(dataset)
            if task.modality == "image":
                aliases = _scaled_aliases(ws, store.items(dataset))
            elif task.modality == "text":
                aliases = _cut_aliases(store.items(dataset))
    if not any(gold.values()):
        raise ValueError(f"dataset {dataset!r} has no gold labels; the simulated teacher needs them")
    return task, gold, aliases


def _scaled_aliases(ws: Workspace, items: Any) -> dict[str, str]:
    """sha256 of what a client sends for a stored image larger than its limit (``teachers.images``, the limit of
    ``$FLYWHEEL_TEACHER_IMAGE_MAX_SIDE`` here) -> the item's content hash: a scaled picture is recognised as its
    item, with its gold label and the same error-model draws.  Blobs under 4 KB are not opened (Fashion-MNIST's
    70,000 need no header read): an image that small and over 1,568 pixels a side would be a line, not a photo."""
    max_side = image_max_side_from_env()
    out: dict[str, str] = {}
    for it in items if max_side else ():
        path = ws.root / it.blob_path if it.blob_path else None
        try:
            if path is None or path.stat().st_size < 4096:
                continue
            with Image.open(path) as im:
                if max(im.size) <= max_side:
                    continue
            out[sha256(teacher_image(path.read_bytes(), max_side)[0])] = it.content_hash
        except (OSError, ValueError):  # an unreadable blob is the client's problem to report
            continue
    return out


def _cut_aliases(items: Any) -> dict[str, str]:
    """The same for a text longer than a client sends (``teachers.texts``, ``$FLYWHEEL_TEACHER_TEXT_MAX_CHARS``
    here): its first part, as sent, is recognised as its item."""
    cap = text_max_chars_from_env()
    return {text_key(teacher_text(it.text, cap)[0]): it.content_hash
            for it in items if it.text and over_limit(it.text, cap)}


def simulated_app(ws: Workspace, dataset: str, config: SimConfig | None = None) -> FastAPI:
    """FastAPI app with OpenAI-compatible ``/v1/chat/completions``, ``/v1/models``, the Batch API (``/v1/files``,
    ``/v1/batches``) and ``/v1/_stats`` (requests per item/pass key, used by tests and benchmarks to prove nothing
    is asked twice)."""
    cfg = config or SimConfig()
    task, gold, aliases = _load(ws, dataset)
    mid = model_id(dataset, cfg)
    chat = ChatSim(task, gold, cfg, mid, aliases)
    app = FastAPI(title=f"SIMULATED teacher for {dataset}", docs_url=None, redoc_url=None)

    if cfg.api_key is not None:
        @app.middleware("http")
        async def auth(request: Request, call_next: Any) -> Any:
            wrong = request.headers.get("authorization") != f"Bearer {cfg.api_key}"
            if wrong and not request.url.path.endswith("/_stats"):  # the test's own counters need no key
                return _json({"error": {"message": "Incorrect API key provided (simulated)", "code": 401}}, 401)
            return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": mid, "object": "model", "owned_by": "llm-flywheel-simulated"}]}

    @app.get("/v1/_stats")
    async def get_stats() -> dict[str, Any]:
        with chat.lock:
            return {**chat.stats, "per_key": dict(chat.counts), "model": mid, "simulated": True}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, ValueError):
            return JSONResponse({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, 400)
        req = chat.arrive(body)
        if isinstance(req[0], int):
            return _json(req[1], req[0])
        r_429, r_bad, lat_z = chat.draw()
        if cfg.latency_ms > 0:
            await asyncio.sleep(cfg.latency_ms / 1000.0 * math.exp(cfg.latency_sigma * lat_z))
        if r_429 < cfg.rate_429:
            chat.count("status_429")
            return JSONResponse({"error": {"message": "Rate limit exceeded (simulated)", "code": 429}}, 429,
                                headers={"Retry-After": f"{cfg.retry_after_s:g}"})
        status, reply = chat.answer(body, req, r_bad)  # type: ignore[arg-type]
        return _json(reply, status)

    _batch_routes(app, BatchSim(chat, cfg))
    app.state.sim_model = mid
    app.state.sim_stats = chat.stats
    app.state.sim_counts = chat.counts
    return app


def _batch_routes(app: FastAPI, sim: BatchSim) -> None:
    """``/v1/files`` (multipart upload, content download) and ``/v1/batches`` (create, get, list, cancel)."""

    @app.post("/v1/files")
    async def upload(request: Request) -> Any:
        form = await request.form()
        f, purpose = form.get("file"), form.get("purpose")
        if f is None or isinstance(f, str) or purpose != "batch":
            return _json({"error": {"message": "multipart form with 'file' and purpose='batch' required",
                                    "type": "invalid_request_error"}}, 400)
        return _json(sim.add_file(await f.read(), str(purpose), f.filename or "input.jsonl"))

    @app.get("/v1/files/{fid}/content")
    async def content(fid: str) -> Any:
        data = sim.file_content(fid)
        if data is None:
            return _json({"error": {"message": f"no file {fid}", "type": "invalid_request_error"}}, 404)
        return Response(data, media_type="application/jsonl")

    @app.post("/v1/batches")
    async def create(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            return _json({"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}}, 400)
        status, obj = sim.create(body)
        return _json(obj, status)

    @app.get("/v1/batches")
    async def list_batches() -> Any:
        return _json(sim.list())

    @app.get("/v1/batches/{bid}")
    async def get(bid: str) -> Any:
        status, obj = sim.get(bid)
        return _json(obj, status)

    @app.post("/v1/batches/{bid}/cancel")
    async def cancel(bid: str) -> Any:
        status, obj = sim.cancel(bid)
        return _json(obj, status)


@contextmanager
def serve_app(app: Any, *, port: int = 0, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread on loopback; yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the simulated teacher listens on loopback only")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the simulated teacher server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(timeout=10)
        sock.close()


@contextmanager
def run_simulated_teacher(ws: Workspace, dataset: str, config: SimConfig | None = None, *,
                          port: int = 0) -> Iterator[str]:
    """Start the simulated teacher on 127.0.0.1 (``port=0``: any free port); yields its base URL ``.../v1``.

    Use it with ``teacher_from_spec(f"{url}|{model_id(dataset)}", task, api_key_env="")``.
    """
    app = simulated_app(ws, dataset, config)
    with serve_app(app, port=port) as root:
        yield f"{root}/v1"


def sim_stats(base_url: str) -> dict[str, Any]:
    """Fetch the simulated server's request counters (``/v1/_stats``)."""
    import httpx

    return httpx.get(f"{base_url.rstrip('/')}/_stats", timeout=10).json()
