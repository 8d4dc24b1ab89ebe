"""Temperature scaling and the cascade's accuracy / coverage / cost curve, on plain arrays.

Why temperature scaling: a student's raw softmax is over-confident; one scalar fitted on a separate split cannot
overfit a few hundred items and never changes which label the student picks.  The threshold chosen on the
calibrated confidences lives in :mod:`llm_flywheel.core.thresholds`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llm_flywheel.core.stats import ece, nll

DEFER_ALL = 1.0 + 1e-6
"""A threshold no probability reaches: every item goes to the teacher."""

_EPS = 1e-12

__all__ = ["DEFER_ALL", "CascadeCurve", "apply_temperature", "cascade_curve", "check_probs", "ece", "fit_temperature",
           "nll"]


def check_probs(probs: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate an (n, k >= 2) probability matrix and optional label indices; clear errors instead of NaNs later."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be an (n, k>=2) matrix, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if y is None:
        return p, None
    yy = np.asarray(y)
    if yy.shape != (len(p),):
        raise ValueError(f"y must have shape ({len(p)},), got {yy.shape}")
    yy = yy.astype(int)
    if len(yy) and (yy.min() < 0 or yy.max() >= p.shape[1]):
        raise ValueError(f"y holds label indices outside 0..{p.shape[1] - 1}")
    return p, yy


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def apply_temperature(probs: np.ndarray, T: float) -> np.ndarray:
    """``softmax(log p / T)``: T > 1 softens an over-confident student, T < 1 sharpens; the argmax never changes."""
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature must be a positive finite number, got {T!r}")
    p, _ = check_probs(probs)
    if len(p) == 0:
        return p.copy()
    return np.exp(_log_softmax(np.log(np.clip(p, _EPS, None)) / T))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` under ``softmax(log p / T)``.

    One scalar fitted by bounded 1-D minimisation over log T (T in [0.05, 20]); never worse than no scaling.
    """
    from scipy.optimize import minimize_scalar

    p, yy = check_probs(probs, y)
    assert yy is not None
    if len(p) == 0:
        raise ValueError("cannot fit a temperature on zero items")
    logp = np.log(np.clip(p, _EPS, None))
    rows = np.arange(len(yy))

    def loss(log_t: float) -> float:
        return float(-_log_softmax(logp / math.exp(log_t))[rows, yy].mean())

    res = minimize_scalar(loss, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-5})
    T = float(math.exp(res.x))
    return T if loss(math.log(T)) <= loss(0.0) else 1.0


@dataclass
class CascadeCurve:
    """Over thresholds (ascending): coverage, accepted and cascade accuracy, teacher fraction and cost per 1,000.

    ``teacher_assumed_correct``: no per-item teacher correctness was given, so a deferred item counts as correct
    (the reference labels *are* the teacher's).
    """

    threshold: list[float]
    coverage: list[float]
    accepted_accuracy: list[float]
    cascade_accuracy: list[float]
    teacher_fraction: list[float]
    cost_per_1k: list[float]
    n: int
    teacher_cost_per_item: float
    student_cost_per_item: float
    teacher_assumed_correct: bool
    teacher_accuracy: float | None
    student_accuracy: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: NaN (no accepted items) becomes None."""
        out: dict[str, object] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, list):
                v = [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
            out[k] = v
        return out


def cascade_curve(conf: np.ndarray, student_correct: np.ndarray, teacher_correct: np.ndarray | None, *,
                  teacher_cost_per_item: float, student_cost_per_item: float, max_points: int = 200) -> CascadeCurve:
    """The cascade's trade-off over thresholds; ``teacher_correct`` None: deferred items count as correct."""
    conf = np.asarray(conf, dtype=np.float64).ravel()
    sc = np.asarray(student_correct).astype(bool).ravel()
    if sc.shape != conf.shape:
        raise ValueError("conf and student_correct must have the same length")
    tc = np.ones_like(sc) if teacher_correct is None else np.asarray(teacher_correct).astype(bool).ravel()
    if tc.shape != conf.shape:
        raise ValueError("teacher_correct must have the same length as conf")
    n = len(conf)
    uniq = np.unique(conf)
    if len(uniq) > max_points:
        uniq = np.unique(np.quantile(conf, np.linspace(0, 1, max_points)))
    ts = np.r_[0.0, uniq, DEFER_ALL]
    cov, acc_a, acc_c, tf, cost = [], [], [], [], []
    for t in ts:
        a = conf >= t
        na = int(a.sum())
        cov.append(na / n if n else 0.0)
        tf.append(1 - na / n if n else 1.0)
        acc_a.append(float(sc[a].mean()) if na else float("nan"))
        acc_c.append(float((sc[a].sum() + tc[~a].sum()) / n) if n else float("nan"))
        cost.append(1000.0 * (student_cost_per_item + tf[-1] * teacher_cost_per_item))
    return CascadeCurve(
        threshold=ts.tolist(), coverage=cov, accepted_accuracy=acc_a, cascade_accuracy=acc_c, teacher_fraction=tf,
        cost_per_1k=cost, n=n, teacher_cost_per_item=float(teacher_cost_per_item),
        student_cost_per_item=float(student_cost_per_item), teacher_assumed_correct=teacher_correct is None,
        teacher_accuracy=float(tc.mean()) if n else None, student_accuracy=float(sc.mean()) if n else None,
    )
