"""The Student protocol shared by image, text and tabular students, plus the pieces they share.

Why one protocol: the training loop, the evaluation, the cascade and the service never care which kind of student
they hold -- they ask for probabilities in the task's label order, save it, and export it for ONNX Runtime.
The shared torch training loop is in ``torch_fit``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llm_flywheel.store.base import Item

META_FILE = "meta.json"
ONNX_FILE = "model.onnx"


class StudentError(RuntimeError):
    """A student that cannot be built, trained or loaded; the message says what to do."""


@runtime_checkable
class Student(Protocol):
    """A small model that learns from (possibly noisy, possibly soft) teacher labels.

    ``labels`` fixes the column order of every probability matrix.  ``items`` are store Items; a student loads
    their content itself (image blobs from the workspace, text, features) via the workspace it was built with.
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

    def predict_proba_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        """Same as :meth:`predict_proba` for content that is not in the store (PIL images / bytes, str, floats)."""
        ...

    def save(self, path: Path) -> None:
        ...

    def export_onnx(self, path: Path) -> Path:
        ...


# -- shared helpers -------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 then float32: the one definition both runtimes use, so their outputs compare."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict_in_batches(student: "Student", items: Sequence[Item], batch_size: int = 512) -> np.ndarray:
    """``student.predict_proba`` over slices: bounded memory for students that load every item they are given."""
    out = [student.predict_proba(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    return np.concatenate(out, axis=0) if out else np.zeros((0, len(student.labels)), np.float32)


def version_info() -> dict[str, str]:
    """Library versions written into every model's meta.json (what produced these weights)."""
    from llm_flywheel._version import __version__

    info = {"llm_flywheel": __version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    full = {"version_info": version_info(), "saved_at": time.time(), **meta}
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path / META_FILE)


def read_meta(path: Path) -> dict[str, Any]:
    p = Path(path) / META_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudentError(f"{p} not found: not a saved student folder") from None
    except json.JSONDecodeError as e:
        raise StudentError(f"{p} is corrupt ({e}); retrain the model") from None


def torch_threads() -> int:
    """Threads for torch/ORT: $FLYWHEEL_THREADS, else min(cores, 4) -- small models gain nothing from more."""
    env = os.environ.get("FLYWHEEL_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(os.cpu_count() or 1, 4))


def make_session(path: Path, threads: int | None = None) -> Any:
    """An ORT CPU session with intra-op threads set (default: :func:`torch_threads`) and full graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise StudentError(f"cannot open ONNX model {path}: {type(e).__name__}: {e}") from None


def set_torch_threads() -> None:
    import torch

    n = torch_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def targets_matrix(
    y: np.ndarray, num_labels: int, soft_targets: np.ndarray | None, label_smoothing: float
) -> np.ndarray:
    """The distribution each item is trained towards: the teacher's pass distribution when given, else one-hot,
    mixed with a little uniform mass (label smoothing)."""
    n = len(y)
    if soft_targets is not None:
        q = np.asarray(soft_targets, dtype=np.float32).copy()
        if q.shape != (n, num_labels):
            raise StudentError(f"soft_targets has shape {q.shape}, expected {(n, num_labels)}")
        bad = ~np.isfinite(q).all(axis=1) | (q.sum(axis=1) <= 0)
        q[bad] = 0.0
        q[bad, np.asarray(y)[bad]] = 1.0  # unusable soft row -> the hard label
        q = np.clip(q, 0, None)
        q /= q.sum(axis=1, keepdims=True)
    else:
        q = np.zeros((n, num_labels), dtype=np.float32)
        q[np.arange(n), np.asarray(y, dtype=int)] = 1.0
    if label_smoothing > 0:
        q = (1 - label_smoothing) * q + label_smoothing / num_labels
    return q.astype(np.float32)
