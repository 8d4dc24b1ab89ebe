"""Measuring the teacher against gold labels: accuracy (95 % CI), per-class confusion, calibration (ECE).

Why: the seed never measured its teacher although gold labels were at hand, so nobody knew whether the student's
errors came from the student or from its labels.  Wherever gold exists we measure, per pass and for the consensus,
and store the result as a ``teacher_quality`` report.  Gold labels are used for measurement only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_flywheel.core.consensus import answer_probability
from llm_flywheel.core.stats import ECE_BINS, confusion, reliability, wilson_interval
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

wilson_ci = wilson_interval  # the teacher's numbers use the same interval as the student's


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> tuple[float, list[dict[str, float]]]:
    """ECE of the teacher's verbalised confidence; returns (ece, per-bin table for a reliability diagram)."""
    return reliability(np.asarray(confidences, dtype=float), np.asarray(correct, dtype=bool), bins)


def teacher_quality(ws: Workspace, dataset: str, model: str | None = None,
                    split: str | Sequence[str] | None = None, *, store_report: bool = True) -> dict[str, Any]:
    """Accuracy (+95 % CI), per-class confusion and ECE of the teacher's verbalised confidence (``ece``, None when
    none was stated) and of the label's probability from logprobs (``ece_logprob``, where returned), vs gold.

    Per answer (the passes asked of every item; tie-break passes, asked only on the hardest items, are shown
    per pass but kept out of the headline), per pass index, and for the consensus labels.  Off-list answers
    count as wrong.  ``model`` defaults to the model with most answers on this dataset.  Stored as report
    ``teacher_quality`` keyed ``"{dataset}:{model}"``.  ``n == 0`` when no gold labels exist.
    """
    store = ws.store()
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        if model is None:
            model = store.busiest_teacher_model(dataset)
            if model is None:
                raise ValueError(f"no teacher answers for dataset {dataset!r}; run `flywheel label` first")
        answers = store.teacher_answers_with_gold(dataset, model, split)
        cons = [r for r in store.teacher_consensus_with_gold(dataset, split) if _prov_model(r["prov"]) == model]
        failures = store.teacher_failure_counts(dataset, model, split)
    finally:
        store.close()

    labels = list(task.labels)
    # headline numbers use the passes asked of every item; a tie-break pass is asked only where the passes
    # disagreed (the hardest items) and would bias them down -- it is still reported under per_pass
    all_answers = answers
    per_pass_n = {p: sum(1 for a in answers if a["pass_index"] == p) for p in {a["pass_index"] for a in answers}}
    n0 = max(per_pass_n.values(), default=0)
    main_passes = sorted(p for p, c in per_pass_n.items() if c >= 0.5 * n0)
    answers = [a for a in answers if a["pass_index"] in main_passes]
    n = len(answers)
    correct = [a["label"] == a["gold"] for a in answers]
    k = sum(correct)
    confusion = {g: dict.fromkeys([*labels, "off_list"], 0) for g in labels}
    for a in answers:
        if a["gold"] in confusion:
            confusion[a["gold"]][a["label"] if a["label"] in labels else "off_list"] += 1
    per_class = {}
    for g in labels:
        tot = sum(confusion[g].values())
        per_class[g] = {"n": tot, "accuracy": confusion[g][g] / tot if tot else None}
    conf_pairs = [(float(a["confidence"]), a["label"] == a["gold"]) for a in answers if a["confidence"] is not None]
    ece, bins = (expected_calibration_error([c for c, _ in conf_pairs], [ok for _, ok in conf_pairs]) if conf_pairs
                 else (None, []))  # llama.cpp with logprobs on is not asked for a stated confidence
    # the label's probability from the server's logprobs, as the consensus reads it (where it was returned)
    lp_pairs = [(answer_probability(a, len(labels))[0], a["label"] == a["gold"]) for a in answers
                if a.get("label_logprob") is not None and a["label"] in labels]
    ece_lp = expected_calibration_error([c for c, _ in lp_pairs], [ok for _, ok in lp_pairs])[0] if lp_pairs else None
    per_pass: dict[str, Any] = {}
    for p in sorted(per_pass_n):
        rows = [a for a in all_answers if a["pass_index"] == p]
        kp = sum(1 for a in rows if a["label"] == a["gold"])
        per_pass[str(p)] = {"n": len(rows), "accuracy": kp / len(rows), "ci95": wilson_ci(kp, len(rows))}
    simulated = model.startswith("simulated/")
    report = {
        "dataset": dataset, "model": model, "split": split, "simulated": simulated,
        "note": ("SIMULATED teacher: its accuracy is a parameter of the error model, not a measurement of an LLM"
                 if simulated else None),
        "passes_in_headline": main_passes,
        "n": n, "accuracy": k / n if n else None, "ci95": wilson_ci(k, n) if n else None,
        "off_list_rate": sum(1 for a in answers if a["label"] is None) / n if n else None,
        "ece": ece if n else None, "mean_confidence": (sum(c for c, _ in conf_pairs) / len(conf_pairs)) if conf_pairs else None,
        "ece_logprob": ece_lp, "logprob_answers": len(lp_pairs),
        "reliability": bins, "per_pass": per_pass, "per_class": per_class, "confusion": confusion,
        "labels": labels,
        "consensus": _consensus_summary(cons),
        "failures": failures,
    }
    if store_report and n:
        s = ws.store()
        try:
            s.add_report("teacher_quality", f"{dataset}:{model}", report)
        finally:
            s.close()
    return report


