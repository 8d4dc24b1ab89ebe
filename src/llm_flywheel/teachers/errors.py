"""How a teacher call fails, in words the labeller can act on.

Why: "retry", "shorten the prompt", "negotiate a simpler format" and "stop the run and name the fix" are different
answers to different failures, and the OpenAI-compatible servers word each one differently.  This module turns an
HTTP status, a body or a transport exception into one ``error_kind`` of :mod:`llm_flywheel.teachers.base`'s
vocabulary, and writes the sentence a user needs.  Provider text is redacted before anything records it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

RETRYABLE_KINDS = frozenset({"http_429", "http_5xx", "timeout", "dropped"})
FATAL_STATUSES = frozenset({401, 402, 403, 404})  # every later call would fail the same way


_SECRET_RE = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{10,}|Bearer\s+\S+)")


def redact(text: str, secret: str | None) -> str:
    """Remove the key (and anything shaped like a key) from a provider message before it is recorded."""
    if secret:
        text = text.replace(secret, "***")
    return _SECRET_RE.sub("***", text)


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds a 429 asks the client to wait: ``Retry-After`` (seconds or a date), ``retry-after-ms``, OpenAI's
    ``x-ratelimit-reset-requests`` / ``-tokens`` ("1s", "6m0s", "20ms"; the limit that ran out), or Google's
    ``RetryInfo.retryDelay`` ("37s") in the body; None when none says."""
    v = resp.headers.get("retry-after")
    if v:
        try:
            return max(0.0, float(v))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    ms = resp.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    resets = {k: _duration(resp.headers.get(f"x-ratelimit-reset-{k}")) for k in ("requests", "tokens")}
    out = [resets[k] for k in resets if resets[k] is not None and resp.headers.get(f"x-ratelimit-remaining-{k}") == "0"]
    if out or any(r is not None for r in resets.values()):
        return max(out) if out else min(r for r in resets.values() if r is not None)
    return _google_retry_delay(resp.text)


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")


def _duration(v: str | None) -> float | None:
    """"6m0s" / "1s" / "20ms" / "1h2m" -> seconds (None when it is not such a duration)."""
    v = (v or "").strip()
    if not _DURATION_FULL.fullmatch(v):
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * unit[u] for n, u in _DURATION_RE.findall(v))


def _google_retry_delay(text: str) -> float | None:
    """Google's ``error.details[].retryDelay`` ("37s"), in a body that may be an object or a one-element list."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    data = data[0] if isinstance(data, list) and data else data
    err = data.get("error") if isinstance(data, dict) else None
    for d in (err.get("details") or []) if isinstance(err, dict) else []:
        if isinstance(d, dict) and isinstance(d.get("retryDelay"), str):
            return _duration(d["retryDelay"])
    return None


def is_out_of_credit(status: int, text: str) -> bool:
    """A 429 that no wait will fix: OpenAI's ``insufficient_quota`` ("You exceeded your current quota, please check
    your plan and billing details").  Retried as a rate limit it failed every item after five backoffs each."""
    return status == 429 and "insufficient_quota" in text


class TeacherConfigError(RuntimeError):
    """A teacher that cannot be used as configured (missing API key, bad URL...)."""


def limit_from_env(environ: object, name: str, default: int, minimum: int, unit: str, zero_means: str) -> int:
    """A size limit from ``$name``: ``default`` when unset, 0 for none, else a whole number >= ``minimum``;
    anything else is a ``TeacherConfigError`` (exit 2) naming the variable (``FLYWHEEL_TEACHER_*_MAX_*``)."""
    env = os.environ if environ is None else environ
    given = str(env.get(name, "")).strip()  # type: ignore[attr-defined]
    raw = given.replace("_", "")  # 16_000 as Python writes it
    if not raw:
        return default
    if not raw.isdigit() or 0 < int(raw) < minimum:
        raise TeacherConfigError(f"${name} must be a whole number of {unit} >= {minimum}, or 0 to {zero_means}; "
                                 f"got {given!r}")
    return int(raw)


def require_readable_labels(task: Any, simulated: bool) -> None:
    """Refuse, before any call is paid, to ask a real teacher for labels that are only ids (``0``/``1``,
    ``label_1``) described by nothing more (``core.task.unreadable_labels``); the simulated teacher answers from
    gold and needs no meaning.  Images are exempt: a folder of handwritten digits named 0-9 means what it says."""
    from llm_flywheel.core.task import unreadable_labels

    bare = [] if simulated or task is None or task.modality == "image" else unreadable_labels(task)
    if bare:
        shown = ", ".join(bare[:6]) + (", ..." if len(bare) > 6 else "")
        raise TeacherConfigError(
            f"the labels of {task.name!r} are only ids ({shown}) with no description: an LLM teacher cannot know "
            f"what they mean and would be paid to guess. Describe each in a task file and import the file again "
            f"with it (its items stay): `flywheel data add {task.modality} FILE --name "
            f"{task.name} --task {task.name}.toml`, the file holding name = \"{task.name}\", modality = "
            f"\"{task.modality}\" and a [labels] table such as {bare[0]} = \"negative: the customer is unhappy\" "
            f"(Python: task= in ws.add_dataset, or labels={{\"{bare[0]}\": \"negative: ...\"}} in ws.add_items)")


