"""The stages of one round that use the model: measure on test -> serve the stream -> collect feedback.

Why measuring is apart from serving: the test split (gold) is only measured -- its teacher calls are accounted as
``eval`` and never flatter or burden the wheel's spend -- while the stream is the traffic the cascade pays for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_flywheel.core.stats import wilson_interval
from llm_flywheel.pipeline import feedback
from llm_flywheel.pipeline.wheel_results import CollectResult, EvalResult, ServeResult
from llm_flywheel.pipeline.wheel_stages import WheelContext


def wilson(correct: Any) -> tuple[float, list[float]]:
    """Accuracy of a boolean array and its 95 % Wilson interval."""
    c = np.asarray(correct, dtype=bool)
    lo, hi = wilson_interval(int(c.sum()), int(c.size))
    return (float(c.mean()) if c.size else float("nan")), [lo, hi]


def cascade_of(ctx: WheelContext, version: str) -> Any:
    from llm_flywheel.pipeline.cascade import Cascade

    return Cascade.from_store(ctx.ws, ctx.dataset, version=version, teacher=ctx.teacher)


def gold_metrics(student_pred: Any, cascade_pred: Any, deferred: Any, gold: Any) -> EvalResult:
    """Student alone and cascade against gold, and how each does on the deferred / accepted parts (pure)."""
    student_pred, cascade_pred = np.asarray(student_pred, dtype=object), np.asarray(cascade_pred, dtype=object)
    deferred, gold = np.asarray(deferred, dtype=bool), np.asarray(gold, dtype=object)
    res = EvalResult()
    res.student_accuracy, res.student_accuracy_ci = wilson(student_pred == gold)
    res.cascade_accuracy, res.cascade_accuracy_ci = wilson(cascade_pred == gold)
    res.test_teacher_fraction = float(deferred.mean())
    if deferred.any():
        res.test_accuracy_deferred_teacher = float(np.mean(cascade_pred[deferred] == gold[deferred]))
        res.test_accuracy_deferred_student = float(np.mean(student_pred[deferred] == gold[deferred]))
    if (~deferred).any():
        res.test_accuracy_accepted = float(np.mean(student_pred[~deferred] == gold[~deferred]))
    return res


def evaluate_stage(ctx: WheelContext, r: int, version: str) -> EvalResult | None:
    """The serving model alone and in the cascade on the gold test split; None when test has no gold labels.
    Run it inside ``ctx.accounted(rep, 'eval')``: the teacher calls it makes only measure."""
    items = ctx.items(ctx.test_ids)
    gold = [it.gold_label for it in items]
    if not items or any(g is None for g in gold):
        why = "the dataset has no test split" if not items else "the test split has no gold labels"
        ctx.con.print(f"[yellow]  {why}: accuracies not measured[/]")
        return None
    ctx.con.print(f"  measuring on {len(items):,} test items (gold)")
    answers = cascade_of(ctx, version).predict_items(items, origin="eval", round=r, log=False,
                                                     teacher_concurrency=ctx.cfg.concurrency)
    res = gold_metrics([a.student_label for a in answers], [a.label for a in answers],
                       [a.source != "student" for a in answers], gold)
    res.model_version = version
    for it, a in zip(items, answers):  # for the final cascade curve: where the teacher's answer on test is known
        res.cascade_ok[it.id] = a.label == it.gold_label  # and for recall per class
        if a.source == "teacher" and a.teacher_label is not None:
            res.teacher_ok[it.id] = a.teacher_label == it.gold_label
        elif a.source == "teacher_failed":
            res.teacher_ok[it.id] = False
    return res


def serve_stage(ctx: WheelContext, r: int, version: str, stream_slice: list[int]) -> ServeResult:
    """This round's slice of the unseen stream through the cascade (deferred items are paid teacher calls)."""
    items = ctx.items(stream_slice)
    if not items:
        return ServeResult(stream_served=0)
    ctx.con.print(f"  serving {len(items):,} unseen stream items through the cascade ({version})")
    answers = cascade_of(ctx, version).predict_items(items, origin="run", round=r,
                                                     teacher_concurrency=ctx.cfg.concurrency)
    res = ServeResult(stream_served=len(answers),
                      teacher_fraction=float(np.mean([a.source != "student" for a in answers])),
                      stream_teacher_failed=int(sum(a.source == "teacher_failed" for a in answers)))
    gold = [it.gold_label for it in items]
    if all(g is not None for g in gold):
        res.stream_cascade_accuracy = float(np.mean([a.label == g for a, g in zip(answers, gold)]))
    return res


def collect_stage(ctx: WheelContext, r: int) -> CollectResult:
    """Deferred answers are already labels; audit a sample of accepted answers (``cfg.audit_rate``)."""
    cfg = ctx.cfg
    fb = feedback.collect(ctx.ws, ctx.dataset, r, teacher=ctx.teacher if cfg.audit_rate > 0 else None,
                          audit_rate=cfg.audit_rate, seed=cfg.seed, progress=False)
    return CollectResult(feedback=fb.to_dict(), audit_disagreement_rate=fb.audit_disagreement_rate)
