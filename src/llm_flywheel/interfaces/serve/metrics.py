"""Counters and a histogram in the Prometheus text format (written by hand, no extra dependency)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from llm_flywheel.pipeline.cascade import SOURCES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BREAKER_STATES = ("closed", "half_open", "open")


class Metrics:
    """Counters and a histogram, rendered in the Prometheus text exposition format (version 0.0.4).

    ``gauges`` are read at render time (queue depths, breaker state, teacher calls in flight)."""

    def __init__(self, version: str, dataset: str) -> None:
        self.lock = threading.Lock()
        self.version, self.dataset = version, dataset
        self.by_source: dict[str, int] = {s: 0 for s in SOURCES}
        self.errors: dict[int, int] = {}
        self.buckets: dict[str, list[int]] = {s: [0] * len(LATENCY_BUCKETS) for s in SOURCES}
        self.lat_sum: dict[str, float] = {s: 0.0 for s in SOURCES}
        self.inflight = 0
        self.logged = 0
        self.payloads_kept = 0
        self.retention_deleted_rows = 0
        self.retention_deleted_payloads = 0
        self.unseen_by_column: dict[str, int] = {}
        self.started = time.time()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def answered(self, source: str, seconds: float) -> None:
        with self.lock:
            self.by_source[source] = self.by_source.get(source, 0) + 1
            b = self.buckets.setdefault(source, [0] * len(LATENCY_BUCKETS))
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    b[i] += 1
            self.lat_sum[source] = self.lat_sum.get(source, 0.0) + seconds

    def unseen(self, columns: Sequence[str]) -> None:
        """An input held a category the model never saw, in each of ``columns`` (``serve.unseen``)."""
        with self.lock:
            for c in columns:
                self.unseen_by_column[c] = self.unseen_by_column.get(c, 0) + 1

    def rejected(self, status: int) -> None:
        with self.lock:
            self.errors[status] = self.errors.get(status, 0) + 1

    def render(self) -> str:
        with self.lock:
            lines = self._counters()
            for name, (help_, read) in sorted(self.gauges.items()):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {float(read())!r}"]
            lines += self._histogram()
        return "\n".join(lines) + "\n"

    def _counters(self) -> list[str]:
        total = sum(self.by_source.values())
        return [
            "# HELP flywheel_requests_total Prediction requests answered, by who answered.",
            "# TYPE flywheel_requests_total counter",
            *(f'flywheel_requests_total{{source="{s}"}} {n}' for s, n in sorted(self.by_source.items())),
            "# HELP flywheel_request_errors_total Requests refused or failed, by HTTP status.",
            "# TYPE flywheel_request_errors_total counter",
            *(f'flywheel_request_errors_total{{code="{c}"}} {n}' for c, n in sorted(self.errors.items())),
            "# HELP flywheel_teacher_fraction Share of answered requests deferred by the student (since start).",
            "# TYPE flywheel_teacher_fraction gauge",
            f"flywheel_teacher_fraction {((total - self.by_source.get('student', 0)) / total) if total else 0.0!r}",
            "# HELP flywheel_inflight_requests Prediction requests being processed.",
            "# TYPE flywheel_inflight_requests gauge",
            f"flywheel_inflight_requests {self.inflight}",
            "# HELP flywheel_logged_requests_total Answers logged to the store as feedback (sampled).",
            "# TYPE flywheel_logged_requests_total counter",
            f"flywheel_logged_requests_total {self.logged}",
            "# HELP flywheel_retention_deleted_total Log rows and saved inputs deleted by retention.",
            "# TYPE flywheel_retention_deleted_total counter",
            f'flywheel_retention_deleted_total{{what="rows"}} {self.retention_deleted_rows}',
            f'flywheel_retention_deleted_total{{what="payloads"}} {self.retention_deleted_payloads}',
            "# HELP flywheel_unseen_categories_total Inputs holding a category the model never saw, by column.",
            "# TYPE flywheel_unseen_categories_total counter",
            *(f'flywheel_unseen_categories_total{{column="{_esc(c)}"}} {n}'
              for c, n in sorted(self.unseen_by_column.items())),
            "# HELP flywheel_model_info The model version being served.",
            "# TYPE flywheel_model_info gauge",
            f'flywheel_model_info{{version="{_esc(self.version)}",dataset="{_esc(self.dataset)}"}} 1',
        ]

    def _histogram(self) -> list[str]:
        lines = ["# HELP flywheel_request_latency_seconds End-to-end latency of answered prediction requests.",
                 "# TYPE flywheel_request_latency_seconds histogram"]
        for s in sorted(self.buckets):
            b = self.buckets[s]
            n = self.by_source.get(s, 0)
            for le, c in zip(LATENCY_BUCKETS, b):
                lines.append(f'flywheel_request_latency_seconds_bucket{{source="{s}",le="{le:g}"}} {c}')
            lines.append(f'flywheel_request_latency_seconds_bucket{{source="{s}",le="+Inf"}} {n}')
            lines.append(f'flywheel_request_latency_seconds_sum{{source="{s}"}} {self.lat_sum.get(s, 0.0)!r}')
            lines.append(f'flywheel_request_latency_seconds_count{{source="{s}"}} {n}')
        return lines


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_prometheus(text: str) -> dict[str, float]:
    """Parse exposition text into {'name{labels}': value}; raises ValueError on a malformed line (used by tests
    and by anyone scraping without a Prometheus client)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        if not key:
            raise ValueError(f"malformed metrics line: {line!r}")
        out[key] = float(val)
    return out
