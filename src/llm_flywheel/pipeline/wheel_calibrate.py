"""The wheel's calibrate stage: temperature and threshold for the run's cascade goal, and the review that teacher
parity judged by people asks for.

Why apart from :mod:`llm_flywheel.pipeline.wheel_stages`: it is the one stage that may need a person (or the run's
reviewer) before it can finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_flywheel.pipeline.wheel_config import WheelStopped, warning
from llm_flywheel.pipeline.wheel_results import CalibResult
from llm_flywheel.pipeline.wheel_stages import WheelContext


def calibrate_stage(ctx: WheelContext, r: int, version: str) -> CalibResult:
    """Temperature and threshold of ``version`` on the calib split for the run's cascade goal.  Parity judged by
    review: the run's reviewer (if any) labels the disagreements calibration asks about; without one the run stops
    with them queued for review, and re-running after `flywheel review import` resumes here."""
    from llm_flywheel.pipeline.calibration import ReviewNeeded, calibrate

    cfg = ctx.cfg
    reviewed = 0

    def once() -> Any:
        return calibrate(ctx.ws, ctx.dataset, version, target_accuracy=cfg.target_accuracy,
                         max_teacher_fraction=cfg.max_teacher_fraction, teacher_parity=cfg.teacher_parity,
                         delta=cfg.delta, reference=cfg.parity_reference if cfg.teacher_parity else "labels")
    try:
        try:
            cal = once()
        except ReviewNeeded as e:
            if ctx.reviewer is None:
                raise WheelStopped(f"round {r}: {e}", "review") from e
            reviewed = review_items(ctx, e.item_ids, f"wheel run {ctx.run_id} round {r} (teacher parity)")
            try:
                cal = once()
            except ReviewNeeded as left:  # the reviewer skipped some: a person must finish them
                raise WheelStopped(f"round {r}: the reviewer left {len(left.item_ids):,} of {len(e.item_ids):,} "
                                   f"items without a label; {left}", "review") from left
    except ValueError as e:  # e.g. no calib item has a teacher label
        raise WheelStopped(f"calibrating round {r} failed: {e}", "no_labels") from e
    choice = cal.choice
    return CalibResult(threshold=cal.threshold, temperature=cal.temperature, calib_feasible=cal.feasible,
                       calib_note=choice.note, student_agreement_calib=cal.student_accuracy_calib,
                       calib_teacher_fraction=choice.teacher_fraction, calib_goal=choice.goal,
                       calib_teacher_accuracy=choice.teacher_accuracy, calib_cascade_accuracy=choice.cascade_accuracy,
                       calib_reviewed=reviewed or None)


def review_items(ctx: WheelContext, ids: Sequence[int], why: str) -> int:
    """Ask the run's reviewer about ``ids`` and store its answers as human labels; returns how many it labelled."""
    items = ctx.items(ids)
    answers = ctx.reviewer(items) or {}
    bad = {i: lab for i, lab in answers.items() if lab is not None and lab not in ctx.task.labels}
    if bad:
        raise ValueError(f"the reviewer gave labels that are not the task's ({sorted(set(bad.values()))[:5]}); "
                         f"labels: {', '.join(ctx.task.labels)}")
    name = getattr(ctx.reviewer, "name", None) or getattr(ctx.reviewer, "__name__", "reviewer")
    decisions = [(it.id, answers[it.id], why) for it in items if answers.get(it.id) is not None]
    with ctx.ws.store() as store:
        store.record_reviews(decisions, reviewer=name, file=why)
    ctx.con.print(f"  {name} reviewed {len(decisions):,} calib items where the student and the teacher disagree")
    return len(decisions)


def infeasible_goal_warning(r: int, calib: CalibResult) -> dict[str, str] | None:
    if calib.calib_feasible is not False:
        return None
    if (calib.calib_goal or "").startswith("parity"):  # parity + a cap: the cap's threshold serves meanwhile
        fix = ("nothing to change if the cap is what you want: the student is not yet shown better than its teacher "
               "on enough calib items; more rounds or labels, or a stronger student (e.g. --student-kind "
               "efficientnet-lite0), let parity take over; a larger --max-teacher-fraction buys it now")
    else:
        fix = ("use a teacher budget, e.g. --max-teacher-fraction 0.1 (always feasible), or a --target-accuracy "
               "below the teacher's own accuracy")
    return warning("goal_infeasible", f"round {r}: the cascade goal cannot be met ({calib.calib_note})", fix)
