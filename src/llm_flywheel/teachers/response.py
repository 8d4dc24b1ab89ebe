"""Reading a ``/chat/completions`` reply into the fields of a :class:`~llm_flywheel.teachers.base.TeacherAnswer`.

Why apart from the client: what a reply *means* (a label, a reply cut off at ``max_tokens``, a provider error
wrapped in a 200, a refusal) is independent of how it was fetched, and the label parsing itself is
:mod:`llm_flywheel.teachers.parsing`'s.  Every function here is pure: the reply in, answer fields out.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from llm_flywheel.teachers.errors import redact
from llm_flywheel.teachers.parsing import (LabelMatcher, label_logprob, parse_answer, recover_truncated,
                                          split_reasoning)


def to_int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def to_float(v: Any) -> float | None:
    try:
        f = float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
    return f if f is None or f == f else None


def _fail(kind: str, detail: str, **kw: Any) -> dict[str, Any]:
    return {"ok": False, "error_kind": kind, "error_detail": detail, **kw}


def _usage(data: dict[str, Any], prices: tuple[float | None, float | None]) -> dict[str, Any]:
    """Tokens, cost (the provider's billed cost when it says, as OpenRouter does, else tokens x the teacher's
    prices) and the model the response says answered (``gpt-4o`` is served by a dated snapshot)."""
    usage = data.get("usage") or {}
    tin, tout = to_int(usage.get("prompt_tokens")), to_int(usage.get("completion_tokens"))
    cost = to_float(usage.get("cost"))
    if cost is None and tin is not None and tout is not None and prices[0] is not None and prices[1] is not None:
        cost = (tin * prices[0] + tout * prices[1]) / 1e6
    served = data.get("model")
    served = served.strip()[:200] if isinstance(served, str) and served.strip() else None
    return {"tokens_in": tin, "tokens_out": tout, "cost_usd": cost, "served_model": served}


def reasoning_tokens(data: dict[str, Any]) -> int | None:
    """Hidden tokens a reasoning model spent before its answer (OpenAI: ``usage.completion_tokens_details``); they
    count against ``max_tokens`` and are billed as output."""
    details = (data.get("usage") or {}).get("completion_tokens_details")
    return to_int(details.get("reasoning_tokens")) if isinstance(details, dict) else None


def _choice(data: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """(choice, message, text) of the first choice; raises on a reply without one."""
    choice = data["choices"][0]
    msg = choice.get("message") or {}
    text = msg.get("content")
    if isinstance(text, list):  # some servers return content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    return choice, msg, text


def read_response(resp: httpx.Response, matcher: LabelMatcher, *, prices: tuple[float | None, float | None],
                  secret: str | None, mode: str, max_tokens: int | None) -> dict[str, Any]:
    """The answer fields of a 200 reply (``ok``, ``label`` ... ``error_kind``, ``extra``), without identity and
    latency.  ``error_kind`` ``http_5xx`` marks a provider error inside a 200 (retried like a 5xx)."""
    try:
        data = resp.json()
    except (json.JSONDecodeError, ValueError):
        return _fail("parse", "response body is not JSON", raw_text=resp.text[:500])
    if not isinstance(data, dict):
        return _fail("parse", "response is not a JSON object")
    if "error" in data and not data.get("choices"):
        msg = redact(json.dumps(data.get("error"))[:300], secret)
        return _fail("http_5xx", f"provider error in a 200 response: {msg}")
    common = _usage(data, prices)
    try:
        choice, msg, text = _choice(data)
    except (KeyError, IndexError, TypeError, AttributeError):
        return _fail("parse", "no choices[0].message in response", **common)
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    lp_tokens = lp["content"] if isinstance(lp, dict) and isinstance(lp.get("content"), list) else None
    extra: dict[str, Any] = {"response_format": mode, "finish_reason": finish}
    thought = reasoning_tokens(data)
    if finish == "length" and not text:  # all the room went to thinking: cut off, not a refusal (whitespace to the
        # limit is a small model's loop inside a JSON grammar: prose, as before)
        text = ""
        thought = thought or common["tokens_out"]  # hidden tokens a provider bills but does not itemise
    if isinstance(text, str) and not thought:
        inline = split_reasoning(text)[0]
        if inline.strip():  # thinking written into the reply (no reasoning parser on the server): its share
            out = common["tokens_out"]
            thought = max(1, round(out * len(inline) / len(text)) if out else len(inline) // 4)
    if thought:
        extra["reasoning_tokens"] = thought
    common["raw_text"] = text[:2000] if isinstance(text, str) else None
    if text is None:
        refusal = msg.get("refusal") if isinstance(msg, dict) else None
        return _fail("refused", f"no content (finish_reason={finish!r}{', refusal' if refusal else ''})",
                     extra=extra, **common)
    cut = finish == "length" or (finish is None and common["tokens_out"] is not None and max_tokens is not None
                                 and common["tokens_out"] >= max_tokens)
    return {**_label_fields(text, matcher, cut, max_tokens, lp_tokens, extra), **common}


def _label_fields(text: str, matcher: LabelMatcher, cut: bool, max_tokens: int | None,
                  lp_tokens: list[Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Parse the label; a reply cut off at ``max_tokens`` keeps a label it had written in full (and says so)."""
    parsed = parse_answer(text, matcher)
    kind, detail = parsed.error_kind, parsed.error_detail
    if kind == "parse" and cut:
        rec = recover_truncated(text, matcher)
        if rec is not None:  # the label was complete before the cut: keep it, and say so
            parsed, kind = rec, None
            detail = f"recovered_truncated: the reply was cut off at max_tokens={max_tokens} after a complete label"
            extra["recovered_truncated"] = True
        else:
            kind = "truncated"
            where = "before a complete label" if split_reasoning(text)[2] else "while the model was still thinking"
            detail = f"the reply was cut off at max_tokens={max_tokens} {where} ({len(text)} chars)"
    trimmed = None
    if lp_tokens:
        trimmed = [[str(t.get("token", "")), to_float(t.get("logprob"))] for t in lp_tokens[:64] if isinstance(t, dict)]
    return {"ok": kind not in ("parse", "truncated"), "label": parsed.label, "confidence": parsed.confidence,
            "reason": parsed.reason, "label_logprob": label_logprob(lp_tokens, parsed.raw_label, matcher.labels),
            "logprobs": trimmed, "error_kind": kind, "error_detail": detail,
            "extra": {"raw_label": parsed.raw_label, **extra}}
