"""The calibration stage: fit the temperature and choose the cascade threshold of a model on the calib split.

Why a separate split and a guarantee: a student's raw softmax is over-confident, and a threshold tuned by eye on
the data it is judged on promises nothing.  The temperature and the threshold are fitted on the *calib* split
only; the goal (an accuracy target, parity with the teacher's single call, a teacher budget, or a quality goal
with a budget) comes with the finite-sample statement of :mod:`llm_flywheel.core.thresholds`, where "accuracy"
is agreement with the reference labels used (teacher consensus by default -- what a real user has -- or gold).

This module only reads and writes the store; the arithmetic lives in :mod:`llm_flywheel.core.calibration` and
:mod:`llm_flywheel.core.thresholds` (re-exported here, so ``pipeline.calibration.choose_threshold`` & co. keep
working).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.core.calibration import (  # noqa: F401  (re-exported)
    DEFER_ALL,
    CascadeCurve,
    apply_temperature,
    cascade_curve,
    fit_temperature,
)
from llm_flywheel.core.cost import DEFAULT_CPU_USD_PER_HOUR
from llm_flywheel.core.stats import ece, nll
from llm_flywheel.core.thresholds import (  # noqa: F401  (re-exported)
    PARITY_STARTS,
    SEQUENCES,
    ThresholdChoice,
    binomial_p_value,
    budget_threshold,
    choose_threshold,
    clopper_pearson_lower,
    min_calib_to_defer,
    power_start_size,
    sign_test_p_value,
    start_size,
)
from llm_flywheel.pipeline.calib_inputs import (  # noqa: F401  (teacher_cost_per_item, REFERENCES re-exported)
    REFERENCES,
    ReviewNeeded,
    accuracies_from_labels,
    load_inputs,
    parity_subset,
    teacher_cost_per_item,
)
from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace

GOALS = ("accuracy", "parity", "budget")
"""What ``calibrate`` can aim for: ``target_accuracy``, ``teacher_parity`` and/or ``max_teacher_fraction``."""


@dataclass
class CalibrationResult:
    """What :func:`calibrate` stored: the temperature, the threshold and the evidence behind them.

    ``to_dict()`` is the stored JSON report.  Item access (``result["threshold"]``) reads that dict, for callers
    written against the report; new code uses the attributes.
    """

    version: str
    dataset: str
    temperature: float
    threshold: float
    feasible: bool
    goal: str
    choice: ThresholdChoice
    reference: str
    reference_note: str
    n_calib: int
    n_calib_all: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    student_accuracy_calib: float
    teacher_cost_per_item: float
    teacher_cost_note: str
    student_cost_per_item: float
    cpu_usd_per_hour: float
    curve: CascadeCurve
    plot: str
    teacher_single_call: dict[str, Any] | None = None  # parity: {model, n, accuracy} on the calib items
    warnings: list[dict[str, str]] = field(default_factory=list)  # {code, message, fix}: what the user must hear
    created_at: float = field(default_factory=time.time)

    @property
    def note(self) -> str:
        return self.choice.note

    @property
    def teacher_fraction(self) -> float:
        return self.choice.teacher_fraction

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("choice", "curve")}
        return {**d, "choice": self.choice.to_dict(), "curve": self.curve.to_dict()}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> Any:
        return self.to_dict().keys()


def _student_probs(student: Any, items: list[Item]) -> tuple[np.ndarray, float]:
    """Raw probabilities of every item and the student's seconds per item (for the cost curve)."""
    t0 = time.perf_counter()
    probs = np.concatenate([student.predict_proba(items[s : s + 512]) for s in range(0, len(items), 512)])
    return probs, (time.perf_counter() - t0) / max(1, len(items))


