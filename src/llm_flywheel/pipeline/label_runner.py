"""The asynchronous call loop of a labelling run: workers, budget reservations, breaker, tie-breaks, re-asks.

Every answer is written to the store *before* anything uses it (one autocommitted row), so a run killed at any
moment resumes where it stopped and never pays twice; each call is claimed in the store first, so two runs at once
never pay twice either (:mod:`~llm_flywheel.pipeline.label_claims`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llm_flywheel.core.consensus import needs_tie_break
from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.label_claims import CallClaims, Key
from llm_flywheel.pipeline.liveness import owner_id
from llm_flywheel.pipeline.label_budget import (
    WAIT,
    Budget,
    CircuitBreaker,
    fatal_message,
)
from llm_flywheel.pipeline.label_progress import Progress
from llm_flywheel.store.base import Item, Store
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import Teacher, TeacherAnswer, TeacherSession, is_fatal
from llm_flywheel.teachers.concurrency import AdaptiveConcurrency, is_overload

if TYPE_CHECKING:
    from llm_flywheel.pipeline.label_types import LabelConfig, LabelRunResult

Job = tuple[Item, int]


def make_jobs(items: Sequence[Item], passes: Sequence[int], cached: set[tuple[str, int]]) -> list[Job]:
    """One call per missing (content hash, pass); items sharing content share the call.  Item-major order so a
    partial run leaves whole items done."""
    seen: set[tuple[str, int]] = set(cached)
    jobs = []
    for it in items:
        for p in passes:
            key = (it.content_hash, p)
            if key not in seen:
                seen.add(key)
                jobs.append((it, p))
    return jobs


class LabelRunner:
    """Runs jobs through ``concurrency`` workers; queues a tie-break as soon as an item's main passes disagree."""

    BREAKER_GRACE_S = 2.0  # in-flight calls get this long to finish after the breaker trips, then are abandoned

    def __init__(self, ws: Workspace, store: Store, task: Task, teacher: Teacher, cfg: LabelConfig,
                 budget: Budget, result: LabelRunResult, run_id: int, progress: Progress | None,
                 ctl: AdaptiveConcurrency) -> None:
        self.ws, self.store, self.task, self.teacher, self.cfg = ws, store, task, teacher, cfg
        self.session: TeacherSession | None = None  # opened by :meth:`open` for the whole run
        self.budget, self.result, self.run_id, self.progress, self.ctl = budget, result, run_id, progress, ctl
        self.stop = False
        self.known: dict[str, dict[int, str | None]] = {}  # content hash -> pass -> label of final answers
        self.tb_pass = cfg.passes if cfg.tie_break and cfg.passes >= 2 else None
        self.tb_queued: set[str] = set()
        self.breaker = CircuitBreaker(cfg.breaker_threshold)
        self.calls: set[asyncio.Future[Any]] = set()
        self.abandoning = False
        self.claims = CallClaims(store, teacher.model, result.prompt_version, owner_id(f"run{run_id}"),
                                 teacher.base_url)
        self.parked: dict[Key, tuple[Item, int, int]] = {}  # calls another run is making: wait for their answers
        self.in_batch: set[Key] = set()  # calls a Batch API submission not collected yet carries: never bought here

    def needs_tie_break(self, h: str) -> bool:
        """All main passes answered, no off-list among them, and no strict majority: ask pass ``k`` once."""
        if self.tb_pass is None or h in self.tb_queued:
            return False
        got = self.known.get(h, {})
        if (h, self.tb_pass) in self.in_batch or self.tb_pass in got:
            return False
        if any(p not in got for p in range(self.cfg.passes)):
            return False
        return needs_tie_break([got[p] for p in range(self.cfg.passes)])

    def tie_breaks_due(self, items: Sequence[Item]) -> list[Job]:
        """Tie-break jobs for items whose main passes are all stored but disagree (a resumed run)."""
        jobs = []
        for it in items:
            if self.needs_tie_break(it.content_hash):
                self.tb_queued.add(it.content_hash)
                jobs.append((it, self.cfg.passes))
        return jobs

    def not_batched(self, jobs: list[Job]) -> list[Job]:
        """``jobs`` without the calls an open batch carries (:attr:`in_batch`), those counted in the result."""
        out = [(it, p) for it, p in jobs if (it.content_hash, p) not in self.in_batch]
        self.result.in_open_batch += len(jobs) - len(out)
        return out

    def open(self) -> TeacherSession:
        """The run's one session (task, workspace, rate limit, connections); use as ``async with runner.open():``."""
        self.session = self.teacher.session(self.task, ws=self.ws, rpm=self.cfg.rpm)
        return self.session

    async def run(self, jobs: list[Job], desc: str) -> None:
        if not jobs or self.stop:
            return
        if self.session is None:
            raise RuntimeError("LabelRunner.run needs an open session: async with runner.open(): ...")
        queue: deque[tuple[Item, int, int]] = deque((it, p, 0) for it, p in jobs)
        if self.progress is not None:
            self.progress.start(desc, len(jobs))
        while True:  # then wait for the calls other runs were making, and make those whose run gave them up
            await asyncio.gather(*(self._worker(queue) for _ in range(min(self.cfg.concurrency, len(queue)))))
            if self.stop or not self.parked:
                return
            await self._await_parked(queue)

    async def _worker(self, queue: deque[tuple[Item, int, int]]) -> None:
        while queue and not self.stop:
            ticket = await self.ctl.acquire()
            res = self._reserve() if queue and not self.stop else None
            if res is None or res == WAIT:
                await self.ctl.release(ticket, count=False)
                if res is None:
                    return
                await asyncio.sleep(0.005)
                continue
            item, p, tries = queue.popleft()
            if not self._claim(queue, item, p, tries):
                self.budget.cancel(res)  # type: ignore[arg-type]
                await self.ctl.release(ticket, count=False)
                continue
            try:
                ans = await self._call(item, p, ticket, res)
                if ans is None:
                    return
                await self._settle(ans, res, ticket)
            finally:
                self.claims.release(item.content_hash, p)  # after the answer is stored: a waiter finds it first
            self._after(queue, ans, item, p, tries)

    def _claim(self, queue: deque[tuple[Item, int, int]], item: Item, p: int, tries: int) -> bool:
        """True when this run holds the call's claim and its answer is still missing; else the call is parked
        (another run is making it), its answer, stored meanwhile by another run, is used, or a batch submitted
        meanwhile carries it (left to the batch)."""
        h = item.content_hash
        if not self.claims.take(h, p):
            self.parked[(h, p)] = (item, p, tries)
            return False
        done = self.claims.answered([(h, p)])
        if done:
            self.claims.release(h, p)
            self._adopt(queue, item, p, done[(h, p)])
            return False
        if self.claims.in_batch(h, p):
            self.claims.release(h, p)
            self.in_batch.add((h, p))
            self.result.in_open_batch += 1
            if self.progress is not None:
                self.progress.advance(f"${self.result.cost_usd:.4f}, concurrency {self.ctl.limit}")
            return False
        return True

    def _adopt(self, queue: deque[tuple[Item, int, int]], item: Item, p: int, label: str | None) -> None:
        """Another run stored this call's answer: use it as a cached one (and queue a tie-break it made due)."""
        self.result.answered_elsewhere += 1
        self.known.setdefault(item.content_hash, {})[p] = label
        self._queue_tie_break(queue, item)
        if self.progress is not None:
            self.progress.advance(f"${self.result.cost_usd:.4f}, concurrency {self.ctl.limit}")

    async def _await_parked(self, queue: deque[tuple[Item, int, int]]) -> None:
        """Wait until a parked call's answer is stored (used as cached) or no live run holds it any more (made
        here), whichever comes first; returns with the latter in ``queue``."""
        delay = 0.1
        while self.parked and not queue and not self.stop:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            for key, label in self.claims.answered(self.parked).items():
                item, p, _ = self.parked.pop(key)
                self._adopt(queue, item, p, label)
            for key in self.claims.free(self.parked):
                queue.append(self.parked.pop(key))

    def _reserve(self) -> float | str | None:
        res = self.budget.reserve()
        if res is None and not self.stop:
            self._stop_for_budget()
        return res

    async def _call(self, item: Item, p: int, ticket: Any, res: float | str) -> TeacherAnswer | None:
        """One call; None when it was abandoned after the breaker tripped."""
        assert self.session is not None
        call = asyncio.ensure_future(self.session.alabel(item, pass_index=p))
        self.calls.add(call)
        try:
            return await call
        except asyncio.CancelledError:
            self.budget.settle(res, None)  # type: ignore[arg-type]
            await self.ctl.release(ticket, count=False)
            if self.abandoning and call.cancelled():
                self.result.cancelled_calls += 1
                return None
            raise
        except BaseException:
            self.budget.settle(res, None)  # type: ignore[arg-type]
            await self.ctl.release(ticket, count=False)
            raise
        finally:
            self.calls.discard(call)

    async def _settle(self, ans: TeacherAnswer, res: float | str, ticket: Any) -> None:
        self.store.add_teacher_answer(ans, self.run_id)  # stored before anything uses it
        self.budget.settle(res, ans.cost_usd)  # type: ignore[arg-type]
        retries = int(ans.extra.get("retries") or 0)
        fatal = is_fatal(ans.error_kind) or bool(ans.extra.get("fatal"))
        await self.ctl.release(ticket, latency_s=ans.latency_s, ok=bool(ans.ok),
                               overload=not fatal and is_overload(ans.error_kind, retries))
        self._count(ans)
        if self.breaker.record(ans) and not self.stop:
            self._trip()
            asyncio.get_running_loop().call_later(self.BREAKER_GRACE_S, self._abandon_calls)

    def _after(self, queue: deque[tuple[Item, int, int]], ans: TeacherAnswer, item: Item, p: int,
               tries: int) -> None:
        """Re-ask an unparseable reply, queue a tie-break that became due, advance the progress."""
        if p == self.tb_pass:
            self.result.tie_break_calls += 1
        if ans.error_kind in ("parse", "refused") and tries < self.cfg.reask_unparseable:
            queue.append((item, p, tries + 1))  # a sampled reply often parses when asked again
            return
        if ans.ok:
            self.known.setdefault(item.content_hash, {})[p] = ans.label
            self._queue_tie_break(queue, item)
        if self.progress is not None:
            self.progress.advance(f"${self.result.cost_usd:.4f}, concurrency {self.ctl.limit}")

    def _queue_tie_break(self, queue: deque[tuple[Item, int, int]], item: Item) -> None:
        if self.needs_tie_break(item.content_hash):
            self.tb_queued.add(item.content_hash)
            queue.appendleft((item, self.tb_pass, 0))  # type: ignore[arg-type]  # resolve it now
            if self.progress is not None:
                self.progress.grow(1)

    def _stop_for_budget(self) -> None:
        self.result.stopped_by_budget = True
        if self.cfg.max_calls is not None and self.budget.calls >= self.cfg.max_calls:
            self.result.stopped_reason = "max_calls"
            self.result.stopped_message = (f"call cap {self.cfg.max_calls} reached; raise --max-calls (or drop it) "
                                           f"and re-run to continue")
        else:
            self.result.stopped_reason = "budget"
            self.result.stopped_message = (f"budget ${self.cfg.budget_usd:g} reached (spent ${self.budget.spent:.4f}); "
                                           f"raise --budget-usd and re-run to continue")
        self.stop = True

    def _abandon_calls(self) -> None:
        """After the breaker trips: calls still waiting (e.g. in back-off against a dead port) are given up."""
        self.abandoning = True
        for f in list(self.calls):
            f.cancel()

    def _trip(self) -> None:
        r, b = self.result, self.breaker
        self.stop = True
        r.stopped_reason = "fatal_error"
        r.fatal_error_kind = b.kind
        r.stopped_message = fatal_message(b.kind or "fatal", b.count, self.teacher.base_url, self.teacher.model,
                                          b.detail)

    def _count(self, ans: TeacherAnswer) -> None:
        r = self.result
        r.calls_made += 1
        r.cost_usd += ans.cost_usd or 0.0
        if not ans.ok:
            r.failed += 1
        if ans.error_kind:
            r.errors[ans.error_kind] = r.errors.get(ans.error_kind, 0) + 1
            if ans.error_kind == "off_list":
                r.off_list += 1
