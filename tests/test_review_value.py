"""Review where it pays: the queue's expected-value order, and the report's "what the human labels changed"."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.pipeline.review import TEACHER_SMOOTH, measure_human_label_effect, review_queue, review_value
from llm_flywheel.pipeline.splits import SplitSpec, make_splits
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher


def test_value_is_high_for_probably_wrong_or_weak_labels_and_low_for_agreed_ones():
    agreed = np.array([1.0, 0, 0, 0])
    student_agrees = np.array([0.97, 0.01, 0.01, 0.01])
    student_disagrees = np.array([0.02, 0.95, 0.02, 0.01])
    p_ok, v_ok = review_value(agreed, 1.0, 0, student_agrees)
    p_bad, v_bad = review_value(agreed, 1.0, 0, student_disagrees)
    assert p_ok < 0.05 and v_ok < 0.05
    assert p_bad > 0.5 and v_bad > 0.5 and v_bad > 10 * v_ok
    # the same agreed label counts less in training when its quality is low: a human label moves it more
    assert review_value(agreed, 0.3, 0, student_agrees)[1] > v_ok
    # passes that disagreed and left no label: a human answer adds a training item, worth more where the student
    # is unsure than where it already gets the item right
    p_und, v_sure = review_value(np.array([0.5, 0.5, 0, 0]), 1.0, None, student_agrees)
    _, v_unsure = review_value(np.array([0.5, 0.5, 0, 0]), 1.0, None, np.array([0.45, 0.45, 0.05, 0.05]))
    assert p_und == 1.0 and v_unsure > 0.4 > 0.1 > v_sure
    # without a student the teacher's votes alone decide (mixed with the uniform prior)
    assert review_value(np.array([0.5, 0.5, 0, 0]), 0.5, 0, None)[0] == pytest.approx(1 - ((1 - TEACHER_SMOOTH) * 0.5 + TEACHER_SMOOTH / 4))


@pytest.fixture
def noisy_ws(synth_ws, synth_task):
    """synth with splits and 200 train items labelled by a noisy simulated teacher (2 weakly correlated passes)."""
    ws = synth_ws
    with ws.store() as s:
        make_splits(s, "synth", SplitSpec(val=40, calib=40, stream=20, seed=0))
        ids = [it.id for it in s.items("synth", split="train")][:200]
    cfg = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0, accuracy=0.65, pass_correlation=0.2)
    with run_simulated_teacher(ws, "synth", cfg) as url:
        t = teacher_from_spec(f"{url}|{model_id('synth')}", synth_task, api_key_env="")
        label_items(ws, "synth", ids, t, LabelConfig(passes=2), progress=False)
    return ws


def test_queue_is_ordered_by_value_and_holds_low_confidence_deferrals(noisy_ws):
    ws = noisy_ws
    q = review_queue(ws, "synth", use_student=False)
    assert q and [c.value for c in q] == sorted((c.value for c in q), reverse=True)
    assert {c.reason for c in q} == {"disagreement"}
    with ws.store() as s:
        gold = {it.id: it.gold_label for it in s.items("synth")}
        # a stream item the cascade deferred to the teacher, whose label the teacher was unsure about
        row = s.query("SELECT l.item_id, l.quality FROM labels l JOIN items i ON i.id=l.item_id "
                      "WHERE l.source='teacher' AND l.status='agreed' AND l.item_id NOT IN (SELECT item_id FROM review_queue) "
                      "ORDER BY l.quality LIMIT 1")[0]
        s.execute("INSERT INTO cascade_log(ts, dataset, item_id, source, label) VALUES(?,?,?,?,?)",
                  (time.time(), "synth", row["item_id"], "teacher", "ring"))
    q2 = review_queue(ws, "synth", use_student=False, low_confidence_below=row["quality"] + 1e-6)
    assert [c.item_id for c in q2 if c.reason == "low_confidence"] == [row["item_id"]]
    assert review_queue(ws, "synth", use_student=False, low_confidence_below=row["quality"] - 1e-6) == q
    # the top of the queue holds more wrong labels than the queue as a whole (the order finds errors)
    wrong = [c.teacher_label != gold[c.item_id] for c in q]
    top = wrong[: max(5, len(q) // 4)]
    assert np.mean(top) >= np.mean(wrong)


@pytest.mark.slow  # three small trainings
def test_effect_of_human_labels_is_measured_and_shown_in_the_report(noisy_ws, tmp_path):
    from llm_flywheel.interfaces.report import render_report, build_summary
    from llm_flywheel.interfaces.report.review_section import human_review_summary, review_html
    from llm_flywheel.pipeline.training import train_student

    ws = noisy_ws
    train_student(ws, "synth", kind="image-cnn", epochs=2, progress=False)
    q = review_queue(ws, "synth")
    assert q[0].student_probs is not None
    with pytest.raises(ValueError, match="no human labels"):
        measure_human_label_effect(ws, "synth", kind="image-cnn", epochs=1)
    assert "No human labels yet" in review_html({"dataset": "synth", "human_review": human_review_summary(ws, "synth")})
    # a person corrects the 30 most valuable items (CSV path) with the gold labels
    with ws.store() as s:
        gold = {it.id: it.gold_label for it in s.items("synth")}
    csv = tmp_path / "r.csv"
    csv.write_text("item_id,label_final\n" + "".join(f"{c.item_id},{gold[c.item_id]}\n" for c in q[:30]))
    runner = CliRunner()
    res = runner.invoke(main, ["-w", str(ws.root), "review", "import", str(csv)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["-w", str(ws.root), "review", "effect", "synth", "--kind", "image-cnn", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    with ws.store() as s:
        eff = s.latest_report("human_review_effect", "synth")
        teacher = s.teacher_labels([c.item_id for c in q[:30]])
    assert eff["n_human"] == 30
    assert eff["changed_from_teacher"] == sum(1 for c in q[:30] if teacher[c.item_id] != gold[c.item_id]) > 0
    assert eff["n_labels_with"] - eff["n_labels_without"] == eff["new_items"]
    assert 0 <= eff["accuracy_with"] <= 1 and 0 <= eff["accuracy_without"] <= 1
    assert eff["difference"] == pytest.approx(eff["accuracy_with"] - eff["accuracy_without"])
    # the report shows the count and both accuracies, from summary.json's human_review
    summary = {"dataset": "synth", "rounds": [], "human_review": human_review_summary(ws, "synth")}
    page = render_report(summary, tmp_path / "rep")
    text = page.read_text()
    hr = json.loads((tmp_path / "rep" / "summary.json").read_text())["human_review"]
    assert hr["n_human"] == 30 and hr["effect"]["accuracy_with"] == eff["accuracy_with"]
    assert "Human review" in text and "30 human label(s)" in text
    assert f"{100 * eff['accuracy_with']:.1f} %" in text and f"{100 * eff['accuracy_without']:.1f} %" in text
    with pytest.raises(Exception):
        build_summary(ws, "synth")  # no wheel run: the report proper still needs one
