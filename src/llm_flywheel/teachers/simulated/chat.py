"""The simulated teacher's ``/v1/chat/completions``: one request body in, one OpenAI-style reply out.

Shared by the online endpoint and the Batch API (each batch line is a chat-completions body), so a batched answer
is exactly the answer the same request gets online -- only its price differs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from typing import Any

from llm_flywheel.core.scripts import latin_len
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.simulated.errors import ErrorModel, SimConfig, variant_key


def text_key(text: str) -> str:
    """How the simulator recognises a text it is sent (a row of numbers arrives as text too)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _extract_content(messages: Any) -> tuple[str | None, str, str]:
    """(content hash, system prompt, all prompt text) from an OpenAI-style messages list."""
    system, texts, h = "", [], None
    user_text_parts: list[str] = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if m.get("role") == "system" and isinstance(c, str):
            system += c
            texts.append(c)
            continue
        if isinstance(c, str):
            texts.append(c)
            if m.get("role") == "user":
                user_text_parts.append(c)
        elif isinstance(c, list):
            for part in c:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    mt = re.match(r"data:[^;,]*;base64,(.*)$", url, re.DOTALL)
                    if mt:
                        try:
                            h = hashlib.sha256(base64.b64decode(mt.group(1))).hexdigest()
                        except (ValueError, TypeError):
                            h = None
                elif part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
    if h is None and user_text_parts:
        h = text_key(user_text_parts[-1])
    return h, system, "\n".join(texts)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|\s+|[^\w\s]", text)


def _error(message: str, status: int) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}


class ChatSim:
    """Answers chat-completions bodies from gold labels through the :class:`ErrorModel`; counts every request
    per (item, pass variant) so tests can prove nothing is asked twice."""

    def __init__(self, task: Task, gold: dict[str, str | None], cfg: SimConfig, model: str,
                 aliases: dict[str, str] | None = None) -> None:
        self.cfg, self.gold, self.model = cfg, gold, model
        self.aliases = aliases or {}  # hash of a scaled-down image or a cut text as sent -> its item's content hash
        self.em = ErrorModel(task, cfg)
        self.noise = random.Random(cfg.seed + 1)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.stats: dict[str, int] = {"requests": 0, "completions": 0, "status_429": 0, "malformed": 0,
                                      "unknown_items": 0, "batches_created": 0, "batch_lines": 0}

    def draw(self) -> tuple[float, float, float]:
        """(429 draw, malformed draw, latency z) for one online request."""
        with self.lock:
            return self.noise.random(), self.noise.random(), self.noise.gauss(0, 1)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    def arrive(self, body: Any) -> tuple[str, str, str] | tuple[int, dict[str, Any]]:
        """Count one request (per item and pass variant, on arrival as a server log would); (content hash, variant,
        prompt text), or (status, error reply) for a body that cannot be answered."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error("'messages' is required", 400)
        h, system, prompt_text = _extract_content(body["messages"])
        h = self.aliases.get(h, h) if h is not None else None
        variant = variant_key(body.get("temperature", 1.0), system)
        with self.lock:
            self.stats["requests"] += 1
            self.counts[f"{h}:{variant}"] += 1
        if h is None:
            return _error("no image or text content in messages", 400)
        return h, variant, prompt_text

    def complete(self, body: Any, r_bad: float, *, price_ratio: float = 1.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON reply) for one chat-completions body; ``r_bad`` < malformed_rate spoils the reply;
        ``price_ratio`` scales the reported ``usage.cost`` (the Batch API's discount)."""
        req = self.arrive(body)
        if isinstance(req[0], int):
            return req  # type: ignore[return-value]
        return self.answer(body, req, r_bad, price_ratio=price_ratio)  # type: ignore[arg-type]

    def answer(self, body: dict[str, Any], req: tuple[str, str, str], r_bad: float, *,
               price_ratio: float = 1.0) -> tuple[int, dict[str, Any]]:
        """The reply to a request that :meth:`arrive` accepted."""
        h, variant, prompt_text = req
        g = self.gold.get(h)
        if g is None:
            self.count("unknown_items")
        label, conf, p_label, _correct = self.em.answer(h, g, variant)
        content = self._content(body, h, variant, label, conf, g is not None, r_bad)
        n_images = sum(
            1 for m in body["messages"] if isinstance(m, dict) and isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")
        tin = max(1, latin_len(prompt_text) // 4) + self.cfg.image_tokens * n_images  # a CJK character ~ a token
        tout = max(1, latin_len(content) // 4)
        cost = (tin * self.cfg.input_per_mtok + tout * self.cfg.output_per_mtok) / 1e6 * price_ratio
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": _logprobs(content, label, p_label)}
        self.count("completions")
        return 200, {
            "id": f"simcmpl-{h[:8]}-{variant}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout, "cost": cost},
        }

    def _content(self, body: dict[str, Any], h: str, variant: str, label: str, conf: float, known: bool,
                 r_bad: float) -> str:
        reason = f"looks like a {label.replace('_', ' ')}" + ("" if known else " (item unknown to simulator)")
        obj = json.dumps({"label": label, "confidence": conf, "reason": reason})
        rf = body.get("response_format")
        rf = rf.get("type") if isinstance(rf, dict) else None
        if r_bad < self.cfg.malformed_rate:
            self.count("malformed")
            return obj[: len(obj) // 2] if r_bad < self.cfg.malformed_rate / 2 else "I believe it is a piece of clothing."
        if rf in ("json_schema", "json_object"):
            return obj
        # no structured output requested: answer like a chatty model would
        style = int(hashlib.sha256(f"{h}{variant}style".encode()).hexdigest(), 16) % 10
        return f"```json\n{obj}\n```" if style < 3 else (f"Here is my answer: {obj}" if style < 5 else obj)


def _logprobs(content: str, label: str, p_label: float) -> list[dict[str, Any]]:
    """Token log-probabilities: the label's tokens share log(p_label), every other token is near-certain."""
    toks = _tokens(content)
    lab_toks = set()
    pos = content.find(label)
    if pos >= 0:
        off = 0
        for i, t in enumerate(toks):
            if off + len(t) > pos and off < pos + len(label):
                lab_toks.add(i)
            off += len(t)
    share = math.log(max(p_label, 1e-6)) / max(1, len(lab_toks))
    return [{"token": t, "logprob": share if i in lab_toks else -0.0005, "top_logprobs": []}
            for i, t in enumerate(toks)]
