"""Helpers for the student/training/evaluation tests: write teacher labels the way the labelling stage does."""

from __future__ import annotations

import json
import time

import numpy as np

from llm_flywheel.pipeline.splits import SplitSpec, make_splits
from llm_flywheel.store.workspace import Workspace


def split_synth(ws: Workspace, dataset: str = "synth", val: int = 60, calib: int = 20, stream: int = 20) -> dict[str, int]:
    store = ws.store()
    try:
        return make_splits(store, dataset, SplitSpec(val=val, calib=calib, stream=stream, seed=0))
    finally:
        store.close()


def write_teacher_labels(ws: Workspace, dataset: str, *, split: str | tuple[str, ...] = "train", flip: float = 0.0,
                         seed: int = 0, soft: bool = True) -> dict[int, bool]:
    """Teacher consensus rows for every item of ``split`` from its gold label, a fraction ``flip`` replaced by another
    label (the 'teacher error').  Returns item id -> whether the label was flipped."""
    store = ws.store()
    try:
        from llm_flywheel.core.task import Task

        task = Task.from_json(store.dataset_task_json(dataset))
        rng = np.random.default_rng(seed)
        flipped: dict[int, bool] = {}
        rows = []
        for it in store.items(dataset, split=split):
            lab = it.gold_label
            f = bool(rng.random() < flip)
            if f:
                lab = task.labels[(task.index(lab) + 1 + int(rng.integers(task.num_labels - 1))) % task.num_labels]
            flipped[it.id] = f
            sj = json.dumps({lab: 2 / 3, it.gold_label: 1 / 3} if f else {lab: 1.0}) if soft else None
            rows.append((it.id, "teacher", lab, 0.5 if f else 1.0, sj, "agreed", "{}", time.time()))
        with store.transaction() as c:
            c.executemany(
                "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                "provenance=excluded.provenance, updated_at=excluded.updated_at", rows)
        return flipped
    finally:
        store.close()
