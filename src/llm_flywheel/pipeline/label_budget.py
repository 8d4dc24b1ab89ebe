"""Caps and stops for a labelling run: the reserve-then-settle budget and the fatal-error circuit breaker.

Why apart from the runner: both are plain bookkeeping with no I/O, so they can be read and tested on their own,
and the runner only asks them "may I call?" and "must I stop?".
"""

from __future__ import annotations

from llm_flywheel.teachers.base import TeacherAnswer, is_fatal

WAIT = "wait"


class Budget:
    """Reserve-then-settle accounting so that concurrent calls never exceed the caps."""

    def __init__(self, budget_usd: float | None, max_calls: int | None, est_cost: float | None, safety: float) -> None:
        self.budget_usd, self.max_calls = budget_usd, max_calls
        self.est_cost, self.safety = est_cost, safety
        self.spent = 0.0
        self.reserved = 0.0
        self.calls = 0
        self.inflight = 0
        self.max_seen = 0.0
        self.exhausted = False

    def _per_call(self) -> float | None:
        cands = [c for c in (self.est_cost * self.safety if self.est_cost is not None else None,
                             self.max_seen * 1.2 if self.max_seen else None) if c is not None]
        return max(cands) if cands else None

    def reserve(self) -> float | str | None:
        """A reservation (USD) to settle later; ``WAIT`` to try again once in-flight calls settle; ``None``: stop."""
        if self.exhausted:
            return None
        if self.max_calls is not None and self.calls + self.inflight >= self.max_calls:
            if self.inflight:
                return WAIT
            self.exhausted = True
            return None
        est = 0.0
        if self.budget_usd is not None:
            per = self._per_call()
            if per is None:  # nothing known about prices yet: one probe call at a time
                if self.inflight:
                    return WAIT
                per = 0.0
            if self.spent + self.reserved + per > self.budget_usd + 1e-12:
                if self.inflight:
                    return WAIT
                self.exhausted = True
                return None
            est = per
        self.reserved += est
        self.inflight += 1
        return est

    def cancel(self, reservation: float) -> None:
        """Give a reservation back: its call was not made (another run holds it)."""
        self.reserved -= reservation
        self.inflight -= 1

    def settle(self, reservation: float, actual: float | None) -> None:
        self.reserved -= reservation
        self.inflight -= 1
        self.calls += 1
        if actual:
            self.spent += actual
            self.max_seen = max(self.max_seen, actual)


class CircuitBreaker:
    """Counts consecutive answers failing with the same fatal error kind; trips at ``threshold``.

    Why consecutive and identical: one 404 among successes is an item problem, but N in a row of
    "connection refused" mean nothing listens at the URL, and every further call would fail the same way.
    """

    # answers (each one after all its retries) failing with HTTP 5xx in a row, before the server has answered
    # anything: a server that is broken, not busy -- without this a run against it retried for many minutes
    PERSISTENT_5XX = 8

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.kind: str | None = None
        self.count = 0
        self.detail: str | None = None
        self.answered = False  # any ok answer yet: a 5xx after one is a hiccup, never a reason to stop

    def record(self, ans: TeacherAnswer) -> bool:
        """Feed one answer; True when the breaker trips with it."""
        self.answered = self.answered or ans.ok
        kind = ans.error_kind
        limit = self.threshold
        if kind == "http_4xx" and ans.extra.get("fatal"):  # older client vocabulary: 401/403/404 with a flag
            kind = f"http_{ans.extra.get('status', '4xx')}"
        elif kind == "http_5xx" and not self.answered:
            limit = max(self.threshold, self.PERSISTENT_5XX)
        elif not is_fatal(kind):
            self.kind, self.count = None, 0
            return False
        if kind != self.kind:
            self.kind, self.count = kind, 0
        self.count += 1
        self.detail = ans.error_detail
        return self.count >= limit


_FIXES = {
    "connection": "start the server or correct the base URL (host and port)",
    "dns": "the host name does not resolve: correct the base URL",
    "auth": "check the API key (--api-key-env names the variable that holds it)",
    "not_found": "check the base URL path (usually ending in /v1) and the model name",
    "http_401": "check the API key (--api-key-env names the variable that holds it)",
    "http_402": "the account has no credit left",
    "http_403": "check the API key and the account's access to this model",
    "http_404": "check the base URL path (usually ending in /v1) and the model name",
    "http_5xx": "the server answered every request with an HTTP 5xx error and none with an answer: check its log "
                "(model loaded? out of memory? the model name?)",
}


def fatal_message(kind: str, count: int, base_url: str, model: str, detail: str | None) -> str:
    """The breaker's sentence: what happened, where, the fix (the client's own when its detail names one)."""
    fix = _FIXES.get(kind, "check the teacher's base URL, model and API key")
    det = (detail or "")[:240]
    what = det if det and base_url in det else "; ".join(x for x in (det, fix) if x)
    return (f"stopped after {count} consecutive '{kind}' errors from {base_url} (model {model}): {what}. "
            f"Re-run once fixed: stored answers are kept and nothing is asked twice")
