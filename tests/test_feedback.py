"""Active selection policies on constructed probabilities, and feedback collection from a real cascade log."""

from __future__ import annotations

import time

import numpy as np
import pytest

from llm_flywheel.pipeline.feedback import collect, entropy_scores, margin_scores, rank, select, vote_entropy


def test_margin_prefers_close_top_two():
    p = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33]])
    s = margin_scores(p)
    assert list(np.argsort(-s)[:2]) in ([1, 3], [3, 1])
    assert s[0] == pytest.approx(1 - 0.85)
    assert list(rank("margin", probs=p, budget=2)) in ([1, 3], [3, 1])
    assert rank("margin", probs=p, budget=10).tolist().__len__() == 4


def test_margin_differs_from_entropy_where_it_should():
    # item 0: two-way tie (tiny margin, low entropy); item 1: spread over 4 classes but a clear leader
    p = np.array([[0.5, 0.5, 0.0, 0.0], [0.55, 0.15, 0.15, 0.15]])
    assert rank("margin", probs=p, budget=1).tolist() == [0]
    assert rank("entropy", probs=p, budget=1).tolist() == [1]
    assert entropy_scores(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)


def test_qbc_picks_disagreement():
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.55, 0.45], [0.1, 0.9]])
    b = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    c = np.array([[0.8, 0.2], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    ve = vote_entropy([a, b, c])
    assert int(np.argmax(ve)) == 1  # the only item the committee splits on
    assert rank("qbc", probs=a, committee=[a, b, c], budget=1).tolist() == [1]
    # margin of model a alone would pick item 2 -- QBC is a different policy
    assert rank("margin", probs=a, budget=1).tolist() == [2]


def test_qbc_falls_back_to_margin_with_one_member():
    a = np.array([[0.9, 0.1], [0.55, 0.45]])
    assert rank("qbc", probs=a, committee=[a], budget=1).tolist() == [1]
    with pytest.raises(ValueError):
        vote_entropy([a])


def test_random_is_seeded_and_a_permutation():
    p = np.zeros((50, 3))
    r1 = rank("random", probs=p, budget=50, seed=3)
    assert sorted(r1.tolist()) == list(range(50))
    assert rank("random", probs=p, budget=10, seed=3).tolist() == r1[:10].tolist()
    assert rank("random", probs=p, budget=10, seed=4).tolist() != r1[:10].tolist()


def test_bad_inputs():
    with pytest.raises(ValueError, match="policy"):
        rank("nope", probs=np.zeros((2, 2)), budget=1)
    with pytest.raises(ValueError, match="matrix"):
        margin_scores(np.zeros(3))
    with pytest.raises(ValueError, match="budget"):
        rank("margin", probs=np.zeros((2, 2)), budget=-1)


def test_margin_beats_random_at_finding_errors():
    """On a simulated student whose mistakes concentrate where it is unsure, margin finds more of them."""
    rng = np.random.default_rng(0)
    n, k = 2000, 5
    logits = rng.normal(0, 1, (n, k)) * rng.uniform(0.2, 4, (n, 1))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])  # calibrated by construction
    wrong = p.argmax(1) != y
    found_margin = wrong[rank("margin", probs=p, budget=200)].mean()
    found_random = wrong[rank("random", probs=p, budget=200, seed=1)].mean()
    assert found_margin > found_random + 0.15


class _TableStudent:
    """Test-only student: probabilities looked up by item id."""

    labels = ("bar", "ring", "cross", "dot")

    def __init__(self, table):
        self.table = table

    def predict_proba(self, items):
        return np.array([self.table[it.id] for it in items])


def test_select_through_the_store(synth_ws):
    store = synth_ws.store()
    ids = [it.id for it in store.items("synth")][:40]
    store.close()
    table = {i: [0.97, 0.01, 0.01, 0.01] for i in ids}
    hard = ids[5:8]
    for i in hard:
        table[i] = [0.4, 0.38, 0.12, 0.1]
    chosen = select(synth_ws, "synth", ids, policy="margin", budget=3, students=[_TableStudent(table)])
    assert sorted(chosen) == sorted(hard)
    assert len(select(synth_ws, "synth", ids, policy="random", budget=7, seed=1)) == 7
    assert select(synth_ws, "synth", ids, policy="margin", budget=0, students=[_TableStudent(table)]) == []
    with pytest.raises(ValueError, match="student"):
        select(synth_ws, "synth", ids, policy="margin", budget=3)
    with pytest.raises(ValueError, match="not items"):
        select(synth_ws, "synth", [10**9], policy="margin", budget=1, students=[_TableStudent(table)])


def test_collect_reads_round_from_cascade_log(synth_ws):
    store = synth_ws.store()
    ids = [it.id for it in store.items("synth")][:6]
    now = time.time()
    rows = [
        (ids[0], "student", "bar", "bar", None, 1, "run"),
        (ids[1], "teacher", "ring", "bar", "ring", 1, "run"),
        (ids[2], "teacher", "dot", "cross", "dot", 1, "run"),
        (ids[3], "teacher_failed", None, "dot", None, 1, "run"),
        (ids[4], "student", "cross", "cross", None, 2, "run"),  # other round
        (ids[5], "student", "cross", "cross", None, 1, "serve"),  # other origin
    ]
    for iid, src, lab, sl, tl, r, origin in rows:
        store.execute(
            "INSERT INTO cascade_log(ts, dataset, item_id, source, label, student_label, teacher_label, round, origin) "
            "VALUES(?,?,?,?,?,?,?,?,?)", (now, "synth", iid, src, lab, sl, tl, r, origin))
    # a human says item 0 is really a ring: a correction of what the cascade answered
    store.execute("INSERT INTO labels(item_id, source, label, status, updated_at) VALUES(?,?,?,?,?)",
                  (ids[0], "human", "ring", "human", now))
    store.execute("INSERT INTO labels(item_id, source, label, status, updated_at) VALUES(?,?,?,?,?)",
                  (ids[1], "teacher", "ring", "single", now))
    store.close()
    fb = collect(synth_ws, "synth", 1)
    assert fb.served == 4
    assert sorted(fb.deferred_ids) == [ids[1], ids[2]]
    assert fb.deferred_labelled == 1
    assert fb.teacher_failed == 1 and fb.accepted == 1
    assert fb.human_corrections == [ids[0]]
    assert fb.audit_ids == []  # no teacher given: no audit
    assert set(fb.new_label_ids) == {ids[0], ids[1], ids[2]}
    d = fb.to_dict()
    assert d["n_deferred_ids"] == 2 and d["audit_disagreement_rate"] is None
    with pytest.raises(ValueError):
        collect(synth_ws, "synth", 1, audit_rate=2.0)
