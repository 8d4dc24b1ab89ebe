"""A teacher behind any OpenAI-compatible ``/chat/completions`` endpoint.

OpenRouter, OpenAI, Gemini's OpenAI-compatible endpoint, vLLM, Ollama, llama.cpp's server and LM Studio all speak
this protocol, so one client covers them (and the simulated teacher, which is reached exactly the same way).

Design choices, and why:

* **Diverse passes.**  Pass 0 is temperature 0 with the labels in their canonical order; later passes use a
  different wording, a (fixed, per-pass) shuffled label order and temperature > 0.  Identical T=0 calls are
  almost perfectly correlated and check nothing.
* **Prompt version = a hash** of every template, pass variant and the task's labels/descriptions/instructions,
  so editing the prompt invalidates the answer cache by construction.
* **Capability negotiation, once per (base_url, model).**  Servers refuse structured output in different ways:
  a 400 or 422 (OpenAI-style), a 500 whose body names ``response_format`` (llama-cpp-python's server), or a 200
  whose reply is prose (the format silently ignored).  The client walks ``json_schema`` -> llama.cpp's native
  ``{"type": "json_object", "schema": ...}`` -> ``json_object`` -> plain prompting.  While the mode is not yet
  confirmed, one request probes and the others wait on it (so concurrency 32 does not send 32 refused requests);
  every downgrade is compare-and-set on the mode the refused request was *sent* with, so in-flight refusals of
  one mode downgrade it exactly once.  What worked is remembered in the workspace store (``teacher_capabilities``)
  and the next run starts there; :meth:`OpenAICompatTeacher.forget_capabilities` starts over.
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
import base64
import hashlib
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from llm_flywheel.store.base import Item
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import FATAL_ERROR_KINDS, TeacherAnswer
from llm_flywheel.teachers.concurrency import is_local_url
from llm_flywheel.teachers.parsing import LabelMatcher, label_logprob, looks_like_json, parse_answer, recover_truncated

log = logging.getLogger(__name__)

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_API_KEY_ENV = "OPENROUTER_API_KEY"
TEMPLATE_VERSION = "2"  # 2: reason bounded to 12 words / 100 characters in every wording (changes prompt_version)

RETRYABLE_KINDS = frozenset({"http_429", "http_5xx", "timeout", "dropped"})
FATAL_STATUSES = frozenset({401, 402, 403, 404})  # every later call would fail the same way
# the negotiation order: OpenAI structured outputs, llama.cpp's native schema form, plain JSON mode, prompt only
RESPONSE_FORMAT_MODES = ("json_schema", "json_object_schema", "json_object", "none")
STRUCTURED_MODES = frozenset(RESPONSE_FORMAT_MODES[:-1])
REASON_MAX_CHARS = 100
REASON_MAX_WORDS = 12
DEFAULT_TIMEOUT_CAP = 300.0  # s: the longest any one request may take when the caller gives no timeout
TIMEOUT_FLOOR = 30.0  # s: the adaptive timeout never goes below this (nor above the cap)
TIMEOUT_P95_MULTIPLE = 4.0
TIMEOUT_FIRST = 120.0  # s: before any latency is measured
CONNECT_TIMEOUT = 10.0  # s: a TCP connect that takes longer means nothing answers at the URL
QUICK_RETRY_DELAY = 0.5  # s: the one retry a fatal (connection / DNS) failure gets
PROBE_GIVE_UP = 3  # probe calls that end without an answer before the others stop waiting for one

# --- prompt templates --------------------------------------------------------------------------------------------
_REASON_RULE = f"at most {REASON_MAX_WORDS} words, {REASON_MAX_CHARS} characters"
WORDINGS: tuple[str, ...] = (
    "{instructions}\n\nChoose exactly one label from this list:\n{label_list}\n\n"
    "Answer with JSON only, no other text, label first: "
    '{{"label": "<one label name from the list>", "confidence": <probability 0-1 that you are right>, '
    f'"reason": "<{_REASON_RULE}>"}}}}',
    "You are a careful expert annotator. {instructions}\n\nThe possible classes are:\n{label_list}\n\n"
    "Look at the input closely and consider the most similar classes before deciding. Reply with a single JSON "
    'object with keys, in this order, "label" (a class name exactly as written above), "confidence" (a number '
    f'between 0 and 1) and "reason" ({_REASON_RULE}).',
    "Task: {instructions}\nAllowed answers (use the name before the colon):\n{label_list}\n\n"
    f"Which one fits best? Respond only with JSON (reason: {_REASON_RULE}): "
    '{{"label": "...", "confidence": 0.0, "reason": "..."}}',
)
NO_REASON_NOTE = ('\n\nYour previous answer was cut off. Answer with only {"label": ..., "confidence": ...} '
                  "-- no reason.")
TEMPERATURES: tuple[float, ...] = (0.0, 0.7, 1.0)
def pass_variant(pass_index: int) -> dict[str, Any]:
    """How pass ``pass_index`` differs from the others: wording, label order, temperature."""
    if pass_index < 0:
        raise ValueError(f"pass_index must be >= 0, got {pass_index}")
    return {
        "wording": pass_index % len(WORDINGS),
        "order": "canonical" if pass_index == 0 else f"shuffled-{pass_index}",
        "temperature": TEMPERATURES[min(pass_index, len(TEMPERATURES) - 1)],
    }


def label_order(task: Task, pass_index: int) -> list[str]:
    labels = list(task.labels)
    if pass_index > 0:
        random.Random(f"label-order-{pass_index}").shuffle(labels)
    return labels


def system_prompt(task: Task, pass_index: int) -> str:
    v = pass_variant(pass_index)
    lines = "\n".join(f"- {lab}: {task.descriptions.get(lab, lab.replace('_', ' '))}" for lab in label_order(task, pass_index))
    instr = task.instructions or f"Classify this {task.modality} input."
    return WORDINGS[v["wording"]].format(instructions=instr, label_list=lines)


def compute_prompt_version(task: Task | None) -> str:
    """Hash of every template + pass variant + the task's wording; the answer cache is keyed on it."""
    payload = {
        "template": TEMPLATE_VERSION,
        "wordings": WORDINGS,
        "temperatures": TEMPERATURES,
        "task": None
        if task is None
        else {"labels": task.labels, "descriptions": task.descriptions, "instructions": task.instructions, "modality": task.modality},
    }
    return "p" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def response_schema(task: Task, *, reason: bool = True, max_length: bool = True) -> dict[str, Any]:
    """The ``json_schema`` response format: ``label`` first (a reply cut off later still carries it), ``reason``
    bounded so replies end well before ``max_tokens``; ``reason=False`` for the re-ask after a truncation,
    ``max_length=False`` for a server that refuses the ``maxLength`` keyword."""
    props: dict[str, Any] = {
        "label": {"type": "string", "enum": list(task.labels)},
        "confidence": {"type": "number"},
    }
    if reason:
        props["reason"] = {"type": "string", **({"maxLength": REASON_MAX_CHARS} if max_length else {})}
    return {
        "name": "label_answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        },
    }


