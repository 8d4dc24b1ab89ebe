"""Shared fixtures: real workspaces on disk with small generated datasets (no network, no hub).

The whole suite runs on either store: SQLite by default, PostgreSQL with ``FLYWHEEL_TEST_STORE=postgresql`` (a
real server started here for the session, one schema per workspace through ``FLYWHEEL_STORE``; tests about the
SQLite file itself are marked ``sqlite_only`` and skipped there, and so are tests marked ``not_about_the_store``:
a real LLM server's or a browser's minutes, whose store work the rest of the suite covers on PostgreSQL, and pure
computations that open no store at all).
``pg_url`` gives any test its own fresh schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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


TEST_STORE = os.environ.get("FLYWHEEL_TEST_STORE", "sqlite")
_PG: list = []


def _pg_server():
    """One PostgreSQL server per test session, started on first use and stopped at exit."""
    if not _PG:
        import atexit

        from pg_server import LocalPostgres

        pg = LocalPostgres().start()
        atexit.register(pg.stop)
        _PG.append(pg)
    return _PG[0]


def pytest_configure(config: pytest.Config) -> None:
    if TEST_STORE not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"FLYWHEEL_TEST_STORE={TEST_STORE!r}: use sqlite or postgresql")
    if TEST_STORE == "postgresql":
        os.environ["FLYWHEEL_STORE"] = _pg_server().url + "?schema={workspace}"


def pytest_report_header(config: pytest.Config) -> str:
    return f"store backend: {TEST_STORE}" + (f" ({_PG[0].url})" if _PG else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TEST_STORE != "sqlite":
        skip = pytest.mark.skip(reason="about the SQLite file itself (FLYWHEEL_TEST_STORE=postgresql)")
        once = pytest.mark.skip(reason="not about the store (an LLM server, a browser, numpy): run on the SQLite pass")
        for item in items:
            if "sqlite_only" in item.keywords:
                item.add_marker(skip)
            elif "not_about_the_store" in item.keywords:
                item.add_marker(once)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh, empty schema on a real PostgreSQL server (started for the session); dropped after."""
    pg = _pg_server()
    schema = "t_" + uuid.uuid4().hex[:16]
    yield f"{pg.url}?schema={schema}"
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


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
