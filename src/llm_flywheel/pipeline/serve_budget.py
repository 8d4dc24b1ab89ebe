"""A cap on what serving spends on the teacher: USD and/or calls in a rolling window, read from the store.

Why: a service with a teacher buys an answer for every new input it defers, so a burst of new traffic -- or a
student that stopped being confident -- becomes an unbounded bill.  Labelling runs have ``--budget-usd``; serving
had nothing.  Every answer serving buys is stored before it is used (``served_teacher_answers``, with its cost), so
the spend of the window is a query, and every process on the store (Ray Serve replicas, services on several
machines) sees the same total.  Calls in flight are reserved at an estimated price; what another process has in
flight at that moment is not seen, so the cap can be passed by at most the calls in flight elsewhere.  A call that
is billed but gives no usable answer (an unparseable reply) stores nothing: the process that made it counts it, the
others do not.  Over the cap, deferred inputs get the student's answer (``student_fallback``), as with the breaker
open; answers already bought are still used, free.  A teacher whose answers carry no cost (a local server: priced
by time, not tokens) cannot be held to a USD cap: after its first answer the cap stops the calls and says so -- use
``max_calls``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
PRICE_MARGIN = 1.2  # a call is reserved at 1.2 x the window's dearest answer: answers vary in length


@dataclass(frozen=True)
class SpendState:
    """For /readyz and the metrics."""

    budget_usd: float | None
    max_calls: int | None
    window_s: float
    spent_usd: float
    calls: int
    in_flight: int
    refused_total: int
    unpriced: bool  # a USD cap with answers that carry no cost: nothing more is bought


class TeacherSpendCap:
    """``budget_usd`` and/or ``max_calls`` per ``window_s`` for one teacher (model + prompt) on one store."""

    def __init__(self, budget_usd: float | None = None, max_calls: int | None = None,
                 window_s: float = 86_400.0) -> None:
        if budget_usd is None and max_calls is None:
            raise ValueError("a spend cap needs budget_usd or max_calls")
        if (budget_usd is not None and budget_usd <= 0) or (max_calls is not None and max_calls < 1) or window_s <= 0:
            raise ValueError(f"a spend cap needs budget_usd > 0, max_calls >= 1 and window_s > 0; got {budget_usd}, "
                             f"{max_calls}, {window_s}")
        self.budget_usd, self.max_calls, self.window_s = budget_usd, max_calls, float(window_s)
        self._lock = threading.Lock()
        self._in_flight, self._reserved_usd, self._refused = 0, 0.0, 0
        self._last: tuple[int, float, int] = (0, 0.0, 0)  # calls, usd, priced calls (last read)
        self._max_cost = 0.0
        self._warned = False
        self._unstored: list[tuple[float, float | None]] = []  # (time, USD) of billed calls, no usable answer
        self._db: Callable[[], AbstractContextManager[Any]] | None = None
        self._key: tuple[str, str] | None = None

    def bind(self, db: Callable[[], AbstractContextManager[Any]], model: str, prompt_version: str) -> None:
        self._db, self._key = db, (model, prompt_version)

    def _read(self) -> tuple[int, float, int, float]:
        if self._db is None or self._key is None:
            return (*self._last, 0.0)
        with self._db() as store:
            return store.served_spend_since(*self._key, time.time() - self.window_s)

    def refresh(self) -> SpendState:
        """:meth:`state` after reading the store again (blocking); :meth:`state` alone is as of the last call."""
        calls, usd, priced, dearest = self._read()
        with self._lock:
            self._count(calls, usd, priced, dearest)
        return self.state()

    def reserve(self) -> float | None:
        """A reservation (USD) for one call, or None: the cap is reached (blocking: reads the store)."""
        calls, usd, priced, dearest = self._read()
        with self._lock:
            calls, usd, priced = self._count(calls, usd, priced, dearest)
            why = self._over(calls, usd, priced)
            if why:
                self._refused += 1
                if not self._warned:
                    self._warned = True
                    logger.warning("teacher spend cap reached (%s): deferred inputs get the student's answer "
                                   "(student_fallback) until the window frees room", why)
                return None
            self._warned = False
            est = self._max_cost * PRICE_MARGIN
            self._in_flight += 1
            self._reserved_usd += est
            return est

    def _count(self, calls: int, usd: float, priced: int, dearest: float) -> tuple[int, float, int]:
        """The window's totals with this process's billed replies that stored nothing (under the lock)."""
        since = time.time() - self.window_s
        self._unstored = [(t, c) for t, c in self._unstored if t >= since]
        calls, usd = calls + len(self._unstored), usd + sum(c or 0.0 for _, c in self._unstored)
        priced += sum(c is not None for _, c in self._unstored)
        self._last = (calls, usd, priced)
        self._max_cost = max(self._max_cost, dearest)
        return calls, usd, priced

    def _over(self, calls: int, usd: float, priced: int) -> str | None:
        if self.max_calls is not None and calls + self._in_flight >= self.max_calls:
            return f"{calls} calls in the last {self.window_s / 3600:g} h, cap {self.max_calls}"
        if self.budget_usd is None:
            return None
        if calls > priced:
            return (f"{calls - priced} of {calls} answers in the window carry no cost, so a USD budget cannot be "
                    "kept for this teacher (a local server is priced by time, not tokens): cap it by calls instead "
                    "(--teacher-max-calls)")
        if self._max_cost == 0.0 and self._in_flight:  # nothing known about prices yet: one probe call at a time
            return "waiting for the first priced answer"
        if usd + self._reserved_usd + self._max_cost * PRICE_MARGIN > self.budget_usd + 1e-12:
            return f"${usd:.4f} spent in the last {self.window_s / 3600:g} h, budget ${self.budget_usd:g}"
        return None

    def note_unstored(self, usd: float | None) -> None:
        """A call that was billed but gave no usable answer (unparseable, cut off): nothing is stored for it, so
        this process counts it itself (other processes do not see it)."""
        with self._lock:
            self._unstored.append((time.time(), None if usd is None else float(usd)))

    def release(self, reservation: float) -> None:
        with self._lock:
            self._in_flight -= 1
            self._reserved_usd = max(0.0, self._reserved_usd - reservation)

    def state(self) -> SpendState:
        with self._lock:
            calls, usd, priced = self._last
            return SpendState(self.budget_usd, self.max_calls, self.window_s, usd, calls, self._in_flight,
                              self._refused, self.budget_usd is not None and calls > priced)
