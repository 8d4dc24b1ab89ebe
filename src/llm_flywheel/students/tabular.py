"""Tabular student: scikit-learn's HistGradientBoostingClassifier.

Why: gradient boosting is the strong default on tables, handles missing values (NaN) natively and needs no scaling;
scikit-learn's implementation adds no dependency.  Soft targets are honoured by expanding each item into one row per
label the teacher gave mass to (see :func:`~llm_flywheel.students.sklearn_student.expand_soft`).  No ONNX export (skl2onnx is
not a dependency): it is served with scikit-learn, which is already fast for trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.students.base import StudentError
from llm_flywheel.students.sklearn_student import SklearnStudent


def features_matrix(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    """List of feature lists (None = missing) -> float32 matrix with NaN for missing."""
    if not len(rows):
        return np.zeros((0, 0), np.float32)
    width = len(rows[0])
    out = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        if r is None or len(r) != width:
            raise StudentError(f"row {i} has {0 if r is None else len(r)} features, expected {width}")
        out[i] = [np.nan if v is None else float(v) for v in r]
    return out


class HGBStudent(SklearnStudent):
    """HistGradientBoosting; learning rate and tree size chosen on the validation split."""

    kind = "tabular-hgb"
    modality = "tabular"
    grid = [{"learning_rate": lr, "max_leaf_nodes": leaves} for lr in (0.1, 0.05) for leaves in (31, 15)]

    def _estimator(self, **params: Any) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            learning_rate=float(params.get("learning_rate", 0.1)), max_leaf_nodes=int(params.get("max_leaf_nodes", 31)),
            max_iter=int(self.hp.get("max_iter", 200)), early_stopping=False, random_state=int(self.hp.get("seed", 0)),
        )

    def _x_items(self, items: Sequence[Item]) -> np.ndarray:
        return features_matrix([it.features or [] for it in items])

    def _x_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        return features_matrix([list(x) for x in inputs])

    def _preprocessing(self) -> dict[str, Any]:
        return {"features": "float32, None/NaN = missing (handled natively)"}
