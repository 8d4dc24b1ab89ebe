"""The Teacher protocol: one plug-in interface for every labeller the wheel can pay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from llm_flywheel.store.base import Item
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

# The vocabulary of ``TeacherAnswer.error_kind`` (and ``teacher_answers.error_kind``), shared by the client that
# classifies a failure and the labeller / cascade / CLI that decide what to do about it.
#   transient (retried with backoff, then retried next run): http_429, http_5xx, timeout, dropped (a connection
#     that was made and then lost before an answer)
#   per-item, final or re-asked once: parse, off_list, refused (also a content filter declining the input:
#     OpenRouter's moderation 403, OpenAI's content_policy_violation), truncated (cut off at max_tokens before a complete
#     label; the client re-asks once with more room and no reason), context_exceeded (the prompt does not fit the
#     server's context; the client shortens the item text once), http_4xx (another client error: the request, not
#     the endpoint, is wrong)
#   an ok answer may carry a note in ``error_detail``: ``recovered_truncated`` (label read from a cut-off reply),
#     ``input_truncated`` (the item text was shortened to fit the context)
#   fatal for the whole run (asking again cannot help; stop early with a message that names the fix):
FATAL_ERROR_KINDS: frozenset[str] = frozenset({
    "connection",   # connection refused (or connect timeout): nothing listens at the URL
    "dns",          # the host name does not resolve
    "auth",         # HTTP 401 / 403: missing or wrong API key (402: the account behind the key cannot pay;
                    # a 403 naming moderation / a content filter is that item's ``refused``)
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
    served_model: str | None = None  # the response's ``model``: which model the provider says answered
    bought_by: str | None = None  # None: this call; "serve": an answer `flywheel serve` bought, reused (not re-paid)
    extra: dict = field(default_factory=dict)


class CallEstimate(NamedTuple):
    """A rough price of one call before any is made (a tuple, so ``tin, tout, usd = ...`` keeps working)."""

    tokens_in: int
    tokens_out: int
    usd: float | None


@dataclass(frozen=True)
class ServerInfo:
    """What a model server says about its own limits, when it says (llama.cpp's ``/props``).

    Why: a local server runs ``slots`` requests in parallel and queues the rest; asking for more only grows its
    queue until requests time out, so the labeller starts its concurrency search there.  ``n_ctx`` is the context
    *per slot*; the client caps the item text so that a prompt always fits it instead of being refused."""

    slots: int | None = None
    n_ctx: int | None = None  # tokens of context each slot has
    source: str = "unknown"  # "llama.cpp /props", or "unknown" when the server does not say
    model_file: str | None = None  # the file name of the model it serves (llama.cpp serves it under any name)


@runtime_checkable
class TeacherSession(Protocol):
    """One run's open line to a teacher, for one task: what labelling and the cascade call, concurrently.

    Why a session rather than a teacher with mutable ``task`` / ``limiter`` attributes: the same teacher object may
    serve a labelling run and a cascade at once (different tasks, different ``--rpm``); the session owns what is
    per run -- the task, the workspace (capability memory, image files), the rate limiter and the HTTP
    connections -- and closing it releases them.  Safe to call from many coroutines of one event loop.
    Use as ``async with teacher.session(task, ws=ws, rpm=60) as s: ans = await s.alabel(item)``.
    """

    task: Task

    async def alabel(self, item: Item, *, pass_index: int = 0) -> TeacherAnswer:
        """Ask for one stored item's label (pass ``pass_index`` of the diverse passes).  Never raises for provider
        trouble: a failure comes back as an answer with ``ok=False`` and an ``error_kind``."""
        ...

    async def alabel_raw(self, content: Any, *, pass_index: int = 0) -> TeacherAnswer:
        """Ask for an input that is not in the store (served traffic): text, PNG/JPEG bytes or a PIL image."""
        ...

    async def aclose(self) -> None:
        """Close the session's connections (idempotent)."""
        ...

    async def __aenter__(self) -> TeacherSession: ...

    async def __aexit__(self, *exc: object) -> None: ...


@runtime_checkable
class Teacher(Protocol):
    """Labels items for a task: the one plug-in interface for every labeller the wheel can pay.

    ``model`` and :meth:`prompt_version_for` key the answer cache (a changed prompt is a new version, so old answers
    are never reused for it).  Labelling and the cascade are written against this protocol only; the OpenAI-compatible
    client (and the simulated teacher, reached through it) implements it, and so can any future provider.
    """

    model: str
    base_url: str  # where the answers come from: printed, stored in run records and fatal-error messages
    local: bool  # on the user's own hardware: start concurrency low, no token prices
    timeout: float  # the cap (s) on one request's wait; the concurrency controller reads latency against it
    text_max_chars: int  # the most characters of a text it is sent (0: whole texts); plans and budgets price with it

    @property
    def is_simulated(self) -> bool:
        """True for the simulated teacher: every printout and report must say so."""
        ...

    @property
    def display_name(self) -> str:
        """``model @ base_url`` plus a SIMULATED tag where it applies, for printouts."""
        ...

    def prompt_version_for(self, task: Task) -> str:
        """The cache key of the prompt this teacher would send for ``task``."""
        ...

    def check_ready(self) -> None:
        """Raise ``TeacherConfigError`` (naming the fix) before any call when the teacher cannot work, e.g. a
        missing API key.  A local server may be asked for its limits here (:meth:`server_info`), so a run can
        start at its slot count."""
        ...

    def server_info(self) -> ServerInfo:
        """The server's own limits (parallel slots, context per slot) when it publishes them; asked once and
        remembered.  Never raises: ``ServerInfo()`` when unknown."""
        ...

    def estimate_call(self, task: Task, modality: str | None = None, text_len: int = 0) -> CallEstimate:
        """Rough tokens and USD for one call, before any is made (the budget's first guess); ``text_len`` is the
        text's length as sent, in Latin-character equivalents (``core.scripts.latin_len``)."""
        ...

    def session(self, task: Task, *, ws: Workspace | None = None, rpm: float | None = None) -> TeacherSession:
        """Open a session for ``task``: ``ws`` is where capabilities are remembered and image files are read,
        ``rpm`` caps request starts per minute for this session (retries count)."""
        ...

    def label(self, items: Sequence[Item], task: Task, *, pass_index: int = 0) -> list[TeacherAnswer]:
        """Synchronous convenience: every item once, no answer cache (the labeller adds caching and budgets)."""
        ...
