"""Calibration and the cascade threshold: temperature scaling, then a threshold chosen for a user goal.

Why a separate split and a guarantee: a student's raw softmax is over-confident, and a threshold tuned by eye on
the data it is judged on promises nothing.  Here the temperature and the threshold are fitted on the *calib* split
only, and the accuracy goal comes with a finite-sample statement (Learn-then-Test style, fixed-sequence testing
with exact binomial p-values):

    P( accuracy of the items the student accepts at the chosen threshold >= target ) >= 1 - delta

where "accuracy" is agreement with the reference labels used (the teacher consensus by default -- what a real user
has -- or gold labels when asked; the stored report says which).  A teacher budget goal (at most a fraction of
items deferred) is met on the calibration split.  Both goals can be combined; an impossible pair is reported as
infeasible, never silently relaxed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.core.stats import reliability

DEFER_ALL = 1.0 + 1e-6
"""A threshold no probability reaches: every item goes to the teacher."""

_EPS = 1e-12


# -- temperature scaling ---------------------------------------------------------------------------------------


def _check_probs(probs: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
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
    p, _ = _check_probs(probs)
    if len(p) == 0:
        return p.copy()
    return np.exp(_log_softmax(np.log(np.clip(p, _EPS, None)) / T))


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], _EPS, None)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` under ``softmax(log p / T)``.

    One scalar fitted by bounded 1-D minimisation over log T (T in [0.05, 20]): with one parameter it cannot
    overfit a calibration split of a few hundred items, and it never changes which label the student picks.
    """
    from scipy.optimize import minimize_scalar

    p, yy = _check_probs(probs, y)
    assert yy is not None
    if len(p) == 0:
        raise ValueError("cannot fit a temperature on zero items")
    logp = np.log(np.clip(p, _EPS, None))
    rows = np.arange(len(yy))

    def nll(log_t: float) -> float:
        ls = _log_softmax(logp / math.exp(log_t))
        return float(-ls[rows, yy].mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-5})
    T = float(math.exp(res.x))
    return T if nll(math.log(T)) <= nll(0.0) else 1.0  # never worse than no scaling


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top label: bin by confidence (equal width), weight |accuracy - confidence|."""
    p, yy = _check_probs(probs, y)
    assert yy is not None
    if len(p) == 0:
        return 0.0
    return reliability(p.max(axis=1), p.argmax(axis=1) == yy, bins)[0]


# -- threshold choice ------------------------------------------------------------------------------------------


@dataclass
class ThresholdChoice:
    """The chosen threshold (accept the student iff calibrated confidence >= ``threshold``) and its evidence."""

    threshold: float
    goal: str  # "accuracy" | "budget" | "accuracy+budget"
    target: float  # target accuracy (accuracy goals) or max teacher fraction (budget goal)
    delta: float
    coverage: float  # share of calib items the student answers
    accuracy_accepted: float  # accuracy of those on calib (vs the reference labels); nan when none accepted
    accuracy_bound: float  # one-sided (1 - delta) Clopper-Pearson lower bound of that accuracy
    teacher_fraction: float
    n_calib: int
    feasible: bool
    note: str
    max_teacher_fraction: float | None = None
    p_value: float | None = None

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


@lru_cache(maxsize=256)
def start_size(target: float, delta: float) -> int:
    """Accepted items at which the fixed sequence starts: the smallest n at which a student whose accuracy is
    halfway between the target and 1 passes the test.  Starting lower (a handful of items) makes the very first
    test fail on one unlucky error and ends the sequence; the number depends on the goal only, never on the data."""
    from scipy.stats import binom

    mid = (1 + target) / 2
    for n in range(1, 100_000):
        k = math.ceil(mid * n - 1e-9)
        if binom.sf(k - 1, n, target) <= delta:
            return n
    return 100_000


@lru_cache(maxsize=256)
def power_start_size(target: float, delta: float, power: float = 0.9) -> int:
    """Smallest n at which a student whose accuracy is halfway between the target and 1 passes the level-``delta``
    binomial test with probability >= ``power``: a start that a noisy reference (teacher labels that are wrong on a
    few percent of even the easiest items) cannot knock over with one unlucky error."""
    from scipy.stats import binom

    mid = (1 + target) / 2
    for n in range(1, 20_000):
        k_crit = int(binom.isf(delta, n, target)) + 1  # smallest k with P(Binom(n, target) >= k) <= delta
        if k_crit <= n and binom.sf(k_crit - 1, n, mid) >= power:
            return n
    return 20_000


SEQUENCES = 2
"""The accuracy goal runs two fixed sequences (a short start and a powerful start), each at delta / 2."""


def _fixed_sequence(pv: np.ndarray, start: int, level: float) -> int | None:
    """Index of the last rejection walking from ``start`` until the first p-value above ``level`` (None: none)."""
    j = start
    while j < len(pv) and pv[j] <= level:
        j += 1
    return j - 1 if j > start else None


def _candidates(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with accepted count n and correct count k for ``conf >= t``."""
    order = np.argsort(-conf, kind="stable")
    c = conf[order]
    k_cum = np.cumsum(correct[order])
    last = np.r_[np.nonzero(np.diff(c))[0], len(c) - 1]  # last index of each run of equal confidences
    return c[last], last + 1, k_cum[last]


