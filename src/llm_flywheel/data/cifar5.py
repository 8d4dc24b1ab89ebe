"""CIFAR5: the seed's task -- five CIFAR-100 fine classes (2,500 train / 500 test images, 32x32 colour).

Why read the pickle format ourselves: it is exactly what torchvision downloads (``cifar-100-python/{train,test,meta}``),
so a user can point ``--path`` at a folder or the ``cifar-100-python.tar.gz`` archive on an offline machine, and
torchvision (a heavy optional extra) is needed only to download.  The pickles are read with a restricted
unpickler that accepts nothing but plain containers and numpy arrays, so a hostile archive cannot run code.
"""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from llm_flywheel.core.task import Task, builtin_task
from llm_flywheel.data.base import Record
from llm_flywheel.data.fashion_mnist import DatasetFormatError, DatasetMissingError

log = logging.getLogger(__name__)

# CIFAR-100 fine label index -> our label name (the seed's five classes)
CLASSES: dict[int, str] = {0: "apple", 51: "mushroom", 53: "orange", 57: "pear", 83: "sweet_pepper"}
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Only numpy arrays and plain Python containers: CIFAR pickles need nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _unpickle(f: BinaryIO, where: str) -> dict[str, Any]:
    try:
        obj = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:  # pickle raises many types on garbage
        raise DatasetFormatError(f"{where}: not a CIFAR-100 pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _open_members(path: Path) -> dict[str, dict[str, Any]]:
    """Read ``train`` and ``test`` (and ``meta`` when present) from a folder or a .tar.gz archive."""
    out: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and Path(member.name).parent.name == FOLDER and name in ("train", "test", "meta"):
                        f = tar.extractfile(member)
                        assert f is not None
                        out[name] = _unpickle(io.BytesIO(f.read()), f"{path}:{member.name}")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetFormatError(f"{path}: not a readable tar archive ({type(e).__name__}: {e})") from None
    else:
        folder = path if path.name == FOLDER or (path / "train").is_file() else path / FOLDER
        for name in ("train", "test", "meta"):
            p = folder / name
            if p.is_file():
                with open(p, "rb") as f:
                    out[name] = _unpickle(f, str(p))
    missing = [n for n in ("train", "test") if n not in out]
    if missing:
        raise DatasetMissingError(f"{path}: no {FOLDER}/{' or '.join(missing)} found. {_HOW_TO_GET}")
    return out


_HOW_TO_GET = (
    f"Get CIFAR-100 ({URL}, python version) and pass --path to {ARCHIVE} or to the extracted {FOLDER} folder, "
    "or install the vision extra (pip install 'llm-flywheel[vision]') on a machine with a network so "
    "torchvision downloads it."
)


def locate(path: str | Path | None, download_root: Path) -> Path:
    """Where the CIFAR-100 files are: ``path`` if given, else a previous download, else torchvision's downloader."""
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise DatasetMissingError(f"{p} does not exist. {_HOW_TO_GET}")
        return p
    for cand in (download_root / FOLDER, download_root / ARCHIVE):
        if cand.exists():
            return cand
    try:
        from torchvision.datasets import CIFAR100  # type: ignore[import-not-found]
    except ImportError:
        raise DatasetMissingError(f"CIFAR-100 is not here and torchvision is not installed. {_HOW_TO_GET}") from None
    try:
        CIFAR100(root=str(download_root), train=True, download=True)
    except Exception as e:  # no network, checksum mismatch, ...
        raise DatasetMissingError(f"torchvision could not download CIFAR-100 ({type(e).__name__}: {e}). {_HOW_TO_GET}") from None
    return download_root / FOLDER


def cifar5_source(
    path: str | Path | None = None, *, download_root: str | Path = "downloads", limit: int | None = None
) -> tuple[Task, Iterator[Record], int]:
    """The built-in cifar5 task, its records (train then test, source order) and their count."""
    task = builtin_task("cifar5")
    members = _open_members(locate(path, Path(download_root)))
    names = members.get("meta", {}).get("fine_label_names")
    if names is not None:
        for idx, label in CLASSES.items():
            if idx >= len(names) or str(names[idx]) != label:
                raise DatasetFormatError(
                    f"CIFAR-100 meta says fine label {idx} is {names[idx] if idx < len(names) else None!r}, expected {label!r}"
                )
    selected: dict[str, tuple[np.ndarray, list[int], list[int]]] = {}
    for split in ("train", "test"):
        d = members[split]
        if "data" not in d or "fine_labels" not in d:
            raise DatasetFormatError(f"CIFAR-100 {split}: missing 'data' or 'fine_labels'")
        data = np.asarray(d["data"], dtype=np.uint8)
        fine = list(d["fine_labels"])
        if data.ndim != 2 or data.shape[1] != 3072 or len(fine) != len(data):
            raise DatasetFormatError(f"CIFAR-100 {split}: data shape {data.shape} vs {len(fine)} labels; expected N x 3072")
        idx = [i for i, y in enumerate(fine) if y in CLASSES]
        if limit is not None:
            idx = idx[:limit]
        selected[split] = (data, fine, idx)

    def gen() -> Iterator[Record]:
        for split, (data, fine, idx) in selected.items():
            for i in idx:
                img = data[i].reshape(3, 32, 32).transpose(1, 2, 0)  # CHW planes -> HWC
                yield Record(f"{split}:{i}", image=np.ascontiguousarray(img), source_split=split,
                             gold_label=CLASSES[fine[i]])

    return task, gen(), sum(len(v[2]) for v in selected.values())
