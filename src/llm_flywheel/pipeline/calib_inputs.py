"""The calib split as calibration reads it, and whom teacher parity is judged against.

Why apart from :mod:`llm_flywheel.pipeline.calibration`: reading the inputs and choosing the parity referee (the
teacher's pass 1, gold, or a person on the disagreements) is its own question; the stage itself fits and stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_flywheel.core.cost import DEFAULT_CPU_USD_PER_HOUR, teacher_price
from llm_flywheel.core.task import Task
from llm_flywheel.core.thresholds import PARITY_STARTS, ThresholdChoice, clopper_pearson_lower
from llm_flywheel.store.base import Item, Store


def teacher_cost_per_item(store: Store, dataset: str, task: Any, usd_per_hour: float | None = None
                          ) -> tuple[float, str]:
    """Mean recorded cost of a successful teacher call for ``dataset``; for a teacher that reports no token cost (a
    local server) its measured latency x ``usd_per_hour``; else an estimate from the task's token prices."""
    stats = store.teacher_cost_stats(dataset)
    if stats["priced"] and stats["mean_cost_per_call"] > 0:
        n = stats["ok_calls"]
        return float(stats["mean_cost_per_call"]), f"mean of {n} recorded teacher calls"
    if stats["calls"] and stats.get("mean_latency_s"):
        price, note = teacher_price({**stats, "priced": False},
                                    DEFAULT_CPU_USD_PER_HOUR if usd_per_hour is None else usd_per_hour)
        if price is not None:
            return price, note
    pin, pout = getattr(task, "input_per_mtok", None), getattr(task, "output_per_mtok", None)
    if pin is not None and pout is not None:
        tin = 600 if task.modality == "image" else 400
        return (tin * pin + 40 * pout) / 1e6, "estimated from the task's token prices (no recorded calls)"
    return 0.0, "unknown (no recorded calls, no prices in the task)"


@dataclass
class CalibInputs:
    """The calib split as the stage scores it."""

    task: Task
    all_items: list[Item]  # every calib item: the budget goal counts them all (see choose_threshold)
    items: list[Item]  # those with a usable reference label
    ref: dict[int, str]
    ref_note: str
    teacher_labels: dict[int, str | None]  # consensus labels (reference='gold': the curve scores the teacher)
    first_answers: dict[str, str | None]  # content hash -> the teacher's pass-0 label (parity goal)
    first_model: str | None
    second_answers: dict[str, str | None]  # content hash -> the same teacher's pass-1 label (None: failed)
    second_asked: set[str]  # content hashes pass 1 was asked about (failed calls included)
    t_cost: float
    t_cost_note: str
    human: dict[int, str] = field(default_factory=dict)  # item id -> a person's label (reference='review')


REFERENCES = ("labels", "gold", "review")
"""What accuracy is judged against on the calib split: the teacher's labels (parity: its pass 1), gold labels, or
(parity only) a person's label on each calib item where the student and the teacher's pass 0 disagree."""


class ReviewNeeded(ValueError):
    """Teacher parity judged by people (``reference='review'``): these calib items, where the student and the
    teacher's first answer disagree, have no human label yet.  They are queued for review (reason ``parity``)."""

    def __init__(self, message: str, item_ids: list[int]) -> None:
        super().__init__(message)
        self.item_ids = item_ids


def load_inputs(store: Store, dataset: str, version: str, reference: str, parity: bool,
                cpu: float) -> CalibInputs:
    from llm_flywheel.pipeline.training import model_row

    row = model_row(store, version)
    if row["dataset"] != dataset:
        raise ValueError(f"model {version!r} belongs to dataset {row['dataset']!r}, not {dataset!r}")
    task = Task.from_json(store.dataset_task_json(dataset))
    all_items = store.items(dataset, split="calib")
    if reference in ("labels", "review"):
        ref: dict[int, str] = store.effective_labels(dataset, split="calib")
        ref_note = "calib split effective labels (teacher consensus; human corrections outrank it)"
        if reference == "review":
            ref_note += "; parity judged by a person on each calib item where the student and pass 0 disagree"
    else:
        ref = {it.id: it.gold_label for it in all_items if it.gold_label is not None}
        ref_note = "calib split GOLD labels (a human-verified dev set)"
    items = [it for it in all_items if ref.get(it.id) in task.labels]
    if not items:
        raise ValueError(
            f"the calib split of {dataset!r} has no usable {'gold labels' if reference == 'gold' else 'labels'}; "
            f"label it first (e.g. `flywheel label {dataset} --split calib`) or make splits with a calib part")
    t_cost, t_cost_note = teacher_cost_per_item(store, dataset, task, cpu)
    teacher_labels = store.teacher_labels([it.id for it in items]) if reference == "gold" else {}
    first: dict[str, str | None] = {}
    second: dict[str, str | None] = {}
    asked: set[str] = set()
    first_model = None
    if parity:  # every calib item: parity judged against pass 1 needs no consensus label
        hashes = [it.content_hash for it in all_items]
        by_model = store.first_answers_by_hash(hashes)
        if by_model:
            first_model, first = max(by_model.items(), key=lambda kv: len(kv[1]))
            second = store.pass_answers_by_hash(hashes, 1, asked=True).get(first_model, {})  # failed: None
            asked = set(second)
    human = store.human_labels(dataset) if reference == "review" else {}
    return CalibInputs(task, all_items, items, ref, ref_note, teacher_labels, first, first_model, second, asked,
                       t_cost, t_cost_note, human)


