"""A teacher behind any OpenAI-compatible ``/chat/completions`` endpoint.

OpenRouter, OpenAI, Gemini's OpenAI-compatible endpoint, vLLM, Ollama, llama.cpp's server and LM Studio all speak
this protocol, so one client covers them (and the simulated teacher, which is reached exactly the same way).  It
implements :class:`~llm_flywheel.teachers.base.Teacher`; the parts live beside it:

* :mod:`~llm_flywheel.teachers.prompts` -- what is asked (wordings, diverse passes, schema, prompt version);
* :mod:`~llm_flywheel.teachers.negotiation` -- which structured-output mode the endpoint accepts, found once;
* :mod:`~llm_flywheel.teachers.errors` -- failure classification and the messages that name the fix;
* :mod:`~llm_flywheel.teachers.response` -- a reply read into answer fields;
* :mod:`~llm_flywheel.teachers.asking` -- one item through all its attempts; :mod:`~llm_flywheel.teachers.session`
  -- the per-run session labelling and the cascade use; :mod:`~llm_flywheel.teachers.server` -- llama.cpp's /props.

Why these choices:

* **Retry only what can succeed**: 429 (honouring ``Retry-After``), 5xx, timeouts, dropped connections -- with
  exponential backoff and jitter.  Fatal failures (nothing listens at the URL, the host does not resolve, 401/403,
  404; see :data:`~llm_flywheel.teachers.base.FATAL_ERROR_KINDS`) get at most one quick retry and come back with a
  message that names the URL and the fix.  "Context size exceeded" is not transient: the item text is shortened
  once and re-asked, else the item fails clearly.
* **Answers that survive truncation**: ``label`` comes first in the schema, ``reason`` is bounded (schema
  ``maxLength`` and the instructions), ``finish_reason == "length"`` is checked; a label already written in full
  before the cut is recovered (recorded as ``recovered_truncated``), otherwise the item is re-asked once with a
  larger ``max_tokens`` and no reason.
* **Timeouts follow the server**: see :meth:`OpenAICompatTeacher.current_timeout`.
* **The API key** is read from the named environment variable at call time and sent only in the
  ``Authorization`` header.  It is never stored, logged, put in an error message or ``repr``'d; provider error
  bodies are redacted before they are recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import httpx

from llm_flywheel.core.task import Task
from llm_flywheel.data.base import encode_png, sha256
from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.asking import CONNECT_TIMEOUT, QUICK_RETRY_DELAY, Asking, Call
from llm_flywheel.teachers.base import ServerInfo, TeacherAnswer
from llm_flywheel.teachers.concurrency import RateLimiter, is_local_url, note_server_slots
from llm_flywheel.teachers.errors import (FATAL_STATUSES, RETRYABLE_KINDS, TeacherConfigError, classify_transport_error,
                                          fatal_fix, is_context_exceeded, redact, refused_response_format)
from llm_flywheel.teachers.images import image_max_side_from_env, teacher_image
from llm_flywheel.teachers.negotiation import PROBE_GIVE_UP, CapabilityCache, Negotiation, StoreCapabilityCache
from llm_flywheel.teachers.parsing import LabelMatcher
from llm_flywheel.teachers.pricing import Pricing
from llm_flywheel.teachers.prompts import (NO_REASON_NOTE, REASON_MAX_CHARS, REASON_MAX_WORDS, RESPONSE_FORMAT_MODES,
                                           STRUCTURED_MODES, TEMPERATURES, TEMPLATE_VERSION, WORDINGS,
                                           compute_prompt_version, image_content, label_order,
                                           pass_variant, response_format, response_schema, row_content,
                                           system_prompt)
from llm_flywheel.teachers.server import fit_text, read_server_info
from llm_flywheel.teachers.session import OpenAICompatSession, run_sync
from llm_flywheel.teachers.texts import over_limit, teacher_text, text_max_chars_from_env
from llm_flywheel.teachers.timeouts import DEFAULT_TIMEOUT_CAP, TIMEOUT_FIRST, TIMEOUT_FLOOR, Timeouts

__all__ = [  # the names callers imported from here before the split keep working
    "CONNECT_TIMEOUT", "FATAL_STATUSES", "NO_REASON_NOTE", "PROBE_GIVE_UP", "QUICK_RETRY_DELAY", "REASON_MAX_CHARS",
    "REASON_MAX_WORDS", "RESPONSE_FORMAT_MODES", "RETRYABLE_KINDS", "STRUCTURED_MODES", "TEMPERATURES",
    "TEMPLATE_VERSION", "WORDINGS", "CapabilityCache", "OpenAICompatSession", "OpenAICompatTeacher", "RateLimiter",
    "StoreCapabilityCache", "TeacherConfigError", "classify_transport_error", "compute_prompt_version", "fatal_fix",
    "is_context_exceeded", "label_order", "pass_variant", "redact", "refused_response_format", "response_schema",
    "run_sync", "system_prompt",
]

log = logging.getLogger(__name__)

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_API_KEY_ENV = "OPENROUTER_API_KEY"
TOP_LOGPROBS = 20  # alternatives per token: the most OpenAI accepts; enough to see the other labels' first tokens


class OpenAICompatTeacher(Negotiation, Asking, Timeouts, Pricing):
    """Implements the Teacher protocol against an OpenAI-compatible chat-completions endpoint.

    ``response_format``: ``"auto"`` (default) negotiates from ``json_schema`` down, starting from what the
    workspace remembers for this (base_url, model); a mode from :data:`RESPONSE_FORMAT_MODES` starts there (and
    still steps down when refused) without reading the memory.  ``capability_cache``: where that memory lives --
    ``None`` uses the workspace the teacher works in (``workspace=`` or the ``ws`` given to :meth:`alabel_one`),
    ``False`` remembers nothing beyond this object.  ``timeout``: the cap on one request's wait (see
    :meth:`current_timeout`); ``None`` caps at :data:`DEFAULT_TIMEOUT_CAP`.
    """

    def __init__(
        self,
        base_url: str = OPENROUTER_BASE_URL,
        model: str = "google/gemini-2.5-flash",
        *,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        task: Task | None = None,
        prompt_version: str | None = None,
        timeout: float | None = None,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        response_format: str = "auto",
        logprobs: bool = True,
        max_tokens: int = 300,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
        extra_body: dict[str, Any] | None = None,
        workspace: Workspace | None = None,
        rpm: float | None = None,
        capability_cache: CapabilityCache | bool | None = None,
        local: bool | None = None,
        reason: bool | None = None,
        confidence: bool | None = None,
        image_max_side: int | None = None,
        text_max_chars: int | None = None,
    ) -> None:
        if not re.match(r"^https?://", base_url or ""):
            raise TeacherConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if response_format != "auto" and response_format not in RESPONSE_FORMAT_MODES:
            raise TeacherConfigError(
                f"response_format must be 'auto' or one of {RESPONSE_FORMAT_MODES}, got {response_format!r}")
        if not model:
            raise TeacherConfigError("model must be given")
        if timeout is not None and timeout <= 0:
            raise TeacherConfigError(f"timeout must be > 0 seconds, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        # on the user's own hardware (None: judged from the URL): no task token prices, priced by latency. The
        # simulated teacher listens on loopback but stands in for a paid API, so it keeps the task's prices.
        self.local = (is_local_url(self.base_url) and not self.is_simulated) if local is None else bool(local)
        # ask for a short reason with each label (None: yes for a remote API, no on the user's own hardware, where
        # decoding those tokens is most of a call's time; see prompts.LABEL_ONLY_WORDINGS)
        self.reason = (not self.local) if reason is None else bool(reason)
        self.confidence = confidence  # ask for a stated confidence (None: see Negotiation._asks_confidence)
        self.api_key_env = api_key_env
        self.task = task
        self._explicit_pv = prompt_version
        self.timeout = float(timeout) if timeout is not None else DEFAULT_TIMEOUT_CAP  # the cap
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._init_negotiation(response_format, logprobs, capability_cache, workspace)
        self.max_tokens = max_tokens
        self.price_in = price_in_per_mtok
        self.price_out = price_out_per_mtok
        self.extra_body = dict(extra_body or {})
        self.image_max_side = image_max_side_from_env() if image_max_side is None else image_max_side  # 0: as stored
        self.text_max_chars = text_max_chars_from_env() if text_max_chars is None else text_max_chars  # 0: whole
        self.limiter = RateLimiter(rpm)  # the default session's; a session given rpm= has its own
        self._matchers: dict[str, LabelMatcher] = {}
        self._pv_cache: dict[int, tuple[Task, str]] = {}
        self._ssl: Any = None
        self.http_requests = 0  # attempts sent (including retries), for observability
        self.progress_waits = 0  # requests a llama.cpp server was still working on at their timeout: kept waiting
        self.retry_waits: deque[float] = deque(maxlen=1000)  # recent backoff delays (s), for observability
        self.latencies: deque[float] = deque(maxlen=256)  # seconds per successful request, for the timeout
        self.sizes: deque[int] = deque(maxlen=256)  # request body sizes (bytes) of those requests
        self.timeout_floor = TIMEOUT_FLOOR
        self.timeout_first = TIMEOUT_FIRST
        self._server_info: ServerInfo | None = None
        self._info_lock = threading.Lock()

    # -- identity ------------------------------------------------------------------------------------------
    @property
    def prompt_version(self) -> str:
        if self.task is not None:
            return self.prompt_version_for(self.task)
        return self._explicit_pv or compute_prompt_version(None, reason=self.reason)

    def prompt_version_for(self, task: Task) -> str:
        if self._explicit_pv:
            return self._explicit_pv
        hit = self._pv_cache.get(id(task))
        if hit is None or hit[0] is not task:  # keyed by identity; the task object is kept alive with it
            hit = self._pv_cache[id(task)] = (task, compute_prompt_version(task, reason=self.reason))
        return hit[1]

    @property
    def is_simulated(self) -> bool:
        """True for the simulated teacher: every printout and report must say so."""
        return self.model.startswith("simulated/")

    @property
    def display_name(self) -> str:
        tag = " [SIMULATED teacher: answers from gold labels through an error model]" if self.is_simulated else ""
        return f"{self.model} @ {self.base_url}{tag}"

    def __repr__(self) -> str:  # never the key, only the variable's name
        return f"OpenAICompatTeacher(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # -- key -------------------------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def check_ready(self) -> None:
        """Raise a clear error before any call when a required API key is missing.  A local server is also asked
        for its limits here (one GET to ``/props``, milliseconds), so the run starts at its slot count."""
        if self.api_key_env and not self._api_key():
            raise TeacherConfigError(
                f"environment variable {self.api_key_env} is not set; export your API key there "
                f"(or choose another variable with --api-key-env)"
            )
        if self.local:
            self.server_info()

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            h["Authorization"] = f"Bearer {key}"
        if "openrouter.ai" in self.base_url:
            h["X-Title"] = "llm-flywheel"
        return h

    # -- requests ---------------------------------------------------------------------------------------------
    def _matcher(self, task: Task) -> LabelMatcher:
        m = self._matchers.get(task.name)
        if m is None or m.labels != task.labels:
            m = self._matchers[task.name] = LabelMatcher(task.labels, task.descriptions)
        return m

    def _body(self, task: Task, user_content: Any, pass_index: int, *, mode: str | None = None,
              logprobs: bool | None = None, no_reason: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
        """The request: the pass's static instructions + label list first (the system message), the item after."""
        v = pass_variant(pass_index)
        mode = self.response_format if mode is None else mode
        logprobs = self.logprobs if logprobs is None else logprobs
        system = system_prompt(task, pass_index, reason=self.reason) + (NO_REASON_NOTE if no_reason else "")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user_content},
            ],
        }
        if self.temperature:  # else the model's default: the passes still differ by wording and label order
            body["temperature"] = v["temperature"]
        body["max_tokens" if self.legacy_max_tokens else "max_completion_tokens"] = max_tokens or self.max_tokens
        schema = response_schema(task, reason=self.reason and not no_reason, max_length=self.schema_max_length,
                                 confidence=self._asks_confidence(logprobs))
        fmt = response_format(mode, schema)
        if fmt is not None:  # not a compact GBNF grammar for llama.cpp: see prompts.LABEL_ONLY_WORDINGS
            body["response_format"] = fmt
        if logprobs:
            body["logprobs"] = True
            if self.top_logprobs:  # the alternatives let the label's probability be read among the labels
                body["top_logprobs"] = TOP_LOGPROBS  # (parsing.label_share)
        if "openrouter.ai" in self.base_url:
            body["usage"] = {"include": True}  # OpenRouter returns the billed cost
        if self._is_llama_cpp():
            body["cache_prompt"] = True  # reuse the slot's KV cache for the static prefix (the system message)
        body.update(self.extra_body)
        return body

    def _content_for_item(self, item: Item, ws: Workspace | None) -> Any:
        if item.modality == "image":
            if not item.blob_path:
                raise TeacherConfigError(f"item {item.id} has no image file")
            if (ws or self.workspace) is None:
                raise TeacherConfigError("a workspace is needed to read images (pass ws= or workspace=)")
            data = (ws or self.workspace).read_blob(item.blob_path)  # type: ignore[union-attr]
            return image_content(*teacher_image(data, self.image_max_side, item.content_hash))  # scaled if huge
        if item.modality == "text":
            return item.text or ""
        return row_content(item.features)

    # -- the Teacher protocol ------------------------------------------------------------------------------------
    def session(self, task: Task, *, ws: Workspace | None = None, rpm: float | None = None) -> OpenAICompatSession:
        """A per-run session for ``task`` (see :class:`~llm_flywheel.teachers.base.TeacherSession`)."""
        return OpenAICompatSession(self, task, ws=ws, rpm=rpm)

    def server_info(self) -> ServerInfo:
        """llama.cpp's ``/props`` (slots, context per slot) for a local server, asked once; ``ServerInfo()`` for a
        remote API (whose limits are its rate limits) or a server that does not say."""
        with self._info_lock:
            if self._server_info is None:
                info = read_server_info(self.base_url, self._headers()) if self.local else ServerInfo()
                note_server_slots(self.base_url, info.slots)
                self._server_info = info
                if info.source == "llama.cpp /props":
                    self._trust_format()
            return self._server_info

    def _is_llama_cpp(self) -> bool:
        return self._server_info is not None and self._server_info.source == "llama.cpp /props"

    def fit_context(self, task: Task, content: Any) -> tuple[Any, str | None]:
        """An item's text as sent, ``(text, input_truncated note or None)``: at most ``text_max_chars``
        (:func:`texts.teacher_text`), or less where a server said its context size (:func:`server.fit_text`)."""
        info = self._server_info
        if not isinstance(content, str):
            return content, None
        if info is not None and info.n_ctx:
            fitted, note = fit_text(content, info.n_ctx, len(system_prompt(task, 1, reason=self.reason)),
                                    self.max_tokens)
            if note and not over_limit(fitted, self.text_max_chars):
                return fitted, note
        return teacher_text(content, self.text_max_chars)

    def label(self, items: Sequence[Item], task: Task, *, pass_index: int = 0,
              ws: Workspace | None = None, concurrency: int = 8) -> list[TeacherAnswer]:
        """Synchronous convenience wrapper (no cache: use :func:`llm_flywheel.pipeline.labeling.label_items` for that)."""

        async def go() -> list[TeacherAnswer]:
            sem = asyncio.Semaphore(concurrency)
            async with self.session(task, ws=ws) as s:
                async def one(it: Item) -> TeacherAnswer:
                    async with sem:
                        return await s.alabel(it, pass_index=pass_index)
                return list(await asyncio.gather(*(one(it) for it in items)))

        return run_sync(go())

    # -- the calls (sessions come here; alabel_one / alabel_raw are the pre-session names, kept for callers) -----
    async def alabel_one(self, item: Item, task: Task, ws: Workspace | None = None, *, pass_index: int = 0,
                         client: httpx.AsyncClient | None = None) -> TeacherAnswer:
        """Ask once for one item (retrying only retryable outcomes).  Never raises for provider trouble.
        Prefer ``teacher.session(task, ws=ws)``: this older form is kept until every caller has moved."""
        return await self._label_item(item, task, ws, pass_index, client, self.limiter)

    async def alabel_raw(self, content: Any, task: Task, *, pass_index: int = 0,
                         client: httpx.AsyncClient | None = None) -> TeacherAnswer:
        """Label an input that is not in the store.  Prefer ``teacher.session(task).alabel_raw``."""
        return await self._label_raw(content, task, pass_index, client, self.limiter)

    async def _label_item(self, item: Item, task: Task, ws: Workspace | None, pass_index: int,
                          client: httpx.AsyncClient | None, limiter: RateLimiter) -> TeacherAnswer:
        """With ``ws`` (or ``workspace=``) and the default ``capability_cache``, what the endpoint accepted is
        remembered in that workspace's store."""
        self._attach_cache(ws)
        try:  # an image is read (and maybe scaled) off the event loop, where the other calls wait
            content = (await asyncio.to_thread(self._content_for_item, item, ws) if item.modality == "image"
                       else self._content_for_item(item, ws))
        except (OSError, TeacherConfigError) as e:
            return self._answer(item.id, item.content_hash, task, pass_index, ok=False, error_kind="refused",
                                error_detail=f"cannot read item: {type(e).__name__}: {e}")
        if self.local and self._server_info is None:
            await asyncio.to_thread(self.server_info)
        content, note = self.fit_context(task, content)
        call = Call(item.id, item.content_hash, task, content, pass_index, limiter)
        if note:  # the server may still refuse the estimate: then it is cut once more, to what it says fits
            call.notes.append(note)
        return await self._ask(call, client)

    async def _label_raw(self, content: Any, task: Task, pass_index: int, client: httpx.AsyncClient | None,
                         limiter: RateLimiter) -> TeacherAnswer:
        self._attach_cache(None)
        note = None
        if isinstance(content, str):  # keyed by the text itself; sent as the stored items' texts are
            h, (payload, note) = sha256(content.encode("utf-8")), self.fit_context(task, content)
        else:
            data = bytes(content) if isinstance(content, (bytes, bytearray)) else encode_png(content)
            h = sha256(data)
            payload = image_content(*await asyncio.to_thread(teacher_image, data, self.image_max_side, h))
        call = Call(0, h, task, payload, pass_index, limiter)
        call.notes.extend([note] if note else [])
        return await self._ask(call, client)

    def make_client(self, concurrency: int = 16) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=max(concurrency, 1), max_keepalive_connections=max(concurrency, 1))
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                                 limits=limits, verify=self.ssl_context())

    def ssl_context(self) -> Any:
        """The teacher's one SSL context: loading the CA bundle costs ~20-40 ms, once per teacher, not per client."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _answer(self, item_id: int, content_hash: str, task: Task, pass_index: int, **kw: Any) -> TeacherAnswer:
        return TeacherAnswer(item_id=item_id, content_hash=content_hash, model=self.model,
                             prompt_version=self.prompt_version_for(task), pass_index=pass_index, **kw)

    async def _ask(self, call: Call, client: httpx.AsyncClient | None) -> TeacherAnswer:
        own = client is None
        if client is None:
            client = self.make_client(1)
        try:
            self._load_capabilities()
            return await self._ask_with(client, call)
        finally:
            if call.holding:  # also when the call was cancelled: the next waiter probes
                call.holding = False
                self._leave_gate()
            if own:
                await client.aclose()
