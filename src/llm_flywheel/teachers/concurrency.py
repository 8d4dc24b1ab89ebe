"""Adaptive concurrency: find how many requests a teacher endpoint should have in flight, without being told.

Why: the right number depends on the server.  A local llama.cpp on 2 CPU cores runs best at about 4 requests at
once; at 16 its queue grows past the client timeout, it cancels work and answers "Context size has been exceeded",
and throughput falls 3x.  A remote API gets faster up to its rate limit.  So the labeller searches for the level
that gives the most answers per second and stays there, always within the user's cap (``--concurrency``).

How (throughput hill-climbing with AIMD back-off, evaluated in windows of completed calls):

* **start** low for a local server (loopback / private address: 2) and moderately for a remote API (8);
  at the server's own parallel slot count when it publishes one (llama.cpp's ``/props``: more only queue, fewer
  leave slots idle); a level learned earlier in this process for the same endpoint and model wins over both;
  that slot count is also the **ceiling**: requests beyond it wait in the server's queue, and on a 2-core machine
  the search, fooled by emails of different lengths, climbed to 16 on a 4-slot llama-server (28.8 s a call, no
  more answers a second);
* **measure** each level by Little's law: goodput = mean requests in flight x success share / mean latency, over a
  window of calls that *started* at that level (so a level is never credited with its predecessor's calls);
* **grow** (doubling until the first loss, then +25 %) only while goodput grows by more than ``gain``; a level
  that is not faster is abandoned for the smaller one -- latency inflation without more throughput is a queue;
* **back off** on overload -- timeouts, 429, 5xx, "context exceeded" or retried calls (more than a few per
  window), or p90 latency above half the client timeout: to the smallest level whose measured goodput is within
  5 % of the best measured below the overloaded one, or multiplicatively (x ``backoff``) when nothing below is
  known or two back-offs come without a window in between; the overloaded level becomes a ceiling for the run;
* **re-probe** one step up after a few steady windows (4, doubling after every probe that found nothing, up to
  64), so a server that speeds up is noticed without paying for a futile probe all the time.

With ``adaptive=False`` the limit is the cap, fixed (the old behaviour).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

LOCAL_START = 2
REMOTE_START = 8
OVERLOAD_KINDS = frozenset({"http_429", "http_5xx", "timeout", "context_exceeded"})
# fixed teacher calls at once where nothing adapts (serving, `flywheel predict`): a CPU llama.cpp server has about 4
# slots (issue 15 measured 16 at once as 3x slower there, with timeouts); a hosted API takes more
LOCAL_FIXED, REMOTE_FIXED = 4, 16


def fixed_concurrency(local: bool, given: int | None = None) -> int:
    """``given``, or the fixed default for a teacher on this machine's network (``local``) or a hosted API."""
    return given or (LOCAL_FIXED if local else REMOTE_FIXED)


# level learned per (base_url, model) in this process: the cascade labels small batches many times, and each
# batch should not re-learn what the previous one found
_LEARNED: dict[tuple[str, str], int] = {}
# parallel slots a server said it has (teacher.server_info()), per base_url
_SLOTS: dict[str, int] = {}


