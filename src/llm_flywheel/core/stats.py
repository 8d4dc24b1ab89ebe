"""The metrics every stage reports, in one place so that every number is computed the same way.

Why Wilson: accuracy intervals must stay sensible at small n and near 0 % / 100 % (a normal interval does not).
Why one binning: teacher quality, student evaluation, calibration and the report all show ECE and reliability
diagrams, and they must agree on what a bin is.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054

ECE_BINS = 15
"""The one bin count behind every ECE and reliability diagram (teacher quality, evaluation, calibration, report)."""

_EPS = 1e-12


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for k successes out of n; (0, 1) when n is 0; exact ends at 0 % and 100 %."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k <= 0 else max(0.0, mid - half)
    hi = 1.0 if k >= n else min(1.0, mid + half)
    return (lo, hi)


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows = reference label, columns = prediction (both as label indices)."""
    cm = np.zeros((k, k), int)
    np.add.at(cm, (np.asarray(y, int), np.asarray(pred, int)), 1)
    return cm


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict[str, float]]]:
    """Top-label ECE over equal-width confidence bins (lo, hi] (0 falls in the first), and the per-bin table
    (lo, hi, n, confidence, accuracy) behind a reliability diagram; empty bins are left out."""
    if bins < 1:
        raise ValueError("bins must be >= 1")
    conf = np.asarray(conf, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if conf.size == 0:
        return float("nan"), []
    idx = np.clip(np.ceil(conf * bins - 1e-12).astype(int) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        if not sel.any():
            continue
        acc, avg = float(correct[sel].mean()), float(conf[sel].mean())
        ece += float(sel.mean()) * abs(acc - avg)
        table.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(sel.sum()), "confidence": avg, "accuracy": acc})
    return float(ece), table


def top_label_reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict[str, float]]]:
    """:func:`reliability` of a probability matrix's top label against label indices ``y``."""
    p = np.asarray(probs, dtype=np.float64)
    return reliability(p.max(axis=1), p.argmax(axis=1) == np.asarray(y), bins)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error of a probability matrix (0.0 for no items)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(np.asarray(y)):
        raise ValueError(f"probs must be an (n, k) matrix matching y's length, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if len(p) == 0:
        return 0.0
    return top_label_reliability(probs, y, bins)[0]


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of label indices ``y`` (probabilities clipped at 1e-12)."""
    p = np.asarray(probs, dtype=np.float64)
    yy = np.asarray(y, dtype=int)
    return float(-np.log(np.clip(p[np.arange(len(yy)), yy], _EPS, None)).mean())


def accuracy_ci(correct: np.ndarray) -> tuple[float, float, float]:
    """Accuracy and its Wilson 95 % interval (acc, lo, hi); NaNs for no items."""
    c = np.asarray(correct, dtype=bool)
    if c.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = wilson_interval(int(c.sum()), int(c.size))
    return float(c.mean()), lo, hi


def class_recall(gold: np.ndarray, correct: np.ndarray, k: int) -> list[dict[str, float | int]]:
    """Per gold class: items ``n``, ``found`` (answered right), recall and its Wilson 95 % interval.  Why recall:
    on a rare class ("outage", 2 % of tickets) accuracy overall hides how many of them a model misses."""
    gold, correct = np.asarray(gold, int), np.asarray(correct, bool)
    out = []
    for c in range(k):
        sel = gold == c
        n, found = int(sel.sum()), int(correct[sel].sum())
        lo, hi = wilson_interval(found, n)
        out.append({"n": n, "found": found, "recall": found / n if n else float("nan"), "lo": lo, "hi": hi})
    return out


def paired_diff_ci(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float, float]:
    """Accuracy difference a - b on the *same* items with a 95 % CI (paired, normal approximation).

    Paired because both were scored on the same items: much tighter than comparing two independent intervals.
    """
    a = np.asarray(correct_a, float)
    b = np.asarray(correct_b, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired_diff_ci needs two equally long, non-empty arrays")
    d = a - b
    m = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    return m, m - Z95 * se, m + Z95 * se


def pct(v: float | None) -> str:
    """A rate as "12.3 %", or "–" when unknown (None / NaN): one format for every table the CLI and reports print."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.1f} %"
