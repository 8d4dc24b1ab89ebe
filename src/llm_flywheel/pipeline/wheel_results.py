"""Typed results of the wheel's stages and of one round (:class:`RoundReport`).

Why field names equal the stored metric keys: a round is stored as one flat JSON object (``rounds.metrics_json``,
which ``summary.json`` shows as it is), and a killed run resumes from it.  Each stage result converts to and from
its keys, so the stored format stays what the report and older runs expect while the code passes typed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from llm_flywheel.core.cost import Spend

T = TypeVar("T", bound="StageResult")

NOT_STORED = {"stored": False}  # metadata of fields kept in memory only (e.g. per-item data for the final plots)


@dataclass
class StageResult:
    """Base of every stage result: stored as its own fields; ``MARKER`` is the key whose presence says the stage
    finished in a stored round (None: the stage always re-runs on resume)."""

    MARKER: ClassVar[str | None] = None

    def to_metrics(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("stored", True)}

    @classmethod
    def from_metrics(cls: type[T], m: dict[str, Any]) -> T | None:
        if cls.MARKER is None or cls.MARKER not in m:
            return None
        return cls(**{f.name: m.get(f.name) for f in fields(cls) if f.metadata.get("stored", True)})


@dataclass
class LabelResult(StageResult):
    """Select + label: how many items were labelled this round and the teacher errors met."""

    MARKER: ClassVar[str | None] = "labelled"
    selected: int | None = 0
    selected_ids: list[int] | None = None  # the actively selected items (None: round 1's random seed set)
    labelled: bool = True


@dataclass
class TrainResult(StageResult):
    MARKER: ClassVar[str | None] = "trained_version"
    trained_version: str = ""
    student_kind: str | None = None
    labels_total: int | None = None


@dataclass
class CalibResult(StageResult):
    """Temperature and threshold chosen on the calib split for the round's goal."""

    MARKER: ClassVar[str | None] = "threshold"
    threshold: float | None = None
    temperature: float | None = None
    calib_feasible: bool | None = None
    calib_note: str | None = None
    student_agreement_calib: float | None = None
    calib_teacher_fraction: float | None = None
    calib_goal: str | None = None  # e.g. "budget", "parity+budget"
    calib_teacher_accuracy: float | None = None  # parity: the teacher's single call on calib (vs the reference)
    calib_cascade_accuracy: float | None = None  # parity: the cascade's on calib at the chosen threshold
    calib_reviewed: int | None = None  # parity judged by review: disagreements a person labelled this round


@dataclass
class PromotionResult(StageResult):
    """Agreement with teacher labels on val of the new and the serving model, and which one serves now."""

    val_accuracy_new: float | None = None
    val_accuracy_current: float | None = None
    promoted: bool = False
    model_version: str | None = None


@dataclass
class EvalResult(StageResult):
    """The serving model alone and in the cascade, on the gold test split (measurement only)."""

    student_accuracy: float | None = None
    student_accuracy_ci: list[float] | None = None
    cascade_accuracy: float | None = None
    cascade_accuracy_ci: list[float] | None = None
    test_teacher_fraction: float | None = None
    test_accuracy_deferred_teacher: float | None = None
    test_accuracy_deferred_student: float | None = None
    test_accuracy_accepted: float | None = None
    teacher_ok: dict[int, bool] = field(default_factory=dict, metadata=NOT_STORED)  # test item -> teacher right
    cascade_ok: dict[int, bool] = field(default_factory=dict, metadata=NOT_STORED)  # test item -> cascade right
    model_version: str | None = field(default=None, metadata=NOT_STORED)  # the model it measured

    def to_metrics(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_metrics().items() if v is not None}


@dataclass
class ServeResult(StageResult):
    """This round's slice of the unseen stream through the cascade."""

    stream_served: int = 0
    teacher_fraction: float | None = None
    stream_teacher_failed: int | None = None
    stream_cascade_accuracy: float | None = None

    def to_metrics(self) -> dict[str, Any]:
        d = super().to_metrics()
        return d if self.stream_served else {"teacher_fraction": None, "stream_served": 0}


