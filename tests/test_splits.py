"""Duplicate-safe splits: identical items (same content hash, or the same normalised text) never cross splits;
`flywheel data check` reports and repairs workspaces split before that, and refuses once labels exist."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SYNTH_LABELS, synth_image
from llm_flywheel.interfaces.cli import main
from llm_flywheel.data import Record, register
from llm_flywheel.core.splits import SplitError, first_of_each_group, plan_splits
from llm_flywheel.pipeline.splits import (SplitRepairError, SplitSpec, check_duplicates, explain_empty_train_pool,
                                          group_key, make_splits, normalise_text, repair_duplicates)
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

TEXT_TASK = Task(name="mail", modality="text", labels=("spam", "ham"), instructions="Spam or not.")
IMG_TASK = Task(name="synth", modality="image", labels=SYNTH_LABELS, instructions="Classify the shape.")


def _variants(text: str, k: int, rng: np.random.Generator) -> list[str]:
    """k copies of ``text``: exact, re-cased, or with its whitespace changed -- all the same item."""
    out = []
    for _ in range(k):
        v = int(rng.integers(3))
        out.append(text if v == 0 else text.upper() if v == 1 else "  " + text.replace(" ", " \n\t ") + "\n")
    return out


def text_records(n: int, *, dup_groups: int, source_test: bool, seed: int = 0) -> list[Record]:
    """``n`` distinct emails plus ``dup_groups`` of them repeated 2-4 times, copies scattered over the sources."""
    rng = np.random.default_rng(seed)
    base = [f"message {i} about {'prize money' if i % 2 else 'the meeting'} number {i * 7919 % 1000}" for i in range(n)]
    texts = list(base)
    for i in rng.choice(n, dup_groups, replace=False):
        texts += _variants(base[i], int(rng.integers(1, 4)), rng)
    order = rng.permutation(len(texts))
    recs = []
    for j, idx in enumerate(order):
        t = texts[idx]
        src = ("test" if rng.random() < 0.2 else "train") if source_test else None
        recs.append(Record(f"row:{j}", text=t, source_split=src, gold_label="spam" if "prize" in t.lower() else "ham"))
    return recs


def image_records(n: int, *, dup_groups: int, seed: int = 0) -> list[Record]:
    """Distinct synthetic images plus byte-identical copies of ``dup_groups`` of them, under other names."""
    rng = np.random.default_rng(seed)
    imgs = [(synth_image(i % 4, rng), SYNTH_LABELS[i % 4]) for i in range(n)]
    copies = [imgs[int(i)] for i in rng.choice(n, dup_groups, replace=False) for _ in range(int(rng.integers(1, 3)))]
    allim = imgs + copies
    order = rng.permutation(len(allim))
    return [Record(f"img:{j}", image=allim[k][0], gold_label=allim[k][1]) for j, k in enumerate(order)]


def _groups_by_split(ws: Workspace, dataset: str) -> dict[str, set[str | None]]:
    with ws.store() as s:
        g: dict[str, set[str | None]] = defaultdict(set)
        for r in s.split_rows(dataset):
            g[group_key(r["content_hash"], r["text"])].add(r["split"])
    return g


def _run(ws: Workspace, *args: str):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args], catch_exceptions=False)


def test_normalised_text_key():
    assert normalise_text("  Win a\tPRIZE\n\n now ") == "win a prize now"
    assert group_key("h1", "Win a PRIZE") == group_key("h2", "win  a prize\n")
    assert group_key("h1", "win a prize") != group_key("h1", "win a price")
    assert group_key("same", None) == group_key("same", None) != group_key("other", None)


@pytest.mark.parametrize("seed", range(4))
def test_identical_texts_never_cross_splits(tmp_path, seed):
    ws = Workspace.open(tmp_path / "ws")
    register(ws, TEXT_TASK, text_records(300, dup_groups=60, source_test=True, seed=seed), progress=False)
    with ws.store() as s:
        counts = make_splits(s, "mail", SplitSpec(val=0.1, calib=0.1, stream=0.2, seed=seed))
        rows = s.split_rows("mail")
    groups = _groups_by_split(ws, "mail")
    assert sum(1 for v in groups.values() if len(v) > 1) == 0
    assert sum(counts.values()) == len(rows) and all(counts.get(k) for k in ("train", "val", "calib", "stream", "test"))
    # the source's own test split is honoured: every item it marks test is in test (its copies join it there)
    assert all(r["split"] == "test" for r in rows if r["source_split"] == "test")
    with ws.store() as s:
        rep = check_duplicates(s, "mail")
    assert rep.groups >= 60 and rep.duplicate_items >= 60 and rep.cross_split_groups == 0 and not rep.moves


@pytest.mark.parametrize("seed", range(3))
def test_identical_images_never_cross_splits(tmp_path, seed):
    ws = Workspace.open(tmp_path / "ws")
    register(ws, IMG_TASK, image_records(200, dup_groups=50, seed=seed), progress=False)
    with ws.store() as s:
        counts = make_splits(s, "synth", SplitSpec(val=0.1, calib=0.1, stream=0.2, test=0.2, seed=seed))
        rep = check_duplicates(s, "synth")
    assert rep.groups == 50 and rep.cross_split_groups == 0
    assert not [k for k, v in _groups_by_split(ws, "synth").items() if len(v) > 1]
    n = sum(counts.values())
    assert abs(counts["test"] - 0.2 * n) <= 3  # whole groups: the sizes stay close to what was asked


def test_without_duplicates_sizes_are_exact_and_fixed(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    register(ws, TEXT_TASK, text_records(200, dup_groups=0, source_test=False), progress=False)
    with ws.store() as s:
        counts = make_splits(s, "mail", SplitSpec(val=10, calib=20, stream=30, test=40, seed=3))
        first = {r["id"]: r["split"] for r in s.split_rows("mail")}
        assert counts == {"train": 100, "val": 10, "calib": 20, "test": 40, "stream": 30}
        make_splits(s, "mail", SplitSpec(val=10, calib=20, stream=30, test=40, seed=3), force=True)
        assert {r["id"]: r["split"] for r in s.split_rows("mail")} == first  # same seed, same splits


def test_later_import_puts_a_copy_beside_its_twin(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    recs = text_records(100, dup_groups=0, source_test=True)
    register(ws, TEXT_TASK, recs, progress=False)
    with ws.store() as s:
        make_splits(s, "mail", SplitSpec(val=5, calib=5, stream=10))
        by_text = {r["text"]: r["split"] for r in s.split_rows("mail")}
    test_text = next(t for t, sp in by_text.items() if sp == "test")
    val_text = next(t for t, sp in by_text.items() if sp == "val")
    register(ws, TEXT_TASK, [Record("new:0", text=test_text.upper(), source_split="train"),
                             Record("new:1", text=val_text + "  "), Record("new:2", text="a brand new message")],
             progress=False)
    with ws.store() as s:
        make_splits(s, "mail")
        new = {r["text"]: r["split"] for r in s.split_rows("mail") if r["id"] > len(recs)}
    assert new == {test_text.upper(): "test", val_text + "  ": "val", "a brand new message": "train"}


def _old_style_cross_splits(ws: Workspace, dataset: str) -> list[tuple[int, str]]:
    """Simulate a workspace split before grouping: put the copies of each duplicate group into different splits."""
    with ws.store() as s:
        by_key: dict[str, list] = defaultdict(list)
        for r in s.split_rows(dataset):
            by_key[group_key(r["content_hash"], r["text"])].append(r)
        moves = []
        for g in by_key.values():
            if len(g) > 1:
                first = g[0]["split"]
                other = "train" if first != "train" else "test"
                moves.append((int(g[1]["id"]), other))
        s.set_splits(moves)
    return moves


def test_check_info_and_repair_through_the_cli(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    register(ws, TEXT_TASK, text_records(200, dup_groups=20, source_test=False, seed=5), progress=False)
    with ws.store() as s:
        make_splits(s, "mail", SplitSpec(val=0.1, calib=0.1, stream=0.2, seed=5))
    moved = _old_style_cross_splits(ws, "mail")
    assert len(moved) == 20

    r = _run(ws, "data", "info", "mail", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)["mail"]["duplicates"]
    assert d["cross_split_groups"] == 20 and d["groups"] == 20 and d["duplicate_items"] >= 20
    r = _run(ws, "data", "info", "mail")
    assert "20 groups cross splits" in r.output and "flywheel data check mail --repair" in r.output

    r = _run(ws, "data", "check", "mail", "--json")
    assert r.exit_code == 1 and "--repair" in r.output  # a script can tell: duplicates cross splits
    rep = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert rep["cross_split_groups"] == 20 and rep["cross_split_items"] >= 20 and not rep["repaired"]
    assert all(m["to"] in ("test", "val", "calib", "stream") for m in rep["moves"])  # into the held-out side

    r = _run(ws, "data", "check", "mail", "--repair")
    assert r.exit_code == 0, r.output
    assert "repaired" in r.output
    assert not [k for k, v in _groups_by_split(ws, "mail").items() if len(v) > 1]
    r = _run(ws, "data", "check", "mail")
    assert r.exit_code == 0 and "0 groups cross splits" in r.output
    with ws.store() as s:
        assert s.latest_report("split_repair", "mail")["cross_split_groups"] == 20
    r = _run(ws, "data", "check", "nosuch")
    assert r.exit_code != 0 and "not in this workspace" in r.output


def test_repair_refused_once_a_touched_split_has_labels(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    register(ws, TEXT_TASK, text_records(150, dup_groups=10, source_test=False, seed=2), progress=False)
    with ws.store() as s:
        make_splits(s, "mail", SplitSpec(val=0.1, calib=0.1, stream=0.2, seed=2))
    _old_style_cross_splits(ws, "mail")
    with ws.store() as s:
        before = {r["id"]: r["split"] for r in s.split_rows("mail")}
        train_item = s.items("mail", split="train", limit=1)[0]
        s.execute("INSERT INTO labels(item_id, source, label, status, updated_at) VALUES(?,?,?,?,?)",
                  (train_item.id, "teacher", "spam", "agreed", time.time()))
        with pytest.raises(SplitRepairError, match=r"train \(1 labelled or served.*--name mail-dedup"):
            repair_duplicates(s, "mail")
        assert {r["id"]: r["split"] for r in s.split_rows("mail")} == before  # nothing moved
    r = _run(ws, "data", "check", "mail", "--repair")
    assert r.exit_code != 0 and "already have labels" in r.output and "--name mail-dedup" in r.output
    with ws.store() as s:
        s.execute("DELETE FROM labels")
        target = check_duplicates(s, "mail").moves[0][2]  # a split the repair moves items into
        served = s.items("mail", split=target, limit=1)[0]
        s.execute("INSERT INTO cascade_log(ts, dataset, item_id, source, label, origin) VALUES(?,?,?,?,?,?)",
                  (time.time(), "mail", served.id, "student", "spam", "predict"))
        with pytest.raises(SplitRepairError, match=rf"{target} \(1 labelled or served"):
            repair_duplicates(s, "mail")
        s.execute("DELETE FROM cascade_log")
        assert repair_duplicates(s, "mail").repaired  # nothing used any more: the repair goes through
        assert check_duplicates(s, "mail").cross_split_groups == 0


def test_import_reports_duplicates(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    recs = text_records(100, dup_groups=15, source_test=True, seed=4)
    distinct = len({group_key("", r.text) for r in recs})
    rep = register(ws, TEXT_TASK, recs, progress=False)
    assert rep.added == len(recs) and rep.duplicates == len(recs) - distinct >= 15
    assert any("repeat the content of another item" in n for n in rep.notes)
    again = register(ws, TEXT_TASK, recs + [Record("late:0", text=recs[0].text.upper())], progress=False)
    assert again.added == 1 and again.duplicates == 1  # a copy of an item imported earlier counts too


# -- the pure core: core/splits.py ------------------------------------------------------------------------------------


def _rows(texts: list[str], source: list[str | None] | None = None) -> list[dict]:
    return [{"id": i + 1, "source_split": (source or [None] * len(texts))[i], "split": None, "content_hash": f"h{i}",
             "text": t} for i, t in enumerate(texts)]


def test_plan_splits_is_pure_and_keeps_groups_together():
    texts = [f"mail {i % 37}" if i % 3 else f"Mail  {i % 37}\n" for i in range(300)]  # 37 distinct, each ~8 times
    plan = dict(plan_splits(_rows(texts), SplitSpec(val=0.1, calib=0.1, stream=0.1, test=0.2, seed=1)))
    assert sorted(plan) == list(range(1, 301))  # every row gets exactly one split
    by_text: dict[str, set[str]] = defaultdict(set)
    for i, t in enumerate(texts):
        by_text[normalise_text(t)].add(plan[i + 1])
    assert all(len(v) == 1 for v in by_text.values())
    assert {s for v in by_text.values() for s in v} == {"train", "val", "calib", "stream", "test"}
    assert plan == dict(plan_splits(_rows(texts), SplitSpec(val=0.1, calib=0.1, stream=0.1, test=0.2, seed=1)))


def test_first_of_each_group_counts_a_repeated_item_once():
    rows = _rows(["Win a PRIZE", "win a prize ", "meeting at 3", "WIN A PRIZE"])
    assert [r["id"] for r in first_of_each_group(rows)] == [1, 3]


def test_mostly_duplicates_says_why_the_train_pool_is_empty():
    """40 rows that are only 4 distinct texts: the held-out splits take every group.  The error says so, with the
    number of distinct items, and names the fix; the fix it names works."""
    texts = [f"message number {i % 4}" for i in range(40)]
    with pytest.raises(SplitError) as e:
        plan_splits(_rows(texts), SplitSpec(), dataset="tiny")
    msg = str(e.value)
    assert "empty train pool" in msg and "40 items are only 4 distinct" in msg and "kept together" in msg
    assert "--stream 0" in msg
    plan = dict(plan_splits(_rows(texts), SplitSpec(stream=0), dataset="tiny"))
    assert set(plan.values()) == {"train", "val", "calib", "test"}


def test_mostly_duplicates_through_the_cli(tmp_path):
    csv = tmp_path / "tiny.csv"
    csv.write_text("text,label\n" + "".join(f"message number {i % 4},{'spam' if i % 2 else 'ham'}\n"
                                             for i in range(40)))
    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-w", str(ws), "data", "add", "text", str(csv), "--no-progress"])
    assert r.exit_code != 0
    assert "only 4 distinct" in r.output and "--stream 0" in r.output, r.output
    r = CliRunner().invoke(main, ["-w", str(ws), "data", "add", "text", str(csv), "--no-progress", "--stream", "0",
                                  "--resplit"])
    assert r.exit_code == 0, r.output
    with Workspace.open(ws).store() as s:
        counts = s.split_count_summary("tiny")
        assert counts.get("train") and counts.get("val") and counts.get("calib") and counts.get("test")
        # the de-duplicated test view counts each distinct text once
        test = s.items("tiny", split="test")
        distinct = s.items("tiny", split="test", distinct=True)
    assert len(test) == 10 and len(distinct) == 1 and distinct[0].id == min(it.id for it in test)


def test_an_already_split_dataset_without_train_pool_is_explained(tmp_path):
    """A workspace whose train split is empty (split by hand or before grouping): the wheel's error text says why."""
    ws = Workspace.open(tmp_path / "ws")
    register(ws, TEXT_TASK, [Record(f"r{i}", text=f"message number {i % 3}") for i in range(12)], progress=False)
    with ws.store() as s:
        s.set_splits([(r["id"], ("val", "calib", "test")[i % 3]) for i, r in enumerate(s.split_rows("mail"))])
        msg = explain_empty_train_pool(s, "mail")
    assert "has an empty train pool" in msg and "12 items are only 3 distinct" in msg and "--stream 0" in msg