# --- rate limiting -------------------------------------------------------------------------------------------------
class RateLimiter:
    """At most ``rpm`` request starts per minute, evenly spaced (retries count too).  Event-loop local."""

    def __init__(self, rpm: float | None) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be > 0, got {rpm}")
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock is bound to one event loop
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


_SECRET_RE = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{10,}|Bearer\s+\S+)")


def redact(text: str, secret: str | None) -> str:
    """Remove the key (and anything shaped like a key) from a provider message before it is recorded."""
    if secret:
        text = text.replace(secret, "***")
    return _SECRET_RE.sub("***", text)


def _retry_after(resp: httpx.Response) -> float | None:
    v = resp.headers.get("retry-after")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class TeacherConfigError(RuntimeError):
    """A teacher that cannot be used as configured (missing API key, bad URL...)."""


# --- failure classification -----------------------------------------------------------------------------------------
_DNS_MARKERS = ("name or service not known", "nodename nor servname", "getaddrinfo failed",
                "temporary failure in name resolution", "no address associated", "name does not resolve",
                "failed to resolve", "no such host")
_CONTEXT_RE = re.compile(r"context size has been exceeded|exceeds? the available context|larger than the max context"
                         r"|exceed_context_size|maximum context length|context_length_exceeded"
                         r"|exceed(?:s|ed)? context window|context window exceeded|too many tokens in the prompt", re.I)
_FORMAT_WORDS_4XX = ("response_format", "json_schema", "json_object", "schema", "structured", "grammar")
_FORMAT_WORDS_5XX = ("response_format", "json_schema", "json_object", "grammar")


