"""Label normalisation and answer parsing (pure functions)."""

from __future__ import annotations

import pytest

from llm_flywheel.core.task import builtin_task
from llm_flywheel.teachers.parsing import LabelMatcher, label_logprob, parse_answer, parse_confidence

FRUIT = LabelMatcher(("apple", "mushroom", "orange", "pear", "sweet_pepper"))


@pytest.mark.parametrize("text,label", [
    ("apple", "apple"), ("Apples", "apple"), ("  PEAR ", "pear"), ("Sweet Peppers", "sweet_pepper"),
    ("sweet-pepper", "sweet_pepper"), ("sweetpepper", "sweet_pepper"), ("Mushrooms.", "mushroom"),
    ("banana", None), ("", None), ("pepper", None),
])
def test_label_variants(text, label):
    assert FRUIT.match(text) == label


def test_fashion_variants_use_descriptions_and_prefixes():
    t = builtin_task("fashion-mnist")
    m = LabelMatcher(t.labels, t.descriptions)
    assert m.match("T-shirt") == "t_shirt_top"
    assert m.match("t-shirt/top") == "t_shirt_top"
    assert m.match("Shirt") == "shirt"
    assert m.match("Ankle boots") == "ankle_boot"
    assert m.match("Trousers") == "trouser"
    assert m.match("Sneakers") == "sneaker"
    assert m.match("hat") is None


@pytest.mark.parametrize("v,out", [(0.9, 0.9), ("0.9", 0.9), ("90%", 0.9), (90, 0.9), ("high", 0.85),
                                   (None, None), ("nope", None), (-1, None), (float("nan"), None), (1000, None)])
def test_confidence(v, out):
    got = parse_confidence(v)
    assert (got is None and out is None) or got == pytest.approx(out)


def test_parse_variants():
    assert parse_answer('```json\n{"label":"pear","confidence":0.8}\n```', FRUIT).label == "pear"
    a = parse_answer('The answer is {"Label": "Oranges", "why": "round"} ok', FRUIT)
    assert a.label == "orange" and a.reason == "round" and a.confidence is None
    assert parse_answer("Label: Apple", FRUIT).label == "apple"
    off = parse_answer('{"label": "kiwi", "confidence": 0.5}', FRUIT)
    assert off.label is None and off.error_kind == "off_list" and off.raw_label == "kiwi"
    assert parse_answer('{"confidence": 0.5}', FRUIT).error_kind == "parse"
    assert parse_answer("", FRUIT).error_kind == "parse"
    assert parse_answer("It might be an apple or a pear, hard to say really.", FRUIT).error_kind == "parse"


def test_label_logprob_missing_or_malformed():
    assert label_logprob(None, "pear") is None
    assert label_logprob([{"token": "x", "logprob": "bad"}], "pear") is None
    assert label_logprob([{"token": '{"label": "', "logprob": -0.1}, {"token": "pear", "logprob": -0.4}], "pear") == pytest.approx(-0.4)
