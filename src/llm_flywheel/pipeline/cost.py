"""Cost measurements over the store: the teacher ledger (snapshot/diff per stage) and the student's throughput.

The arithmetic lives in :mod:`llm_flywheel.core.cost` (re-exported here, so ``pipeline.cost.compare`` & co. keep
working); this module only reads the store and times the student.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from llm_flywheel.core.cost import (  # noqa: F401  (re-exported: the public names of this module)
    DEFAULT_CPU_USD_PER_HOUR,
    CostInputs,
    ParityPoint,
    Spend,
    breakeven_items,
    compare,
    cost_per_1k_cascade,
    cost_per_1k_teacher_only,
    spend_to_parity,
    student_cost_per_item,
    teacher_price,
)
from llm_flywheel.store.base import Item, Store
from llm_flywheel.store.workspace import Workspace


def teacher_cost_stats(store: Store, dataset: str, *, model: str | None = None) -> dict[str, Any]:
    """Mean recorded cost per successful teacher call (see ``Store.teacher_cost_stats``)."""
    return store.teacher_cost_stats(dataset, model=model)


def teacher_totals(store: Store, dataset: str) -> tuple[int, float]:
    """(calls, USD) recorded so far for ``dataset``."""
    return store.teacher_totals(dataset)


@contextmanager
def spend_of(ws: Workspace, dataset: str) -> Iterator[Spend]:
    """The one way to account teacher spend: ``with spend_of(ws, ds) as s: ...`` fills ``s`` with what the block
    paid -- also when it raises, so a stage that stops half-way is still accounted."""
    def snapshot() -> Spend:
        with ws.store() as store:
            return Spend(*store.teacher_totals(dataset))

    before = snapshot()
    spent = Spend()
    try:
        yield spent
    finally:
        diff = snapshot() - before
        spent.calls, spent.usd = diff.calls, diff.usd


def measure_student_throughput(student: Any, items: Sequence[Item], *, batch_size: int = 64, min_items: int = 256) -> dict[str, float]:
    """End-to-end items/s of ``student.predict_proba`` (loading from disk included), after one warm-up batch.

    Why end to end: on small images decoding and preprocessing cost as much as inference.
    """
    items = list(items)
    if not items:
        raise ValueError("need at least one item to measure throughput")
    while len(items) < min_items:
        items = items + items[: min_items - len(items)]
    student.predict_proba(items[:batch_size])  # warm-up (session init, caches)
    t0 = time.perf_counter()
    for i in range(0, len(items), batch_size):
        student.predict_proba(items[i : i + batch_size])
    dt = time.perf_counter() - t0
    return {"items": float(len(items)), "seconds": dt, "items_per_s": len(items) / dt if dt > 0 else float("inf"),
            "batch_size": float(batch_size)}
