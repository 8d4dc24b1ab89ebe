"""The Teacher protocol: one plug-in interface for every labeller the wheel can pay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llm_flywheel.store.base import Item
from llm_flywheel.core.task import Task

# The vocabulary of ``TeacherAnswer.error_kind`` (and ``teacher_answers.error_kind``), shared by the client that
# classifies a failure and the labeller / cascade / CLI that decide what to do about it.
#   transient (retried with backoff, then retried next run): http_429, http_5xx, timeout, dropped (a connection
#     that was made and then lost before an answer)
#   per-item, final or re-asked once: parse, off_list, refused, truncated (cut off at max_tokens before a complete
#     label; the client re-asks once with more room and no reason), context_exceeded (the prompt does not fit the
#     server's context; the client shortens the item text once), http_4xx (another client error: the request, not
#     the endpoint, is wrong)
#   an ok answer may carry a note in ``error_detail``: ``recovered_truncated`` (label read from a cut-off reply),
#     ``input_truncated`` (the item text was shortened to fit the context)
#   fatal for the whole run (asking again cannot help; stop early with a message that names the fix):
FATAL_ERROR_KINDS: frozenset[str] = frozenset({
    "connection",   # connection refused (or connect timeout): nothing listens at the URL
    "dns",          # the host name does not resolve
    "auth",         # HTTP 401 / 403: missing or wrong API key (402: the account behind the key cannot pay)
    "not_found",    # HTTP 404: wrong base URL or unknown model
})
TRANSIENT_ERROR_KINDS: frozenset[str] = frozenset({"http_429", "http_5xx", "timeout", "dropped"})


def is_fatal(error_kind: str | None) -> bool:
    """True when every further call to the same endpoint would fail the same way."""
    return error_kind in FATAL_ERROR_KINDS


@dataclass
class TeacherAnswer:
    """One pass of one teacher on one item -- exactly what is stored in ``teacher_answers``.

    ``ok`` is True for a final answer (cached forever, even an off-list one: asking again gives the same);
    False for a failure (network, HTTP, unparseable) that the next run retries.
    """

    item_id: int
    content_hash: str
    model: str
    prompt_version: str
    pass_index: int
    ok: bool
    label: str | None = None
    confidence: float | None = None
    label_logprob: float | None = None
    logprobs: list | None = None
    reason: str | None = None
    raw_text: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    error_kind: str | None = None
    error_detail: str | None = None
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Teacher(Protocol):
    """Labels items for a task.  ``model`` and ``prompt_version`` key the answer cache."""

    model: str
    prompt_version: str

    def label(self, items: Sequence[Item], task: Task, *, pass_index: int = 0) -> list[TeacherAnswer]:
        ...
