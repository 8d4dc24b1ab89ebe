"""The teacher's side of raw (served) inputs: bought once and stored before use, bounded by a breaker and a deadline.

Why: with the teacher down, each deferred request used to wait through every retry (15-19 s) and a frozen teacher
held requests without end.  The breaker stops calling a teacher that failed ``failures`` times in a row for
``cooldown_s`` (then lets one probe through: half-open); the deadline answers with the student's guess, marked
``student_fallback``, when the teacher has not answered in time -- or raises :class:`DeadlineExceeded` where the
operator prefers an error (the service's 504).  One content is asked once even when many requests for it arrive
together -- in this process by sharing the call, across processes (Ray Serve replicas) by a claim in the store: the
claim's owner pays, the others wait for its stored answer -- and what a call cut off by the deadline buys is still
stored when it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.liveness import known_dead, owner_id
from llm_flywheel.pipeline.serve_budget import TeacherSpendCap
from llm_flywheel.store.base import Store
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import TRANSIENT_ERROR_KINDS, Teacher, TeacherAnswer, TeacherSession, is_fatal
from llm_flywheel.teachers.prompts import row_content

logger = logging.getLogger(__name__)
RAW_CACHE_SIZE = 10_000
Hit = tuple[str | None, float]  # a final teacher answer: (label as answered, confidence); (None, 0.0): it failed

ON_DEADLINE = ("fallback", "error")
CLAIM_STALE_S = 30.0  # a claim not refreshed for this long belongs to a process that died: taken over
CLAIM_REFRESH_S = 10.0  # the owner refreshes its claim this often while its call runs
CLAIM_WAIT_S = 120.0  # a process waiting on another's claim gives up after this (its requests' deadlines are shorter)


class DeadlineExceeded(TimeoutError):
    """The teacher did not answer a deferred input before the request's deadline (``on_deadline='error'``)."""


@dataclass(frozen=True)
class BreakerState:
    """For /readyz and the metrics: ``closed`` (calling), ``open`` (not calling until ``retry_in_s``),
    ``half_open`` (one probe call allowed)."""

    state: str
    consecutive_failures: int
    retry_in_s: float
    opened_total: int


class TeacherBreaker:
    """Consecutive-failure circuit breaker (thread-safe; the clock is ``time.monotonic``)."""

    def __init__(self, failures: int = 5, cooldown_s: float = 30.0) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"breaker needs failures >= 1 and cooldown_s > 0, got {failures}, {cooldown_s}")
        self.failures, self.cooldown_s = failures, cooldown_s
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._opened_total = 0

    def allow(self) -> bool:
        """May the teacher be called now?  After the cool-down, exactly one caller gets the probe."""
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at < self.cooldown_s or self._probing:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._consecutive, self._opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._probing or (self._opened_at is None and self._consecutive >= self.failures):
                self._opened_at = time.monotonic()
                self._opened_total += 1
            self._probing = False

    def state(self) -> BreakerState:
        with self._lock:
            if self._opened_at is None:
                return BreakerState("closed", self._consecutive, 0.0, self._opened_total)
            left = self.cooldown_s - (time.monotonic() - self._opened_at)
            return BreakerState("open" if left > 0 or self._probing else "half_open", self._consecutive,
                                max(0.0, left), self._opened_total)


