"""Feedback from the deployed cascade, and active selection of what the teacher labels next.

Why both live here: they are the two halves of "collect errors -> targeted relabel".  ``collect`` turns one round of
served traffic into training signal -- deferred items come back with a teacher answer (a label we already paid for),
an audit sample of student-accepted items is checked by the teacher to *measure* how often the student is wrong when
it is confident, and human corrections outrank both.  ``select`` spends the next round's teacher budget where the
student is least sure (margin sampling, entropy) or where successive model versions disagree (query-by-committee);
random selection is the baseline every policy must beat (Cache & Distil found margin and QBC best).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llm_flywheel.pipeline.cost import spend_of
from llm_flywheel.students.base import predict_in_batches
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)

POLICIES = ("margin", "entropy", "qbc", "random")


# -- policies on probabilities (pure, unit-tested) ---------------------------------------------------------


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be a (n, k>=2) matrix, got shape {p.shape}")
    return p


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """Uncertainty = 1 - (top1 - top2): highest where the two best classes are closest."""
    p = np.sort(_check_probs(probs), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2])


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats)."""
    p = np.clip(_check_probs(probs), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def vote_entropy(committee: Sequence[np.ndarray]) -> np.ndarray:
    """Query-by-committee disagreement: entropy of the members' hard votes, plus a small soft tie-breaker.

    The tie-breaker (mean KL divergence of each member from the consensus, scaled below one vote's worth) orders
    items on which all members vote alike, so a committee that agrees everywhere still ranks sensibly.
    """
    members = [_check_probs(p) for p in committee]
    if len(members) < 2:
        raise ValueError("query-by-committee needs at least 2 committee members")
    n, k = members[0].shape
    if any(m.shape != (n, k) for m in members):
        raise ValueError("committee members must predict the same items and classes")
    votes = np.zeros((n, k))
    for m in members:
        votes[np.arange(n), m.argmax(axis=1)] += 1
    v = votes / len(members)
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = -np.nansum(np.where(v > 0, v * np.log(v), 0.0), axis=1)
    mean = np.clip(np.mean(members, axis=0), 1e-12, 1.0)
    kl = np.mean(
        [(np.clip(m, 1e-12, 1.0) * (np.log(np.clip(m, 1e-12, 1.0)) - np.log(mean))).sum(axis=1) for m in members],
        axis=0,
    )
    # one vote changing moves vote entropy by at least ~ (1/M) * log(M) / M; keep the tie-breaker far below that
    return ve + 1e-3 * np.tanh(kl)


def rank(
    policy: str,
    *,
    probs: np.ndarray | None = None,
    committee: Sequence[np.ndarray] | None = None,
    budget: int,
    seed: int = 0,
) -> np.ndarray:
    """Indices (into the candidate rows) of the ``budget`` items to label next, most useful first.

    ``qbc`` with fewer than two committee members falls back to margin sampling on ``probs`` (the first round has
    only one model version) -- the fallback is logged.  Ties are broken by a seeded random order, so the choice is
    deterministic for a seed and unbiased among equals.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    rng = np.random.default_rng(seed)
    if policy == "qbc" and committee is not None and len(committee) >= 2:
        scores = vote_entropy(committee)
    elif policy == "qbc":
        if probs is None and committee:
            probs = committee[0]
        log.info("query-by-committee: fewer than 2 model versions yet, using margin sampling this round")
        policy = "margin"
        scores = None
    else:
        scores = None
    if scores is None:
        if policy == "random":
            n = _n_rows(probs, committee)
            return rng.permutation(n)[: min(budget, n)]
        if probs is None:
            raise ValueError(f"policy {policy!r} needs the student's probabilities on the candidates")
        scores = margin_scores(probs) if policy == "margin" else entropy_scores(probs)
    n = len(scores)
    tiebreak = rng.permutation(n)
    order = np.lexsort((tiebreak, -scores))  # primary: score descending; secondary: random
    return order[: min(budget, n)]


def _n_rows(probs: np.ndarray | None, committee: Sequence[np.ndarray] | None) -> int:
    if probs is not None:
        return len(probs)
    if committee:
        return len(committee[0])
    raise ValueError("random selection needs the number of candidates (pass probs or committee)")


def select(
    ws: Workspace,
    dataset: str,
    candidates: Sequence[int],
    *,
    policy: str = "margin",
    budget: int,
    students: Sequence[Any] = (),
    seed: int = 0,
    batch_size: int = 256,
) -> list[int]:
    """Choose up to ``budget`` item ids from ``candidates`` for the teacher to label next.

    ``students``: the current model first, then older versions (the committee for ``qbc``); each needs
    ``predict_proba(items)``.  Random selection needs no student.
    """
    ids = list(dict.fromkeys(int(i) for i in candidates))
    if budget <= 0 or not ids:
        return []
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "random":
        idx = rank("random", probs=np.zeros((len(ids), 2)), budget=budget, seed=seed)
        return [ids[i] for i in idx]
    if not students:
        raise ValueError(f"policy {policy!r} needs at least one trained student")
    store = ws.store()
    try:
        items = store.items(dataset, ids=ids)
    finally:
        store.close()
    by_id = {it.id: it for it in items}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} candidate ids are not items of {dataset!r} (first: {missing[:5]})")
    ordered = [by_id[i] for i in ids]
    members = students if policy == "qbc" else students[:1]
    probs_list = [predict_in_batches(s, ordered, batch_size) for s in members]
    idx = rank(policy, probs=probs_list[0], committee=probs_list if policy == "qbc" else None, budget=budget, seed=seed)
    return [ids[i] for i in idx]


# -- collecting what the cascade saw -------------------------------------------------------------------------


@dataclass
class Feedback:
    """What one round of served traffic taught us."""

    dataset: str
    round: int
    served: int = 0
    deferred_ids: list[int] = field(default_factory=list)  # answered by the teacher: free new labels
    deferred_labelled: int = 0
    teacher_failed: int = 0
    accepted: int = 0
    audit_ids: list[int] = field(default_factory=list)  # accepted items re-asked to the teacher
    audit_disagreements: list[int] = field(default_factory=list)
    human_corrections: list[int] = field(default_factory=list)  # human label differs from what the cascade answered
    audit_calls: int = 0
    audit_cost_usd: float = 0.0

    @property
    def audit_disagreement_rate(self) -> float | None:
        return len(self.audit_disagreements) / len(self.audit_ids) if self.audit_ids else None

    @property
    def new_label_ids(self) -> list[int]:
        """Items whose (teacher or human) label this round produced and the training pool can use."""
        return sorted(set(self.deferred_ids) | set(self.audit_ids) | set(self.human_corrections))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["audit_disagreement_rate"] = self.audit_disagreement_rate
        for k in ("deferred_ids", "audit_ids", "audit_disagreements", "human_corrections"):
            d[f"n_{k}"] = len(d.pop(k))
        return d


def collect(
    ws: Workspace,
    dataset: str,
    round: int,
    *,
    teacher: Any | None = None,
    audit_rate: float = 0.03,
    seed: int = 0,
    origin: str = "run",
    progress: bool = False,
) -> Feedback:
    """Gather the feedback of ``round`` from ``cascade_log`` (rows with this round and ``origin``).

    With a ``teacher``, ``audit_rate`` of the student-accepted items (at least one when there are any) are sent to
    it once (cached like every teacher call, so a re-run pays nothing); each disagreement is queued for human review
    (reason ``audit``).  Human corrections are items of this round whose human label differs from the cascade's answer.
    """
    if not 0.0 <= audit_rate <= 1.0:
        raise ValueError(f"audit_rate must be in [0, 1], got {audit_rate}")
    fb = Feedback(dataset=dataset, round=round)
    with ws.store() as store:
        last = store.cascade_answers(dataset, round, origin)
        fb.served = len(last)
        accepted = []
        for iid, r in last.items():
            if r["source"] == "teacher":
                fb.deferred_ids.append(iid)
            elif r["source"] == "teacher_failed":
                fb.teacher_failed += 1
            else:
                accepted.append(iid)
        fb.accepted = len(accepted)
        if fb.deferred_ids:
            labelled = store.effective_labels(dataset)
            fb.deferred_labelled = sum(1 for i in fb.deferred_ids if i in labelled)
        humans = store.human_labels(dataset)
        fb.human_corrections = sorted(i for i, r in last.items() if i in humans and humans[i] != r["label"])

    if teacher is not None and accepted and audit_rate > 0:
        rng = np.random.default_rng([seed, round])
        k = max(1, int(round_half_up(audit_rate * len(accepted))))
        fb.audit_ids = sorted(int(i) for i in rng.choice(accepted, size=min(k, len(accepted)), replace=False))
        _audit(ws, dataset, fb, teacher, last, progress=progress)
    return fb


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _audit(ws: Workspace, dataset: str, fb: Feedback, teacher: Any, last: dict[int, Any], *, progress: bool) -> None:
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items

    with spend_of(ws, dataset) as spent:
        label_items(ws, dataset, fb.audit_ids, teacher, LabelConfig(passes=1), progress=progress)
    fb.audit_calls, fb.audit_cost_usd = spent.calls, spent.usd
    with ws.store() as store:
        teacher_labels = store.teacher_labels(fb.audit_ids)
        fb.audit_disagreements = [i for i in fb.audit_ids
                                  if teacher_labels.get(i) is not None and teacher_labels[i] != last[i]["student_label"]]
        store.queue_for_review(fb.audit_disagreements, "audit")
    log.info("audit round %s: %d/%d disagreements", fb.round, len(fb.audit_disagreements), len(fb.audit_ids))


def feedback_json(fb: Feedback) -> str:
    return json.dumps(fb.to_dict())