def _at(conf: np.ndarray, correct: np.ndarray, t: float) -> tuple[int, int]:
    acc = conf >= t
    return int(acc.sum()), int(correct[acc].sum())


def choose_threshold(
    conf: np.ndarray,
    correct: np.ndarray,
    *,
    target_accuracy: float | None = None,
    max_teacher_fraction: float | None = None,
    delta: float = 0.1,
    budget_conf: np.ndarray | None = None,
) -> ThresholdChoice:
    """Pick the cascade threshold on calibration data for an accuracy goal, a teacher budget, or both.

    Accuracy goal (Learn-then-Test, fixed-sequence testing): candidate thresholds are the calibration confidences,
    tested from high to low; at each, H0 "accepted accuracy < target" is tested with the exact binomial p-value of
    the accepted items (equivalently: the one-sided Clopper-Pearson bound must clear the target).  A walk starts at
    the first threshold accepting a given number of items and stops at the first non-rejection.  Two walks run, each
    at level ``delta / 2``: one from :func:`start_size` items (finds thresholds where only a few items are very
    reliable) and one from :func:`power_start_size` items (not stopped by one unlucky error at the top, which matters
    when the reference is noisy teacher labels).  Both starts depend on target and delta only, and the order on
    confidences only, never on correctness.  Each fixed sequence controls its family-wise error at ``delta / 2``;
    by the union bound the lowest threshold rejected by either satisfies
    ``P(accepted accuracy >= target) >= 1 - delta``.  Nothing passing -> everything goes to the teacher,
    ``feasible`` False.  ``accuracy_bound`` is the Clopper-Pearson bound at the level used (``delta / 2``).

    Budget goal (:func:`budget_threshold`): the highest threshold whose deferral fraction on new items is
    <= ``max_teacher_fraction`` with probability >= 1 - ``delta``.  Both goals: the accuracy threshold if it also fits
    the budget (the cheapest threshold meeting both); otherwise infeasible, and the budget threshold is returned (the
    budget is a hard cap) with a note saying the accuracy target is not guaranteed.  With both goals each guarantee
    holds at 1 - ``delta`` on its own; that both hold at once is guaranteed only at 1 - 2 ``delta`` (union bound) --
    pass ``delta / 2`` for a joint 1 - ``delta``.

    ``budget_conf``: the confidences of *every* calibration item, also those without a usable reference label
    (``conf``/``correct`` cover only the labelled ones).  A deferral-rate goal needs no labels, and the items whose
    teacher passes disagreed are the hard ones: leaving them out lowers the deferral rate seen on calibration and
    the budget is overshot on new traffic.  The teacher fraction and coverage reported are measured on these.
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    correct = np.asarray(correct).astype(bool).ravel()
    if conf.shape != correct.shape:
        raise ValueError(f"conf and correct must have the same length ({len(conf)} vs {len(correct)})")
    if target_accuracy is None and max_teacher_fraction is None:
        raise ValueError("give a goal: target_accuracy and/or max_teacher_fraction")
    if target_accuracy is not None and not 0.0 < target_accuracy < 1.0:
        raise ValueError(f"target_accuracy must be in (0, 1), got {target_accuracy}")
    if max_teacher_fraction is not None and not 0.0 <= max_teacher_fraction <= 1.0:
        raise ValueError(f"max_teacher_fraction must be in [0, 1], got {max_teacher_fraction}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not np.isfinite(conf).all():
        raise ValueError("conf contains NaN or infinite values")
    n_cal = len(conf)
    bconf = conf if budget_conf is None else np.asarray(budget_conf, dtype=np.float64).ravel()
    if not np.isfinite(bconf).all():
        raise ValueError("budget_conf contains NaN or infinite values")
    n_all = len(bconf)

    def summary(t: float, goal: str, target: float, feasible: bool, note: str, p: float | None = None) -> ThresholdChoice:
        n, k = _at(conf, correct, t)
        level = delta / SEQUENCES if goal.startswith("accuracy") else delta
        lb = float(clopper_pearson_lower(k, n, level)) if n else 0.0
        tf = float(np.mean(bconf < t)) if n_all else 1.0
        return ThresholdChoice(
            threshold=float(t), goal=goal, target=float(target), delta=float(delta),
            coverage=1 - tf, accuracy_accepted=k / n if n else float("nan"), accuracy_bound=lb,
            teacher_fraction=tf, n_calib=n_all, feasible=feasible, note=note,
            max_teacher_fraction=max_teacher_fraction, p_value=p,
        )

    t_acc: float | None = None
    p_acc: float | None = None
    acc_note = ""
    if target_accuracy is not None:
        if n_cal == 0:
            acc_note = "no calibration items: nothing can be guaranteed, every item goes to the teacher"
        else:
            ts, ns, ks = _candidates(conf, correct)
            level = delta / SEQUENCES
            pv = binomial_p_value(ks, ns, target_accuracy)
            starts = sorted({start_size(target_accuracy, level), power_start_size(target_accuracy, level)})
            # ns increases as the threshold falls; with fewer calib items than a start, test them all at once
            idx = [min(int(np.searchsorted(ns, n0, side="left")), len(ns) - 1) for n0 in starts]
            ends = [e for e in (_fixed_sequence(pv, i, level) for i in idx) if e is not None]
            if ends:
                j = max(ends)  # the lowest threshold either sequence rejected
                t_acc, p_acc = float(ts[j]), float(pv[j])
                acc_note = (f"two fixed-sequence binomial tests (starting at the {starts[0]} and {starts[-1]} most "
                            f"confident items, each at level {level:g}): P(accepted accuracy >= {target_accuracy:g}) "
                            f">= {1 - delta:g}")
            else:
                j0 = idx[0]
                acc_note = (f"no threshold passes: even the most confident calibration items do not show accuracy >= "
                            f"{target_accuracy:g} at confidence {1 - delta:g} (n_calib={n_cal}; of the {int(ns[j0])} "
                            f"most confident items {int(ks[j0])}/{int(ns[j0])} agree with the reference; "
                            f"all items: {correct.mean():.3f}) -- every item goes to the teacher.  Lower the target (it "
                            f"cannot exceed the reference labels' own accuracy when they are teacher labels), raise delta, "
                            f"calibrate on more items or train a better student")

    t_bud: float | None = None
    if max_teacher_fraction is not None:
        t_bud = budget_threshold(bconf, max_teacher_fraction, delta) if n_all else 0.0

    if target_accuracy is not None and max_teacher_fraction is None:
        if t_acc is None:
            return summary(DEFER_ALL, "accuracy", target_accuracy, False, acc_note)
        return summary(t_acc, "accuracy", target_accuracy, True, acc_note, p_acc)
    if target_accuracy is None:
        assert t_bud is not None and max_teacher_fraction is not None
        return summary(t_bud, "budget", max_teacher_fraction, True,
                       f"order-statistic bound: P(teacher fraction on new items <= {max_teacher_fraction:g}) >= "
                       f"{1 - delta:g} (the accuracy bound is informational, not a goal)")
    assert t_bud is not None and target_accuracy is not None and max_teacher_fraction is not None
    if t_acc is not None and t_acc <= t_bud:
        return summary(t_acc, "accuracy+budget", target_accuracy, True,
                       acc_note + f"; defers <= {max_teacher_fraction:g} of calibration items", p_acc)
    why = acc_note if t_acc is None else (
        f"the accuracy target needs threshold {t_acc:.4f} (teacher fraction "
        f"{float(np.mean(bconf < t_acc)):.3f}) but the budget allows at most {max_teacher_fraction:g}")
    return summary(t_bud, "accuracy+budget", target_accuracy, False,
                   f"INFEASIBLE: {why}; using the budget threshold, the accuracy target is NOT guaranteed")


def budget_threshold(conf: np.ndarray, max_teacher_fraction: float, delta: float) -> float:
    """Highest threshold whose deferral rate on *new* items stays <= ``max_teacher_fraction`` w.p. >= 1 - delta.

    Why not the plain calibration quantile: it overshoots the budget on new traffic about half the time.  With
    ``t`` the (m+1)-th smallest of n calibration confidences, the deferral rate of exchangeable new items is
    Beta(m+1, n-m) distributed, so we keep the largest m whose (1 - delta) quantile is within the budget (about
    ``cap - 1.3 sqrt(cap (1 - cap) / n)`` deferred on calibration at delta = 0.1).  No such m: accept everything.
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


