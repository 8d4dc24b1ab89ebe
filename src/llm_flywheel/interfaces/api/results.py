"""Typed results and errors of the public Python API.

Why a separate, frozen vocabulary: the pipeline modules return dicts whose keys change as the engine evolves; the
API converts them here, once, so a notebook user gets documented attributes and an editor can complete them.  Every
result keeps the engine's full record in ``raw`` for anything not (yet) promoted to a field.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


# --- errors ----------------------------------------------------------------------------------------------------------
class FlywheelError(Exception):
    """Base of every error the public API raises; the message says what to do about it."""


class InputError(FlywheelError, ValueError):
    """Bad arguments or data (unknown dataset, wrong labels, unreadable file, ...)."""


class TeacherError(FlywheelError, RuntimeError):
    """The teacher cannot be used as configured (bad spec, missing API key, unreachable endpoint)."""


class NotReadyError(FlywheelError, RuntimeError):
    """A step that needs an earlier one (labels before training, a model before calibrating, ...)."""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise the engine's exceptions as the API's typed ones (the original stays as ``__cause__``)."""
    from llm_flywheel.pipeline.cascade import CascadeError
    from llm_flywheel.data.registry import DatasetError
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.students.base import StudentError
    from llm_flywheel.core.task import TaskError
    from llm_flywheel.teachers.openai_compat import TeacherConfigError

    try:
        yield
    except FlywheelError:
        raise
    except TeacherConfigError as e:
        raise TeacherError(str(e)) from e
    except (TaskError, DatasetError, FileNotFoundError) as e:
        raise InputError(str(e)) from e
    except (StudentError, CascadeError, StoreError) as e:
        raise NotReadyError(str(e)) from e


