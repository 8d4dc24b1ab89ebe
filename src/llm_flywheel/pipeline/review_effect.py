"""What the human labels changed: the same student trained with and without them, measured on gold test labels.

Why a module of its own: it trains students (heavy imports, minutes of work) and is asked for explicitly
(``flywheel review effect``); the CSV and Label Studio round trips never need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm_flywheel.pipeline.evaluation import accuracy_ci, paired_diff_ci
from llm_flywheel.pipeline.training import train_student
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import predict_in_batches

EFFECT_REPORT = "human_review_effect"


@dataclass
class HumanLabelEffect:
    """Accuracy on the gold test items of the same student trained with and without the human labels.

    :meth:`to_dict` is what the store keeps (report ``human_review_effect``) and the report reads."""

    dataset: str
    n_human: int  # human labels on the training splits
    n_labels_with: int  # labels the "with" training used (human outranks teacher)
    n_labels_without: int  # teacher labels only
    n_test: int  # distinct gold-labelled test items
    changed_from_teacher: int  # human labels that differ from the teacher's (incl. items the teacher left undecided)
    new_items: int  # items the teacher left undecided that a person labelled
    accuracy_with: float = 0.0
    accuracy_with_ci: tuple[float, float] = (0.0, 0.0)
    version_with: str = ""
    accuracy_without: float = 0.0
    accuracy_without_ci: tuple[float, float] = (0.0, 0.0)
    version_without: str = ""
    difference: float = 0.0  # with - without, paired on the same test items
    difference_ci: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def measure_human_label_effect(ws: Workspace, dataset: str, *, kind: str | None = None, epochs: int | None = None,
                               seed: int = 0, splits: Sequence[str] = ("train", "stream"), progress: bool = False,
                               **hparams: Any) -> HumanLabelEffect:
    """Train the same student twice on the same labelled items -- with the human labels, and with the teacher's
    labels only -- and measure both on the test split's gold labels (Wilson intervals, and the paired difference).

    Why two fresh trainings and not the wheel's models: only the same kind, seed and item set isolates what the
    human labels changed.  Items only a human labelled (the teacher's passes disagreed) are left out of the "without"
    run, as the wheel would have left them out.  The result is stored (report ``human_review_effect``) for the report.
    """
    with ws.store(readonly=True) as store:
        with_h = store.effective_labels(dataset, split=list(splits))
        humans = {i: lab for i, lab in store.human_labels(dataset).items() if i in with_h}
        teacher = store.teacher_labels(sorted(with_h))
        test = store.items(dataset, split="test", distinct=True)  # a repeated test item counts once
    if not humans:
        raise ValueError(f"dataset {dataset!r} has no human labels on {'/'.join(splits)} items; review some first "
                         "(`flywheel review push` / `pull`, or `review export` / `import`)")
    test = [it for it in test if it.gold_label is not None]
    if not test:
        raise ValueError(f"dataset {dataset!r} has no gold-labelled test items to measure on")
    without = {i: teacher[i] for i in with_h if teacher.get(i) is not None}
    gold = np.asarray([it.gold_label for it in test], dtype=object)
    out = HumanLabelEffect(dataset=dataset, n_human=len(humans), n_labels_with=len(with_h),
                           n_labels_without=len(without), n_test=len(test),
                           changed_from_teacher=sum(1 for i, lab in humans.items() if teacher.get(i) != lab),
                           new_items=sum(1 for i in humans if teacher.get(i) is None))
    correct = {}
    for name, labels in (("with", with_h), ("without", without)):
        tm = train_student(ws, dataset, kind=kind, labels=labels, seed=seed, epochs=epochs, progress=progress,
                           export_onnx=False, **hparams)
        pred = np.asarray(tm.student.labels, dtype=object)[predict_in_batches(tm.student, test).argmax(1)]
        correct[name] = pred == gold
        acc, lo, hi = accuracy_ci(correct[name])
        setattr(out, f"accuracy_{name}", acc)
        setattr(out, f"accuracy_{name}_ci", (lo, hi))
        setattr(out, f"version_{name}", tm.version)
    d, lo, hi = paired_diff_ci(correct["with"], correct["without"])
    out.difference, out.difference_ci = d, (lo, hi)
    with ws.store() as store:
        store.add_report(EFFECT_REPORT, dataset, out.to_dict())
    return out
