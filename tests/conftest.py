"""Shared fixtures: real workspaces on disk with small generated datasets (no network, no hub)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_flywheel.data import Record, register
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

SYNTH_LABELS = ("bar", "ring", "cross", "dot")


def synth_image(label_idx: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A learnable 28x28 grayscale picture per class (bar, ring, cross, dot) plus noise and jitter."""
    img = rng.normal(30, 20, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cx, cy = size / 2 + rng.integers(-3, 4), size / 2 + rng.integers(-3, 4)
    r = np.hypot(xx - cx, yy - cy)
    if label_idx == 0:
        img[:, int(cx) - 2 : int(cx) + 2] += 200
    elif label_idx == 1:
        img[(r > 7) & (r < 10)] += 200
    elif label_idx == 2:
        img[int(cy) - 1 : int(cy) + 2, 4:-4] += 200
        img[4:-4, int(cx) - 1 : int(cx) + 2] += 200
    else:
        img[r < 4] += 200
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def synth_task() -> Task:
    return Task(name="synth", modality="image", labels=SYNTH_LABELS, instructions="Classify the shape.")


def make_synth_dataset(ws: Workspace, task: Task, n_train: int = 400, n_test: int = 100, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    recs = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            y = int(rng.integers(len(task.labels)))
            recs.append(Record(f"{split}:{i}", image=synth_image(y, rng), source_split=split, gold_label=task.labels[y]))
    register(ws, task, recs, progress=False)


@pytest.fixture
def synth_ws(ws: Workspace, synth_task: Task) -> Workspace:
    """A workspace holding dataset 'synth': 400 train + 100 test learnable 28x28 images, 4 classes, gold labels."""
    make_synth_dataset(ws, synth_task)
    return ws
