"""``image-pair``: the fast CNN and the pretrained EfficientNet-Lite0 fitted on the same labels, served averaged.

Why: with few labelled images the two networks make different mistakes -- one learns the data's own pixels from
scratch, the other brings ImageNet features -- so their averaged probabilities beat either alone.  On
Fashion-MNIST with 2,500 teacher labels the average beat efficientnet-lite0 alone on each of 6 label draws (+0.4
to +2.2 points on 10,000 gold test images, +1.2 on average; ``benchmarks/bench_student_ensemble.py``).  Both were
trained anyway (the few-label default used to fit both and keep one), so the average costs no training -- only
the small CNN's inference beside the pretrained network's, a fraction of the latter.

Which to serve is decided on val, not assumed: each network alone and their average are scored by val log-loss
(the whole probability, not only the argmax: 500 val items decide accuracy by a few items, and the cascade's
threshold reads the probabilities), and the lowest is kept -- the first of equals in the order image-cnn,
efficientnet-lite0, average.  Only the networks kept are saved, each as an ordinary image-student folder under
``members/<kind>/`` with its own ``model.onnx``, so every runtime (torch, ONNX) serves them as it serves one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import ONNX_FILE, StudentError, read_meta, softmax, write_meta
from llm_flywheel.students.image import ImageStudent, unknown_hparams

MEMBERS = ("image-cnn", "efficientnet-lite0")
AVERAGE = "average"
MEMBERS_DIR = "members"


def pair_unknown_hparams(hparams: Sequence[str] | dict[str, Any]) -> set[str]:
    """The names among ``hparams`` that not both networks take (a setting the pair cannot pass to each)."""
    return set().union(*(unknown_hparams(k, hparams) for k in MEMBERS))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true label (probabilities clipped at 1e-12)."""
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