@pytest.mark.parametrize("n_items, expected", [
    (150, {"test": 30, "val": 12, "calib": 18, "stream": 24, "train": 66}),  # 5 % would be 6 and 6
    (250, {"test": 50, "val": 20, "calib": 38, "stream": 40, "train": 102}),  # 15 % (30) could not defer
    (400, {"test": 80, "val": 32, "calib": 48, "stream": 64, "train": 176}),  # 15 % is enough
    (5000, {"test": 1000, "val": 200, "calib": 200, "stream": 800, "train": 2800}),  # 5 % from 4,000 on
])
def test_default_val_and_calib_sizes_fit_the_dataset(n_items, expected):
    """The default (None) is 5 % of the non-test items, raised for a small dataset towards 100 val / 200 calib but
    never past 10 % / 15 %: a newcomer's 150 emails must not get a 6-item calib split.  Calib reaches the 38 items
    the default teacher budget needs to defer anything where that is at most a quarter of the non-test items."""
    texts = [f"mail number {i}" for i in range(n_items)]
    plan = plan_splits(_rows(texts), SplitSpec(seed=0))
    counts: dict[str, int] = defaultdict(int)
    for _, split in plan:
        counts[split] += 1
    assert dict(counts) == expected


def test_data_add_takes_auto_or_a_size_for_val_and_calib(tmp_path):
    src = tmp_path / "mails.csv"
    src.write_text("text,label\n" + "".join(f"mail number {i},{'spam' if i % 3 else 'ham'}\n" for i in range(150)))
    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["--workspace", str(ws), "data", "add", "text", str(src), "--no-progress"])
    assert r.exit_code == 0, r.output
    with Workspace.open(ws).store() as s:
        assert {k: v for k, v in s.split_counts("mails").items()} == {"train": 66, "val": 12, "calib": 18,
                                                                      "stream": 24, "test": 30}
    r = CliRunner().invoke(main, ["--workspace", str(ws), "data", "add", "text", str(src), "--name", "m2", "--calib",
                                  "0.2", "--val", "auto", "--no-progress"])
    assert r.exit_code == 0, r.output
    with Workspace.open(ws).store() as s:
        assert s.split_counts("m2")["calib"] == 24 and s.split_counts("m2")["val"] == 12  # 0.2 of 120 non-test
    r = CliRunner().invoke(main, ["--workspace", str(ws), "data", "add", "text", str(src), "--stream", "auto"])
    assert r.exit_code == 2 and "'auto': give a fraction (0.05) or a count (500)" in r.output  # only val/calib


def test_the_auto_calib_floor_is_what_the_default_teacher_budget_needs():
    from llm_flywheel.core.splits import CALIB_TO_DEFER
    from llm_flywheel.core.thresholds import min_calib_to_defer
    from llm_flywheel.pipeline.wheel_config import DEFAULT_MAX_TEACHER_FRACTION, WheelConfig

    assert CALIB_TO_DEFER == min_calib_to_defer(DEFAULT_MAX_TEACHER_FRACTION, WheelConfig().delta)