# --- results ---------------------------------------------------------------------------------------------------------
def _f(v: Any) -> float | None:
    """A finite float or None (NaN/inf/missing in an engine record become None)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _ci(v: Any) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_f(x) is not None for x in v):
        return (float(v[0]), float(v[1]))
    return None


@dataclass(frozen=True)
class LabelReport:
    """What one labelling call did.  ``calls_made`` / ``cost_usd`` are this call only; cached answers are free."""

    dataset: str
    teacher_model: str
    simulated: bool  # True when the teacher is the simulated server (answers from gold labels, not an LLM)
    items: int
    calls_made: int
    answers_cached: int
    cost_usd: float
    labelled: int  # items with a consensus label
    agreed: int
    tie_broken: int
    disagreed: int  # no majority: labelled by the tie-break pass and queued for review
    failed: int  # calls that failed this run (retried on the next run)
    off_list: int
    unlabelled: int
    queued_for_review: int
    stopped_reason: str | None  # budget / call cap / fatal teacher error; None when it ran to the end
    errors: Mapping[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    served_models: Mapping[str, int] = field(default_factory=dict)  # the model each answer's response named
    warnings: tuple[RunWarning, ...] = ()  # e.g. ``mixed_models``: the provider's alias moved mid-dataset
    answered_elsewhere: int = 0  # answers another run (process, machine) bought meanwhile: waited for, not paid
    in_open_batch: int = 0  # calls a Batch API job not collected yet carries: not bought online (see warnings)
    reused_from_serving: int = 0  # first passes `flywheel serve` had bought for this content: stored, not paid again
    batch: bool = False  # labelled through the provider's Batch API (``cost_usd`` at its batch price)
    batches_pending: int = 0  # batches still running when the call stopped waiting: call label() again to collect

    @classmethod
    def from_result(cls, dataset: str, r: Any) -> "LabelReport":
        return cls(dataset=dataset, teacher_model=r.model, simulated=bool(r.simulated), items=r.items,
                   calls_made=r.calls_made, answers_cached=r.answers_cached, cost_usd=float(r.cost_usd or 0.0),
                   labelled=r.labelled, agreed=r.agreed, tie_broken=r.tie_broken, disagreed=r.disagreed,
                   failed=r.failed, off_list=r.off_list, unlabelled=r.unlabelled,
                   queued_for_review=r.queued_for_review, stopped_reason=r.stopped_reason,
                   errors=dict(r.errors or {}), elapsed_s=float(r.elapsed_s or 0.0),
                   served_models=dict(getattr(r, "served_models", None) or {}),
                   warnings=run_warnings(getattr(r, "warnings", None)),
                   answered_elsewhere=int(getattr(r, "answered_elsewhere", 0) or 0),
                   in_open_batch=int(getattr(r, "in_open_batch", 0) or 0),
                   reused_from_serving=int(getattr(r, "reused_from_serving", 0) or 0),
                   batch=hasattr(r, "batches_pending"), batches_pending=int(getattr(r, "batches_pending", 0) or 0))

    def warn(self, stacklevel: int = 2) -> None:
        """Each warning as a :class:`FlywheelWarning`, as :meth:`RunReport.warn` does."""
        warn_each(self.warnings, stacklevel + 1)


@dataclass(frozen=True)
class LabelPlan:
    """What labelling would cost, before any call (cached answers excluded).  ``est_cost_usd`` is None when no
    price is known (no recorded calls of this model and no prices in the task)."""

    dataset: str
    teacher_model: str
    simulated: bool
    items: int
    passes: int
    calls_cached: int
    calls_needed: int
    tie_break_calls_expected: int
    tie_break_calls_max: int
    est_cost_per_call_usd: float | None
    est_cost_usd: float | None
    est_cost_usd_max: float | None
    price_source: str
    fits_budget: bool | None  # None without a budget or a price
    calls_in_open_batch: int = 0  # carried by a Batch API job not collected yet: not needed again
    est_cost_batch_usd: float | None = None  # the same calls through the Batch API (``label(batch=True)``)
    est_cost_batch_usd_max: float | None = None
    estimate_note: str | None = None  # why a price from the task's token prices is only a guess (no call seen yet)
    texts_cut: int = 0  # texts longer than a teacher is sent ($FLYWHEEL_TEACHER_TEXT_MAX_CHARS): their head is sent

    @classmethod
    def from_plan(cls, p: Mapping[str, Any]) -> "LabelPlan":
        return cls(dataset=p["dataset"], teacher_model=p["model"], simulated=bool(p["simulated"]), items=p["items"],
                   passes=p["passes"], calls_cached=p["calls_cached"], calls_needed=p["calls_needed"],
                   tie_break_calls_expected=p["tie_break_calls_expected"], tie_break_calls_max=p["tie_break_calls_max"],
                   est_cost_per_call_usd=_f(p.get("est_cost_per_call_usd")), est_cost_usd=_f(p.get("est_cost_usd")),
                   est_cost_usd_max=_f(p.get("est_cost_usd_max")), price_source=str(p.get("price_source", "")),
                   fits_budget=p.get("fits_budget"), calls_in_open_batch=int(p.get("calls_in_open_batch") or 0),
                   est_cost_batch_usd=_f(p.get("est_cost_batch_usd")),
                   est_cost_batch_usd_max=_f(p.get("est_cost_batch_usd_max")), estimate_note=p.get("estimate_note"),
                   texts_cut=int(p.get("texts_cut") or 0))


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    """A model scored on a split's gold labels (95 % Wilson interval), beside the teacher on the same items."""

    dataset: str
    version: str
    split: str
    n: int
    accuracy: float
    ci95: tuple[float, float]
    ece: float | None
    per_class: tuple[ClassMetrics, ...]
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: gold, columns: predicted, in ``labels`` order
    teacher_accuracy: float | None  # the teacher's consensus labels on the same split (None: it labelled none)
    teacher_single_call_accuracy: float | None  # one call per item (pass 0)
    report_path: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_report(cls, rep: Mapping[str, Any]) -> "Evaluation":
        s = rep.get("student") or {}
        t = rep.get("teacher_on_split") or {}
        t1 = rep.get("teacher_single_call_on_split") or {}
        return cls(
            dataset=rep.get("dataset", ""), version=rep.get("version", ""), split=rep.get("split", ""),
            n=int(s.get("n", 0)), accuracy=float(s.get("accuracy", float("nan"))),
            ci95=_ci(s.get("ci95")) or (float("nan"), float("nan")), ece=_f(s.get("ece")),
            per_class=tuple(ClassMetrics(c["label"], float(c["precision"]), float(c["recall"]), float(c["f1"]),
                                         int(c["support"])) for c in rep.get("per_class", [])),
            labels=tuple(rep.get("labels", ())),
            confusion=tuple(tuple(int(x) for x in row) for row in rep.get("confusion", [])),
            teacher_accuracy=_f(t.get("accuracy")), teacher_single_call_accuracy=_f(t1.get("accuracy")),
            report_path=rep.get("json"), raw=dict(rep),
        )


