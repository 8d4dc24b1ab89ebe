"""cifar5 adapter on a tiny CIFAR-100-format archive (cifar-100-python/{train,test,meta}) the test writes itself."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from llm_flywheel.data import load_image
from llm_flywheel.data.cifar5 import CLASSES, cifar5_source
from llm_flywheel.data.fashion_mnist import DatasetFormatError, DatasetMissingError
from llm_flywheel.data.registry import add_dataset

FINE_NAMES = [f"class_{i}" for i in range(100)]
for _i, _n in CLASSES.items():
    FINE_NAMES[_i] = _n


def make_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """n images whose fine labels cycle through the five classes and a few others."""
    labels = [[0, 51, 53, 57, 83, 1, 52, 99][i % 8] for i in range(n)]
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return data, labels


def write_cifar100(dest: Path, n_train: int = 40, n_test: int = 16, *, as_tar: bool = True, meta: bool = True) -> dict:
    rng = np.random.default_rng(1)
    splits = {"train": make_split(n_train, rng), "test": make_split(n_test, rng)}
    blobs = {}
    for name, (data, labels) in splits.items():
        # train with str keys (as torchvision's latin1 load sees them), test with bytes keys (a py3 re-pickle)
        key = (lambda k: k) if name == "train" else (lambda k: k.encode())
        blobs[name] = pickle.dumps({key("data"): data, key("fine_labels"): labels,
                                    key("coarse_labels"): [0] * len(labels)}, protocol=2)
    if meta:
        blobs["meta"] = pickle.dumps({"fine_label_names": FINE_NAMES}, protocol=2)
    if as_tar:
        with tarfile.open(dest, "w:gz") as tar:
            for name, b in blobs.items():
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
    else:
        (dest / "cifar-100-python").mkdir(parents=True)
        for name, b in blobs.items():
            (dest / "cifar-100-python" / name).write_bytes(b)
    return splits


def test_cifar5_from_tar_gz_selects_the_five_classes(ws, tmp_path):
    splits = write_cifar100(tmp_path / "cifar-100-python.tar.gz")
    rep = add_dataset(ws, "cifar5", path=tmp_path / "cifar-100-python.tar.gz", progress=False)
    # 5 of every 8 rows are in the five classes: 25 of 40 train, 10 of 16 test
    assert (rep.added, rep.skipped) == (35, 0)
    assert rep.splits["test"] == 10
    with ws.store() as s:
        items = {it.source_ref: it for it in s.items("cifar5")}
        golds = {r[0] for r in s.query("SELECT DISTINCT gold_label FROM items")}
    assert golds == {"apple", "mushroom", "orange", "pear", "sweet_pepper"}
    assert "train:5" not in items  # fine label 1 is not one of ours
    data, labels = splits["train"]
    it = items["train:4"]
    assert labels[4] == 83 and it.gold_label == "sweet_pepper"
    img = np.asarray(load_image(ws, it.blob_path))
    assert img.shape == (32, 32, 3)
    assert np.array_equal(img, data[4].reshape(3, 32, 32).transpose(1, 2, 0))  # CHW planes -> HWC, lossless
    assert add_dataset(ws, "cifar5", path=tmp_path / "cifar-100-python.tar.gz", progress=False).added == 0


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar5_from_extracted_folder(tmp_path, point_at):
    write_cifar100(tmp_path, as_tar=False, meta=False)
    path = tmp_path if point_at == "parent" else tmp_path / "cifar-100-python"
    task, recs, total = cifar5_source(path, download_root=tmp_path / "dl", limit=3)
    assert task.name == "cifar5" and total == 6
    assert [r.source_ref for r in recs] == ["train:0", "train:1", "train:2", "test:0", "test:1", "test:2"]


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetMissingError, match=r"cifar-100-python.tar.gz.*--path|--path.*cifar-100-python"):
        cifar5_source(tmp_path / "absent", download_root=tmp_path / "dl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetMissingError, match="no cifar-100-python/train or test"):
        cifar5_source(tmp_path / "empty", download_root=tmp_path / "dl")


def test_without_path_uses_previous_download_or_explains(tmp_path):
    # torchvision is optional; without it and without files the error explains what to do
    try:
        import torchvision  # noqa: F401
        has_tv = True
    except ImportError:
        has_tv = False
    if not has_tv:
        with pytest.raises(DatasetMissingError, match="torchvision is not installed"):
            cifar5_source(None, download_root=tmp_path / "dl")
    (tmp_path / "dl").mkdir()
    write_cifar100(tmp_path / "dl" / "cifar-100-python.tar.gz")
    _, _, total = cifar5_source(None, download_root=tmp_path / "dl")  # found where a download would have put it
    assert total == 35


def test_wrong_meta_and_corrupt_archives_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(DatasetFormatError, match="not a readable tar archive"):
        cifar5_source(bad)
    global FINE_NAMES
    saved = FINE_NAMES
    try:
        FINE_NAMES = list(reversed(saved))
        write_cifar100(tmp_path / "rev.tar.gz")
    finally:
        FINE_NAMES = saved
    with pytest.raises(DatasetFormatError, match="fine label 0 is 'class_99', expected 'apple'"):
        cifar5_source(tmp_path / "rev.tar.gz")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(_Evil()))
    (folder / "test").write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "fine_labels": []}))
    with pytest.raises(DatasetFormatError, match="refusing to load .*system"):
        cifar5_source(folder)