class RawTeacherCalls:
    """Teacher answers for inputs that are not store items, for one task.

    ``db`` (None: no workspace) opens the store; a final answer is saved there before it is used and looked up
    there first, so a second request with the same content never pays again, in this process or another.
    """

    def __init__(self, teacher: Teacher | None, task: Task, ws: Workspace | None,
                 db: Callable[[], contextlib.AbstractContextManager[Store]] | None, breaker: TeacherBreaker) -> None:
        self.teacher, self.task, self.ws, self.db, self.breaker = teacher, task, ws, db, breaker
        self._session: TeacherSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._cache: dict[str, Hit] = {}  # content hash -> final answer, bounded
        self._asking: dict[str, asyncio.Future[Hit]] = {}  # content hash -> the one call in flight for it
        self._running: set[asyncio.Future[Hit]] = set()  # every call in flight (cancelled on close)
        self._late: set[asyncio.Future[Hit]] = set()  # calls already counted as failures for missing a deadline
        self.owner = owner_id(f"serve-{uuid.uuid4().hex[:12]}")  # this instance's name on its claims in the store
        self.cap: TeacherSpendCap | None = None  # limit()
        self.concurrency: int | None = None  # teacher calls at once (None: no limit); see limit()
        self._sem: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def limit(self, *, cap: TeacherSpendCap | None = None, concurrency: int | None = None) -> None:
        """Cap what this teacher may be paid in a rolling window (:mod:`.serve_budget`; needs the store) and how many
        calls it gets at once: a batch of deferred inputs, or a burst of them, must not open one call each against a
        local server with four slots (the rest would queue there past every deadline)."""
        if cap is not None:
            if self.db is None or self.teacher is None:
                raise ValueError("a teacher spend cap needs a workspace and a teacher")
            cap.bind(self.db, *self._teacher_key())
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"teacher concurrency must be >= 1, got {concurrency}")
        self.cap, self.concurrency, self._sem = cap, concurrency, None

    def _semaphore(self) -> asyncio.Semaphore | None:
        """The running loop's semaphore (one per loop: asyncio primitives belong to the loop they are used in)."""
        if self.concurrency is None:
            return None
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem[0] is not loop:
            self._sem = (loop, asyncio.Semaphore(self.concurrency))
        return self._sem[1]

    async def answer(self, content: Any, content_hash: str | None, deadline_s: float | None) -> Hit | None:
        """(label, confidence) of a final teacher answer -- ``(None, 0)`` when the teacher failed -- or None when
        there is none in time (deadline, or breaker open).  The deadline counts from this call: the store lookup
        and starting the call spend it too."""
        end = None if deadline_s is None else time.monotonic() + deadline_s
        if content_hash and content_hash in self._cache:
            return self._cache[content_hash]
        if content_hash and self.db is not None:
            hit = await asyncio.to_thread(self._stored_teacher_answer, content_hash)
            if hit is not None:
                return hit
        task = self._asking.get(content_hash) if content_hash else None
        if task is None:
            task = await self._start(content, content_hash)
            if task is None:  # over the spend cap, or the breaker is open
                return None
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=left)
        except asyncio.TimeoutError:
            if task not in self._late and not task.done():  # a teacher too slow for the deadline counts as failing
                self._late.add(task)
                task.add_done_callback(self._late.discard)
                self.breaker.failure()
            return None

    async def _start(self, content: Any, content_hash: str | None) -> asyncio.Future[Hit] | None:
        """The call for this content: a new one, or the one another request started while the spend cap was read
        (a second call for the same content would pay twice); None when the cap or the breaker says no."""
        held = await asyncio.to_thread(self.cap.reserve) if self.cap is not None else 0.0
        task = self._asking.get(content_hash) if content_hash else None
        if task is not None or held is None or not self.breaker.allow():  # the cap first: a breaker probe must be
            if self.cap is not None and held is not None:                  # followed by its call
                self.cap.release(held)
            return task
        task = asyncio.ensure_future(self._buy(content, content_hash))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if self.cap is not None:
            task.add_done_callback(lambda _t, cap=self.cap, r=held: cap.release(r))
        if content_hash:
            self._asking[content_hash] = task
            task.add_done_callback(lambda _t, h=content_hash: self._asking.pop(h, None))
        return task

    async def _buy(self, content: Any, content_hash: str | None) -> Hit:
        """Call the teacher once; a final answer is stored (with a workspace) before anyone uses it.  With a store,
        only the holder of the content's claim calls; another process's answer is read instead of bought."""
        if not (content_hash and self.db is not None):
            return await self._call_and_keep(content, None)
        waited = await self._claim_or_wait(content_hash)
        if waited is not None:
            return waited
        beat = asyncio.ensure_future(self._keep_claim(content_hash))
        try:
            hit = await self._call_and_keep(content, content_hash)
        except BaseException:
            # Cancelled (shutdown, the service stopping) or failed: release now, in this thread -- while the loop
            # closes no new thread starts, and a claim left behind makes every other process wait until it is stale
            beat.cancel()
            self._release_claim(content_hash)
            raise
        beat.cancel()
        # after the answer is stored: a waiter that then claims finds the answer first
        await asyncio.to_thread(self._release_claim, content_hash)
        return hit

    async def _call_and_keep(self, content: Any, content_hash: str | None) -> Hit:
        ans = await self._call_teacher(content)
        if ans is not None and ans.error_kind == "refused":  # declined this input: the teacher itself is fine
            self.breaker.success()
            return (None, 0.0)
        if ans is None or not ans.ok:
            if ans is not None and self.cap is not None and (ans.tokens_in or ans.cost_usd):  # billed all the same
                self.cap.note_unstored(ans.cost_usd)
            if ans is not None:  # else _call_teacher logged it
                logger.warning("no usable teacher answer for a served input (%s: %s); the student's answer stands "
                               "and the next request for it asks again", ans.error_kind, (ans.error_detail or "")[:200])
            if ans is not None and not is_fatal(ans.error_kind) and ans.error_kind not in TRANSIENT_ERROR_KINDS:
                self.breaker.success()  # it answered, just not usably for this input (unparseable, cut off)
            elif asyncio.current_task() not in self._late:  # already counted when it missed the deadline
                self.breaker.failure()
            return (None, 0.0)
        self.breaker.success()
        hit = (ans.label, float(ans.confidence) if ans.confidence is not None else 1.0)
        if content_hash and self.db is not None:
            try:
                await asyncio.to_thread(self._save_teacher_answer, content_hash, ans)
            except Exception as e:  # not stored: do not use it either (the next request asks again)
                logger.warning("could not store a teacher answer: %s: %s", type(e).__name__, e)
                return (None, 0.0)
        if content_hash:
            self._remember(content_hash, hit)
        return hit

    async def _claim_or_wait(self, content_hash: str) -> Hit | None:
        """None once this instance holds the content's claim (it pays); else the answer another process stored,
        or ``(None, 0.0)`` after :data:`CLAIM_WAIT_S` without one."""
        end, delay = time.monotonic() + CLAIM_WAIT_S, 0.02
        while True:
            mine = await asyncio.to_thread(self._claim_op, "claim_teacher_purchase", content_hash)
            # claimed or not, the answer may be in already (stored by the owner before it released its claim)
            hit = await asyncio.to_thread(self._stored_teacher_answer, content_hash)
            if hit is not None:
                if mine:
                    await asyncio.to_thread(self._claim_op, "release_teacher_claim", content_hash)
                return hit
            if mine:
                return None
            if time.monotonic() > end:
                logger.warning("gave up waiting %.0f s for another process's teacher answer", CLAIM_WAIT_S)
                return (None, 0.0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _keep_claim(self, content_hash: str) -> None:
        while True:
            await asyncio.sleep(CLAIM_REFRESH_S)
            try:
                await asyncio.to_thread(self._claim_op, "refresh_teacher_claim", content_hash)
            except Exception as e:  # a store hiccup: the next beat tries again
                logger.warning("could not refresh a teacher claim: %s: %s", type(e).__name__, e)

    def _release_claim(self, content_hash: str) -> None:
        try:
            self._claim_op("release_teacher_claim", content_hash)
        except Exception as e:  # it goes stale and is taken over
            logger.warning("could not release a teacher claim: %s: %s", type(e).__name__, e)

    def _claim_op(self, op: str, content_hash: str) -> bool:
        model, pv = self._teacher_key()
        assert self.db is not None
        with self.db() as store:
            if op == "claim_teacher_purchase":
                return store.claim_teacher_purchase(content_hash, model, pv, self.owner, stale_after_s=CLAIM_STALE_S,
                                                    is_dead=known_dead)  # a replica killed here: no 30 s wait
            return bool(getattr(store, op)(content_hash, model, pv, self.owner))

    def _open_session(self) -> TeacherSession:
        """The teacher session of the running event loop (its connections belong to that loop)."""
        assert self.teacher is not None
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            self._session, self._session_loop = self.teacher.session(self.task, ws=self.ws), loop
        return self._session

    async def _call_teacher(self, content: Any) -> TeacherAnswer | None:
        payload = row_content(content) if isinstance(content, list) else content  # tabular as text
        try:
            async with self._semaphore() or contextlib.nullcontext():  # a wait counts against the request's
                return await self._open_session().alabel_raw(payload)  # deadline; the call still runs after it
        except Exception as e:  # the session never raises for provider trouble; anything else is a failure too
            logger.warning("teacher call failed: %s: %s", type(e).__name__, e)
            return None

    @property
    def in_flight(self) -> int:
        """Teacher calls running now (some may outlive the request that started them)."""
        return len(self._running)

    def _remember(self, content_hash: str, hit: Hit) -> None:
        self._cache[content_hash] = hit
        if len(self._cache) > RAW_CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))

    def _teacher_key(self) -> tuple[str, str]:
        assert self.teacher is not None
        return self.teacher.model, self.teacher.prompt_version_for(self.task)

    def _stored_teacher_answer(self, content_hash: str) -> Hit | None:
        """A final answer of this teacher (same prompt version) already paid for this exact content, by labelling or
        by any serving process."""
        model, pv = self._teacher_key()
        assert self.db is not None
        with self.db() as store:
            row = store.stored_teacher_answer(content_hash, model, pv)
        if row is None:
            return None
        hit = (row.label, float(row.confidence) if row.confidence is not None else 1.0)
        self._remember(content_hash, hit)
        return hit

    def _save_teacher_answer(self, content_hash: str, ans: TeacherAnswer) -> None:
        model, pv = self._teacher_key()
        assert self.db is not None
        with self.db() as store:
            store.save_served_teacher_answer(
                content_hash, model, pv, label=ans.label, confidence=ans.confidence, tokens_in=ans.tokens_in,
                tokens_out=ans.tokens_out, cost_usd=ans.cost_usd, latency_s=ans.latency_s)

    async def aclose(self) -> None:
        """Cancel calls still running in the background and close the teacher's connections."""
        for t in list(self._running):
            t.cancel()
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.aclose()
        self._session = self._session_loop = None
