"""Cost model arithmetic (pure): what 1,000 items cost with the teacher everywhere vs the cascade, when
distillation pays, and what the wheel spent until its cascade first matched the teacher.

Why measured inputs only: the seed's "10x cheaper" was its own assumed 10 % escalation rate.  Here the teacher's
cost per call is the mean of the recorded costs, the cascade's teacher fraction is what the stream actually
deferred, and the student's compute cost comes from its *measured* end-to-end throughput at an assumed,
configurable price of CPU time.  The only assumption is that price, and every report prints it.  The inputs are
read from the store by ``pipeline.cost``; this module only does arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


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
    fraction_items: int | None = None  # items the teacher fraction was measured on (None: unknown)
    audit_rate: float = 0.0  # share of student-answered items also asked of the teacher, to watch for drift


def fraction_upper_bound(k: int, n: int) -> float:
    """Exact one-sided 95 % upper bound on a fraction observed as ``k`` of ``n`` (Clopper-Pearson; for 0 of n it is
    1 - 0.05**(1/n), about 3/n).  One definition for every "at the fraction's upper bound" the cost section shows."""
    if n <= 0 or k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, k + 1, n - k))


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


NA_FIXES: dict[str, str] = {
    # why a cost figure was left out (``compare``'s ``not_available_codes``) -> what would let a run compute it
    "none_deferred": "serve more unseen items per round (a larger --stream-per-round, or a larger stream split) so "
                     "the teacher's share is measured rather than bounded",
    "no_fraction": "serve unseen items each round (--stream-per-round, a stream split) so the teacher's share is "
                   "measured",
    "no_price": "--teacher-usd-per-hour PRICE prices a teacher that reports no token cost",
    "no_throughput": "add the dataset with gold labels on its test split (--label-column) so the student is measured",
    "saves_nothing": "send less to the teacher (a lower --max-teacher-fraction) once the student is good enough",
}


def _ratio_audited(inputs: CostInputs, teacher_1k: float, fraction: float) -> float | None:
    """Teacher everywhere over the cascade when ``fraction`` is deferred and ``audit_rate`` of the rest re-asked."""
    c = cost_per_1k_cascade(inputs.teacher_cost_per_call, fraction + (1.0 - fraction) * inputs.audit_rate,
                            inputs.student_items_per_s, cpu_usd_per_hour=inputs.cpu_usd_per_hour,
                            calls_per_item=inputs.teacher_calls_per_item)
    return teacher_1k / c if c > 0 and teacher_1k > 0 else None


def _audited(inputs: CostInputs, teacher_1k: float, na: Mapping[str, str]) -> dict[str, Any]:
    """The cascade's cost with its audit re-asks paid too, and the ratio at the teacher fraction's 95 % upper bound.

    Why both: the headline ratio prices only deferrals, but an audited deployment also pays the teacher for
    ``audit_rate`` of the items the student answers; and a fraction of 1 in 2,000 makes the point ratio a statement
    about n (a cascade that deferred almost nothing looks 1,000x cheaper).  The bound (exact, one-sided 95 %) says
    what the measurement supports."""
    def ratio(fraction: float) -> float | None:
        return None if "cost_ratio" in na else _ratio_audited(inputs, teacher_1k, fraction)

    n = inputs.fraction_items
    upper = fraction_upper_bound(round(inputs.teacher_fraction * n), n) if n else None
    return {"cost_ratio_audited": ratio(inputs.teacher_fraction) if inputs.audit_rate > 0 else None,
            "teacher_fraction_upper": upper,
            "cost_ratio_audited_at_upper": ratio(upper) if upper is not None else None}


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
    code: dict[str, str] = {}  # the same figures -> the reason's code (NA_FIXES: what would compute it)
    if teacher_1k <= 0:
        na["cost_ratio"] = "n/a: the teacher costs nothing per call as measured (no token price, no latency price)"
        na["breakeven_items"] = na["cost_ratio"]
        code["cost_ratio"] = code["breakeven_items"] = "no_price"
        be = None
    elif cascade_1k <= 0:
        na["cost_ratio"], code["cost_ratio"] = "n/a: the cascade costs nothing per item as measured", "free_cascade"
    elif inputs.fraction_items is not None and round(inputs.teacher_fraction * inputs.fraction_items) == 0:
        # 0 of n deferred: the point ratio is the teacher's price over the student's CPU alone (e.g. "86466x"),
        # which says more about n than about the cascade.  Report what the data support: a bound.
        upper = fraction_upper_bound(0, inputs.fraction_items)
        cascade_hi = cost_per_1k_cascade(inputs.teacher_cost_per_call, upper, inputs.student_items_per_s,
                                         cpu_usd_per_hour=inputs.cpu_usd_per_hour,
                                         calls_per_item=inputs.teacher_calls_per_item)
        audited = ""
        if inputs.audit_rate > 0:  # an audited deployment also re-asks audit_rate of what the student answers
            audited = (f", {_ratio_audited(inputs, teacher_1k, upper):.1f}x with the {100 * inputs.audit_rate:g} % "
                       f"audit re-asks paid")
        na["cost_ratio"] = (f"n/a: none of the {inputs.fraction_items} items measured went to the teacher; with the "
                            f"teacher fraction at its 95 % upper bound ({100 * upper:.1f} %) the cascade is at least "
                            f"{teacher_1k / cascade_hi:.1f}x cheaper{audited} (the breakeven shown uses that bound "
                            f"too)")
        code["cost_ratio"] = "none_deferred"
        be = breakeven_items(inputs.labelling_spend_usd, (teacher_1k - cascade_hi) / 1000.0)  # conservative
        if be is None:
            na["breakeven_items"] = "never, at the teacher fraction's 95 % upper bound"
            code["breakeven_items"] = "none_deferred"
    elif be is None:
        na["breakeven_items"] = "never: the cascade saves nothing per item at this teacher fraction"
        code["breakeven_items"] = "saves_nothing"
    elif inputs.labelling_spend_usd <= 0:
        na["breakeven_items"], code["breakeven_items"] = "n/a: nothing was spent on teacher labels", "nothing_spent"
        be = None
    return {
        **asdict(inputs),
        **_audited(inputs, teacher_1k, na),
        "student_cost_per_1k": 1000.0 * student_cost_per_item(inputs.student_items_per_s, inputs.cpu_usd_per_hour),
        "cost_per_1k_teacher_only": teacher_1k,
        "cost_per_1k_cascade": cascade_1k,
        "cost_ratio": (teacher_1k / cascade_1k) if cascade_1k > 0 and "cost_ratio" not in na else None,
        "saving_per_item": saving,
        "breakeven_items": be,
        "not_available": na,
        "not_available_codes": code,
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


@dataclass
class Spend:
    """Teacher calls and USD recorded in the ledger between two snapshots (one stage's spend)."""

    calls: int = 0
    usd: float = 0.0

    def __add__(self, other: "Spend") -> "Spend":
        return Spend(self.calls + other.calls, self.usd + other.usd)

    def __sub__(self, other: "Spend") -> "Spend":
        return Spend(self.calls - other.calls, self.usd - other.usd)

    def to_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "usd": self.usd}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Spend":
        d = d or {}
        return cls(int(d.get("calls") or 0), float(d.get("usd") or 0.0))


