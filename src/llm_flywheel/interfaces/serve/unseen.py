"""Categories a tabular model never saw (``pipeline.unseen``), logged once per new value by ``flywheel serve``.

Why once: a new category is news the first time; the answer field and ``/metrics`` count every input.  The served
log keeps the input, so ``flywheel run --add-served`` teaches it.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("llm_flywheel.serve")

MAX_WARNED = 1000  # distinct (column, value) pairs logged once each; the rest only counted


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
