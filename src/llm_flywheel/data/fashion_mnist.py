"""Fashion-MNIST from the idx files of Debian's ``dataset-fashion-mnist`` package.

Why idx and numpy: the files are four gzip'd arrays with a tiny header, so reading them needs no download and no
extra dependency, and 70,000 images parse in about a second.  Labels map onto the built-in task's label names in
the dataset's own order (0 = T-shirt/top ... 9 = Ankle boot).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llm_flywheel.core.task import Task, builtin_task
from llm_flywheel.data.base import Record

DEFAULT_PATH = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60_000, "test": 10_000}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DatasetMissingError(FileNotFoundError):
    """The source files are not where we looked; the message says how to get them."""


class DatasetFormatError(ValueError):
    """The source files exist but are not in the expected format."""


def _find(folder: Path, stem: str) -> Path:
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    raise DatasetMissingError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}. Install it with "
        f"`sudo apt-get install {DEBIAN_PACKAGE}` (files go to {DEFAULT_PATH}) or pass --path to a folder "
        "holding the four idx files."
    )


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read one idx file (gzip'd or raw) into a uint8 array, checking the magic number and the declared size."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise DatasetFormatError(f"{p}: cannot read ({type(e).__name__}: {e})") from None
    if len(data) < 8:
        raise DatasetFormatError(f"{p}: too short to be an idx file ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise DatasetFormatError(f"{p}: idx magic number {magic:#010x}, expected {expected_magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    n = int(np.prod(dims))
    if len(data) - header != n:
        raise DatasetFormatError(f"{p}: header declares shape {dims} ({n} bytes) but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28, labels N) for ``split`` in ``train`` | ``test``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetMissingError(
            f"Fashion-MNIST folder {folder} does not exist. Install it with `sudo apt-get install {DEBIAN_PACKAGE}` "
            f"(files go to {DEFAULT_PATH}) or pass --path to a folder holding the four idx files."
        )
    img_stem, lab_stem = FILES[split]
    images = read_idx(_find(folder, img_stem), IMAGES_MAGIC)
    labels = read_idx(_find(folder, lab_stem), LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFormatError(f"{folder} {split}: {images.shape} images do not match {labels.shape} labels")
    return images, labels


def fashion_mnist_source(
    path: str | Path | None = None, *, limit: int | None = None
) -> tuple[Task, Iterator[Record], int]:
    """The built-in task, a record iterator and the record count.  ``limit``: first N of each source split.

    The files are parsed (and checked) before returning, so a missing or corrupt file fails fast with a clear
    message instead of part-way through an import.
    """
    task = builtin_task("fashion-mnist")
    folder = Path(path) if path is not None else DEFAULT_PATH
    arrays = {s: load_split(folder, s) for s in FILES}
    for split, (_, labels) in arrays.items():
        bad = labels >= len(task.labels)
        if bad.any():
            raise DatasetFormatError(f"{folder} {split}: label {int(labels[bad][0])} is outside 0..{len(task.labels) - 1}")
    counts = {s: len(a[0]) if limit is None else min(limit, len(a[0])) for s, a in arrays.items()}

    def gen() -> Iterator[Record]:
        for split, (images, labels) in arrays.items():
            for i in range(counts[split]):
                yield Record(
                    f"{split}:{i}", image=images[i], source_split=split, gold_label=task.labels[int(labels[i])]
                )

    return task, gen(), sum(counts.values())