@dataclass(frozen=True)
class Calibration:
    """Temperature and threshold fitted on the calib split, and the guarantee behind them."""

    version: str
    temperature: float
    threshold: float  # accept the student iff its calibrated confidence >= threshold
    goal: str
    feasible: bool  # False: the goal cannot be met with the evidence at hand (the threshold then defers more)
    teacher_fraction: float | None  # share of calib items that would go to the teacher
    accuracy_accepted: float | None  # accuracy of the student's accepted calib answers (vs the reference labels)
    accuracy_bound: float | None  # one-sided (1 - delta) lower confidence bound of that accuracy
    delta: float | None
    n_calib: int
    ece_before: float | None
    ece_after: float | None
    note: str
    plot_path: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    warnings: tuple["RunWarning", ...] = ()  # e.g. a teacher budget the calib split is too small to spend
    # teacher parity goals, what the teacher's single call was judged on: {model, n, accuracy, note}; judged by
    # review also reviewed, student_only_right and teacher_only_right (the sign test's wins and losses); else None
    teacher_single_call: Mapping[str, Any] | None = None

    @classmethod
    def from_report(cls, rep: Mapping[str, Any]) -> "Calibration":
        ch = rep.get("choice") or {}
        return cls(
            version=rep.get("version", ""), temperature=float(rep.get("temperature", rep.get("T", 1.0))),
            threshold=float(rep.get("threshold", ch.get("threshold", 1.0))), goal=str(ch.get("goal", rep.get("goal", ""))),
            feasible=bool(rep.get("feasible", ch.get("feasible", False))),
            teacher_fraction=_f(ch.get("teacher_fraction")), accuracy_accepted=_f(ch.get("accuracy_accepted")),
            accuracy_bound=_f(ch.get("accuracy_bound")), delta=_f(ch.get("delta")),
            n_calib=int(rep.get("n_calib", ch.get("n_calib", 0)) or 0), ece_before=_f(rep.get("ece_before")),
            ece_after=_f(rep.get("ece_after")), note=str(ch.get("note", "")), plot_path=rep.get("plot"),
            raw=dict(rep), warnings=run_warnings(rep.get("warnings")),
            teacher_single_call=dict(rep["teacher_single_call"]) if rep.get("teacher_single_call") else None,
        )


@dataclass(frozen=True)
class Answer:
    """One cascade answer.  ``source``: ``student`` (accepted), ``teacher`` (deferred and answered),
    ``teacher_failed`` (deferred, the teacher gave nothing usable: ``label`` is the student's guess) or
    ``deferred`` (no teacher configured: ``label`` is None, the student's guess is in ``student_label``)."""

    label: Any
    source: str
    confidence: float
    student_label: Any
    student_confidence: float
    teacher_label: Any
    model_version: str
    latency_ms: float
    unseen_categories: Mapping[str, str] = field(default_factory=dict)  # a table's values the model never saw

    @classmethod
    def from_engine(cls, a: Any, unseen: Mapping[str, str] | None = None) -> "Answer":
        return cls(label=a.label, source=a.source, confidence=float(a.confidence), student_label=a.student_label,
                   student_confidence=float(a.student_confidence), teacher_label=a.teacher_label,
                   model_version=a.model_version, latency_ms=float(a.latency_ms), unseen_categories=dict(unseen or {}))


