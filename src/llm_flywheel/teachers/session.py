"""The per-run session of an OpenAI-compatible teacher (:class:`~llm_flywheel.teachers.base.TeacherSession`).

Why it keeps a pool of single-connection clients: httpcore's shared pool scans every connection on each request
(quadratic in the concurrency), which halved throughput at concurrency 32.  A call borrows an idle client (one
keep-alive connection) and returns it, so N concurrent calls hold at most N connections and no scan grows with N.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

import httpx

from llm_flywheel.core.task import Task
from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import TeacherAnswer
from llm_flywheel.teachers.concurrency import RateLimiter



class _AskingTeacher(Protocol):
    """What a session needs from its teacher (an ``OpenAICompatTeacher``); a protocol, so this module and
    ``openai_compat`` (which creates sessions) do not import each other."""

    limiter: RateLimiter

    def make_client(self, max_connections: int) -> httpx.AsyncClient: ...

    async def _label_item(self, item: Item, task: Task, ws: Workspace | None, pass_index: int,
                          client: httpx.AsyncClient, limiter: RateLimiter) -> TeacherAnswer: ...

    async def _label_raw(self, content: Any, task: Task, pass_index: int, client: httpx.AsyncClient,
                         limiter: RateLimiter) -> TeacherAnswer: ...


class OpenAICompatSession:
    """One run's calls to one teacher for one task; see :meth:`OpenAICompatTeacher.session`."""

    def __init__(self, teacher: _AskingTeacher, task: Task, *, ws: Workspace | None = None,
                 rpm: float | None = None) -> None:
        self.teacher = teacher
        self.task = task
        self.ws = ws
        self.limiter = RateLimiter(rpm) if rpm else teacher.limiter
        self._idle: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []
        self._closed = False

    def _borrow(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("this teacher session is closed; open a new one with teacher.session(task)")
        if self._idle:
            return self._idle.pop()
        client = self.teacher.make_client(1)
        self._all.append(client)
        return client

    async def alabel(self, item: Item, *, pass_index: int = 0) -> TeacherAnswer:
        """One stored item, pass ``pass_index``; never raises for provider trouble."""
        client = self._borrow()
        try:
            return await self.teacher._label_item(item, self.task, self.ws, pass_index, client, self.limiter)
        finally:
            self._idle.append(client)

    async def alabel_raw(self, content: Any, *, pass_index: int = 0) -> TeacherAnswer:
        """An input that is not in the store (served traffic): text, PNG/JPEG bytes or a PIL image."""
        client = self._borrow()
        try:
            return await self.teacher._label_raw(content, self.task, pass_index, client, self.limiter)
        finally:
            self._idle.append(client)

    async def aclose(self) -> None:
        self._closed = True
        clients, self._all, self._idle = self._all, [], []
        for c in clients:
            await c.aclose()

    async def __aenter__(self) -> OpenAICompatSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def run_sync(coro: Any) -> Any:
    """Run a coroutine from sync code, even when this thread already runs an event loop (then in a worker)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["v"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            out["e"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]
