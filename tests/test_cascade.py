"""A small trained + calibrated student on the synthetic shapes, shared by the cascade and service tests.

Built once per test module (training a tiny CNN for a few epochs takes seconds), in its own workspace.
"""

from __future__ import annotations

from pathlib import Path

from conftest import make_synth_dataset
from helpers_students import split_synth, write_teacher_labels
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

SYNTH_TASK = Task(name="synth", modality="image", labels=("bar", "ring", "cross", "dot"),
                  instructions="Classify the shape.", input_per_mtok=0.3, output_per_mtok=2.5)


def trained_calibrated_ws(root: Path, *, epochs: int = 2, flip: float = 0.1) -> tuple[Workspace, str]:
    """Workspace with dataset 'synth' (400 train / 100 test; splits val 60, calib 120, stream 40), teacher labels
    on train/val/calib (10 % flipped), one image-cnn student trained on them, calibrated for 90 % accuracy."""
    from llm_flywheel.pipeline.calibration import calibrate
    from llm_flywheel.pipeline.training import train_student

    ws = Workspace.open(root)
    make_synth_dataset(ws, SYNTH_TASK)
    split_synth(ws, val=60, calib=120, stream=40)
    write_teacher_labels(ws, "synth", split=("train", "val", "calib"), flip=flip)
    tm = train_student(ws, "synth", kind="image-cnn", width=8, epochs=epochs, progress=False)
    calibrate(ws, "synth", tm.version, target_accuracy=0.9, delta=0.1)
    return ws, tm.version


def sim_teacher(ws: Workspace, url: str):
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import model_id

    return teacher_from_spec(f"{url}|{model_id('synth')}", SYNTH_TASK, api_key_env="", workspace=ws)


# -- tests ----------------------------------------------------------------------------------------------------------
import json  # noqa: E402
import logging  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llm_flywheel.pipeline.calibration import DEFER_ALL  # noqa: E402
from llm_flywheel.pipeline.cascade import Cascade, CascadeError, summarize  # noqa: E402


@pytest.fixture(scope="module")
def cal_ws(tmp_path_factory):
    return trained_calibrated_ws(tmp_path_factory.mktemp("cascade") / "ws")


@pytest.fixture(scope="module")
def sim_url(cal_ws):
    from llm_flywheel.teachers.simulated import SimConfig, run_simulated_teacher

    ws, _ = cal_ws
    with run_simulated_teacher(ws, "synth", SimConfig(latency_ms=0, rate_429=0.0, malformed_rate=0.0)) as url:
        yield url


def _count(ws, sql, params=()):
    with ws.store() as s:
        return s.query(sql, params)[0][0]


def test_calibrate_stores_report_and_plot(cal_ws):
    ws, version = cal_ws
    with ws.store() as s:
        rep = s.latest_report("calibration", version)
    assert rep is not None and rep["version"] == version and rep["reference"] == "labels"
    assert rep["n_calib"] == 120
    assert rep["temperature"] > 0 and rep["nll_after"] <= rep["nll_before"] + 1e-9
    ch = rep["choice"]
    assert ch["goal"] == "accuracy" and ch["target"] == 0.9 and ch["n_calib"] == 120
    if ch["feasible"]:
        assert ch["accuracy_bound"] >= 0.9
    png = ws.root / "reports" / f"cascade-curve-{version}.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert len(rep["curve"]["teacher_fraction"]) == len(rep["curve"]["threshold"])


def test_calibrate_with_gold_reference_and_budget(cal_ws):
    from llm_flywheel.pipeline.calibration import calibrate

    ws, version = cal_ws
    rep = calibrate(ws, "synth", version, max_teacher_fraction=0.2, reference="gold")
    try:
        assert rep["reference"] == "gold" and "GOLD" in rep["reference_note"]
        assert rep["choice"]["teacher_fraction"] <= 0.2 and rep["goal"] == "budget"
        assert rep["curve"]["teacher_assumed_correct"] is False  # the teacher's own labels are scored against gold
    finally:  # put the accuracy-goal calibration back as the latest for the other tests
        calibrate(ws, "synth", version, target_accuracy=0.9, delta=0.1)


def test_calibrate_errors_are_clear(cal_ws, tmp_path):
    from llm_flywheel.pipeline.calibration import calibrate
    from llm_flywheel.students.base import StudentError

    ws, version = cal_ws
    with pytest.raises(StudentError, match="no model version"):
        calibrate(ws, "synth", "nope", target_accuracy=0.9)
    with pytest.raises(ValueError, match="reference"):
        calibrate(ws, "synth", version, target_accuracy=0.9, reference="teacher")


