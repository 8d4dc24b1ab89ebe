"""The Teacher protocol: one plug-in interface for every labeller the wheel can pay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..store import Item
from ..task import Task


@dataclass
class TeacherAnswer:
    """One pass of one teacher on one item -- exactly what is stored in ``teacher_answers``.

    ``ok`` is True for a final answer (cached forever, even an off-list one: asking again gives the same);
    False for a failure (network, HTTP, unparseable) that the next run retries.
    """

    item_id: int
    content_hash: str
    model: str
    prompt_version: str
    pass_index: int
    ok: bool
    label: str | None = None
    confidence: float | None = None
    label_logprob: float | None = None
    logprobs: list | None = None
    reason: str | None = None
    raw_text: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    error_kind: str | None = None
    error_detail: str | None = None
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Teacher(Protocol):
    """Labels items for a task.  ``model`` and ``prompt_version`` key the answer cache."""

    model: str
    prompt_version: str

    def label(self, items: Sequence[Item], task: Task, *, pass_index: int = 0) -> list[TeacherAnswer]:
        ...
