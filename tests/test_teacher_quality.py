"""Teacher quality vs gold: accuracy with CI, confusion, ECE -- on answers labelled over HTTP by the simulator."""

from __future__ import annotations

import pytest

from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.pipeline.quality import expected_calibration_error, teacher_quality, teacher_quality_on_items, wilson_ci
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher


def test_ece_and_wilson_by_hand():
    ece, bins = expected_calibration_error([0.9, 0.9, 0.9, 0.9, 0.55, 0.55], [True, True, False, False, True, False])
    # bin 0.9: conf .9 acc .5 (4/6 weight); bin 0.5: conf .55 acc .5 (2/6)
    assert ece == pytest.approx(4 / 6 * 0.4 + 2 / 6 * 0.05)
    assert [b["n"] for b in bins] == [2, 4]
    lo, hi = wilson_ci(85, 100)
    assert lo == pytest.approx(0.767, abs=0.002) and hi == pytest.approx(0.907, abs=0.002)


def test_quality_of_simulated_teacher(synth_ws, synth_task):
    from llm_flywheel.pipeline.splits import make_splits
    s = synth_ws.store()
    make_splits(s, "synth")
    ids = [it.id for it in s.items("synth")]
    s.close()
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, malformed_rate=0, rate_429=0, accuracy=0.8)) as url:
        label_items(synth_ws, "synth", ids, teacher_from_spec(f"{url}|{model_id('synth')}", synth_task),
                    LabelConfig(passes=2, adaptive_passes=False), progress=False)  # every item asked twice
    q = teacher_quality(synth_ws, "synth")
    assert q["model"] == "simulated/synth-teacher" and q["simulated"] and "SIMULATED" in q["note"]
    assert q["passes_in_headline"] == [0, 1] and q["n"] == 1000
    lo, hi = q["ci95"]
    assert lo < q["accuracy"] < hi and 0.72 < q["accuracy"] < 0.88
    assert sum(sum(row.values()) for row in q["confusion"].values()) == q["n"]
    assert q["per_pass"]["2"]["accuracy"] < q["accuracy"]  # tie-breaks are the hard items, kept out of the headline
    assert q["ece"] > 0.05 and q["mean_confidence"] > q["accuracy"]  # the simulator is over-confident
    assert q["logprob_answers"] == 1000 and q["ece_logprob"] is not None  # it returns logprobs too
    assert q["consensus"]["accuracy"] > q["accuracy"]  # two agreeing passes beat one
    s = synth_ws.store()
    assert s.latest_report("teacher_quality", "synth:simulated/synth-teacher")["n"] == 1000
    s.close()
    assert teacher_quality(synth_ws, "synth", split="test", store_report=False)["n"] == 200
    # the wheel's compact form on chosen items agrees with the full measurement's single-call pass
    with synth_ws.store() as s:
        val = [it.id for it in s.items("synth", split="val")]
    on = teacher_quality_on_items(synth_ws, "synth", val, "simulated/synth-teacher", synth_task.labels)
    full = teacher_quality(synth_ws, "synth", split="val", store_report=False)
    assert on["n"] == len(val) == full["per_pass"]["0"]["n"]
    assert on["accuracy"] == pytest.approx(full["per_pass"]["0"]["accuracy"])
    assert on["accuracy_ci"] == pytest.approx(list(full["per_pass"]["0"]["ci95"]))
    assert sum(map(sum, on["confusion"])) + on["off_list_or_none"] == on["n"]
    assert on["consensus_accuracy"] == pytest.approx(full["consensus"]["accuracy"]) and on["passes"] == 3
    assert teacher_quality_on_items(synth_ws, "synth", [], "simulated/synth-teacher", synth_task.labels) == {}


def test_a_teacher_that_states_no_confidence_is_measured_by_its_label_probability(synth_ws, synth_task):
    """llama.cpp with logprobs on is asked for no confidence: the ECE of a stated confidence is then not a number
    (it printed "ECE nan"), and the label probability's ECE is what there is to show."""
    import math
    import re

    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main
    from llm_flywheel.teachers.base import TeacherAnswer

    with synth_ws.store() as s:
        items = s.items("synth", limit=40)
        for i, it in enumerate(items):
            right = i % 4 != 0  # 75 % right, each said with probability 0.9
            label = it.gold_label if right else next(lab for lab in synth_task.labels if lab != it.gold_label)
            s.add_teacher_answer(TeacherAnswer(it.id, it.content_hash, "local-llama", "p1", 0, True, label=label,
                                               label_logprob=math.log(0.9)))
    q = teacher_quality(synth_ws, "synth", store_report=False)
    assert q["n"] == 40 and q["ece"] is None and q["mean_confidence"] is None
    assert q["logprob_answers"] == 40 and q["ece_logprob"] == pytest.approx(0.15)
    out = CliRunner().invoke(main, ["-w", str(synth_ws.root), "teacher", "quality", "synth"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # rich wraps at the terminal's width
    assert not re.search(r"\bnan\b", text), text
    assert "no stated confidence" in text and "ECE 0.150 (label probability from logprobs, 40 answers)" in text
