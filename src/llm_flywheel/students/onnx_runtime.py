"""Serving students with ONNX Runtime.

Why: on CPU, ONNX Runtime runs these small networks several times faster than PyTorch eager (graph optimisation,
fused kernels, no Python per layer).  An :class:`OnnxStudent` reads a saved model folder (``meta.json`` +
``model.onnx``) and implements the same ``predict_proba`` / ``predict_proba_raw`` as the torch student, with the
*same* preprocessing function, so the two runtimes agree to ~1e-5.

What runs where:
- image students: the whole network (normalisation included) runs in ONNX Runtime;
- ``text-minilm``: the linear head (per model) and the MiniLM encoder (exported once per workspace, shared by all
  versions) both run in ONNX Runtime; embeddings are cached per content hash;
- ``text-tfidf`` / ``tabular-hgb``: no ONNX (skl2onnx is not a dependency) -- :func:`load_student` serves them
  with scikit-learn directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import ONNX_FILE, StudentError, make_session, read_meta, softmax  # noqa: F401 - make_session re-exported
from llm_flywheel.students.minilm import OnnxMiniLMEncoder


class OnnxStudent:
    """A saved student served by ONNX Runtime (inference only: ``fit`` is not available)."""

    def __init__(self, path: Path, ws: Workspace | None = None, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.kind: str = self.meta["kind"]
        self.labels: tuple[str, ...] = tuple(self.meta["labels"])
        self.modality: str = self.meta.get("modality", "image")
        self.ws = ws
        onnx_path = self.path / ONNX_FILE
        if not onnx_path.exists():
            raise StudentError(f"{onnx_path} is missing; re-export with `flywheel train` or load with runtime='torch'")
        self.session = make_session(onnx_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self._encoder: Any = None

    def fit(self, *a: Any, **k: Any) -> dict[str, Any]:
        raise StudentError("an ONNX Runtime student is for inference; train with train_student()")

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw model output (logits) for an already preprocessed batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def _inputs(self, raw: Sequence[Any]) -> np.ndarray:
        if self.modality == "image":
            from llm_flywheel.students.image_pixels import preprocess_images

            pre = self.meta["preprocessing"]
            return preprocess_images(raw, int(pre["size"]), int(pre["channels"]))
        if self.modality == "text":
            if self._encoder is None:
                self._encoder = OnnxMiniLMEncoder(self.ws)
            return self._encoder.encode([str(t) for t in raw], write_cache=False)
        raise StudentError(f"no ONNX input pipeline for modality {self.modality!r}")

    def predict_logits_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, len(self.labels)), np.float32)
        return self.run(self._inputs(inputs))

    def predict_proba_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        return softmax(self.predict_logits_raw(inputs)) if len(inputs) else np.zeros((0, len(self.labels)), np.float32)

    def _raw_of(self, items: Sequence[Item]) -> Sequence[Any]:
        if self.modality == "image":
            if self.ws is None:
                raise StudentError("loaded without a workspace; use predict_proba_raw on images")
            from llm_flywheel.data import StoredImages

            return StoredImages(self.ws, [str(it.blob_path) for it in items])  # decoded one at a time
        if self.modality == "text":
            return [it.text or "" for it in items]
        raise StudentError(f"no ONNX input pipeline for modality {self.modality!r}")

    def predict_logits(self, items: Sequence[Item], batch: int = 512) -> np.ndarray:
        if self.modality == "text":
            if self._encoder is None:
                self._encoder = OnnxMiniLMEncoder(self.ws)
            return self.run(self._encoder.encode_items(items)) if items else np.zeros((0, len(self.labels)), np.float32)
        outs = [self.predict_logits_raw(self._raw_of(items[s : s + batch])) for s in range(0, len(items), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        return softmax(self.predict_logits(items)) if len(items) else np.zeros((0, len(self.labels)), np.float32)

    def save(self, path: Path) -> None:
        raise StudentError("an ONNX Runtime student is already saved at " + str(self.path))

    def export_onnx(self, path: Path | None = None) -> Path:
        return self.path / ONNX_FILE