def _consensus_summary(cons: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The consensus labels against gold: coverage, accuracy (+95 % CI) and accuracy per consensus status."""
    labelled = [r for r in cons if r["label"] is not None]
    kc = sum(1 for r in labelled if r["label"] == r["gold"])
    by_status: dict[str, dict[str, Any]] = {}
    for r in cons:
        s = by_status.setdefault(r["status"], {"n": 0, "correct": 0})
        s["n"] += 1
        s["correct"] += int(r["label"] == r["gold"])
    for s in by_status.values():
        s["accuracy"] = s["correct"] / s["n"] if s["n"] else None
    return {
        "n_items": len(cons), "n_labelled": len(labelled), "coverage": len(labelled) / len(cons) if cons else None,
        "accuracy": kc / len(labelled) if labelled else None,
        "ci95": wilson_ci(kc, len(labelled)) if labelled else None, "by_status": by_status,
    }


def teacher_quality_on_items(ws: Workspace, dataset: str, item_ids: Sequence[int], model: str,
                             labels: Sequence[str]) -> dict[str, Any]:
    """Teacher accuracy vs gold on given items (the wheel passes its random val + calib sample): single call
    (pass 0), k-pass consensus and pass agreement -- the compact form the wheel's report shows.

    Why these items: they were drawn at random, so the estimate is unbiased -- actively selected items are hard by
    construction and would understate the teacher.
    """
    store = ws.store()
    try:
        ids = list(item_ids)
        if not ids:
            return {}
        gold = store.gold_labels(ids)
        answers = store.teacher_answers_by_pass(ids, model)
        consensus = store.teacher_labels(ids)
    finally:
        store.close()
    first = [(answers[i][0], gold[i]) for i in gold if i in answers and 0 in answers[i]]
    if not first:
        return {}
    k = sum(a == g for a, g in first)
    idx = {lab: j for j, lab in enumerate(labels)}
    on_list = [(idx[g], idx[a]) for a, g in first if a in idx and g in idx]
    conf = confusion(np.asarray([g for g, _ in on_list]), np.asarray([a for _, a in on_list]), len(labels))
    per_class = {}
    for lab in labels:
        sel = [a == g for a, g in first if g == lab]
        per_class[lab] = float(np.mean(sel)) if sel else None
    cons = [(consensus[i], gold[i]) for i in gold if i in consensus]
    resolved = [(c, g) for c, g in cons if c is not None]
    multi = [a for i, a in answers.items() if len(a) >= 2]
    return {
        "n": len(first), "accuracy": k / len(first), "accuracy_ci": list(wilson_interval(k, len(first))),
        "labels": list(labels), "per_class": per_class,
        "confusion": conf.tolist(), "off_list_or_none": int(sum(a is None for a, _ in first)),
        # over resolved items, as in teacher_quality: an unresolved item yields no label to be wrong about
        "consensus_accuracy": float(np.mean([c == g for c, g in resolved])) if resolved else None,
        "consensus_unresolved": int(sum(c is None for c, _ in cons)),
        "agreement_rate": float(np.mean([len(set(a.values())) == 1 for a in multi])) if multi else None,
        "passes": max((len(a) for a in answers.values()), default=0), "sample": "val+calib (random)",
    }


def _prov_model(prov: str | None) -> str | None:
    try:
        return json.loads(prov).get("model") if prov else None
    except (json.JSONDecodeError, AttributeError):
        return None
