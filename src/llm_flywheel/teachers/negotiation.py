"""Capability negotiation: which structured-output mode (and logprobs) an endpoint accepts, found once.

Why: servers refuse structured output in different ways -- a 400 or 422 (OpenAI-style), a 500 whose body names
``response_format`` (llama-cpp-python's server), or a 200 whose reply is prose (the format silently ignored).  The
client walks ``json_schema`` -> llama.cpp's native ``{"type": "json_object", "schema": ...}`` -> ``json_object`` ->
plain prompting.  While the mode is not yet confirmed, one request probes and the others wait on it (so
concurrency 32 does not send 32 refused requests); every downgrade is compare-and-set on the mode the refused
request was *sent* with, so in-flight refusals of one mode downgrade it exactly once.  What worked is remembered in
the workspace store (``teacher_capabilities``, through the store's named methods) and the next run starts there;
:meth:`Negotiation.forget_capabilities` starts over.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Protocol

from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.prompts import RESPONSE_FORMAT_MODES

log = logging.getLogger(__name__)

PROBE_GIVE_UP = 3  # probe calls that end without an answer before the others stop waiting for one


MAX_REASONING_ROOM = 16_384  # tokens: the most room a reasoning model is given for thinking plus its answer

class CapabilityCache(Protocol):
    """Where a teacher remembers what an endpoint accepted.  Any object with these three methods will do."""

    def get(self, base_url: str, model: str) -> dict[str, Any] | None: ...

    def put(self, base_url: str, model: str, caps: dict[str, Any]) -> None: ...

    def forget(self, base_url: str, model: str) -> None: ...


class StoreCapabilityCache:
    """Capabilities kept in a workspace's ``flywheel.db`` (table ``teacher_capabilities``).

    Opens the store for each (rare) read or write, so it is safe from any thread; a record older than
    ``max_age_s`` is ignored, so a server that was upgraded is asked for the better modes again in time.
    """

    def __init__(self, ws: Workspace, *, max_age_s: float = 30 * 86400.0) -> None:
        self.ws = ws
        self.max_age_s = max_age_s

    def get(self, base_url: str, model: str) -> dict[str, Any] | None:
        with self.ws.store() as s:
            caps = s.teacher_capability(base_url, model)
        if caps is None or time.time() - float(caps.get("updated_at") or 0.0) > self.max_age_s:
            return None
        return caps

    def put(self, base_url: str, model: str, caps: dict[str, Any]) -> None:
        with self.ws.store() as s:
            s.set_teacher_capability(base_url, model, caps)

    def forget(self, base_url: str, model: str) -> None:
        with self.ws.store() as s:
            s.forget_teacher_capability(base_url, model)


class Negotiation:
    """The negotiation state of a teacher (mixed into :class:`~llm_flywheel.teachers.openai_compat.OpenAICompatTeacher`).

    The attributes live on the teacher itself (``response_format``, ``logprobs``, ``schema_max_length``,
    ``negotiation``, ``capabilities_source``) because they describe the endpoint, which every session shares.
    ``_lock`` guards them, ``_gate`` lets one probe through while the mode is unconfirmed."""

    base_url: str
    model: str
    display_name: str
    response_format: str
    logprobs: bool
    local: bool
    confidence: bool | None
    max_tokens: int
    _is_llama_cpp: Any

    def _init_negotiation(self, response_format: str, logprobs: bool, cache_arg: Any, workspace: Workspace | None) -> None:
        self._remember = response_format == "auto"
        self.response_format = "json_schema" if response_format == "auto" else response_format  # current mode
        self.logprobs = logprobs
        self.schema_max_length = True  # False once a server refuses the maxLength keyword
        self.top_logprobs = True  # False once a server refuses the alternatives (some cap them at 5) but not logprobs
        self.legacy_max_tokens = True  # False: the model wants max_completion_tokens (OpenAI's reasoning models)
        self.temperature = True  # False: the model takes only its default temperature (passes differ by wording)
        self.workspace = workspace
        self._lock = threading.Lock()
        self._cache_arg = cache_arg
        self._cache: CapabilityCache | None = cache_arg if cache_arg not in (None, True, False) else None
        self._loaded = False
        self._confirmed = False
        self._gate = threading.Lock()
        self._gate_open = False
        self._probe_failures = 0
        self.negotiation: list[dict[str, Any]] = []  # every downgrade this object made: {"from", "to", "why"}
        self._remembered_downgrades: list[dict[str, Any]] = []  # those of earlier runs, kept in the record
        self.capabilities_source = "default"  # "memory" when the run started from a remembered record

    def capabilities(self) -> dict[str, Any]:
        """What this endpoint is known to accept now (the record kept in the capability memory)."""
        return {"response_format": self.response_format, "logprobs": self.logprobs,
                "schema_max_length": self.schema_max_length, "top_logprobs": self.top_logprobs,
                "legacy_max_tokens": self.legacy_max_tokens, "temperature": self.temperature,
                "downgrades": (self._remembered_downgrades + list(self.negotiation))[-20:]}

    def _attach_cache(self, ws: Workspace | None) -> None:
        if self._cache is None and self._cache_arg is None and self._remember:
            root = ws or self.workspace
            if root is not None:
                self._cache = StoreCapabilityCache(root)

    def _load_capabilities(self) -> None:
        """Start from what worked last time for this (base_url, model) -- once per teacher object."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
        if not self._remember or self._cache is None:
            return
        try:
            caps = self._cache.get(self.base_url, self.model)
        except Exception as e:  # a memory that cannot be read costs a renegotiation, never a failed call
            log.warning("could not read teacher capabilities (%s); negotiating afresh", type(e).__name__)
            return
        if not caps or caps.get("response_format") not in RESPONSE_FORMAT_MODES:
            return
        with self._lock:
            self.response_format = caps["response_format"]
            self.logprobs = bool(caps.get("logprobs", self.logprobs)) and self.logprobs
            self.schema_max_length = bool(caps.get("schema_max_length", True))
            self.top_logprobs = bool(caps.get("top_logprobs", True))
            self.legacy_max_tokens = bool(caps.get("legacy_max_tokens", True))
            self.temperature = bool(caps.get("temperature", True))
            self._remembered_downgrades = [d for d in caps.get("downgrades") or [] if isinstance(d, dict)]
            self.capabilities_source = "memory"
        log.info("%s: starting from remembered response_format=%s", self.display_name, self.response_format)

    def _save_capabilities(self) -> None:
        if not self._remember or self._cache is None:
            return
        try:
            self._cache.put(self.base_url, self.model, self.capabilities())
        except Exception as e:
            log.warning("could not store teacher capabilities (%s)", type(e).__name__)

    def forget_capabilities(self) -> None:
        """Forget what this (base_url, model) accepted -- in memory and in the store -- and negotiate again from
        ``json_schema`` on the next call (for a server that was upgraded or replaced)."""
        with self._lock:
            self.response_format = "json_schema"
            self.schema_max_length = True
            self.legacy_max_tokens = self.temperature = True
            self._confirmed = False
            self._gate_open = False
            self._probe_failures = 0
            self._loaded = True
            self.negotiation.clear()
            self._remembered_downgrades = []
            self.capabilities_source = "default"
        if self._cache is not None:
            try:
                self._cache.forget(self.base_url, self.model)
            except Exception as e:
                log.warning("could not forget teacher capabilities (%s)", type(e).__name__)

    def _trust_format(self) -> None:
        """Send concurrently from the first request: the server said what it is (llama.cpp's ``/props``), and
        llama.cpp takes ``json_schema`` and ``grammar``.  Queueing every request behind one probe would idle all
        but one of its slots for a whole call -- on a CPU server, a minute.  A refusal still downgrades (once)."""
        with self._lock:
            if not self._confirmed:
                self._gate_open = True

    def _passable(self) -> bool:
        return self._confirmed or self._gate_open

    async def _enter_gate(self) -> bool:
        """Wait until the mode is confirmed, or become the one probe.  True when this call now holds the gate."""
        while not self._passable():
            if self._gate.acquire(blocking=False):
                if self._passable():
                    self._gate.release()
                    return False
                return True
            await asyncio.sleep(0.02)  # a thread lock, polled: the teacher may be shared by several event loops
        return False

    def _leave_gate(self) -> None:
        with self._lock:
            if not self._confirmed:
                self._probe_failures += 1
                if self._probe_failures >= PROBE_GIVE_UP and not self._gate_open:
                    self._gate_open = True  # the server fails for other reasons: stop queueing behind probes
                    log.info("%s: %d probes got no answer; sending concurrently with response_format=%s",
                             self.display_name, self._probe_failures, self.response_format)
        self._gate.release()

    def _asks_confidence(self, logprobs: bool) -> bool:
        """Whether the schema asks for a stated confidence: yes, but not from llama.cpp's own server while logprobs
        are on -- its label probability is read from them (a better signal), and on a CPU the number was a third of
        what it decoded (``prompts.response_schema``).  ``confidence=`` given to the teacher decides instead."""
        if self.confidence is not None:
            return bool(self.confidence)
        return not (logprobs and self.local and self._is_llama_cpp())

    def _confirm(self, mode: str, logprobs: bool) -> None:
        with self._lock:
            if self._confirmed or self.response_format != mode or self.logprobs != logprobs:
                return
            self._confirmed = True
            self._probe_failures = 0
            self._gate_open = False
        log.info("%s: response_format=%s works (logprobs %s)", self.display_name, mode, "on" if logprobs else "off")
        self._save_capabilities()

    def _downgrade(self, sent_mode: str, why: str) -> bool:
        """Step down from ``sent_mode`` -- only if that is still the mode (compare-and-set): many in-flight
        requests refused for the same mode downgrade it once.  True when this call did the step."""
        with self._lock:
            if self.response_format != sent_mode or sent_mode == "none":
                return False
            nxt = RESPONSE_FORMAT_MODES[RESPONSE_FORMAT_MODES.index(sent_mode) + 1]
            self.response_format = nxt
            self._confirmed = False
            self._gate_open = False
            self._probe_failures = 0
            self.negotiation.append({"from": sent_mode, "to": nxt, "why": why[:200]})
        log.info("%s: response_format=%s refused (%s); trying %s", self.display_name, sent_mode, why[:120], nxt)
        return True

    def _drop_flag(self, name: str, why: str) -> bool:
        """Compare-and-set for ``logprobs`` / ``top_logprobs`` / ``schema_max_length`` / ``legacy_max_tokens`` /
        ``temperature``: turn it off once."""
        with self._lock:
            if not getattr(self, name):
                return False
            setattr(self, name, False)
            self._confirmed = False
            self._gate_open = False
            self._probe_failures = 0
            self.negotiation.append({"from": f"{name}=on", "to": f"{name}=off", "why": why[:200]})
        log.info("%s: server refused %s; asking without it", self.display_name, name)
        return True

    def _learn_room(self: Any, room: int, thought: int) -> bool:
        """A reasoning model spent ``thought`` hidden tokens and was cut off at ``max_tokens``: every later call
        (online and in batches) starts with ``room``, instead of paying for a cut-off reply first each time.
        Warns each time it raises the room, with what the model thought.  True when this call raised it."""
        with self._lock:
            if room <= self.max_tokens:
                return False
            first, self.max_tokens = self.max_tokens, room
            self.negotiation.append({"from": f"max_tokens={first}", "to": f"max_tokens={room}",
                                     "why": f"a reasoning model used {thought} reasoning tokens and was cut off"})
        log.warning("%s thinks before it answers (%d reasoning tokens, billed as output) and was cut off at "
                    "max_tokens=%d: asking with %d from now on. A lower reasoning effort, where the provider offers "
                    "one, makes each label cheaper", self.display_name, thought, first, room)
        return True
