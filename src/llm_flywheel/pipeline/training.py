"""Training a student from the store: labels, soft targets and weights in; a versioned model folder out.

Why here and not in the student: which items, which labels (teacher consensus, human corrections outranking it),
which validation labels, and where the model is recorded are decisions about the *store*, the same for every kind.
The test split is never read here.

A trained model is a folder ``<workspace>/models/<version>/`` holding the weights, ``meta.json`` (labels,
preprocessing, kind, library versions, pretrained-or-not), ``model.onnx`` where the kind exports one,
``train_ids.json`` (the items and labels it learned from -- the gold-label ceiling reuses them) and
``metrics.json``; plus one row in the ``models`` table.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.pipeline.self_training import self_train, unlabelled_pool, val_score
from llm_flywheel.store.base import MODEL_ROLES, Item, Store
from llm_flywheel.store.training import LabelDetail
from llm_flywheel.students.base import ONNX_FILE, Student, StudentError
from llm_flywheel.students.registry import STUDENT_KINDS, build_student, default_candidates, load_student_dir
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

VAL_LABEL_SOURCES = ("auto", "store", "gold", "holdout")
QUALITY_FLOOR = 0.2  # an item the teacher was unsure about still counts a little


@dataclass(frozen=True)
class TrainReport:
    """The typed summary of one training run (the full record, history included, is ``TrainedModel.metrics``,
    also stored with the model row and in ``metrics.json``)."""

    val_acc: float | None  # on the val labels named by val_labels (teacher labels are not the truth)
    val_labels: str  # "store" | "gold" | "holdout"
    n_train: int
    n_val: int
    epochs_run: int | None
    best_epoch: int | None
    train_seconds: float | None
    pretrained: str | None
    onnx_max_abs_diff: float | None

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> "TrainReport":
        return cls(val_acc=m.get("val_acc"), val_labels=str(m.get("val_labels")), n_train=int(m.get("n_train") or 0),
                   n_val=int(m.get("n_val") or 0), epochs_run=m.get("epochs_run"), best_epoch=m.get("best_epoch"),
                   train_seconds=m.get("train_seconds"), pretrained=m.get("pretrained"),
                   onnx_max_abs_diff=m.get("onnx_max_abs_diff"))


@dataclass
class TrainedModel:
    """A trained, saved and recorded model version."""

    version: str
    path: Path
    student: Student
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> TrainReport:
        return TrainReport.from_metrics(self.metrics)


def task_of(store: Store, dataset: str) -> Task:
    return Task.from_json(store.dataset_task_json(dataset))


def label_details(store: Store, item_ids: list[int]) -> dict[int, LabelDetail]:
    """item id -> :class:`LabelDetail` of its effective label (human outranks teacher); see ``Store.label_details``."""
    return store.label_details(item_ids)


def soft_and_weights(task: Task, ids: list[int], labels: dict[int, str], details: dict[int, LabelDetail]
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Soft targets (teacher pass distribution; one-hot for human labels) and weights (label quality).

    Where the label being trained on differs from the store's (an explicit ``labels`` mapping, e.g. gold labels
    for the ceiling), the item gets a one-hot target and weight 1.
    """
    k = task.num_labels
    q = np.zeros((len(ids), k), np.float32)
    w = np.ones(len(ids), np.float32)
    counts = {"teacher": 0, "human": 0, "other": 0, "soft_rows": 0}
    for i, iid in enumerate(ids):
        lab = labels[iid]
        d = details.get(iid)
        q[i, task.index(lab)] = 1.0
        if d is None or d.label != lab:
            counts["other"] += 1
            continue
        counts[d.source if d.source in ("teacher", "human") else "other"] += 1
        if d.source == "human":
            continue
        if d.soft is not None:
            vec = np.array([float(d.soft.get(name, 0.0) or 0.0) for name in task.labels], np.float32)
            if np.isfinite(vec).all() and vec.sum() > 0:
                q[i] = vec / vec.sum()
                counts["soft_rows"] += 1
        if d.quality is not None and np.isfinite(d.quality):
            w[i] = float(np.clip(d.quality, QUALITY_FLOOR, 1.0))
    return q, w, counts


