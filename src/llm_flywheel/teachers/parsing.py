"""Turning what an LLM wrote into one of the task's labels -- or saying plainly that it did not give one.

Why a module of its own: real models wrap JSON in code fences, add prose, write "T-shirt", "Sweet Peppers" or
"ankle boots" for ``t_shirt_top``, ``sweet_pepper`` and ``ankle_boot``.  A robust parser turns those into labels,
while an answer that names something off the list is *recorded* as off-list (a final answer, ``ok=1``) and one
that cannot be read at all is a parse failure (``ok=0``, asked again on the next run) -- never a crash.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from llm_flywheel.core.task import normalise_label

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_THINK_OPEN_RE = re.compile(r"<(?:think|thinking|reasoning|thought)>|<\|channel\|>\s*analysis", re.I)
_THINK_CLOSE_RE = re.compile(r"</(?:think|thinking|reasoning|thought)>|<\|channel\|>\s*final\s*(?:<\|message\|>)?",
                             re.I)


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """``(reasoning, answer, finished)`` of a reply that may think out loud before it answers.

    Why: reasoning models served without a reasoning parser (DeepSeek-R1 or Qwen3 through Ollama, vLLM or
    llama.cpp, gpt-oss's harmony channels) put their thinking into ``content`` -- and a draft ``{"label": ...}``
    inside it would otherwise be read as the answer.  The answer is what follows the last closing tag (templates
    that open ``<think>`` in the prompt leave only the closing one); a reply that opens a block and never closes
    it has no answer yet (``finished`` False).
    """
    closes = list(_THINK_CLOSE_RE.finditer(text))
    if closes:
        return text[:closes[-1].start()], text[closes[-1].end():], True
    m = _THINK_OPEN_RE.search(text)
    if m and not text[:m.start()].strip():
        return text[m.end():], "", False
    return "", text, True


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _singular_key(text: str) -> str:
    return "_".join(_singular(w) for w in normalise_label(text).split("_") if w)


class LabelMatcher:
    """Maps free-form label text to a task label: exact, case/space/hyphen/plural variants, description names,
    and an unambiguous whole-word prefix ("t-shirt" -> ``t_shirt_top``).  Ambiguous or unknown -> ``None``."""

    def __init__(self, labels: tuple[str, ...] | list[str], descriptions: dict[str, str] | None = None) -> None:
        self.labels = tuple(labels)
        self._exact: dict[str, str] = {}
        for lab in self.labels:
            for key in (normalise_label(lab), _singular_key(lab), normalise_label(lab).replace("_", "")):
                self._exact.setdefault(key, lab)
        for lab, desc in (descriptions or {}).items():
            head = desc.split(":", 1)[0]
            if head and len(head) < 40 and ":" in desc:
                for key in (normalise_label(head), _singular_key(head)):
                    self._exact.setdefault(key, lab)

    def match(self, text: Any) -> str | None:
        if not isinstance(text, str) or not text.strip():
            return None
        key = normalise_label(text)
        for k in (key, _singular_key(text), key.replace("_", "")):
            if k in self._exact:
                return self._exact[k]
        # whole-word prefix: "t_shirt" is the start of exactly one label ("t_shirt_top")
        sk = _singular_key(text)
        cands = {lab for lab in self.labels if _singular_key(lab).startswith(sk + "_")}
        if len(cands) == 1:
            return cands.pop()
        return None


@dataclass
class ParsedAnswer:
    """``error_kind``: None (a label), ``off_list`` (valid JSON naming no task label -- final), ``parse`` (unreadable)."""

    label: str | None
    confidence: float | None
    reason: str | None
    raw_label: str | None
    error_kind: str | None = None
    error_detail: str | None = None


def _json_objects(text: str) -> list[Any]:
    """Every JSON object that can be decoded from ``text`` (fenced blocks first, then any ``{`` position)."""
    out: list[Any] = []
    candidates = [m.group(1) for m in _FENCE_RE.finditer(text)] + [text]
    dec = json.JSONDecoder()
    for cand in candidates:
        s = cand.strip()
        try:
            out.append(json.loads(s))
            continue
        except (json.JSONDecodeError, ValueError):
            pass
        for m in re.finditer(r"\{", s):
            try:
                obj, _ = dec.raw_decode(s[m.start():])
            except (json.JSONDecodeError, ValueError):
                continue
            out.append(obj)
            break
    return [o for o in out if isinstance(o, dict)]


def parse_confidence(v: Any) -> float | None:
    """0..1 from 0.93, "0.93", "93%", 93 (a percent) or "high"; ``None`` when absent or meaningless."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        s = v.strip().lower()
        words = {"very high": 0.95, "high": 0.85, "medium": 0.6, "moderate": 0.6, "low": 0.3, "very low": 0.1}
        if s in words:
            return words[s]
        pct = s.endswith("%")
        try:
            f = float(s.rstrip("%").strip())
        except ValueError:
            return None
        if pct:
            f /= 100.0
    elif isinstance(v, (int, float)):
        f = float(v)
    else:
        return None
    if not math.isfinite(f) or f < 0:
        return None
    if f > 1.0:
        f = f / 100.0 if f <= 100.0 else None  # type: ignore[assignment]
    return None if f is None else min(max(f, 0.0), 1.0)


_LABEL_KEYS = ("label", "class", "category", "answer", "prediction")


def parse_answer(text: str | None, matcher: LabelMatcher) -> ParsedAnswer:
    """Parse a model's reply.  Never raises."""
    if text is None or not str(text).strip():
        return ParsedAnswer(None, None, None, None, "parse", "empty reply")
    thinking, text, finished = split_reasoning(str(text))
    if not finished:
        return ParsedAnswer(None, None, None, None, "parse",
                            f"the reply is all reasoning ({len(thinking)} chars) and never reaches an answer")
    if not text.strip():
        return ParsedAnswer(None, None, None, None, "parse", "nothing after the model's reasoning")
    objs = _json_objects(text)
    for obj in objs:
        low = {str(k).lower(): v for k, v in obj.items()}
        raw = next((low[k] for k in _LABEL_KEYS if k in low), None)
        if raw is None:
            continue
        conf = parse_confidence(low.get("confidence", low.get("probability", low.get("score"))))
        reason = low.get("reason", low.get("why", low.get("explanation")))
        reason = str(reason)[:300] if reason is not None else None
        raw_s = raw if isinstance(raw, str) else json.dumps(raw)
        label = matcher.match(raw_s)
        if label is None:
            return ParsedAnswer(None, conf, reason, raw_s[:200], "off_list", f"label {raw_s[:80]!r} is not one of the task's labels")
        return ParsedAnswer(label, conf, reason, raw_s)
    if objs:
        return ParsedAnswer(None, None, None, None, "parse", "JSON without a 'label' field")
    # no JSON at all: accept a bare label ("Coat", "label: coat"), nothing longer
    bare = re.sub(r"^\s*(label|answer|class)\s*[:=]\s*", "", text.strip(), flags=re.I).strip().strip(".\"'`")
    if len(bare) <= 40:
        label = matcher.match(bare)
        if label is not None:
            return ParsedAnswer(label, None, None, bare)
    return ParsedAnswer(None, None, None, None, "parse", f"no JSON object in reply ({len(text)} chars)")


def label_logprob(tokens: list[dict[str, Any]] | None, raw_label: str | None,
                  labels: tuple[str, ...] | list[str] | None = None) -> float | None:
    """Log of how sure the model was of its label *among the task's labels*, from the reply's token log-probabilities.

    OpenAI-style ``choices[0].logprobs.content`` is a list of ``{token, logprob, top_logprobs}``; we find the label's
    characters in the concatenated text (after ``"label"`` when present).  Where the label's tokens carry
    ``top_logprobs`` and ``labels`` are given, the answer is :func:`label_share`: the label's probability
    renormalised over the labels.  Why: llama.cpp (and vLLM) report the model's probabilities *before* the JSON
    grammar, so a label the grammar forced carries the mass of every word the model would rather have written --
    SmolLM2's labels scored -2 to -55 there, i.e. "certainty" 0 whether it was sure or not.  Without alternatives
    (a provider that returns none) it is the sum of the label tokens' log-probabilities, as reported.
    """
    if not tokens or not raw_label:
        return None
    try:
        pieces = [(str(t.get("token", "")), float(t.get("logprob"))) for t in tokens]
    except (TypeError, ValueError, AttributeError):
        return None
    full = "".join(p for p, _ in pieces)
    answer_at = len(full) - len(split_reasoning(full)[1])  # past any thinking: its drafts are not the answer
    start_from = max(full.find('"label"', answer_at), answer_at)
    pos = full.find(raw_label, start_from)
    if pos < 0:
        pos = full.lower().find(raw_label.lower(), answer_at)
    if pos < 0:
        return None
    end = pos + len(raw_label)
    total, off = 0.0, 0
    first: tuple[int, int] | None = None  # (index, start offset) of the first token that spells the label
    for i, (tok, lp) in enumerate(pieces):
        t0, t1 = off, off + len(tok)
        if t1 > pos and t0 < end and math.isfinite(lp):
            total += lp
            first = first or (i, t0)
        off = t1
    if first is None:
        return None
    if labels:
        i0, t0 = first
        share = label_share(tokens, i0, full[t0:pos] if t0 < pos else "", full[pos:end], labels)
        if share is not None:
            return share
    return total


def _pairs(entries: list[Any]) -> list[tuple[str, float]]:
    """(text, logprob) of the well-formed, finite entries of a logprobs list."""
    out = []
    for t in entries:
        try:
            text, lp = str(t.get("token", "")), float(t.get("logprob"))
        except (TypeError, ValueError, AttributeError):
            continue
        if math.isfinite(lp):
            out.append((text, lp))
    return out


def _alternatives(token: dict[str, Any]) -> tuple[list[tuple[str, float]], float] | None:
    """(the token itself and its ``top_logprobs`` as (text, logprob), the lowest logprob on the top list); None when
    the server sent no alternatives."""
    top = token.get("top_logprobs")
    listed = _pairs(top) if isinstance(top, list) else []
    if not listed:
        return None
    alts = dict(reversed(listed))  # a text listed twice keeps its first (higher) logprob
    for text, lp in _pairs([token]):
        alts.setdefault(text, lp)  # the sampled token, even where the grammar forced one below the list
    return list(alts.items()), min(lp for _, lp in listed)


def _fits(text: str, label: str) -> bool:
    """``text`` (label characters written so far + a candidate token) could still spell ``label``: it is a prefix
    of it, or the whole label followed by the closing quote."""
    return label.startswith(text) or text.startswith(label + '"')


def label_share(tokens: list[dict[str, Any]], first: int, pre: str, written: str,
                labels: tuple[str, ...] | list[str]) -> float | None:
    """log P(the written label | the answer is one of ``labels``), read token by token until the label is decided.

    ``first`` is the index of the label's first token and ``pre`` that token's part before the label (an opening
    quote).  At each token, the alternatives that could still spell the written label are weighed against those
    that could spell any label still possible (the chain rule over the label's tokens, and the token after it where
    one label is a prefix of another: "cat" vs "catfish"); once no other label fits what is written, the grammar
    decides the rest.  A label with no visible alternative is given the lowest probability on the list (it could be
    just below it), so the share is a lower bound, never an overstatement.  None when ``written`` is not a task
    label or a token that decides has no alternatives.
    """
    chosen = written.lower()
    live = sorted({lab.lower() for lab in labels})
    if chosen not in live:
        return None
    total, done = 0.0, ""
    for i in range(first, len(tokens)):
        live = [lab for lab in live if _fits(done, lab)]
        if len(live) <= 1 or chosen not in live:
            break
        got = _alternatives(tokens[i])
        if got is None:
            return None
        alts, lowest = got
        cut = pre if i == first else ""
        mass = dict.fromkeys(live, 0.0)
        num = den = 0.0
        for text, lp in alts:
            if not text.lower().startswith(cut.lower()):
                continue
            fits = [lab for lab in live if _fits(done + text[len(cut):].lower(), lab)]
            if fits:
                p = math.exp(min(lp, 0.0))
                den += p
                num += p if chosen in fits else 0.0
                for lab in fits:
                    mass[lab] += p
        den += sum(math.exp(lowest) for lab, m in mass.items() if m == 0.0 and lab != chosen)
        if num <= 0.0 or den <= 0.0:
            return None
        total += math.log(min(num / den, 1.0))
        done += str(tokens[i].get("token", ""))[len(cut):].lower()
    return total


_LABEL_FIELD_RE = re.compile(r'"(?:label|class|category|answer|prediction)"\s*:\s*"((?:[^"\\]|\\.)*)"', re.I)
_CONF_FIELD_RE = re.compile(r'"(?:confidence|probability|score)"\s*:\s*"?([0-9.]+%?)', re.I)


def recover_truncated(text: str | None, matcher: LabelMatcher) -> ParsedAnswer | None:
    """The label of a reply cut off at ``max_tokens`` -- when it was written in full before the cut.

    Why: the schema puts ``label`` first, so a reply that ran out of tokens inside ``reason`` usually holds a
    complete, closed ``"label": "..."`` string.  Only an unambiguous reading counts: exactly one closed label
    field that maps to a task label.  Anything else (the cut fell inside the label, two different labels, an
    off-list name) is ``None`` and the caller treats the reply as truncated.
    """
    if not text:
        return None
    text = split_reasoning(text)[1]  # a draft label inside the thinking is no answer
    found = _LABEL_FIELD_RE.findall(text)
    if not found:
        return None
    labels = {matcher.match(raw) for raw in found}
    if len(labels) != 1 or None in labels:
        return None
    conf_m = _CONF_FIELD_RE.search(text[text.find(found[0]):])
    conf = None
    if conf_m:  # only a number that is complete: something (a comma, a space, a brace) must follow it
        end = text.find(found[0]) + conf_m.end()
        rest = text[end:end + 1]
        if rest and rest in ',} \n\t"':
            conf = parse_confidence(conf_m.group(1))
    return ParsedAnswer(labels.pop(), conf, None, found[0])


def looks_like_json(text: str | None) -> bool:
    """True when a reply is (or starts as) a JSON object -- what a server that honours ``response_format``
    returns.  A reply that is prose means the server ignored the requested format; one still thinking when it was
    cut off says nothing about the format (servers like Ollama apply it to the answer after the thinking)."""
    if not text:
        return False
    _, answer, finished = split_reasoning(text)
    if not finished:
        return True
    s = answer.strip()
    m = _FENCE_RE.match(s)
    if m:
        s = m.group(1).strip()
    elif s.startswith("```"):  # a fence cut off before it closed
        s = s.lstrip("`").removeprefix("json").removeprefix("JSON").strip()
    return s.startswith("{")