# --- failure classification -----------------------------------------------------------------------------------------
_DNS_MARKERS = ("name or service not known", "nodename nor servname", "getaddrinfo failed",
                "temporary failure in name resolution", "no address associated", "name does not resolve",
                "failed to resolve", "no such host")
_CONTEXT_RE = re.compile(r"context size has been exceeded|exceeds? the available context|larger than the max context"
                         r"|exceed_context_size|maximum context length|context_length_exceeded"
                         r"|exceed(?:s|ed)? context window|context window exceeded|too many tokens in the prompt", re.I)
_MODERATION_RE = re.compile(r"moderation|input was flagged|flagged_input|content[ _-]?polic|content[ _-]?filter"
                            r"|safety system|guardrail|request blocked", re.I)  # not "flagged" alone: an account can be
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


def no_endpoint(status: int, text: str) -> bool:
    """OpenRouter's 404 "No endpoints found that support ..." (a parameter, image input, tool use): the model
    exists, but none of its providers takes this request -- not a wrong model name."""
    return status == 404 and "no endpoints found that support" in (text or "").lower()


def refused_response_format(status: int, text: str) -> bool:
    """True when an error response says the server cannot do the requested ``response_format``.  400/422 (and
    OpenRouter's :func:`no_endpoint` 404) name it loosely ("schema", "structured"); a 5xx must name it outright
    (llama-cpp-python answers HTTP 500 to ``json_schema``) so that an ordinary server error is not mistaken for a
    refusal."""
    low = (text or "").lower()
    if status in (400, 422) or no_endpoint(status, text):
        return any(w in low for w in _FORMAT_WORDS_4XX)
    if status >= 500:
        return any(w in low for w in _FORMAT_WORDS_5XX)
    return False


def context_numbers(text: str) -> tuple[int, int] | None:
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


_UNSUPPORTED_RE = {
    # OpenAI's reasoning models (o-series, gpt-5.x, also on Azure): "Unsupported parameter: 'max_tokens' is not
    # supported with this model. Use 'max_completion_tokens' instead."
    "legacy_max_tokens": re.compile(r"'?max_tokens'?[^.]*(?:not supported|unsupported)|use '?max_completion_tokens",
                                    re.I),
    # "Unsupported value: 'temperature' does not support 0 with this model. Only the default (1) value is supported."
    "temperature": re.compile(r"'?temperature'?[^.]*(?:does not support|not supported|unsupported)", re.I),
}


def unsupported_param(status: int, text: str) -> str | None:
    """The request flag (``legacy_max_tokens`` or ``temperature``) a 400/422 says this model does not take, else None.
    The message must say so ("not supported"), and where the provider names the ``param`` (OpenAI does) it must be
    that one: "Invalid 'max_tokens': integer above maximum value" is a bad value, not an unsupported parameter."""
    if status not in (400, 422):
        return None
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        err = None
    param = err.get("param") if isinstance(err, dict) else None
    msg = str(err.get("message") or "") if isinstance(err, dict) else text
    for flag, name in (("legacy_max_tokens", "max_tokens"), ("temperature", "temperature")):
        if param in (None, name) and _UNSUPPORTED_RE[flag].search(msg):
            return flag
    return None


def is_content_refusal(status: int, text: str) -> bool:
    """A provider's content filter declined *this item*, not the key or the model: OpenRouter's HTTP 403 "Your chosen
    model requires moderation and your input was flagged" (``error.metadata.flagged_input`` / ``reasons``) or its
    guardrails' "Request blocked", OpenAI's 400 ``content_policy_violation``, Azure's 400 ``content_filter``.  The
    next item may pass, so a 403 like this must not stop the run as a bad API key."""
    return status in (400, 403, 422) and bool(_MODERATION_RE.search(text))


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
        if status == 429:
            return (f"{base_url} says the account is out of quota (HTTP 429 insufficient_quota) — add credits or "
                    "raise the limit in the provider's billing settings; the re-run resumes")
        if api_key_env and os.environ.get(api_key_env):
            return (f"{base_url} refused the API key in ${api_key_env} (HTTP {status}) — export a valid key there "
                    f"or pick another variable with --api-key-env")
        return (f"{base_url} wants an API key (HTTP {status}) — export it and name the variable with --api-key-env")
    if kind == "not_found":
        return (f"{base_url}/chat/completions or model {model!r} does not exist (HTTP 404) — check the base URL "
                f"(it usually ends in /v1) and the model name ({base_url}/models lists them)")
    return ""
