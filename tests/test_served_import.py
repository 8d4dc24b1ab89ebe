"""Served traffic back into the wheel: inputs a live ``flywheel serve`` answered become train items, the teacher
answers serving bought become their labels, and nothing is bought twice -- not by the import, not by labelling
later."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import httpx
import pytest

import llm_flywheel as lf
from llm_flywheel.interfaces.serve import create_app
from llm_flywheel.pipeline.calibration import DEFER_ALL
from llm_flywheel.teachers.simulated import sim_stats
from test_serve import flush, running

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _data import tickets  # noqa: E402

LABELS = ["account", "billing", "hardware"]


def _info(ws) -> dict:
    from llm_flywheel.pipeline.dataset_info import dataset_info

    with ws._ws.store(readonly=True) as s:
        return dataset_info(s, "tickets", ws._ws.root).to_dict()


def _round_metrics(ws, run_id: int) -> list[dict]:
    with ws._ws.store(readonly=True) as s:
        return [s.round_metrics(run_id, 1)[0]]


def _calls(t) -> int:
    return int(sim_stats(t.spec.split("|")[0])["requests"])


@pytest.fixture()
def served(tmp_path):
    """A text dataset with a calibrated tf-idf student, served twice on 127.0.0.1: once deferring every input to
    the simulated teacher (6 new tickets, one posted twice, and 2 the dataset already has), once answering every
    input with the student (3 more new tickets)."""
    ws = lf.Workspace(tmp_path / "ws")
    texts, topics = tickets(260, seed=1)
    ds = ws.add_items("tickets", texts, labels=LABELS, gold=topics)
    new, _ = tickets(9, seed=99)
    t = ds.simulated_teacher(accuracy=0.9)
    ds.label(t, progress=False)
    ds.train("text-tfidf", progress=False).calibrate(max_teacher_fraction=0.3)
    with ws._ws.store(readonly=True) as s:
        known = [it.text for it in s.items("tickets", split="train", limit=2)]
    for threshold, posted in ((DEFER_ALL, new[:6] + new[:1] + known), (0.0, new[6:])):
        app = create_app(ws._ws, "tickets", teacher_spec=t.spec, api_key_env="", threshold=threshold, seed=0,
                         max_logged_payload_bytes=10_000, deadline_s=30)
        with running(app) as url:
            for text in posted:
                r = httpx.post(f"{url}/v1/predict", json={"text": text}, timeout=60)
                assert r.status_code == 200, r.text
            flush(app)
    yield ws, ds, t, new, known
    t.close()


def test_served_inputs_join_train_with_the_answers_serving_bought(served):
    ws, ds, t, new, known = served
    before = ds.splits()
    calls = _calls(t)
    assert _info(ws)["served_not_added"] == 9  # `data info` points at them
    res = ds.add_served(t)
    assert _info(ws)["served_not_added"] == 0
    assert _calls(t) == calls and res.teacher_calls == 0  # the import asks nothing
    assert (res.served, res.deferred) == (11, 8)
    assert res.added == 9 and res.already_present == 2
    assert ds.splits()["train"] == before["train"] + 9
    assert {k: v for k, v in ds.splits().items() if k != "train"} == {k: v for k, v in before.items() if k != "train"}
    assert res.answers_adopted == 6 and res.labelled == 6  # the 2 known items had their pass 0 from labelling
    with ws._ws.store(readonly=True) as s:
        rows = {r["text"]: r for r in s.query(
            "SELECT i.text, i.split, l.label, a.reason, a.pass_index FROM items i "
            "LEFT JOIN labels l ON l.item_id=i.id AND l.source='teacher' "
            "LEFT JOIN teacher_answers a ON a.item_id=i.id AND a.ok=1 WHERE i.source_ref LIKE 'served:%'")}
        served_labels = {r["content_hash"]: r["label"] for r in s.query("SELECT * FROM served_teacher_answers")}
    assert set(rows) == set(new)
    assert all(r["split"] == "train" for r in rows.values())
    for text in new[:6]:  # deferred: labelled with the answer serving bought, as labelling's pass 0
        r = rows[text]
        assert r["label"] in LABELS and r["pass_index"] == 0 and r["reason"] == "bought by flywheel serve"
    assert all(rows[x]["label"] is None for x in new[6:])  # answered by the student: unlabelled pool items
    assert {served_labels[hashlib.sha256(x.encode()).hexdigest()] for x in new[:6]} >= {rows[x]["label"] for x in new[:6]}

    again = ds.add_served(t)  # idempotent
    assert (again.added, again.answers_adopted, again.labelled, again.already_present) == (0, 0, 0, 11)


def test_labelling_the_imported_items_later_buys_only_the_passes_serving_did_not(served):
    ws, ds, t, new, _ = served
    ds.add_served(t)
    with ws._ws.store(readonly=True) as s:
        ids = [int(r["id"]) for r in s.query("SELECT id FROM items WHERE source_ref LIKE 'served:%' ORDER BY id")]
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items

    calls = _calls(t)
    rep = label_items(ws._ws, "tickets", ids, t.build(ds.task, ws._ws), LabelConfig(passes=2, adaptive_passes=False),
                      progress=False)
    # 9 items x 2 passes = 18 answers; serving had bought pass 0 of 6: 12 calls plus the tie-breaks
    assert rep.calls_made == _calls(t) - calls
    assert 12 <= rep.calls_made <= 12 + 9


def test_deferred_only_leaves_the_inputs_the_student_answered(served):
    ws, ds, t, new, _ = served
    res = ds.add_served(t, deferred_only=True)
    assert (res.served, res.added, res.already_present, res.labelled) == (8, 6, 2, 6)
    assert ds.add_served(t).added == 3  # the student-answered ones, when asked for


def test_without_the_teacher_the_items_join_and_the_fix_is_named(served, tmp_path):
    ws, ds, t, new, _ = served
    res = ds.add_served()
    assert res.added == 9 and res.answers_adopted == 0 and res.labelled == 0
    assert res.answers_other_teacher == 6 and any("--teacher" in n for n in res.notes)
    later = ds.add_served(t)  # the teacher given later still adopts them
    assert later.added == 0 and later.answers_adopted == 6 and later.labelled == 6


def test_inputs_not_kept_or_changed_on_disk_are_counted_not_imported(served):
    ws, ds, t, new, _ = served
    hashes = [hashlib.sha256(x.encode()).hexdigest() for x in new[:2]]
    kept = [ws._ws.root / "exports" / "served" / h[:2] / f"{h}.txt" for h in hashes]
    kept[0].unlink()  # retention deleted it
    kept[1].write_text("edited by hand")
    res = ds.add_served(t)
    assert res.not_kept == 1 and res.unreadable == 1 and res.added == 7


def test_the_command_prints_what_it_added_and_exits_zero(served):
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    ws, ds, t, new, _ = served
    root = str(ws._ws.root)
    r = CliRunner().invoke(main, ["-w", root, "data", "info", "tickets"], catch_exceptions=False)
    assert "served inputs not in the dataset yet: 9" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["-w", root, "data", "add-served", "tickets", "--teacher", t.spec, "--api-key-env", "",
                                  "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    import json
    d = json.loads(r.output)
    assert (d["added"], d["answers_adopted"], d["labelled"], d["teacher_calls"]) == (9, 6, 6, 0)
    r = CliRunner().invoke(main, ["-w", root, "data", "add-served", "nope"], catch_exceptions=False)
    assert r.exit_code == 2 and "nope" in r.output


def test_served_images_in_a_format_the_store_reencodes_keep_their_answers(tmp_path):
    """A GIF is stored as PNG (a new content hash): its served answer still follows it, by the import's source."""
    import io

    import numpy as np
    from PIL import Image

    from llm_flywheel.pipeline.served_import import import_served
    from test_cascade import sim_teacher, trained_calibrated_ws
    from llm_flywheel.teachers.simulated import run_simulated_teacher

    ws, _ = trained_calibrated_ws(tmp_path / "ws", epochs=1)
    with ws.store() as s:
        it = s.items("synth", split="test", limit=1)[0]
    px = np.array(Image.open(ws.root / it.blob_path).convert("L"))
    px[0, 0] = 255 - px[0, 0]  # content the dataset does not hold
    bodies = {}
    for fmt in ("PNG", "GIF"):
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, fmt)
        bodies[fmt] = buf.getvalue()
    with run_simulated_teacher(ws, "synth") as url:
        teacher = sim_teacher(ws, url)
        app = create_app(ws, "synth", teacher=teacher, threshold=DEFER_ALL, max_logged_payload_bytes=10_000,
                         deadline_s=30)
        with running(app) as server:
            for fmt, body in bodies.items():
                r = httpx.post(f"{server}/v1/predict", content=body, headers={"Content-Type": f"image/{fmt.lower()}"},
                               timeout=60)
                assert r.status_code == 200 and r.json()["source"] == "teacher", r.text
            flush(app)
        calls = sim_stats(url)["requests"]
        res = import_served(ws, "synth", teacher)
        again = import_served(ws, "synth", teacher)  # the GIF is held under its PNG hash: found by its source
        assert sim_stats(url)["requests"] == calls
    assert (again.added, again.already_present, again.answers_adopted) == (0, 2, 0)
    assert res.added == 2 and res.answers_adopted == 2 and res.labelled == 2
    with ws.store() as s:
        rows = s.query("SELECT i.content_hash, i.blob_path, a.pass_index FROM items i JOIN teacher_answers a "
                       "ON a.item_id=i.id WHERE i.source_ref LIKE 'served:%'")
    gif_hash = hashlib.sha256(bodies["GIF"]).hexdigest()
    assert len(rows) == 2 and all(r["pass_index"] == 0 and r["blob_path"].endswith(".png") for r in rows)
    assert gif_hash not in {r["content_hash"] for r in rows}  # stored under the PNG's hash, answer and all


