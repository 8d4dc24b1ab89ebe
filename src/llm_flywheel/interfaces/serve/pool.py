"""A bounded worker pool: CPU work (decoding, inference) off the event loop, with a queue that refuses when full.

Why: decoding a large image on the event loop stalled every request, ``/healthz`` included.  Here at most
``workers`` jobs run and at most ``queue`` wait; one more is refused at once with :class:`Overloaded` (the
service's 503 + Retry-After) instead of waiting without bound -- an overloaded replica should shed load so the
load balancer sends it elsewhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Overloaded(RuntimeError):
    """The pool's queue is full; ``retry_after_s`` is a hint for the client."""

    def __init__(self, name: str, retry_after_s: int) -> None:
        super().__init__(f"the server is busy ({name} queue full); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WorkerPool:
    def __init__(self, name: str, workers: int, queue: int) -> None:
        self.name, self.workers, self.capacity = name, workers, workers + queue
        self._ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"serve-{name}")
        self._lock = threading.Lock()
        self.admitted = 0  # running + waiting
        self.refused = 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self.admitted >= self.capacity:
                self.refused += 1
                raise Overloaded(self.name, 1)
            self.admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)
        finally:
            with self._lock:
                self.admitted -= 1

    def shutdown(self) -> None:
        """Drop what waits, let what runs finish in the background (bounded shutdown never joins a stuck job)."""
        self._ex.shutdown(wait=False, cancel_futures=True)
