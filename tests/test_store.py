"""The SQLite store: versioned migrations, WAL, transactions, label precedence, and splits that never move."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from llm_flywheel.data import Record, register
from llm_flywheel.pipeline.splits import SplitSpec, make_splits, split_counts
from llm_flywheel.store.base import SPLITS, Store, StoreError
# SQLite files carry PRAGMA user_version: the legacy v1..v5, then one more per Alembic revision after the baseline,
# so an older llm-flywheel refuses a file a newer one migrated
from llm_flywheel.store.engine import SQLITE_USER_VERSION as SCHEMA_VERSION
from llm_flywheel.store.workspace import Workspace

from conftest import make_synth_dataset, synth_image


def test_fresh_database_is_migrated_to_current_version(tmp_path):
    with Store(tmp_path / "f.db") as s:
        assert s.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        tables = {r["name"] for r in s.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"datasets", "items", "teacher_answers", "labels", "reviews", "review_queue", "runs", "models", "rounds",
            "cascade_log", "reports"} <= tables


def test_reopening_keeps_data_and_version(tmp_path):
    with Store(tmp_path / "f.db") as s:
        s.put_dataset("d", "{}")
    with Store(tmp_path / "f.db") as s:
        assert s.dataset_names() == ["d"]
        assert s.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION


def test_newer_schema_is_refused_clearly(tmp_path):
    p = tmp_path / "f.db"
    Store(p).close()
    c = sqlite3.connect(p)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.close()
    for readonly in (False, True):
        with pytest.raises(StoreError, match=rf"schema v{SCHEMA_VERSION + 1}, newer.*upgrade"):
            Store(p, readonly=readonly)


def test_not_a_database_is_a_store_error(tmp_path):
    p = tmp_path / "f.db"
    p.write_bytes(b"this is not sqlite " * 300)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(p)


def test_wal_mode_is_on(tmp_path):
    with Store(tmp_path / "f.db") as s:
        assert s.query("PRAGMA journal_mode")[0][0] == "wal"
    # and it is persistent: a plain connection sees WAL too
    c = sqlite3.connect(tmp_path / "f.db")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"dataset": "d", "source_ref": f"r{i}", "content_hash": f"h{i}", "modality": "text", "text": f"t{i}"}
            for i in range(start, start + n)]


def test_transaction_is_all_or_nothing_and_add_items_idempotent(tmp_path):
    with Store(tmp_path / "f.db") as s:
        s.put_dataset("d", "{}")
        with pytest.raises(RuntimeError):
            with s.transaction() as c:
                c.execute("INSERT INTO items(dataset, source_ref, content_hash, modality, created_at) "
                          "VALUES('d','x','h','text',0)")
                raise RuntimeError("boom")
        assert s.query("SELECT COUNT(*) FROM items")[0][0] == 0
        assert s.add_items(_rows(5)) == 5
        assert s.add_items(_rows(7)) == 2  # r0..r4 already there
        assert s.query("SELECT COUNT(*) FROM items")[0][0] == 7


def _label(s: Store, item_id: int, source: str, label: str | None, status: str) -> None:
    s.execute("INSERT INTO labels(item_id, source, label, status, provenance, updated_at) VALUES(?,?,?,?,?,?)",
              (item_id, source, label, status, json.dumps({"test": True}), time.time()))


def test_effective_labels_human_outranks_teacher(tmp_path):
    with Store(tmp_path / "f.db") as s:
        s.put_dataset("d", "{}")
        s.add_items(_rows(5))
        ids = [r["id"] for r in s.query("SELECT id FROM items ORDER BY id")]
        s.set_splits([(ids[0], "train"), (ids[1], "train"), (ids[2], "val"), (ids[3], "train"), (ids[4], "train")])
        _label(s, ids[0], "teacher", "spam", "agreed")
        _label(s, ids[1], "teacher", "spam", "agreed")
        _label(s, ids[1], "human", "ham", "human")  # correction wins
        _label(s, ids[2], "human", "ham", "human")  # human only
        _label(s, ids[3], "teacher", None, "disagreed")  # undecided teacher: no label
        eff = s.effective_labels("d")
        assert eff == {ids[0]: "spam", ids[1]: "ham", ids[2]: "ham"}
        assert s.effective_labels("d", split="train") == {ids[0]: "spam", ids[1]: "ham"}
        assert s.effective_labels("d", split=["val"]) == {ids[2]: "ham"}
        assert s.effective_labels("other") == {}


def test_splits_are_fixed_once_made_and_test_never_changes(ws, synth_task):
    make_synth_dataset(ws, synth_task, n_train=200, n_test=50)
    with ws.store() as s:
        counts = make_splits(s, "synth", SplitSpec(val=0.1, calib=0.1, stream=0.2, seed=3))
        assert counts == {"train": 120, "val": 20, "calib": 20, "test": 50, "stream": 40}
        # the source's test split is exactly the test split
        assert {r["split"] for r in s.query("SELECT split FROM items WHERE source_split='test'")} == {"test"}
        first = {r["id"]: r["split"] for r in s.query("SELECT id, split FROM items")}
        # making splits again (even with another seed) changes nothing
        assert make_splits(s, "synth", SplitSpec(seed=99)) == counts
        assert {r["id"]: r["split"] for r in s.query("SELECT id, split FROM items")} == first

    # new items arrive -- some of them marked test by their source: test neither grows nor shrinks
    rng = __import__("numpy").random.default_rng(7)
    recs = [Record(f"new:{i}", image=synth_image(i % 4, rng), source_split="test" if i % 2 else "train",
                   gold_label=synth_task.labels[i % 4]) for i in range(30)]
    assert register(ws, synth_task, recs, progress=False).added == 30
    with ws.store() as s:
        after = make_splits(s, "synth", SplitSpec(seed=3))
        assert after["test"] == 50 and after["train"] == 150
        assert {r["id"]: r["split"] for r in s.query("SELECT id, split FROM items") if r["id"] in first} == first
        assert all(sp in SPLITS for sp in split_counts(s, "synth"))


def test_splits_same_seed_same_assignment(tmp_path, synth_task):
    out = []
    for k in range(2):
        w = Workspace.open(tmp_path / f"w{k}")
        make_synth_dataset(w, synth_task, n_train=100, n_test=20)
        with w.store() as s:
            make_splits(s, "synth", SplitSpec(seed=5))
            out.append({r["source_ref"]: r["split"] for r in s.query("SELECT source_ref, split FROM items")})
    assert out[0] == out[1]


def test_splits_without_source_test_take_a_test_fraction(ws):
    with ws.store() as s:
        s.put_dataset("d", "{}")
        s.add_items(_rows(100))
        counts = make_splits(s, "d", SplitSpec(val=0.1, calib=0.1, stream=0.1, test=0.2))
        assert counts == {"train": 56, "val": 8, "calib": 8, "test": 20, "stream": 8}
        with pytest.raises(ValueError, match="no items"):
            make_splits(s, "empty")


def test_readonly_store_does_not_migrate(tmp_path):
    p = tmp_path / "f.db"
    c = sqlite3.connect(p)
    c.execute("CREATE TABLE unrelated(x)")
    c.close()
    with Store(p, readonly=True) as s:  # opening read-only must not create our schema in someone else's file
        assert s.query("PRAGMA user_version")[0][0] == 0
        assert "items" not in {r["name"] for r in s.query("SELECT name FROM sqlite_master")}
