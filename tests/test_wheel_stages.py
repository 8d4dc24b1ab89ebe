"""The wheel's stages and round bookkeeping, one at a time: sizing, the typed round report and its stored form,
the teacher ledger, spend-to-parity, promotion, test metrics, the cascade curve and the final warnings.

Fast: real SQLite where the stage reads the store, plain numbers elsewhere; the whole wheel is tests/test_wheel.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from llm_flywheel.core.cost import CostInputs, ParityPoint, Spend, compare, spend_to_parity
from llm_flywheel.pipeline.cost import spend_of
from llm_flywheel.pipeline.wheel_config import WheelConfig, WheelStopped, plan_sizes
from llm_flywheel.pipeline.wheel_finish import cascade_curve, final_warnings, parity_points
from llm_flywheel.pipeline.wheel_measure import gold_metrics
from llm_flywheel.pipeline.wheel_results import CalibResult, LabelResult, PromotionResult, RoundReport, TrainResult
from llm_flywheel.pipeline.wheel_stages import WheelContext, should_promote, train_stage


def _answers(store, dataset, n, usd):
    first = len(store.items(dataset))
    store.add_items([{"dataset": dataset, "source_ref": f"{dataset}{k}", "content_hash": f"{dataset}h{k}",
                      "modality": "text", "text": "x"} for k in range(first, first + n)])
    for it in store.items(dataset)[-n:]:
        store.execute("INSERT INTO teacher_answers(item_id, content_hash, model, prompt_version, pass_index, ok, cost_usd, "
                      "created_at) VALUES(?,?,?,?,?,?,?,0)", (it.id, it.content_hash, "m", "p", 0, 1, usd))


def test_plan_sizes_fills_the_rule_and_warns_where_sizes_do_not_fit():
    n = {"train": 1000, "val": 50, "calib": 100, "test": 200, "stream": 150}
    s = plan_sizes(WheelConfig(rounds=3, stream_per_round=100, calib_labels=400), n, 50, 100)
    assert s.config.seed_labels == 250 and s.config.per_round_budget == 500  # the rule: rounds + 1 shares
    assert s.sizes["auto"] == ["per_round_budget", "seed_labels"] and s.sizes["calib_labels"] == 100
    codes = {w["code"] for w in s.warnings}
    assert codes == {"small_calib", "capped_calib", "stream_short"}, s.warnings
    assert all(w["fix"] for w in s.warnings)
    fix = next(w["fix"] for w in s.warnings if w["code"] == "small_calib")
    assert "--calib 400 --resplit" in fix  # 1,500 items can give 400
    tiny = plan_sizes(WheelConfig(rounds=2), {"train": 180, "val": 30, "calib": 31, "test": 40, "stream": 30}, 30, 31)
    tiny_fix = next(w["fix"] for w in tiny.warnings if w["code"] == "small_calib")
    assert "--calib 0.25" in tiny_fix and "400" not in tiny_fix  # a 311-item dataset cannot give 400
    small = plan_sizes(WheelConfig(rounds=2), {"train": 66, "val": 12, "calib": 18, "test": 30, "stream": 24}, 12, 18)
    small_fix = next(w["fix"] for w in small.warnings if w["code"] == "small_calib")
    assert "--calib 38 " in small_fix  # a quarter of 120 items (30) still defers nothing at 10 %; 38 is the least
    small_msg = next(w["message"] for w in small.warnings if w["code"] == "small_calib")
    big_msg = next(w["message"] for w in s.warnings if w["code"] == "small_calib")  # 100 calib items can defer
    assert "will not ask the teacher" in small_msg and "met conservatively" in big_msg
    ok = plan_sizes(WheelConfig(rounds=2), {"train": 5000, "val": 500, "calib": 1000, "test": 500, "stream": 2000},
                    500, 1000)
    assert ok.warnings == [] and ok.config.stream_per_round == 1000


def test_round_report_is_stored_flat_and_resumes_from_its_finished_stages():
    rep = RoundReport(round=2, label=LabelResult(selected=3, selected_ids=[4, 5, 6]),
                      train=TrainResult(trained_version="v2", student_kind="image-cnn", labels_total=30),
                      calib=CalibResult(threshold=0.7, temperature=1.3, calib_feasible=True),
                      promotion=PromotionResult(val_accuracy_new=0.9, promoted=True, model_version="v2"))
    rep.add_spend("label", Spend(6, 0.0012))
    rep.add_spend("serve", Spend(2, 0.0004))
    rep.add_spend("eval", Spend(50, 0.01))  # measuring on test: never the wheel's spend
    rep.add_spend("label", Spend(1, 0.0002))
    m = rep.to_metrics()
    assert m["teacher_calls"] == 9 and m["teacher_cost_usd"] == pytest.approx(0.0018)
    assert m["eval_teacher_calls"] == 50 and m["spend"]["label"] == {"calls": 7, "usd": pytest.approx(0.0014)}
    assert m["model_version"] == "v2" and m["threshold"] == 0.7 and m["selected_ids"] == [4, 5, 6] and m["labelled"]
    back = RoundReport.from_metrics(m)
    assert back.label == rep.label and back.train == rep.train and back.calib == rep.calib
    assert back.promotion is None and back.evaluation is None  # these always re-run (cheap: answers are cached)
    assert back.teacher_spend == Spend(9, pytest.approx(0.0018))
    # stopped after selection, before labelling finished: the resume labels the same items
    pending = RoundReport.from_metrics({"round": 3, "selected_ids": [7, 8], "selected": 2, "teacher_calls": 1,
                                        "teacher_cost_usd": 0.1})
    assert pending.label is None and pending.pending_selection == [7, 8]
    assert pending.spend["label"] == Spend(1, 0.1)  # a round stored before per-stage spend existed


def test_spend_of_attributes_what_a_block_paid_even_when_it_raises(ws):
    with ws.store() as s:
        s.put_dataset("d", "{}")
        s.put_dataset("other", "{}")
        _answers(s, "d", 2, 0.001)
    with spend_of(ws, "d") as paid:
        with ws.store() as s:
            _answers(s, "d", 3, 0.002)
            _answers(s, "other", 4, 0.5)  # another dataset's calls are not this stage's
    assert paid == Spend(3, pytest.approx(0.006))
    with pytest.raises(RuntimeError):
        with spend_of(ws, "d") as stopped:
            with ws.store() as s:
                _answers(s, "d", 1, 0.004)
            raise RuntimeError("teacher died")
    assert stopped == Spend(1, pytest.approx(0.004))


def test_spend_to_parity_is_the_first_round_at_the_teachers_accuracy():
    pts = [ParityPoint(1, 1.0, 5000, 0.80, [0.78, 0.82]), ParityPoint(2, 1.5, 7000, 0.86, [0.84, 0.88]),
           ParityPoint(3, 2.0, 9000, 0.90, [0.88, 0.92])]
    p = spend_to_parity(pts, 0.858, [0.84, 0.87])
    assert (p["round"], p["spend_usd"], p["calls"], p["cascade_accuracy"]) == (2, 1.5, 7000, 0.86)
    assert p["significant_round"] == 3  # round 3's lower bound 0.88 >= 0.858; round 2's 0.84 is not
    never = spend_to_parity(pts[:1], 0.858)
    assert never["round"] is None and never["note"].startswith("not reached")
    assert spend_to_parity(pts, None)["note"].startswith("n/a")
    unmeasured = spend_to_parity([ParityPoint(1, 1.0, 10, None)], 0.8)
    assert unmeasured["round"] is None and "never measured" in unmeasured["note"]


def test_parity_points_count_earlier_rounds_whole_and_this_rounds_labelling_only():
    rounds = [{"round": 1, "teacher_calls": 110, "teacher_cost_usd": 1.1, "cascade_accuracy": 0.8,
               "spend": {"label": {"calls": 100, "usd": 1.0}, "serve": {"calls": 10, "usd": 0.1}}},
              {"round": 2, "teacher_calls": 60, "teacher_cost_usd": 0.6, "cascade_accuracy": 0.9,
               "spend": {"label": {"calls": 50, "usd": 0.5}, "audit": {"calls": 10, "usd": 0.1},
                         "eval": {"calls": 999, "usd": 9.0}}}]
    p1, p2 = parity_points(rounds)
    assert (p1.calls, p1.spend_usd) == (100, pytest.approx(1.0))  # round 1's own stream comes after its test
    assert (p2.calls, p2.spend_usd) == (160, pytest.approx(1.6))  # eval calls never count


def test_promotion_needs_validation_agreement_no_worse_and_a_tie_goes_to_the_newer_version():
    assert should_promote(0.8, None, has_current=False)
    assert should_promote(0.8, None, has_current=True)  # the serving model cannot be measured
    assert should_promote(0.81, 0.80, has_current=True)
    assert should_promote(0.80, 0.80, has_current=True)  # trained on more labels, measured the same
    assert not should_promote(0.79, 0.80, has_current=True)
    assert not should_promote(None, 0.5, has_current=True)


def test_gold_metrics_split_deferred_and_accepted():
    gold = ["a", "b", "a", "b"]
    res = gold_metrics(student_pred=["a", "a", "a", "a"], cascade_pred=["a", "b", "a", "a"],
                       deferred=[False, True, False, False], gold=gold)
    assert res.student_accuracy == 0.5 and res.cascade_accuracy == 0.75 and res.test_teacher_fraction == 0.25
    assert res.test_accuracy_deferred_teacher == 1.0 and res.test_accuracy_deferred_student == 0.0
    assert res.test_accuracy_accepted == pytest.approx(2 / 3)
    lo, hi = res.cascade_accuracy_ci
    assert lo < 0.75 < hi
    assert "teacher_ok" not in res.to_metrics()


def test_cascade_curve_is_exact_where_the_teacher_answered_and_estimated_elsewhere():
    conf = np.array([0.9, 0.8, 0.6, 0.4])
    correct = np.array([True, True, False, False])
    ids = np.array([1, 2, 3, 4])
    curve = cascade_curve(conf, correct, ids, {3: True, 4: False}, teacher_accuracy=0.5)
    for acc, est, tf in zip(curve["cascade_accuracy"], curve["cascade_accuracy_est"], curve["teacher_fraction"]):
        if not np.isnan(acc):
            assert est == pytest.approx(acc)
        assert 0.0 <= tf <= 0.5
    assert curve["cascade_accuracy"][0] == pytest.approx(0.5)  # threshold at the lowest: the student answers all
    unknown = cascade_curve(conf, correct, ids, {}, teacher_accuracy=0.5)
    assert np.isnan(unknown["cascade_accuracy"][-1]) and not np.isnan(unknown["cascade_accuracy_est"][-1])


def test_final_warnings_name_a_fix_for_a_cascade_below_its_teacher():
    last = {"round": 3, "cascade_accuracy": 0.80, "student_accuracy": 0.85, "teacher_fraction": 0.2}
    run = [{"code": "small_calib", "message": "m", "fix": "f"}]
    out = final_warnings(WheelConfig(max_teacher_fraction=0.1), run, last,
                         {"teacher_quality": {"accuracy": 0.86}, "cost_na": {}})
    assert [w["code"] for w in out] == ["small_calib", "cascade_below_teacher", "cascade_below_student",
                                        "budget_overshoot"]
    assert all(w["fix"] for w in out)


def test_a_cost_figure_left_out_names_what_would_measure_it():
    """None of 12 stream items deferred: the ratio is only a bound, and the fix is more stream, not a price."""
    none_deferred = compare(CostInputs(teacher_cost_per_call=0.001, teacher_fraction=0.0, student_items_per_s=500.0,
                                       labelling_spend_usd=0.05, fraction_items=12))
    free = compare(CostInputs(teacher_cost_per_call=0.0, teacher_fraction=0.1, student_items_per_s=500.0,
                              labelling_spend_usd=0.05))
    last = {"round": 2, "cascade_accuracy": 0.9, "student_accuracy": 0.9, "teacher_fraction": 0.0}
    extra = {"cost_na": {**none_deferred["not_available"], "cost": free["not_available"]["cost_ratio"]},
             "cost_na_codes": {**none_deferred["not_available_codes"], "cost": free["not_available_codes"]["cost_ratio"]}}
    out = {w["code"]: w["fix"] for w in final_warnings(WheelConfig(max_teacher_fraction=0.1), [], last, extra)}
    assert "--stream-per-round" in out["cost_na_cost_ratio"]
    assert "--teacher-usd-per-hour" in out["cost_na_cost"]


def test_train_stage_without_labels_stops_with_the_fix(ws, synth_task):
    ctx = WheelContext(ws=ws, dataset="synth", cfg=WheelConfig(), teacher=None, task=synth_task,
                       con=Console(quiet=True))
    with pytest.raises(WheelStopped, match="flywheel label synth") as e:
        train_stage(ctx, 1, {}, {"http_401": 3})
    assert e.value.kind == "no_labels" and "http_401 3" in str(e.value)


def test_a_resumed_run_may_change_rounds_and_the_gold_ceiling_but_not_what_a_round_does():
    from llm_flywheel.pipeline.wheel_config import without_unbinding

    base = WheelConfig(rounds=3, gold_ceiling=True)
    assert base.resume_key() == WheelConfig(rounds=2, gold_ceiling=False, batch_poll_s=1.0).resume_key()
    assert base.resume_key() != WheelConfig(rounds=3, calib_labels=500).resume_key()
    stored_by_an_older_version = {**base.resume_key(), "gold_ceiling": True}
    assert without_unbinding(stored_by_an_older_version) == base.resume_key()
    before_self_training = {k: v for k, v in base.resume_key().items() if k != "unlabelled"}
    assert without_unbinding(before_self_training) == base.resume_key()  # a setting added later: its default
    assert without_unbinding(before_self_training) != WheelConfig(rounds=3, unlabelled=2).resume_key()


def test_student_hints_come_from_the_promoted_model_on_the_items_and_the_calib_split(tmp_path, synth_task):
    """Round 1 has no promoted model: no hints.  Later, the promoted student's calibrated answer on the run's items
    and on the calib split (the evidence it never trained on) -- nothing else."""
    from test_cascade import trained_calibrated_ws

    from llm_flywheel.pipeline.wheel_stages import student_hints

    ws, version = trained_calibrated_ws(tmp_path / "ws", epochs=1)
    with ws.store() as s:
        calib = [it.id for it in s.items("synth", split="calib")]
        train = [it.id for it in s.items("synth", split="train", limit=5)]
        hashes = {it.id: it.content_hash for it in s.items("synth", ids=calib + train)}
    ctx = WheelContext(ws=ws, dataset="synth", cfg=WheelConfig(), teacher=None, task=synth_task,
                       con=Console(quiet=True), calib_ids=calib)
    assert student_hints(ctx, train) is None  # nothing promoted yet: round 1
    with ws.store() as s:
        s.promote("synth", version)
    hints = student_hints(ctx, train)
    assert set(hints) == set(hashes.values())
    assert all(lab in synth_task.labels and 0 < conf <= 1 for lab, conf in hints.values())