def test_uncalibrated_model_is_refused(cal_ws):
    ws, version = cal_ws
    with ws.store() as s:
        s.execute("INSERT INTO models(version, dataset, kind, path, created_at) SELECT 'uncal', dataset, kind, path, "
                  "created_at FROM models WHERE version=?", (version,))
    try:
        with pytest.raises(CascadeError, match="flywheel calibrate"):
            Cascade.from_store(ws, "synth", version="uncal")
    finally:
        with ws.store() as s:
            s.execute("DELETE FROM models WHERE version='uncal'")


def test_predict_items_routes_by_threshold_and_teacher_answers_become_labels(cal_ws, sim_url):
    ws, version = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="stream")
    casc = Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, sim_url))
    assert casc.version == version  # no promoted model yet -> the newest
    # put the threshold at the median confidence: about half the stream goes to the teacher
    probs = casc.student.predict_proba(items)
    _, conf = casc.student_scores(probs)
    casc.threshold = float(np.median(conf))
    n_log0 = _count(ws, "SELECT COUNT(*) FROM cascade_log")
    calls0 = _count(ws, "SELECT COUNT(*) FROM teacher_answers")
    answers = casc.predict_items(items, origin="predict", round=7)
    assert len(answers) == len(items)
    for a, it, c in zip(answers, items, conf):
        assert a.item_id == it.id and a.model_version == version
        assert a.source == ("student" if c >= casc.threshold else "teacher")
        assert a.student_confidence == pytest.approx(float(c))
        if a.source == "teacher":
            assert a.label == a.teacher_label and a.label in SYNTH_TASK.labels
        else:
            assert a.label == a.student_label and a.teacher_label is None
    n_teacher = sum(a.source == "teacher" for a in answers)
    assert 0 < n_teacher < len(items)
    # one pass per deferred item, stored before use, and now a teacher label in the store
    assert _count(ws, "SELECT COUNT(*) FROM teacher_answers") - calls0 == n_teacher
    deferred_ids = [a.item_id for a in answers if a.source == "teacher"]
    with ws.store() as s:
        labs = s.effective_labels("synth", split="stream")
    assert all(i in labs for i in deferred_ids)
    # every answer logged with source, threshold, round and origin
    with ws.store() as s:
        rows = s.query("SELECT * FROM cascade_log WHERE round=7 ORDER BY id")
    assert len(rows) == len(items) == _count(ws, "SELECT COUNT(*) FROM cascade_log") - n_log0
    assert {r["source"] for r in rows} == {"student", "teacher"}
    assert all(r["origin"] == "predict" and r["threshold"] == pytest.approx(casc.threshold) for r in rows)
    # asking again costs nothing: the deferred answers are cached labels
    again = casc.predict_items(items, log=False)
    assert _count(ws, "SELECT COUNT(*) FROM teacher_answers") - calls0 == n_teacher
    assert [a.label for a in again] == [a.label for a in answers]
    s = summarize(answers)
    assert s["n"] == len(items) and s["teacher_fraction"] == pytest.approx(n_teacher / len(items))


def test_threshold_extremes_and_no_teacher(cal_ws):
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=20)
    all_student = Cascade.from_store(ws, "synth", threshold=0.0).predict_items(items, log=False)
    assert {a.source for a in all_student} == {"student"}
    none = Cascade.from_store(ws, "synth", threshold=DEFER_ALL).predict_items(items, log=False)
    assert {a.source for a in none} == {"deferred"} and all(a.label is None for a in none)
    assert [a.student_label for a in none] == [a.label for a in all_student]


def test_unreachable_teacher_flags_answers_not_crash(cal_ws, caplog):
    from llm_flywheel.teachers.registry import teacher_from_spec

    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=5)
    dead = teacher_from_spec("http://127.0.0.1:9|simulated/nobody", SYNTH_TASK, api_key_env="", workspace=ws,
                             max_retries=0, timeout=2)
    with caplog.at_level(logging.WARNING, logger="llm_flywheel.pipeline.cascade"):
        answers = Cascade.from_store(ws, "synth", teacher=dead, threshold=DEFER_ALL).predict_items(items, log=False)
    assert {a.source for a in answers} == {"teacher_failed"}
    assert all(a.label == a.student_label for a in answers)  # falls back to the student's guess, flagged
    assert "teacher for 5 deferred items: stopped after" in caplog.text and "nothing listens" in caplog.text  # why


