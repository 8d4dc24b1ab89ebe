"""What a local model server says about itself: llama.cpp's ``GET /props``.

Why: llama.cpp's ``llama-server`` runs ``total_slots`` requests in parallel (``-np``) and splits its context
``-c`` between them (``default_generation_settings.n_ctx`` is one slot's share).  Requests beyond the slots only
queue, and a prompt longer than a slot's context is refused.  Knowing both up front lets the labeller start its
concurrency search at the slot count and lets the client cap an item's text to what fits, instead of learning
either from timeouts and HTTP 500s.  Other servers (vLLM, Ollama, remote APIs) do not answer ``/props``; then
nothing is known and nothing changes.

``GET /slots`` shows the work in progress (prompt tokens processed, tokens decoded per busy slot).  A CPU server
on a busy machine can slow to seconds per token; the client then keeps waiting while that work advances instead
of hanging up on it at its latency-based timeout (a cancelled request throws the server's half-done work away and
queues it again).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from llm_flywheel.core.scripts import head_within
from llm_flywheel.teachers.base import ServerInfo
from llm_flywheel.teachers.texts import over_limit

PROPS_TIMEOUT = 3.0  # s: a local server answers /props in milliseconds; a slow answer means "does not say"
CHARS_PER_TOKEN = 3  # conservative (English prose is ~4; mail headers, URLs and code are denser)
CONTEXT_MARGIN_TOKENS = 64  # the chat template's own tokens and estimation error
SLOTS_TIMEOUT = 10.0  # s: llama.cpp answers /slots from its main loop, after the batch step in progress (seconds
# on a busy CPU); a slower answer counts as "does not say"


def server_root(base_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port`` (llama.cpp serves /props beside /v1)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def parse_props(data: object) -> ServerInfo:
    """The slots, per-slot context and model file name from a ``/props`` body (``ServerInfo()`` when it has none).
    The file name, not its directory: a model moved to another folder is the same model."""
    if not isinstance(data, dict):
        return ServerInfo()
    slots = data.get("total_slots")
    gen = data.get("default_generation_settings")
    n_ctx = gen.get("n_ctx") if isinstance(gen, dict) else None
    slots = slots if isinstance(slots, int) and slots > 0 else None
    n_ctx = n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
    model_file = file_name(data.get("model_path"))
    if slots is None and n_ctx is None:
        return ServerInfo(model_file=model_file)
    return ServerInfo(slots=slots, n_ctx=n_ctx, source="llama.cpp /props", model_file=model_file)


def read_server_info(base_url: str, headers: dict[str, str] | None = None) -> ServerInfo:
    """Ask the server once; any failure (no such route, not JSON, nothing listening) means "unknown".  Without
    ``/props``, the model file comes from ``/v1/models`` where that lists one GGUF (llama-cpp-python started without
    an alias, which also answers under any name)."""
    try:
        r = httpx.get(f"{server_root(base_url)}/props", headers=headers, timeout=PROPS_TIMEOUT)
        if r.status_code == 200:
            return parse_props(r.json())
        r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=PROPS_TIMEOUT)
        return ServerInfo(model_file=gguf_listed(r.json()) if r.status_code == 200 else None)
    except (httpx.HTTPError, ValueError):
        return ServerInfo()


def gguf_listed(data: object) -> str | None:
    """The file name when a ``/v1/models`` body lists exactly one model and its id is a ``.gguf`` path."""
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or len(models) != 1 or not isinstance(models[0], dict):
        return None
    mid = models[0].get("id")
    return file_name(mid) if isinstance(mid, str) and mid.strip().lower().endswith(".gguf") else None


def file_name(path: object) -> str | None:
    """The last part of a model path, POSIX or Windows (a model moved to another folder is the same model)."""
    if not isinstance(path, str) or not path.strip():
        return None
    return re.split(r"[\\/]", path.strip())[-1] or None


def fit_text(text: str, n_ctx: int, system_chars: int, max_tokens: int) -> tuple[str, str | None]:
    """Cut ``text`` to what fits a slot of ``n_ctx`` tokens beside the instructions and the reply, so a long email
    is answered from its first part instead of refused; ``(text, note)``, the note recorded on the answer as
    ``input_truncated``.  Budget: the context less the instructions, ``max_tokens`` and a margin, at a
    conservative :data:`CHARS_PER_TOKEN` characters per token (a CJK character counted as 4: ``latin_len``)."""
    budget = (n_ctx - system_chars // CHARS_PER_TOKEN - 1 - max_tokens - CONTEXT_MARGIN_TOKENS) * CHARS_PER_TOKEN
    if budget <= 0 or not over_limit(text, budget):
        return text, None
    cut = text[: head_within(text, budget)] + " …[truncated]"
    return cut, (f"input_truncated: the item text was cut from {len(text)} to {len(cut)} characters to fit the "
                 f"server's context ({n_ctx} tokens per slot)")


SlotsFingerprint = tuple[tuple[int, int, int, int], ...]


def parse_slots(data: object) -> SlotsFingerprint | None:
    """What llama.cpp's ``GET /slots`` says each busy slot has done so far: (slot, task, prompt tokens processed,
    tokens decoded); ``()`` when no slot is busy, None when the body is not a slot list.  Two fingerprints that
    differ mean the server advanced between the two looks."""
    if not isinstance(data, list):
        return None
    out = []
    for s in data:
        if not isinstance(s, dict) or not s.get("is_processing"):
            continue
        nt = s.get("next_token")
        first = nt[0] if isinstance(nt, list) and nt and isinstance(nt[0], dict) else nt if isinstance(nt, dict) else {}
        out.append(tuple(int(v) if isinstance(v, (int, float)) else -1 for v in
                         (s.get("id"), s.get("id_task"), s.get("n_prompt_tokens_processed"), first.get("n_decoded"))))
    return tuple(out)


async def slots_fingerprint(base_url: str, headers: dict[str, str] | None = None,
                            verify: Any = True) -> SlotsFingerprint | None:
    """:func:`parse_slots` of the server's ``/slots`` now; None when it does not answer it (``--no-slots``, another
    server).  Its own short-lived connection: the labeller's pool may be full of the very requests being watched
    (``verify``: the caller's SSL context, so each look does not load the CA bundle again)."""
    try:
        async with httpx.AsyncClient(timeout=SLOTS_TIMEOUT, verify=verify) as c:
            r = await c.get(f"{server_root(base_url)}/slots", headers=headers)
        return parse_slots(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
