"""The OpenAI-style Batch API: upload a JSONL of chat-completions requests, poll, download the answers.

Why: providers (OpenAI, Groq, Mistral, Together...) sell the same calls at about half price when the answer may
take up to 24 hours.  Labelling a pool is exactly that kind of work.  This module is the HTTP side only:
``/v1/files`` (upload with ``purpose=batch``, ``/v1/files/{id}/content``) and ``/v1/batches`` (create, get,
list, cancel), with the online client's retry rules (429 / 5xx / dropped connections are retried with backoff;
401/403/404 and "nothing listens" stop with a message that names the fix).

Each request line is built by the online client itself (same prompt, same pass variant, same response format,
so the same ``prompt_version`` keys the cache) and each answer line is read by the same reader as an online
reply (:mod:`llm_flywheel.teachers.parsing` underneath), so a batched answer is stored exactly like an online one.

The API key is read from the named environment variable at call time and sent only in the ``Authorization``
header; provider messages are redacted before they are raised.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_flywheel.core.task import Task
from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import TeacherAnswer
from llm_flywheel.teachers.errors import is_content_refusal, unsupported_param
from llm_flywheel.teachers.negotiation import MAX_REASONING_ROOM
from llm_flywheel.teachers.openai_compat import (
    OpenAICompatTeacher,
    TeacherConfigError,
    fatal_fix,
    redact,
)
from llm_flywheel.teachers.response import read_response

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_FATAL = {401: "auth", 402: "auth", 403: "auth", 404: "not_found"}


class BatchAPIError(RuntimeError):
    """The Batch API refused or could not be reached.  ``fatal``: asking again cannot help (key, URL, endpoint)."""

    def __init__(self, message: str, *, fatal: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.fatal, self.status = fatal, status


@dataclass
class BatchStatus:
    """What the provider says about one batch (the fields every OpenAI-style Batch API returns)."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchStatus:
        counts = d.get("request_counts") or {}
        errs = (d.get("errors") or {}).get("data") or [] if isinstance(d.get("errors"), dict) else []
        return cls(id=str(d.get("id")), status=str(d.get("status")), input_file_id=d.get("input_file_id"),
                   output_file_id=d.get("output_file_id"), error_file_id=d.get("error_file_id"),
                   total=int(counts.get("total") or 0), completed=int(counts.get("completed") or 0),
                   failed=int(counts.get("failed") or 0),
                   errors=[f"{e.get('code')}: {e.get('message')}" for e in errs if isinstance(e, dict)],
                   metadata=d.get("metadata") if isinstance(d.get("metadata"), dict) else {})


@dataclass
class ResultLine:
    """One line of an output or error file: the reply body (status 200), or why there is none."""

    custom_id: str
    status_code: int | None
    body: dict[str, Any] | None
    error: str | None = None


class BatchClient:
    """Files + batches of one OpenAI-compatible base URL (``.../v1``).  Synchronous: a batch is polled every few
    seconds or minutes, nothing here needs an event loop."""

    def __init__(self, base_url: str, *, api_key_env: str | None, timeout: float = 120.0, max_retries: int = 5,
                 backoff_base: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_retries, self.backoff_base = max_retries, backoff_base
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One API call, retried on 429 / 5xx / transport trouble; raises :class:`BatchAPIError`."""
        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            self.requests += 1
            try:
                resp = self.http.request(method, url, headers=headers, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= 1:
                    raise BatchAPIError(f"{fatal_fix('connection', self.base_url)} ({type(e).__name__})",
                                        fatal=True) from None
                why = type(e).__name__
            except httpx.TransportError as e:
                why = f"{type(e).__name__}: {redact(str(e), key)[:120]}"
            else:
                st = resp.status_code
                if st < 400:
                    return resp
                text = redact(resp.text, key)[:300]
                if st in _FATAL:
                    fix = fatal_fix(_FATAL[st], self.base_url, st, self.api_key_env)
                    if st == 404:
                        fix = f"{url} does not exist (HTTP 404) -- does this provider offer the Batch API?"
                    raise BatchAPIError(f"{fix} ({text})", fatal=True, status=st)
                if st != 429 and st < 500:
                    raise BatchAPIError(f"{method} {path}: HTTP {st}: {text}", fatal=False, status=st)
                why = f"HTTP {st}: {text[:120]}"
            if attempt < self.max_retries:
                time.sleep(min(30.0, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.5))
        raise BatchAPIError(f"{method} {path}: gave up after {self.max_retries + 1} attempts ({why})", fatal=False)

    def upload(self, data: bytes, filename: str) -> str:
        """Upload a JSONL of requests (``purpose=batch``); its file id."""
        resp = self._request("POST", "/files", data={"purpose": "batch"},
                             files={"file": (filename, data, "application/jsonl")})
        return str(resp.json()["id"])

    def create(self, input_file_id: str, metadata: dict[str, str], completion_window: str = "24h") -> BatchStatus:
        resp = self._request("POST", "/batches", json={"input_file_id": input_file_id, "endpoint": ENDPOINT,
                                                       "completion_window": completion_window, "metadata": metadata})
        return self._status(resp.json())

    def _status(self, d: dict[str, Any]) -> BatchStatus:
        """The status, with the provider's error texts redacted (they are recorded in the store)."""
        st = BatchStatus.from_json(d)
        st.errors = [redact(e, self._key()) for e in st.errors]
        return st

    def get(self, batch_id: str) -> BatchStatus:
        return self._status(self._request("GET", f"/batches/{batch_id}").json())

    def find(self, key: str, value: str) -> BatchStatus | None:
        """The most recent batch whose metadata has ``key == value`` (a batch created just before a kill)."""
        data = self._request("GET", "/batches", params={"limit": 100}).json().get("data") or []
        for d in data:
            if isinstance(d, dict) and (d.get("metadata") or {}).get(key) == value:
                return self._status(d)
        return None

    def cancel(self, batch_id: str) -> BatchStatus:
        return self._status(self._request("POST", f"/batches/{batch_id}/cancel").json())

    def content(self, file_id: str) -> bytes:
        return self._request("GET", f"/files/{file_id}/content").content


def parse_result_file(data: bytes) -> dict[str, ResultLine]:
    """custom_id -> result, from an output or error file (lines that are not JSON are skipped: they name no item)."""
    out: dict[str, ResultLine] = {}
    for raw in data.decode("utf-8", "replace").splitlines():
        try:
            d = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(d, dict) or not d.get("custom_id"):
            continue
        resp = d.get("response") if isinstance(d.get("response"), dict) else {}
        err = d.get("error") if isinstance(d.get("error"), dict) else None
        body = resp.get("body") if isinstance(resp.get("body"), dict) else None
        code = resp.get("status_code")
        msg = None
        if err:
            msg = f"{err.get('code')}: {err.get('message')}"
        elif body and code != 200:
            e = body.get("error")
            msg = f"HTTP {code}: {json.dumps(e)[:200] if e is not None else ''}"
        out[str(d["custom_id"])] = ResultLine(str(d["custom_id"]), int(code) if code else None, body, msg)
    return out


# --- the online client's request builder and reply reader, used line by line --------------------------------------
def request_line(teacher: OpenAICompatTeacher, task: Task, item: Item, pass_index: int, ws: Workspace,
                 custom_id: str) -> dict[str, Any]:
    """One JSONL request: exactly the body the online client sends for (item, pass) in its current format mode.

    Thin wrapper: the online client builds its body in private methods (``_content_for_item``, ``_body``); there
    is no negotiation inside a batch, so the mode is the one the client would start with."""
    try:  # a long text is cut as the online client cuts it (fit_context: the text limit; no server context here)
        content = teacher.fit_context(task, teacher._content_for_item(item, ws))[0]
    except OSError as e:
        raise TeacherConfigError(f"cannot read item {item.id}: {type(e).__name__}: {e}") from None
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
            "body": teacher._body(task, content, pass_index)}