class ImagePairStudent:
    """image-cnn + efficientnet-lite0 on the same labels; serves the val log-loss's best of each alone or both
    averaged (see the module docstring)."""

    kind = "image-pair"
    modality = "image"

    def __init__(self, labels: Sequence[str], ws: Workspace | None = None, *, members: dict[str, Any] | None = None,
                 **hparams: Any) -> None:
        unknown = [unknown_hparams(k, hparams) for k in MEMBERS]
        if set.intersection(*unknown):
            raise StudentError(f"image-pair: unknown hyper-parameter(s) {sorted(set.intersection(*unknown))}")
        if set.union(*unknown):
            raise StudentError(f"image-pair: {sorted(set.union(*unknown))} is a setting of one network only; name "
                               "that student kind (image-cnn or efficientnet-lite0) to use it")
        self.labels = tuple(labels)
        self.ws = ws
        self.hp: dict[str, Any] = {"seed": 0, **hparams}
        self.members: dict[str, Any] = dict(members or {})  # kind -> a fitted or loaded student, the kept ones only
        self.history: dict[str, Any] = {}

    # -- training ------------------------------------------------------------------------------------------------
    def fit(self, train: Sequence[Item], y_train: np.ndarray, val: Sequence[Item], y_val: np.ndarray, *,
            soft_targets: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> dict[str, Any]:
        """Fit both networks on the same labels (each picks its epoch on val), then keep the lowest val log-loss."""
        t0 = time.perf_counter()
        fitted, seconds, probs = {}, {}, {}
        for kind in MEMBERS:
            t = time.perf_counter()
            st = ImageStudent(kind, self.labels, self.ws, **self.hp)
            st.fit(train, y_train, val, y_val, soft_targets=soft_targets, sample_weight=sample_weight)
            fitted[kind], seconds[kind] = st, round(time.perf_counter() - t, 2)
            probs[kind] = st.predict_proba(val) if len(val) else None
        y_val = np.asarray(y_val, int)
        if len(y_val):
            probs[AVERAGE] = (probs[MEMBERS[0]] + probs[MEMBERS[1]]) / 2
            loss = {k: log_loss(p, y_val) for k, p in probs.items()}
            acc = {k: float((p.argmax(1) == y_val).mean()) for k, p in probs.items()}
            keep = min(loss, key=lambda k: loss[k])  # min keeps the first of equals: one network before the average
            choice = "kept on val log-loss: " + ", ".join(f"{k} {v:.3f}" for k, v in loss.items())
        else:
            loss, acc, keep = {}, {}, AVERAGE
            choice = ("no val items to choose on: both networks kept, averaged (better than either alone on each of "
                      "6 Fashion-MNIST label draws)")
        kept = MEMBERS if keep == AVERAGE else (keep,)
        self.members = {k: fitted[k] for k in kept}
        self.history = self._history(fitted, seconds, loss, acc, keep, choice, time.perf_counter() - t0)
        return self.history

    def _history(self, fitted: dict[str, Any], seconds: dict[str, float], loss: dict[str, float],
                 acc: dict[str, float], keep: str, choice: str, total: float) -> dict[str, Any]:
        """The kept combination's record, with each network's own (epochs, mirror averaging, seconds)."""
        members = {k: {f: st.history.get(f) for f in ("epochs_run", "best_epoch", "best_val_acc", "train_seconds",
                                                       "tta", "pretrained")} for k, st in fitted.items()}
        candidates = [{"kind": k, "val_acc": acc.get(k), "val_logloss": loss.get(k), "kept": k == keep,
                       "seconds": seconds.get(k)} for k in (*MEMBERS, AVERAGE)]
        one = members.get(keep)
        tta = one["tta"] if one else {
            "used": any((m["tta"] or {}).get("used") for m in members.values()),
            "why": "; ".join(f"{k} {'on' if (m['tta'] or {}).get('used') else 'off'}" for k, m in members.items())}
        return {"best_val_acc": acc.get(keep), "best_val_logloss": loss.get(keep), "kept": keep, "choice": choice,
                "epochs_run": one["epochs_run"] if one else None, "best_epoch": one["best_epoch"] if one else None,
                "train_seconds": round(total, 2), "pretrained": None if keep == MEMBERS[0] else
                members[MEMBERS[1]]["pretrained"], "tta": tta, "members": members, "candidates": candidates}

    # -- prediction ----------------------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if not self.members:
            raise StudentError("image-pair student is not trained (call fit or load)")

    def _combine(self, probs: list[np.ndarray]) -> np.ndarray:
        """Log of the members' averaged probabilities: softmax of it gives the average back exactly."""
        return np.log(np.clip(np.mean(probs, axis=0), 1e-30, None)).astype(np.float32)

    def predict_logits(self, items: Sequence[Item]) -> np.ndarray:
        self._check_ready()
        if len(self.members) == 1:
            return next(iter(self.members.values())).predict_logits(items)
        return self._combine([m.predict_proba(items) for m in self.members.values()])

    def predict_logits_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        self._check_ready()
        if len(self.members) == 1:
            return next(iter(self.members.values())).predict_logits_raw(inputs)
        return self._combine([m.predict_proba_raw(inputs) for m in self.members.values()])

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        return softmax(self.predict_logits(items)) if len(items) else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        return softmax(self.predict_logits_raw(inputs)) if len(inputs) else np.zeros((0, len(self.labels)), np.float32)

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """meta.json naming the kept members; each member in ``members/<kind>/`` as an ordinary image student."""
        self._check_ready()
        path = Path(path)
        for kind, st in self.members.items():
            st.save(path / MEMBERS_DIR / kind)
        write_meta(path, {"kind": self.kind, "modality": self.modality, "labels": list(self.labels),
                          "members": list(self.members), "kept": self.history.get("kept"),
                          "hparams": {k: v for k, v in self.hp.items() if k != "progress"},
                          "onnx": {"files": [f"{MEMBERS_DIR}/{k}/{ONNX_FILE}" for k in self.members],
                                   "combine": "mean of the members' softmax probabilities"}})

    def export_onnx(self, path: Path | None = None) -> Path:
        """One ONNX graph per kept member, in its own folder; returns the model folder."""
        self._check_ready()
        folder = Path(path) if path is not None else Path(".")
        folder = folder.parent if folder.suffix == ".onnx" else folder
        for kind, st in self.members.items():
            st.export_onnx(folder / MEMBERS_DIR / kind / ONNX_FILE)
        return folder

    @classmethod
    def load(cls, path: Path, ws: Workspace | None = None, *, runtime: str = "torch") -> "ImagePairStudent":
        """The saved pair; ``runtime='onnx'`` serves each member with ONNX Runtime."""
        meta = read_meta(path)
        kinds = meta.get("members") or []
        if not kinds or any(k not in MEMBERS for k in kinds):
            raise StudentError(f"{Path(path)}/meta.json names members {kinds}; expected some of {list(MEMBERS)} "
                               "(retrain the model)")
        if runtime == "onnx":
            from llm_flywheel.students.onnx_runtime import OnnxStudent

            members = {k: OnnxStudent(Path(path) / MEMBERS_DIR / k, ws) for k in kinds}
        else:
            members = {k: ImageStudent.load(Path(path) / MEMBERS_DIR / k, ws) for k in kinds}
        hp = {k: v for k, v in (meta.get("hparams") or {}).items() if not pair_unknown_hparams([k])}
        s = cls(meta["labels"], ws, members=members, **hp)
        s.history = {"kept": meta.get("kept")}
        return s
