"""The review queue ordered by what a human decision is worth (see :func:`review_value`).

Why its own module: the CSV export, the Label Studio push and the report all read the queue; none of them needs
the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.training import QUALITY_FLOOR, latest_version, load_student
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import StudentError, predict_in_batches


class ReviewImportError(ValueError):
    """A review file (or Label Studio pull) that cannot be applied; ``bad_rows`` lists (line number, problem)."""

    def __init__(self, message: str, bad_rows: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows or []


def json_object(s: str | None) -> dict[str, Any]:
    """A stored JSON object ({} for NULL, invalid JSON or a non-object)."""
    try:
        v = json.loads(s) if s else {}
        return v if isinstance(v, dict) else {}
    except json.JSONDecodeError:
        return {}


def teacher_name(prov: str | None) -> str:
    """The teacher model of a provenance JSON, marked when it is the simulated teacher."""
    model = json_object(prov).get("model") or ""
    return f"{model} (SIMULATED)" if model.startswith("simulated/") else model


LOW_CONFIDENCE_BELOW = 0.5  # deferred stream items whose teacher label quality is below this join the queue
TEACHER_SMOOTH = 0.2  # weight of a uniform prior mixed into the teacher's pass votes (two passes are weak evidence)
STUDENT_SMOOTH = 0.1


@dataclass
class ReviewCandidate:
    """One item a person should look at, with why and what a decision is worth."""

    item_id: int
    reason: str
    teacher_label: str | None  # the stored consensus (None: the passes disagreed and nothing was decided)
    teacher_votes: dict[str, float]
    teacher_quality: float | None
    teacher_model: str
    student_probs: dict[str, float] | None
    p_wrong: float  # probability that the label the student trains on now is wrong
    value: float  # expected change of the item's training target if a person labels it (0..1)
    row: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def student_label(self) -> str | None:
        return max(self.student_probs, key=self.student_probs.__getitem__) if self.student_probs else None


def review_value(teacher_soft: np.ndarray, teacher_weight: float, teacher_label: int | None,
                 student_probs: np.ndarray | None) -> tuple[float, float]:
    """(P(label wrong), expected value) of asking a person about one item.

    The item's true class is estimated by combining the teacher's pass votes and the student's probabilities as
    independent evidence (a product, each mixed with a uniform prior).  How much a human label ``c`` would move the
    student is the change of the item's loss gradient (w.r.t. the logits): today ``w * (p - soft)`` (weight = label
    quality, soft = the pass votes; nothing when the passes disagreed and no label was kept), after the review
    ``p - e_c`` (one-hot, weight 1).  The value is the expected size of that change over ``c``,
    ``E_c[ 1/2 * |(p - e_c) - w * (p - soft)|_1 ]``: near 1 for a label that is probably wrong and pulls the student
    the wrong way, near 0 for a label everyone agrees with or a new item the student already gets right.
    """
    k = len(teacher_soft)
    soft = np.asarray(teacher_soft, dtype=np.float64)
    soft = soft / soft.sum() if soft.sum() > 0 else np.full(k, 1.0 / k)
    p = np.full(k, 1.0 / k) if student_probs is None else np.asarray(student_probs, dtype=np.float64)
    p = p / p.sum()
    post = ((1 - TEACHER_SMOOTH) * soft + TEACHER_SMOOTH / k) * ((1 - STUDENT_SMOOTH) * p + STUDENT_SMOOTH / k)
    post = post / post.sum()
    now = teacher_weight * (p - soft) if teacher_label is not None else np.zeros(k)
    moves = np.array([0.5 * np.abs((p - np.eye(k)[c]) - now).sum() for c in range(k)])
    p_wrong = 1.0 - float(post[teacher_label]) if teacher_label is not None else 1.0
    return p_wrong, float(post @ moves)


def review_queue(ws: Workspace, dataset: str, *, low_confidence_below: float | None = LOW_CONFIDENCE_BELOW,
                 student: Any | None = None, use_student: bool = True) -> list[ReviewCandidate]:
    """The review queue of ``dataset``, most valuable first (see :func:`review_value`).

    Members: unresolved queue entries (teacher pass disagreements, cleanlab label issues, audited student/teacher
    disagreements) and deferred stream items whose teacher label quality is below ``low_confidence_below``.
    ``student``: a model with ``predict_proba``; by default the dataset's latest promoted model, if any (its
    probabilities on items it trained on are optimistic, so it mostly breaks ties between equally weak labels).
    """
    store = ws.store(readonly=True)
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        rows = store.review_candidates(dataset, low_confidence_below=low_confidence_below)
        items = {it.id: it for it in store.items(dataset, ids=[r["id"] for r in rows])} if rows else {}
    finally:
        store.close()
    if not rows:
        return []
    if student is None and use_student:
        student = _latest_student(ws, dataset)
    probs = None
    if student is not None:
        p = predict_in_batches(student, [items[r["id"]] for r in rows])
        order = [list(student.labels).index(lab) for lab in task.labels]
        probs = p[:, order]
    out = []
    for i, r in enumerate(rows):
        votes = {k: float(v) for k, v in json_object(r["soft_json"]).items() if k in task.labels}
        soft = np.array([votes.get(lab, 0.0) for lab in task.labels])
        t = task.labels.index(r["teacher_label"]) if r["teacher_label"] in task.labels else None
        w = float(np.clip(r["quality"], QUALITY_FLOOR, 1.0)) if r["quality"] is not None else 1.0
        sp = probs[i] if probs is not None else None
        p_wrong, value = review_value(soft, w, t, sp)
        out.append(ReviewCandidate(
            item_id=r["id"], reason=r["reason"], teacher_label=r["teacher_label"], teacher_votes=votes,
            teacher_quality=r["quality"], teacher_model=teacher_name(r["provenance"]),
            student_probs=dict(zip(task.labels, map(float, sp))) if sp is not None else None,
            p_wrong=p_wrong, value=value, row=r))
    out.sort(key=lambda c: (-c.value, c.item_id))
    return out


def _latest_student(ws: Workspace, dataset: str) -> Any | None:
    version = student_version(ws, dataset)
    if version is None:
        return None
    student = load_student(ws, version)
    student.version = version  # type: ignore[attr-defined]
    return student


def student_version(ws: Workspace, dataset: str) -> str | None:
    """The dataset's current model version, None before the first training."""
    store = ws.store(readonly=True)
    try:
        return latest_version(store, dataset)
    except StudentError:
        return None
    finally:
        store.close()

