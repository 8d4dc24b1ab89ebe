"""The cascade threshold, chosen on calibration data for a goal, with the arithmetic of its guarantee.

Why a guarantee: a threshold tuned by eye on the data it is judged on promises nothing.  Each goal here comes with
a finite-sample statement about *new* items from the same distribution as the calibration split:

* accuracy (Learn-then-Test, fixed-sequence binomial tests):
  ``P(accuracy of the items the student accepts >= target) >= 1 - delta``;
* teacher parity (fixed-sequence exact sign tests on the student/teacher discordant items):
  ``P(cascade accuracy >= the teacher's single-call accuracy) >= 1 - delta`` -- see :func:`parity_threshold`;
* budget (order statistics): ``P(fraction of new items deferred <= cap) >= 1 - delta``.

"Accuracy" is agreement with whatever reference the caller scores against (teacher consensus, or gold).  A goal
that cannot be met is reported as infeasible, never silently relaxed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from llm_flywheel.core.calibration import DEFER_ALL

SEQUENCES = 2
"""The accuracy goal runs two fixed sequences (a short start and a powerful start), each at delta / 2."""

PARITY_STARTS = (1 / 8, 1 / 4, 1 / 2)
"""The parity goal runs one fixed sequence from each of these shares of the calibration items (the most confident
first), each at delta / len(PARITY_STARTS)."""


@dataclass
class ThresholdChoice:
    """The chosen threshold (accept the student iff calibrated confidence >= ``threshold``) and its evidence."""

    threshold: float
    goal: str  # "accuracy" | "budget" | "parity" | "accuracy+budget" | "parity+budget"
    target: float  # target accuracy, teacher single-call accuracy (parity), or max teacher fraction (budget)
    delta: float
    coverage: float  # share of calib items the student answers
    accuracy_accepted: float  # accuracy of those on calib (vs the reference labels); nan when none accepted
    accuracy_bound: float  # one-sided Clopper-Pearson lower bound of that accuracy at the level used
    teacher_fraction: float
    n_calib: int
    feasible: bool
    note: str
    max_teacher_fraction: float | None = None
    p_value: float | None = None
    teacher_accuracy: float | None = None  # parity: the teacher's single-call accuracy on the calib items
    cascade_accuracy: float | None = None  # parity: the cascade's accuracy on the calib items at this threshold

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


def clopper_pearson_lower(k: np.ndarray | int, n: np.ndarray | int, delta: float) -> np.ndarray:
    """One-sided exact lower confidence bound (level 1 - delta) for a binomial proportion; 0 where k == 0."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        lb = beta.ppf(delta, np.maximum(k, 1), np.maximum(n - k + 1, 1e-12))
    return np.where((k <= 0) | (n <= 0), 0.0, lb)


def binomial_p_value(k: np.ndarray | int, n: np.ndarray | int, target: float) -> np.ndarray:
    """Exact p-value of H0: accuracy < target given k correct of n accepted, i.e. P(Binom(n, target) >= k)."""
    from scipy.stats import binom

    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    return np.where(n > 0, binom.sf(k - 1, np.maximum(n, 1), target), 1.0)


def sign_test_p_value(wins: np.ndarray | int, losses: np.ndarray | int) -> np.ndarray:
    """Exact one-sided p-value of H0 "P(win) < P(loss)" from paired outcomes: P(Binom(wins + losses, 1/2) >= wins).

    Valid for the unconditional hypothesis because it is valid conditionally on every number of discordant pairs
    (McNemar's exact test); ties carry no information and are left out.  1.0 where there is no discordant pair.
    """
    from scipy.stats import binom

    w = np.asarray(wins, dtype=float)
    m = w + np.asarray(losses, dtype=float)
    return np.where(m > 0, binom.sf(w - 1, np.maximum(m, 1), 0.5), 1.0)


@lru_cache(maxsize=256)
def start_size(target: float, delta: float) -> int:
    """Accepted items at which the fixed sequence starts: the smallest n at which a student whose accuracy is
    halfway between the target and 1 passes the test.  Depends on the goal only, never on the data."""
    from scipy.stats import binom

    mid = (1 + target) / 2
    for n in range(1, 100_000):
        k = math.ceil(mid * n - 1e-9)
        if binom.sf(k - 1, n, target) <= delta:
            return n
    return 100_000


@lru_cache(maxsize=256)
def power_start_size(target: float, delta: float, power: float = 0.9) -> int:
    """Smallest n at which a student halfway between the target and 1 passes the level-``delta`` binomial test with
    probability >= ``power``: a start that a noisy reference cannot knock over with one unlucky error."""
    from scipy.stats import binom

    mid = (1 + target) / 2
    for n in range(1, 20_000):
        k_crit = int(binom.isf(delta, n, target)) + 1  # smallest k with P(Binom(n, target) >= k) <= delta
        if k_crit <= n and binom.sf(k_crit - 1, n, mid) >= power:
            return n
    return 20_000