def calibrate(
    ws: Workspace,
    dataset: str,
    version: str,
    *,
    target_accuracy: float | None = None,
    max_teacher_fraction: float | None = None,
    teacher_parity: bool = False,
    delta: float = 0.1,
    reference: str = "labels",
    cpu_usd_per_hour: float | None = None,
) -> CalibrationResult:
    """Fit the temperature and choose the threshold of model ``version`` on the calib split; store and plot them.

    ``teacher_parity``: the goal "cascade accuracy no lower than the teacher's single call", guaranteed at 1 - delta
    (see :func:`~llm_flywheel.core.thresholds.parity_threshold`); it lets a student that is already better than its
    teacher answer almost everything.  With ``reference='labels'`` it is judged against the teacher's pass 1 (an
    independent call: see :mod:`~llm_flywheel.pipeline.calib_inputs`), so every calib item needs a pass 1.
    ``reference='labels'``: the calib split's effective labels (teacher consensus, human outranks) -- what a real
    user has.  ``reference='gold'``: gold labels, i.e. a human-verified dev set (the report says so).
    ``reference='review'`` (parity only): a person judges each calib item where the student and pass 0 disagree;
    those without a human label are queued for review and :class:`ReviewNeeded` is raised.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, not {reference!r}")
    if reference == "review" and not teacher_parity:
        raise ValueError("reference='review' judges the teacher-parity goal only (people look at the student/teacher "
                         "disagreements); use it with teacher_parity=True (--goal teacher-parity)")
    cpu = DEFAULT_CPU_USD_PER_HOUR if cpu_usd_per_hour is None else cpu_usd_per_hour
    with ws.store() as store:
        inp = load_inputs(store, dataset, version, reference, teacher_parity, cpu)
    from llm_flywheel.pipeline.training import load_student

    student = load_student(ws, version)
    labels = list(student.labels)
    all_probs, per_item_s = _student_probs(student, inp.all_items)
    pos = {it.id: i for i, it in enumerate(inp.all_items)}
    probs = all_probs[[pos[it.id] for it in inp.items]]
    y = np.asarray([labels.index(inp.ref[it.id]) for it in inp.items])
    T = fit_temperature(probs, y)
    cal = apply_temperature(probs, T)
    conf, correct = cal.max(axis=1), cal.argmax(axis=1) == y
    all_cal = apply_temperature(all_probs, T)
    all_conf = all_cal.max(axis=1)
    single = None
    teacher_correct = None
    if reference == "gold":
        teacher_correct = np.asarray([inp.teacher_labels.get(it.id) == inp.ref[it.id] for it in inp.items])
    if teacher_parity:
        try:
            conf_c, correct_c, teacher_correct, single = parity_subset(
                inp, dataset, reference, all_conf, [labels[j] for j in all_cal.argmax(axis=1)])
        except ReviewNeeded as e:
            with ws.store() as store:
                store.queue_for_review(e.item_ids, "parity")
            raise
        choice = choose_threshold(conf_c, correct_c, parity=True, teacher_correct=teacher_correct,
                                  max_teacher_fraction=max_teacher_fraction, delta=delta, budget_conf=all_conf)
        if reference == "review":  # ties were scored "both right": the accuracies come from the labels instead
            accuracies_from_labels(choice, conf, correct)
            conf_c, correct_c, teacher_correct = conf, correct, None
    else:
        choice = choose_threshold(conf, correct, target_accuracy=target_accuracy,
                                  max_teacher_fraction=max_teacher_fraction, delta=delta, budget_conf=all_conf)
        conf_c, correct_c = conf, correct
    s_cost = cpu / 3600.0 * per_item_s
    curve = cascade_curve(conf_c, correct_c, teacher_correct, teacher_cost_per_item=inp.t_cost,
                          student_cost_per_item=s_cost)
    plot = plot_cascade_curve(curve, choice, ws.reports_dir / f"cascade-curve-{version}.png")
    result = CalibrationResult(
        version=version, dataset=dataset, temperature=T, threshold=choice.threshold, feasible=choice.feasible,
        goal=choice.goal, choice=choice, reference=reference, reference_note=inp.ref_note, n_calib=len(inp.items),
        n_calib_all=len(inp.all_items), ece_before=ece(probs, y), ece_after=ece(cal, y), nll_before=nll(probs, y),
        nll_after=nll(cal, y), student_accuracy_calib=float(correct.mean()), teacher_cost_per_item=inp.t_cost,
        teacher_cost_note=inp.t_cost_note, student_cost_per_item=s_cost, cpu_usd_per_hour=cpu, curve=curve,
        plot=str(plot), teacher_single_call=single,
        warnings=budget_warnings(choice, max_teacher_fraction, len(inp.all_items)))
    with ws.store() as store:
        store.add_report("calibration", version, result.to_dict())
    return result


def budget_warnings(choice: ThresholdChoice, max_teacher_fraction: float | None, n: int) -> list[dict[str, str]]:
    """A teacher budget the calib split is too small to spend: with ``n`` confidences, "at most f to the teacher"
    holds at 1 - delta only by deferring nothing of the calib split (:func:`min_calib_to_defer`: 38 items for 10 %
    at delta 0.1), so the cascade (almost) never asks its teacher -- and nobody was told."""
    if not max_teacher_fraction or choice.teacher_fraction > 0 or not choice.goal.endswith("budget"):
        return []
    need = min_calib_to_defer(max_teacher_fraction, choice.delta)
    return [{"code": "budget_defers_nothing",
             "message": f"with {n} calib items, at most {100 * max_teacher_fraction:g} % to the teacher holds at "
                        f"{100 * (1 - choice.delta):g} % only by deferring none of them: the cascade (almost) never "
                        "asks the teacher",
             "fix": (f"a calib split of at least {need} items (`flywheel data add ... --calib {need} --resplit` before "
                     "labelling, or the data imported again under another --name), or a larger --delta"
                     if need else "a larger --delta or --max-teacher-fraction")}]


def plot_cascade_curve(curve: CascadeCurve, choice: ThresholdChoice, path: Path) -> Path:
    """Two panels: accuracy vs teacher fraction (accepted and cascade), cost per 1,000 items vs teacher fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tf = np.asarray(curve.teacher_fraction, dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(tf, curve.accepted_accuracy, label="student, accepted items")
    ax1.plot(tf, curve.cascade_accuracy,
             label="cascade (teacher = reference)" if curve.teacher_assumed_correct else "cascade")
    if choice.goal.startswith(("accuracy", "parity")) and math.isfinite(choice.target):
        what = "teacher single call" if choice.goal.startswith("parity") else "target"
        ax1.axhline(choice.target, color="grey", ls=":", lw=1, label=f"{what} {choice.target:.3g}")
    ax1.axvline(choice.teacher_fraction, color="red", ls="--", lw=1,
                label=f"chosen t={min(choice.threshold, 1.0):.3f}" + ("" if choice.feasible else " (infeasible)"))
    ax1.set(xlabel="fraction of items sent to the teacher", ylabel="accuracy (calibration split)", xlim=(0, 1),
            title="accuracy / coverage")
    ax1.legend(fontsize=8, loc="lower right")
    ax2.plot(tf, curve.cost_per_1k)
    ax2.axvline(choice.teacher_fraction, color="red", ls="--", lw=1)
    ax2.set(xlabel="fraction of items sent to the teacher", ylabel="USD per 1,000 items", xlim=(0, 1), title="cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def calibration_report(ws: Workspace, version: str) -> dict[str, Any] | None:
    """The latest stored calibration of ``version`` (None if it was never calibrated)."""
    with ws.store() as store:
        return store.latest_report("calibration", version)
