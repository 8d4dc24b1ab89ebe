"""Tabular student: scikit-learn's HistGradientBoostingClassifier.

Why: gradient boosting is the strong default on tables, handles missing values (NaN) natively, splits on categories
natively (a categorical column -- text values -- goes through an ``OrdinalEncoder`` whose unknown and missing values
become NaN) and needs no scaling; scikit-learn's implementation adds no dependency.  Soft targets are honoured by
expanding each item into one row per label the teacher gave mass to (see
:func:`~llm_flywheel.students.sklearn_student.expand_soft`).  No ONNX export (skl2onnx is not a dependency): it is
served with scikit-learn, which is already fast for trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.students.base import StudentError
from llm_flywheel.students.sklearn_student import SklearnStudent


MAX_CATEGORIES = 254  # HistGradientBoosting bins a categorical column into at most 255 bins, one kept for missing


def features_matrix(rows: Sequence[Sequence[float | str | None]], categorical: Sequence[int] = ()) -> np.ndarray:
    """List of feature lists (None = missing) -> float32 matrix with NaN for missing; with ``categorical`` column
    indices an object matrix whose categorical cells are their text (NaN when missing or not text)."""
    if not len(rows):
        return np.zeros((0, 0), np.float32)
    width = len(rows[0])
    cats = set(categorical)
    out = np.full((len(rows), width), np.nan, dtype=object if cats else np.float32)
    for i, r in enumerate(rows):
        if r is None or len(r) != width:
            raise StudentError(f"row {i} has {0 if r is None else len(r)} features, expected {width}")
        try:
            out[i] = [(v if isinstance(v, str) else np.nan) if j in cats else np.nan if v is None else float(v)
                      for j, v in enumerate(r)]
        except (TypeError, ValueError):
            raise StudentError(f"row {i}: a text value in a numeric column ({list(r)}); the model was trained "
                               "with numbers there") from None
    return out


def text_columns(rows: Sequence[Sequence[Any]]) -> list[int]:
    """Indices of the columns holding text (categorical features) in any row."""
    return sorted({j for r in rows for j, v in enumerate(r or []) if isinstance(v, str)})


class HGBStudent(SklearnStudent):
    """HistGradientBoosting; learning rate and tree size chosen on the validation split."""

    kind = "tabular-hgb"
    modality = "tabular"
    grid = [{"learning_rate": lr, "max_leaf_nodes": leaves} for lr in (0.1, 0.05) for leaves in (31, 15)]

    @property
    def categorical(self) -> list[int]:
        """Indices of the categorical columns: the task's, and any holding text in the training rows (kept in the
        saved hyper-parameters, so a loaded model reads its inputs as it was trained)."""
        return list(self.hp.get("categorical_columns") or [])

    def fit(self, train: Sequence[Item], y_train: np.ndarray, val: Sequence[Item], y_val: np.ndarray,
            **kw: Any) -> dict[str, Any]:
        cats = sorted(set(self.categorical) | set(text_columns([it.features or [] for it in train])))
        if cats:
            self.hp["categorical_columns"] = cats
        return super().fit(train, y_train, val, y_val, **kw)

    def _estimator(self, **params: Any) -> Any:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.preprocessing import OrdinalEncoder

        from llm_flywheel.students.sklearn_student import WeightedPipeline

        cats = self.categorical
        hgb = HistGradientBoostingClassifier(
            learning_rate=float(params.get("learning_rate", 0.1)), max_leaf_nodes=int(params.get("max_leaf_nodes", 31)),
            max_iter=int(self.hp.get("max_iter", 200)), early_stopping=False, random_state=int(self.hp.get("seed", 0)),
            categorical_features=list(range(len(cats))) if cats else None,
        )
        if not cats:
            return hgb
        encode = ColumnTransformer(  # the encoded categories first, then the numeric columns as they are
            [("categories", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                           encoded_missing_value=np.nan, max_categories=MAX_CATEGORIES), cats)],
            remainder="passthrough")
        return WeightedPipeline([("encode", encode), ("hgb", hgb)])

    def unseen(self, inputs: Sequence[Sequence[Any]]) -> list[dict[int, str]]:
        """Per input, its categorical values the model never saw in training ({column index: value}).  The model
        answers such a value as a missing one, confidently maybe: serving reports it, because the calibration
        never saw it either (drift a user should hear of, and data the next round should learn)."""
        cats = self.categorical
        if not cats or self.model is None or not hasattr(self.model, "named_steps"):
            return [{} for _ in inputs]
        known = self.model.named_steps["encode"].named_transformers_["categories"].categories_
        seen = {j: {v for v in k if isinstance(v, str)} for j, k in zip(cats, known)}
        return [{j: x[j] for j in cats if j < len(x) and isinstance(x[j], str) and x[j] not in seen[j]}
                for x in map(list, inputs)]

    def _x_items(self, items: Sequence[Item]) -> np.ndarray:
        return features_matrix([it.features or [] for it in items], self.categorical)

    def _x_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        return features_matrix([list(x) for x in inputs], self.categorical)

    def _preprocessing(self) -> dict[str, Any]:
        return {"features": "float32, None/NaN = missing (handled natively)"
                + (f"; columns {self.categorical} categorical (ordinal codes, unknown = missing)" if self.categorical
                   else "")}
