"""Evaluation: Wilson CIs, PNGs, teacher accuracy and gold ceiling side by side; label-issue detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers_students import split_synth, write_teacher_labels
from llm_flywheel.pipeline.evaluation import accuracy_ci, evaluate, expected_calibration_error, paired_diff_ci
from llm_flywheel.pipeline.noise import find_label_issues
from llm_flywheel.interfaces.report.evaluation_plots import draw_evaluation
from llm_flywheel.pipeline.training import train_student


def test_wilson_interval_known_values():
    acc, lo, hi = accuracy_ci(np.array([1] * 80 + [0] * 20))
    assert acc == 0.8
    assert lo == pytest.approx(0.7112, abs=1e-3) and hi == pytest.approx(0.8666, abs=1e-3)
    acc, lo, hi = accuracy_ci(np.ones(10, bool))
    assert acc == 1.0 and hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    acc, lo, hi = accuracy_ci(np.zeros(5, bool))
    assert acc == 0.0 and lo == 0.0 and 0.4 < hi < 0.6
    assert np.isnan(accuracy_ci(np.array([], bool))[0])


def test_paired_difference_and_ece():
    a = np.array([1, 1, 1, 0] * 50, bool)
    b = np.array([1, 0, 1, 0] * 50, bool)
    d, lo, hi = paired_diff_ci(a, b)
    assert d == pytest.approx(0.25) and lo < 0.25 < hi and lo > 0
    probs = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 9 + [1])
    ece, table = expected_calibration_error(probs, y)
    assert ece == pytest.approx(0.0, abs=1e-9) and table[0]["n"] == 10
    ece, _ = expected_calibration_error(probs, np.array([0] * 5 + [1] * 5))
    assert ece == pytest.approx(0.4)


def test_evaluate_teacher_and_ceiling_then_pngs_drawn_by_the_interface(synth_ws, tmp_path):
    ws = synth_ws
    split_synth(ws)
    write_teacher_labels(ws, "synth", flip=0.25, seed=0)
    write_teacher_labels(ws, "synth", split="test", flip=0.25, seed=1)  # the teacher also answered the test items
    tm = train_student(ws, "synth", kind="image-cnn", width=16, epochs=3, progress=False)
    expected_single = _write_single_call_answers(ws)
    rep = draw_evaluation(evaluate(ws, "synth", tm.version, out_dir=tmp_path / "ev", ceiling=True))
    s = rep["student"]
    assert s["n"] == 100 and s["ci95"][0] <= s["accuracy"] <= s["ci95"][1]
    assert 0 <= s["ece"] <= 1
    for key in ("confusion_png", "reliability_png"):
        p = Path(rep[key])
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rep["per_class"]) == 4 and sum(r["support"] for r in rep["per_class"]) == 100
    assert np.asarray(rep["confusion"]).sum() == 100
    t = rep["teacher_on_split"]
    assert t["n"] == 100 and 0.6 < t["accuracy"] < 0.9  # ~25 % flipped
    assert "student_minus_teacher" in t
    assert 0.6 < rep["training_label_accuracy"]["accuracy"] < 0.9
    t1 = rep["teacher_single_call_on_split"]  # pass 0 of the model that answered most; off-list counts as wrong
    assert t1["model"] == "m/main" and t1["coverage"] == pytest.approx(0.9)
    assert t1["n"] == 90 and t1["accuracy"] == pytest.approx(expected_single)
    assert t1["diff_ci95"][0] <= t1["student_minus_teacher"] <= t1["diff_ci95"][1]
    c = rep["ceiling"]
    assert c["version"] == f"{tm.version}-gold-ceiling" and c["n"] == 100
    assert c["diff_ci95"][0] <= c["student_minus_ceiling"] <= c["diff_ci95"][1]
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["version"] == tm.version
    store = ws.store()
    try:
        assert store.latest_report("evaluation", tm.version)["student"]["n"] == 100
        ceil_ids = json.loads((ws.models_dir / c["version"] / "train_ids.json").read_text())
        gold = {str(it.id): it.gold_label for it in store.items("synth", split="train")}
    finally:
        store.close()
    assert all(gold[i] == lab for i, lab in ceil_ids["train"].items())  # the ceiling learned gold labels
    assert "ece_after_temperature" not in s  # not calibrated yet
    # a second evaluation reuses the cached ceiling model; once calibrated, ECE is also shown after the temperature
    with ws.store() as store:
        store.add_report("calibration", tm.version, {"temperature": 3.0})
    rep2 = draw_evaluation(evaluate(ws, "synth", tm.version, out_dir=tmp_path / "ev2", ceiling=True))
    assert rep2["ceiling"]["accuracy"] == c["accuracy"]
    s2 = rep2["student"]
    assert s2["temperature"] == 3.0 and s2["ece_after_temperature"] != pytest.approx(s2["ece"])
    assert Path(rep2["reliability_after_temperature_png"]).read_bytes()[:4] == b"\x89PNG"


def _write_single_call_answers(ws) -> float:
    """Teacher answers for 90 of the 100 test items: pass 0 of 'm/main' (every 4th wrong, every 10th off-list),
    a pass 1 that is always right (must be ignored) and a second model on 10 items.  Returns pass-0 accuracy."""
    import time

    with ws.store() as store:
        items = store.items("synth", split="test")[:90]
        labels = sorted({it.gold_label for it in items})
        rows, right = [], 0
        for k, it in enumerate(items):
            wrong = k % 4 == 0
            lab = None if k % 10 == 5 else (labels[(labels.index(it.gold_label) + 1) % len(labels)] if wrong else it.gold_label)
            right += lab == it.gold_label
            rows.append((it.id, it.content_hash, "m/main", "v1", 0, lab))
            rows.append((it.id, it.content_hash, "m/main", "v1", 1, it.gold_label))
            if k < 10:
                rows.append((it.id, it.content_hash, "m/other", "v1", 0, it.gold_label))
        with store.transaction() as c:
            c.executemany("INSERT INTO teacher_answers(item_id, content_hash, model, prompt_version, pass_index, ok, label, "
                          f"created_at) VALUES(?,?,?,?,?,1,?,{time.time()})", rows)
    return right / 90


def test_find_label_issues_flags_flipped_labels(synth_ws):
    ws = synth_ws
    split_synth(ws)
    flipped = write_teacher_labels(ws, "synth", flip=0.2, seed=2)
    base = np.mean(list(flipped.values()))
    ids = find_label_issues(ws, "synth", kind="image-cnn", width=16, folds=3, epochs=5)
    assert ids, "some deliberately flipped labels must be found"
    precision = np.mean([flipped[i] for i in ids])
    assert precision > base + 0.3, f"precision {precision:.2f} vs base rate {base:.2f}"
    store = ws.store()
    try:
        q = store.query("SELECT item_id, reason, score FROM review_queue")
        rep = store.latest_report("label_issues", "synth")
    finally:
        store.close()
    assert {r["item_id"] for r in q} == set(ids) and {r["reason"] for r in q} == {"label_issue"}
    assert rep["gold_check"]["precision"] == pytest.approx(precision)