def classify_transport_error(exc: BaseException) -> str:
    """``dns`` / ``connection`` (fatal: nothing answers at the URL) or ``dropped`` (a connection that was made and
    then lost: transient) for an httpx transport error that carries no HTTP status."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and len(chain) < 8:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if any(isinstance(x, socket.gaierror) for x in chain):
            return "dns"
        text = " ".join(str(x).lower() for x in chain)
        if any(m in text for m in _DNS_MARKERS):
            return "dns"
        return "connection"
    return "dropped"


def is_context_exceeded(text: str) -> bool:
    """A prompt that does not fit the server's context window (llama.cpp's C++ server, llama-cpp-python, vLLM,
    OpenAI each word it differently; asking again the same way cannot help)."""
    return bool(_CONTEXT_RE.search(text or ""))


def refused_response_format(status: int, text: str) -> bool:
    """True when an error response says the server cannot do the requested ``response_format``.  400/422 name it
    loosely ("schema", "structured"); a 5xx must name it outright (llama-cpp-python answers HTTP 500 to
    ``json_schema``) so that an ordinary server error is not mistaken for a refusal."""
    low = (text or "").lower()
    if status in (400, 422):
        return any(w in low for w in _FORMAT_WORDS_4XX)
    if status >= 500:
        return any(w in low for w in _FORMAT_WORDS_5XX)
    return False


def _context_numbers(text: str) -> tuple[int, int] | None:
    """(prompt tokens, tokens that fit for the prompt) from a context-exceeded message, when it says."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("n_prompt_tokens"), int) and isinstance(err.get("n_ctx"), int):
        return err["n_prompt_tokens"], err["n_ctx"]  # llama.cpp's C++ server
    m = re.search(r"maximum context length is (\d+) tokens.*?\((\d+) in the messages, (\d+) in the completion\)",
                  text, re.S)
    if m:  # llama-cpp-python / OpenAI: the completion's max_tokens counts against the window too
        return int(m.group(2)), int(m.group(1)) - int(m.group(3))
    m = re.search(r"request \((\d+) tokens\) exceeds the available context size \((\d+)", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    return None


def fatal_fix(kind: str, base_url: str, status: int | None = None, api_key_env: str | None = None,
              model: str | None = None) -> str:
    """One sentence that names the URL and what to do, for each fatal error kind."""
    if kind == "connection":
        return f"nothing listens at {base_url} — start the server or fix --teacher"
    if kind == "dns":
        host = urlsplit(base_url).hostname or base_url
        return f"the host {host!r} of {base_url} does not resolve — check the URL in --teacher (or your DNS/network)"
    if kind == "auth":
        if status == 402:
            return f"{base_url} wants payment (HTTP 402) — add credits to the account behind the API key"
        if api_key_env and os.environ.get(api_key_env):
            return (f"{base_url} refused the API key in ${api_key_env} (HTTP {status}) — export a valid key there "
                    f"or pick another variable with --api-key-env")
        return (f"{base_url} wants an API key (HTTP {status}) — export it and name the variable with --api-key-env")
    if kind == "not_found":
        return (f"{base_url}/chat/completions or model {model!r} does not exist (HTTP 404) — check the base URL "
                f"(it usually ends in /v1) and the model name ({base_url}/models lists them)")
    return ""


# --- capability memory ---------------------------------------------------------------------------------------------
class CapabilityCache(Protocol):
    """Where a teacher remembers what an endpoint accepted.  Any object with these three methods will do."""

    def get(self, base_url: str, model: str) -> dict[str, Any] | None: ...

    def put(self, base_url: str, model: str, caps: dict[str, Any]) -> None: ...

    def forget(self, base_url: str, model: str) -> None: ...


class StoreCapabilityCache:
    """Capabilities kept in a workspace's ``flywheel.db`` (table ``teacher_capabilities``).

    Opens the store for each (rare) read or write, so it is safe from any thread; a record older than
    ``max_age_s`` is ignored, so a server that was upgraded is asked for the better modes again in time.
    """

    def __init__(self, ws: Workspace, *, max_age_s: float = 30 * 86400.0) -> None:
        self.ws = ws
        self.max_age_s = max_age_s

    def get(self, base_url: str, model: str) -> dict[str, Any] | None:
        with self.ws.store() as s:
            caps = s.teacher_capability(base_url, model)
        if caps is None or time.time() - float(caps.get("updated_at") or 0.0) > self.max_age_s:
            return None
        return caps

    def put(self, base_url: str, model: str, caps: dict[str, Any]) -> None:
        with self.ws.store() as s:
            s.set_teacher_capability(base_url, model, caps)

    def forget(self, base_url: str, model: str) -> None:
        with self.ws.store() as s:
            s.forget_teacher_capability(base_url, model)


@dataclass
class _Call:
    """The state of one ``alabel_one`` call across its attempts."""

    attempt: int = 0  # transient retries so far
    retries: int = 0
    fallbacks: int = 0  # re-sends after a refused format / logprobs
    fatal_retried: bool = False
    shortened_from: int | None = None  # original text length when the item text was cut to fit the context
    no_reason: bool = False  # the re-ask after a truncated reply
    max_tokens: int | None = None
    nonjson_seen: bool = False  # a structured-mode probe got prose once already
    reasks: int = 0  # re-asks after a reply cut off at max_tokens
    spent: list[TeacherAnswer] = field(default_factory=list)  # 200 replies that were paid for and re-asked
    holding: bool = False  # this call is the one probe while the mode is unconfirmed
    gate_wait_s: float = 0.0  # time spent waiting for the probe (not counted in latency_s)


class OpenAICompatTeacher:
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
        self.api_key_env = api_key_env
        self.task = task
        self._explicit_pv = prompt_version
        self.timeout = float(timeout) if timeout is not None else DEFAULT_TIMEOUT_CAP  # the cap
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._remember = response_format == "auto"
        self.response_format = "json_schema" if response_format == "auto" else response_format  # current mode
        self.logprobs = logprobs
        self.schema_max_length = True  # False once a server refuses the maxLength keyword
        self.max_tokens = max_tokens
        self.price_in = price_in_per_mtok
        self.price_out = price_out_per_mtok
        self.extra_body = dict(extra_body or {})
        self.workspace = workspace
        self.limiter = RateLimiter(rpm)
        self._lock = threading.Lock()
        self._matchers: dict[str, LabelMatcher] = {}
        self._pv_cache: dict[int, tuple[Task, str]] = {}
        self._ssl: Any = None
        self.http_requests = 0  # attempts sent (including retries), for observability
        self.retry_waits: deque[float] = deque(maxlen=1000)  # recent backoff delays (s), for observability
        self.latencies: deque[float] = deque(maxlen=256)  # seconds per successful request, for the timeout
        self.sizes: deque[int] = deque(maxlen=256)  # request body sizes (bytes) of those requests
        self.timeout_floor = TIMEOUT_FLOOR
        self.timeout_first = TIMEOUT_FIRST
        # negotiation state (see the module docstring); guarded by self._lock, probes by self._gate
        self._cache_arg = capability_cache
        self._cache: CapabilityCache | None = (capability_cache if capability_cache not in (None, True, False)
                                               else None)  # type: ignore[assignment]
        self._loaded = False
        self._confirmed = False
        self._gate = threading.Lock()
        self._gate_open = False
        self._probe_failures = 0
        self.negotiation: list[dict[str, Any]] = []  # every downgrade this object made: {"from", "to", "why"}
        self._remembered_downgrades: list[dict[str, Any]] = []  # those of earlier runs, kept in the record
        self.capabilities_source = "default"  # "memory" when the run started from a remembered record

    # -- identity ------------------------------------------------------------------------------------------
    @property
    def prompt_version(self) -> str:
        if self.task is not None:
            return self.prompt_version_for(self.task)
        return self._explicit_pv or compute_prompt_version(None)

    def prompt_version_for(self, task: Task) -> str:
        if self._explicit_pv:
            return self._explicit_pv
        hit = self._pv_cache.get(id(task))
        if hit is None or hit[0] is not task:  # keyed by identity; the task object is kept alive with it
            hit = self._pv_cache[id(task)] = (task, compute_prompt_version(task))
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
        """Raise a clear error before any call when a required API key is missing."""
        if self.api_key_env and not self._api_key():
            raise TeacherConfigError(
                f"environment variable {self.api_key_env} is not set; export your API key there "
                f"(or choose another variable with --api-key-env)"
            )

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            h["Authorization"] = f"Bearer {key}"
        if "openrouter.ai" in self.base_url:
            h["X-Title"] = "llm-flywheel"
        return h

    # -- cost -------------------------------------------------------------------------------------------------
    def price_per_mtok(self, task: Task | None) -> tuple[float | None, float | None]:
        """USD per million tokens: the teacher's own prices, else the task's ``[prices]`` -- but the task's
        prices describe a paid API, so a server on the user's own hardware (loopback, private address, ``*.local``)
        gets none from the task and is priced by its measured latency instead (``cost.teacher_price``)."""
        use_task = task is not None and not self.local
        pin = self.price_in if self.price_in is not None else (task.input_per_mtok if use_task else None)
        pout = self.price_out if self.price_out is not None else (task.output_per_mtok if use_task else None)
        return pin, pout

    def estimate_call(self, task: Task, modality: str | None = None, text_len: int = 0) -> tuple[int, int, float | None]:
        """Rough (tokens_in, tokens_out, usd) for one call before any is made: ~4 chars/token for text and a
        Gemini-style 258 tokens per small image."""
        prompt_chars = len(system_prompt(task, 1)) + 40
        tin = prompt_chars // 4 + ((258 + 8) if (modality or task.modality) == "image" else text_len // 4 + 8)
        tout = 40
        pin, pout = self.price_per_mtok(task)
        usd = None if pin is None or pout is None else (tin * pin + tout * pout) / 1e6
        return tin, tout, usd


    # -- capabilities ------------------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        """What this endpoint is known to accept now (the record kept in the capability memory)."""
        return {"response_format": self.response_format, "logprobs": self.logprobs,
                "schema_max_length": self.schema_max_length,
                "downgrades": (self._remembered_downgrades + list(self.negotiation))[-20:]}

    def _attach_cache(self, ws: Workspace | None) -> None:
        if self._cache is None and self._cache_arg is None and self._remember:
            root = ws or self.workspace
            if root is not None:
                self._cache = StoreCapabilityCache(root)

    def _load_capabilities(self) -> None:
        """Start from what worked last time for this (base_url, model) -- once per teacher object."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
        if not self._remember or self._cache is None:
            return
        try:
            caps = self._cache.get(self.base_url, self.model)
        except Exception as e:  # a memory that cannot be read costs a renegotiation, never a failed call
            log.warning("could not read teacher capabilities (%s); negotiating afresh", type(e).__name__)
            return
        if not caps or caps.get("response_format") not in RESPONSE_FORMAT_MODES:
            return
        with self._lock:
            self.response_format = caps["response_format"]
            self.logprobs = bool(caps.get("logprobs", self.logprobs)) and self.logprobs
            self.schema_max_length = bool(caps.get("schema_max_length", True))
            self._remembered_downgrades = [d for d in caps.get("downgrades") or [] if isinstance(d, dict)]
            self.capabilities_source = "memory"
        log.info("%s: starting from remembered response_format=%s", self.display_name, self.response_format)

    def _save_capabilities(self) -> None:
        if not self._remember or self._cache is None:
            return
        try:
            self._cache.put(self.base_url, self.model, self.capabilities())
        except Exception as e:
            log.warning("could not store teacher capabilities (%s)", type(e).__name__)

    def forget_capabilities(self) -> None:
        """Forget what this (base_url, model) accepted -- in memory and in the store -- and negotiate again from
        ``json_schema`` on the next call (for a server that was upgraded or replaced)."""
        with self._lock:
            self.response_format = "json_schema"
            self.schema_max_length = True
            self._confirmed = False
            self._gate_open = False
            self._probe_failures = 0
            self._loaded = True
            self.negotiation.clear()
            self._remembered_downgrades = []
            self.capabilities_source = "default"
        if self._cache is not None:
            try:
                self._cache.forget(self.base_url, self.model)
            except Exception as e:
                log.warning("could not forget teacher capabilities (%s)", type(e).__name__)

    def _passable(self) -> bool:
        return self._confirmed or self._gate_open

    async def _enter_gate(self) -> bool:
        """Wait until the mode is confirmed, or become the one probe.  True when this call now holds the gate."""
        while not self._passable():
            if self._gate.acquire(blocking=False):
                if self._passable():
                    self._gate.release()
                    return False
                return True
            await asyncio.sleep(0.02)  # a thread lock, polled: the teacher may be shared by several event loops
        return False

    def _leave_gate(self) -> None:
        with self._lock:
            if not self._confirmed:
                self._probe_failures += 1
                if self._probe_failures >= PROBE_GIVE_UP and not self._gate_open:
                    self._gate_open = True  # the server fails for other reasons: stop queueing behind probes
                    log.info("%s: %d probes got no answer; sending concurrently with response_format=%s",
                             self.display_name, self._probe_failures, self.response_format)
        self._gate.release()

    def _confirm(self, mode: str, logprobs: bool) -> None:
        with self._lock:
            if self._confirmed or self.response_format != mode or self.logprobs != logprobs:
                return
            self._confirmed = True
            self._probe_failures = 0
            self._gate_open = False
        log.info("%s: response_format=%s works (logprobs %s)", self.display_name, mode, "on" if logprobs else "off")
        self._save_capabilities()

    def _downgrade(self, sent_mode: str, why: str) -> bool:
        """Step down from ``sent_mode`` -- only if that is still the mode (compare-and-set): many in-flight
        requests refused for the same mode downgrade it once.  True when this call did the step."""
        with self._lock:
            if self.response_format != sent_mode or sent_mode == "none":
                return False
            nxt = RESPONSE_FORMAT_MODES[RESPONSE_FORMAT_MODES.index(sent_mode) + 1]
            self.response_format = nxt
            self._confirmed = False
            self._gate_open = False
            self._probe_failures = 0
            self.negotiation.append({"from": sent_mode, "to": nxt, "why": why[:200]})
        log.info("%s: response_format=%s refused (%s); trying %s", self.display_name, sent_mode, why[:120], nxt)
        return True

    def _drop_flag(self, name: str, why: str) -> bool:
        """Compare-and-set for ``logprobs`` / ``schema_max_length``: turn it off once."""
        with self._lock:
            if not getattr(self, name):
                return False
            setattr(self, name, False)
            self._confirmed = False
            self._gate_open = False
            self._probe_failures = 0
            self.negotiation.append({"from": f"{name}=on", "to": f"{name}=off", "why": why[:200]})
        log.info("%s: server refused %s; asking without it", self.display_name, name)
        return True

    # -- timeouts ---------------------------------------------------------------------------------------------
    def latency_p95(self) -> float | None:
        """95th percentile of recent successful request latencies (s), or None before 5 are measured."""
        lat = sorted(self.latencies)
        if len(lat) < 5:
            return None
        return lat[min(len(lat) - 1, int(math.ceil(0.95 * len(lat))) - 1)]

    def current_timeout(self, boost: int = 0, size: int | None = None) -> float:
        """Seconds to wait for one response.

        A fixed 60 s is both too long for a fast API (a hung request holds a worker for a minute) and too short
        for a loaded local CPU server (answers that would arrive at 90 s get cancelled, and the server's work
        is thrown away).  So the wait follows the server: ``max(timeout_floor, 4 x p95)`` of the last 256
        successful requests (``timeout_floor`` = :data:`TIMEOUT_FLOOR`, 30 s), ``timeout_first`` (120 s) before 5
        are measured; times ``size / median size`` of those requests when this one is larger (a local server's
        prompt processing grows with the input: a long email must not be cut off at a short one's budget);
        doubled for each timeout this call already had (``boost``); and never above ``self.timeout`` -- the
        caller's cap (:data:`DEFAULT_TIMEOUT_CAP`, 300 s, when none was given).  Latency under load grows, so
        the wait grows with it instead of cancelling work the server has half done.
        """
        p95 = self.latency_p95()
        base = self.timeout_first if p95 is None else max(self.timeout_floor, TIMEOUT_P95_MULTIPLE * p95)
        if p95 is not None and size and self.sizes:
            sizes = sorted(self.sizes)
            median = sizes[len(sizes) // 2]
            if median > 0 and size > median:
                base *= size / median
        return min(self.timeout, base * (2 ** boost))

    # -- requests ---------------------------------------------------------------------------------------------
    def _matcher(self, task: Task) -> LabelMatcher:
        m = self._matchers.get(task.name)
        if m is None or m.labels != task.labels:
            m = self._matchers[task.name] = LabelMatcher(task.labels, task.descriptions)
        return m

    def _body(self, task: Task, user_content: Any, pass_index: int, *, mode: str | None = None,
              logprobs: bool | None = None, no_reason: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
        v = pass_variant(pass_index)
        mode = self.response_format if mode is None else mode
        logprobs = self.logprobs if logprobs is None else logprobs
        system = system_prompt(task, pass_index) + (NO_REASON_NOTE if no_reason else "")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user_content},
            ],
            "temperature": v["temperature"],
            "max_tokens": max_tokens or self.max_tokens,
        }
        schema = response_schema(task, reason=not no_reason, max_length=self.schema_max_length)
        if mode == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif mode == "json_object_schema":  # llama.cpp (C++ and llama-cpp-python): JSON mode constrained by a schema
            body["response_format"] = {"type": "json_object", "schema": schema["schema"]}
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        if logprobs:
            body["logprobs"] = True
        if "openrouter.ai" in self.base_url:
            body["usage"] = {"include": True}  # OpenRouter returns the billed cost
        body.update(self.extra_body)
        return body

    @staticmethod
    def image_content(data: bytes, mime: str = "image/png") -> list[dict[str, Any]]:
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return [
            {"type": "text", "text": "Classify this image."},
            {"type": "image_url", "image_url": {"url": url}},
        ]

    def _content_for_item(self, item: Item, ws: Workspace | None) -> Any:
        if item.modality == "image":
            if not item.blob_path:
                raise TeacherConfigError(f"item {item.id} has no image file")
            root = (ws or self.workspace)
            if root is None:
                raise TeacherConfigError("a workspace is needed to read images (pass ws= or workspace=)")
            path = root.abspath(item.blob_path)
            mime = "image/jpeg" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "image/png"
            return self.image_content(Path(path).read_bytes(), mime)  # the exact stored bytes
        if item.modality == "text":
            return item.text or ""
        return "Features: " + json.dumps(item.features)

    async def alabel_one(
        self, item: Item, task: Task, ws: Workspace | None = None, *, pass_index: int = 0,
        client: httpx.AsyncClient | None = None,
    ) -> TeacherAnswer:
        """Ask once for one item (retrying only retryable outcomes).  Never raises for provider trouble.

        With ``ws`` (or ``workspace=``) and the default ``capability_cache``, what the endpoint accepted is
        remembered in that workspace's store."""
        self._attach_cache(ws)
        try:
            content = self._content_for_item(item, ws)
        except (OSError, TeacherConfigError) as e:
            return self._answer(item.id, item.content_hash, task, pass_index, ok=False, error_kind="refused",
                                error_detail=f"cannot read item: {type(e).__name__}: {e}")
        return await self._ask(item.id, item.content_hash, task, content, pass_index, client)

    async def alabel_raw(self, content: Any, task: Task, *, pass_index: int = 0,
                         client: httpx.AsyncClient | None = None) -> TeacherAnswer:
        """Label an input that is not in the store (served traffic): a PIL image, PNG/JPEG bytes or text."""
        from llm_flywheel.data.base import encode_png, sha256

        self._attach_cache(None)
        if isinstance(content, str):
            h, payload = sha256(content.encode("utf-8")), content
        else:
            data = content if isinstance(content, (bytes, bytearray)) else encode_png(content)
            mime = "image/jpeg" if bytes(data[:3]) == b"\xff\xd8\xff" else "image/png"
            h, payload = sha256(bytes(data)), self.image_content(bytes(data), mime)
        return await self._ask(0, h, task, payload, pass_index, client)

    def label(self, items: Sequence[Item], task: Task, *, pass_index: int = 0,
              ws: Workspace | None = None, concurrency: int = 8) -> list[TeacherAnswer]:
        """Synchronous convenience wrapper (no cache: use :func:`llm_flywheel.pipeline.labeling.label_items` for that)."""

        async def go() -> list[TeacherAnswer]:
            sem = asyncio.Semaphore(concurrency)
            async with self.make_client(concurrency) as client:
                async def one(it: Item) -> TeacherAnswer:
                    async with sem:
                        return await self.alabel_one(it, task, ws, pass_index=pass_index, client=client)
                return list(await asyncio.gather(*(one(it) for it in items)))

        return run_sync(go())

    def make_client(self, concurrency: int = 16) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=max(concurrency, 1), max_keepalive_connections=max(concurrency, 1))
        if self._ssl is None:  # loading the CA bundle costs ~40 ms: once per teacher, not once per client
            self._ssl = httpx.create_ssl_context()
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                                 limits=limits, verify=self._ssl)

    def _answer(self, item_id: int, content_hash: str, task: Task, pass_index: int, **kw: Any) -> TeacherAnswer:
        return TeacherAnswer(item_id=item_id, content_hash=content_hash, model=self.model,
                             prompt_version=self.prompt_version_for(task), pass_index=pass_index, **kw)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * (2 ** attempt)) * random.uniform(0.5, 1.5)

    async def _ask(self, item_id: int, content_hash: str, task: Task, content: Any, pass_index: int,
                   client: httpx.AsyncClient | None) -> TeacherAnswer:
        own = client is None
        if own:
            client = self.make_client(1)
        call = _Call()
        try:
            self._load_capabilities()
            return await self._ask_with(client, call, item_id, content_hash, task, content, pass_index)
        finally:
            if call.holding:  # also when the call was cancelled: the next waiter probes
                call.holding = False
                self._leave_gate()
            if own:
                await client.aclose()

    def _final(self, ans: TeacherAnswer, call: _Call, t0: float) -> TeacherAnswer:
        """Add what the discarded (paid) replies of this call cost, and the call's totals, to its answer."""
        if call.spent:
            for k in ("tokens_in", "tokens_out", "cost_usd"):
                vals = [getattr(a, k) for a in call.spent if getattr(a, k) is not None]
                if vals:
                    setattr(ans, k, (getattr(ans, k) or 0) + sum(vals))
            ans.extra["discarded_replies"] = len(call.spent)
        ans.latency_s = time.monotonic() - t0
        ans.extra["retries"] = call.retries
        if call.reasks:
            ans.extra["reasked_after_truncation"] = call.reasks
        if call.gate_wait_s:
            ans.extra["probe_wait_s"] = round(call.gate_wait_s, 3)
        return ans

    async def _ask_with(self, client: httpx.AsyncClient, call: _Call, item_id: int, content_hash: str, task: Task,
                        content: Any, pass_index: int) -> TeacherAnswer:
        """One item, through every attempt it takes (``call.holding``: this call is the probe)."""
        url = f"{self.base_url}/chat/completions"
        t0 = time.monotonic()
        timeouts = 0
        kind, detail = "connection", "no attempt made"

        def fail(kind: str, detail: str, **kw: Any) -> TeacherAnswer:
            fatal = kind in FATAL_ERROR_KINDS
            extra = {"fatal": fatal, **kw.pop("extra", {})}
            ans = self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind=kind,
                               error_detail=detail, extra=extra, **kw)
            return self._final(ans, call, t0)

        while True:
            if not call.holding:
                tg = time.monotonic()
                call.holding = await self._enter_gate()
                waited = time.monotonic() - tg
                if waited > 0.001:  # time queued behind the capability probe is not the server's latency
                    t0 += waited
                    call.gate_wait_s += waited
            with self._lock:
                mode, logprobs = self.response_format, self.logprobs
            await self.limiter.wait()
            body = self._body(task, content, pass_index, mode=mode, logprobs=logprobs, no_reason=call.no_reason,
                              max_tokens=call.max_tokens)
            self.http_requests += 1
            wait: float | None = None
            size = _body_size(content)
            timeout = self.current_timeout(timeouts, size)
            ta = time.monotonic()
            try:
                resp = await client.post(url, json=body, headers=self._headers(),
                                         timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                kind = classify_transport_error(e)
                if not call.fatal_retried:  # a server still starting up: one quick second try
                    call.fatal_retried = True
                    call.retries += 1
                    self.retry_waits.append(QUICK_RETRY_DELAY)
                    await asyncio.sleep(QUICK_RETRY_DELAY)
                    continue
                return fail(kind, f"{fatal_fix(kind, self.base_url)} ({type(e).__name__}: "
                                  f"{redact(str(e), self._api_key())[:120]})")
            except httpx.TimeoutException as e:
                timeouts += 1
                kind, detail = "timeout", f"{type(e).__name__}: no answer within {timeout:g}s"
            except httpx.TransportError as e:
                kind, detail = "dropped", f"{type(e).__name__}: {redact(str(e), self._api_key())[:200]}"
            else:
                st = resp.status_code
                if st == 200:
                    ans = self._from_response(resp, item_id, content_hash, task, pass_index, t0,
                                              mode=mode, max_tokens=call.max_tokens or self.max_tokens)
                    if ans.error_kind == "http_5xx":  # a provider error inside a 200
                        kind, detail = ans.error_kind, ans.error_detail or ""
                    else:
                        self.latencies.append(time.monotonic() - ta)
                        self.sizes.append(size)
                        text = ans.raw_text
                        prose = (mode in STRUCTURED_MODES and text is not None and not looks_like_json(text)
                                 and ans.error_kind in ("parse", "truncated"))
                        if prose and (call.holding or not self._confirmed) and call.fallbacks < 6:
                            # prose under a structured mode: the server may have ignored the format -- a second
                            # prose reply (T=0 repeats itself) settles it
                            call.spent.append(ans)
                            call.fallbacks += 1
                            if call.nonjson_seen:
                                call.nonjson_seen = False
                                self._downgrade(mode, "the reply was not JSON twice: response_format ignored")
                            else:
                                call.nonjson_seen = True
                            continue
                        if text is not None and not prose:
                            self._confirm(mode, logprobs)
                        if ans.error_kind == "truncated" and not call.no_reason:
                            call.spent.append(ans)
                            call.no_reason = True  # change what caused the cut: no reason, more room
                            call.max_tokens = max(2 * self.max_tokens, 600)
                            call.reasks += 1  # not a retry: nothing about the server's load
                            continue
                        if call.shortened_from is not None and ans.ok:
                            note = (f"input_truncated: the item text was cut from {call.shortened_from} to "
                                    f"{len(content)} characters to fit the server's context")
                            ans.error_detail = f"{ans.error_detail}; {note}" if ans.error_detail else note
                            ans.extra["input_truncated"] = True
                        return self._final(ans, call, t0)
                elif st == 429:
                    kind, detail = "http_429", "429 Too Many Requests"
                    wait = _retry_after(resp)
                else:
                    text = redact(resp.text, self._api_key())
                    low = text.lower()
                    if st >= 400 and is_context_exceeded(text):
                        if isinstance(content, str) and call.shortened_from is None and len(content) > 50:
                            nums = _context_numbers(text)
                            share = 0.5
                            if nums and nums[0] > 0:
                                share = min(0.5, max(0.05, 0.8 * nums[1] / nums[0]))
                            call.shortened_from = len(content)
                            content = content[: int(len(content) * share)] + " …[truncated]"
                            if not nums:  # llama.cpp's mid-generation "Context size has been exceeded": the KV
                                call.retries += 1  # cache shared by parallel slots ran full -- a sign of load
                            continue
                        return fail("context_exceeded",
                                    f"HTTP {st}: the prompt does not fit the server's context window"
                                    f"{' even with the item text cut to ' + str(len(content)) + ' characters' if call.shortened_from else ''}"
                                    f" — give the server a larger context (llama.cpp: -c, and fewer parallel slots "
                                    f"-np, which share it) or send fewer requests at once: {text[:200]}",
                                    extra={"status": st})
                    if call.fallbacks < 6 and refused_response_format(st, text) and "logprob" not in low:
                        call.fallbacks += 1
                        if mode == "json_schema" and "maxlength" in low and self.schema_max_length:
                            self._drop_flag("schema_max_length", f"HTTP {st}: {text[:150]}")
                            continue
                        if mode != "none":
                            self._downgrade(mode, f"HTTP {st}: {text[:150]}")  # no-op if another call already did
                            continue
                    if st in (400, 422) and call.fallbacks < 6 and logprobs and "logprob" in low:
                        call.fallbacks += 1
                        self._drop_flag("logprobs", f"HTTP {st}: {text[:150]}")
                        continue
                    if st >= 500:
                        kind, detail = "http_5xx", f"HTTP {st}: {text[:200]}"
                    else:
                        fkind = ("auth" if st in (401, 402, 403) else "not_found" if st == 404 else "http_4xx")
                        if fkind == "http_4xx":
                            return fail(fkind, f"HTTP {st}: {text[:300]}", extra={"status": st})
                        fix = fatal_fix(fkind, self.base_url, st, self.api_key_env, self.model)
                        return fail(fkind, f"{fix} (HTTP {st}: {text[:200]})", extra={"status": st})
            if call.attempt >= self.max_retries:
                return fail(kind, f"{detail} (gave up after {call.attempt + 1} attempts)")
            delay = self._backoff(call.attempt)
            if wait is not None:
                delay = min(max(wait, 0.0), self.max_retry_after) + random.uniform(0, 0.05)
            log.debug("retrying %s after %s (%.2fs)", content_hash[:8], kind, delay)
            call.attempt += 1
            call.retries += 1
            self.retry_waits.append(delay)
            await asyncio.sleep(delay)

    def _from_response(self, resp: httpx.Response, item_id: int, content_hash: str, task: Task, pass_index: int,
                       t0: float, *, mode: str | None = None, max_tokens: int | None = None) -> TeacherAnswer:
        latency = time.monotonic() - t0
        try:
            data = resp.json()
        except (json.JSONDecodeError, ValueError):
            return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="parse",
                                error_detail="response body is not JSON", raw_text=resp.text[:500], latency_s=latency)
        if not isinstance(data, dict):
            return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="parse",
                                error_detail="response is not a JSON object", latency_s=latency)
        if "error" in data and not data.get("choices"):
            err = data.get("error")
            msg = redact(json.dumps(err)[:300], self._api_key())
            return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="http_5xx",
                                error_detail=f"provider error in a 200 response: {msg}", latency_s=latency)
        usage = data.get("usage") or {}
        tin = _int(usage.get("prompt_tokens"))
        tout = _int(usage.get("completion_tokens"))
        cost = _float(usage.get("cost"))
        if cost is None and tin is not None and tout is not None:
            pin, pout = self.price_per_mtok(task)
            if pin is not None and pout is not None:
                cost = (tin * pin + tout * pout) / 1e6
        try:
            choice = data["choices"][0]
            msg = choice.get("message") or {}
            text = msg.get("content")
            if isinstance(text, list):  # some servers return content parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        except (KeyError, IndexError, TypeError, AttributeError):
            return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="parse",
                                error_detail="no choices[0].message in response", tokens_in=tin, tokens_out=tout,
                                cost_usd=cost, latency_s=latency)
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        lp_tokens = None
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            lp_tokens = lp["content"]
        extra: dict[str, Any] = {"response_format": mode or self.response_format, "finish_reason": finish}
        common = dict(tokens_in=tin, tokens_out=tout, cost_usd=cost, latency_s=latency,
                      raw_text=(text or "")[:2000] if text is not None else None)
        if text is None:
            refusal = msg.get("refusal") if isinstance(msg, dict) else None
            return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="refused",
                                error_detail=f"no content (finish_reason={finish!r}"
                                             f"{', refusal' if refusal else ''})", extra=extra, **common)
        parsed = parse_answer(text, self._matcher(task))
        cut = finish == "length" or (finish is None and tout is not None and max_tokens is not None
                                     and tout >= max_tokens)
        detail = parsed.error_detail
        kind = parsed.error_kind
        if kind == "parse" and cut:
            rec = recover_truncated(text, self._matcher(task))
            if rec is not None:  # the label was complete before the cut: keep it, and say so
                parsed, kind = rec, None
                detail = (f"recovered_truncated: the reply was cut off at max_tokens={max_tokens} after a "
                          f"complete label")
                extra["recovered_truncated"] = True
            else:
                kind = "truncated"
                detail = (f"the reply was cut off at max_tokens={max_tokens} before a complete label "
                          f"({len(text)} chars)")
        trimmed = None
        if lp_tokens:
            trimmed = [[str(t.get("token", "")), _float(t.get("logprob"))] for t in lp_tokens[:64] if isinstance(t, dict)]
        return self._answer(
            item_id, content_hash, task, pass_index,
            ok=kind not in ("parse", "truncated"),
            label=parsed.label, confidence=parsed.confidence, reason=parsed.reason,
            label_logprob=label_logprob(lp_tokens, parsed.raw_label), logprobs=trimmed,
            error_kind=kind, error_detail=detail,
            extra={"raw_label": parsed.raw_label, **extra}, **common,
        )


def _body_size(content: Any) -> int:
    """How big a request's input is, for the timeout: characters of text, bytes of base64 images."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(json.dumps(p)) for p in content)
    return 0


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        f = float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
    return f if f is None or f == f else None


def run_sync(coro: Any) -> Any:
    """Run a coroutine from sync code, even when this thread already runs an event loop (then in a worker)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["v"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            out["e"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]

