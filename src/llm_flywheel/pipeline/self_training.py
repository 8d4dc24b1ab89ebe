"""Self-training on the unlabelled pool: a second student learns the first one's predictions on train items the
teacher never labelled, beside the teacher's labels; the val split keeps whichever of the two scores higher.

Why: the teacher's labels are what a user pays for; the unlabelled items of the same data are free.  A student
trained on a few thousand labels sits points under the labels it learned from; its own predictions on more
images, learned again under the training augmentations, spread what it learned over more of the input space (the
pseudo-label / self-distillation recipe).  Each pool item's target is the first student's full distribution and
its weight that student's confidence, so uncertain guesses count little -- no confidence cutoff to choose.  The
second student is kept only if it scores higher on val (teacher labels, never test).

Cost: one prediction over the pool and a second training run on labelled + pool items (with a pool twice the
labelled set, about three times the first run's epochs' work).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item, Store
from llm_flywheel.students.base import Student


@dataclass
class SelfTraining:
    """What self-training did: pool size, the two students' val scores, which one was kept, and what it cost (the
    pool prediction and the second training run, in seconds -- on top of the first run's)."""

    pool: int
    val_first: float | None
    val_second: float | None
    used: bool
    mean_pool_confidence: float | None
    extra_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unlabelled_pool(store: Store, dataset: str, labelled: set[int], n: int, seed: int) -> list[Item]:
    """Up to ``n`` train-split items without a label (a seeded sample): never val, calib, stream or test items."""
    ids = [it.id for it in store.items(dataset, split="train") if it.id not in labelled]
    if n <= 0 or not ids:
        return []
    pick = np.random.default_rng(seed).permutation(len(ids))[:n]
    return store.items(dataset, ids=sorted(ids[i] for i in pick))


def val_score(history: dict[str, Any]) -> float | None:
    """The val accuracy of the network a student serves, from its training history: the mirror-averaged score where
    that was chosen, else the best epoch's (before any refit, which trains on val); None without val items."""
    tta = history.get("tta") or {}
    if tta.get("used") and "val_acc_mirror_avg" in tta:
        return float(tta["val_acc_mirror_avg"])
    return None if history.get("best_val_acc") is None else float(history["best_val_acc"])


def self_train(first: Student, first_history: dict[str, Any], build: Callable[[], Student], train: Sequence[Item],
               y: np.ndarray, q: np.ndarray | None, w: np.ndarray | None, val: Sequence[Item], y_val: np.ndarray,
               pool: Sequence[Item]) -> tuple[Student, dict[str, Any], SelfTraining]:
    """(the student to keep, its history, what happened).  ``y``/``q``/``w``: the labelled items' labels, soft
    targets and weights as the first student learned them (None: one-hot, weight 1)."""
    v1 = val_score(first_history)
    if not pool or v1 is None:  # nothing to learn from, or no val to choose with
        return first, first_history, SelfTraining(len(pool), v1, None, False, None)
    t0 = time.monotonic()
    p = first.predict_proba(pool)
    q = np.eye(p.shape[1], dtype=np.float32)[y] if q is None else q
    w = np.ones(len(y), np.float32) if w is None else w
    targets = np.concatenate([q, p]).astype(np.float32)
    weights = np.concatenate([w, p.max(1)]).astype(np.float32)
    second = build()
    history = second.fit(list(train) + list(pool), targets.argmax(1), val, y_val, soft_targets=targets,
                         sample_weight=weights)
    v2 = val_score(history) or 0.0
    info = SelfTraining(len(pool), round(v1, 4), round(v2, 4), v2 > v1, round(float(p.max(1).mean()), 4),
                        round(time.monotonic() - t0, 1))
    return (second, history, info) if info.used else (first, first_history, info)
