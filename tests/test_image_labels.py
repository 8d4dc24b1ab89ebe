"""An image folder labelled by a table: Kaggle's ``train.csv`` beside a flat folder, Hugging Face's
``metadata.csv`` / ``metadata.jsonl`` inside it -- through ``add_dataset`` and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from llm_flywheel.core.task import Task, TaskError
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.interfaces.cli import main

SHAPES = ("square", "ring", "cross")


def _picture(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8)).save(path)


def _gold(ws, dataset):
    with ws.store() as s:
        return {r[0]: r[1] for r in s.query("SELECT source_ref, gold_label FROM items WHERE dataset = ?", (dataset,))}


def _task(ws, dataset):
    with ws.store() as s:
        return Task.from_json(s.dataset_task_json(dataset))


def test_kaggle_train_csv_beside_a_flat_folder(ws, tmp_path):
    """Before: the flat folder imported unlabelled (it needed --task) and the labels in train.csv were lost."""
    for i in range(12):
        _picture(tmp_path / "train" / f"{i:04d}.png", i)
    rows = [f"{i:04d},{SHAPES[i % 3].capitalize()}" for i in range(10)] + ["9999,ring"]
    (tmp_path / "train.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(TaskError, match=f"--labels FILE.*Kaggle's train.csv.* -- e.g. --labels {tmp_path}/train.csv"):
        add_dataset(ws, "image-folder", path=tmp_path / "train", progress=False)
    rep = add_dataset(ws, "image-folder", path=tmp_path / "train", labels=tmp_path / "train.csv", progress=False)
    assert rep.added == 12 and _task(ws, "train").labels == ("cross", "ring", "square")
    gold = _gold(ws, "train")
    assert gold["0000.png"] == "square" and gold["0004.png"] == "ring" and gold["0011.png"] is None
    assert "labels from train.csv ('id' -> 'label'): 10 of 12 image(s)" in rep.notes
    assert any(n.startswith("2 image(s) have no label row in train.csv") for n in rep.notes)
    assert "WARNING: 1 row(s) of train.csv name no image in this folder ('9999')" in rep.notes


def test_hugging_face_metadata_in_the_folder_is_read_without_being_asked(ws, tmp_path):
    root = tmp_path / "shapes"
    for i in range(6):
        _picture(root / "data" / f"s{i}.jpg", i)
    meta = [{"file_name": f"data/s{i}.jpg", "label": SHAPES[i % 3], "caption": "x"} for i in range(6)]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    rep = add_dataset(ws, "image-folder", path=root, progress=False)
    # data/ is not a class: the table's label wins over the folder's name, and says so
    assert _gold(ws, "shapes") == {f"data/s{i}.jpg": SHAPES[i % 3] for i in range(6)}
    assert "WARNING: 6 image(s) sit in a class folder that metadata.jsonl contradicts: metadata.jsonl's label is used" \
        in rep.notes
    assert not any("without an image extension" in n for n in rep.notes)  # the table itself is not "ignored"


def test_two_column_tables_names_stems_and_paths_from_above(ws, tmp_path):
    """``has_cactus`` style: the one other column is the label; a row may name ``train/x.png`` or ``x``."""
    for i in range(6):
        _picture(tmp_path / "train" / f"img{i}.png", i)
    (tmp_path / "labels.csv").write_text("image_id,has_cactus\n" + "".join(
        f"{'train/' if i % 2 else ''}img{i}{'.png' if i < 3 else ''},{i % 2}\n" for i in range(6)))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "train", labels=tmp_path / "labels.csv", as_name="cactus",
                      progress=False)
    assert set(_gold(ws, "cactus").values()) == {"0", "1"} and rep.added == 6
    assert "labels from labels.csv ('image_id' -> 'has_cactus'): 6 of 6 image(s)" in rep.notes
    assert any("only ids" in n for n in rep.notes)  # 0/1 say nothing to a teacher: warned as for any table


def test_ids_stored_as_numbers_find_their_zero_padded_files(ws, tmp_path):
    """A Parquet or Excel table keeps id 7 as a number (7, 7.0): it names 0007.png."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for i in range(9):
        _picture(tmp_path / "train" / f"{i:04d}.png", i)
    pq.write_table(pa.table({"id": [float(i) for i in range(9)], "label": [SHAPES[i % 3] for i in range(9)]}),
                   tmp_path / "train.parquet")
    rep = add_dataset(ws, "image-folder", path=tmp_path / "train", labels=tmp_path / "train.parquet",
                      progress=False)
    assert "labels from train.parquet ('id' -> 'label'): 9 of 9 image(s)" in rep.notes
    assert _gold(ws, "train")["0007.png"] == SHAPES[1]


