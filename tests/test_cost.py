"""Cost model: arithmetic on known inputs, and measurement from a real store."""

from __future__ import annotations

import math

import pytest

from llm_flywheel.pipeline import cost
from llm_flywheel.store.base import Store


def test_teacher_only_and_cascade_per_1k():
    assert cost.cost_per_1k_teacher_only(0.0002) == pytest.approx(0.2)
    # 1 CPU-hour = $0.36 at 100 items/s -> $1e-6 per item -> $0.001 per 1k
    assert cost.student_cost_per_item(100.0, 0.36) == pytest.approx(1e-6)
    c = cost.cost_per_1k_cascade(0.0002, 0.1, 100.0, cpu_usd_per_hour=0.36)
    assert c == pytest.approx(1000 * (0.1 * 0.0002 + 1e-6))
    # all items deferred costs more than teacher-only (the student still ran)
    assert cost.cost_per_1k_cascade(0.0002, 1.0, 100.0, cpu_usd_per_hour=0.36) > cost.cost_per_1k_teacher_only(0.0002)


def test_breakeven():
    assert cost.breakeven_items(10.0, 0.001) == pytest.approx(10_000)
    assert cost.breakeven_items(0.0, 0.001) == 0.0
    assert cost.breakeven_items(5.0, 0.0) is None
    assert cost.breakeven_items(5.0, -1e-4) is None


def test_compare_ratio_and_breakeven_consistent():
    r = cost.compare(cost.CostInputs(teacher_cost_per_call=0.0003, student_items_per_s=2000.0, teacher_fraction=0.05,
                                     labelling_spend_usd=1.5, cpu_usd_per_hour=0.09))
    assert r["cost_ratio"] == pytest.approx(r["cost_per_1k_teacher_only"] / r["cost_per_1k_cascade"])
    assert r["cost_ratio"] > 10
    assert r["breakeven_items"] == pytest.approx(1.5 / r["saving_per_item"])
    # serving breakeven_items items saves exactly the labelling spend
    assert r["breakeven_items"] * r["saving_per_item"] == pytest.approx(1.5)


@pytest.mark.parametrize("bad", [dict(items_per_s=0.0), dict(items_per_s=-3.0), dict(items_per_s=math.inf)])
def test_bad_throughput_rejected(bad):
    with pytest.raises(ValueError, match="throughput"):
        cost.student_cost_per_item(bad["items_per_s"])


def test_bad_fraction_rejected():
    with pytest.raises(ValueError, match="fraction"):
        cost.cost_per_1k_cascade(0.001, 1.5, 100.0)


def test_teacher_cost_stats_from_store(tmp_path):
    s = Store(tmp_path / "f.db")
    s.put_dataset("d", "{}")
    s.add_items([{"dataset": "d", "source_ref": f"r{i}", "content_hash": f"h{i}", "modality": "text", "text": "x"} for i in range(3)])
    ids = [it.id for it in s.items("d")]
    rows = [(ids[0], 1, 0.0002), (ids[1], 1, 0.0004), (ids[2], 0, None)]
    for k, (iid, ok, c) in enumerate(rows):
        s.execute(
            "INSERT INTO teacher_answers(item_id, content_hash, model, prompt_version, pass_index, ok, cost_usd, tokens_in, created_at) "
            "VALUES(?,?,?,?,?,?,?,?,0)", (iid, f"h{k}", "m", "p", 0, ok, c, 300))
    st = cost.teacher_cost_stats(s, "d")
    assert st["calls"] == 3 and st["ok_calls"] == 2 and st["priced"]
    assert st["mean_cost_per_call"] == pytest.approx(0.0003)
    assert cost.teacher_totals(s, "d") == (3, pytest.approx(0.0006))
    assert cost.teacher_totals(s, "other") == (0, 0.0)


class _CountingStudent:
    labels = ("a", "b")

    def __init__(self):
        self.seen = 0

    def predict_proba(self, items):
        import numpy as np
        self.seen += len(items)
        return np.full((len(items), 2), 0.5)


def test_measure_throughput_runs_all_items():
    st = _CountingStudent()
    r = cost.measure_student_throughput(st, list(range(10)), batch_size=4, min_items=20)
    assert r["items"] == 20 and r["items_per_s"] > 0
    assert st.seen == 4 + 20  # warm-up batch + the timed pass
    with pytest.raises(ValueError):
        cost.measure_student_throughput(st, [])


def test_free_teacher_is_priced_by_latency_or_shown_as_not_available():
    """A local server reports no token cost: its calls cost latency x machine price; unknown cost is 'n/a', never 0.0x."""
    local = {"priced": False, "mean_cost_per_call": 0.0, "ok_calls": 160, "mean_latency_s": 8.5}
    price, note = cost.teacher_price(local, 0.36)
    assert price == pytest.approx(8.5 * 0.36 / 3600) and "latency" in note and "0.36" in note
    paid = {"priced": True, "mean_cost_per_call": 0.0002, "ok_calls": 10, "mean_latency_s": 1.0}
    assert cost.teacher_price(paid, 0.36)[0] == pytest.approx(0.0002)
    assert cost.teacher_price({"priced": False, "mean_latency_s": None}, 0.36)[0] is None
    r = cost.compare(cost.CostInputs(teacher_cost_per_call=price, student_items_per_s=500.0, teacher_fraction=0.1,
                                     labelling_spend_usd=160 * price, cpu_usd_per_hour=0.36))
    assert r["cost_ratio"] > 1 and r["breakeven_items"] > 0 and not r["not_available"]
    free = cost.compare(cost.CostInputs(teacher_cost_per_call=0.0, student_items_per_s=500.0, teacher_fraction=0.1,
                                        labelling_spend_usd=0.0, cpu_usd_per_hour=0.36))
    assert free["breakeven_items"] is None and free["not_available"]["breakeven_items"].startswith("n/a")
    assert free["not_available"]["cost_ratio"].startswith("n/a")
    never = cost.compare(cost.CostInputs(teacher_cost_per_call=0.0002, student_items_per_s=500.0, teacher_fraction=1.0,
                                         labelling_spend_usd=1.0, cpu_usd_per_hour=0.36))
    assert never["breakeven_items"] is None and never["not_available"]["breakeven_items"].startswith("never")


