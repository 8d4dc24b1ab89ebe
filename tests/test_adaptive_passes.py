"""Adaptive passes across runs: evidence reused (never bought twice) and a cutoff that comes from the evidence.

Real parts: the simulated teacher over HTTP on 127.0.0.1, a real SQLite workspace, ``label_items`` as the CLI
calls it."""

from __future__ import annotations

import math
import random

from conftest import make_synth_dataset

from llm_flywheel.core.consensus import choose_cutoff
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher, sim_stats

QUIET = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0)


def _ids(ws):
    s = ws.store()
    try:
        return [it.id for it in s.items("synth")]
    finally:
        s.close()


def _complete_items(ws, ids):
    """Items among ``ids`` whose first and second pass are both stored."""
    s = ws.store()
    try:
        hashes = {it.content_hash for it in s.items("synth", ids=ids)}
        rows = s.query("SELECT content_hash, pass_index FROM teacher_answers WHERE ok=1")
    finally:
        s.close()
    got: dict[str, set[int]] = {}
    for r in rows:
        got.setdefault(r["content_hash"], set()).add(r["pass_index"])
    return {h for h in hashes if {0, 1} <= got.get(h, set())}


def _two_runs(ws, task, reuse: bool):
    ids = _ids(ws)
    first, second = ids[: len(ids) // 2], ids[len(ids) // 2:]
    cfg = LabelConfig(passes=2, concurrency=8, calibration_items=150, reuse_evidence=reuse)
    with run_simulated_teacher(ws, "synth", QUIET) as url:
        t = teacher_from_spec(f"{url}|{model_id('synth')}", task, backoff_base=0.01)
        r1 = label_items(ws, "synth", first, t, cfg, progress=False)
        r2 = label_items(ws, "synth", second, t, cfg, progress=False)
        again = label_items(ws, "synth", second, t, cfg, progress=False)
        first_again = label_items(ws, "synth", first, t, cfg, progress=False)  # now with run 2's answers stored
        per_key = sim_stats(url)["per_key"]
    assert first_again.calls_made == 0  # evidence stored after a run began never changes that run's decision
    assert first_again.adaptive_passes.cutoff == r1.adaptive_passes.cutoff
    return first, second, r1, r2, again, per_key


def test_a_second_run_reuses_the_first_runs_evidence_and_buys_no_new_sample(synth_ws, synth_task, tmp_path):
    first, second, r1, r2, again, per_key = _two_runs(synth_ws, synth_task, reuse=True)
    a1, a2 = r1.adaptive_passes, r2.adaptive_passes
    assert a1 is not None and a2 is not None
    assert a1.calibration_items == 150 and a1.reused_evidence == 0  # nothing to reuse in a fresh workspace
    # run 2 buys no sample: every item of run 1 with both passes (its sample and its unsure items) is evidence
    assert a2.calibration_items == 0 and a2.reused_evidence == len(_complete_items(synth_ws, first)) > 150
    assert a2.evidence == a2.reused_evidence and a2.cutoff is not None and a2.agreement_low >= 0.93
    # so run 2 pays one first pass per item plus the later passes of its unsure items, nothing for evidence
    assert r2.calls_made == len(second) + a2.extra_pass_items + r2.tie_break_calls
    assert a2.skipped_items + a2.extra_pass_items == len(second)
    assert max(per_key.values()) == 1  # no (item, pass) asked twice over both runs and the re-run
    assert again.calls_made == 0 and again.adaptive_passes.cutoff == a2.cutoff  # the same decision, recomputed

    # the same two runs without reuse (the behaviour before): run 2 buys a fresh 150-item sample again
    ws_b = Workspace.open(tmp_path / "fresh")
    make_synth_dataset(ws_b, synth_task)
    _, _, b1, b2, _, _ = _two_runs(ws_b, synth_task, reuse=False)
    assert b1.calls_made == r1.calls_made  # identical first runs
    assert b2.adaptive_passes.calibration_items == 150 and b2.adaptive_passes.reused_evidence == 0
    assert r2.calls_made < b2.calls_made


def test_uninformative_certainties_get_no_cutoff_informative_ones_do(synth_ws, synth_task):
    """The cutoff comes from the evidence: a teacher whose label probabilities do not track its errors earns no
    cutoff (every item asked every pass), one whose probabilities do earns one.  A constant cutoff would skip
    items in both."""
    ids = _ids(synth_ws)
    cfg = LabelConfig(passes=2, concurrency=8, calibration_items=200)
    runs = {}
    for name, sharp, noise in (("flat", 0.0, 1.0), ("sharp", 2.5, 0.4)):
        sim = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0, logprob_sharpness=sharp, logprob_noise=noise,
                        model=f"simulated/{name}")
        with run_simulated_teacher(synth_ws, "synth", sim) as url:
            t = teacher_from_spec(f"{url}|simulated/{name}", synth_task, backoff_base=0.01)
            runs[name] = label_items(synth_ws, "synth", ids, t, cfg, progress=False)
    flat, sharp = runs["flat"].adaptive_passes, runs["sharp"].adaptive_passes
    assert flat.evidence == sharp.evidence == 200 and flat.certainty == sharp.certainty == "logprob"
    assert flat.cutoff is None and flat.skipped_items == 0
    assert runs["flat"].calls_made == 2 * len(ids) + runs["flat"].tie_break_calls  # as fixed k would
    assert sharp.cutoff is not None and sharp.skipped_items > 0 and sharp.agreement_low >= cfg.agreement_target