def test_the_wheel_warns_about_served_inputs_it_would_not_train_on(served):
    from rich.console import Console

    from llm_flywheel.pipeline.flywheel import WheelConfig, setup

    ws, ds, t, _, _ = served
    built = t.build(ds.task, ws._ws)
    _, sizing = setup(ws._ws, "tickets", WheelConfig(rounds=1), Console(quiet=True), False, built, None)
    w = [w for w in sizing.warnings if w["code"] == "served_not_added"]
    assert len(w) == 1 and w[0]["message"].startswith("9 inputs") and "add-served tickets" in w[0]["fix"]
    ds.add_served(t)
    _, sizing = setup(ws._ws, "tickets", WheelConfig(rounds=1), Console(quiet=True), False, built, None)
    assert not [w for w in sizing.warnings if w["code"] == "served_not_added"]


def test_a_limit_adds_the_deferred_inputs_first_and_leaves_the_rest_for_later(served):
    ws, ds, t, new, _ = served
    res = ds.add_served(t, limit=4)
    assert (res.added, res.already_present, res.left_for_later) == (4, 2, 5)
    assert res.labelled == 4  # all four deferred: each with the answer serving bought
    assert "5 left for a later import" in res.summary()
    assert _info(ws)["served_not_added"] == 5
    rest = ds.add_served(t)
    assert (rest.added, rest.left_for_later, rest.labelled) == (5, 0, 2)


