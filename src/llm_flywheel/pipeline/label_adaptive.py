"""Adaptive passes: buy a second (and tie-break) pass only where the first one is unsure.

Why: with k = 2 every item costs two calls plus tie-breaks, yet most first answers are already what the
multi-pass consensus would say.  The run goes in two phases:

1. **Evidence and first passes.**  Evidence is items whose main passes were all answered by this teacher and
   prompt.  Items of the same dataset that earlier runs asked every pass (their calibration samples, the items
   below their cutoffs, fixed-k runs) are *reused* as evidence (``reuse_evidence``, the default) -- the run's own
   items too, when an earlier run over them got that far: already paid for, so a run buys a calibration sample
   (drawn by a hash of the content among its items that are not evidence yet, so a resumed run draws the same)
   only for the shortfall up to ``calibration_items`` -- the first run of a dataset buys it, later runs usually
   buy none.  The wheel asks its calib split every pass before anything else, so its first adaptive run buys none.
   Every other item gets pass 0 only.
2. **The cutoff, from data.**  On the evidence, the first pass's certainty (the label's token probability where
   the server returned log-probabilities, else the verbalised confidence) is compared with the consensus.  The
   cutoff is the smallest certainty whose would-be-skipped items agreed with the consensus at a rate whose 95 %
   lower bound is >= ``agreement_target`` (:func:`llm_flywheel.core.consensus.choose_cutoff`); items below it get
   the remaining passes.  No cutoff meets the target -> every item gets all passes, as fixed k would.

Why reused evidence keeps the bound honest: whether an earlier run asked an item every pass depended only on the
hash draw and on its first pass's certainty, never on what the later passes said.  Items below an earlier cutoff
are over-represented at the low end of any candidate skip region, where agreement is lowest, so pooling them makes
the estimate more cautious, not less.  The caveat: evidence from other items of the dataset describes this run's
items only as far as they come from the same population (active selection picks harder items; their certainty
still orders them, which is what the cutoff uses).

**The student as a second signal** (``hints``: the wheel's promoted student's calibrated label and confidence per
content hash).  Where the student agrees with pass 0, pass 0 is usually what the consensus would say, and a second
pass mostly adds look-alike noise (``benchmarks/bench_student_skip.py``: on the demo's calib items 43.7-45.1 % fewer
calls than fixed k = 2 instead of 41.4 %, at +1.3 to +1.7 pt label accuracy against gold).  A logistic score of
(pass 0's certainty, the student agrees, its confidence) is fitted on one half of the *hinted* evidence and its cutoff
chosen on the other half by the same bound; hinted items are skipped by that score, the others by the certainty
cutoff, so each skipped set keeps its own bound.  Only evidence the student never trained on may carry a hint (the
wheel gives hints for its calib split and the run's own new items).

Nothing is decided from memory: the evidence, the sample, the cutoff and the items above it are recomputed from
the stored answers on every run (reused evidence is answers stored before this run's first attempt started -- the
answer id recorded then, per dataset, teacher, prompt, passes and items -- which neither this run nor a later one
changes), so a killed run resumes without paying twice and a re-run makes no call.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_flywheel.core.consensus import (
    CutoffChoice,
    answer_probability,
    calibration_sample,
    choose_cutoff,
    consensus,
)
from llm_flywheel.store.base import Item, Store

Answers = Mapping[str, Sequence[Mapping[str, Any]]]
Hints = Mapping[str, tuple[str, float]]  # content hash -> the student's (label, calibrated confidence)
MIN_HINTED_EVIDENCE = 200  # fewer hinted evidence items: the certainty cutoff alone (half of them set the cutoff)


@dataclass
class AdaptiveSummary:
    """What the adaptive-pass decision was, for the run result and its report.

    ``calibration_items``: items of this run asked every pass to learn the cutoff (the sample bought here);
    ``reused_evidence``: items of earlier runs (same dataset, teacher and prompt) with every main pass answered,
    used as evidence without a new call; ``evidence``: the sample's and the reused items with all main passes
    answered and an on-list first answer; ``cutoff``/``agreement*``: see
    :class:`~llm_flywheel.core.consensus.CutoffChoice`
    (None: no cutoff met the target, every item got all passes); ``certainty``: what the first pass's certainty
    was read from (``logprob``, ``verbalised``, ``mixed`` or ``default``); ``skipped_items``: items answered by
    their first pass alone; ``extra_pass_items``: items outside the sample asked the later passes.
    """

    calibration_items: int = 0
    reused_evidence: int = 0
    evidence: int = 0
    target: float = 0.0
    cutoff: float | None = None
    agreement: float | None = None
    agreement_low: float | None = None
    agreement_high: float | None = None
    certainty: str = ""
    skipped_items: int = 0
    extra_pass_items: int = 0
    student_cutoff: float | None = None  # the score cutoff of the student rule (None: not used)
    student_evidence: int = 0  # hinted evidence items behind it (half fitted the score, half chose the cutoff)
    student_agreement_low: float | None = None


def first_pass(answers: Sequence[Mapping[str, Any]], labels: Sequence[str],
               use_logprobs: bool) -> tuple[str | None, float, str] | None:
    """(label, certainty, where the certainty came from) of pass 0, or None when pass 0 has no final answer."""
    for a in answers:
        if a.get("pass_index") == 0:
            p, src = answer_probability(a, len(labels), use_logprobs)
            lab = a.get("label")
            return (lab if lab in labels else None), p, src
    return None


def complete(answers: Sequence[Mapping[str, Any]], labels: Sequence[str], passes: int) -> bool:
    """Every main pass answered and an on-list first answer: usable as evidence for the cutoff."""
    got = {a.get("pass_index"): a.get("label") for a in answers}
    return all(p in got for p in range(passes)) and got.get(0) in labels


def reusable_evidence(store: Store, items: Sequence[Item], model: str, prompt_version: str, passes: int,
                      labels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Stored answers of this teacher and prompt on the items of the run's dataset(s) -- its own included -- whose
    main passes were all answered before the run first started: evidence already paid for.

    The cut-off is the run's recorded :meth:`~llm_flywheel.store.answers.AnswersMixin.evidence_horizon` (keyed by
    the dataset, teacher, prompt, passes and the items), so a resumed run, or a re-run after later runs stored more,
    decides exactly as the first attempt did and pays nothing more.  A run over items an earlier run answered
    (``--limit 1000`` after ``--limit 500``) counts that run's complete items as evidence instead of buying a new
    calibration sample."""
    own = sorted({it.content_hash for it in items})
    datasets = sorted({it.dataset for it in items})
    key = hashlib.sha256(json.dumps([datasets, model, prompt_version, passes, own]).encode()).hexdigest()
    before = store.evidence_horizon(f"adaptive:{key}")
    out: dict[str, list[dict[str, Any]]] = {}
    for h, ans in store.dataset_final_answers(datasets, model, prompt_version, passes).items():
        kept = [a for a in ans if int(a["id"]) < before]
        if complete(kept, labels, passes):
            out[h] = kept
    return out


