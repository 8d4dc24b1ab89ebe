"""A Hugging Face ``save_to_disk`` folder as `flywheel data add text FOLDER`: the files the ``datasets`` library
writes (Arrow IPC stream files listed in state.json, ClassLabel names in dataset_info.json, a DatasetDict's
dataset_dict.json and split folders), written here with pyarrow as the library writes them; read through the CLI
into a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_flywheel.data.base import stored_task
from llm_flywheel.data.hf_disk import is_hf_saved, split_column
from llm_flywheel.data.table_files import read_table
from llm_flywheel.interfaces.cli import main
from llm_flywheel.store.workspace import Workspace

pa = pytest.importorskip("pyarrow")

POS = "a wonderful film, moving and funny, the cast is superb"
NEG = "dull plot, wooden acting, a waste of an evening"


def save_split(d: Path, texts: list[str], labels: list[int], split: str | None) -> None:
    """What ``Dataset.save_to_disk`` writes: one Arrow stream file, state.json naming it, dataset_info.json."""
    d.mkdir(parents=True)
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int64())})
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (d / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0f1e2d3c4b5a6978",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": split}))
    (d / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {
        "text": {"dtype": "string", "_type": "Value"},
        "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}, "homepage": "", "license": ""}))


def imdb_like(root: Path) -> Path:
    """``load_dataset("imdb").save_to_disk(root)`` in miniature: train labelled, test labelled, unsupervised -1."""
    for split, n in (("train", 12), ("test", 6), ("unsupervised", 4)):
        texts = [f"{POS if i % 2 else NEG} ({split} {i})" for i in range(n)]
        save_split(root / split, texts, [-1] * n if split == "unsupervised" else [i % 2 for i in range(n)], split)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test", "unsupervised"]}))
    return root


def test_a_dataset_dict_saved_to_disk_imports_with_its_class_names_and_splits(tmp_path):
    root = imdb_like(tmp_path / "imdb")
    assert is_hf_saved(root) and split_column(root) == "split"
    table = read_table(root)
    assert table.columns == ["text", "label", "split"] and len(table.rows) == 22
    assert table.rows[1].values == {"text": f"{POS} (train 1)", "label": "pos", "split": "train"}
    assert table.rows[-1].values["label"] is None  # -1: no label
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "data", "add", "text", str(root), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "22 added" in r.output and "Hugging Face DatasetDict saved to disk" in r.output
    with Workspace.open(tmp_path / "ws").store(readonly=True) as s:
        items = s.items("imdb")
    assert {it.gold_label for it in items} == {"neg", "pos", None}
    assert sum(it.source_split == "test" for it in items) == 6 and sum(it.gold_label is None for it in items) == 4
    assert all(it.gold_label == ("pos" if it.text.startswith(POS) else "neg") for it in items if it.gold_label)


def test_a_single_dataset_folder_and_a_folder_above_one(tmp_path):
    save_split(tmp_path / "reviews", [f"{POS} {i}" if i % 2 else f"{NEG} {i}" for i in range(10)],
               [i % 2 for i in range(10)], None)
    assert split_column(tmp_path / "reviews") is None
    assert {r.values["label"] for r in read_table(tmp_path / "reviews").rows} == {"neg", "pos"}
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "data", "add", "text", str(tmp_path / "reviews"),
                                  "--no-progress"])
    assert r.exit_code == 0 and "10 added" in r.output, r.output
    imdb_like(tmp_path / "hub" / "imdb")  # the folder above it given by mistake: the error names the right one
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "data", "add", "text", str(tmp_path / "hub"),
                                  "--no-progress"])
    assert r.exit_code != 0 and f"flywheel data add text {tmp_path / 'hub' / 'imdb'}" in r.output, r.output


def test_a_broken_saved_folder_is_a_clear_error(tmp_path):
    root = imdb_like(tmp_path / "imdb")
    (root / "test" / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "data", "add", "text", str(root), "--no-progress"])
    assert r.exit_code != 0 and "not a readable Arrow file" in r.output and "Traceback" not in r.output, r.output
    old = imdb_like(tmp_path / "old")  # an old `datasets` wrote a selection as an index file over every row
    state = json.loads((old / "train" / "state.json").read_text())
    (old / "train" / "state.json").write_text(json.dumps({**state, "_indices_data_files": [
        {"filename": "indices-00000-of-00001.arrow"}]}))
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "data", "add", "text", str(old), "--no-progress"])
    assert r.exit_code != 0 and "ds.flatten_indices().save_to_disk" in r.output, r.output


def test_flywheel_predict_reads_a_saved_dataset_as_the_rows_it_holds(tmp_path):
    from llm_flywheel.core.task import Task
    from llm_flywheel.pipeline.predict_files import expand_inputs, expand_tables

    root = imdb_like(tmp_path / "imdb")
    found, left = expand_inputs([root], "text")
    assert found == [root] and left == []  # not 3 .arrow files and 6 .json files
    task = Task(name="imdb", modality="text", labels=("neg", "pos"), instructions="Sentiment?")
    rows = expand_tables(found, task)
    assert len(rows) == 22 and rows[1].content == f"{POS} (train 1)"


def png(value: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    a = np.full((24, 24, 3), value % 256, np.uint8)
    a[6:18, 6:18] = (value * 7) % 256
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the Image feature's storage
BEANS = ["angular_leaf_spot", "bean_rust", "healthy"]


def save_images(d: Path, cells: list[dict], labels: list[int], split: str | None) -> None:
    """``Dataset.save_to_disk`` of an image set (beans): an Image column (bytes embedded, as ``save_to_disk``
    writes them), the file path, a ClassLabel column named ``labels``."""
    d.mkdir(parents=True)
    table = pa.table({"image_file_path": [c["path"] for c in cells], "image": pa.array(cells, IMAGE_TYPE),
                      "labels": pa.array(labels, pa.int64())})
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                              "_fingerprint": "1a2b", "_split": split}))
    (d / "dataset_info.json").write_text(json.dumps({"features": {
        "image_file_path": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
        "labels": {"names": BEANS, "_type": "ClassLabel"}}}))


def test_a_saved_image_dataset_imports_as_pictures_with_its_class_names_and_splits(tmp_path):
    """``load_dataset("beans").save_to_disk("beans")`` in miniature: `data add image-folder` found no image file
    there (only .arrow and .json); now each row is a picture, its ClassLabel its gold label, validation -> val."""
    root, n = tmp_path / "beans", 0
    on_disk = tmp_path / "kept.png"
    on_disk.write_bytes(png(999))
    for split, size in (("train", 9), ("validation", 3), ("test", 3)):
        cells = [{"bytes": png(n + i), "path": f"{split}/{i}.jpg"} for i in range(size)]
        labels = [i % 3 for i in range(size)]
        if split == "train":  # a cell saved as a path only (readable here), one whose file is gone, one unlabelled
            cells[6], cells[7], labels[8] = {"bytes": None, "path": str(on_disk)}, {"bytes": None,
                                                                                   "path": "/gone/x.jpg"}, -1
        save_images(root / split, cells, labels, split)
        n += size
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))

    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-w", str(ws), "data", "add", "image-folder", str(root), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "14 added" in out and "pictures from column 'image', labels from ClassLabel column 'labels'" in out
    assert "/gone/x.jpg" in out  # the one picture that cannot be read is named, the import goes on
    with Workspace.open(ws).store(readonly=True) as s:
        items = s.items("beans")
        task = stored_task(s, "beans")
    assert task.modality == "image" and set(task.labels) == set(BEANS)
    assert sum(it.source_split == "test" for it in items) == 3 and sum(it.source_split == "val" for it in items) == 3
    assert sum(it.gold_label is None for it in items) == 1 and {it.gold_label for it in items} - {None} == set(BEANS)
    first = next(it for it in items if it.source_ref == "train/data-00000-of-00001.arrow:0")
    assert first.gold_label == "angular_leaf_spot" and (ws / first.blob_path).read_bytes() == png(0)
    assert any((ws / it.blob_path).read_bytes() == png(999) for it in items)  # read from its path

    r = CliRunner().invoke(main, ["-w", str(ws), "data", "add", "text", str(root), "--no-progress"])
    assert r.exit_code != 0 and f"flywheel data add image-folder {root}" in r.output, r.output


def test_a_class_label_column_not_named_label_is_the_label_column(tmp_path):
    d = tmp_path / "reviews"
    save_split(d, [f"{POS} {i}" if i % 2 else f"{NEG} {i}" for i in range(10)], [i % 2 for i in range(10)], None)
    for f in d.glob("*.arrow"):  # the same data with its ClassLabel column named "sentiment"
        t = pa.ipc.open_stream(pa.py_buffer(f.read_bytes())).read_all().rename_columns(["text", "sentiment"])
        with pa.OSFile(str(f), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
    info = json.loads((d / "dataset_info.json").read_text())
    info["features"] = {"text": info["features"]["text"], "sentiment": info["features"]["label"]}
    (d / "dataset_info.json").write_text(json.dumps(info))
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "data", "add", "text", str(d), "--no-progress"])
    assert r.exit_code == 0 and "10 added" in r.output, r.output
    with Workspace.open(tmp_path / "ws").store(readonly=True) as s:
        assert {it.gold_label for it in s.items("reviews")} == {"neg", "pos"}
