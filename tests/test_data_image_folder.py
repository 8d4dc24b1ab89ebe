"""image-folder adapter: class sub-folders, train/test layout, flat unlabelled folders, corrupt files skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_flywheel.data import load_image
from llm_flywheel.data.image_folder import normalise_label
from llm_flywheel.data.registry import DatasetError, add_dataset
from llm_flywheel.core.task import TaskError


def save(path: Path, seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def make_folder(root: Path) -> None:
    for i in range(4):
        save(root / "Sweet Pepper" / f"{i}.png", i)
        save(root / "apple" / f"{i}.jpg", 100 + i)
    save(root / "apple" / "deep" / "nested.bmp", 200)  # nested files belong to their class folder
    (root / "apple" / "notes.txt").write_text("not an image, ignored")
    (root / ".hidden").mkdir()
    save(root / ".hidden" / "x.png", 300)


def test_class_folders_become_snake_case_labels(ws, tmp_path):
    make_folder(tmp_path / "Fruit Photos")
    rep = add_dataset(ws, "image-folder", path=tmp_path / "Fruit Photos", progress=False)
    assert rep.dataset == "Fruit-Photos"
    assert (rep.seen, rep.added, rep.skipped) == (9, 9, 0)
    with ws.store() as s:
        items = {it.source_ref: it for it in s.items("Fruit-Photos")}
        assert s.query("SELECT COUNT(*) FROM items WHERE split IS NULL")[0][0] == 0  # splits made
    assert items["Sweet Pepper/0.png"].gold_label == "sweet_pepper"
    assert items["apple/deep/nested.bmp"].gold_label == "apple"
    assert items["apple/deep/nested.bmp"].blob_path.endswith(".png")  # BMP normalised to PNG
    assert items["apple/1.jpg"].blob_path.endswith(".jpg")  # JPEG kept as is, never re-encoded
    assert load_image(ws, items["Sweet Pepper/0.png"].blob_path).size == (16, 16)
    assert add_dataset(ws, "image-folder", path=tmp_path / "Fruit Photos", progress=False).added == 0


def test_corrupt_files_are_counted_and_skipped(ws, tmp_path):
    root = tmp_path / "pics"
    make_folder(root)
    good = (root / "apple" / "0.jpg").read_bytes()
    (root / "apple" / "truncated.png").write_bytes((root / "Sweet Pepper" / "0.png").read_bytes()[:60])
    (root / "apple" / "text.jpg").write_text("I am a text file named .jpg")
    (root / "apple" / "empty.png").write_bytes(b"")
    (root / "apple" / "half.jpg").write_bytes(good[: len(good) // 2])
    rep = add_dataset(ws, "image-folder", path=root, as_name="pics", progress=False)
    assert rep.added == 9
    assert rep.skipped == 4
    joined = " ".join(rep.skipped_examples)
    for name in ("truncated.png", "text.jpg", "empty.png", "half.jpg"):
        assert name in joined
    assert "0 bytes" in joined
    assert "4 unreadable skipped" in rep.summary()


def test_files_are_converted_in_parallel_in_order_and_not_again_on_a_re_import(ws, tmp_path, monkeypatch):
    import threading

    import llm_flywheel.data.base as base

    root = tmp_path / "pics"
    make_folder(root)
    (root / "apple" / "bad.png").write_bytes(b"not a picture")
    calls, threads = [], set()
    real = base._image_bytes

    def spy(img):
        calls.append(img)
        threads.add(threading.current_thread().name)
        return real(img)

    monkeypatch.setattr(base, "_image_bytes", spy)
    rep = add_dataset(ws, "image-folder", path=root, as_name="pics", progress=False)
    assert rep.added == 9 and rep.skipped == 1 and "bad.png" in rep.skipped_examples[0]
    assert len(calls) == 10 and all(t.startswith("import") for t in threads)
    with ws.store() as s:  # stored in the folder's order, each with its own picture
        rows = s.query("SELECT source_ref, content_hash FROM items ORDER BY id")
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert len({r[1] for r in rows}) == 9
    calls.clear()
    assert add_dataset(ws, "image-folder", path=root, as_name="pics", progress=False).already_present == 9
    assert len(calls) == 1  # only the unreadable file is tried again


def test_train_test_layout_gives_source_splits(ws, tmp_path):
    seeds = iter(range(1000))  # distinct images: hash() of a tuple of str changes per process and could collide
    for split, n in (("train", 12), ("test", 4)):
        for c in ("cat", "dog"):
            for i in range(n):
                save(tmp_path / "pets" / split / c / f"{i}.png", next(seeds))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "pets", progress=False)
    assert rep.added == 32 and rep.splits["test"] == 8
    with ws.store() as s:
        it = s.items("pets", split="test")[0]
    assert it.source_split == "test" and it.source_ref.startswith("test/") and it.gold_label in ("cat", "dog")


def test_flat_folder_is_unlabelled_and_needs_a_task(ws, tmp_path):
    for i in range(5):
        save(tmp_path / "flat" / f"{i}.png", i)
    with pytest.raises(TaskError, match="no class sub-folders.*--task"):
        add_dataset(ws, "image-folder", path=tmp_path / "flat", progress=False)
    task = tmp_path / "t.toml"
    task.write_text('name = "shapes"\nmodality = "image"\nlabels = ["round", "square"]\n')
    rep = add_dataset(ws, "image-folder", path=tmp_path / "flat", task=task, progress=False)
    assert rep.dataset == "shapes" and rep.added == 5
    with ws.store() as s:
        assert s.query("SELECT COUNT(*) FROM items WHERE gold_label IS NOT NULL")[0][0] == 0


def test_folder_labels_must_match_the_task(ws, tmp_path):
    make_folder(tmp_path / "f")
    task = tmp_path / "t.toml"
    task.write_text('name = "fruit"\nmodality = "image"\nlabels = ["apple", "pear"]\n')
    with pytest.raises(TaskError, match=r"folder label\(s\) \['sweet_pepper'\] are not in task 'fruit'"):
        add_dataset(ws, "image-folder", path=tmp_path / "f", task=task, progress=False)
    text_task = tmp_path / "tt.toml"
    text_task.write_text('name = "fruit"\nmodality = "text"\nlabels = ["apple", "sweet_pepper"]\n')
    with pytest.raises(TaskError, match="needs 'image'"):
        add_dataset(ws, "image-folder", path=tmp_path / "f", task=text_task, progress=False)


def test_changing_labels_of_an_existing_dataset_is_refused(ws, tmp_path):
    make_folder(tmp_path / "f")
    add_dataset(ws, "image-folder", path=tmp_path / "f", as_name="fruit", progress=False)
    save(tmp_path / "f" / "pear" / "0.png", 999)
    with pytest.raises(DatasetError, match="already exists with image labels"):
        add_dataset(ws, "image-folder", path=tmp_path / "f", as_name="fruit", progress=False)


def test_bad_paths_and_clashing_folders(ws, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        add_dataset(ws, "image-folder", path=tmp_path / "nope", progress=False)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        add_dataset(ws, "image-folder", path=tmp_path / "none", progress=False)
    save(tmp_path / "clash" / "Big Cat" / "0.png", 1)
    save(tmp_path / "clash" / "big_cat" / "0.png", 2)
    with pytest.raises(ValueError, match="normalise to the same label"):
        add_dataset(ws, "image-folder", path=tmp_path / "clash", progress=False)
    with pytest.raises(DatasetError, match="needs a path"):
        add_dataset(ws, "image-folder", progress=False)


@pytest.mark.parametrize("raw, norm", [("Sweet Pepper", "sweet_pepper"), ("T-shirt/top", "t_shirt_top"),
                                       ("  Ankle--Boot ", "ankle_boot"), ("0", "0"), ("***", "")])
def test_normalise_label(raw, norm):
    assert normalise_label(raw) == norm


def test_flat_train_test_folders_are_splits_not_classes(ws, tmp_path):
    for split in ("train", "test"):
        for i in range(3):
            save(tmp_path / "u" / split / f"{i}.png", 100 * len(split) + i)  # distinct: no per-process hash()
    task = tmp_path / "t.toml"
    task.write_text('name = "u"\nmodality = "image"\nlabels = ["a", "b"]\n')
    rep = add_dataset(ws, "image-folder", path=tmp_path / "u", task=task, progress=False)
    assert rep.added == 6 and rep.splits["test"] == 3
    with ws.store() as s:
        assert s.query("SELECT COUNT(*) FROM items WHERE gold_label IS NOT NULL")[0][0] == 0


def test_split_folders_spelt_otherwise_and_wrapper_folders_are_not_classes(ws, tmp_path):
    """train/ val/ test/ (Kaggle's chest X-rays) became three classes named after the splits, the real labels lost."""
    seed = iter(range(1000, 2000))
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for c in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                save(tmp_path / "zip" / "chest_xray" / split / c / f"{i}.jpeg", next(seed))
    (tmp_path / "zip" / "__MACOSX").mkdir()  # what macOS's zip adds beside the data
    (tmp_path / "zip" / "__MACOSX" / "._0.jpeg").write_bytes(b"\x00\x05\x16\x07")
    rep = add_dataset(ws, "image-folder", path=tmp_path / "zip", as_name="xray", progress=False)
    assert rep.added == 18
    with ws.store() as s:
        items = list(s.items("xray"))
    assert {it.gold_label for it in items} == {"normal", "pneumonia"}
    assert {it.source_ref for it in items if it.split == "test"} == {
        f"chest_xray/test/{c}/{i}.jpeg" for c in ("NORMAL", "PNEUMONIA") for i in range(3)}
    assert "chest_xray/val/ as val (4)" in " ".join(rep.notes)
    # Intel's scenes: seg_train/seg_train/CLASS, seg_test/seg_test/CLASS
    for split in ("seg_train", "seg_test"):
        for c in ("sea", "street"):
            for i in range(3):
                save(tmp_path / "intel" / split / split / c / f"{i}.jpg", next(seed))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "intel", progress=False)
    with ws.store() as s:
        items = list(s.items("intel"))
    assert {it.gold_label for it in items} == {"sea", "street"}
    assert sum(it.split == "test" for it in items) == 6
    # a wrapper folder without split folders: stepped into, and said
    for c in ("sea", "street"):
        save(tmp_path / "wrapped" / "inner" / c / "0.png", next(seed))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "wrapped", progress=False)
    assert "wrapped/ holds only inner/: its sub-folders are read as the classes" in rep.notes
    # one class folder of files is a class, not a wrapper: it needs a task, as before
    save(tmp_path / "one" / "cats" / "0.png", 7)
    with pytest.raises(TaskError, match="only one class"):
        add_dataset(ws, "image-folder", path=tmp_path / "one", progress=False)
