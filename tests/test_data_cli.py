"""`flywheel data add` / `flywheel data info` through the real command line (real files, real workspace)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main

from test_data_fashion_mnist import write_fashion


def run(*args: str) -> "CliRunner.invoke":
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_add_then_info_json_and_tables(tmp_path):
    write_fashion(tmp_path / "fm", 200, 50)
    ws = str(tmp_path / "ws")
    r = run("-w", ws, "data", "add", "fashion-mnist", "--path", str(tmp_path / "fm"), "--no-progress",
            "--val", "20", "--calib", "0.1", "--stream", "0")
    assert r.exit_code == 0, r.output
    assert "250 added" in r.output and "test 50" in r.output

    r = run("-w", ws, "data", "info", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)["fashion-mnist"]
    assert info["items"] == 250 and len(info["labels"]) == 10
    assert info["by_source_split"] == {"train": 200, "test": 50}
    assert info["by_split"]["val"] == {"train": 20} and info["by_split"]["calib"] == {"train": 20}
    assert info["by_split"]["test"] == {"test": 50} and "stream" not in info["by_split"]
    assert sum(sum(v.values()) for v in info["gold_labels"].values()) == 250
    assert info["labelled"]["train"]["unlabelled"] == 160 and info["labelled"]["train"]["teacher"] == 0

    r = run("-w", ws, "data", "info", "fashion-mnist")
    assert r.exit_code == 0
    for text in ("250", "items by split x source split", "gold labels by split", "ankle_boot",
                 "labelled status by split", "10 labels"):
        assert text in r.stdout


def test_info_counts_teacher_and_human_labels(tmp_path):
    write_fashion(tmp_path / "fm", 30, 10)
    ws = str(tmp_path / "ws")
    assert run("-w", ws, "data", "add", "fashion-mnist", str(tmp_path / "fm"), "--no-progress").exit_code == 0
    from llm_flywheel.store.workspace import Workspace

    with Workspace.open(ws).store() as s:
        ids = [i.id for i in s.items("fashion-mnist", split="train")][:3]
        for i, (src, lab, status) in zip(ids, [("teacher", "bag", "agreed"), ("teacher", None, "disagreed"),
                                               ("human", "coat", "human")]):
            s.execute("INSERT INTO labels(item_id, source, label, status, updated_at) VALUES(?,?,?,?,0)",
                      (i, src, lab, status))
    info = json.loads(run("-w", ws, "data", "info", "--json").stdout)["fashion-mnist"]
    tr = info["labelled"]["train"]
    assert (tr["teacher"], tr["teacher_undecided"], tr["human"], tr["unlabelled"]) == (1, 1, 1, tr["items"] - 2)
    assert {(r["source"], r["status"]) for r in info["label_sources"]} == {
        ("teacher", "agreed"), ("teacher", "disagreed"), ("human", "human")}


def test_errors_are_messages_not_tracebacks(tmp_path):
    ws = str(tmp_path / "ws")
    r = run("-w", ws, "data", "add", "fashion-mnist", "--path", str(tmp_path / "missing"), "--no-progress")
    assert r.exit_code == 1 and "apt-get install dataset-fashion-mnist" in r.output and "Traceback" not in r.output
    r = run("-w", ws, "data", "add", "text", str(tmp_path / "nope.csv"))
    assert r.exit_code == 1 and "does not exist" in r.output
    r = run("-w", ws, "data", "add", "cifar5", "--text-column", "x", "--path", str(tmp_path))
    assert r.exit_code == 1 and "do not apply to cifar5" in r.output
    r = run("-w", ws, "data", "add", "mnist")
    assert r.exit_code == 2 and "fashion-mnist" in r.output
    r = run("-w", ws, "data", "add", "fashion-mnist", "--val", "lots")
    assert r.exit_code == 2 and "fraction" in r.output
    r = run("-w", ws, "data", "info", "nothing")
    assert r.exit_code == 1 and "not in this workspace" in r.output
    r = run("-w", str(tmp_path / "no-ws"), "data", "info")
    assert r.exit_code == 1 and "no workspace" in r.output


@pytest.mark.parametrize("args", [["data"], ["data", "add"], ["data", "info"]])
def test_help_is_useful(args):
    r = run(*args, "--help")
    assert r.exit_code == 0 and "Usage" in r.output
    if args[-1] == "add":
        for word in ("fashion-mnist", "cifar5", "image-folder", "text", "tabular", "--limit", "NaN", "Examples"):
            assert word in r.output


@pytest.mark.sqlite_only
def test_newer_or_corrupt_database_is_a_clear_error(tmp_path):
    import sqlite3

    ws = tmp_path / "ws"
    assert run("-w", str(ws), "init").exit_code == 0
    c = sqlite3.connect(ws / "flywheel.db")
    c.execute("PRAGMA user_version=999")
    c.close()
    for args in (["data", "info"], ["data", "add", "fashion-mnist", "--limit", "1"]):
        r = run("-w", str(ws), *args)
        assert r.exit_code == 1 and "newer than this llm-flywheel" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "flywheel.db").write_bytes(b"garbage" * 1000)
    r = run("-w", str(bad), "data", "info")
    assert r.exit_code == 1 and "not a usable SQLite database" in r.output


def test_held_out_sizes_too_large_exit_2_and_name_the_fix(tmp_path):
    """`--calib 300` on a 40-row CSV: exit 2 (a bad option value) with a message naming the option and a size that
    fits; the rows are stored, and the same command with a smaller --calib makes the splits without re-importing."""
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"ticket number {i},{'a' if i % 2 else 'b'}\n" for i in range(40)))
    ws = str(tmp_path / "ws")
    r = CliRunner().invoke(main, ["-w", ws, "data", "add", "text", str(csv), "--no-progress", "--calib", "300"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "no training pool" in r.output and "--calib" in r.output, r.output
    r = run("-w", ws, "data", "add", "text", str(csv), "--no-progress", "--calib", "0.1")
    assert r.exit_code == 0, r.output
    assert "0 added, 40 already present" in r.output and "train" in r.output, r.output
    info = json.loads(run("-w", ws, "data", "info", "t", "--json").output)
    assert "unassigned" not in json.dumps(info)