def new_version(dataset: str, kind: str) -> str:
    return f"{dataset}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def train_student(
    ws: Workspace,
    dataset: str,
    *,
    kind: str | None = None,
    labels: dict[int, str] | None = None,
    soft: bool = True,
    weight_by_quality: bool = True,
    seed: int = 0,
    epochs: int | None = None,
    round: int | None = None,
    progress: bool = True,
    val_labels: str = "auto",
    export_onnx: bool = True,
    version: str | None = None,
    role: str = "student",
    unlabelled: float = 0.0,
    **hparams: Any,
) -> TrainedModel:
    """Train a student on the labelled train split and record it as a new model version.

    ``labels`` default to the store's effective labels on the ``train`` split (teacher consensus, human outranks).
    ``val_labels``: ``auto`` = the val split's effective labels, or -- when the val split has none -- a 10 % holdout
    of the train labels; ``store`` = val split labels only (error if none); ``gold`` = the val split's gold labels
    (only when explicitly asked; recorded in the metrics); ``holdout`` = always the train holdout.
    ``role='reference'`` records a model trained on gold labels (a ceiling): never served, promoted or calibrated
    by default, only when asked for by name.
    ``unlabelled`` > 0: self-training on that many unlabelled train items per labelled one
    (:mod:`llm_flywheel.pipeline.self_training`); the val split keeps it only where it scores higher.
    """
    _check_options(role, val_labels, unlabelled)
    store = ws.store()
    try:
        task = task_of(store, dataset)
        if kind is not None and kind not in STUDENT_KINDS:
            raise StudentError(f"unknown student kind {kind!r}; choose one of {', '.join(STUDENT_KINDS)}")
        labels = _train_labels(store, dataset, task, labels)
        train_items = _train_items(store, dataset, labels)
        kinds, why = ((kind,), None) if kind else default_candidates(
            task, [it.text or "" for it in train_items], len(train_items), hparams)
        split = _validation_split(store, dataset, train_items, labels, val_labels, seed)
        ids = [it.id for it in split.train]
        q, w, counts = soft_and_weights(task, ids, labels, store.label_details(ids))
        y = np.array([task.index(labels[i]) for i in ids], int)
        y_val = np.array([task.index(lab) for lab in split.val_labels], int)
        tq, tw = (q if soft else None), (w if weight_by_quality else None)
        hparams |= {} if epochs is None else {"epochs": epochs}
        config = {"dataset": dataset, "kind": "|".join(kinds), "role": role, "soft": soft,
                  "weight_by_quality": weight_by_quality, "seed": seed, "round": round, "val_labels": split.source,
                  "hparams": hparams, "unlabelled": unlabelled}
        run_id = store.start_run("train", config)
        try:
            kind, student, first, choice = fit_best(
                kinds, lambda k: build_student(k, task, ws, seed=seed, progress=progress, **hparams),
                lambda st: st.fit(split.train, y, split.val, y_val, soft_targets=tq, sample_weight=tw), why)
            student, history, st = (student, first, None) if unlabelled <= 0 else self_train(
                student, first, lambda: build_student(kind, task, ws, seed=seed, progress=progress, **hparams),
                split.train, y, tq, tw, split.val, y_val,
                unlabelled_pool(store, dataset, set(labels), int(unlabelled * len(split.train) + 0.5), seed))
        except BaseException:
            store.finish_run(run_id, "failed")
            raise
        metrics: dict[str, Any] = {
            "val_acc": val_score(history), "val_labels": split.source, "role": role,  # of what it serves
            "n_train": len(split.train), "n_val": len(split.val), "label_sources": counts, "soft": soft,
            "weight_by_quality": weight_by_quality, "seed": seed, "epochs_run": history.get("epochs_run"),
            "best_epoch": history.get("best_epoch"), "train_seconds": history.get("train_seconds"),
            "pretrained": history.get("pretrained"), "onnx_max_abs_diff": None,
            "student_choice": choice, "candidates": first.get("candidates"), "members": history.get("members"),
            "tta": history.get("tta"),  # image students: whether val chose mirror averaging, and on what scores
            "self_training": st.as_dict() if st else None,
            "history": history.get("history") or history.get("trials"),
        }
        version = version or new_version(dataset, kind)
        path = _save(ws, store, student, version, dataset, kind, split, labels, metrics, round=round, role=role,
                     export_onnx=export_onnx)
        store.finish_run(run_id, "done")
        return TrainedModel(version=version, path=path, student=student, metrics=metrics)
    finally:
        store.close()