def test_the_wheel_imports_served_traffic_first_and_a_resumed_run_keeps_its_pool(served):
    from rich.console import Console

    from llm_flywheel.pipeline.flywheel import WheelConfig, open_run, setup

    ws, ds, t, new, _ = served
    built = t.build(ds.task, ws._ws)
    calls = _calls(t)
    cfg = WheelConfig(rounds=1, add_served="deferred", add_served_limit=3)
    ctx, sizing = setup(ws._ws, "tickets", cfg, Console(quiet=True), False, built, None)
    assert _calls(t) == calls  # adopting serving's answers asks nothing
    assert (ctx.served_import["added"], ctx.served_import["labelled"], ctx.served_import["left_for_later"]) == (3, 3, 3)
    with ws._ws.store(readonly=True) as s:
        imported = {int(r["id"]) for r in s.query("SELECT id FROM items WHERE source_ref LIKE 'served:%'")}
    assert len(imported) == 3 and imported <= set(ctx.train_order)  # the new run's pool holds them
    w = [w for w in sizing.warnings if w["code"] == "served_not_added"]
    assert len(w) == 1 and w[0]["message"].startswith("6 inputs") and "--add-served-limit" in w[0]["fix"]
    open_run(ctx)  # the run starts (and, say, is killed)
    again, _ = setup(ws._ws, "tickets", cfg, Console(quiet=True), False, built, None)
    assert again.served_import is None and again.train_order == ctx.train_order  # resumed: nothing imported
    with pytest.raises(ValueError, match="add_served"):
        WheelConfig(add_served="yes")


