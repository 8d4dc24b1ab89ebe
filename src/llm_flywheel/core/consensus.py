"""Consensus arithmetic over teacher passes: no I/O, plain values in, plain values out.

Why its own module: the labeller, the benchmarks and the adaptive-pass cutoff all need the same answer to "what
does this set of passes say, and how sure is it", and it must be testable on plain lists without a store or a
server.  An *answer* here is any mapping with ``label`` and, optionally, ``confidence`` (verbalised),
``label_logprob`` (the label's token log-probability), ``pass_index`` and ``id`` -- exactly a stored
``teacher_answers`` row.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_flywheel.core.stats import wilson_interval

DEFAULT_CONFIDENCE = 0.7  # used in the soft target when a teacher gives no confidence


@dataclass
class Consensus:
    label: str | None
    quality: float
    soft: dict[str, float]
    status: str  # agreed | tie_broken | disagreed | single
    votes: dict[str, int]
    answer_ids: list[int]
    confidence_source: str = "verbalised"  # logprob | verbalised | mixed | default


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def answer_probability(answer: Mapping[str, Any], k: int, use_logprobs: bool = True) -> tuple[float, str]:
    """How sure one answer is of its own label, in [1/k, 1], and where that came from.

    The label's probability ``exp(label_logprob)`` when present -- its share among the labels where the server sent
    alternatives (:func:`llm_flywheel.teachers.parsing.label_share`) -- (refuel's labelling study found it the better
    signal; verbalised confidences cluster at 0.8-0.99 whether right or wrong), else the verbalised confidence,
    else :data:`DEFAULT_CONFIDENCE`.  The floor 1/k: an answer never argues against its own label (a sampled pass
    can pick a label below 1/k; it still said that label).
    """
    lp = _finite(answer.get("label_logprob")) if use_logprobs else None
    if lp is not None:
        return min(max(math.exp(min(lp, 0.0)), 1.0 / k), 1.0), "logprob"
    c = _finite(answer.get("confidence"))
    if c is not None:
        return min(max(c, 1.0 / k), 1.0), "verbalised"
    return max(DEFAULT_CONFIDENCE, 1.0 / k), "default"


def soft_target(labels: Sequence[str], answer_labels: Sequence[str], probs: Sequence[float]) -> dict[str, float]:
    """Mean over passes of a distribution putting ``p`` on the pass's label and ``1-p`` spread over the others."""
    k, n = len(labels), len(answer_labels)
    soft = dict.fromkeys(labels, 0.0)
    for lab_a, c in zip(answer_labels, probs):
        for lab in labels:
            soft[lab] += (c if lab == lab_a else (1.0 - c) / max(k - 1, 1)) / n
    return {lab: round(p, 6) for lab, p in soft.items() if p > 0}


def consensus(answers: Sequence[Mapping[str, Any]], labels: Sequence[str], *, use_logprobs: bool = True,
              single_factor: float = 0.5) -> Consensus | None:
    """One label from several passes.

    Each valid answer contributes ``p``, its probability for its own label (:func:`answer_probability`: the label
    logprob where the provider returned one, else the verbalised confidence).

    * all valid passes agree (>= 2): ``agreed``, quality = mean p;
    * a strict majority after dissent: ``tie_broken``, quality = majority share x mean p of the majority;
    * no majority: ``disagreed``, label ``None`` (kept and queued, never dropped);
    * one valid pass: ``single``, quality x ``single_factor`` (0.5: nothing checked it; adaptive passes give 1.0
      where the first pass cleared a cutoff learnt from items that were checked).
    The soft target averages, per pass, ``p`` on the answer and the rest spread over the other labels.
    """
    if not answers:
        return None
    ids = [int(a["id"]) for a in answers if a.get("id") is not None]
    valid = [a for a in answers if a.get("label") in labels]
    k = len(labels)
    if not valid:
        return Consensus(None, 0.0, {}, "disagreed", {"off_list": len(answers)}, ids)
    probs = [answer_probability(a, k, use_logprobs) for a in valid]
    sources = {src for _, src in probs}
    source = sources.pop() if len(sources) == 1 else "mixed"
    soft = soft_target(labels, [a["label"] for a in valid], [c for c, _ in probs])
    votes = Counter(a["label"] for a in valid)
    (top, n_top), *_ = votes.most_common()
    confs = [c for a, (c, _) in zip(valid, probs) if a["label"] == top]
    mean_c = sum(confs) / len(confs)
    n = len(valid)
    if n == 1:
        return Consensus(top, single_factor * mean_c, soft, "single", dict(votes), ids, source)
    if n_top == n:
        return Consensus(top, mean_c, soft, "agreed", dict(votes), ids, source)
    if n_top * 2 > n:
        return Consensus(top, n_top / n * mean_c, soft, "tie_broken", dict(votes), ids, source)
    return Consensus(None, n_top / n * mean_c, soft, "disagreed", dict(votes), ids, source)