@dataclass
class CollectResult(StageResult):
    feedback: dict[str, Any] = field(default_factory=dict)
    audit_disagreement_rate: float | None = None


SPEND_STAGES = ("label", "serve", "audit")  # what the wheel pays; "eval" (measuring on test) is counted apart


@dataclass
class RoundReport:
    """One turn of the wheel: each stage's typed result (None until it ran), the teacher spend per stage, seconds
    per phase and the round's warnings.  ``to_metrics()`` is the stored (and reported) flat form."""

    round: int
    label: LabelResult | None = None
    train: TrainResult | None = None
    calib: CalibResult | None = None
    promotion: PromotionResult | None = None
    evaluation: EvalResult | None = None
    serving: ServeResult | None = None
    collect: CollectResult | None = None
    spend: dict[str, Spend] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)
    pending_selection: list[int] | None = None  # selected before labelling stopped: the resume labels these
    pending_selected: int | None = None
    label_errors: dict[str, int] = field(default_factory=dict)  # teacher errors met while labelling, by kind

    def add_spend(self, stage: str, s: Spend) -> None:
        self.spend[stage] = self.spend.get(stage, Spend()) + s

    @property
    def teacher_spend(self) -> Spend:
        """What the wheel paid the teacher in this round (labelling, stream deferrals, audits; not test eval)."""
        return sum((self.spend.get(k, Spend()) for k in SPEND_STAGES), Spend())

    @property
    def serving_version(self) -> str | None:
        return self.promotion.model_version if self.promotion else None

    def to_metrics(self) -> dict[str, Any]:
        m: dict[str, Any] = {"round": self.round, "seconds": dict(self.seconds)}
        paid, ev = self.teacher_spend, self.spend.get("eval", Spend())
        m |= {"teacher_calls": paid.calls, "teacher_cost_usd": paid.usd, "eval_teacher_calls": ev.calls,
              "eval_teacher_cost_usd": ev.usd, "spend": {k: v.to_dict() for k, v in self.spend.items()}}
        if self.pending_selection is not None:
            m["selected_ids"] = list(self.pending_selection)
        if self.pending_selected is not None:
            m["selected"] = self.pending_selected
        if self.label_errors:
            m["label_errors"] = dict(self.label_errors)
        for part in (self.label, self.train, self.calib, self.promotion, self.evaluation, self.serving, self.collect):
            if part is not None:
                m |= part.to_metrics()
        if self.warnings:
            m["warnings"] = list(self.warnings)
        return m

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> "RoundReport":
        """A stored round back as a report: the stages that finished (their marker is stored) are kept, so a resumed
        round continues where it stopped; stages without a marker re-run (cheap: teacher answers are cached)."""
        rep = cls(round=int(m["round"]), seconds=dict(m.get("seconds") or {}), warnings=list(m.get("warnings") or []),
                  label_errors=dict(m.get("label_errors") or {}))
        if "spend" in m:
            rep.spend = {k: Spend.from_dict(v) for k, v in (m.get("spend") or {}).items()}
        elif m.get("teacher_calls") or m.get("eval_teacher_calls"):  # a round stored before per-stage spend existed
            rep.spend = {"label": Spend(int(m.get("teacher_calls") or 0), float(m.get("teacher_cost_usd") or 0.0)),
                         "eval": Spend(int(m.get("eval_teacher_calls") or 0), float(m.get("eval_teacher_cost_usd") or 0.0))}
        rep.label = LabelResult.from_metrics(m)
        if rep.label is None:
            rep.pending_selection = [int(i) for i in m["selected_ids"]] if m.get("selected_ids") is not None else None
            rep.pending_selected = m.get("selected")
        rep.train = TrainResult.from_metrics(m)
        rep.calib = CalibResult.from_metrics(m)
        return rep
