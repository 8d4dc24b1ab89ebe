"""Fashion-MNIST adapter on idx files the test writes itself (and on the real Debian files when installed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from llm_flywheel.data import load_image
from llm_flywheel.data.fashion_mnist import (
    DEFAULT_PATH, DatasetFormatError, DatasetMissingError, fashion_mnist_source, read_idx, IMAGES_MAGIC,
)
from llm_flywheel.data.registry import DatasetError, add_dataset


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True, magic: int | None = None) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    m = magic if magic is not None else (0x0800 | arr.ndim)
    data = struct.pack(">I", m) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb", compresslevel=1) as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion(folder: Path, n_train: int, n_test: int, *, seed: int = 0, gz: bool = True) -> dict:
    """Fashion-MNIST-format files with random pictures; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{stem}-images-idx3-ubyte", x, gz=gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", y, gz=gz)
        out[split] = (x, y)
    return out


def test_import_idx_files_pixels_labels_and_splits(ws, tmp_path):
    arrays = write_fashion(tmp_path / "fm", 300, 60)
    rep = add_dataset(ws, "fashion-mnist", path=tmp_path / "fm", progress=False)
    assert (rep.seen, rep.added, rep.skipped) == (360, 360, 0)
    assert rep.splits["test"] == 60 and sum(rep.splits.values()) == 360
    with ws.store() as s:
        items = {it.source_ref: it for it in s.items("fashion-mnist")}
    x, y = arrays["train"]
    names = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
    for i in (0, 17, 299):
        it = items[f"train:{i}"]
        assert it.gold_label == names[y[i]] and it.source_split == "train" and it.modality == "image"
        assert np.array_equal(np.asarray(load_image(ws, it.blob_path)), x[i])  # lossless
    assert items["test:59"].split == "test"
    # re-running adds nothing
    rep2 = add_dataset(ws, "fashion-mnist", path=tmp_path / "fm", progress=False)
    assert (rep2.added, rep2.already_present) == (0, 360)


def test_limit_and_uncompressed_files(ws, tmp_path):
    write_fashion(tmp_path / "raw", 50, 20, gz=False)
    rep = add_dataset(ws, "fashion-mnist", path=tmp_path / "raw", limit=10, progress=False)
    assert rep.added == 20 and rep.splits["test"] == 10


def test_identical_images_are_stored_once(ws, tmp_path):
    folder = tmp_path / "dup"
    folder.mkdir()
    x = np.zeros((6, 28, 28), np.uint8)
    x[3:] = 255
    for stem in ("train", "t10k"):
        write_idx(folder / f"{stem}-images-idx3-ubyte", x)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", np.arange(6) % 10)
    add_dataset(ws, "fashion-mnist", path=folder, progress=False)
    with ws.store() as s:
        assert s.query("SELECT COUNT(*) FROM items")[0][0] == 12
        assert s.query("SELECT COUNT(DISTINCT blob_path) FROM items")[0][0] == 2
    assert len([p for p in (ws.root / "blobs").rglob("*.png")]) == 2


def test_missing_files_name_the_debian_package(ws, tmp_path):
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        add_dataset(ws, "fashion-mnist", path=tmp_path / "nowhere", progress=False)
    (tmp_path / "half").mkdir()
    write_idx(tmp_path / "half" / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    with pytest.raises(DatasetMissingError, match=r"train-labels-idx1-ubyte.*dataset-fashion-mnist"):
        fashion_mnist_source(tmp_path / "half")


def test_bad_magic_truncated_and_mismatched_files(tmp_path):
    write_idx(tmp_path / "a", np.zeros((2, 28, 28)), gz=False, magic=0x0801)
    with pytest.raises(DatasetFormatError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "a", IMAGES_MAGIC)
    write_idx(tmp_path / "b", np.zeros((4, 28, 28)), gz=False)
    (tmp_path / "b").write_bytes((tmp_path / "b").read_bytes()[:-100])
    with pytest.raises(DatasetFormatError, match=r"declares shape \(4, 28, 28\)"):
        read_idx(tmp_path / "b", IMAGES_MAGIC)
    (tmp_path / "c.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFormatError, match="cannot read"):
        read_idx(tmp_path / "c.gz", IMAGES_MAGIC)
    folder = tmp_path / "mismatch"
    write_fashion(folder, 5, 5)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(4))  # 5 images, 4 labels
    with pytest.raises(DatasetFormatError, match="do not match"):
        fashion_mnist_source(folder)


def test_options_that_do_not_apply_are_refused(ws, tmp_path):
    with pytest.raises(DatasetError, match="text_column do not apply to fashion-mnist"):
        add_dataset(ws, "fashion-mnist", path=tmp_path, text_column="x", progress=False)
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        add_dataset(ws, "mnist", progress=False)


@pytest.mark.skipif(not (DEFAULT_PATH / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_real_files_parse_to_60000_and_10000():
    task, recs, total = fashion_mnist_source()
    assert total == 70_000 and task.num_labels == 10
    first = next(recs)
    assert first.source_ref == "train:0" and first.gold_label == "ankle_boot"  # the well-known first training image
    assert first.image.shape == (28, 28)


def test_growing_a_limited_import_keeps_test_fixed_and_resplit_fixes_it(ws, tmp_path):
    write_fashion(tmp_path / "fm", 100, 40)
    first = add_dataset(ws, "fashion-mnist", path=tmp_path / "fm", limit=10, progress=False)
    assert first.splits["test"] == 10
    grown = add_dataset(ws, "fashion-mnist", path=tmp_path / "fm", progress=False)
    assert grown.added == 120 and grown.splits["test"] == 10  # held-out split never changes under your feet
    assert any("30 items the source marks as test joined the training pool" in n for n in grown.notes)
    redone = add_dataset(ws, "fashion-mnist", path=tmp_path / "fm", resplit=True, progress=False)
    assert redone.added == 0 and redone.splits["test"] == 40
    with ws.store() as s:  # once something is labelled, re-splitting is refused
        item = s.items("fashion-mnist", split="train")[0]
        s.execute("INSERT INTO labels(item_id, source, label, status, updated_at) VALUES(?, 'human', 'bag', 'human', 0)",
                  (item.id,))
    with pytest.raises(DatasetError, match="already has 1 labels"):
        add_dataset(ws, "fashion-mnist", path=tmp_path / "fm", resplit=True, progress=False)
