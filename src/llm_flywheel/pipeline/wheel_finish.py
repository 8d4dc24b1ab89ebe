"""End of a run: teacher quality, the gold-label ceiling, throughput, the cost comparison, spend-to-parity, the
final plots' data and the warnings a user must not miss -- stored as the run's ``wheel`` report.

Why the figures are pure functions of the rounds: the cost, parity and warnings are arithmetic on stored numbers,
so each is tested without a model or a teacher, and the report can trust what the wheel stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from llm_flywheel.core import cost as costmod
from llm_flywheel.core.stats import class_recall, wilson_interval
from llm_flywheel.core.stats import confusion as confusion_matrix
from llm_flywheel.core.stats import reliability
from llm_flywheel.pipeline.cost import measure_student_throughput
from llm_flywheel.pipeline.quality import teacher_quality_on_items
from llm_flywheel.pipeline.wheel_config import WheelConfig, warning
from llm_flywheel.pipeline.wheel_measure import wilson
from llm_flywheel.pipeline.wheel_results import EvalResult
from llm_flywheel.pipeline.wheel_stages import WheelContext, training_labels
from llm_flywheel.store.base import Item
from llm_flywheel.store.models import wheel_report_key
from llm_flywheel.students.base import predict_in_batches


def teacher_source(model: str) -> str:
    return "simulated" if "simulated" in model.lower() else model


def finish(ctx: WheelContext, rounds: list[dict[str, Any]], last_eval: EvalResult | None,
           warnings: list[dict[str, str]], sizes: dict[str, Any] | None) -> dict[str, Any]:
    """Everything measured once at the end of a run; stored as the ``wheel`` report and returned."""
    extra: dict[str, Any] = {"teacher_model": ctx.teacher.model, "teacher_source": teacher_source(ctx.teacher.model),
                             "config": asdict(ctx.cfg)}
    if ctx.served_import is not None:
        extra["served_import"] = ctx.served_import
    extra["teacher_quality"] = teacher_quality_on_items(ctx.ws, ctx.dataset, ctx.val_ids + ctx.calib_ids,
                                                        ctx.teacher.model, ctx.task.labels)
    last = rounds[-1]
    serving = last.get("model_version")
    test_items = ctx.items(ctx.test_ids)
    if serving and test_items and all(it.gold_label is not None for it in test_items):
        from llm_flywheel.pipeline.training import load_student

        student = load_student(ctx.ws, serving)
        teacher_ok = last_eval.teacher_ok if last_eval is not None else {}
        cascade_ok = last_eval.cascade_ok if last_eval is not None and last_eval.model_version == serving else {}
        extra["final"] = final_plots_data(serving, student, test_items, last, teacher_ok,
                                          teacher_accuracy=extra["teacher_quality"].get("accuracy"),
                                          cascade_ok=cascade_ok)
        if ctx.cfg.gold_ceiling:
            with ctx.ws.store() as store:  # the served model's own seed: round r trains with seed + r
                seed = json.loads(store.model(serving)["metrics_json"] or "{}").get("seed", ctx.cfg.seed)
            extra |= gold_ceiling(ctx, test_items, student.kind, seed)
        extra["throughput"] = measure_student_throughput(student, test_items[:2048], batch_size=64, min_items=512)
    with ctx.ws.store() as store:
        extra["teacher_cost"] = store.teacher_cost_stats(ctx.dataset, model=ctx.teacher.model)
        if ctx.cfg.batch:  # live traffic is answered online: price "teacher everywhere" at the online rate
            online = store.teacher_cost_stats(ctx.dataset, model=ctx.teacher.model, online_only=True)
            if online["priced"]:
                extra["teacher_cost_all"], extra["teacher_cost"] = extra["teacher_cost"], online
                online["note"] = "online calls only (batch-priced labelling excluded: live traffic is answered online)"
    extra["sizes"] = sizes
    extra |= cost_section(ctx.cfg, rounds, extra.get("throughput"), extra["teacher_cost"])
    tq = extra["teacher_quality"] or {}
    extra["parity"] = parity(rounds, tq.get("accuracy"), tq.get("accuracy_ci"))
    extra["warnings"] = final_warnings(ctx.cfg, warnings, last, extra)
    with ctx.ws.store() as store:
        store.add_report("wheel", wheel_report_key(ctx.dataset, ctx.run_id), extra)
    return extra


def gold_ceiling(ctx: WheelContext, test_items: list[Item], kind: str, seed: int) -> dict[str, Any]:
    """The served model's student kind and seed trained on the same items with gold labels: how much the teacher's
    labels cost (``kind``, not the run's candidates: the ceiling is of the student that serves)."""
    from llm_flywheel.pipeline.training import train_student

    cfg = ctx.cfg
    ids = sorted(training_labels(ctx))
    gold = {it.id: it.gold_label for it in ctx.items(ids) if it.gold_label is not None}
    ctx.con.print(f"gold-label ceiling: same student kind, same {len(gold):,} items, gold labels")
    # hard gold labels, no teacher soft targets or quality weights: a pure gold ceiling
    tm = train_student(ctx.ws, ctx.dataset, kind=kind, labels=gold, seed=seed, soft=False,
                       weight_by_quality=False, role="reference", epochs=cfg.epochs, round=None,
                       progress=ctx.progress, **cfg.student_hparams)
    probs = predict_in_batches(tm.student, test_items)
    pred = np.asarray(tm.student.labels)[probs.argmax(1)]
    acc, ci = wilson(pred == np.asarray([it.gold_label for it in test_items]))
    return {"gold_ceiling_accuracy": acc, "gold_ceiling_accuracy_ci": ci, "gold_ceiling_version": tm.version}


def parity_points(rounds: list[dict[str, Any]]) -> list[costmod.ParityPoint]:
    """Cascade accuracy on gold test against the cumulative teacher spend at the moment it was measured: every
    earlier round's whole spend plus this round's labelling (the test measurement comes before the round serves its
    stream; calls made only to measure on test are never counted)."""
    points, calls, usd = [], 0, 0.0
    for m in rounds:
        spend = m.get("spend") or {}
        label = spend.get("label") or ({"calls": m.get("teacher_calls") or 0, "usd": m.get("teacher_cost_usd") or 0.0}
                                       if not spend else {"calls": 0, "usd": 0.0})
        points.append(costmod.ParityPoint(round=int(m["round"]), spend_usd=usd + float(label["usd"]),
                                          calls=calls + int(label["calls"]), accuracy=m.get("cascade_accuracy"),
                                          accuracy_ci=m.get("cascade_accuracy_ci")))
        calls += int(m.get("teacher_calls") or 0)
        usd += float(m.get("teacher_cost_usd") or 0.0)
    return points


def parity(rounds: list[dict[str, Any]], teacher_accuracy: float | None, teacher_ci: Any) -> dict[str, Any]:
    """Spend-to-parity: teacher USD and calls until the cascade first matched the teacher's single call, both
    measured against gold (cascade on test; teacher on random val+calib items).  Nothing is chosen on test."""
    out = costmod.spend_to_parity(parity_points(rounds), teacher_accuracy, teacher_ci)
    out["reference"] = ("gold labels: cascade on the test split at the round's chosen deferral, teacher's single "
                        "call on random val+calib items")
    return out


def cost_section(cfg: WheelConfig, rounds: list[dict[str, Any]], throughput: dict[str, Any] | None,
                 tstats: dict[str, Any]) -> dict[str, Any]:
    """``cost`` (the comparison), ``teacher_price_note``, and ``cost_na``: for each figure that cannot be computed,
    the reason.  The teacher fraction is the last round's own (stream, else its test deferral), never an earlier
    model's."""
    last = rounds[-1]
    na: dict[str, str] = {}
    codes: dict[str, str] = {}
    out: dict[str, Any] = {"cost_na": na, "cost_na_codes": codes}
    price, price_note = costmod.teacher_price(tstats, cfg.teacher_usd_per_hour if cfg.teacher_usd_per_hour is not None
                                              else cfg.cpu_usd_per_hour)
    out["teacher_price_note"] = price_note
    tf, tf_note = last.get("teacher_fraction"), f"the stream of round {last.get('round')}"
    tf_n = last.get("stream_served")
    if tf is None and last.get("test_teacher_fraction") is not None:
        tf, tf_note = last["test_teacher_fraction"], f"the test split in round {last.get('round')} (it served no stream)"
        tf_n = None  # the test split's size is not stored with the round
    if price is None:
        na["cost"], codes["cost"] = f"n/a: {price_note}", "no_price"
    elif tf is None:
        na["cost"] = "n/a: no teacher fraction was measured (no stream items were served and test was not measured)"
        codes["cost"] = "no_fraction"
    elif not throughput:
        na["cost"] = "n/a: the student's throughput was not measured (the test split has no gold labels)"
        codes["cost"] = "no_throughput"
    if na:
        return out
    calls = int(sum(r.get("teacher_calls") or 0 for r in rounds))
    spend = float(sum(r.get("teacher_cost_usd") or 0.0 for r in rounds))
    if not tstats.get("priced"):  # a local teacher: its calls are priced by their measured machine time
        spend = calls * price
    cost = costmod.compare(costmod.CostInputs(
        teacher_cost_per_call=price, student_items_per_s=throughput["items_per_s"], teacher_fraction=tf,
        labelling_spend_usd=spend, cpu_usd_per_hour=cfg.cpu_usd_per_hour, fraction_items=tf_n,
        audit_rate=cfg.audit_rate))
    if tstats.get("note"):
        price_note = out["teacher_price_note"] = f"{price_note}; {tstats['note']}"
    cost["teacher_price_note"] = price_note
    cost["teacher_fraction_source"] = tf_note
    out["cost"] = cost
    na.update(cost.get("not_available") or {})
    codes.update(cost.get("not_available_codes") or {})
    return out


def final_warnings(cfg: WheelConfig, run_warnings: list[dict[str, str]], last: dict[str, Any],
                   extra: dict[str, Any]) -> list[dict[str, str]]:
    """Everything a user must not miss, each with the flag that fixes it: setup, last round, final numbers."""
    out = list(run_warnings)
    for w in last.get("warnings") or []:
        if w not in out:
            out.append(w)
    teacher_acc = (extra.get("teacher_quality") or {}).get("accuracy")
    casc, stud = last.get("cascade_accuracy"), last.get("student_accuracy")
    new = []
    if casc is not None and teacher_acc is not None and casc < teacher_acc:
        new.append(warning("cascade_below_teacher",
                           f"the cascade ({100 * casc:.1f} % on gold test) is less accurate than the teacher's single "
                           f"call ({100 * teacher_acc:.1f} %): the student is not good enough yet for the share it answers",
                           "label more (more --rounds, a larger --per-round-budget) or send more to the teacher "
                           "(a larger --max-teacher-fraction)"))
    if casc is not None and stud is not None and casc + 0.01 < stud:
        new.append(warning("cascade_below_student",
                           f"the cascade ({100 * casc:.1f} % on gold test) is less accurate than the student alone "
                           f"({100 * stud:.1f} %): the items it defers are answered worse by the teacher"
                           + (" (the goal was infeasible, so every item went to the teacher)"
                              if last.get("calib_feasible") is False else ""),
                           "lower --max-teacher-fraction (e.g. 0.05), or drop --target-accuracy for a teacher budget"))
    tf, cap = last.get("teacher_fraction"), cfg.max_teacher_fraction
    if tf is not None and cap is not None and cfg.target_accuracy is None and tf > cap + 0.02:
        new.append(warning("budget_overshoot", f"the stream deferred {100 * tf:.1f} % against a {100 * cap:.0f} % "
                           "teacher budget", "calibrate on more items (a larger calib split) or lower "
                           "--max-teacher-fraction"))
    if extra.get("final"):
        new += missed_classes(extra["final"], (extra.get("teacher_quality") or {}).get("per_class") or {})
    codes = extra.get("cost_na_codes") or {}
    for k, why in (extra.get("cost_na") or {}).items():  # each with what would let the next run compute it
        fix = costmod.NA_FIXES.get(codes.get(k, ""), "nothing to change: the figure does not apply to this run")
        new.append(warning(f"cost_na_{k}", f"{k.replace('_', ' ')}: {why}", fix))
    return out + [w for w in new if w not in out]


def final_plots_data(version: str, student: Any, items: list[Item], last: dict[str, Any], teacher_ok: dict[int, bool],
                     *, teacher_accuracy: float | None = None, cascade_ok: dict[int, bool] | None = None
                     ) -> dict[str, Any]:
    """Confusion, reliability and the cascade curve of the serving model on test.

    The curve is exact up to the chosen threshold (every deferred test item has a teacher answer in
    ``teacher_ok``).  Above it the teacher was never asked about some deferred items; ``cascade_accuracy_est``
    counts each of those at the teacher's measured single-call accuracy, drawn apart as an estimate.
    """
    from llm_flywheel.pipeline.calibration import apply_temperature

    labels = list(student.labels)
    gold = np.asarray([labels.index(it.gold_label) for it in items])
    probs = predict_in_batches(student, items)
    T = last.get("temperature")
    if T:
        probs = apply_temperature(probs, float(T))
    pred, conf = probs.argmax(1), probs.max(1)
    correct = pred == gold
    ece, bins = reliability(conf, correct, 10)
    ids = np.asarray([it.id for it in items])
    curve = cascade_curve(conf, correct, ids, teacher_ok, teacher_accuracy)
    return {"version": version, "labels": labels, "confusion": confusion_matrix(gold, pred, len(labels)).tolist(),
            "reliability": bins, "ece": float(ece), "threshold": last.get("threshold"), "temperature": T,
            "curve": curve, "student_accuracy": float(correct.mean()), "n": len(items),
            "per_class": per_class(labels, gold, correct, np.asarray([cascade_ok[int(i)] for i in ids])
                                   if cascade_ok and all(int(i) in cascade_ok for i in ids) else None)}


def per_class(labels: list[str], gold: np.ndarray, student_correct: np.ndarray,
              cascade_correct: np.ndarray | None) -> list[dict[str, Any]]:
    """Recall per class on gold test, student and cascade, with Wilson intervals (``core.stats.class_recall``)."""
    stud = class_recall(gold, student_correct, len(labels))
    casc = class_recall(gold, cascade_correct, len(labels)) if cascade_correct is not None else None
    return [{"label": lab, "n": s["n"], "student_recall": s["recall"], "student_recall_ci": [s["lo"], s["hi"]],
             "cascade_recall": casc[i]["recall"] if casc else None,
             "cascade_recall_ci": [casc[i]["lo"], casc[i]["hi"]] if casc else None}
            for i, (lab, s) in enumerate(zip(labels, stud))]


def missed_classes(final: dict[str, Any], teacher_per_class: dict[str, Any]) -> list[dict[str, str]]:
    """A warning for each class the final cascade (else student) finds clearly less often than it answers overall:
    the class's recall interval lies wholly below the overall accuracy's -- what a rare class looks like."""
    rows = final.get("per_class") or []
    who = "cascade" if rows and rows[0].get("cascade_recall") is not None else "student"
    n_all = sum(r["n"] for r in rows)
    found_all = sum(round(r[f"{who}_recall"] * r["n"]) for r in rows if r["n"])
    lo_all = wilson_interval(found_all, n_all)[0] if n_all else 0.0
    out = []
    for r in rows:
        lo, hi = r[f"{who}_recall_ci"]
        if not r["n"] or hi >= lo_all:
            continue
        t = teacher_per_class.get(r["label"])
        out.append(warning(
            f"class_missed_{r['label']}",
            f"class {r['label']!r} ({r['n']:,} of {n_all:,} gold test items): the {who} finds "
            f"{round(r[f'{who}_recall'] * r['n'])} ({100 * r[f'{who}_recall']:.0f} %, 95 % CI {100 * lo:.0f}-"
            f"{100 * hi:.0f}) against {100 * found_all / n_all:.1f} % right overall"
            + (f"; the teacher itself is right on {100 * t:.0f} % of it" if t is not None else ""),
            "give the wheel more of this class: import more examples if you have them, describe the label so the "
            "teacher tells it apart (the task's [labels]), and run more --rounds (each labels what the student is "
            "least sure about)"))
    return out


def cascade_curve(conf: np.ndarray, correct: np.ndarray, ids: np.ndarray, teacher_ok: dict[int, bool],
                  teacher_accuracy: float | None) -> dict[str, list[float]]:
    """Accuracy and teacher fraction of the cascade at 31 thresholds (quantiles 0-60 % of the confidences)."""
    thresholds = np.unique(np.quantile(conf, np.linspace(0, 0.6, 31)))
    curve: dict[str, list[float]] = {"threshold": [], "accepted_accuracy": [], "teacher_fraction": [],
                                     "cascade_accuracy": [], "cascade_accuracy_est": []}
    n = len(conf)
    for t in thresholds:
        acc_mask = conf >= t
        curve["threshold"].append(float(t))
        curve["teacher_fraction"].append(float(1 - acc_mask.mean()))
        curve["accepted_accuracy"].append(float(correct[acc_mask].mean()) if acc_mask.any() else float("nan"))
        dids = ids[~acc_mask]
        known = [teacher_ok[int(i)] for i in dids if int(i) in teacher_ok]
        tot = float(correct[acc_mask].sum() + sum(known))
        unknown = len(dids) - len(known)
        curve["cascade_accuracy"].append(tot / n if not unknown else float("nan"))
        est = tot + unknown * teacher_accuracy if teacher_accuracy is not None else float("nan")
        curve["cascade_accuracy_est"].append(float(est / n))
    return curve
