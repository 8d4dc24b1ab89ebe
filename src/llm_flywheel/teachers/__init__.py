"""Teachers: whatever labels items for money -- an LLM behind an OpenAI-compatible endpoint, or the simulated one.

Labelling and the cascade use only :class:`Teacher` and the :class:`TeacherSession` it opens."""

from llm_flywheel.teachers.base import CallEstimate, ServerInfo, Teacher, TeacherAnswer, TeacherSession

__all__ = ["CallEstimate", "ServerInfo", "Teacher", "TeacherAnswer", "TeacherSession"]