def fit_best(kinds: Sequence[str], build: Callable[[str], Student], fit: Callable[[Student], dict[str, Any]],
             why: str | None = None) -> tuple[str, Student, dict[str, Any], str | None]:
    """Fit each of ``kinds`` on the same labels (``fit(student)``; val also picks its epoch / C) and keep the one
    with the highest val score, the first on a tie or without val items.  Returns (kind, student, history, why:
    ``why`` as given, else the scores when there was a choice).  With more than one kind the kept history gains
    ``candidates``: each kind's val score and fitting seconds, so the contest's whole cost is on record (the
    model's ``train_seconds`` is the kept student's own).

    A val split of a few hundred items is a noisy judge: on SpamAssassin with 200 val emails it preferred MiniLM on
    two seeds of three while TF-IDF was 3.4 points better on test (scoring each kind on the half of val it did not
    tune on chose the same, at three times the training, so it was not kept; ``bench_text_students.py``)."""
    fitted = []
    for k in kinds:
        t0, student = time.perf_counter(), build(k)
        history = fit(student)
        fitted.append((val_score(history), k, student, history, round(time.perf_counter() - t0, 2)))
    best = max(fitted, key=lambda f: -1.0 if f[0] is None else f[0])  # max keeps the first of equals
    if len(fitted) == 1:
        return best[1], best[2], best[3], why or best[3].get("choice")  # a kind that chose within (image-pair)
    candidates = [{"kind": k, "val_acc": v, "seconds": sec, "kept": k == best[1]} for v, k, _, _, sec in fitted]
    why = why or "chosen on val: " + ", ".join(f"{k} {'-' if v is None else f'{v:.1%}'}" for v, k, *_ in fitted)
    return best[1], best[2], {**best[3], "candidates": candidates}, why


def _check_options(role: str, val_labels: str, unlabelled: float) -> None:
    """Refuse bad options before anything is read or trained."""
    if role not in MODEL_ROLES:
        raise ValueError(f"role must be one of {MODEL_ROLES}, not {role!r}")
    if val_labels not in VAL_LABEL_SOURCES:
        raise ValueError(f"val_labels must be one of {VAL_LABEL_SOURCES}, not {val_labels!r}")
    if not unlabelled >= 0:  # also NaN
        raise ValueError(f"unlabelled must be >= 0 (unlabelled items per labelled one; 0 = off), not {unlabelled!r}")


@dataclass
class ValidationSplit:
    """The items a student trains on and the ones it selects its epoch on, with where the val labels came from."""

    train: list[Item]
    val: list[Item]
    val_labels: list[str]
    source: str  # "store" | "gold" | "holdout"


def _train_labels(store: Store, dataset: str, task: Task, labels: dict[int, str] | None) -> dict[int, str]:
    """The labels to learn (default: the train split's effective labels), checked against the task."""
    if labels is None:
        labels = store.effective_labels(dataset, split="train")
    labels = {int(i): lab for i, lab in labels.items() if lab is not None}
    bad = sorted({lab for lab in labels.values() if lab not in task.labels})
    if bad:
        raise StudentError(f"labels {bad} are not labels of task {task.name!r} ({', '.join(task.labels)})")
    if not labels:
        raise StudentError(f"dataset {dataset!r} has no labelled train items; run `flywheel label {dataset}` first")
    return labels


def _train_items(store: Store, dataset: str, labels: dict[int, str]) -> list[Item]:
    """The labelled items; a test item among them is refused (the test split is for final numbers only)."""
    items = store.items(dataset, ids=sorted(labels))
    leaked = [it.id for it in items if it.split == "test"]
    if leaked:
        raise StudentError(f"{len(leaked)} of the training items are in the test split (e.g. {leaked[:3]}): "
                           "the test split is for final numbers only")
    return items


