"""Categories a tabular model never saw, reported where they arrive: in the answer, in a metric and in the log.

Why: the student answers a category it never saw in training (a new plan, a new country) as a missing value, and
the threshold was calibrated without it, so its confidence means less there.  Nothing else would tell: the
answer looks like any other.  The cascade's routing is unchanged (a rule that deferred such inputs would spend
beyond the calibrated teacher budget); the served log keeps the input, so ``flywheel run --add-served`` teaches it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("llm_flywheel.serve")

MAX_WARNED = 1000  # distinct (column, value) pairs logged once each; the rest only counted


def unseen_categories(cascade: Any, contents: Sequence[Any]) -> list[dict[str, str]]:
    """Per raw input, {column name: value} of its categories the serving student never saw in training; empty for
    students without categories (``HGBStudent.unseen``)."""
    unseen = getattr(cascade.student, "unseen", None)
    if unseen is None or not cascade.task.categorical:
        return [{} for _ in contents]
    names = cascade.task.features
    return [{(names[j] if j < len(names) else f"column {j}"): v for j, v in u.items()} for u in unseen(contents)]


class UnseenLog:
    """Logs each new (column, value) once -- a new category is news once, not at every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.warned: set[tuple[str, str]] = set()

    def add(self, found: dict[str, str], version: str) -> None:
        for column, value in found.items():
            with self.lock:
                new = (column, value) not in self.warned and len(self.warned) < MAX_WARNED
                if new:
                    self.warned.add((column, value))
            if new:
                log.warning("column %s: value %r never seen when %s was trained; answered as a missing value -- "
                            "`flywheel run DATASET --add-served all` trains the next student on such inputs",
                            column, value[:100], version)
