"""One item through every attempt it takes: the retry loop of the OpenAI-compatible teacher.

Why a loop of small steps: each attempt ends in exactly one of three ways -- a final answer (stored by the caller,
even a failed one), a re-send *now* because something about the request changed (a downgraded format, a shortened
text, a re-ask without reason after a cut-off reply), or a retry after a backoff because the server may recover
(429, 5xx, timeout, dropped connection).  Keeping those three outcomes explicit is what makes "retry only what
can succeed" checkable.  Mixed into :class:`~llm_flywheel.teachers.openai_compat.OpenAICompatTeacher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_flywheel.core.scripts import head_within
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.base import FATAL_ERROR_KINDS, TeacherAnswer
from llm_flywheel.teachers.errors import (classify_transport_error, context_numbers, fatal_fix, is_content_refusal,
                                          is_context_exceeded, is_out_of_credit, no_endpoint, redact,
                                          refused_response_format, retry_after, unsupported_param)
from llm_flywheel.teachers.negotiation import MAX_REASONING_ROOM
from llm_flywheel.teachers.prompts import STRUCTURED_MODES, body_size, system_prompt
from llm_flywheel.teachers.parsing import looks_like_json
from llm_flywheel.teachers.response import read_response
from llm_flywheel.teachers.server import slots_fingerprint

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # s: a TCP connect that takes longer means nothing answers at the URL
QUICK_RETRY_DELAY = 0.5  # s: the one retry a fatal (connection / DNS) failure gets
PROGRESS_CHECK_S = 5.0  # s between two looks at a llama.cpp server's /slots once a request is past its timeout
MAX_REASKS = 3  # re-asks of one call cut off while a reasoning model thought (each is billed)
RESEND = object()  # an attempt's outcome: send again at once (the request changed; not a retry)
CHARS_PER_TOKEN = 4  # a rough count of English text's tokens; for scripts it undercounts (never a false cut)
SILENT_CUT_MIN_TOKENS = 1_000  # below it no server's context is too small, and a rough count is too rough
# a cut keeps at least half of a context of 512+ tokens; a smaller count is a server that counted only the tokens
# its prompt cache did not hold (Ollama before 0.30, a request sent again), not a cut prompt
SILENT_CUT_MIN_TAKEN = 256


@dataclass
class Retry:
    """An attempt's outcome: the server may recover -- back off and try again (``wait``: its Retry-After)."""

    kind: str
    detail: str
    wait: float | None = None


@dataclass
class Call:
    """The state of one item's call across its attempts."""

    item_id: int
    content_hash: str
    task: Task
    content: Any
    pass_index: int
    limiter: Any  # the session's RateLimiter
    t0: float = field(default_factory=time.monotonic)
    attempt: int = 0  # transient retries so far
    retries: int = 0
    timeouts: int = 0
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
    notes: list[str] = field(default_factory=list)  # error_detail notes for an ok answer (input_truncated)


