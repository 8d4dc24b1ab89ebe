"""How long to wait for one answer: the wait follows the server's measured latency.

Why: a fixed 60 s is both too long for a fast API (a hung request holds a worker for a minute) and too short for a
loaded local CPU server (answers that would arrive at 90 s get cancelled, and the server's half-done work is
thrown away).  Mixed into :class:`~llm_flywheel.teachers.openai_compat.OpenAICompatTeacher`, which records
``latencies`` and ``sizes`` of successful requests.
"""

from __future__ import annotations

import math
from collections import deque

DEFAULT_TIMEOUT_CAP = 300.0  # s: the longest any one request may take when the caller gives no timeout
TIMEOUT_FLOOR = 30.0  # s: the adaptive timeout never goes below this (nor above the cap)
TIMEOUT_P95_MULTIPLE = 4.0
TIMEOUT_FIRST = 120.0  # s: before any latency is measured


class Timeouts:
    """``current_timeout`` from the teacher's ``latencies`` / ``sizes`` and its cap ``timeout``."""

    timeout: float
    timeout_floor: float
    timeout_first: float
    latencies: deque[float]
    sizes: deque[int]

    def latency_p95(self) -> float | None:
        """95th percentile of recent successful request latencies (s), or None before 5 are measured."""
        lat = sorted(self.latencies)
        if len(lat) < 5:
            return None
        return lat[min(len(lat) - 1, int(math.ceil(0.95 * len(lat))) - 1)]

    def current_timeout(self, boost: int = 0, size: int | None = None) -> float:
        """Seconds to wait for one response.

        A fixed 60 s is both too long for a fast API (a hung request holds a worker for a minute) and too short
        for a loaded local CPU server (answers that would arrive at 90 s get cancelled, and the server's work
        is thrown away).  So the wait follows the server: ``max(timeout_floor, 4 x p95)`` of the last 256
        successful requests (``timeout_floor`` = :data:`TIMEOUT_FLOOR`, 30 s), ``timeout_first`` (120 s) before 5
        are measured; times ``size / median size`` of those requests when this one is larger (a local server's
        prompt processing grows with the input: a long email must not be cut off at a short one's budget);
        doubled for each timeout this call already had (``boost``); and never above ``self.timeout`` -- the
        caller's cap (:data:`DEFAULT_TIMEOUT_CAP`, 300 s, when none was given).  Latency under load grows, so
        the wait grows with it instead of cancelling work the server has half done.
        """
        p95 = self.latency_p95()
        base = self.timeout_first if p95 is None else max(self.timeout_floor, TIMEOUT_P95_MULTIPLE * p95)
        if p95 is not None and size and self.sizes:
            sizes = sorted(self.sizes)
            median = sizes[len(sizes) // 2]
            if median > 0 and size > median:
                base *= size / median
        return min(self.timeout, base * (2 ** boost))