# -- the accuracy / coverage / cost curve ----------------------------------------------------------------------


def cascade_curve(
    conf: np.ndarray,
    student_correct: np.ndarray,
    teacher_correct: np.ndarray | None,
    *,
    teacher_cost_per_item: float,
    student_cost_per_item: float,
    max_points: int = 200,
) -> dict[str, Any]:
    """Arrays over thresholds (ascending): coverage, accepted accuracy, cascade accuracy, teacher fraction, cost/1k.

    ``teacher_correct`` None means the reference labels *are* the teacher's (the usual case), so a deferred item
    counts as correct; the result says so in ``teacher_assumed_correct``.
    """
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
    return {
        "threshold": ts.tolist(), "coverage": cov, "accepted_accuracy": acc_a, "cascade_accuracy": acc_c,
        "teacher_fraction": tf, "cost_per_1k": cost, "n": n,
        "teacher_cost_per_item": float(teacher_cost_per_item), "student_cost_per_item": float(student_cost_per_item),
        "teacher_assumed_correct": teacher_correct is None,
        "teacher_accuracy": float(tc.mean()) if n else None,
        "student_accuracy": float(sc.mean()) if n else None,
    }


def plot_cascade_curve(curve: dict[str, Any], choice: ThresholdChoice, path: Path) -> Path:
    """Two panels: accuracy vs teacher fraction (accepted and cascade), cost per 1,000 items vs teacher fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tf = np.asarray(curve["teacher_fraction"], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(tf, curve["accepted_accuracy"], label="student, accepted items")
    lab = "cascade (teacher = reference)" if curve.get("teacher_assumed_correct") else "cascade"
    ax1.plot(tf, curve["cascade_accuracy"], label=lab)
    if choice.goal.startswith("accuracy"):
        ax1.axhline(choice.target, color="grey", ls=":", lw=1, label=f"target {choice.target:g}")
    ax1.axvline(choice.teacher_fraction, color="red", ls="--", lw=1,
                label=f"chosen t={min(choice.threshold, 1.0):.3f}" + ("" if choice.feasible else " (infeasible)"))
    ax1.set_xlabel("fraction of items sent to the teacher")
    ax1.set_ylabel("accuracy (calibration split)")
    ax1.set_xlim(0, 1)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title("accuracy / coverage")
    ax2.plot(tf, curve["cost_per_1k"])
    ax2.axvline(choice.teacher_fraction, color="red", ls="--", lw=1)
    ax2.set_xlabel("fraction of items sent to the teacher")
    ax2.set_ylabel("USD per 1,000 items")
    ax2.set_xlim(0, 1)
    ax2.set_title("cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the store-level step ---------------------------------------------------------------------------------------


def teacher_cost_per_item(store: Any, dataset: str, task: Any, usd_per_hour: float | None = None) -> tuple[float, str]:
    """Mean recorded cost of a final teacher answer for ``dataset``; for a teacher that reports no token cost (a
    local server) its measured latency x ``usd_per_hour``; else an estimate from the task's token prices."""
    from llm_flywheel.pipeline.cost import DEFAULT_CPU_USD_PER_HOUR, teacher_cost_stats, teacher_price

    row = store.query(
        "SELECT AVG(a.cost_usd) AS c, COUNT(a.cost_usd) AS n FROM teacher_answers a JOIN items i ON i.id=a.item_id "
        "WHERE i.dataset=? AND a.ok=1 AND a.cost_usd IS NOT NULL", (dataset,))
    if row and row[0]["n"] and float(row[0]["c"] or 0.0) > 0:
        return float(row[0]["c"]), f"mean of {row[0]['n']} recorded teacher calls"
    stats = teacher_cost_stats(store, dataset)
    if stats["calls"] and stats.get("mean_latency_s"):
        price, note = teacher_price({**stats, "priced": False},
                                    DEFAULT_CPU_USD_PER_HOUR if usd_per_hour is None else usd_per_hour)
        if price is not None:
            return price, note
    pin, pout = getattr(task, "input_per_mtok", None), getattr(task, "output_per_mtok", None)
    if pin is not None and pout is not None:
        tin = 600 if task.modality == "image" else 400
        return (tin * pin + 40 * pout) / 1e6, "estimated from the task's token prices (no recorded calls)"
    return 0.0, "unknown (no recorded calls, no prices in the task)"