def test_a_table_without_the_columns_says_which_to_name(ws, tmp_path):
    _picture(tmp_path / "p" / "a.png", 0)
    (tmp_path / "t.csv").write_text("picture,kind,size\na.png,ring,3\n")
    with pytest.raises(ValueError, match=r"no file column \(file_name, .*\); columns: picture, kind, size -- name it "
                                         "with --file-column"):
        add_dataset(ws, "image-folder", path=tmp_path / "p", labels=tmp_path / "t.csv", progress=False)
    with pytest.raises(ValueError, match="no label column .* -- name it with --label-column"):
        add_dataset(ws, "image-folder", path=tmp_path / "p", labels=tmp_path / "t.csv", file_column="picture",
                    progress=False)


def test_the_cli_reads_labels_and_file_columns(tmp_path):
    for i in range(9):
        _picture(tmp_path / "pics" / f"{i}.png", i)
    (tmp_path / "t.csv").write_text("picture;kind\n" + "".join(f"{i}.png;{SHAPES[i % 3]}\n" for i in range(9)))
    r = CliRunner().invoke(main, ["--workspace", str(tmp_path / "ws"), "data", "add", "image-folder",
                                  str(tmp_path / "pics"), "--labels", str(tmp_path / "t.csv"), "--file-column",
                                  "picture", "--label-column", "kind", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "pics: 9 added" in r.output and "labels from t.csv ('picture' -> 'kind'): 9 of 9" in r.output


def test_a_metadata_file_without_labels_is_noted_not_fatal(ws, tmp_path):
    for i, shape in enumerate(SHAPES * 2):
        _picture(tmp_path / "f" / shape / f"{i}.png", i)
    (tmp_path / "f" / "metadata.csv").write_text("file_name,caption\n" + "".join(
        f"{s}/{i}.png,a picture\n" for i, s in enumerate(SHAPES * 2)))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "f", progress=False)
    assert set(_gold(ws, "f").values()) == set(SHAPES)  # the class folders
    assert any(n.startswith("metadata.csv not used for labels (no label column") for n in rep.notes)


def test_an_unlabelled_test_folder_is_traffic_not_the_test_split(ws, tmp_path):
    """Kaggle: train/ labelled by train.csv, test/ without labels.  Before: test/ became the test split, and with
    no gold label in it nothing was ever measured."""
    for i in range(60):
        _picture(tmp_path / "kaggle" / "train" / f"{i}.png", i)
    for i in range(20):
        _picture(tmp_path / "kaggle" / "test" / f"t{i}.png", 100 + i)
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(f"{i},{SHAPES[i % 3]}\n" for i in range(60)))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "kaggle", labels=tmp_path / "train.csv", progress=False)
    assert any(n.startswith("the source's test split has no gold labels") for n in rep.notes)
    with ws.store() as s:
        test = list(s.items("kaggle", split="test"))
        assert test and any(it.gold_label for it in test)  # something to measure on
        spread = {it.split for it in s.items("kaggle") if it.source_ref.startswith("test/")}
    assert spread - {"test"}  # the unlabelled pictures are split like the others


def test_a_labelled_test_folder_stays_the_test_split(ws, tmp_path):
    for part, n in (("train", 30), ("test", 9)):
        for i in range(n):
            _picture(tmp_path / "d" / part / SHAPES[i % 3] / f"{part}{i}.png", i + (0 if part == "train" else 500))
    rep = add_dataset(ws, "image-folder", path=tmp_path / "d", progress=False)
    assert not any("no gold labels" in n for n in rep.notes)
    with ws.store() as s:
        assert sorted(it.source_ref for it in s.items("d", split="test")) == sorted(
            f"test/{SHAPES[i % 3]}/test{i}.png" for i in range(9))


def test_a_row_with_several_labels_leaves_its_picture_unlabelled(ws, tmp_path):
    for i in range(6):
        _picture(tmp_path / "p" / f"{i}.png", i)
    meta = [{"file_name": f"{i}.png", "label": [SHAPES[i % 3], "ring"] if i == 5 else [SHAPES[i % 3]]}
            for i in range(6)]
    (tmp_path / "p" / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    rep = add_dataset(ws, "image-folder", path=tmp_path / "p", progress=False)
    gold = _gold(ws, "p")
    assert gold["5.png"] is None and gold["0.png"] == "square" and _task(ws, "p").labels == ("cross", "ring", "square")
    assert any(n.startswith("WARNING: 1 row(s) of metadata.jsonl give several labels") for n in rep.notes)