def test_flywheel_run_add_served_turns_the_wheel_on_production_traffic(served):
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    ws, ds, t, new, _ = served
    calls = _calls(t)
    r = CliRunner().invoke(main, [
        "-w", str(ws._ws.root), "run", "tickets", "--teacher", t.spec, "--api-key-env", "", "--rounds", "1",
        "--student-kind", "text-tfidf", "--seed-labels", "0", "--stream-per-round", "0", "--no-gold-ceiling",
        "--no-progress", "--add-served", "all"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "9 added to train" in out and "6 teacher answers serving bought reused as pass 0" in out
    assert "served_not_added" not in out and "not in the dataset" not in out
    deferred = [hashlib.sha256(x.encode()).hexdigest() for x in new[:6]]
    with ws._ws.store(readonly=True) as s:
        run = s.wheel_runs("tickets")[0]
        pass0 = s.query("SELECT i.content_hash, a.bought_by FROM teacher_answers a JOIN items i ON i.id=a.item_id "
                        "WHERE i.source_ref LIKE 'served:%' AND a.pass_index=0")
    assert run["status"] == "done" and _info(ws)["served_not_added"] == 0
    # the 6 inputs serving deferred have exactly one pass 0 each: the one serving bought, never bought again
    assert sorted(r["content_hash"] for r in pass0 if r["content_hash"] in deferred) == sorted(deferred)
    assert all(r["bought_by"] == "serve" for r in pass0 if r["content_hash"] in deferred)
    ledger = sum(int(m.get("teacher_calls") or 0) + int(m.get("eval_teacher_calls") or 0)
                 for m in _round_metrics(ws, run["id"]))
    assert ledger == _calls(t) - calls  # the run's ledger is what the teacher was asked: no reuse counted as a call
    import json

    reports = ws._ws.root / "reports"
    assert json.loads((reports / "summary.json").read_text())["served_import"]["added"] == 9
    assert "This run began by importing served traffic" in (reports / "index.html").read_text()


def test_labelling_content_serving_answered_reuses_that_answer_without_an_import(served):
    """A stream item posted to the service: labelling it later takes serving's answer as its first pass."""
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items
    from llm_flywheel.pipeline.served_answers import SERVED_REASON

    ws, ds, t, _, _ = served
    with ws._ws.store(readonly=True) as s:
        it = s.items("tickets", split="stream", limit=1)[0]
    app = create_app(ws._ws, "tickets", teacher_spec=t.spec, api_key_env="", threshold=DEFER_ALL, deadline_s=30)
    with running(app) as url:
        assert httpx.post(f"{url}/v1/predict", json={"text": it.text}, timeout=60).json()["source"] == "teacher"
    calls = _calls(t)
    from llm_flywheel.pipeline.cost import spend_of

    with spend_of(ws._ws, "tickets") as spent:
        rep = label_items(ws._ws, "tickets", [it.id], t.build(ds.task, ws._ws),
                          LabelConfig(passes=2, adaptive_passes=False), progress=False)
    assert rep.reused_from_serving == 1 and rep.answers_cached == 1
    assert spent.calls == rep.calls_made  # the ledger counts what this run bought, not what serving had
    assert rep.calls_made == _calls(t) - calls and 1 <= rep.calls_made <= 2  # pass 1, and a tie-break if they differ
    with ws._ws.store(readonly=True) as s:
        first = s.query("SELECT reason FROM teacher_answers WHERE item_id=? AND pass_index=0 AND ok=1", (it.id,))
    assert first[0]["reason"] == SERVED_REASON
    again = label_items(ws._ws, "tickets", [it.id], t.build(ds.task, ws._ws),
                        LabelConfig(passes=2, adaptive_passes=False), progress=False)
    assert again.reused_from_serving == 0 and again.calls_made == 0


def test_batch_api_labelling_reuses_what_serving_bought_too(served):
    from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
    from llm_flywheel.pipeline.labeling import LabelConfig

    ws, ds, t, _, _ = served
    with ws._ws.store(readonly=True) as s:
        items = s.items("tickets", split="stream", limit=3)
    app = create_app(ws._ws, "tickets", teacher_spec=t.spec, api_key_env="", threshold=DEFER_ALL, deadline_s=30)
    with running(app) as url:
        for it in items:
            assert httpx.post(f"{url}/v1/predict", json={"text": it.text}, timeout=60).json()["source"] == "teacher"
    rep = label_items_batch(ws._ws, "tickets", [it.id for it in items], t.build(ds.task, ws._ws),
                            LabelConfig(passes=2, adaptive_passes=False), BatchConfig(poll_s=0.05), progress=False)
    assert rep.reused_from_serving == 3 and rep.answers_cached == 3
    assert rep.lines_submitted == 3  # pass 1 only; tie-breaks, if any, go online or in a follow-up
