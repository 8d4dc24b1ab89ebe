"""Honest evaluation of a student: accuracy with a 95 % CI, per-class P/R/F1, confusion matrix, calibration,
and -- side by side -- the teacher's own accuracy and the gold-label ceiling.

Why side by side: a student distilled from a noisy teacher is bounded by that teacher's labels.  Showing the
teacher's accuracy on the same items, and the same student trained on the same items with *gold* labels, makes the
cost of teacher noise visible instead of hiding it in one number.  Gold labels are used here for measurement only;
evaluation never feeds a choice (the test split is read only in this module and the benchmarks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.core.calibration import apply_temperature
from llm_flywheel.core.stats import (
    ECE_BINS,
    accuracy_ci,
    confusion,
    nll,
    paired_diff_ci,
    top_label_reliability,
)
from llm_flywheel.pipeline.training import (
    load_student,
    model_row,
    task_of,
    train_student,
)
from llm_flywheel.store.base import Item, Store
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import StudentError, read_meta

__all__ = ["ECE_BINS", "accuracy_ci", "evaluate", "expected_calibration_error", "paired_diff_ci", "per_class",
           "teacher_accuracy", "teacher_single_call_accuracy"]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict[str, float]]]:
    """Top-label ECE with equal-width confidence bins, and the per-bin table behind the reliability plot."""
    return top_label_reliability(probs, y, bins)


def per_class(y: np.ndarray, pred: np.ndarray, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(labels))), zero_division=0)
    return [{"label": lab, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)]


def _ci_dict(correct: np.ndarray) -> dict[str, Any]:
    acc, lo, hi = accuracy_ci(correct)
    return {"accuracy": acc, "ci95": [lo, hi], "n": int(np.asarray(correct).size)}


def teacher_accuracy(store: Store, items: list[Item], student_correct: np.ndarray | None = None) -> dict[str, Any] | None:
    """The teacher's consensus labels against gold on these items (those it labelled), or None if it labelled none.

    Items whose passes disagreed (no consensus label) count in ``coverage`` but not in the accuracy.
    """
    gold = {it.id: it.gold_label for it in items if it.gold_label}
    if not gold:
        return None
    got = store.teacher_labels(list(gold))
    with_label = [i for i, lab in got.items() if lab is not None]
    if not with_label:
        return None
    correct = np.array([got[i] == gold[i] for i in with_label])
    out = {**_ci_dict(correct), "labelled": len(got), "with_consensus": len(with_label),
           "coverage": len(with_label) / len(gold)}
    if student_correct is not None:
        pos = {it.id: k for k, it in enumerate(items)}
        out.update(_student_vs(np.asarray(student_correct, bool)[[pos[i] for i in with_label]], correct))
    return out


def _student_vs(student_correct: np.ndarray, teacher_correct: np.ndarray) -> dict[str, Any]:
    """Student and teacher on the same items: the student's accuracy there and the paired difference."""
    if len(teacher_correct) < 2:
        return {}
    d, lo, hi = paired_diff_ci(student_correct, teacher_correct)
    return {"student_on_same_items": float(np.mean(student_correct)), "student_minus_teacher": d, "diff_ci95": [lo, hi]}


def teacher_single_call_accuracy(store: Store, items: list[Item],
                                 student_correct: np.ndarray | None = None) -> dict[str, Any] | None:
    """The teacher's first answer (pass 0) per item against gold: what paying for *one* call per item buys.

    Why beside the consensus: a user replacing one LLM call per item compares the student with this number; the
    consensus (k passes + tie-break) costs several calls per item.  Answers are matched by content hash, like
    the cache; off-list answers count as wrong; with several teacher models, the one that answered most.
    """
    gold = {it.content_hash: it.gold_label for it in items if it.gold_label}
    if not gold:
        return None
    by_model = store.first_answers_by_hash(list(gold))
    if not by_model:
        return None
    model, answers = max(by_model.items(), key=lambda kv: len(kv[1]))
    pos = [k for k, it in enumerate(items) if it.gold_label and it.content_hash in answers]
    correct = np.array([answers[items[k].content_hash] == items[k].gold_label for k in pos])
    out = {**_ci_dict(correct), "model": model, "coverage": len(pos) / len(gold)}
    if student_correct is not None:
        out.update(_student_vs(np.asarray(student_correct, bool)[pos], correct))
    return out