def plan_sample(content_hashes: Sequence[str], reused: Answers, size: int) -> set[str]:
    """The run's calibration sample: only the shortfall of reused evidence up to ``size`` is bought, among the
    run's items that are not evidence already."""
    return calibration_sample([h for h in content_hashes if h not in reused], max(0, size - len(reused)))


def learn_cutoff(answers: Mapping[str, Sequence[Mapping[str, Any]]], sample: set[str], labels: Sequence[str],
                 passes: int, target: float, use_logprobs: bool) -> tuple[CutoffChoice, str]:
    """The cutoff from the calibration items whose ``passes`` main passes are all answered."""
    ps: list[float] = []
    agrees: list[bool] = []
    sources: set[str] = set()
    for h in sample:
        ans = answers.get(h, [])
        got = {a["pass_index"] for a in ans}
        first = first_pass(ans, labels, use_logprobs)
        if first is None or first[0] is None or any(p not in got for p in range(passes)):
            continue  # incomplete, or an off-list first answer (never skipped anyway)
        con = consensus(ans, labels, use_logprobs=use_logprobs)
        ps.append(first[1])
        agrees.append(con is not None and con.label == first[0])
        sources.add(first[2])
    src = sources.pop() if len(sources) == 1 else ("mixed" if sources else "")
    return choose_cutoff(ps, agrees, target), src


@dataclass(frozen=True)
class StudentRule:
    """Skip the later passes where ``score`` (a logistic fit of pass 0 == consensus) is >= ``cutoff``."""

    coef: tuple[float, ...]
    intercept: float
    cutoff: float
    evidence: int
    agreement_low: float | None

    def score(self, first: tuple[str | None, float, str], hint: tuple[str, float]) -> float:
        z = self.intercept + sum(c * x for c, x in zip(self.coef, _features(first, hint)))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def _features(first: tuple[str | None, float, str], hint: tuple[str, float]) -> tuple[float, float, float, float]:
    agrees = float(hint[0] == first[0])
    return first[1], agrees, float(hint[1]), agrees * float(hint[1])