def test_choose_cutoff_follows_the_evidence_not_a_constant():
    rng = random.Random(0)
    p = [rng.random() for _ in range(600)]
    agree_if_sure = [x > 0.4 or rng.random() < 0.5 for x in p]  # disagreements only below 0.4
    agree_if_very_sure = [x > 0.8 or rng.random() < 0.5 for x in p]  # ... only below 0.8
    low = choose_cutoff(p, agree_if_sure, 0.93)
    high = choose_cutoff(p, agree_if_very_sure, 0.93)
    assert low.cutoff in p and high.cutoff in p  # always an observed certainty
    assert low.cutoff < high.cutoff and low.skipped > high.skipped
    assert choose_cutoff(p, [False] * len(p), 0.93).cutoff is None


def _answer(n, p, label, certainty):
    return {"id": n, "pass_index": p, "label": label, "confidence": certainty, "label_logprob": math.log(certainty)}


def test_the_students_agreement_with_pass_0_skips_what_certainty_alone_cannot():
    """Pass 0's certainty says nothing here (the certainty cutoff finds none), but where the student agrees with
    pass 0 the second pass almost always does too.  With the student's hints those items are answered by pass 0
    alone, the others still get the later passes; an item without a hint keeps the certainty rule; evidence
    without hints (items the student trained on) is not used."""
    from llm_flywheel.pipeline import label_adaptive as adaptive
    from llm_flywheel.store.base import Item

    rng = random.Random(0)
    labels = ["a", "b", "c"]
    evidence, hints = {}, {}
    for i in range(600):
        h, first = f"e{i}", rng.choice(labels)
        student_agrees = rng.random() < 0.6
        second = first if rng.random() < (0.99 if student_agrees else 0.5) else rng.choice([x for x in labels if x != first])
        evidence[h] = [_answer(2 * i, 0, first, rng.uniform(0.4, 0.95)), _answer(2 * i + 1, 1, second, 0.8)]
        other = next(x for x in labels if x != first)
        hints[h] = (first if student_agrees else other, rng.uniform(0.5, 1.0))
    items = [Item(id=1000 + i, dataset="d", source_ref="", content_hash=f"n{i}", modality="text", blob_path=None,
                  text="x", features=None, source_split=None, split="train", gold_label=None) for i in range(100)]
    answers = {it.content_hash: [_answer(5000 + it.id, 0, "a", rng.uniform(0.4, 0.95))] for it in items}
    new_hints = {f"n{i}": ("a" if i % 2 == 0 else "b", 0.9) for i in range(90)}  # n90..n99: no hint
    args = (items, answers, evidence, set(), labels, 2, 0.93, True)

    plain, more, skipped = adaptive.decide(*args)
    assert plain.cutoff is None and not skipped and len(more) == 100
    summary, more, skipped = adaptive.decide(*args, hints={**hints, **new_hints})
    assert summary.student_cutoff is not None and summary.student_evidence == 600
    assert summary.student_agreement_low >= 0.93
    agreeing = {f"n{i}" for i in range(0, 90, 2)}
    assert agreeing <= skipped  # the student agrees with pass 0: answered by pass 0 alone
    assert len(skipped - agreeing) <= 5 and not skipped & {f"n{i}" for i in range(90, 100)}  # (no hint: certainty)
    assert {it.content_hash for it in more} == {f"n{i}" for i in range(100)} - skipped
    unhinted, _, skipped = adaptive.decide(*args, hints=new_hints)  # hints on no evidence item: no student rule
    assert unhinted.student_cutoff is None and not skipped


def test_a_run_over_items_an_earlier_run_answered_counts_them_as_evidence(synth_ws, synth_task):
    """`flywheel label --limit N` then a larger --limit: the second run's own items that the first asked every pass
    are evidence; before, the second run saw none (its cut-off was the first answer on its own items) and bought a
    new calibration sample."""
    ids = _ids(synth_ws)
    head = ids[: len(ids) // 3]
    cfg = LabelConfig(passes=2, concurrency=8, calibration_items=150)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        t = teacher_from_spec(f"{url}|{model_id('synth')}", synth_task, backoff_base=0.01)
        r1 = label_items(synth_ws, "synth", head, t, cfg, progress=False)
        complete_head = _complete_items(synth_ws, head)
        r2 = label_items(synth_ws, "synth", ids, t, cfg, progress=False)
        again = label_items(synth_ws, "synth", ids, t, cfg, progress=False)
        per_key = sim_stats(url)["per_key"]
    a1, a2 = r1.adaptive_passes, r2.adaptive_passes
    assert a1.calibration_items == 150 and len(complete_head) >= 150
    assert a2.reused_evidence == len(complete_head) and a2.calibration_items == 0  # nothing new to buy for evidence
    assert a2.evidence == len(complete_head) and a2.cutoff is not None
    new = len(ids) - len(head)
    # pass 0 of the new items, the later passes of those below the cutoff, tie-breaks: nothing for a sample
    assert r2.calls_made == new + a2.extra_pass_items + r2.tie_break_calls
    assert a2.skipped_items + a2.extra_pass_items == len(ids) - len(complete_head)
    assert max(per_key.values()) == 1
    assert again.calls_made == 0 and again.adaptive_passes.cutoff == a2.cutoff
    assert again.adaptive_passes.reused_evidence == a2.reused_evidence  # the horizon recorded by run 2's first try
