"""Teachers: whatever labels items for money -- an LLM behind an OpenAI-compatible endpoint, or the simulated one."""

from .base import Teacher, TeacherAnswer

__all__ = ["Teacher", "TeacherAnswer"]
