"""What a call to an OpenAI-compatible teacher costs: its prices and a guess before any call is made.

A mixin of :class:`~llm_flywheel.teachers.openai_compat.OpenAICompatTeacher`; once calls are recorded, the plan
and the budget guard price from what was billed (``Store.answer_cost_stats``) and this guess steps aside.
"""

from __future__ import annotations

from llm_flywheel.core.task import Task
from llm_flywheel.teachers.base import CallEstimate
from llm_flywheel.teachers.prompts import system_prompt


class Pricing:
    """``price_per_mtok`` and ``estimate_call`` from the teacher's own prices or the task's."""

    local: bool
    reason: bool
    price_in: float | None
    price_out: float | None
    text_max_chars: int

    def price_per_mtok(self, task: Task | None) -> tuple[float | None, float | None]:
        """USD per million tokens: the teacher's own prices, else the task's ``[prices]`` -- but the task's
        prices describe a paid API, so a server on the user's own hardware (loopback, private address, ``*.local``)
        gets none from the task and is priced by its measured latency instead (``cost.teacher_price``)."""
        use_task = task is not None and not self.local
        pin = self.price_in if self.price_in is not None else (task.input_per_mtok if use_task else None)
        pout = self.price_out if self.price_out is not None else (task.output_per_mtok if use_task else None)
        return pin, pout

    def estimate_call(self, task: Task, modality: str | None = None, text_len: int = 0) -> CallEstimate:
        """Rough (tokens_in, tokens_out, usd) for one call before any is made: ~4 chars/token for text (``text_len``
        in Latin-character equivalents, a CJK character counted as 4: ``core.scripts.latin_len``; at most the
        ``text_max_chars`` a teacher is sent) and a Gemini-style 258 tokens per small image."""
        prompt_chars = len(system_prompt(task, 1, reason=self.reason)) + 40
        if self.text_max_chars:
            text_len = min(text_len, self.text_max_chars)
        tin = prompt_chars // 4 + ((258 + 8) if (modality or task.modality) == "image" else text_len // 4 + 8)
        tout = 40
        pin, pout = self.price_per_mtok(task)
        usd = None if pin is None or pout is None else (tin * pin + tout * pout) / 1e6
        return CallEstimate(tin, tout, usd)