def fixed_sequence(pv: np.ndarray, start: int, level: float) -> int | None:
    """Index of the last rejection walking from ``start`` until the first p-value above ``level`` (None: none)."""
    j = start
    while j < len(pv) and pv[j] <= level:
        j += 1
    return j - 1 if j > start else None


def candidates(conf: np.ndarray, *counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Distinct thresholds (descending), accepted count n for ``conf >= t``, and cumulative sums of ``counts``."""
    order = np.argsort(-conf, kind="stable")
    c = conf[order]
    last = np.r_[np.nonzero(np.diff(c))[0], len(c) - 1]  # last index of each run of equal confidences
    return c[last], last + 1, [np.cumsum(np.asarray(x)[order])[last] for x in counts]


def accuracy_threshold(conf: np.ndarray, correct: np.ndarray, target: float, delta: float
                       ) -> tuple[float | None, float | None, str]:
    """The lowest threshold at which two fixed-sequence binomial tests (each at ``delta / 2``) show accepted accuracy
    >= ``target``: (threshold or None, its p-value, note).

    Candidates are the calibration confidences, tested from high to low; a walk starts at the first threshold
    accepting a given number of items and stops at the first non-rejection.  One walk starts at
    :func:`start_size` items (finds a few very reliable items), one at :func:`power_start_size` (not stopped by one
    unlucky error at the top).  Both starts depend on target and delta only; by the union bound the lowest threshold
    either rejected satisfies ``P(accepted accuracy >= target) >= 1 - delta``.
    """
    if len(conf) == 0:
        return None, None, "no calibration items: nothing can be guaranteed, every item goes to the teacher"
    ts, ns, (ks,) = candidates(conf, correct)
    level = delta / SEQUENCES
    pv = binomial_p_value(ks, ns, target)
    starts = sorted({start_size(target, level), power_start_size(target, level)})
    # ns increases as the threshold falls; with fewer calib items than a start, test them all at once
    idx = [min(int(np.searchsorted(ns, n0, side="left")), len(ns) - 1) for n0 in starts]
    ends = [e for e in (fixed_sequence(pv, i, level) for i in idx) if e is not None]
    if ends:
        j = max(ends)
        return float(ts[j]), float(pv[j]), (
            f"two fixed-sequence binomial tests (starting at the {starts[0]} and {starts[-1]} most confident items, "
            f"each at level {level:g}): P(accepted accuracy >= {target:g}) >= {1 - delta:g}")
    j0 = idx[0]
    return None, None, (
        f"no threshold passes: even the most confident calibration items do not show accuracy >= {target:g} at "
        f"confidence {1 - delta:g} (n_calib={len(conf)}; of the {int(ns[j0])} most confident items "
        f"{int(ks[j0])}/{int(ns[j0])} agree with the reference; all items: {np.mean(correct):.3f}) -- every item "
        f"goes to the teacher.  Lower the target (it cannot exceed the reference labels' own accuracy when they are "
        f"teacher labels), raise delta, calibrate on more items or train a better student")


def parity_threshold(conf: np.ndarray, student_correct: np.ndarray, teacher_correct: np.ndarray, delta: float
                     ) -> tuple[float | None, float | None, str]:
    """The lowest threshold at which the cascade is shown to be at least as accurate as the teacher's single call.

    Why paired: on a deferred item the cascade *is* a teacher call, so cascade minus teacher accuracy is
    ``D(t) = E[1{c >= t} (S - T)]`` with S, T the student's and the teacher's single-call correctness on the same
    item.  The teacher's accuracy is itself estimated, but it never has to be estimated on its own: D(t) >= 0 iff,
    among accepted items, "student right, teacher wrong" (wins) is at least as likely as the reverse (losses).
    Each candidate threshold tests H0 "D(t) < 0" with the exact sign test (:func:`sign_test_p_value`) on its
    accepted items; items without a reference score S = T = 0 and drop out, so filtering them changes nothing.
    Fixed-sequence walks (high to low thresholds, stop at the first non-rejection) start at each share in
    :data:`PARITY_STARTS` of the items -- the starts depend on n only -- each at level ``delta / 3``; by the union
    bound the lowest threshold any walk rejected satisfies ``P(D(t) >= 0) >= 1 - delta``.
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    s = np.asarray(student_correct, dtype=bool).ravel()
    t = np.asarray(teacher_correct, dtype=bool).ravel()
    if not (conf.shape == s.shape == t.shape):
        raise ValueError(f"conf, student_correct and teacher_correct must have the same length "
                         f"({len(conf)}, {len(s)}, {len(t)})")
    if len(conf) == 0:
        return None, None, "no calibration items with a teacher single call: every item goes to the teacher"
    ts, ns, (wins, losses) = candidates(conf, s & ~t, ~s & t)
    level = delta / len(PARITY_STARTS)
    pv = sign_test_p_value(wins, losses)
    idx = [min(int(np.searchsorted(ns, max(1, math.ceil(f * len(conf))), side="left")), len(ns) - 1)
           for f in PARITY_STARTS]
    ends = [e for e in (fixed_sequence(pv, i, level) for i in idx) if e is not None]
    if ends:
        j = max(ends)
        return float(ts[j]), float(pv[j]), (
            f"exact sign tests on student/teacher disagreements ({int(wins[j])} student-only right vs "
            f"{int(losses[j])} teacher-only right at this threshold), {len(PARITY_STARTS)} fixed sequences at level "
            f"{level:.3g}: P(cascade accuracy >= teacher single-call accuracy) >= {1 - delta:g}")
    j0 = idx[-1]
    return None, None, (
        f"no threshold shows the student at least as accurate as the teacher's single call at confidence "
        f"{1 - delta:g} (of the {int(ns[j0])} most confident items the student alone is right on {int(wins[j0])}, "
        f"the teacher alone on {int(losses[j0])}) -- every item goes to the teacher, which meets parity trivially. "
        f"Calibrate on more items or train a better student")


def budget_threshold(conf: np.ndarray, max_teacher_fraction: float, delta: float) -> float:
    """Highest threshold whose deferral rate on *new* items stays <= ``max_teacher_fraction`` w.p. >= 1 - delta.

    Why not the plain calibration quantile: it overshoots the budget on new traffic about half the time.  With
    ``t`` the (m+1)-th smallest of n calibration confidences, the deferral rate of exchangeable new items is
    Beta(m+1, n-m) distributed, so we keep the largest m whose (1 - delta) quantile is within the budget.  No such
    m: accept everything.
    """
    from scipy.stats import beta

    n = len(conf)
    if max_teacher_fraction >= 1.0:
        return DEFER_ALL
    if n == 0:
        return 0.0
    c = np.sort(conf)
    m = np.arange(n)
    ok = beta.ppf(1 - delta, m + 1, n - m) <= max_teacher_fraction
    return float(c[np.flatnonzero(ok)[-1]]) if ok.any() else 0.0


def min_calib_to_defer(max_teacher_fraction: float, delta: float, limit: int = 100_000) -> int | None:
    """The fewest calibration confidences with which :func:`budget_threshold` sends any calib item to the teacher
    (m = 1: Beta(2, n - 1)'s (1 - delta) quantile within the budget); None beyond ``limit``.  Fewer, and a teacher
    budget is kept by sending (almost) nothing."""
    from scipy.stats import beta

    if max_teacher_fraction >= 1.0:
        return 1
    lo, hi = 2, 1000  # blocks growing tenfold: the usual answer (tens of items) without 100,000 quantiles
    while lo <= limit:
        ns = np.arange(lo, min(hi, limit) + 1)
        ok = np.flatnonzero(beta.ppf(1 - delta, 2, ns - 1) <= max_teacher_fraction)
        if ok.size:
            return int(ns[ok[0]])
        lo, hi = hi + 1, hi * 10
    return None


def _arrays(conf: np.ndarray, correct: np.ndarray, budget_conf: np.ndarray | None,
            teacher_correct: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    conf = np.asarray(conf, dtype=np.float64).ravel()
    correct = np.asarray(correct).astype(bool).ravel()
    if conf.shape != correct.shape:
        raise ValueError(f"conf and correct must have the same length ({len(conf)} vs {len(correct)})")
    if not np.isfinite(conf).all():
        raise ValueError("conf contains NaN or infinite values")
    bconf = conf if budget_conf is None else np.asarray(budget_conf, dtype=np.float64).ravel()
    if not np.isfinite(bconf).all():
        raise ValueError("budget_conf contains NaN or infinite values")
    tc = None if teacher_correct is None else np.asarray(teacher_correct).astype(bool).ravel()
    if tc is not None and tc.shape != conf.shape:
        raise ValueError(f"teacher_correct must have the same length as conf ({len(tc)} vs {len(conf)})")
    return conf, correct, bconf, tc


def _check_goal(target_accuracy: float | None, max_teacher_fraction: float | None, delta: float,
                parity: bool, teacher_correct: np.ndarray | None) -> None:
    if parity and target_accuracy is not None:
        raise ValueError("give either target_accuracy or the teacher-parity goal, not both")
    if parity and teacher_correct is None:
        raise ValueError("the teacher-parity goal needs teacher_correct (the teacher's single-call correctness)")
    if target_accuracy is None and max_teacher_fraction is None and not parity:
        raise ValueError("give a goal: target_accuracy, teacher parity and/or max_teacher_fraction")
    if target_accuracy is not None and not 0.0 < target_accuracy < 1.0:
        raise ValueError(f"target_accuracy must be in (0, 1), got {target_accuracy}")
    if max_teacher_fraction is not None and not 0.0 <= max_teacher_fraction <= 1.0:
        raise ValueError(f"max_teacher_fraction must be in [0, 1], got {max_teacher_fraction}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def choose_threshold(
    conf: np.ndarray,
    correct: np.ndarray,
    *,
    target_accuracy: float | None = None,
    max_teacher_fraction: float | None = None,
    delta: float = 0.1,
    budget_conf: np.ndarray | None = None,
    parity: bool = False,
    teacher_correct: np.ndarray | None = None,
) -> ThresholdChoice:
    """Pick the cascade threshold on calibration data for an accuracy goal, teacher parity, a budget, or a quality
    goal and a budget together.

    Accuracy: :func:`accuracy_threshold`.  Parity (``parity=True``, ``teacher_correct`` = the teacher's single-call
    correctness on the same items): :func:`parity_threshold`.  Budget: :func:`budget_threshold`.  A quality goal
    with a budget: its threshold if it also fits the budget; otherwise infeasible, and the budget threshold is
    returned (the budget is a hard cap) with a note saying the quality goal is not guaranteed.  Each guarantee holds
    at 1 - ``delta`` on its own; both at once only at 1 - 2 ``delta`` (pass ``delta / 2`` for a joint 1 - delta).

    ``budget_conf``: the confidences of *every* calibration item, also those without a usable reference label.  The
    items whose teacher passes disagreed are the hard ones: leaving them out lowers the deferral rate seen on
    calibration and the budget is overshot on new traffic.  The teacher fraction and coverage reported use these.
    """
    _check_goal(target_accuracy, max_teacher_fraction, delta, parity, teacher_correct)
    conf, correct, bconf, tc = _arrays(conf, correct, budget_conf, teacher_correct)
    quality = "parity" if parity else "accuracy" if target_accuracy is not None else None
    levels = {"parity": delta / len(PARITY_STARTS), "accuracy": delta / SEQUENCES}

    def summary(t: float, goal: str, target: float, feasible: bool, note: str, p: float | None = None) -> ThresholdChoice:
        acc = conf >= t
        n, k = int(acc.sum()), int(correct[acc].sum())
        lb = float(clopper_pearson_lower(k, n, levels.get(goal.split("+")[0], delta))) if n else 0.0
        tf = float(np.mean(bconf < t)) if len(bconf) else 1.0
        out = ThresholdChoice(
            threshold=float(t), goal=goal, target=float(target), delta=float(delta), coverage=1 - tf,
            accuracy_accepted=k / n if n else float("nan"), accuracy_bound=lb, teacher_fraction=tf,
            n_calib=len(bconf), feasible=feasible, note=note, max_teacher_fraction=max_teacher_fraction, p_value=p)
        if tc is not None and len(conf):
            out.teacher_accuracy = float(tc.mean())
            out.cascade_accuracy = float(np.where(acc, correct, tc).mean())
        return out

    if quality is None:
        assert max_teacher_fraction is not None
        t_bud = budget_threshold(bconf, max_teacher_fraction, delta) if len(bconf) else 0.0
        return summary(t_bud, "budget", max_teacher_fraction, True,
                       f"order-statistic bound: P(teacher fraction on new items <= {max_teacher_fraction:g}) >= "
                       f"{1 - delta:g} (the accuracy bound is informational, not a goal)")
    if parity:
        assert tc is not None
        t_q, p_q, note = parity_threshold(conf, correct, tc, delta)
        target = float(tc.mean()) if len(tc) else float("nan")
        # deferring everything *is* the teacher: parity holds trivially, so the goal itself is always feasible
        q_feasible = True
    else:
        assert target_accuracy is not None
        t_q, p_q, note = accuracy_threshold(conf, correct, target_accuracy, delta)
        target, q_feasible = target_accuracy, t_q is not None
    if max_teacher_fraction is None:
        return summary(DEFER_ALL if t_q is None else t_q, quality, target, q_feasible, note, p_q)
    t_bud = budget_threshold(bconf, max_teacher_fraction, delta) if len(bconf) else 0.0
    if t_q is not None and t_q <= t_bud:
        return summary(t_q, f"{quality}+budget", target, True,
                       note + f"; defers <= {max_teacher_fraction:g} of calibration items", p_q)
    why = note if t_q is None else (
        f"the {quality} goal needs threshold {t_q:.4f} (teacher fraction {float(np.mean(bconf < t_q)):.3f}) but "
        f"the budget allows at most {max_teacher_fraction:g}")
    return summary(t_bud, f"{quality}+budget", target, False,
                   f"INFEASIBLE: {why}; using the budget threshold, the {quality} goal is NOT guaranteed")