class Asking:
    """The attempt loop; the teacher provides ``_body``, ``_headers``, ``_answer``, the negotiation and timeouts."""

    _warned_silent_cut = False  # set on the instance at its first warning

    async def _ask_with(self: Any, client: httpx.AsyncClient, call: Call) -> TeacherAnswer:
        """Attempts until one ends in an answer: re-sends at once, retries after a backoff, gives up after
        ``max_retries`` retries (the last failure is the answer)."""
        while True:
            if not call.holding:
                tg = time.monotonic()
                call.holding = await self._enter_gate()
                waited = time.monotonic() - tg
                if waited > 0.001:  # time queued behind the capability probe is not the server's latency
                    call.t0 += waited
                    call.gate_wait_s += waited
            out = await self._attempt(client, call)
            if out is RESEND:
                continue
            if isinstance(out, TeacherAnswer):
                return out
            if call.attempt >= self.max_retries:
                return self._fail(call, out.kind, f"{out.detail} (gave up after {call.attempt + 1} attempts)")
            delay = self._backoff(call.attempt)
            if out.wait is not None:
                delay = min(max(out.wait, 0.0), self.max_retry_after) + random.uniform(0, 0.05)
            log.debug("retrying %s after %s (%.2fs)", call.content_hash[:8], out.kind, delay)
            call.attempt += 1
            call.retries += 1
            self.retry_waits.append(delay)
            await asyncio.sleep(delay)

    async def _attempt(self: Any, client: httpx.AsyncClient, call: Call) -> Any:
        """Send once; a final :class:`TeacherAnswer`, :data:`RESEND` or a :class:`Retry`."""
        with self._lock:
            mode, logprobs = self.response_format, self.logprobs
        await call.limiter.wait()
        body = self._body(call.task, call.content, call.pass_index, mode=mode, logprobs=logprobs,
                          no_reason=call.no_reason, max_tokens=call.max_tokens)
        self.http_requests += 1
        size = body_size(call.content)
        timeout = self.current_timeout(call.timeouts, size)
        watch = self._is_llama_cpp() and self.timeout > timeout  # the server shows its work: wait while it advances
        limit = self.timeout if watch else timeout
        ta = time.monotonic()
        try:
            post = client.post(f"{self.base_url}/chat/completions", json=body, headers=self._headers(),
                               timeout=httpx.Timeout(limit, connect=min(limit, CONNECT_TIMEOUT)))
            resp = await (self._post_watching(post, timeout, limit) if watch else post)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            return await self._on_connect_error(call, e)
        except httpx.TimeoutException as e:
            call.timeouts += 1
            waited = f"{time.monotonic() - ta:.1f}s ({e})" if watch else f"{timeout:g}s"  # watched: how long, why
            return Retry("timeout", f"{type(e).__name__}: no answer within {waited}")
        except httpx.TransportError as e:
            return Retry("dropped", f"{type(e).__name__}: {redact(str(e), self._api_key())[:200]}")
        if resp.status_code == 200:
            return self._on_ok(call, resp, mode, logprobs, size, time.monotonic() - ta)
        if resp.status_code == 429 and not is_out_of_credit(429, resp.text):
            return Retry("http_429", "429 Too Many Requests", retry_after(resp))
        return self._on_error_status(call, resp.status_code, redact(resp.text, self._api_key()), mode, logprobs)

    async def _post_watching(self: Any, post: Any, patience: float, limit: float) -> httpx.Response:
        """The response of ``post``, waiting past ``patience`` (the latency-based timeout) for as long as the
        server's ``/slots`` shows its work advancing between two looks :data:`PROGRESS_CHECK_S` apart, and never
        past ``limit`` (the caller's cap).  Why: a local CPU server on a busy machine can slow to seconds per token;
        hanging up then throws away its half-done work and queues the same request again -- the cancelled tasks
        a loaded llama-server logs.  A server that shows no progress, or does not say, is timed out as before."""
        task = asyncio.ensure_future(post)
        t0, last = time.monotonic(), None
        try:
            while True:
                wait = patience if last is None else PROGRESS_CHECK_S
                done, _ = await asyncio.wait({task}, timeout=max(0.0, min(wait, limit - (time.monotonic() - t0))))
                if done:
                    return task.result()
                now = await slots_fingerprint(self.base_url, self._headers(), self.ssl_context())
                if time.monotonic() - t0 >= limit or not now or now == last:
                    raise httpx.ReadTimeout(f"the {limit:g}s cap" if time.monotonic() - t0 >= limit else
                                            f"past the {patience:g}s timeout, the server "
                                            + ("does not show its work (/slots)" if now is None else
                                               "showed no progress"))
                if last is None:
                    self.progress_waits += 1
                    log.debug("past the %.0fs timeout, the server is still working: waiting (up to %.0fs)",
                              patience, limit)
                last = now
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task

    async def _on_connect_error(self: Any, call: Call, e: Exception) -> Any:
        """Nothing answered: one quick second try (a server still starting up), then a fatal answer."""
        kind = classify_transport_error(e)
        if not call.fatal_retried:
            call.fatal_retried = True
            call.retries += 1
            self.retry_waits.append(QUICK_RETRY_DELAY)
            await asyncio.sleep(QUICK_RETRY_DELAY)
            return RESEND
        return self._fail(call, kind, f"{fatal_fix(kind, self.base_url)} ({type(e).__name__}: "
                                      f"{redact(str(e), self._api_key())[:120]})")

    def _on_ok(self: Any, call: Call, resp: httpx.Response, mode: str, logprobs: bool, size: int,
               latency: float) -> Any:
        """A 200: the answer, or a re-ask when the format was ignored (prose) or the reply was cut off."""
        max_tokens = call.max_tokens or self.max_tokens
        fields = read_response(resp, self._matcher(call.task), prices=self.price_per_mtok(call.task),
                               secret=self._api_key(), mode=mode, max_tokens=max_tokens)
        if fields.get("error_kind") == "http_5xx":  # a provider error inside a 200
            return Retry("http_5xx", fields.get("error_detail") or "")
        ans = self._answer(call.item_id, call.content_hash, call.task, call.pass_index, **fields)
        self.latencies.append(latency)
        self.sizes.append(size)
        cut = self._silently_cut(call, ans)
        if cut is not None:
            return cut
        text = ans.raw_text
        thought = int(ans.extra.get("reasoning_tokens") or 0)  # a reasoning model's hidden tokens count too
        prose = (mode in STRUCTURED_MODES and bool(text) and not looks_like_json(text)
                 and ans.error_kind in ("parse", "truncated"))  # an empty reply is no sign of an ignored format
        if prose and (call.holding or not self._confirmed) and call.fallbacks < 6:
            # prose under a structured mode: the server may have ignored the format -- a second prose reply
            # (T=0 repeats itself) settles it
            call.spent.append(ans)
            call.fallbacks += 1
            if call.nonjson_seen:
                call.nonjson_seen = False
                self._downgrade(mode, "the reply was not JSON twice: response_format ignored")
            else:
                call.nonjson_seen = True
            return RESEND
        if text is not None and not prose:
            self._confirm(mode, logprobs)
        if ans.error_kind == "truncated" and (not call.no_reason or (thought and call.reasks < MAX_REASKS)):
            call.spent.append(ans)
            call.no_reason = True  # change what caused the cut: no reason, more room
            room = max(2 * self.max_tokens, 600)
            if thought:  # room for as much thinking again, then the answer; later calls start there
                room = min(MAX_REASONING_ROOM, max(room, 2 * (call.max_tokens or self.max_tokens)))
                self._learn_room(room, thought)
            call.max_tokens = room
            call.reasks += 1  # not a retry: nothing about the server's load
            return RESEND
        if ans.ok:
            for note in call.notes:
                ans.error_detail = f"{ans.error_detail}; {note}" if ans.error_detail else note
            if any(n.startswith("input_truncated") for n in call.notes):
                ans.extra["input_truncated"] = True
        return self._final(ans, call)

    def _on_error_status(self: Any, call: Call, st: int, text: str, mode: str, logprobs: bool) -> Any:
        """An HTTP error: shorten on "context exceeded", step down on a refused format or logprobs, retry a 5xx,
        and end the item on any other client error (fatal ones name the fix)."""
        low = text.lower()
        if st >= 400 and is_context_exceeded(text):
            return self._on_context_exceeded(call, st, text)
        if is_content_refusal(st, text):  # this item only: the run goes on (a 403 here is not a bad key)
            return self._fail(call, "refused", f"the provider's content filter declined this item (HTTP {st}) — it "
                              "stays unlabelled: label it by hand (`flywheel review`) or use a model without "
                              f"moderation: {text[:200]}", extra={"status": st})
        flag = unsupported_param(st, text)
        if flag and call.fallbacks < 6:  # OpenAI's reasoning models: max_completion_tokens, default temperature
            call.fallbacks += 1
            self._drop_flag(flag, f"HTTP {st}: {text[:150]}")  # no-op if another call already did
            return RESEND
        if call.fallbacks < 6 and refused_response_format(st, text) and "logprob" not in low:
            call.fallbacks += 1
            if mode == "json_schema" and "maxlength" in low and self.schema_max_length:
                self._drop_flag("schema_max_length", f"HTTP {st}: {text[:150]}")
                return RESEND
            if mode != "none":
                self._downgrade(mode, f"HTTP {st}: {text[:150]}")  # no-op if another call already did
                return RESEND
        if (st in (400, 422) or no_endpoint(st, text)) and call.fallbacks < 6 and logprobs and "logprob" in low:
            call.fallbacks += 1  # the alternatives first (a provider may cap them), then logprobs themselves
            self._drop_flag("top_logprobs" if "top_logprobs" in low and self.top_logprobs else "logprobs",
                            f"HTTP {st}: {text[:150]}")
            return RESEND
        if st >= 500:
            return Retry("http_5xx", f"HTTP {st}: {text[:200]}")
        if no_endpoint(st, text):  # the model exists; no provider of it takes this request
            need = "it takes no images: choose a vision model" if "image" in low else "choose a model that does"
            return self._fail(call, "not_found", f"{self.base_url} has no provider serving {self.model!r} that "
                              f"supports this request — {need} (HTTP {st}: {text[:200]})", extra={"status": st})
        fkind = ("auth" if st in (401, 402, 403) or is_out_of_credit(st, text) else "not_found" if st == 404
                 else "http_4xx")
        if fkind == "http_4xx":
            return self._fail(call, fkind, f"HTTP {st}: {text[:300]}", extra={"status": st})
        fix = fatal_fix(fkind, self.base_url, st, self.api_key_env, self.model)
        return self._fail(call, fkind, f"{fix} (HTTP {st}: {text[:200]})", extra={"status": st})

    def _on_context_exceeded(self: Any, call: Call, st: int, text: str) -> Any:
        """Not transient: cut the item text once to what the server says fits (half when it does not say)."""
        content = call.content
        if isinstance(content, str) and call.shortened_from is None and len(content) > 50:
            nums = context_numbers(text)
            share = 0.5
            if nums and nums[0] > 0:
                share = min(0.5, max(0.05, 0.8 * nums[1] / nums[0]))
            call.shortened_from = len(content)
            call.content = content[: int(len(content) * share)] + " …[truncated]"
            call.notes.append(f"input_truncated: the item text was cut from {len(content)} to "
                              f"{len(call.content)} characters to fit the server's context")
            if not nums:  # llama.cpp's mid-generation "Context size has been exceeded": the KV cache shared by
                call.retries += 1  # parallel slots ran full -- a sign of load
            return RESEND
        cut = f" even with the item text cut to {len(content)} characters" if call.shortened_from else ""
        return self._fail(call, "context_exceeded",
                          f"HTTP {st}: the prompt does not fit the server's context window{cut} — give the server "
                          f"a larger context (llama.cpp: -c, and fewer parallel slots -np, which share it) or send "
                          f"fewer requests at once: {text[:200]}", extra={"status": st})

    def _silently_cut(self: Any, call: Call, ans: TeacherAnswer) -> Any:
        """A server that cut a long prompt without an error: it reports far fewer prompt tokens than the prompt
        holds (about 4 characters a token; only the tokenisers of CJK scripts differ, and they count more).  Why:
        Ollama keeps only part of a prompt longer than its context (4,096 by default) and answers 200 -- the
        instructions go first, so the label is a guess.  The reply is discarded and the item text cut, once, to
        what the server took; a second cut reply is ``context_exceeded``.  None: the prompt arrived whole."""
        if not isinstance(call.content, str) or not ans.tokens_in:
            return None
        other = len(system_prompt(call.task, call.pass_index, reason=self.reason)) // CHARS_PER_TOKEN
        sent = other + len(call.content) // CHARS_PER_TOKEN
        if sent < SILENT_CUT_MIN_TOKENS or ans.tokens_in >= 0.5 * sent or ans.tokens_in < SILENT_CUT_MIN_TAKEN:
            return None
        call.spent.append(ans)
        fix = (f"{self.base_url} took {ans.tokens_in:,} of about {sent:,} prompt tokens without an error: it cut the "
               "prompt to fit its context (Ollama does, from a 4,096-token default) -- give it more context "
               "(Ollama: OLLAMA_CONTEXT_LENGTH=16384 ollama serve; llama.cpp: -c)")
        keep = (int(0.8 * ans.tokens_in) - other) * CHARS_PER_TOKEN
        if call.shortened_from is not None or keep < 200:
            why = (f"the item text is too long even cut to {len(call.content):,} characters" if call.shortened_from
                   is not None else "the instructions alone take most of what it keeps")
            return self._fail(call, "context_exceeded", f"{fix}; {why}", extra={"tokens_taken": ans.tokens_in})
        if not self._warned_silent_cut:
            self._warned_silent_cut = True
            log.warning("%s; long item texts are cut to fit (noted on each answer as input_truncated)", fix)
        call.shortened_from = len(call.content)
        call.content = call.content[: head_within(call.content, keep)] + " …[truncated]"  # a CJK character: 4
        call.notes.append(f"input_truncated: the item text was cut from {call.shortened_from} to "
                          f"{len(call.content)} characters: the server took only {ans.tokens_in} prompt tokens")
        return RESEND

    def _fail(self: Any, call: Call, kind: str, detail: str, **kw: Any) -> TeacherAnswer:
        extra = {"fatal": kind in FATAL_ERROR_KINDS, **kw.pop("extra", {})}
        ans = self._answer(call.item_id, call.content_hash, call.task, call.pass_index, ok=False, error_kind=kind,
                           error_detail=detail, extra=extra, **kw)
        return self._final(ans, call)

    def _final(self: Any, ans: TeacherAnswer, call: Call) -> TeacherAnswer:
        """Add what the discarded (paid) replies of this call cost, and the call's totals, to its answer."""
        if call.spent:
            for k in ("tokens_in", "tokens_out", "cost_usd"):
                vals = [getattr(a, k) for a in call.spent if getattr(a, k) is not None]
                if vals:
                    setattr(ans, k, (getattr(ans, k) or 0) + sum(vals))
            ans.extra["discarded_replies"] = len(call.spent)
        ans.latency_s = time.monotonic() - call.t0
        ans.extra["retries"] = call.retries
        if call.reasks:
            ans.extra["reasked_after_truncation"] = call.reasks
        if call.gate_wait_s:
            ans.extra["probe_wait_s"] = round(call.gate_wait_s, 3)
        return ans

    def _backoff(self: Any, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * (2 ** attempt)) * random.uniform(0.5, 1.5)