def _validation_split(store: Store, dataset: str, train_items: list[Item], labels: dict[int, str], val_labels: str,
                      seed: int) -> ValidationSplit:
    """Where the epoch/model choice is made: see ``val_labels`` in :func:`train_student`."""
    if val_labels in ("auto", "store"):
        vl = store.effective_labels(dataset, split="val")
        if vl:
            val_items = store.items(dataset, ids=sorted(vl))
            return ValidationSplit(train_items, val_items, [vl[it.id] for it in val_items], "store")
        if val_labels == "store":
            raise StudentError(f"the val split of {dataset!r} has no labels; label it or use val_labels='holdout'")
    elif val_labels == "gold":
        val_items = [it for it in store.items(dataset, split="val") if it.gold_label]
        if not val_items:
            raise StudentError(f"the val split of {dataset!r} has no gold labels")
        return ValidationSplit(train_items, val_items, [it.gold_label for it in val_items], "gold")  # type: ignore[misc]
    perm = np.random.default_rng(seed).permutation(len(train_items))
    n_hold = max(1, len(train_items) // 10) if len(train_items) >= 10 else 0
    hold = set(perm[:n_hold].tolist())
    val_items = [it for i, it in enumerate(train_items) if i in hold]
    return ValidationSplit([it for i, it in enumerate(train_items) if i not in hold], val_items,
                           [labels[it.id] for it in val_items], "holdout")


def _save(ws: Workspace, store: Store, student: Student, version: str, dataset: str, kind: str,
          split: ValidationSplit, labels: dict[int, str], metrics: dict[str, Any], *, round: int | None, role: str,
          export_onnx: bool) -> Path:
    """Write the model folder (weights, ONNX checked against torch, train_ids.json, metrics.json) and its row."""
    path = ws.models_dir / version
    student.save(path)
    if export_onnx and STUDENT_KINDS[kind].onnx:
        student.export_onnx(path / ONNX_FILE)
        metrics["onnx_max_abs_diff"] = _onnx_check(ws, path, student, split.val[:32] or split.train[:32])
    (path / "train_ids.json").write_text(json.dumps({
        "train": {str(it.id): labels[it.id] for it in split.train},
        "val": {str(it.id): lab for it, lab in zip(split.val, split.val_labels)},
        "val_labels": split.source,
    }))
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    meta = json.loads((path / "meta.json").read_text())
    store.add_model(version=version, dataset=dataset, kind=kind, path=str(path.relative_to(ws.root)),
                    metrics=metrics, meta=meta, round=round, role=role)
    return path


def _onnx_check(ws: Workspace, path: Path, student: Student, items: list[Item]) -> float | None:
    """Largest |p_torch - p_onnx| on a few items: the export is checked every time, not assumed."""
    if not items:
        return None
    a = student.predict_proba(items)
    b = load_student_dir(path, ws, runtime="onnx").predict_proba(items)
    return float(np.abs(a - b).max())


def model_row(store: Store, version: str) -> dict[str, Any]:
    row = store.model(version)
    if row is None:
        known = store.model_versions(limit=5)
        raise StudentError(f"no model version {version!r} (latest: {', '.join(known) or 'none'}); train one first")
    return row


def serving_version(store: Store, dataset: str) -> str:
    """THE model every default uses (calibrate, predict, serve, evaluate, the wheel): the promoted student, else the
    newest student.  A reference model (gold-trained) is never a default -- name it with ``--version`` to use it."""
    version = store.serving_version(dataset)
    if version is None:
        refs = store.model_versions(dataset, role="reference", limit=1)
        hint = (f" (only the reference model {refs[0]} is there, trained on gold labels; name it with --version "
                "to use it)") if refs else ""
        raise StudentError(f"dataset {dataset!r} has no trained model to serve{hint}; run `flywheel train {dataset}`")
    return version


def promote_model(ws: Workspace, dataset: str, version: str) -> str | None:
    """Make ``version`` ``dataset``'s serving model (what calibrate/predict/serve use by default, and what a running
    `flywheel serve` swaps in); returns the one it replaces.  Only a calibrated student of the dataset: a reference
    model is trained on gold, and an uncalibrated one has no threshold to serve with."""
    with ws.store() as store:
        model_files(ws, model_row(store, version))  # never make a version without files the default everywhere
        calibrated_model(store, dataset, version, StudentError, student_only=True)
        before = store.serving_version(dataset, promoted_only=True)
        store.promote(dataset, version)
    return before


def calibrated_model(store: Store, dataset: str, version: str, error: type[Exception],
                     student_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model row, latest calibration report) of ``dataset``'s model ``version`` -- what serving and promotion both
    need; ``error`` naming the fix when it is another dataset's, a reference model (``student_only``: promotion) or
    never calibrated."""
    row = model_row(store, version)
    if row["dataset"] != dataset:
        raise error(f"model {version!r} belongs to dataset {row['dataset']!r}, not {dataset!r}")
    if student_only and row.get("role", "student") != "student":
        raise error(f"model {version!r} is a {row['role']} model (trained on gold labels): it is never served; "
                    "promote a student trained on teacher labels")
    cal = store.latest_report("calibration", version)
    if cal is None:
        raise error(f"model {version!r} is not calibrated; run `flywheel calibrate {dataset} --version {version}` "
                    "(with --max-teacher-fraction 0.1 or --target-accuracy 0.95)")
    return row, cal


def latest_version(store: Store, dataset: str, *, promoted_first: bool = True) -> str:
    """:func:`serving_version` (``promoted_first=False``: the newest student, promoted or not); never a reference."""
    if promoted_first:
        return serving_version(store, dataset)
    versions = store.model_versions(dataset, role="student", limit=1)
    if not versions:
        return serving_version(store, dataset)  # raises with the hint
    return versions[0]


def load_student(ws: Workspace, version: str, *, runtime: str = "onnx") -> Student:
    """Load a recorded model version; ``runtime='onnx'`` (serving) or ``'torch'`` (the trainable student)."""
    store = ws.store()
    try:
        row = model_row(store, version)
    finally:
        store.close()
    return load_student_dir(model_files(ws, row), ws, runtime=runtime)


def model_files(ws: Workspace, row: dict[str, Any]) -> Path:
    """The folder of a model row; a :class:`StudentError` naming what to do when its files are gone."""
    path = ws.abspath(row["path"])
    if not path.is_dir():
        raise StudentError(f"the files of model {row['version']} are gone (removed by `flywheel models "
                           f"{row['dataset']} --prune`, or by hand): use another version (`flywheel models "
                           f"{row['dataset']}`) or train again")
    return path
