"""What an operator can set on the service, checked once at startup (a bad value is a startup error, not a 500)."""

from __future__ import annotations

from dataclasses import dataclass

from llm_flywheel.pipeline.cascade_guard import ON_DEADLINE
from llm_flywheel.teachers.concurrency import fixed_concurrency

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_LOGGED_PAYLOAD_BYTES = 256 * 1024
# which process answered (host:pid): every predict answer carries it as a header and /healthz, /readyz in the body,
# so an operator (and the replica tests) can tell Ray Serve replicas -- or processes behind any load balancer -- apart
REPLICA_HEADER = "X-Flywheel-Replica"


@dataclass(frozen=True)
class ServeConfig:
    """Limits and policies of one serving process.

    Why these defaults: a deferred request gets ``deadline_s`` (3 s) to hear from the teacher, then the student's
    answer flagged ``student_fallback`` (``on_deadline="error"``: HTTP 504); the breaker stops calling a teacher that
    failed ``breaker_failures`` times in a row for ``breaker_cooldown_s``.  Decoding and inference run on
    ``workers`` threads with at most ``queue`` requests waiting (more: 503 with Retry-After); images over
    ``heavy_pixels`` decode on their own single thread so a pixel bomb only ever waits behind other large images.
    Retention (off unless set) deletes served-traffic log rows and saved inputs by age / count / bytes, never the
    rows of store items (the wheel's feedback).  Every ``follow_promoted_s`` the service swaps in a newly promoted
    model (:mod:`.follow`; 0, or a model named at startup, turns that off).  ``teacher_budget_usd`` /
    ``teacher_max_calls`` cap what the teacher is paid / asked in a rolling ``teacher_budget_hours`` window, across
    every process on the store (:mod:`llm_flywheel.pipeline.serve_budget`).  ``teacher_concurrency`` bounds the
    teacher calls this process makes at once (default 4 for a server on the user's own hardware, 16 otherwise).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = 40_000_000
    heavy_pixels: int = 1_000_000
    log_sample_rate: float = 1.0
    max_logged_payload_bytes: int = DEFAULT_MAX_LOGGED_PAYLOAD_BYTES
    workers: int = 2
    queue: int = 64
    heavy_queue: int = 2
    deadline_s: float = 3.0
    on_deadline: str = "fallback"
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    shutdown_grace_s: float = 10.0
    retention_max_age_days: float | None = None
    retention_max_rows: int | None = None
    retention_max_payload_bytes: int | None = None
    retention_interval_s: float = 600.0
    follow_promoted_s: float = 30.0  # how often the service checks for a newly promoted model (0: never)
    seed: int | None = None
    max_batch: int = 64  # inputs in one POST /v1/predict/batch
    teacher_budget_usd: float | None = None  # what the teacher may be paid per window (None: no cap)
    teacher_max_calls: int | None = None  # answers the teacher may be asked for per window (None: no cap)
    teacher_budget_hours: float = 24.0  # the rolling window of both caps
    teacher_concurrency: int | None = None  # teacher calls at once (None: 4 for a local server, else 16)

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.log_sample_rate <= 1.0, f"log_sample_rate must be in [0, 1], got {self.log_sample_rate}"),
            (self.max_bytes > 0 and self.max_logged_payload_bytes >= 0,
             "max_bytes must be > 0 and max_logged_payload_bytes >= 0"),
            (self.max_image_pixels > 0 and self.heavy_pixels > 0, "max_image_pixels and heavy_pixels must be > 0"),
            (self.workers >= 1 and self.queue >= 0 and self.heavy_queue >= 0,
             f"workers must be >= 1 and queue sizes >= 0, got {self.workers}, {self.queue}, {self.heavy_queue}"),
            (self.deadline_s > 0, f"deadline_s must be > 0, got {self.deadline_s}"),
            (self.on_deadline in ON_DEADLINE, f"on_deadline must be one of {ON_DEADLINE}, got {self.on_deadline!r}"),
            (self.breaker_failures >= 1 and self.breaker_cooldown_s > 0,
             "breaker_failures must be >= 1 and breaker_cooldown_s > 0"),
            (self.shutdown_grace_s >= 0, "shutdown_grace_s must be >= 0"),
            (all(v is None or v > 0 for v in (self.retention_max_age_days, self.retention_max_rows,
                                               self.retention_max_payload_bytes)),
             "retention limits must be > 0 (or unset)"),
            (self.retention_interval_s > 0, "retention_interval_s must be > 0"),
            (self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}"),
            (self.teacher_concurrency is None or self.teacher_concurrency >= 1,
             f"teacher_concurrency must be >= 1, got {self.teacher_concurrency}"),
            ((self.teacher_budget_usd is None or self.teacher_budget_usd > 0)
             and (self.teacher_max_calls is None or self.teacher_max_calls >= 1) and self.teacher_budget_hours > 0,
             "teacher_budget_usd must be > 0, teacher_max_calls >= 1 and teacher_budget_hours > 0"),
            (self.follow_promoted_s >= 0, f"follow_promoted_s must be >= 0, got {self.follow_promoted_s}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def retention_on(self) -> bool:
        return any(v is not None for v in (self.retention_max_age_days, self.retention_max_rows,
                                           self.retention_max_payload_bytes))

    @property
    def spend_capped(self) -> bool:
        return self.teacher_budget_usd is not None or self.teacher_max_calls is not None

    def teacher_calls_at_once(self, local: bool) -> int:
        """:attr:`teacher_concurrency`, or its default for a local (``local``) or remote teacher."""
        return fixed_concurrency(local, self.teacher_concurrency)