@dataclass(frozen=True)
class RoundReport:
    """One turn of the wheel.  Accuracies are on the test split's gold labels (None where there are none)."""

    round: int
    model_version: str | None  # the model serving after this round
    trained_version: str | None
    promoted: bool
    labels_total: int | None  # labels the student of this round learned from
    teacher_calls: int
    teacher_cost_usd: float
    threshold: float | None
    temperature: float | None
    student_accuracy: float | None
    student_accuracy_ci95: tuple[float, float] | None
    cascade_accuracy: float | None
    cascade_accuracy_ci95: tuple[float, float] | None
    test_teacher_fraction: float | None  # share of test items the cascade sent to the teacher
    stream_teacher_fraction: float | None  # same on the unseen stream served this round
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any]) -> "RoundReport":
        return cls(
            round=int(m.get("round", 0)), model_version=m.get("model_version"), trained_version=m.get("trained_version"),
            promoted=bool(m.get("promoted", False)), labels_total=m.get("labels_total"),
            teacher_calls=int(m.get("teacher_calls", 0) or 0), teacher_cost_usd=float(m.get("teacher_cost_usd", 0) or 0),
            threshold=_f(m.get("threshold")), temperature=_f(m.get("temperature")),
            student_accuracy=_f(m.get("student_accuracy")), student_accuracy_ci95=_ci(m.get("student_accuracy_ci")),
            cascade_accuracy=_f(m.get("cascade_accuracy")), cascade_accuracy_ci95=_ci(m.get("cascade_accuracy_ci")),
            test_teacher_fraction=_f(m.get("test_teacher_fraction")),
            stream_teacher_fraction=_f(m.get("teacher_fraction")), raw=dict(m),
        )


class FlywheelWarning(UserWarning):
    """What the CLI prints as a WARNING line -- a setting that cannot be met, a result a user must not miss -- with
    its fix; ``warnings.warn``'d so a notebook shows it (``RunReport.warnings`` keeps them, typed)."""


@dataclass(frozen=True)
class RunWarning:
    """One warning of a run: a stable ``code`` (e.g. ``small_calib``), what is wrong, and the setting that fixes it
    (named as the CLI flag; the Python keyword is the same with underscores)."""

    code: str
    message: str
    fix: str


@dataclass(frozen=True)
class RunReport:
    """A wheel run: its rounds in order, the totals the teacher cost, and the warnings it raised."""

    run_id: int
    dataset: str
    rounds: tuple[RoundReport, ...]
    warnings: tuple[RunWarning, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_wheel(cls, res: Any) -> "RunReport":
        """From the engine's ``WheelResult``: its stored round metrics and its final warnings."""
        rounds = tuple(RoundReport.from_metrics(m) for m in res.rounds)
        return cls(run_id=res.run_id, dataset=res.dataset, rounds=rounds,
                   warnings=run_warnings(res.extra.get("warnings")), raw=dict(res.extra))

    def warn(self, stacklevel: int = 2) -> None:
        """Each warning as a :class:`FlywheelWarning` (the API prints nothing else: without this a notebook user
        would never see that, say, the calibration set is too small for the guarantee)."""
        warn_each(self.warnings, stacklevel + 1)

    @property
    def teacher_calls(self) -> int:
        return sum(r.teacher_calls for r in self.rounds)

    @property
    def teacher_cost_usd(self) -> float:
        return sum(r.teacher_cost_usd for r in self.rounds)

    @property
    def final(self) -> RoundReport:
        return self.rounds[-1]


def run_warnings(raw: Any) -> tuple[RunWarning, ...]:
    """Typed warnings from the engine's ``{"code", "message", "fix"}`` dicts."""
    return tuple(RunWarning(str(w.get("code", "")), str(w.get("message", "")), str(w.get("fix", "")))
                 for w in raw or [] if isinstance(w, Mapping))


def warn_each(warns: tuple[RunWarning, ...], stacklevel: int) -> None:
    for w in warns:
        warnings.warn(f"{w.message} -- fix: {w.fix}", FlywheelWarning, stacklevel=stacklevel + 1)
