"""core/consensus.py on plain values: votes, confidences, soft targets, and the adaptive-pass cutoff."""

from __future__ import annotations

import math
import random

import pytest

from llm_flywheel.core.consensus import (
    DEFAULT_CONFIDENCE,
    answer_probability,
    calibration_rank,
    calibration_sample,
    choose_cutoff,
    consensus,
    needs_tie_break,
    soft_target,
)

LABELS = ["a", "b", "c"]


def _a(label, conf=None, lp=None, i=0):
    return {"id": i, "pass_index": i, "label": label, "confidence": conf, "label_logprob": lp}


def test_answer_probability_prefers_logprob_then_verbalised_then_default():
    assert answer_probability(_a("a", 0.9, math.log(0.6)), 3) == (pytest.approx(0.6), "logprob")
    assert answer_probability(_a("a", 0.9, math.log(0.6)), 3, use_logprobs=False) == (0.9, "verbalised")
    assert answer_probability(_a("a", 0.9, float("nan")), 3) == (0.9, "verbalised")
    assert answer_probability(_a("a"), 3) == (DEFAULT_CONFIDENCE, "default")
    # an answer never argues against its own label: floor 1/k
    assert answer_probability(_a("a", 0.1), 3)[0] == pytest.approx(1 / 3)


def test_soft_target_is_a_distribution_centred_on_the_votes():
    s = soft_target(LABELS, ["a", "b"], [0.8, 0.6])
    assert sum(s.values()) == pytest.approx(1.0, abs=1e-5)
    assert s["a"] == pytest.approx((0.8 + 0.4 / 2) / 2)
    assert s["c"] == pytest.approx((0.1 + 0.2) / 2)


def test_statuses_follow_the_votes():
    assert consensus([], LABELS) is None
    agreed = consensus([_a("a", 0.9, i=0), _a("a", 0.7, i=1)], LABELS)
    assert (agreed.label, agreed.status, agreed.quality) == ("a", "agreed", pytest.approx(0.8))
    tb = consensus([_a("a", 0.9, i=0), _a("b", 0.7, i=1), _a("a", 0.7, i=2)], LABELS)
    assert (tb.label, tb.status, tb.quality) == ("a", "tie_broken", pytest.approx(2 / 3 * 0.8))
    dis = consensus([_a("a", 0.9, i=0), _a("b", 0.7, i=1)], LABELS)
    assert dis.label is None and dis.status == "disagreed" and dis.votes == {"a": 1, "b": 1}
    single = consensus([_a("c", 0.8)], LABELS)
    assert single.status == "single" and single.quality == pytest.approx(0.4)
    assert consensus([_a("c", 0.8)], LABELS, single_factor=1.0).quality == pytest.approx(0.8)
    off = consensus([_a("zebra", 0.8)], LABELS)
    assert off.label is None and off.votes == {"off_list": 1}


def test_tie_break_needed_only_without_a_majority_and_without_off_list():
    assert needs_tie_break(["a", "b"])
    assert not needs_tie_break(["a", "a"])
    assert not needs_tie_break(["a", None])
    assert needs_tie_break(["a", "b", "c", "a"])  # 2 of 4 is no strict majority
    assert not needs_tie_break([])


def test_calibration_sample_is_fixed_by_content_and_uniform():
    hashes = [f"{i:064x}" for i in range(4000)]
    s1 = calibration_sample(hashes, 300)
    s2 = calibration_sample(list(reversed(hashes)) + hashes[:10], 300)  # order and duplicates do not matter
    assert s1 == s2 and len(s1) == 300
    assert calibration_sample(hashes[:50], 300) == set(hashes[:50])
    ranks = [calibration_rank(h) for h in hashes]
    assert all(0 <= r < 1 for r in ranks)
    assert 0.45 < sum(ranks) / len(ranks) < 0.55  # about uniform: the draw does not follow the content's order
    assert sum(int(h, 16) < 2000 for h in s1) not in (0, 300)


def test_cutoff_is_the_smallest_whose_skipped_items_meet_the_target_bound():
    rng = random.Random(0)
    # first-pass certainty p; agreement with the consensus is near-certain above 0.8, a coin flip below
    ps = [rng.random() for _ in range(2000)]
    agrees = [rng.random() < (0.995 if p >= 0.8 else 0.6) for p in ps]
    c = choose_cutoff(ps, agrees, 0.95)
    assert c.cutoff is not None and 0.6 < c.cutoff < 0.85
    assert c.agreement_low >= 0.95 and c.agreement_low <= c.agreement <= c.agreement_high
    above = [a for p, a in zip(ps, agrees) if p >= c.cutoff]
    assert c.skipped == len(above) and c.agreement == pytest.approx(sum(above) / len(above))
    # one step lower would break the bound
    lower = max(p for p in ps if p < c.cutoff)
    cut2 = [a for p, a in zip(ps, agrees) if p >= lower]
    from llm_flywheel.core.stats import wilson_interval
    assert wilson_interval(sum(cut2), len(cut2))[0] < 0.95


def test_no_cutoff_when_the_evidence_is_too_thin_or_too_disagreeing():
    assert choose_cutoff([0.99] * 20, [True] * 20, 0.93).cutoff is None  # 20 of 20: the bound is still < 0.93
    assert choose_cutoff([0.99] * 80, [True] * 80, 0.93).cutoff == 0.99
    rng = random.Random(1)
    ps = [rng.random() for _ in range(500)]
    assert choose_cutoff(ps, [rng.random() < 0.7 for _ in ps], 0.93).cutoff is None
    assert choose_cutoff([], [], 0.9).cutoff is None
    with pytest.raises(ValueError):
        choose_cutoff([0.5], [True], 1.0)


def test_adaptive_split_reads_logprobs_else_verbalised_and_never_skips_the_sample():
    from llm_flywheel.pipeline.label_adaptive import learn_cutoff, split_by_certainty
    from llm_flywheel.store.records import Item

    rng = random.Random(2)
    answers, items = {}, []
    for i in range(400):
        h = f"{i:064x}"
        sure = rng.random() < 0.6
        p0 = 0.97 if sure else 0.55
        second = "a" if sure or rng.random() < 0.5 else "b"
        lp = None if i % 2 else math.log(p0)  # half the answers carry no logprob: verbalised there
        answers[h] = [{"id": 2 * i, "pass_index": 0, "label": "a", "confidence": p0, "label_logprob": lp},
                      {"id": 2 * i + 1, "pass_index": 1, "label": second, "confidence": 0.9, "label_logprob": None}]
        items.append(Item(i, "d", str(i), h, "text", None, "x", None, None, None, None))
    sample = calibration_sample(list(answers), 200)
    choice, source = learn_cutoff(answers, sample, LABELS, 2, 0.9, use_logprobs=True)
    assert source == "mixed" and choice.cutoff == pytest.approx(0.97) and choice.evidence == 200
    more, skipped = split_by_certainty(items, answers, sample, LABELS, choice.cutoff, use_logprobs=True)
    assert not (skipped & sample) and not ({it.content_hash for it in more} & sample)
    assert len(more) + len(skipped) == 200 and skipped == {h for h in answers if h not in sample
                                                          and answers[h][0]["confidence"] == 0.97}
    _, src = learn_cutoff(answers, sample, LABELS, 2, 0.9, use_logprobs=False)
    assert src == "verbalised"
    none_more, none_skipped = split_by_certainty(items, answers, sample, LABELS, None, use_logprobs=True)
    assert none_skipped == set() and len(none_more) == 200  # no cutoff: every item gets every pass
