"""The few statistics every stage reports, in one place so that every number is computed the same way.

Why Wilson: accuracy intervals must stay sensible at small n and near 0 % / 100 % (a normal interval does not).
Why one binning: teacher quality, student evaluation, calibration and the report all show ECE and reliability
diagrams, and they must agree on what a bin is.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


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


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, list[dict[str, float]]]:
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


def pct(v: float | None) -> str:
    """A rate as "12.3 %", or "–" when unknown (None / NaN): one format for every table the CLI and reports print."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.1f} %"
