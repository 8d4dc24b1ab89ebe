"""What a labelling run is asked to do (:class:`LabelConfig`) and what it did (:class:`LabelRunResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llm_flywheel.pipeline.label_adaptive import AdaptiveSummary


@dataclass
class LabelConfig:
    """How to label.  ``passes`` diverse passes per item; ``tie_break`` adds pass ``passes`` where they disagree.

    ``concurrency`` is a *cap*: with ``adaptive`` (the default) the labeller searches for the number of requests in
    flight that gives the most answers per second (see :mod:`llm_flywheel.teachers.concurrency`), starting low for
    a local server; ``adaptive=False`` keeps exactly ``concurrency`` in flight.

    ``breaker_threshold``: after this many consecutive answers failing with the same *fatal* error kind
    (:data:`~llm_flywheel.teachers.base.FATAL_ERROR_KINDS`: connection refused, DNS, auth, not found) the run stops
    (``stopped_reason='fatal_error'``) instead of failing every remaining item the same way.

    ``use_logprobs``: where answers carry the label's token log-probability, its probability is the per-answer
    confidence in the consensus quality and the soft target (the verbalised confidence only where it is missing).

    The dollar cap holds as long as no single call costs more than its reservation (1.5 x the estimate from the
    task's prices or recorded calls, and >= 1.2 x the dearest call seen).  With no price known at all, calls go
    one at a time until the first reported cost is seen.

    ``adaptive_passes`` (the default for ``passes >= 2``): later passes only where the first is unsure, with the
    cutoff learnt from ``calibration_items`` items asked every pass: the smallest first-pass certainty whose
    skipped items agreed with the consensus at a rate whose 95 % lower bound is >= ``agreement_target`` (see
    :mod:`llm_flywheel.pipeline.label_adaptive`).  ``reuse_evidence`` (default): items of the dataset that earlier
    runs of this teacher and prompt asked every pass count toward those ``calibration_items``, so only the
    shortfall is bought (``False``: a fresh sample every run, the behaviour before).  ``adaptive_passes=False``
    asks every item ``passes`` times.
    """

    passes: int = 2
    concurrency: int = 16
    rpm: float | None = None
    budget_usd: float | None = None
    max_calls: int | None = None
    tie_break: bool = True
    queue_disagreements: bool = True
    cost_safety: float = 1.5  # reservation = estimated cost x this (and >= the dearest call seen)
    reask_unparseable: int = 1  # re-ask an unparseable/refused reply this many times within the run
    adaptive: bool = True
    breaker_threshold: int = 3
    use_logprobs: bool = True
    adaptive_passes: bool = True
    agreement_target: float = 0.93
    calibration_items: int = 300
    reuse_evidence: bool = True

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"passes must be >= 1, got {self.passes}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError(f"budget_usd must be >= 0, got {self.budget_usd}")
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {self.max_calls}")
        if self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")
        if not 0.0 < self.agreement_target < 1.0:
            raise ValueError(f"agreement_target must be in (0, 1), got {self.agreement_target}")
        if self.calibration_items < 0:
            raise ValueError(f"calibration_items must be >= 0, got {self.calibration_items}")

    @property
    def adaptive_k(self) -> bool:
        """True when this run asks later passes only where the first is unsure."""
        return self.adaptive_passes and self.passes >= 2


STOP_REASONS = (None, "budget", "max_calls", "fatal_error")


@dataclass
class LabelRunResult:
    """What a run did.  ``failed`` counts calls that failed *this run* (retried next run).

    Why a run stopped -- for scripts and exit codes:

    * ``stopped_reason``: ``None`` (every job was attempted), ``"budget"`` (the dollar cap), ``"max_calls"`` (the
      call cap) or ``"fatal_error"`` (the circuit breaker: ``breaker_threshold`` consecutive identical fatal errors
      such as connection refused, DNS failure, 401/403 or 404; see ``fatal_error_kind``);
    * ``stopped_message``: one human sentence naming the cause, the endpoint URL and the fix;
    * ``stopped_by_budget``: True for ``"budget"`` and ``"max_calls"`` (kept for older callers);
    * ``cancelled_calls``: calls still in flight (in back-off) when the breaker tripped, abandoned unanswered;
    * ``answered_elsewhere``: calls this run needed that another run (process, machine) was making at the same
      time: this run waited for those answers instead of paying again (:mod:`~llm_flywheel.pipeline.label_claims`);
    * ``reused_from_serving``: first passes ``flywheel serve`` had already bought for these items' content, stored
      as this run's pass 0 (and counted in ``answers_cached``), not bought again;
    * ``in_open_batch``: calls this run needed that a Batch API submission not collected yet already carries: not
      bought online (the batch's answers are stored when a batch run collects it);
    * ``concurrency``: the adaptive controller's summary (cap, final and largest level, back-offs);
    * ``adaptive_passes``: the adaptive-pass decision (cutoff, its evidence, items skipped), None for fixed k.
    A stopped run keeps everything it stored; re-running continues where it stopped and asks nothing twice.
    """

    calls_made: int = 0
    cost_usd: float = 0.0
    answers_cached: int = 0
    reused_from_serving: int = 0  # pass-0 answers `flywheel serve` had bought for these items' content
    labelled: int = 0
    agreed: int = 0
    disagreed: int = 0
    failed: int = 0
    stopped_by_budget: bool = False
    tie_broken: int = 0
    single: int = 0
    unlabelled: int = 0
    off_list: int = 0
    tie_break_calls: int = 0
    queued_for_review: int = 0
    stopped_reason: str | None = None
    stopped_message: str | None = None
    fatal_error_kind: str | None = None
    cancelled_calls: int = 0
    answered_elsewhere: int = 0
    in_open_batch: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    base_url: str = ""
    prompt_version: str = ""
    simulated: bool = False
    items: int = 0
    elapsed_s: float = 0.0
    run_id: int | None = None
    adaptive_passes: AdaptiveSummary | None = None
    served_models: dict[str, int] = field(default_factory=dict)  # model the responses named -> the items' answers
    warnings: list[dict[str, str]] = field(default_factory=list)  # code, message, fix: e.g. answers from two models

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