def answer_from_line(teacher: OpenAICompatTeacher, task: Task, item_id: int, content_hash: str, pass_index: int,
                     result: ResultLine | None, *, price_ratio: float, note: str | None = None) -> TeacherAnswer:
    """The :class:`TeacherAnswer` for one line, read exactly like an online reply; where the provider reports no
    cost, tokens are priced at ``price_ratio`` x the teacher's online prices (a reported cost is what was billed).
    ``note``: the ``input_truncated`` note of a text the line sent cut (:func:`request_line`), kept on an answer as
    online.

    A line with no reply is a failure (``ok=False``) that the next batch asks again: a server error keeps its HTTP
    kind, a line an expired batch never reached is a ``timeout``."""
    def fail(kind: str, detail: str) -> TeacherAnswer:
        return teacher._answer(item_id, content_hash, task, pass_index, ok=False, error_kind=kind,
                               error_detail=detail, extra={"batch": True})

    if result is None:
        return fail("timeout", "the batch ended without an answer for this line")
    if result.status_code != 200 or result.body is None:
        code = result.status_code or 0
        flag = unsupported_param(code, result.error or "")
        if flag:  # the follow-up batch asks without it, as the online client would
            teacher._drop_flag(flag, f"batch line HTTP {code}: {(result.error or '')[:150]}")
        kind = ("timeout" if result.error and "expired" in result.error else "http_429" if code == 429
                else "http_5xx" if code >= 500 or not code
                else "refused" if is_content_refusal(code, result.error or "") else "http_4xx")
        return fail(kind, f"batch line failed: {redact(result.error or f'HTTP {code}', teacher._api_key())[:300]}")
    pin, pout = teacher.price_per_mtok(task)
    prices = (None if pin is None else pin * price_ratio, None if pout is None else pout * price_ratio)
    body = result.body
    fields = read_response(httpx.Response(200, json=body), teacher._matcher(task), prices=prices,
                           secret=teacher._api_key(), mode=teacher.response_format,
                           max_tokens=teacher.max_tokens)
    if fields.get("error_kind") == "http_5xx":  # a provider error inside a 200
        return fail("http_5xx", str(fields.get("error_detail") or "provider error"))
    thought = int((fields.get("extra") or {}).get("reasoning_tokens") or 0)
    if fields.get("error_kind") == "truncated" and thought:  # the follow-up batch gives it room to think
        teacher._learn_room(min(MAX_REASONING_ROOM, max(600, 2 * teacher.max_tokens)), thought)
    fields["extra"] = {**(fields.get("extra") or {}), "batch": True}
    ans = teacher._answer(item_id, content_hash, task, pass_index, **fields)
    if note and ans.ok:
        ans.error_detail = f"{ans.error_detail}; {note}" if ans.error_detail else note
        ans.extra["input_truncated"] = True
    return ans