@dataclass(frozen=True)
class ParityPoint:
    """One measurement of the cascade on the way: the teacher spend until then and the accuracy it had."""

    round: int
    spend_usd: float  # cumulative teacher spend (labelling, stream deferrals, audits) up to this measurement
    calls: int
    accuracy: float | None
    accuracy_ci: Sequence[float] | None = None


def spend_to_parity(points: Sequence[ParityPoint], teacher_accuracy: float | None,
                    teacher_accuracy_ci: Sequence[float] | None = None) -> dict[str, Any]:
    """The first point where the cascade's accuracy reached the teacher's single-call accuracy, and what it cost.

    ``reached`` is the point-estimate rule (cascade >= teacher); ``significant`` adds that the cascade's interval
    lies above the teacher's point estimate (its lower end >= the teacher's accuracy).  Both measurements must be
    against the same reference (gold where it exists).  ``None`` fields with a ``note`` when parity was not reached.
    """
    out: dict[str, Any] = {"teacher_accuracy": teacher_accuracy, "teacher_accuracy_ci": teacher_accuracy_ci,
                           "curve": [asdict(p) for p in points], "round": None, "spend_usd": None, "calls": None,
                           "cascade_accuracy": None, "cascade_accuracy_ci": None, "significant_round": None}
    if teacher_accuracy is None:
        out["note"] = "n/a: the teacher's single-call accuracy was not measured (no gold labels on val/calib)"
        return out
    for p in points:
        if p.accuracy is None:
            continue
        if out["round"] is None and p.accuracy >= teacher_accuracy:
            out.update(round=p.round, spend_usd=p.spend_usd, calls=p.calls, cascade_accuracy=p.accuracy,
                       cascade_accuracy_ci=list(p.accuracy_ci) if p.accuracy_ci else None)
        if out["significant_round"] is None and p.accuracy_ci and p.accuracy_ci[0] >= teacher_accuracy:
            out["significant_round"] = p.round
    if out["round"] is None:
        measured = [p for p in points if p.accuracy is not None]
        out["note"] = ("not reached: the cascade stayed below the teacher's single call in every round"
                       if measured else "n/a: the cascade was never measured (no gold labels on test)")
    return out