def is_local_url(base_url: str) -> bool:
    """True for loopback, private-network and ``*.local`` hosts: a model server on the user's own hardware."""
    host = (urlparse(base_url).hostname or "").strip("[]").lower()
    if host in ("localhost", "host.docker.internal") or host.endswith((".local", ".localhost", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def start_level(base_url: str, model: str, cap: int, *, local: bool | None = None, slots: int | None = None) -> int:
    """Where the search starts: what was learned for this endpoint in this process, else the server's slot count
    (``slots``, or what :func:`note_server_slots` recorded), else low local / moderate remote.  ``local`` is the
    teacher's own judgement (``OpenAICompatTeacher.local``: the simulated teacher listens on loopback but stands in
    for a remote API); ``None`` judges from the URL."""
    learned = _LEARNED.get((base_url, model))
    if learned:
        return max(1, min(cap, learned))
    slots = slots or _SLOTS.get(base_url)
    if slots:
        return max(1, min(cap, slots))
    local = is_local_url(base_url) if local is None else local
    return max(1, min(cap, LOCAL_START if local else REMOTE_START))


def remember_level(base_url: str, model: str, level: int) -> None:
    _LEARNED[(base_url, model)] = max(1, int(level))


def slot_ceiling(base_url: str) -> int | None:
    """The parallel slots a server said it has (:func:`note_server_slots`), the most worth having in flight."""
    return _SLOTS.get(base_url)


def note_server_slots(base_url: str, slots: int | None) -> None:
    """Record how many requests a server runs in parallel (from its own ``/props``), for :func:`start_level`."""
    if slots:
        _SLOTS[base_url] = int(slots)


def forget_levels() -> None:
    """Forget every learned level and slot count (tests and benchmarks that compare cold starts)."""
    _LEARNED.clear()
    _SLOTS.clear()


def is_overload(error_kind: str | None, retries: int = 0) -> bool:
    """A sign the server is asked too much at once: timeouts, 429, 5xx, context exceeded, or a call that needed retries."""
    return error_kind in OVERLOAD_KINDS or retries > 0


@dataclass
class Ticket:
    epoch: int
    t0: float


class AdaptiveConcurrency:
    """An asyncio limit on requests in flight that adjusts itself (see the module docstring).

    Use: ``t = await ctl.acquire()`` before a call, ``await ctl.release(t, latency_s=..., ok=..., overload=...)``
    after it (``ctl.release(t, count=False)`` when no call was made).  Event-loop local; not thread-safe.
    """

    PROBE_EVERY = 4  # steady windows before the first probe one step up (doubles after each futile probe)
    PROBE_EVERY_MAX = 64

    def __init__(self, cap: int, *, start: int | None = None, adaptive: bool = True, timeout_s: float | None = None,
                 gain: float = 0.1, backoff: float = 0.5, min_window: int = 12, window_factor: int = 4,
                 ceiling: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {backoff}")
        self.cap, self.adaptive, self.timeout_s, self._clock = cap, adaptive, timeout_s, clock
        self.gain, self.backoff = gain, backoff
        self.min_window, self.window_factor = min_window, window_factor
        self.ceiling = max(1, min(cap, ceiling or cap))  # ceiling: the server's slots, when it says
        self.limit = max(1, min(self.ceiling, start or cap)) if adaptive else cap
        self.inflight = 0
        self.epoch = 0
        self.phase = "slow_start"  # slow_start -> steady <-> probe
        self.base_limit: int | None = None
        self.base_rate: float | None = None
        self.steady_windows = 0
        self.probe_every = self.PROBE_EVERY
        self.max_limit = self.limit
        self.decreases = 0
        self.windows = 0  # decisions made (windows ended or back-offs)
        self.rates: dict[int, float] = {}  # level -> smoothed goodput measured there (calls/s)
        self._windows_since_decrease = 1
        self.history: list[tuple[float, int, str]] = [(0.0, self.limit, "start")]
        self._t_start = self._clock()
        self._cond: asyncio.Condition | None = None
        self._reset_window()

    # -- limiting -----------------------------------------------------------------------------------------------
    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def _tick(self) -> None:
        now = self._clock()
        self._area += self.inflight * (now - self._last)
        self._last = now

    async def acquire(self) -> Ticket:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.inflight < self.limit)
            self._tick()
            self.inflight += 1
            return Ticket(self.epoch, self._clock())

    async def release(self, ticket: Ticket, *, latency_s: float | None = None, ok: bool = False,
                      overload: bool = False, count: bool = True) -> None:
        """Give the slot back; ``count`` feeds the call's outcome to the search."""
        cond = self._condition()
        async with cond:
            self._tick()
            self.inflight -= 1
            if count and self.adaptive and ticket.epoch == self.epoch:
                lat = latency_s if latency_s is not None else self._clock() - ticket.t0
                self._observe(max(lat, 1e-6), ok, overload)
            cond.notify_all()

    # -- the search --------------------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._w_start = self._last = self._clock()
        self._area = 0.0
        self._n = self._ok = self._signals = 0
        self._lat: list[float] = []

    def _window_size(self) -> int:
        if self.phase == "slow_start":  # doubling below saturation is a big, easily measured gain: decide sooner
            return max(self.min_window, 2 * self.limit)
        return max(self.min_window, self.window_factor * self.limit)

    def _set(self, level: int, why: str) -> None:
        level = max(1, min(self.cap, self.ceiling, level))
        if level != self.limit:
            self.history.append((round(self._clock() - self._t_start, 3), level, why))
            del self.history[1:-200]  # the start and the last 200 changes
        self.limit = level
        self.max_limit = max(self.max_limit, level)
        self.epoch += 1
        self._reset_window()

    def _observe(self, latency: float, ok: bool, overload: bool) -> None:
        self._n += 1
        self._ok += int(ok)
        self._lat.append(latency)
        if overload:
            self._signals += 1
            if self._signals >= max(2, math.ceil(0.05 * self._window_size())):
                self._decrease("overload (timeouts / 429 / 5xx / retries)")
                return
        if self._n >= self._window_size():
            self._end_window()

    def _decrease(self, why: str) -> None:
        self.decreases += 1
        self.windows += 1
        self.ceiling = max(1, self.limit - 1)
        new = max(1, min(int(self.limit * self.backoff), self.limit - 1))
        known = {lv: r for lv, r in self.rates.items() if lv <= self.ceiling}
        if known and self._windows_since_decrease > 0:  # back to what was measured good, not blindly halved
            best = max(known.values())
            new = min(lv for lv, r in known.items() if r >= best / 1.05)
        self._windows_since_decrease = 0
        self.phase, self.base_limit, self.base_rate, self.steady_windows = "steady", new, None, 0
        self.probe_every = self.PROBE_EVERY
        self._set(new, why)

    def _up(self) -> int:
        if self.phase == "slow_start":
            return self.limit * 2
        return self.limit + max(1, self.limit // 4)

    def _end_window(self) -> None:
        self.windows += 1
        now = self._clock()
        dur = max(now - self._w_start, 1e-9)
        lat = sorted(self._lat)
        mean_lat = sum(lat) / len(lat)
        p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
        rate = (self._area / dur) * (self._ok / self._n) / mean_lat  # Little's law: goodput at this level
        self._windows_since_decrease += 1
        if self.timeout_s and p90 > 0.5 * self.timeout_s and self.limit > 1:
            self._decrease(f"p90 latency {p90:.1f}s above half the {self.timeout_s:g}s timeout")
            return
        old = self.rates.get(self.limit)
        self.rates[self.limit] = rate if old is None else 0.5 * (old + rate)
        if self.phase in ("slow_start", "probe"):
            if self.base_rate is None or self.base_limit is None:
                self.base_limit, self.base_rate = self.limit, rate
            elif rate > self.base_rate * (1 + (self.gain / 2 if self.phase == "slow_start" else self.gain)):
                self.base_limit, self.base_rate = self.limit, rate
                self.probe_every = self.PROBE_EVERY
            else:  # not faster: the extra requests only queued
                if self.phase == "probe":
                    self.probe_every = min(self.PROBE_EVERY_MAX, self.probe_every * 2)
                was, self.phase, self.steady_windows = self.limit, "steady", 0
                self._set(self.base_limit, f"{was} no faster than {self.base_limit}")
                return
            nxt = min(self.cap, self.ceiling, self._up())
            if nxt <= self.limit:
                self.phase, self.steady_windows = "steady", 0
                self._reset_window()
            else:
                self._set(nxt, f"{self.limit} faster than before: try {nxt}")
            return
        # steady: follow drift, probe one step up now and then
        self.base_limit = self.limit
        self.base_rate = rate if self.base_rate is None else 0.5 * (self.base_rate + rate)
        self.steady_windows += 1
        nxt = min(self.cap, self.ceiling, self._up())
        if self.steady_windows >= self.probe_every and nxt > self.limit:
            self.phase, self.steady_windows = "probe", 0
            self._set(nxt, f"probe {nxt}")
        else:
            self._reset_window()

    def summary(self) -> dict[str, object]:
        return {"adaptive": self.adaptive, "cap": self.cap, "final": self.settled, "max": self.max_limit,
                "decreases": self.decreases, "windows": self.windows,
                "changes": [list(h) for h in self.history[-20:]]}

    @property
    def settled(self) -> int:
        """The level the search believes in (the base level while a probe is running)."""
        if self.phase == "probe" and self.base_limit:
            return self.base_limit
        return self.limit


class RateLimiter:
    """At most ``rpm`` request starts per minute, evenly spaced (retries count too).  Event-loop local."""

    def __init__(self, rpm: float | None) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be > 0, got {rpm}")
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock is bound to one event loop
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
