"""Recall per class on gold test (``core.stats.class_recall``, ``wheel_finish.per_class``): the wheel's report shows
it and warns about a class the served cascade clearly misses -- what overall accuracy hides on a rare class."""

from __future__ import annotations

import numpy as np
import pytest

from llm_flywheel.core.stats import class_recall
from llm_flywheel.interfaces.report.html import render_html
from llm_flywheel.pipeline.wheel_finish import missed_classes, per_class


def test_class_recall_counts_and_intervals():
    gold = np.array([0, 0, 0, 0, 1, 1, 2])
    correct = np.array([1, 1, 1, 0, 0, 0, 1], bool)
    got = class_recall(gold, correct, 4)
    assert [(r["n"], r["found"]) for r in got] == [(4, 3), (2, 0), (1, 1), (0, 0)]
    assert got[0]["recall"] == 0.75 and got[1]["lo"] == 0.0 and got[2]["hi"] == 1.0 and np.isnan(got[3]["recall"])
    assert 0 < got[0]["lo"] < 0.75 < got[0]["hi"] < 1


def _final(n_common: int, found_common: int, n_rare: int, found_rare: int, cascade: bool = True) -> dict:
    gold = np.array([0] * n_common + [1] * n_rare)
    correct = np.array([True] * found_common + [False] * (n_common - found_common)
                       + [True] * found_rare + [False] * (n_rare - found_rare))
    return {"per_class": per_class(["ticket", "outage"], gold, correct, correct if cascade else None)}


def test_a_rare_class_the_cascade_clearly_misses_is_a_warning_naming_the_teacher():
    w = missed_classes(_final(980, 960, 20, 8), {"outage": 0.55})
    assert [x["code"] for x in w] == ["class_missed_outage"]
    assert "class 'outage' (20 of 1,000 gold test items): the cascade finds 8 (40 %, 95 % CI 22-61)" in w[0]["message"]
    assert "the teacher itself is right on 55 % of it" in w[0]["message"] and "--rounds" in w[0]["fix"]


@pytest.mark.parametrize("found_rare", [6, 7])
def test_a_few_items_are_not_evidence_of_a_missed_class(found_rare):
    """6 or 7 of 7 found: the interval reaches the overall accuracy, so nothing is claimed."""
    assert missed_classes(_final(393, 385, 7, found_rare), {}) == []


def test_without_the_cascade_s_answers_the_student_is_judged():
    w = missed_classes(_final(980, 960, 20, 8, cascade=False), {})
    assert "the student finds 8" in w[0]["message"]


def test_the_report_shows_recall_per_class():
    page = render_html({"dataset": "t", "final": _final(980, 960, 20, 8), "rounds": []}, {})
    assert "cascade recall [95 % CI]" in page and "<td>outage</td><td>20</td><td>40.0 % [21.9, 61.3]</td>" in page