def needs_tie_break(votes: Sequence[str | None]) -> bool:
    """Main-pass votes (``None`` = off-list) with no strict majority and no off-list answer: ask once more."""
    if not votes or any(v is None for v in votes):
        return False
    return Counter(votes).most_common(1)[0][1] * 2 <= len(votes)


# --- adaptive passes -----------------------------------------------------------------------------------------------
def calibration_rank(content_hash: str) -> float:
    """A uniform number in [0, 1) fixed by the content: which items form the calibration sample.

    Why from the content: a resumed run must pick the same sample without storing it, and the draw must not
    depend on how hard the item is (it does not: a salted hash of the content is independent of its label).
    """
    d = hashlib.sha256(f"calibration|{content_hash}".encode()).digest()
    return int.from_bytes(d[:8], "big") / 2.0**64


def calibration_sample(content_hashes: Sequence[str], size: int) -> set[str]:
    """The ``size`` distinct hashes with the smallest :func:`calibration_rank` (all of them when fewer)."""
    uniq = sorted(set(content_hashes), key=calibration_rank)
    return set(uniq[: max(size, 0)])


@dataclass
class CutoffChoice:
    """The first-pass certainty at or above which later passes are skipped, and the evidence behind it.

    ``cutoff`` is None when no cutoff met the target (every item gets all passes).  ``agreement`` is the share of
    evidence items at or above the cutoff whose first pass matched the multi-pass consensus, with its 95 % Wilson
    interval ``[agreement_low, agreement_high]``; ``skipped_share`` the share of evidence items that would have
    been skipped.
    """

    cutoff: float | None
    target: float
    evidence: int
    skipped: int = 0
    agreement: float | None = None
    agreement_low: float | None = None
    agreement_high: float | None = None

    @property
    def skipped_share(self) -> float:
        return self.skipped / self.evidence if self.evidence else 0.0


def choose_cutoff(first_p: Sequence[float], agrees: Sequence[bool], target: float) -> CutoffChoice:
    """The smallest cutoff ``c`` whose would-be-skipped evidence (first-pass probability >= c) agreed with the
    multi-pass consensus at a rate whose 95 % Wilson lower bound is >= ``target``.

    Why the lower bound: with few evidence items a lucky streak of agreement would otherwise license skipping; the
    bound needs about 50 agreeing items before it can pass 0.93, so a small sample asks every pass.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    if len(first_p) != len(agrees):
        raise ValueError("first_p and agrees differ in length")
    order = sorted(range(len(first_p)), key=lambda i: -first_p[i])
    best = CutoffChoice(None, target, len(order))
    n = hits = 0
    for j, i in enumerate(order):
        n += 1
        hits += bool(agrees[i])
        if j + 1 < len(order) and first_p[order[j + 1]] == first_p[i]:
            continue  # a cutoff cannot split tied values
        lo, hi = wilson_interval(hits, n)
        if lo >= target:
            best = CutoffChoice(float(first_p[i]), target, len(order), n, hits / n, lo, hi)
    return best
