"""Finding likely teacher-label errors with confident learning (cleanlab) on out-of-fold probabilities.

Why out-of-fold: a model scored on items it trained on has memorised their (possibly wrong) labels; k-fold
cross-validation gives every item a probability from a model that never saw it.  cleanlab's confident learning
then flags items whose given label is unlikely under those probabilities, ranked by self-confidence.  The flagged
items go to the review queue (reason ``label_issue``) so a human -- or a second teacher pass -- checks them first.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from llm_flywheel.pipeline.training import task_of
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import StudentError
from llm_flywheel.students.registry import build_student, default_student_kind

# cheap settings for the k fold models: they only need to rank items, not to be deployed
FAST_HPARAMS: dict[str, dict[str, Any]] = {
    "image-cnn": {"epochs": 12},
    "efficientnet-lite0": {"epochs": 4},
    "mobilenet-v3-small": {"epochs": 4},
    "text-minilm": {"epochs": 100},
}


def out_of_fold_proba(ws: Workspace, dataset: str, ids: list[int], y: np.ndarray, *, kind: str, folds: int = 5,
                      seed: int = 0, progress: bool = False, **hparams: Any) -> np.ndarray:
    """(n, K) probabilities where each row comes from a model trained on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    store = ws.store()
    try:
        task = task_of(store, dataset)
        items = {it.id: it for it in store.items(dataset, ids=ids)}
    finally:
        store.close()
    ordered = [items[i] for i in ids]
    counts = np.bincount(y, minlength=task.num_labels)
    n_splits = int(min(folds, max(2, counts[counts > 0].min())))
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    probs = np.zeros((len(ids), task.num_labels), np.float32)
    hp = {**FAST_HPARAMS.get(kind, {}), **hparams}
    for f, (tr, te) in enumerate(skf.split(np.zeros(len(y)), y)):
        student = build_student(kind, task, ws, seed=seed + f, progress=progress, **hp)
        student.fit([ordered[i] for i in tr], y[tr], [], np.zeros(0, int))  # no val: nothing is selected on a fold
        probs[te] = student.predict_proba([ordered[i] for i in te])
    return probs


def find_label_issues(
    ws: Workspace,
    dataset: str,
    *,
    kind: str | None = None,
    folds: int = 5,
    queue: bool = True,
    split: str = "train",
    seed: int = 0,
    progress: bool = False,
    **hparams: Any,
) -> list[int]:
    """Item ids whose effective label is likely wrong, most suspicious first; queued for review when ``queue``.

    Also stores a ``label_issues`` report; where gold labels exist it records how many flagged items really were
    mislabelled (precision) next to the base error rate -- measurement only, never used to choose.
    """
    import cleanlab.filter

    t0 = time.time()
    store = ws.store()
    try:
        task = task_of(store, dataset)
        labels = store.effective_labels(dataset, split=split)
        if len(labels) < 2 * task.num_labels:
            raise StudentError(f"only {len(labels)} labelled {split} items in {dataset!r}; too few for {folds}-fold search")
        ids = sorted(labels)
        found = store.items(dataset, ids=ids)
        gold = {it.id: it.gold_label for it in found}
    finally:
        store.close()
    kind = kind or default_student_kind(task, [it.text or "" for it in found])
    y = np.array([task.index(labels[i]) for i in ids])
    probs = out_of_fold_proba(ws, dataset, ids, y, kind=kind, folds=folds, seed=seed, progress=progress, **hparams)
    self_conf = probs[np.arange(len(y)), y]
    try:
        ranked = cleanlab.filter.find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
        method = "cleanlab confident learning (prune_by_noise_rate), ranked by self-confidence"
    except Exception as e:  # degenerate inputs (a class with one item, ...): fall back to the plain rule
        ranked = np.array([i for i in np.argsort(self_conf) if probs[i].argmax() != y[i]], int)
        method = f"argmax disagreement ranked by self-confidence (cleanlab failed: {type(e).__name__})"
    flagged = [int(ids[i]) for i in ranked]
    scores = {int(ids[i]): float(1 - self_conf[i]) for i in ranked}

    report: dict[str, Any] = {"dataset": dataset, "kind": kind, "folds": folds, "n": len(ids), "flagged": len(flagged),
                              "method": method, "seconds": round(time.time() - t0, 1), "item_ids": flagged[:1000]}
    if all(gold.get(i) for i in ids):
        wrong = {i for i in ids if gold[i] != labels[i]}
        hit = sum(1 for i in flagged if i in wrong)
        report["gold_check"] = {
            "label_error_rate": len(wrong) / len(ids),
            "precision": hit / len(flagged) if flagged else None,
            "recall": hit / len(wrong) if wrong else None,
        }
    store = ws.store()
    try:
        if queue and flagged:
            # a human already decided these: never queue them again; an item already queued keeps its entry
            human = store.human_labels(dataset)
            report["queued"] = store.queue_scored_for_review(
                {i: scores[i] for i in flagged if i not in human}, "label_issue")
        store.add_report("label_issues", dataset, report)
    finally:
        store.close()
    return flagged
