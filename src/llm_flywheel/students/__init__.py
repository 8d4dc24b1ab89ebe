"""Students: small fast models distilled from the teacher's labels."""

from .base import Student

__all__ = ["Student"]
