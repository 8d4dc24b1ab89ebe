"""Teachers: whatever labels items for money -- an LLM behind an OpenAI-compatible endpoint, or the simulated one."""

from llm_flywheel.teachers.base import Teacher, TeacherAnswer

__all__ = ["Teacher", "TeacherAnswer"]
