"""When a plain progress line is due: at most one per tenth of the work or per ``every_s`` seconds.

Why one rule: where a redrawn bar is noise (logs, CI, pipes, a notebook's stderr) every long step -- teacher calls,
training epochs -- prints plain lines instead, and both should fill a log at the same modest rate.  Pure: the
caller passes the clock.
"""

from __future__ import annotations


class LineThrottle:
    """Say whether a line is due for ``done`` of ``total`` at time ``now``; record each line printed."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.tenth, self.at = -1, float("-inf")  # the first line is always due

    def due(self, done: int, total: int, now: float) -> bool:
        return 10 * done // max(1, total) > self.tenth or now - self.at >= self.every_s

    def printed(self, done: int, total: int, now: float) -> None:
        self.tenth, self.at = 10 * done // max(1, total), now
