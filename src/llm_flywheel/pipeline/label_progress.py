"""Progress of a labelling run: a rich bar on a terminal, plain lines elsewhere, or nothing.

Anything with ``start(desc, total)``, ``grow(n)``, ``advance(info)`` and ``stop()`` (:class:`Progress`) can be
passed to :func:`llm_flywheel.pipeline.labeling.label_items` instead, e.g. a notebook widget or a logger.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

from llm_flywheel.core.throttle import LineThrottle


class Progress(Protocol):
    """What the labeller reports to: ``start`` once per phase, ``grow`` when tie-breaks add calls, ``advance``
    after each call, ``stop`` at the end."""

    def start(self, desc: str, total: int) -> None: ...

    def grow(self, n: int) -> None: ...

    def advance(self, info: str) -> None: ...

    def stop(self) -> None: ...


class _RichProgress:
    """A rich bar on the console's stream (a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar: Any = None
        self.desc = ""

    def start(self, desc: str, total: int) -> None:
        self.desc = desc
        self.p.start()
        self.bar = self.p.add_task(desc, total=total)

    def grow(self, n: int) -> None:
        self.p.update(self.bar, total=self.p.tasks[self.bar].total + n)

    def advance(self, info: str) -> None:
        self.p.update(self.bar, advance=1, description=f"{self.desc} [dim]{info}[/]")

    def stop(self) -> None:
        self.p.stop()


class PlainProgress:
    """Progress as plain lines (for logs, CI and pipes, where a redrawn bar is noise or invisible): one line at
    most every ``every_s`` seconds or every 10 %, and one at the end."""

    def __init__(self, stream: Any = None, every_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.done = self.total = 0
        self.desc, self.info = "", ""
        self._t0 = 0.0
        self._throttle = LineThrottle(every_s)
        self._printed = (-1, -1)

    def start(self, desc: str, total: int) -> None:
        self.desc, self.total, self.done = desc, total, 0
        self._t0 = time.monotonic()
        self._throttle = LineThrottle(self.every_s)
        self._line()

    def grow(self, n: int) -> None:
        self.total += n

    def advance(self, info: str) -> None:
        self.done += 1
        self.info = info
        if self._throttle.due(self.done, self.total, time.monotonic()):
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self._throttle.printed(self.done, self.total, now)
        self._printed = (self.done, self.total)
        el = now - self._t0
        rate = self.done / el if el > 0 else 0.0
        eta = f", eta {(self.total - self.done) / rate:.0f}s" if rate > 0 and self.done < self.total else ""
        pct = 100.0 * self.done / max(self.total, 1)
        info = f", {self.info}" if self.info else ""
        print(f"{self.desc}: {self.done}/{self.total} calls ({pct:.0f} %), {el:.0f}s, {rate:.1f} calls/s{eta}{info}",
              file=self.stream, flush=True)

    def stop(self) -> None:
        if self.desc and self._printed != (self.done, self.total):
            self._line()


def _isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress_for(enabled: bool | str | Progress | None) -> Progress | None:
    """``False``: nothing; ``"plain"``: lines; ``True``: a bar when stdout and stderr (where the CLI console and
    the bar write) are terminals, plain lines on stderr when either is not (logs, CI, pipes)."""
    if not enabled:
        return None
    if not isinstance(enabled, (bool, str)):
        return enabled
    if enabled == "plain" or not all(_isatty(f) for f in (sys.stdout, sys.stderr)):
        return PlainProgress()
    return _RichProgress()