def calibrate(
    ws: Any,
    dataset: str,
    version: str,
    *,
    target_accuracy: float | None = None,
    max_teacher_fraction: float | None = None,
    delta: float = 0.1,
    reference: str = "labels",
    cpu_usd_per_hour: float | None = None,
) -> dict[str, Any]:
    """Fit the temperature and choose the threshold of model ``version`` on the calib split; store and plot them.

    ``reference='labels'``: the calib split's effective labels (teacher consensus, human outranks) -- what a real
    user has, so the guarantee is about agreement with those labels.  ``reference='gold'``: gold labels, i.e. a
    human-verified dev set (the report says so).  Returns the stored report (``temperature``, ``threshold``,
    ``feasible``, ``choice``, ``plot`` ...).
    """
    from llm_flywheel.pipeline.cost import DEFAULT_CPU_USD_PER_HOUR
    from llm_flywheel.core.task import Task
    from llm_flywheel.pipeline.training import load_student, model_row

    if reference not in ("labels", "gold"):
        raise ValueError(f"reference must be 'labels' or 'gold', not {reference!r}")
    cpu = DEFAULT_CPU_USD_PER_HOUR if cpu_usd_per_hour is None else cpu_usd_per_hour
    store = ws.store()
    try:
        row = model_row(store, version)
        if row["dataset"] != dataset:
            raise ValueError(f"model {version!r} belongs to dataset {row['dataset']!r}, not {dataset!r}")
        task = Task.from_json(store.dataset_task_json(dataset))
        items = store.items(dataset, split="calib")
        if reference == "labels":
            ref = store.effective_labels(dataset, split="calib")
            ref_note = "calib split effective labels (teacher consensus; human corrections outrank it)"
        else:
            ref = {it.id: it.gold_label for it in items if it.gold_label is not None}
            ref_note = "calib split GOLD labels (a human-verified dev set)"
        all_items = items  # the budget goal uses every calib item, labelled or not (see choose_threshold)
        items = [it for it in items if ref.get(it.id) in task.labels]
        if not items:
            raise ValueError(
                f"the calib split of {dataset!r} has no usable {'labels' if reference == 'labels' else 'gold labels'}; "
                f"label it first (e.g. `flywheel label {dataset} --split calib`) or make splits with a calib part")
        t_cost, t_cost_note = teacher_cost_per_item(store, dataset, task, cpu)
        teacher_labels = {}
        if reference == "gold":
            teacher_labels = {r["item_id"]: r["label"] for r in store.query(
                "SELECT l.item_id, l.label FROM labels l JOIN items i ON i.id=l.item_id "
                "WHERE i.dataset=? AND i.split='calib' AND l.source='teacher'", (dataset,))}
    finally:
        store.close()

    student = load_student(ws, version)
    labels = list(student.labels)
    t0 = time.perf_counter()
    all_probs = np.concatenate([student.predict_proba(all_items[s : s + 512]) for s in range(0, len(all_items), 512)])
    per_item_s = (time.perf_counter() - t0) / len(all_items)
    pos = {it.id: i for i, it in enumerate(all_items)}
    probs = all_probs[[pos[it.id] for it in items]]
    y = np.asarray([labels.index(ref[it.id]) for it in items])
    T = fit_temperature(probs, y)
    cal = apply_temperature(probs, T)
    conf = cal.max(axis=1)
    correct = cal.argmax(axis=1) == y
    all_conf = apply_temperature(all_probs, T).max(axis=1)
    choice = choose_threshold(conf, correct, target_accuracy=target_accuracy,
                              max_teacher_fraction=max_teacher_fraction, delta=delta, budget_conf=all_conf)
    teacher_correct = None
    if reference == "gold":
        teacher_correct = np.asarray([teacher_labels.get(it.id) == ref[it.id] for it in items])
    s_cost = cpu / 3600.0 * per_item_s
    curve = cascade_curve(conf, correct, teacher_correct, teacher_cost_per_item=t_cost, student_cost_per_item=s_cost)
    plot = plot_cascade_curve(curve, choice, ws.reports_dir / f"cascade-curve-{version}.png")
    report: dict[str, Any] = {
        "version": version, "dataset": dataset, "temperature": T, "T": T, "threshold": choice.threshold,
        "feasible": choice.feasible, "goal": choice.goal, "choice": choice.to_dict(),
        "reference": reference, "reference_note": ref_note, "n_calib": len(items), "n_calib_all": len(all_items),
        "ece_before": ece(probs, y), "ece_after": ece(cal, y),
        "nll_before": _nll(probs, y), "nll_after": _nll(cal, y),
        "student_accuracy_calib": float(correct.mean()),
        "teacher_cost_per_item": t_cost, "teacher_cost_note": t_cost_note,
        "student_cost_per_item": s_cost, "cpu_usd_per_hour": cpu,
        "curve": {k: [None if isinstance(v, float) and not math.isfinite(v) else v for v in vals]
                  if isinstance(vals, list) else vals for k, vals in curve.items()},
        "plot": str(plot), "created_at": time.time(),
    }
    store = ws.store()
    try:
        store.add_report("calibration", version, report)
    finally:
        store.close()
    return report


def calibration_report(ws: Any, version: str) -> dict[str, Any] | None:
    """The latest stored calibration of ``version`` (None if it was never calibrated)."""
    store = ws.store()
    try:
        return store.latest_report("calibration", version)
    finally:
        store.close()
