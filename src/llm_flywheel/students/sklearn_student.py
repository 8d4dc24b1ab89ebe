"""scikit-learn students: one estimator chosen on the validation split from a small grid (text-tfidf, tabular-hgb).

Why a shared base: both honour soft targets the same way (one row per label the teacher gave mass to, see
:func:`expand_soft`), cap OpenMP threads the same way, and save/load as one pickle.  No ONNX export (skl2onnx is
not a dependency): they are served with scikit-learn directly.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import StudentError, read_meta, targets_matrix, torch_threads, write_meta


def expand_soft(n_items: int, y: np.ndarray, q: np.ndarray | None, w: np.ndarray | None,
                min_mass: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft targets for estimators that only take hard labels: one row per (item, label with mass), weighted by
    that mass x the item's weight.  Returns (row -> item index, row label, row weight)."""
    w = np.ones(n_items, np.float32) if w is None else np.asarray(w, np.float32)
    if q is None:
        return np.arange(n_items), np.asarray(y, int), w
    rows, labs, wts = [], [], []
    for i in range(n_items):
        for k in np.nonzero(q[i] >= min_mass)[0]:
            rows.append(i)
            labs.append(int(k))
            wts.append(float(q[i, k]) * float(w[i]))
    return np.asarray(rows, int), np.asarray(labs, int), np.asarray(wts, np.float32)


def full_proba(clf: Any, x: Any, num_labels: int) -> np.ndarray:
    """predict_proba with a column for every task label (classes never seen in training get 0)."""
    p = clf.predict_proba(x)
    out = np.zeros((p.shape[0], num_labels), np.float32)
    out[:, np.asarray(clf.classes_, int)] = p
    s = out.sum(axis=1, keepdims=True)
    return out / np.where(s > 0, s, 1)


class SklearnStudent:
    """Base for students backed by one scikit-learn estimator chosen on the validation split from a small grid."""

    kind = "sklearn"
    modality = "text"
    grid: list[dict[str, Any]] = [{}]

    def __init__(self, labels: Sequence[str], ws: Workspace | None = None, **hp: Any) -> None:
        self.labels = tuple(labels)
        self.ws = ws
        self.hp: dict[str, Any] = {"seed": 0, **{k: v for k, v in hp.items() if k != "progress"}}
        self.model: Any = None
        self.history: dict[str, Any] = {}

    # subclasses: turn raw inputs / items into the estimator's X, and build the estimator
    def _x_raw(self, inputs: Sequence[Any]) -> Any:
        raise NotImplementedError

    def _x_items(self, items: Sequence[Item]) -> Any:
        raise NotImplementedError

    def _estimator(self, **params: Any) -> Any:
        raise NotImplementedError

    def fit(self, train: Sequence[Item], y_train: np.ndarray, val: Sequence[Item], y_val: np.ndarray, *,
            soft_targets: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> dict[str, Any]:
        import time

        t0 = time.time()
        if soft_targets is not None:
            soft_targets = targets_matrix(np.asarray(y_train), len(self.labels), soft_targets, 0.0)
        rows, labs, wts = expand_soft(len(train), np.asarray(y_train), soft_targets, sample_weight)
        xt_items = self._x_items(train)
        xv = self._x_items(val) if len(val) else None
        y_val = np.asarray(y_val, int)
        trials = []
        best = None
        grid = [self.hp["params"]] if "params" in self.hp else self.grid
        for params in grid:
            model = self._estimator(**params)
            with _threads(len(rows)):
                model.fit(_take(xt_items, rows), labs, sample_weight=wts)
                acc = float((full_proba(model, xv, len(self.labels)).argmax(1) == y_val).mean()) if xv is not None else None
            trials.append({"params": params, "val_acc": acc})
            if best is None or (acc is not None and acc > best[0]):
                best = (acc if acc is not None else -1.0, params, model)
            if xv is None:
                break  # nothing to choose with: keep the first (default) setting
        self.model = best[2]
        self.hp["chosen"] = best[1]
        self.history = {"trials": trials, "chosen": best[1], "best_val_acc": best[0] if xv is not None else None,
                        "n_train": len(train), "n_val": len(val), "train_seconds": round(time.time() - t0, 2),
                        "soft_targets": soft_targets is not None, "epochs_run": 1, "best_epoch": 1}
        return self.history

    def _check(self) -> None:
        if self.model is None:
            raise StudentError(f"{self.kind} student is not trained (call fit or load)")

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        self._check()
        if not len(items):
            return np.zeros((0, len(self.labels)), np.float32)
        with _threads(len(items)):
            return full_proba(self.model, self._x_items(items), len(self.labels))

    def predict_proba_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        self._check()
        if not len(inputs):
            return np.zeros((0, len(self.labels)), np.float32)
        with _threads(len(inputs)):
            return full_proba(self.model, self._x_raw(inputs), len(self.labels))

    def predict_logits(self, items: Sequence[Item]) -> np.ndarray:
        return np.log(np.clip(self.predict_proba(items), 1e-7, None))

    def predict_logits_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        return np.log(np.clip(self.predict_proba_raw(inputs), 1e-7, None))

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "modality": self.modality, "labels": list(self.labels), "pretrained": None,
                "hparams": self.hp, "preprocessing": self._preprocessing(),
                "onnx": None, "onnx_note": "served with scikit-learn (skl2onnx is not a dependency)"}

    def _preprocessing(self) -> dict[str, Any]:
        return {}

    def save(self, path: Path) -> None:
        self._check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / "model.pkl.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self.model, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path / "model.pkl")
        write_meta(path, self.meta())

    @classmethod
    def load(cls, path: Path, ws: Workspace | None = None) -> "SklearnStudent":
        meta = read_meta(path)
        s = cls(meta["labels"], ws, **{k: v for k, v in meta.get("hparams", {}).items() if k != "chosen"})
        try:
            with open(Path(path) / "model.pkl", "rb") as f:
                s.model = pickle.load(f)  # our own file, written by save()
        except Exception as e:
            raise StudentError(f"cannot load {Path(path) / 'model.pkl'}: {type(e).__name__}: {e}") from None
        return s

    def export_onnx(self, path: Path | None = None) -> Path:
        raise StudentError(f"{self.kind} has no ONNX export (skl2onnx is not a dependency); it is served with scikit-learn")


def _threads(n_rows: int) -> Any:
    """Limit OpenMP threads for scikit-learn: on small data extra threads only add synchronisation, and beside
    torch's own OpenMP pool in the same process they were measured ~25x slower (45 s vs 1.7 s on a 2-core box)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1 if n_rows < 20_000 else torch_threads())


def _take(x: Any, rows: np.ndarray) -> Any:
    return x[rows]


class WeightedPipeline(Pipeline):
    """A Pipeline whose fit takes ``sample_weight`` and hands it to the final estimator (module level: picklable)."""

    def fit(self, X, y=None, sample_weight=None, **kw):  # noqa: N803 - sklearn naming
        return super().fit(X, y, **{f"{self.steps[-1][0]}__sample_weight": sample_weight})
