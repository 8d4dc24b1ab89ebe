"""Label normalisation and answer parsing (pure functions)."""

from __future__ import annotations

import math

import pytest

from llm_flywheel.core.task import builtin_task
from llm_flywheel.teachers.parsing import (LabelMatcher, label_logprob, looks_like_json, parse_answer, parse_confidence,
                                          recover_truncated, split_reasoning)

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


def _tok(text, lp, top=None):
    return {"token": text, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in (top or [])]}


def _reply(label_tokens):
    """llama.cpp's tokens of ``{"label": "<label>", ...}`` around the given label tokens."""
    return [_tok('{"', -4.8), _tok("label", -0.1), _tok('":', -0.1), _tok(' "', -0.1), *label_tokens,
            _tok('",', -0.5), _tok(' "confidence": 1}', -0.2)]


def test_label_logprob_is_the_labels_share_among_the_labels():
    # llama.cpp reports logprobs before the grammar: "positive" at -2.47 while the model would rather write "The";
    # among the two labels it is e^-2.47 / (e^-2.47 + e^-2.91) = 0.608
    toks = _reply([_tok("positive", -2.47, [("The", -2.04), ("positive", -2.47), ("negative", -2.91), ("bad", -4.2)])])
    assert label_logprob(toks, "positive") == pytest.approx(-2.47)  # without the labels: as reported
    share = label_logprob(toks, "positive", ("positive", "negative"))
    assert math.exp(share) == pytest.approx(math.exp(-2.47) / (math.exp(-2.47) + math.exp(-2.91)))


def test_label_forced_in_pieces_is_read_at_its_first_token():
    # the grammar forced "negative" as n-ega-t-ive (-47.7 in all); "positive" is not among the alternatives, so it
    # is given the lowest listed probability (it could be just below the list): a lower bound, never more
    top = [("The", -1.96), ("Our", -2.35), ("Your", -2.58), ("A", -3.39), ("Welcome", -3.53)]
    toks = _reply([_tok("n", -6.0, top), _tok("ega", -15.4, [("ice", -0.16)]), _tok("t", -21.5, [("un", -1.5)]),
                   _tok("ive", -4.8, [('",', -2.0)])])
    assert label_logprob(toks, "negative") == pytest.approx(-47.7)
    share = math.exp(label_logprob(toks, "negative", ("positive", "negative")))
    assert share == pytest.approx(math.exp(-6.0) / (math.exp(-6.0) + math.exp(-3.53)))


def test_label_share_follows_a_shared_prefix_token_by_token():
    labels = ("shirt", "sneaker", "sandal", "coat")
    # "s" fits three labels, "coat" is weighed against it; then "hirt" against "neaker" (and "andal", not listed)
    toks = _reply([_tok("s", -0.2, [("s", -0.2), ("coat", -1.8), ("x", -3.0)]),
                   _tok("hirt", -0.4, [("hirt", -0.4), ("neaker", -1.2), ("z", -2.5)])])
    e = math.exp
    first = e(-0.2) / (e(-0.2) + e(-1.8))
    second = e(-0.4) / (e(-0.4) + e(-1.2) + e(-2.5))  # "sandal" gets the lowest listed, -2.5
    assert math.exp(label_logprob(toks, "shirt", labels)) == pytest.approx(first * second)


def test_label_share_reads_past_a_label_that_is_a_prefix_of_another():
    labels = ("cat", "catfish", "dog")
    toks = [_tok('{"label": "', -0.1), _tok("cat", -0.1, [("cat", -0.1), ("dog", -3.0)]),
            _tok('", "confidence": 1}', -0.5, [('", "confidence": 1}', -0.5), ("fish", -1.0)])]
    e = math.exp  # "cat" could still become "catfish": the closing quote against "fish" decides
    expected = e(-0.1) / (e(-0.1) + e(-3.0)) * e(-0.5) / (e(-0.5) + e(-1.0))
    assert math.exp(label_logprob(toks, "cat", labels)) == pytest.approx(expected)


def test_label_share_with_the_opening_quote_in_the_label_token():
    toks = [_tok('{"label":', -0.1), _tok(' "pos', -1.0, [(' "pos', -1.0), (' "neg', -2.0), (' "', -3.0)]),
            _tok('itive"}', -0.1, [('itive"}', -0.1)])]
    got = math.exp(label_logprob(toks, "positive", ("positive", "negative")))
    e = math.exp  # ' "' alone fits both labels, so it counts for both
    assert got == pytest.approx((e(-1.0) + e(-3.0)) / (e(-1.0) + e(-2.0) + e(-3.0)))


