"""The simulated teacher's error model: which label it answers for an item and pass, and how sure it says it is.

See the package docstring for the model; this module is pure (no I/O) so benchmarks can use it without a server.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from llm_flywheel.core.task import Task

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
    # Batch API (``/v1/files`` + ``/v1/batches``): seconds from create to completed (validating 10 %, in_progress
    # 80 %, finalizing 10 %); the provider's batch price as a share of the online one (reported in usage.cost);
    # per-line server errors (into the error file); which batches (1 = the first created) expire with half their
    # lines done or fail validation
    batch_latency_s: float = 2.0
    batch_price_ratio: float = 0.5
    batch_line_failure_rate: float = 0.0
    expire_batches: tuple[int, ...] = ()
    fail_batches: tuple[int, ...] = ()
    api_key: str | None = None  # when set, every request must carry "Authorization: Bearer <api_key>" (else 401)

    def __post_init__(self) -> None:
        for name in ("accuracy", "pass_correlation", "malformed_rate", "rate_429", "batch_price_ratio",
                     "batch_line_failure_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SimConfig.{name} must be in [0, 1], got {v}")
        if self.latency_ms < 0 or self.batch_latency_s < 0:
            raise ValueError("SimConfig.latency_ms and batch_latency_s must be >= 0")


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
