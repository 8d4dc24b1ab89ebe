"""Small synthetic data for the examples (no download): support tickets and tiny images.

Why synthetic: the examples must run offline in a few seconds, and the SIMULATED teacher needs the correct answers
(``y``) to play an LLM with a known accuracy.  Nothing here is used by the library itself.
"""

from __future__ import annotations

import random

import numpy as np

TOPICS = {
    "billing": ["invoice", "refund", "charged twice", "payment", "price", "receipt", "subscription fee"],
    "hardware": ["printer", "laptop", "screen", "keyboard", "battery", "mouse", "docking station"],
    "account": ["password", "login", "username", "two-factor code", "locked out", "email address", "profile"],
}
FILLER = ["my", "the", "is", "not", "working", "please", "help", "again", "since", "yesterday", "urgent", "still",
          "broken", "why", "can you", "check", "today"]


def tickets(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` short support tickets and their true topic."""
    rng = random.Random(seed)
    texts, topics = [], []
    for i in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = rng.sample(TOPICS[topic], 2) + rng.sample(FILLER, 5)
        if rng.random() < 0.3:  # a mention of another topic makes some tickets ambiguous
            words.append(rng.choice(TOPICS[rng.choice([t for t in TOPICS if t != topic])]))
        rng.shuffle(words)
        texts.append(f"{' '.join(words)} (ticket {seed}-{i})")
        topics.append(topic)
    return texts, topics


SHAPES = ("square", "cross", "ring")


def shapes(n: int, size: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """``n`` small noisy grayscale images of a square, a cross or a ring, and which one each is."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    r = np.hypot(yy - c, xx - c)
    masks = {"square": (abs(yy - c) < size / 3) & (abs(xx - c) < size / 3),
             "cross": (abs(yy - c) < size / 8) | (abs(xx - c) < size / 8),
             "ring": (r > size / 4) & (r < size / 2.5)}
    images, names = [], []
    for _ in range(n):
        name = SHAPES[int(rng.integers(len(SHAPES)))]
        img = masks[name] * rng.uniform(150, 255) + rng.normal(0, 25, (size, size))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        names.append(name)
    return images, names