def evaluate(
    ws: Workspace,
    dataset: str,
    version: str,
    *,
    split: str = "test",
    out_dir: Path | None = None,
    ceiling: bool = False,
    runtime: str = "onnx",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``version`` on the gold labels of ``split``; writes PNGs + JSON and stores an ``evaluation`` report.

    With ``ceiling=True`` the same student kind is trained on the same items with gold labels (same seed and
    hyper-parameters; cached as model version ``<version>-gold-ceiling``) and evaluated beside it.
    """
    store = ws.store()
    try:
        task = task_of(store, dataset)
        row = model_row(store, version)
        if row["dataset"] != dataset:
            raise StudentError(f"model {version} was trained on {row['dataset']!r}, not {dataset!r}")
        if ceiling and row.get("role") == "reference":
            raise StudentError(f"model {version} is itself a reference model (trained on gold labels); evaluate the "
                               "student it was built from with --ceiling instead")
        items = [it for it in store.items(dataset, split=split) if it.gold_label]
        if not items:
            raise StudentError(f"the {split} split of {dataset!r} has no items with gold labels to evaluate on")
        y = np.array([task.index(it.gold_label) for it in items])  # type: ignore[arg-type]
        student = load_student(ws, version, runtime=runtime)
        probs = student.predict_proba(items)
        pred = probs.argmax(axis=1)
        correct = pred == y
        ece, table = expected_calibration_error(probs, y)
        cm = confusion(y, pred, task.num_labels)
        out = Path(out_dir) if out_dir is not None else ws.reports_dir / "evaluation" / version / split
        out.mkdir(parents=True, exist_ok=True)
        title = f"{version} on {dataset}/{split} (n={len(items)})"
        report: dict[str, Any] = {
            "dataset": dataset,
            "version": version,
            "kind": row["kind"],
            "role": row.get("role", "student"),
            "split": split,
            "runtime": runtime,
            "student": {**_ci_dict(correct), "ece": ece, "nll": nll(probs, y)},
            "per_class": per_class(y, pred, task.labels),
            "confusion": cm.tolist(),
            "labels": list(task.labels),
            "reliability": table,
            "out_dir": str(out),
            "title": title,
        }
        cal = store.latest_report("calibration", version)
        if cal and cal.get("temperature"):
            # what the cascade actually thresholds: probabilities after the temperature fitted on calib
            T = float(cal["temperature"])
            ece_t, table_t = expected_calibration_error(apply_temperature(probs, T), y)
            report["student"].update(temperature=T, ece_after_temperature=ece_t)
            report["reliability_after_temperature"] = table_t
        report["teacher_on_split"] = teacher_accuracy(store, items, correct)
        report["teacher_single_call_on_split"] = teacher_single_call_accuracy(store, items, correct)
        model_dir = ws.abspath(row["path"])
        train_ids = _read_train_ids(model_dir)
        if train_ids:
            tr_items = store.items(dataset, ids=[int(i) for i in train_ids["train"]])
            gold = {it.id: it.gold_label for it in tr_items if it.gold_label}
            if gold:
                c = np.array([train_ids["train"][str(i)] == g for i, g in gold.items()])
                report["training_label_accuracy"] = _ci_dict(c)
        if ceiling:
            report["ceiling"] = _ceiling(ws, store, dataset, version, row, model_dir, train_ids, items, y, correct,
                                         runtime, progress)
        (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=float))
        report["json"] = str(out / "evaluation.json")
        store.add_report("evaluation", version, report)
        return report
    finally:
        store.close()


def _read_train_ids(model_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((model_dir / "train_ids.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _ceiling(ws: Workspace, store: Store, dataset: str, version: str, row: dict[str, Any], model_dir: Path,
             train_ids: dict[str, Any] | None, items: list[Item], y: np.ndarray, correct: np.ndarray, runtime: str,
             progress: bool) -> dict[str, Any]:
    """Same kind, same items, same seed/hyper-parameters -- gold labels.  Cached as ``<version>-gold-ceiling``, a
    *reference* model: trained on gold, so it is never a default for calibrate/predict/serve (see serving_version)."""
    if not train_ids:
        raise StudentError(f"model {version} has no train_ids.json; cannot build its gold-label ceiling")
    cver = f"{version}-gold-ceiling"
    if store.model(cver) is None:
        ids = [int(i) for i in train_ids["train"]]
        val_source = train_ids.get("val_labels", "store")
        if val_source == "holdout":
            ids += [int(i) for i in train_ids.get("val", {})]
        gold = {it.id: it.gold_label for it in store.items(dataset, ids=ids) if it.gold_label}
        if len(gold) < len(ids):
            raise StudentError(f"{len(ids) - len(gold)} training items of {version} have no gold label; no ceiling")
        meta = read_meta(model_dir)
        hp = {k: v for k, v in (meta.get("hparams") or {}).items() if k not in ("seed", "progress", "chosen")}
        seed = int((meta.get("hparams") or {}).get("seed", 0))
        pre = meta.get("preprocessing") or {}
        if row["kind"] in ("image-cnn", "efficientnet-lite0", "mobilenet-v3-small"):
            hp["size"] = pre.get("size", hp.get("size"))
        train_student(ws, dataset, kind=row["kind"], labels=gold, soft=False, weight_by_quality=False, seed=seed,
                      progress=progress, val_labels="holdout" if val_source == "holdout" else "gold",
                      version=cver, round=row.get("round"), role="reference", **hp)
    cstudent = load_student(ws, cver, runtime=runtime)
    cprobs = cstudent.predict_proba(items)
    ccorrect = cprobs.argmax(axis=1) == y
    gap, lo, hi = paired_diff_ci(correct, ccorrect)
    return {"version": cver, **_ci_dict(ccorrect), "student_minus_ceiling": gap, "diff_ci95": [lo, hi]}