def learn_student_rule(answers: Answers, evidence: set[str], hints: Hints, labels: Sequence[str], passes: int,
                       target: float, use_logprobs: bool) -> StudentRule | None:
    """The student rule from the hinted evidence items with every main pass (one half fits the score, the other
    chooses its cutoff); None with too little evidence or no cutoff that meets ``target``."""
    from sklearn.linear_model import LogisticRegression

    halves: tuple[list[tuple[tuple[float, ...], bool, tuple[str | None, float, str], tuple[str, float]]], ...] = ([], [])
    for h in sorted(evidence & set(hints)):
        ans = answers.get(h, [])
        first = first_pass(ans, labels, use_logprobs)
        if first is None or first[0] is None or not complete(ans, labels, passes):
            continue
        con = consensus(ans, labels, use_logprobs=use_logprobs)
        half = hashlib.sha256(h.encode()).digest()[0] % 2
        halves[half].append((_features(first, hints[h]), con is not None and con.label == first[0], first, hints[h]))
    fit, pick = halves
    if len(fit) + len(pick) < MIN_HINTED_EVIDENCE or len({y for _, y, _, _ in fit}) < 2:
        return None  # too little evidence, or every fitted item agreed (the certainty cutoff then skips them)
    lr = LogisticRegression(max_iter=1000).fit([x for x, _, _, _ in fit], [y for _, y, _, _ in fit])
    draft = StudentRule(tuple(float(c) for c in lr.coef_[0]), float(lr.intercept_[0]), 0.0, 0, None)
    choice = choose_cutoff([draft.score(f, hint) for _, _, f, hint in pick], [y for _, y, _, _ in pick], target)
    if choice.cutoff is None:
        return None
    return StudentRule(draft.coef, draft.intercept, choice.cutoff, len(fit) + len(pick), choice.agreement_low)


def split_by_certainty(items: Sequence[Item], answers: Mapping[str, Sequence[Mapping[str, Any]]],
                       evidence: set[str], labels: Sequence[str], cutoff: float | None,
                       use_logprobs: bool, rule: StudentRule | None = None,
                       hints: Hints | None = None) -> tuple[list[Item], set[str]]:
    """(items outside the ``evidence`` -- the sample and the reused items, asked every pass already -- that need
    the later passes, content hashes answered by pass 0 alone): a hinted item by the student ``rule`` when there is
    one, every other item by the certainty ``cutoff``.

    An item whose first pass is missing (failed this run) is in neither: the next run asks it again."""
    more: list[Item] = []
    skipped: set[str] = set()
    for it in items:
        h = it.content_hash
        if h in evidence:
            continue
        first = first_pass(answers.get(h, []), labels, use_logprobs)
        if first is None:
            continue
        if first[0] is not None and rule is not None and hints and h in hints:
            sure = rule.score(first, hints[h]) >= rule.cutoff
        else:
            sure = cutoff is not None and first[0] is not None and first[1] >= cutoff
        if sure:
            skipped.add(h)
        else:
            more.append(it)
    return more, skipped


def decide(items: Sequence[Item], answers: Answers, reused: Answers, sample: set[str], labels: Sequence[str],
           passes: int, target: float, use_logprobs: bool,
           hints: Hints | None = None) -> tuple[AdaptiveSummary, list[Item], set[str]]:
    """(the decision, items that need the later passes, hashes answered by pass 0 alone) from the run's answers
    and the reused evidence (and the student's ``hints``, where given)."""
    pool = {**answers, **reused}  # a run's own item that is evidence: as it stood when the run first started
    evidence = sample | set(reused)
    choice, source = learn_cutoff(pool, evidence, labels, passes, target, use_logprobs)
    rule = learn_student_rule(pool, evidence, hints, labels, passes, target, use_logprobs) if hints else None
    more, skipped = split_by_certainty(items, answers, evidence, labels, choice.cutoff, use_logprobs, rule, hints)
    summary = summarise(choice, source, sample, more, skipped, len(reused))
    if rule is not None:
        summary.student_cutoff, summary.student_evidence = rule.cutoff, rule.evidence
        summary.student_agreement_low = rule.agreement_low
    return summary, more, skipped


def summarise(choice: CutoffChoice, source: str, sample: set[str], more: Sequence[Item],
              skipped: set[str], reused: int = 0) -> AdaptiveSummary:
    return AdaptiveSummary(
        calibration_items=len(sample), reused_evidence=reused, evidence=choice.evidence, target=choice.target,
        cutoff=choice.cutoff,
        agreement=choice.agreement, agreement_low=choice.agreement_low, agreement_high=choice.agreement_high,
        certainty=source, skipped_items=len(skipped), extra_pass_items=len({it.content_hash for it in more}))