def test_calibration_curve_prices_a_local_teacher_by_latency(tmp_path):
    """Answers with cost 0 (a local server): the cascade curve's teacher cost is latency x machine price, not $0."""
    from llm_flywheel.pipeline.calibration import teacher_cost_per_item
    from llm_flywheel.core.task import Task

    s = Store(tmp_path / "f.db")
    task = Task(name="d", modality="text", labels=("a", "b"))
    s.put_dataset("d", task.to_json())
    s.add_items([{"dataset": "d", "source_ref": f"r{i}", "content_hash": f"h{i}", "modality": "text", "text": "x"} for i in range(2)])
    for k, it in enumerate(s.items("d")):
        s.execute(
            "INSERT INTO teacher_answers(item_id, content_hash, model, prompt_version, pass_index, ok, cost_usd, latency_s, "
            "created_at) VALUES(?,?,?,?,?,?,?,?,0)", (it.id, f"h{k}", "local", "p", 0, 1, 0.0, 6.0 + 4.0 * k))
    c, note = teacher_cost_per_item(s, "d", task, 0.72)
    assert c == pytest.approx(8.0 * 0.72 / 3600) and "latency" in note
    s.close()


def test_nothing_deferred_on_a_small_sample_gives_a_bound_not_a_ratio():
    """0 of 24 stream items deferred: the point ratio would be the teacher's price over the student's CPU alone
    (tens of thousands x); the comparison reports the bound the 24 items support instead."""
    from llm_flywheel.core.cost import CostInputs, compare, fraction_upper_bound

    c = compare(CostInputs(teacher_cost_per_call=0.0002, student_items_per_s=2000.0, teacher_fraction=0.0,
                           labelling_spend_usd=1.0, fraction_items=24))
    assert c["cost_ratio"] is None
    upper = fraction_upper_bound(0, 24)
    assert 0.11 < upper < 0.125  # 1 - 0.05**(1/24)
    cascade_hi = 1000 * (upper * 0.0002) + c["student_cost_per_1k"]
    assert f"at least {0.2 / cascade_hi:.1f}x cheaper" in c["not_available"]["cost_ratio"]
    # the breakeven is the conservative one: at the upper bound, not at the observed 0 %
    assert c["breakeven_items"] == pytest.approx(1.0 / ((0.2 - cascade_hi) / 1000.0))
    # deferring some items keeps the measured ratio
    d = compare(CostInputs(teacher_cost_per_call=0.0002, student_items_per_s=2000.0, teacher_fraction=0.125,
                           labelling_spend_usd=1.0, fraction_items=24))
    assert d["cost_ratio"] is not None and "cost_ratio" not in d["not_available"]


def test_the_ratio_with_audits_paid_and_at_the_fractions_upper_bound():
    """An audited deployment also pays the teacher for audit_rate of what the student answers, and a fraction of 1 in
    2,000 supports far less than its point ratio: both are reported beside the headline."""
    from scipy.stats import binom

    from llm_flywheel.core.cost import CostInputs, compare, fraction_upper_bound

    c = compare(CostInputs(teacher_cost_per_call=0.001, student_items_per_s=1e9, teacher_fraction=0.05,
                           fraction_items=2000, audit_rate=0.03))
    assert c["cost_ratio"] == pytest.approx(20.0, rel=1e-6)
    assert c["cost_ratio_audited"] == pytest.approx(1 / (0.05 + 0.95 * 0.03), rel=1e-6)
    hi = c["teacher_fraction_upper"]
    assert binom.cdf(100, 2000, hi) == pytest.approx(0.05, abs=1e-6)  # exact one-sided: 100 or fewer is 5 % likely
    assert hi == pytest.approx(fraction_upper_bound(100, 2000))
    assert c["cost_ratio_audited_at_upper"] == pytest.approx(1 / (hi + (1 - hi) * 0.03), rel=1e-6)
    one = compare(CostInputs(teacher_cost_per_call=0.001, student_items_per_s=1e9, teacher_fraction=1 / 2000,
                             fraction_items=2000))
    assert one["cost_ratio"] == pytest.approx(2000, rel=1e-6) and one["cost_ratio_audited"] is None
    # what 1 deferral in 2,000 supports: 1 / 0.24 %, about a fifth of the point ratio
    assert one["cost_ratio_audited_at_upper"] == pytest.approx(1 / fraction_upper_bound(1, 2000), rel=1e-6)
    assert one["cost_ratio_audited_at_upper"] < 0.25 * one["cost_ratio"]
    zero = compare(CostInputs(teacher_cost_per_call=0.001, student_items_per_s=1e9, teacher_fraction=0.0,
                              fraction_items=24, audit_rate=0.03))
    bound = fraction_upper_bound(0, 24)  # one definition: the "at least" message and the audited ratio agree
    assert zero["teacher_fraction_upper"] == pytest.approx(bound)
    assert f"({100 * bound:.1f} %)" in zero["not_available"]["cost_ratio"]
    audited = 1 / (bound + (1 - bound) * 0.03)  # the bound's ratio with the audits paid, as for k > 0
    assert f"{audited:.1f}x with the 3 % audit re-asks paid" in zero["not_available"]["cost_ratio"]