def test_label_share_needs_alternatives_and_a_task_label():
    plain = _reply([{"token": "pear", "logprob": -0.4}])  # a provider without top_logprobs (or an empty list)
    assert label_logprob(plain, "pear", FRUIT.labels) == pytest.approx(-0.4)
    listed = _reply([_tok("Pear", -0.4, [("Pear", -0.4), ("apple", -1.0)])])
    assert label_logprob(listed, "Pear", ("pear", "apple")) == pytest.approx(math.log(e1 := math.exp(-0.4)) -
                                                                             math.log(e1 + math.exp(-1.0)))
    assert label_logprob(listed, "Pear", ("kiwi", "apple")) == pytest.approx(-0.4)  # not a task label: as reported


def test_label_logprob_missing_or_malformed():
    assert label_logprob(None, "pear") is None
    assert label_logprob([{"token": "x", "logprob": "bad"}], "pear") is None
    assert label_logprob([{"token": '{"label": "', "logprob": -0.1}, {"token": "pear", "logprob": -0.4}], "pear") == pytest.approx(-0.4)


# --- reasoning models that think out loud in the reply (no reasoning parser on the server) -------------------------
DRAFT = 'The user wants JSON like {"label": "apple"}. But it is green and pear-shaped, so pear.'


@pytest.mark.parametrize("reply", [
    f'<think>{DRAFT}</think>\n{{"label": "pear", "confidence": 0.8}}',  # Qwen3 / DeepSeek-R1 without a parser
    f'{DRAFT}</think>\n\n{{"label": "pear", "confidence": 0.8}}',  # the template opened <think> in the prompt
    f'<thinking>{DRAFT}</thinking>```json\n{{"label": "pear", "confidence": 0.8}}\n```',
    f'<|channel|>analysis<|message|>{DRAFT}<|end|><|start|>assistant<|channel|>final<|message|>'
    '{"label": "pear", "confidence": 0.8}',  # gpt-oss harmony channels
])
def test_a_draft_label_in_the_thinking_is_not_the_answer(reply):
    """Before: the first JSON object was the draft's -- "apple", a wrong paid label, silently."""
    got = parse_answer(reply, FRUIT)
    assert (got.label, got.confidence, got.error_kind) == ("pear", 0.8, None)


def test_a_bare_label_after_an_empty_thinking_block():
    """Qwen3 with thinking switched off still writes an empty block first: before, a parse failure."""
    assert parse_answer("<think>\n\n</think>\n\nPear", FRUIT).label == "pear"


def test_a_reply_that_never_stops_thinking_has_no_answer_and_no_recovered_label():
    cut = f'<think>{DRAFT} Let me check again: {{"label": "apple", "reas'
    got = parse_answer(cut, FRUIT)
    assert got.label is None and got.error_kind == "parse" and "all reasoning" in got.error_detail
    assert recover_truncated(cut, FRUIT) is None  # the draft's closed label is no answer
    assert recover_truncated(f'<think>{DRAFT}</think>{{"label": "pear", "reason": "gre', FRUIT).label == "pear"
    assert parse_answer("<think>x</think>  ", FRUIT).error_detail == "nothing after the model's reasoning"


def test_split_reasoning_and_the_format_check():
    assert split_reasoning('{"label": "pear"}') == ("", '{"label": "pear"}', True)
    assert split_reasoning("<think>a</think>b") == ("<think>a", "b", True)
    assert split_reasoning("<think>still going") == ("still going", "", False)
    assert split_reasoning("a reason that mentions <think> tags") == ("", "a reason that mentions <think> tags", True)
    assert looks_like_json('<think>a</think>\n{"label": "pear"}')
    assert not looks_like_json("<think>a</think>\nPear")  # prose after the thinking: the format was ignored
    assert looks_like_json("<think>cut off while thinking")  # says nothing about the format


def test_label_logprob_reads_the_answer_not_the_draft_in_the_thinking():
    toks = [_tok('<think>draft {"label": "', -0.1), _tok("apple", -5.0), _tok('"}</think>{"label": "', -0.1),
            _tok("pear", -0.3, [("pear", -0.3), ("apple", -2.0)]), _tok('"}', -0.1)]
    e = math.exp  # apple listed, the three unlisted labels each given the lowest listed probability
    assert math.exp(label_logprob(toks, "pear", FRUIT.labels)) == pytest.approx(e(-0.3) / (e(-0.3) + 4 * e(-2.0)))
    assert label_logprob(toks[:3], "apple", FRUIT.labels) is None  # only the draft: no answer to score
