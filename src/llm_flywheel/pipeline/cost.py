"""Cost model: what 1,000 items cost with the teacher everywhere vs the cascade, and when distillation pays.

Why measured inputs only: the seed's "10x cheaper" was its own assumed 10 % escalation rate.  Here the teacher's
cost per call is the mean of the costs recorded in ``teacher_answers`` (provider-reported or priced from the task's
token prices), the cascade's teacher fraction is what the stream actually deferred, and the student's compute cost
comes from its *measured* end-to-end throughput (decode + preprocess + inference) at an assumed, configurable price
of CPU time.  The only assumption is that price, and every report prints it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llm_flywheel.store.base import Item, Store

DEFAULT_CPU_USD_PER_HOUR = 0.09
"""Assumed price of the serving machine (about a 2-vCPU on-demand cloud instance).  Configurable everywhere."""


@dataclass(frozen=True)
class CostInputs:
    """Everything the comparison needs; all but ``cpu_usd_per_hour`` are measured."""

    teacher_cost_per_call: float  # USD, mean over recorded calls
    student_items_per_s: float  # end-to-end on the serving machine
    teacher_fraction: float  # share of items the cascade sends to the teacher (steady state)
    labelling_spend_usd: float = 0.0  # everything paid to the teacher to build the student so far
    cpu_usd_per_hour: float = DEFAULT_CPU_USD_PER_HOUR
    teacher_calls_per_item: int = 1  # passes when serving (the cascade asks once)


def student_cost_per_item(items_per_s: float, cpu_usd_per_hour: float = DEFAULT_CPU_USD_PER_HOUR) -> float:
    """USD of machine time per item at the measured throughput (the whole machine is billed while it works)."""
    if items_per_s <= 0 or not math.isfinite(items_per_s):
        raise ValueError(f"student throughput must be a positive number of items/s, got {items_per_s!r}")
    if cpu_usd_per_hour < 0:
        raise ValueError(f"cpu_usd_per_hour must be >= 0, got {cpu_usd_per_hour!r}")
    return cpu_usd_per_hour / 3600.0 / items_per_s


def cost_per_1k_teacher_only(teacher_cost_per_call: float, calls_per_item: int = 1) -> float:
    """Teacher everywhere: every item costs one (or ``calls_per_item``) teacher call."""
    if teacher_cost_per_call < 0:
        raise ValueError(f"teacher cost per call must be >= 0, got {teacher_cost_per_call!r}")
    return 1000.0 * teacher_cost_per_call * calls_per_item


def cost_per_1k_cascade(
    teacher_cost_per_call: float,
    teacher_fraction: float,
    student_items_per_s: float,
    *,
    cpu_usd_per_hour: float = DEFAULT_CPU_USD_PER_HOUR,
    calls_per_item: int = 1,
) -> float:
    """Cascade: the student sees every item; the deferred fraction also pays a teacher call."""
    if not 0.0 <= teacher_fraction <= 1.0:
        raise ValueError(f"teacher fraction must be in [0, 1], got {teacher_fraction!r}")
    per_item = teacher_fraction * teacher_cost_per_call * calls_per_item + student_cost_per_item(
        student_items_per_s, cpu_usd_per_hour
    )
    return 1000.0 * per_item


def breakeven_items(labelling_spend_usd: float, saving_per_item_usd: float) -> float | None:
    """Items to serve before the saving per item has paid back the labelling spend.

    ``None`` when the cascade saves nothing per item (it never pays back); 0 when nothing was spent.
    """
    if labelling_spend_usd <= 0:
        return 0.0
    if saving_per_item_usd <= 0:
        return None
    return labelling_spend_usd / saving_per_item_usd


def compare(inputs: CostInputs) -> dict[str, Any]:
    """The full comparison as a JSON-able dict (the report's cost section)."""
    teacher_1k = cost_per_1k_teacher_only(inputs.teacher_cost_per_call, inputs.teacher_calls_per_item)
    cascade_1k = cost_per_1k_cascade(
        inputs.teacher_cost_per_call,
        inputs.teacher_fraction,
        inputs.student_items_per_s,
        cpu_usd_per_hour=inputs.cpu_usd_per_hour,
        calls_per_item=inputs.teacher_calls_per_item,
    )
    saving = (teacher_1k - cascade_1k) / 1000.0
    be = breakeven_items(inputs.labelling_spend_usd, saving)
    na: dict[str, str] = {}  # figures that cannot be computed, and why: shown as "n/a: ...", never as 0.0x / 0 items
    if teacher_1k <= 0:
        na["cost_ratio"] = "n/a: the teacher costs nothing per call as measured (no token price, no latency price)"
        na["breakeven_items"] = na["cost_ratio"]
        be = None
    elif cascade_1k <= 0:
        na["cost_ratio"] = "n/a: the cascade costs nothing per item as measured"
    elif be is None:
        na["breakeven_items"] = "never: the cascade saves nothing per item at this teacher fraction"
    elif inputs.labelling_spend_usd <= 0:
        na["breakeven_items"] = "n/a: nothing was spent on teacher labels"
        be = None
    return {
        **asdict(inputs),
        "student_cost_per_1k": 1000.0 * student_cost_per_item(inputs.student_items_per_s, inputs.cpu_usd_per_hour),
        "cost_per_1k_teacher_only": teacher_1k,
        "cost_per_1k_cascade": cascade_1k,
        "cost_ratio": (teacher_1k / cascade_1k) if cascade_1k > 0 else None,
        "saving_per_item": saving,
        "breakeven_items": be,
        "not_available": na,
    }


def teacher_price(stats: dict[str, Any], usd_per_hour: float) -> tuple[float | None, str]:
    """USD per teacher call and where it comes from.

    A provider that reports tokens is priced by them.  A teacher with no token price (a local server: llama.cpp,
    vLLM, Ollama) is not free -- it is priced by its measured mean latency x ``usd_per_hour`` for the machine it
    runs on (an assumption, printed).  ``None`` when neither is known.
    """
    if stats.get("priced") and (stats.get("mean_cost_per_call") or 0) > 0:
        return float(stats["mean_cost_per_call"]), f"mean of {stats.get('ok_calls', 0):,} recorded calls (token prices)"
    lat = stats.get("mean_latency_s")
    if lat:
        return (float(lat) * usd_per_hour / 3600.0,
                f"no token price: measured mean latency {lat:.2f} s x ${usd_per_hour:g}/h assumed for the teacher's machine")
    return None, "the teacher reports no token price and no latency was measured: its cost is unknown"


# -- measurements --------------------------------------------------------------------------------------


def teacher_cost_stats(store: Store, dataset: str, *, model: str | None = None) -> dict[str, Any]:
    """Mean recorded cost per *successful* teacher call for ``dataset`` (failed calls are counted, not averaged).

    Calls without a recorded cost are priced at the mean of those with one; if none has a cost, the mean is 0 and
    ``priced`` says so.
    """
    sql = (
        "SELECT COUNT(*) AS n, SUM(a.ok) AS n_ok, SUM(CASE WHEN a.ok=1 AND a.cost_usd IS NOT NULL THEN 1 ELSE 0 END) AS n_priced, "
        "SUM(CASE WHEN a.ok=1 THEN a.cost_usd ELSE 0 END) AS cost, SUM(a.cost_usd) AS cost_all, "
        "AVG(a.tokens_in) AS tin, AVG(a.tokens_out) AS tout, AVG(a.latency_s) AS lat "
        "FROM teacher_answers a JOIN items i ON i.id=a.item_id WHERE i.dataset=?"
    )
    params: list[Any] = [dataset]
    if model is not None:
        sql += " AND a.model=?"
        params.append(model)
    r = store.query(sql, params)[0]
    n_priced = int(r["n_priced"] or 0)
    mean = float(r["cost"] or 0.0) / n_priced if n_priced else 0.0
    return {
        "calls": int(r["n"] or 0),
        "ok_calls": int(r["n_ok"] or 0),
        "priced": n_priced > 0,
        "mean_cost_per_call": mean,
        "total_cost_usd": float(r["cost_all"] or 0.0),
        "mean_tokens_in": float(r["tin"]) if r["tin"] is not None else None,
        "mean_tokens_out": float(r["tout"]) if r["tout"] is not None else None,
        "mean_latency_s": float(r["lat"]) if r["lat"] is not None else None,
    }


def teacher_totals(store: Store, dataset: str) -> tuple[int, float]:
    """(calls, USD) recorded so far for ``dataset``: snapshot before/after a phase to attribute its spend."""
    r = store.query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(a.cost_usd), 0) AS c FROM teacher_answers a "
        "JOIN items i ON i.id=a.item_id WHERE i.dataset=?",
        (dataset,),
    )[0]
    return int(r["n"]), float(r["c"])


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
    return {"items": float(len(items)), "seconds": dt, "items_per_s": len(items) / dt if dt > 0 else float("inf"), "batch_size": float(batch_size)}