def test_deferred_items_an_open_batch_carries_say_so(cal_ws, sim_url, caplog):
    """Items whose teacher call a Batch API job is still running are not bought again online: they fall back to
    the student, flagged, and the log says why and how to collect the batch (before, nothing was said)."""
    from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
    from llm_flywheel.pipeline.labeling import LabelConfig

    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test")[20:26]
    t = sim_teacher(ws, sim_url)
    left = label_items_batch(ws, "synth", [it.id for it in items], t, LabelConfig(passes=1),
                             BatchConfig(poll_s=0.05, wait_s=0), progress=False)
    assert left.batches_pending == 1
    with caplog.at_level(logging.WARNING, logger="llm_flywheel.pipeline.cascade"):
        answers = Cascade.from_store(ws, "synth", teacher=t, threshold=DEFER_ALL).predict_items(items, log=False)
    assert {a.source for a in answers} == {"teacher_failed"}
    assert "Batch API submission that is not collected yet" in caplog.text and "--batch` collects it" in caplog.text
    label_items_batch(ws, "synth", [it.id for it in items], t, LabelConfig(passes=1), BatchConfig(poll_s=0.05),
                      progress=False)  # collected: now the teacher's answers
    again = Cascade.from_store(ws, "synth", teacher=t, threshold=DEFER_ALL).predict_items(items, log=False)
    assert {a.source for a in again} == {"teacher"}


def test_apredict_raw_student_and_teacher_paths(cal_ws, sim_url):
    import asyncio

    ws, version = cal_ws
    with ws.store() as s:
        it = s.items("synth", split="test", limit=1)[0]
    data = (ws.root / it.blob_path).read_bytes()
    t = sim_teacher(ws, sim_url)
    n0 = _count(ws, "SELECT COUNT(*) FROM cascade_log WHERE origin='serve'")
    a = asyncio.run(Cascade.from_store(ws, "synth", teacher=t, threshold=0.0).apredict_raw(data, content_hash="h1"))
    assert a.source == "student" and a.model_version == version and a.latency_ms > 0
    b = asyncio.run(Cascade.from_store(ws, "synth", teacher=t, threshold=DEFER_ALL).apredict_raw(data))
    assert b.source == "teacher" and b.teacher_label in SYNTH_TASK.labels
    assert _count(ws, "SELECT COUNT(*) FROM cascade_log WHERE origin='serve'") == n0 + 2
    assert json.loads(json.dumps(b.to_dict()))["source"] == "teacher"


def test_raw_teacher_answers_are_reused_not_paid_twice(cal_ws, sim_url):
    """A served input whose exact bytes the teacher already answered (stored answer, or earlier in this process)
    costs no new call."""
    import asyncio

    import httpx

    ws, _ = cal_ws
    with ws.store() as s:
        it = s.items("synth", split="stream", limit=1)[0]
    t = sim_teacher(ws, sim_url)
    casc = Cascade.from_store(ws, "synth", teacher=t, threshold=DEFER_ALL)
    casc.predict_items([it], log=False)  # stored teacher answer for this item (or already there)
    calls = httpx.get(f"{sim_url}/_stats").json()["requests"]
    data = (ws.root / it.blob_path).read_bytes()
    a = asyncio.run(casc.apredict_raw(data, content_hash=it.content_hash, log=False))
    assert a.source == "teacher" and httpx.get(f"{sim_url}/_stats").json()["requests"] == calls
    with ws.store() as s:  # an input the teacher never saw: one call, then remembered in this process
        other = s.items("synth", split="test", limit=60)[-1]
    odata = (ws.root / other.blob_path).read_bytes()
    for _ in range(2):
        b = asyncio.run(casc.apredict_raw(odata, content_hash=other.content_hash, log=False))
        assert b.source == "teacher"
    assert httpx.get(f"{sim_url}/_stats").json()["requests"] == calls + 1


def test_corrupt_blob_is_deferred_not_a_crash(cal_ws):
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=4)
    victim = ws.root / items[1].blob_path
    saved = victim.read_bytes()
    try:
        victim.write_bytes(b"corrupted on disk")
        answers = Cascade.from_store(ws, "synth", threshold=0.0).predict_items(items, log=False)
    finally:
        victim.write_bytes(saved)
    assert [a.source for a in answers] == ["student", "deferred", "student", "student"]
    assert answers[1].student_label == "" and answers[1].student_confidence == 0.0
