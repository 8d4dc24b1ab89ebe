"""Served answers to the store as feedback, written in batches by one background thread.

Why batched: one SQLite transaction per request capped the service near 200 req/s on two cores; one transaction
per ~0.1 s carries thousands.  The queue is bounded: when the store cannot keep up, rows are dropped and counted
(``flywheel_log_dropped_total``) rather than growing memory or slowing answers.  The input itself is kept under
``exports/served/`` (content-addressed, at most ``max_payload_bytes``) before its row is written.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

from llm_flywheel.interfaces.serve.inputs import RawInput
from llm_flywheel.pipeline.cascade import Cascade, CascadeAnswer

logger = logging.getLogger(__name__)


class FeedbackLog:
    def __init__(self, cascade: Cascade, root: Path, max_payload_bytes: int, *, max_queue: int = 20_000,
                 batch: int = 512, interval_s: float = 0.1) -> None:
        self.cascade, self.root, self.max_payload_bytes = cascade, root, max_payload_bytes
        self.batch, self.interval_s = batch, interval_s
        self._q: queue.Queue[tuple[CascadeAnswer, RawInput]] = queue.Queue(max_queue)
        self.logged = self.payloads_kept = self.dropped = 0
        self._enqueued = self._handled = 0  # flush() waits for handled to catch up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-feedback-log", daemon=True)
        self._thread.start()

    def put(self, ans: CascadeAnswer, inp: RawInput) -> None:
        try:
            self._q.put_nowait((ans, inp))
            self._enqueued += 1
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while not (self._stop.is_set() and self._q.empty()):
            try:
                first = self._q.get(timeout=self.interval_s)
            except queue.Empty:
                continue
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            self._write(items)
            self._handled += len(items)

    def _write(self, items: list[tuple[CascadeAnswer, RawInput]]) -> None:
        try:
            refs = [self._keep(inp) if len(inp.raw) <= self.max_payload_bytes else None for _, inp in items]
            self.cascade.log_answers([a for a, _ in items], origin="serve", payload_refs=refs)
            self.logged += len(items)
            self.payloads_kept += sum(r is not None for r in refs)
        except Exception as e:  # logging feedback must never fail the service
            self.dropped += len(items)
            logger.warning("could not log %d served requests: %s: %s", len(items), type(e).__name__, e)

    def _keep(self, inp: RawInput) -> str:
        rel = f"exports/served/{inp.hash[:2]}/{inp.hash}{inp.ext}"
        dest = self.root / rel
        if dest.exists():
            os.utime(dest)  # fresh again: retention's size pass deletes the oldest first
            return rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(inp.raw)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return rel

    def close(self, timeout_s: float) -> None:
        """Write what is queued (for at most ``timeout_s``), then stop."""
        self._stop.set()
        self._thread.join(timeout=max(0.0, timeout_s))
        if self._thread.is_alive():
            logger.warning("feedback log still had %d rows to write at shutdown", self._q.qsize())

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        target, end = self._enqueued, time.monotonic() + timeout_s
        while self._handled < target and self._thread.is_alive() and time.monotonic() < end:
            time.sleep(0.005)
