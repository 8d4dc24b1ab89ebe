"""The pure measurement core on plain arrays: one ECE, NLL, intervals, the sign test, the cascade curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_flywheel.core.calibration import DEFER_ALL, cascade_curve
from llm_flywheel.core.stats import (
    ECE_BINS,
    accuracy_ci,
    ece,
    nll,
    paired_diff_ci,
    reliability,
    top_label_reliability,
)
from llm_flywheel.core.thresholds import (
    PARITY_STARTS,
    parity_threshold,
    sign_test_p_value,
)


def test_one_ece_definition_everywhere():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 4, 300)
    e, table = top_label_reliability(probs, y)
    assert e == ece(probs, y) == reliability(probs.max(1), probs.argmax(1) == y, ECE_BINS)[0]
    assert sum(b["n"] for b in table) == 300 and len(table) <= ECE_BINS
    assert ece(np.zeros((0, 3)), np.zeros(0, int)) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        ece(np.array([[np.nan, 1.0]]), np.array([0]))


def test_nll_and_intervals_by_hand():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert nll(probs, np.array([0, 1])) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    acc, lo, hi = accuracy_ci([True] * 8 + [False] * 2)
    assert acc == 0.8 and lo < 0.8 < hi
    d, lo, hi = paired_diff_ci(np.array([1, 1, 0, 1] * 25), np.array([1, 0, 0, 1] * 25))
    assert d == pytest.approx(0.25) and 0 < lo < d < hi


def test_sign_test_known_values():
    assert float(sign_test_p_value(10, 0)) == pytest.approx(0.5 ** 10)  # ten wins, no loss
    assert float(sign_test_p_value(0, 0)) == 1.0  # no discordant pair: no evidence
    assert float(sign_test_p_value(5, 5)) == pytest.approx(0.623046875)  # P(Binom(10, .5) >= 5)
    assert np.allclose(sign_test_p_value(np.array([3, 7]), np.array([0, 3])), [0.125, 0.171875])


def test_parity_threshold_stops_where_the_student_turns_worse():
    # 600 items by falling confidence: the student alone is right on every 5th of the first 400 (the teacher errs),
    # then alone wrong on every 2nd of the last 200 -- the cumulative gap turns negative within the last 200
    n = 600
    conf = np.linspace(1.0, 0.4, n)
    s = np.ones(n, bool)
    t = np.ones(n, bool)
    t[:400:5] = False
    s[400::2] = False
    thr, p, note = parity_threshold(conf, s, t, 0.1)
    assert thr is not None and conf[399] >= thr > conf[-1] and p <= 0.1 / len(PARITY_STARTS)
    wins = np.sum((conf >= thr) & s & ~t)
    losses = np.sum((conf >= thr) & ~s & t)
    assert wins > losses and "sign tests" in note
    with pytest.raises(ValueError, match="same length"):
        parity_threshold(conf, s, t[:-1], 0.1)


def test_cascade_curve_json_ready():
    curve = cascade_curve(np.array([0.9, 0.8]), np.array([True, False]), None, teacher_cost_per_item=0.01,
                          student_cost_per_item=0.0)
    d = curve.to_dict()
    assert d["threshold"][-1] == DEFER_ALL and d["accepted_accuracy"][-1] is None  # nothing accepted: NaN -> None
    assert d["teacher_assumed_correct"] is True and d["cascade_accuracy"][-1] == 1.0
