"""A teacher behind any OpenAI-compatible ``/chat/completions`` endpoint.

OpenRouter, OpenAI, Gemini's OpenAI-compatible endpoint, vLLM, Ollama, llama.cpp's server and LM Studio all speak
this protocol, so one client covers them (and the simulated teacher, which is reached exactly the same way).

Design choices, and why:

* **Diverse passes.**  Pass 0 is temperature 0 with the labels in their canonical order; later passes use a
  different wording, a (fixed, per-pass) shuffled label order and temperature > 0.  Identical T=0 calls are
  almost perfectly correlated and check nothing.
* **Prompt version = a hash** of every template, pass variant and the task's labels/descriptions/instructions,
  so editing the prompt invalidates the answer cache by construction.
* **Retry only what can succeed**: 429 (honouring ``Retry-After``), 5xx, timeouts, dropped connections -- with
  exponential backoff and jitter.  Other 4xx are reported at once (``error_kind='http_4xx'``), except a server
  refusing ``response_format``/``logprobs``: then we fall back (json_schema -> json_object -> plain prompt).
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
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ..store import Item
from ..task import Task
from ..workspace import Workspace
from .base import TeacherAnswer
from .parsing import LabelMatcher, label_logprob, parse_answer

log = logging.getLogger(__name__)

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_API_KEY_ENV = "OPENROUTER_API_KEY"
TEMPLATE_VERSION = "1"

RETRYABLE_KINDS = frozenset({"http_429", "http_5xx", "timeout", "connection"})
FATAL_STATUSES = frozenset({401, 402, 403, 404})  # every later call would fail the same way
RESPONSE_FORMAT_MODES = ("json_schema", "json_object", "none")

# --- prompt templates --------------------------------------------------------------------------------------------
WORDINGS: tuple[str, ...] = (
    "{instructions}\n\nChoose exactly one label from this list:\n{label_list}\n\n"
    "Answer with JSON only, no other text: "
    '{{"label": "<one label name from the list>", "confidence": <probability 0-1 that you are right>, '
    '"reason": "<at most 12 words>"}}',
    "You are a careful expert annotator. {instructions}\n\nThe possible classes are:\n{label_list}\n\n"
    "Look at the input closely and consider the most similar classes before deciding. Reply with a single JSON "
    'object with keys "label" (a class name exactly as written above), "confidence" (a number between 0 and 1) '
    'and "reason" (a few words).',
    "Task: {instructions}\nAllowed answers (use the name before the colon):\n{label_list}\n\n"
    "Which one fits best? Respond only with JSON: "
    '{{"label": "...", "confidence": 0.0, "reason": "..."}}',
)
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


def response_schema(task: Task) -> dict[str, Any]:
    return {
        "name": "label_answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": list(task.labels)},
                "confidence": {"type": "number"},
                "reason": {"type": "string"},
            },
            "required": ["label", "confidence", "reason"],
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


class OpenAICompatTeacher:
    """Implements the Teacher protocol against an OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        base_url: str = OPENROUTER_BASE_URL,
        model: str = "google/gemini-2.5-flash",
        *,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        task: Task | None = None,
        prompt_version: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        response_format: str = "json_schema",
        logprobs: bool = True,
        max_tokens: int = 300,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
        extra_body: dict[str, Any] | None = None,
        workspace: Workspace | None = None,
        rpm: float | None = None,
    ) -> None:
        if not re.match(r"^https?://", base_url or ""):
            raise TeacherConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if response_format not in RESPONSE_FORMAT_MODES:
            raise TeacherConfigError(f"response_format must be one of {RESPONSE_FORMAT_MODES}, got {response_format!r}")
        if not model:
            raise TeacherConfigError("model must be given")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.task = task
        self._explicit_pv = prompt_version
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.response_format = response_format  # downgraded in place when a server refuses it
        self.logprobs = logprobs
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
        pin = self.price_in if self.price_in is not None else (task.input_per_mtok if task else None)
        pout = self.price_out if self.price_out is not None else (task.output_per_mtok if task else None)
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

    # -- requests ---------------------------------------------------------------------------------------------
    def _matcher(self, task: Task) -> LabelMatcher:
        m = self._matchers.get(task.name)
        if m is None or m.labels != task.labels:
            m = self._matchers[task.name] = LabelMatcher(task.labels, task.descriptions)
        return m

    def _body(self, task: Task, user_content: Any, pass_index: int) -> dict[str, Any]:
        v = pass_variant(pass_index)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system_prompt(task, pass_index)},
                {"role": "user", "content": user_content},
            ],
            "temperature": v["temperature"],
            "max_tokens": self.max_tokens,
        }
        if self.response_format == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": response_schema(task)}
        elif self.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        if self.logprobs:
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
        """Ask once for one item (retrying only retryable outcomes).  Never raises for provider trouble."""
        try:
            content = self._content_for_item(item, ws)
        except (OSError, TeacherConfigError) as e:
            return self._answer(item.id, item.content_hash, task, pass_index, ok=False, error_kind="refused",
                                error_detail=f"cannot read item: {type(e).__name__}: {e}")
        return await self._ask(item.id, item.content_hash, task, content, pass_index, client)

    async def alabel_raw(self, content: Any, task: Task, *, pass_index: int = 0,
                         client: httpx.AsyncClient | None = None) -> TeacherAnswer:
        """Label an input that is not in the store (served traffic): a PIL image, PNG/JPEG bytes or text."""
        from ..data.base import encode_png, sha256

        if isinstance(content, str):
            h, payload = sha256(content.encode("utf-8")), content
        else:
            data = content if isinstance(content, (bytes, bytearray)) else encode_png(content)
            mime = "image/jpeg" if bytes(data[:3]) == b"\xff\xd8\xff" else "image/png"
            h, payload = sha256(bytes(data)), self.image_content(bytes(data), mime)
        return await self._ask(0, h, task, payload, pass_index, client)

    def label(self, items: Sequence[Item], task: Task, *, pass_index: int = 0,
              ws: Workspace | None = None, concurrency: int = 8) -> list[TeacherAnswer]:
        """Synchronous convenience wrapper (no cache: use :func:`llm_flywheel.labeling.label_items` for that)."""

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
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits, verify=self._ssl)

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
        try:
            return await self._ask_with(client, item_id, content_hash, task, content, pass_index)
        finally:
            if own:
                await client.aclose()

    async def _ask_with(self, client: httpx.AsyncClient, item_id: int, content_hash: str, task: Task,
                        content: Any, pass_index: int) -> TeacherAnswer:
        url = f"{self.base_url}/chat/completions"
        t0 = time.monotonic()
        attempt = 0
        fallbacks = 0
        kind, detail = "connection", "no attempt made"
        retries = 0
        while True:
            await self.limiter.wait()
            body = self._body(task, content, pass_index)
            self.http_requests += 1
            wait: float | None = None
            try:
                resp = await client.post(url, json=body, headers=self._headers())
            except httpx.TimeoutException as e:
                kind, detail = "timeout", f"{type(e).__name__} after {self.timeout:g}s"
            except httpx.TransportError as e:
                kind, detail = "connection", f"{type(e).__name__}: {redact(str(e), self._api_key())[:200]}"
            else:
                st = resp.status_code
                if st == 200:
                    ans = self._from_response(resp, item_id, content_hash, task, pass_index, t0)
                    if ans.error_kind != "http_5xx":
                        ans.extra["retries"] = retries
                        return ans
                    kind, detail = ans.error_kind, ans.error_detail or ""
                elif st == 429:
                    kind, detail = "http_429", "429 Too Many Requests"
                    wait = _retry_after(resp)
                elif st >= 500:
                    kind, detail = "http_5xx", f"HTTP {st}: {redact(resp.text, self._api_key())[:200]}"
                else:
                    text = redact(resp.text, self._api_key())
                    low = text.lower()
                    if st in (400, 422) and fallbacks < 4:
                        if self.response_format != "none" and any(
                            w in low for w in ("response_format", "json_schema", "json_object", "schema", "structured")
                        ):
                            nxt = RESPONSE_FORMAT_MODES[RESPONSE_FORMAT_MODES.index(self.response_format) + 1]
                            log.info("server refused response_format=%s; falling back to %s", self.response_format, nxt)
                            self.response_format = nxt
                            fallbacks += 1
                            continue
                        if self.logprobs and "logprob" in low:
                            log.info("server refused logprobs; asking without them")
                            self.logprobs = False
                            fallbacks += 1
                            continue
                    return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="http_4xx",
                                        error_detail=f"HTTP {st}: {text[:300]}", latency_s=time.monotonic() - t0,
                                        extra={"status": st, "fatal": st in FATAL_STATUSES, "retries": retries})
            if attempt >= self.max_retries:
                return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind=kind,
                                    error_detail=f"{detail} (gave up after {attempt + 1} attempts)",
                                    latency_s=time.monotonic() - t0, extra={"retries": retries})
            delay = self._backoff(attempt)
            if wait is not None:
                delay = min(max(wait, 0.0), self.max_retry_after) + random.uniform(0, 0.05)
            log.debug("retrying %s after %s (%.2fs)", content_hash[:8], kind, delay)
            attempt += 1
            retries += 1
            self.retry_waits.append(delay)
            await asyncio.sleep(delay)

    def _from_response(self, resp: httpx.Response, item_id: int, content_hash: str, task: Task, pass_index: int,
                       t0: float) -> TeacherAnswer:
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
        lp_tokens = None
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            lp_tokens = lp["content"]
        common = dict(tokens_in=tin, tokens_out=tout, cost_usd=cost, latency_s=latency,
                      raw_text=(text or "")[:2000] if text is not None else None)
        if text is None:
            refusal = msg.get("refusal") if isinstance(msg, dict) else None
            return self._answer(item_id, content_hash, task, pass_index, ok=False, error_kind="refused",
                                error_detail=f"no content (finish_reason={choice.get('finish_reason')!r}"
                                             f"{', refusal' if refusal else ''})", **common)
        parsed = parse_answer(text, self._matcher(task))
        trimmed = None
        if lp_tokens:
            trimmed = [[str(t.get("token", "")), _float(t.get("logprob"))] for t in lp_tokens[:64] if isinstance(t, dict)]
        return self._answer(
            item_id, content_hash, task, pass_index,
            ok=parsed.error_kind != "parse",
            label=parsed.label, confidence=parsed.confidence, reason=parsed.reason,
            label_logprob=label_logprob(lp_tokens, parsed.raw_label), logprobs=trimmed,
            error_kind=parsed.error_kind, error_detail=parsed.error_detail,
            extra={"raw_label": parsed.raw_label, "response_format": self.response_format}, **common,
        )


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

