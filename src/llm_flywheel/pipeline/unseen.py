"""Inputs holding a table category the serving student never saw in training.

Why: the student answers such a value as a missing one, and the threshold was calibrated without it, so its
confidence means less there -- and nothing in the answer shows it.  ``flywheel serve`` names it per answer, in
``/metrics`` and in its log; ``flywheel predict`` prints a summary.  Routing is unchanged: a rule that deferred such
inputs would spend beyond the calibrated teacher budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def unseen_categories(cascade: Any, contents: Sequence[Any]) -> list[dict[str, str]]:
    """Per raw input, {column name: value} of its categories the cascade's student never saw in training; empty for
    students without categories (``HGBStudent.unseen``)."""
    unseen = getattr(cascade.student, "unseen", None)
    if unseen is None or not cascade.task.categorical:
        return [{} for _ in contents]
    names = cascade.task.features
    return [{(names[j] if j < len(names) else f"column {j}"): v for j, v in u.items()} for u in unseen(contents)]


def unseen_summary(found: Sequence[dict[str, str]], most: int = 8) -> str | None:
    """One line for a person: how many inputs held unseen categories, and the commonest (column, value) pairs."""
    hits = [u for u in found if u]
    if not hits:
        return None
    pairs = Counter((c, v) for u in hits for c, v in u.items())
    shown = ", ".join(f"{c} {v[:40]!r} x{n}" for (c, v), n in pairs.most_common(most))
    more = f" and {len(pairs) - most} more" if len(pairs) > most else ""
    return (f"{len(hits)} input(s) hold categories the model never saw in training, answered as missing values: "
            f"{shown}{more}")
