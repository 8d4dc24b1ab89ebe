"""A SIMULATED teacher: an OpenAI-compatible HTTP server that answers from the dataset's gold labels through an
explicit error model.

Why it exists: no vision LLM can be reached offline, yet the whole wheel (labelling, budgets, retries, cascade,
cost planning) must be exercised end to end.  The simulated teacher is used through the very same
:class:`~llm_flywheel.teachers.openai_compat.OpenAICompatTeacher` client as a real one, over real HTTP on
127.0.0.1.  Its model id starts with ``simulated/`` so every printout and report can say plainly that results
come from it.  Its accuracy is a *parameter* (default about 85 %), not a finding.

Error model (deterministic where a real LLM would be):

* it recognises an item by the sha256 of the image bytes / text it receives (the store's ``content_hash``);
* per-class error rates concentrated on look-alike classes (Fashion-MNIST: shirt / T-shirt / pullover / coat /
  dress, sneaker / sandal / ankle boot); other tasks get a neighbour confusion over the label list;
* correlated errors: a latent "difficulty" per item plus a per-pass draw keyed on (content hash, temperature,
  system prompt), so identical calls repeat their answer, diverse passes can differ, and hard items err on
  every pass more often than independent passes would;
* over-confident verbalised confidence (0.80-0.99 even when wrong, only weakly related to being right: a
  noisy function of the same margin as the logprobs below), ~1 % malformed replies and ~1 % 429s with
  ``Retry-After`` (random per request, like the real thing), lognormal latency, realistic token usage and a
  ``usage.cost`` priced like Gemini 2.5 Flash via OpenRouter;
* token log-probabilities when asked, behaving like a real model's: the label's probability follows the answer's
  *margin* -- how far the item's latent score lies from the point where the model would switch to the look-alike
  -- ``logit p = logprob_sharpness x |margin| + noise``.  Near the boundary a pass is torn (p ~ 0.5, right or
  wrong); far from it, sure (p > 0.99) -- and sure also when far on the wrong side (confidently wrong items
  exist).  So p is informative but no copy of gold, and mildly over-confident, as real logprobs are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

# relative difficulty and look-alike confusions for Fashion-MNIST (rows sum to 1)
FASHION_DIFFICULTY = {
    "shirt": 3.5, "t_shirt_top": 1.2, "pullover": 1.4, "coat": 1.4, "dress": 1.0,
    "trouser": 0.2, "bag": 0.3, "sandal": 0.7, "sneaker": 0.8, "ankle_boot": 0.7,
}
FASHION_CONFUSION = {
    "shirt": {"t_shirt_top": 0.4, "pullover": 0.25, "coat": 0.25, "dress": 0.1},
    "t_shirt_top": {"shirt": 0.6, "dress": 0.2, "pullover": 0.2},
    "pullover": {"coat": 0.45, "shirt": 0.35, "t_shirt_top": 0.2},
    "coat": {"pullover": 0.5, "shirt": 0.3, "dress": 0.2},
    "dress": {"coat": 0.4, "shirt": 0.3, "t_shirt_top": 0.3},
    "trouser": {"dress": 1.0},
    "bag": {"pullover": 0.4, "shirt": 0.3, "sandal": 0.3},
    "sandal": {"sneaker": 0.6, "ankle_boot": 0.4},
    "sneaker": {"sandal": 0.6, "ankle_boot": 0.4},
    "ankle_boot": {"sneaker": 0.5, "sandal": 0.5},
}


@dataclass
class SimConfig:
    """Knobs of the error model.  ``latency_ms`` is the median of a lognormal (0 = answer at once)."""

    accuracy: float = 0.85
    pass_correlation: float = 0.6
    malformed_rate: float = 0.01
    rate_429: float = 0.01
    retry_after_s: float = 1.0
    latency_ms: float = 200.0
    latency_sigma: float = 0.35
    seed: int = 0
    input_per_mtok: float = 0.30  # Gemini 2.5 Flash via OpenRouter, USD per million tokens
    output_per_mtok: float = 2.50
    image_tokens: int = 258
    logprob_sharpness: float = 2.5  # logit of the label probability per unit of latent margin
    logprob_noise: float = 0.4  # sd of the per-pass noise on that logit
    model: str | None = None
    class_accuracy: dict[str, float] = field(default_factory=dict)  # overrides per class

    def __post_init__(self) -> None:
        for name in ("accuracy", "pass_correlation", "malformed_rate", "rate_429"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SimConfig.{name} must be in [0, 1], got {v}")
        if self.latency_ms < 0:
            raise ValueError("SimConfig.latency_ms must be >= 0")


def model_id(dataset: str, config: SimConfig | None = None) -> str:
    return (config.model if config and config.model else None) or f"simulated/{dataset}-teacher"


class ErrorModel:
    """Deterministic answer for (item, pass variant): which label and how confident."""

    def __init__(self, task: Task, config: SimConfig) -> None:
        self.task, self.cfg = task, config
        labels = list(task.labels)
        if set(labels) == set(FASHION_DIFFICULTY):
            w = FASHION_DIFFICULTY
            conf = {k: dict(v) for k, v in FASHION_CONFUSION.items()}
        else:
            w = {lab: 1.0 for lab in labels}
            n = len(labels)
            conf = {}
            for i, lab in enumerate(labels):
                nb = {labels[(i - 1) % n]: 0.5, labels[(i + 1) % n]: 0.5} if n > 2 else {labels[1 - i]: 1.0}
                conf[lab] = nb
        mean_w = sum(w.values()) / len(w)
        self.class_acc = {lab: min(0.999, max(0.0, 1.0 - (1.0 - config.accuracy) * w[lab] / mean_w)) for lab in labels}
        self.class_acc.update({k: v for k, v in config.class_accuracy.items() if k in self.class_acc})
        self.confusion = conf

    def _rng(self, *key: Any) -> random.Random:
        h = hashlib.sha256(json.dumps([self.cfg.seed, *key]).encode()).digest()
        return random.Random(int.from_bytes(h[:8], "big"))

    def answer(self, content_hash: str, gold: str | None, variant: str) -> tuple[str, float, float, bool]:
        """(label, verbalised confidence, label probability for logprobs, correct?)."""
        item_rng = self._rng("item", content_hash)
        pass_rng = self._rng("pass", content_hash, variant)
        labels = list(self.task.labels)
        if gold is None or gold not in labels:  # unknown input: a plausible guess, still over-confident
            lab = labels[item_rng.randrange(len(labels))]
            return lab, round(0.7 + 0.25 * pass_rng.random(), 2), 0.4, False
        g_item, g_pass = item_rng.gauss(0, 1), pass_rng.gauss(0, 1)
        rho = self.cfg.pass_correlation
        z = math.sqrt(rho) * g_item + math.sqrt(1 - rho) * g_pass
        acc = self.class_acc[gold]
        wrong = acc < 1.0 and (acc <= 0.0 or z > NormalDist().inv_cdf(acc))
        threshold = NormalDist().inv_cdf(min(max(acc, 1e-6), 1 - 1e-6))
        # its own stream, so labels and verbalised confidences stay exactly what they were before logprobs had a model
        margin = abs(threshold - z)
        p_label = self._label_probability(margin, self._rng("logprob", content_hash, variant))
        conf = self._verbalised(margin, self._rng("verbalised", content_hash, variant))
        pass_rng.random()  # the draw that once set the confidence: kept so that labels stay exactly as before
        if not wrong:
            return gold, conf, p_label, True
        row = self.confusion.get(gold) or {lab: 1.0 for lab in labels if lab != gold}
        choices, weights = zip(*row.items())
        rng = item_rng if pass_rng.random() < 0.7 else pass_rng  # mostly the item's own look-alike
        lab = rng.choices(choices, weights)[0]
        return lab, conf, p_label, False

    def _verbalised(self, margin: float, rng: random.Random) -> float:
        """The stated confidence: 0.80-0.99 whatever the answer, only weakly tied to the margin (stated
        confidences of LLMs rank right above wrong answers far worse than token probabilities do)."""
        x = 0.6 * margin + 1.0 * rng.gauss(0, 1) + 0.8
        return round(0.80 + 0.19 / (1.0 + math.exp(-x)), 2)

    def _label_probability(self, margin: float, rng: random.Random) -> float:
        """The answered label's token probability: a logistic function of the distance to the decision boundary
        plus per-pass noise (see the module docstring); in [0.3, 0.9999]."""
        logit = self.cfg.logprob_sharpness * margin + self.cfg.logprob_noise * rng.gauss(0, 1)
        return min(0.9999, max(0.3, 1.0 / (1.0 + math.exp(-logit))))


def variant_key(temperature: Any, system: str) -> str:
    """What makes two calls on the same item "the same call" for the simulator: temperature + system prompt."""
    return hashlib.sha256(f"{temperature}|{system}".encode()).hexdigest()[:12]


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
                    mt = re.match(r"data:[^;,]*;base64,(.*)$", url, re.S)
                    if mt:
                        try:
                            h = hashlib.sha256(base64.b64decode(mt.group(1))).hexdigest()
                        except (ValueError, TypeError):
                            h = None
                elif part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
    if h is None and user_text_parts:
        h = hashlib.sha256(user_text_parts[-1].encode("utf-8")).hexdigest()
    return h, system, "\n".join(texts)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|\s+|[^\w\s]", text)


def simulated_app(ws: Workspace, dataset: str, config: SimConfig | None = None) -> FastAPI:
    """FastAPI app with OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` (plus ``/v1/_stats``:
    requests per item/pass key, used by tests and benchmarks to prove nothing is asked twice)."""
    cfg = config or SimConfig()
    store = ws.store(readonly=True)
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        gold = {r["content_hash"]: r["gold_label"] for r in store.query(
            "SELECT content_hash, gold_label FROM items WHERE dataset=?", (dataset,))}
    finally:
        store.close()
    if not any(gold.values()):
        raise ValueError(f"dataset {dataset!r} has no gold labels; the simulated teacher needs them")
    em = ErrorModel(task, cfg)
    mid = model_id(dataset, cfg)
    noise = random.Random(cfg.seed + 1)
    lock = threading.Lock()
    counts: Counter[str] = Counter()
    stats = {"requests": 0, "completions": 0, "status_429": 0, "malformed": 0, "unknown_items": 0}

    app = FastAPI(title=f"SIMULATED teacher for {dataset}", docs_url=None, redoc_url=None)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": mid, "object": "model", "owned_by": "llm-flywheel-simulated"}]}

    @app.get("/v1/_stats")
    async def get_stats() -> dict[str, Any]:
        with lock:
            return {**stats, "per_key": dict(counts), "model": mid, "simulated": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, ValueError):
            return JSONResponse({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse({"error": {"message": "'messages' is required", "type": "invalid_request_error"}}, 400)
        h, system, prompt_text = _extract_content(body["messages"])
        variant = variant_key(body.get("temperature", 1.0), system)
        with lock:
            stats["requests"] += 1
            counts[f"{h}:{variant}"] += 1
            r_429, r_bad, lat_z = noise.random(), noise.random(), noise.gauss(0, 1)
        if cfg.latency_ms > 0:
            await asyncio.sleep(cfg.latency_ms / 1000.0 * math.exp(cfg.latency_sigma * lat_z))
        if r_429 < cfg.rate_429:
            with lock:
                stats["status_429"] += 1
            return JSONResponse({"error": {"message": "Rate limit exceeded (simulated)", "code": 429}}, 429,
                                headers={"Retry-After": f"{cfg.retry_after_s:g}"})
        if h is None:
            return JSONResponse({"error": {"message": "no image or text content in messages"}}, 400)
        g = gold.get(h)
        if g is None:
            with lock:
                stats["unknown_items"] += 1
        label, conf, p_label, _correct = em.answer(h, g, variant)
        reason = f"looks like a {label.replace('_', ' ')}" + ("" if g is not None else " (item unknown to simulator)")
        obj = json.dumps({"label": label, "confidence": conf, "reason": reason})
        rf = (body.get("response_format") or {}).get("type") if isinstance(body.get("response_format"), dict) else None
        if r_bad < cfg.malformed_rate:
            with lock:
                stats["malformed"] += 1
            content = obj[: len(obj) // 2] if r_bad < cfg.malformed_rate / 2 else "I believe it is a piece of clothing."
        elif rf in ("json_schema", "json_object"):
            content = obj
        else:  # no structured output requested: answer like a chatty model would
            style = int(hashlib.sha256(f"{h}{variant}style".encode()).hexdigest(), 16) % 10
            content = f"```json\n{obj}\n```" if style < 3 else (f"Here is my answer: {obj}" if style < 5 else obj)
        n_images = sum(
            1 for m in body["messages"] if isinstance(m, dict) and isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")
        tin = max(1, len(prompt_text) // 4) + cfg.image_tokens * n_images
        tout = max(1, len(content) // 4)
        cost = (tin * cfg.input_per_mtok + tout * cfg.output_per_mtok) / 1e6
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}
        if body.get("logprobs"):
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
            choice["logprobs"] = {"content": [
                {"token": t, "logprob": share if i in lab_toks else -0.0005, "top_logprobs": []}
                for i, t in enumerate(toks)]}
        with lock:
            stats["completions"] += 1
        return Response(json.dumps({
            "id": f"simcmpl-{h[:8] if h else 'x'}-{variant}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": mid,
            "choices": [choice],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout, "cost": cost},
        }), media_type="application/json")  # pre-encoded: FastAPI's generic encoder is slow on nested dicts

    app.state.sim_model = mid
    app.state.sim_stats = stats
    app.state.sim_counts = counts
    return app


@contextmanager
def serve_app(app: Any, *, port: int = 0, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread on loopback; yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the simulated teacher listens on loopback only")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the simulated teacher server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(timeout=10)
        sock.close()


@contextmanager
def run_simulated_teacher(ws: Workspace, dataset: str, config: SimConfig | None = None, *,
                          port: int = 0) -> Iterator[str]:
    """Start the simulated teacher on 127.0.0.1 (``port=0``: any free port); yields its base URL ``.../v1``.

    Use it with ``teacher_from_spec(f"{url}|{model_id(dataset)}", task, api_key_env="")``.
    """
    app = simulated_app(ws, dataset, config)
    with serve_app(app, port=port) as root:
        yield f"{root}/v1"


def sim_stats(base_url: str) -> dict[str, Any]:
    """Fetch the simulated server's request counters (``/v1/_stats``)."""
    import httpx

    return httpx.get(f"{base_url.rstrip('/')}/_stats", timeout=10).json()