def parity_subset(inp: CalibInputs, dataset: str, reference: str, conf_all: np.ndarray, pred_all: list[str]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(confidences, the student's and the teacher's single-call correctness, a summary) of the items compared.

    Why pass 1 and not the consensus is the reference (``reference='labels'``): pass 0 is one of the consensus's
    votes, so against the consensus a single teacher call looks better than it is and a student that beats its
    teacher on gold could not show it (the demo: never).  Pass 1 is an independent call of the same teacher, so the
    comparison is "who agrees more often with a fresh teacher call", on every calib item (one without a consensus
    too).  Items pass 1 was never asked about cannot be dropped: adaptive passes skip exactly the items whose pass 0
    was sure, and the rest are the teacher's hard ones.  Items whose pass 1 failed or was off the list drop out (a
    failure says nothing about who is right)."""
    hs = [it.content_hash for it in inp.all_items]
    if not any(h in inp.first_answers for h in hs):
        raise ValueError("the teacher-parity goal needs the teacher's first answer (pass 0) on calib items and there "
                         "is none; label the calib split with the teacher first "
                         "(`flywheel label DATASET --split calib`)")
    if reference == "gold":
        ref = [inp.ref.get(it.id) for it in inp.all_items]
        note = "pass 0 vs the gold labels on the same calib items"
    elif reference == "review":
        return reviewed_subset(inp, dataset, conf_all, pred_all)
    else:
        missing = sum(1 for h in hs if h in inp.first_answers and h not in inp.second_asked)
        if missing:
            raise ValueError(
                f"the teacher-parity goal compares the student and the teacher's first answer with a second, "
                f"independent teacher call (pass 1), and {missing:,} of {len(hs):,} calib items were never asked a "
                f"pass 1 (labelled with one pass, or adaptive passes skipped them: those are the items whose first "
                f"answer was sure, so they cannot simply be left out); ask them with "
                f"`flywheel label {dataset} --split calib --fixed-passes` (cached answers are reused; "
                f"`flywheel run --teacher-parity` does this by itself)")
        ref = [inp.second_answers.get(h) for h in hs]
        note = "pass 0 vs pass 1 (an independent call of the same teacher) on the same calib items"
    have = np.asarray([h in inp.first_answers and r in inp.task.labels for h, r in zip(hs, ref)])
    s = np.asarray([p == r for p, r in zip(pred_all, ref)])[have]
    tc = np.asarray([inp.first_answers.get(h) == r for h, r in zip(hs, ref)])[have]
    acc = float(tc.mean()) if len(tc) else 0.0
    return conf_all[have], s, tc, {"model": inp.first_model, "n": int(have.sum()), "accuracy": acc, "note": note}


def reviewed_subset(inp: CalibInputs, dataset: str, conf_all: np.ndarray, pred_all: list[str]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Parity judged by people, who need to look only where the student and pass 0 disagree.

    Why that is enough: where they agree, the cascade's answer and the teacher's single call are the same, so the
    item is a tie whoever is right, and the sign test (:func:`~llm_flywheel.core.thresholds.parity_threshold`)
    counts only wins and losses.  Ties are scored "both right" (they drop out); the accuracies this returns are
    therefore *not* accuracies -- the summary gives the reviewed counts instead.  A disagreement without a human
    label raises :class:`ReviewNeeded` (it cannot be left out: they are exactly the items that decide)."""
    have = np.zeros(len(inp.all_items), dtype=bool)
    s, tc, missing = [], [], []
    n_rev = 0  # disagreements a person judged
    for i, (it, p) in enumerate(zip(inp.all_items, pred_all)):
        first = inp.first_answers.get(it.content_hash)
        r = p if first == p else inp.human.get(it.id)  # a tie needs no referee
        if first not in inp.task.labels or r is None:  # no single call to compare with, or not reviewed yet
            if first in inp.task.labels:
                missing.append(it.id)
            continue
        have[i] = True
        n_rev += first != p
        s.append(p == r)
        tc.append(first == r)
    if missing:
        raise ReviewNeeded(
            f"teacher parity judged by review: {len(missing):,} of the calib items where the student and the "
            f"teacher's first answer disagree {'has' if len(missing) == 1 else 'have'} no human label yet; they are "
            f"in the review queue (with whatever else it holds) -- `flywheel review export {dataset} -o FILE` (or "
            f"`flywheel review push {dataset}` to Label Studio), label them, `flywheel review import FILE`, then "
            f"re-run", missing)
    s_a, t_a = np.asarray(s, dtype=bool), np.asarray(tc, dtype=bool)
    return conf_all[have], s_a, t_a, {
        "model": inp.first_model, "n": int(len(s_a)), "accuracy": None, "reviewed": n_rev,
        "student_only_right": int((s_a & ~t_a).sum()), "teacher_only_right": int((~s_a & t_a).sum()),
        "note": f"a person's label on the {n_rev:,} calib items where the student and pass 0 disagree "
                f"(the others are ties)"}


def accuracies_from_labels(choice: ThresholdChoice, conf: np.ndarray, correct: np.ndarray) -> None:
    """Reviewed parity scores ties "both right", so the choice's accuracies would be inflated: recompute the accepted
    items' accuracy and its bound against the calib labels (human outranks teacher); no teacher accuracy to show."""
    acc = conf >= choice.threshold
    n, k = int(acc.sum()), int(correct[acc].sum())
    choice.accuracy_accepted = k / n if n else float("nan")
    choice.accuracy_bound = float(clopper_pearson_lower(k, n, choice.delta / len(PARITY_STARTS))) if n else 0.0
    choice.target = float("nan")
    choice.teacher_accuracy = choice.cascade_accuracy = None
