"""Students: small fast models distilled from the teacher's labels."""

from llm_flywheel.students.base import Student

__all__ = ["Student"]
