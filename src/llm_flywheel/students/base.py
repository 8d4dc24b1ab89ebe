"""The Student protocol shared by image, text and tabular students."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..store import Item


@runtime_checkable
class Student(Protocol):
    """A small model that learns from (possibly noisy, possibly soft) teacher labels.

    ``labels`` fixes the column order of every probability matrix.  ``items`` are store Items; a student loads
    their content itself (image blobs from the workspace, text, features) via the loader it was built with.
    """

    kind: str
    labels: tuple[str, ...]

    def fit(
        self,
        train: Sequence[Item],
        y_train: np.ndarray,
        val: Sequence[Item],
        y_val: np.ndarray,
        *,
        soft_targets: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Train; ``y_*`` are label indices.  Returns training history/metadata (epochs, best val score...)."""
        ...

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        """(n, num_labels) probabilities, rows summing to 1."""
        ...

    def save(self, path: Path) -> None:
        ...

    def export_onnx(self, path: Path) -> Path:
        ...
