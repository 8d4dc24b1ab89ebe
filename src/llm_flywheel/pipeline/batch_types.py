"""What a Batch API labelling run is told (:class:`BatchConfig`) and what it reports (:class:`BatchRunResult`).

Why a module of its own: the plan, the cancel and every interface read these without the batch machinery of
:mod:`llm_flywheel.pipeline.batch_labeling` (as ``label_types`` is to online labelling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_flywheel.pipeline.label_types import LabelRunResult


@dataclass
class BatchConfig:
    """How to use the Batch API.

    ``price_ratio``: the batch price as a share of the online one, applied to token prices where the provider
    reports no cost (OpenAI, Groq, Mistral and Together all bill batches at 50 %).  ``poll_s``: seconds between
    status polls.  ``wait_s``: stop polling after this long (``None``: until the batch ends) -- the batch keeps
    running and the next run collects it.  ``max_lines`` / ``max_bytes``: the size of one batch (OpenAI's caps
    are 50,000 lines and 200 MB).
    ``retry_rounds``: follow-up batches within this run for lines that failed."""

    price_ratio: float = 0.5
    poll_s: float = 30.0
    wait_s: float | None = None
    max_lines: int = 50_000
    max_bytes: int = 190_000_000
    completion_window: str = "24h"
    retry_rounds: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.price_ratio <= 1.0:
            raise ValueError(f"price_ratio must be in (0, 1], got {self.price_ratio}")
        if self.poll_s < 0 or (self.wait_s is not None and self.wait_s < 0):
            raise ValueError("poll_s and wait_s must be >= 0")
        if self.max_lines < 1 or self.retry_rounds < 0:
            raise ValueError("max_lines must be >= 1 and retry_rounds >= 0")


@dataclass
class BatchRunResult(LabelRunResult):
    """A :class:`LabelRunResult` (``calls_made`` = answer lines stored this run, ``cost_usd`` their batch price)
    plus what happened to the batches.  ``batches_pending``: still running when the run stopped waiting; the next
    run collects them without submitting their lines again."""

    price_ratio: float = 0.5
    batches_submitted: int = 0
    batches_resumed: int = 0
    batches_pending: int = 0
    lines_submitted: int = 0
    lines_failed: int = 0
    batch_ids: list[str] = field(default_factory=list)
