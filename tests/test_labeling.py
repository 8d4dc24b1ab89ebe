"""k-pass labelling against the simulated teacher and fault servers over real HTTP: cache, resume, budget,
consensus, failures vs disagreements, plan, and API-key hygiene."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultServer, ok, status

from llm_flywheel.pipeline.labeling import LabelConfig, consensus, label_items, plan
from llm_flywheel.teachers.openai_compat import (
    OpenAICompatTeacher,
    pass_variant,
    system_prompt,
)
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import (
    SimConfig,
    model_id,
    run_simulated_teacher,
    sim_stats,
    variant_key,
)

QUIET = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0)


def _ids(ws, n=None, split=None):
    s = ws.store()
    try:
        return [it.id for it in s.items("synth", split=split, limit=n)]
    finally:
        s.close()


def _sim_teacher(url, task, **kw):
    return teacher_from_spec(f"{url}|{model_id('synth')}", task, backoff_base=0.01, **kw)


def _answers(ws):
    s = ws.store()
    try:
        return s.query("SELECT * FROM teacher_answers")
    finally:
        s.close()


def test_label_then_rerun_makes_zero_calls(synth_ws, synth_task):
    ids = _ids(synth_ws, 120)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        t = _sim_teacher(url, synth_task)
        r1 = label_items(synth_ws, "synth", ids, t, LabelConfig(passes=2, concurrency=8), progress=False)
        n1 = sim_stats(url)["requests"]
        r2 = label_items(synth_ws, "synth", ids, t, LabelConfig(passes=2, concurrency=8), progress=False)
        n2 = sim_stats(url)["requests"]
    assert r1.calls_made == n1 == 240 + r1.tie_break_calls and r1.failed == 0
    assert r2.calls_made == 0 and n2 == n1 and r2.answers_cached == 240
    assert len(_answers(synth_ws)) == n1  # every answer stored, each once
    s = synth_ws.store()
    rows = s.query("SELECT status, label, quality, soft_json FROM labels WHERE source='teacher'")
    s.close()
    assert len(rows) == 120  # no item dropped, disagreements included
    by = {r["status"] for r in rows}
    assert "agreed" in by
    for r in rows:
        soft = json.loads(r["soft_json"])
        assert abs(sum(soft.values()) - 1) < 1e-3 and 0 <= r["quality"] <= 1
        assert (r["label"] is None) == (r["status"] == "disagreed")
    assert r1.agreed + r1.tie_broken + r1.disagreed + r1.single == 120
    assert r1.simulated and r1.model == "simulated/synth-teacher"


def test_disagreements_get_tie_break_and_are_queued(synth_ws, synth_task):
    ids = _ids(synth_ws, 150)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, malformed_rate=0, rate_429=0,
                                                             accuracy=0.6, pass_correlation=0.2)) as url:
        r = label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task), LabelConfig(passes=2), progress=False)
    assert r.tie_break_calls > 0 and r.tie_broken > 0
    s = synth_ws.store()
    q = {row["item_id"]: row["reason"] for row in s.query("SELECT * FROM review_queue")}
    st = {row["item_id"]: row["status"] for row in s.query("SELECT item_id, status FROM labels")}
    tb = s.query("SELECT COUNT(*) AS n FROM teacher_answers WHERE pass_index=2")[0]["n"]
    s.close()
    assert tb == r.tie_break_calls
    assert {i for i, v in st.items() if v in ("disagreed", "tie_broken")} == set(q)
    assert set(q.values()) == {"disagreement"} and r.queued_for_review == len(q)


def test_consensus_rules():
    labs = ("a", "b", "c")
    mk = lambda *ls: [{"id": i, "label": lab, "confidence": 0.9} for i, lab in enumerate(ls)]
    assert consensus(mk("a", "a"), labs).status == "agreed"
    assert consensus(mk("a", "b"), labs).status == "disagreed" and consensus(mk("a", "b"), labs).label is None
    c = consensus(mk("a", "b", "a"), labs)
    assert c.status == "tie_broken" and c.label == "a" and c.quality == pytest.approx(0.6)
    assert consensus(mk("a", None), labs).status == "single"
    assert consensus([], labs) is None
    assert consensus(mk(None), labs).status == "disagreed"


def test_consensus_takes_the_label_probability_from_logprobs():
    import math
    labs = ("a", "b", "c")
    ans = [{"id": 0, "label": "a", "confidence": 0.95, "label_logprob": math.log(0.6)},
           {"id": 1, "label": "a", "confidence": 0.95, "label_logprob": math.log(0.8)}]
    c = consensus(ans, labs)
    assert c.status == "agreed" and c.confidence_source == "logprob"
    assert c.quality == pytest.approx(0.7) and c.soft["a"] == pytest.approx(0.7)
    assert c.soft["b"] == pytest.approx(0.15) and c.soft["c"] == pytest.approx(0.15)
    v = consensus(ans, labs, use_logprobs=False)
    assert v.quality == pytest.approx(0.95) and v.confidence_source == "verbalised"
    mixed = consensus([ans[0], {"id": 2, "label": "a", "confidence": 0.9}], labs)
    assert mixed.confidence_source == "mixed" and mixed.quality == pytest.approx(0.75)
    low = consensus([{"id": 3, "label": "b", "label_logprob": math.log(0.05)}], labs)  # floor 1/k: never against itself
    assert low.soft["b"] == pytest.approx(1 / 3) and low.status == "single"


def test_labels_record_where_their_confidence_came_from(synth_ws, synth_task):
    ids = _ids(synth_ws, 20)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task), LabelConfig(), progress=False)
        s = synth_ws.store()
        src = {json.loads(r["provenance"])["confidence_source"] for r in s.query("SELECT provenance FROM labels")}
        s.close()
        assert src == {"logprob"}
        label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task, logprobs=False),
                    LabelConfig(use_logprobs=False), progress=False)
        s = synth_ws.store()
        src = {json.loads(r["provenance"])["confidence_source"] for r in s.query("SELECT provenance FROM labels")}
        s.close()
    assert src == {"verbalised"}


def test_failures_are_retried_next_run_not_counted_as_disagreement(synth_ws, synth_task):
    ids = _ids(synth_ws, 40)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, rate_429=0, malformed_rate=0.3)) as url:
        r1 = label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task),
                         LabelConfig(tie_break=False, reask_unparseable=0), progress=False)
    failed = [a for a in _answers(synth_ws) if not a["ok"]]
    assert r1.failed == len(failed) > 0 and {a["error_kind"] for a in failed} == {"parse"}
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        r2 = label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task), LabelConfig(tie_break=False), progress=False)
        assert sim_stats(url)["requests"] == r1.failed == r2.calls_made
    assert r2.failed == 0 and r2.single == 0


def test_budget_cap_in_dollars_is_never_exceeded(synth_ws, synth_task):
    ids = _ids(synth_ws, 200)
    budget = 0.01
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=5, malformed_rate=0, rate_429=0)) as url:
        r = label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task),
                        LabelConfig(concurrency=16, budget_usd=budget), progress=False)
        reqs = sim_stats(url)["requests"]
    spent = sum(a["cost_usd"] or 0 for a in _answers(synth_ws))
    assert r.stopped_by_budget and r.stopped_reason == "budget" and "--budget-usd" in r.stopped_message
    assert 0 < spent <= budget and r.cost_usd == pytest.approx(spent)
    assert reqs == r.calls_made < 400
    assert spent > budget * 0.5  # it used the budget rather than stopping at once


def test_call_cap_is_never_exceeded(synth_ws, synth_task):
    ids = _ids(synth_ws, 100)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        r = label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task),
                        LabelConfig(concurrency=16, max_calls=25), progress=False)
        assert sim_stats(url)["requests"] == 25
    assert r.calls_made == 25 and r.stopped_by_budget and len(_answers(synth_ws)) == 25
    assert r.stopped_reason == "max_calls" and "--max-calls" in r.stopped_message


def test_plan_counts_cached_calls_and_prices_them(synth_ws, synth_task):
    from dataclasses import replace
    ids = _ids(synth_ws, 30)
    priced = replace(synth_task, input_per_mtok=0.3, output_per_mtok=2.5)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        t = _sim_teacher(url, synth_task)
        p0 = plan(synth_ws, "synth", ids, _sim_teacher(url, priced).__class__(t.base_url, t.model, api_key_env=None,
                                                                             task=synth_task, price_in_per_mtok=0.3,
                                                                             price_out_per_mtok=2.5))
        assert sim_stats(url)["requests"] == 0  # planning makes no call
        label_items(synth_ws, "synth", ids[:10], t, LabelConfig(tie_break=False), progress=False)
        p1 = plan(synth_ws, "synth", ids, t)
    assert p0["calls_needed"] == 60 and p0["price_source"] == "task prices" and p0["est_cost_usd"] > 0
    assert "the tokens are a guess" in p0["estimate_note"] and "--max-calls 20" in p0["estimate_note"]
    assert p1["calls_needed"] == 40 and p1["calls_cached"] == 20 and p1["price_source"] == "observed"
    assert p1["estimate_note"] is None  # priced from the calls it saw
    assert p1["simulated"] is True


def test_fatal_auth_error_stops_the_run(synth_ws, synth_task, monkeypatch):
    """A real server on 127.0.0.1 answering 401: the breaker stops after `breaker_threshold` identical answers."""
    monkeypatch.setenv("FW_KEY", "wrong")
    ids = _ids(synth_ws, 50)
    with FaultServer(default=status(401)) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env="FW_KEY", task=synth_task)
        r = label_items(synth_ws, "synth", ids, t, LabelConfig(concurrency=1, breaker_threshold=3), progress=False)
    assert len(srv.requests) == 3 and r.failed == 3 and r.calls_made == 3
    assert r.stopped_reason == "fatal_error" and not r.stopped_by_budget
    assert srv.url in r.stopped_message and "API key" in r.stopped_message and "401" in r.stopped_message
    assert all(not a["ok"] and a["error_kind"] in ("http_4xx", "auth") for a in _answers(synth_ws))


def test_off_list_answers_are_final_and_recorded(synth_ws, synth_task):
    ids = _ids(synth_ws, 5)
    with FaultServer(default=ok('{"label": "triangle", "confidence": 0.9, "reason": "r"}')) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env=None, task=synth_task)
        r1 = label_items(synth_ws, "synth", ids, t, LabelConfig(), progress=False)
        r2 = label_items(synth_ws, "synth", ids, t, LabelConfig(), progress=False)
    rows = _answers(synth_ws)
    assert len(rows) == 10 and all(a["ok"] == 1 and a["label"] is None and a["error_kind"] == "off_list" for a in rows)
    assert r1.off_list == 10 and r2.calls_made == 0 and r1.disagreed == 5


def test_api_key_never_written_anywhere(synth_ws, synth_task, monkeypatch, tmp_path, caplog):
    import logging

    from llm_flywheel.pipeline.review import export_reviews
    key = "sk-FLYWHEEL-canary-7f3a9c1e5b"
    monkeypatch.setenv("CANARY_KEY", key)
    caplog.set_level(logging.DEBUG)
    ids = _ids(synth_ws, 30)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, accuracy=0.6, rate_429=0.1,
                                                             retry_after_s=0.01)) as url:
        t = _sim_teacher(url, synth_task, api_key_env="CANARY_KEY")
        label_items(synth_ws, "synth", ids, t, LabelConfig(), progress=False)
    with FaultServer(default=status(401, {"error": {"message": f"bad key {key}"}})) as srv:
        t2 = OpenAICompatTeacher(srv.url, "m2", api_key_env="CANARY_KEY", task=synth_task)
        label_items(synth_ws, "synth", ids, t2, LabelConfig(), progress=False)
        assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    from llm_flywheel.pipeline.quality import teacher_quality
    teacher_quality(synth_ws, "synth")
    export_reviews(synth_ws, "synth", synth_ws.exports_dir / "r.csv", which="all")
    hits = [p for p in synth_ws.root.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert hits == [] and key not in caplog.text


def test_sigkilled_run_resumes_without_repeating_stored_calls(synth_ws, synth_task):
    """Kill -9 a `flywheel label` subprocess mid-run; the re-run asks only what was not stored."""
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=30, latency_sigma=0.1, malformed_rate=0,
                                                             rate_429=0)) as url:
        spec = f"{url}|{model_id('synth')}"
        env = {**os.environ, "FLYWHEEL_WORKSPACE": str(synth_ws.root)}
        proc = subprocess.Popen([str(Path(sys.executable).with_name("flywheel")), "label", "synth", "--split", "all",
                                 "--limit", "300", "--teacher", spec, "--concurrency", "4", "--no-tie-break"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("the labelling subprocess ended before it could be killed")
            if len(_answers(synth_ws)) >= 80:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored_before = {(a["content_hash"], a["pass_index"]) for a in _answers(synth_ws) if a["ok"]}
        assert 80 <= len(stored_before) < 600
        counts1 = sim_stats(url)["per_key"]
        key = {p: variant_key(pass_variant(p)["temperature"], system_prompt(synth_task, p)) for p in (0, 1)}
        r = label_items(synth_ws, "synth", _ids(synth_ws, 300), _sim_teacher(url, synth_task),
                        LabelConfig(tie_break=False, concurrency=16), progress=False)
        counts2 = sim_stats(url)["per_key"]
    asked_again = [hp for hp in stored_before if counts2.get(f"{hp[0]}:{key[hp[1]]}") != counts1.get(f"{hp[0]}:{key[hp[1]]}")]
    assert asked_again == []
    assert r.answers_cached == len(stored_before) and r.calls_made == 600 - len(stored_before)
    assert max(counts2.values()) <= 2  # at most the few calls in flight at the kill were asked twice
    assert sum(1 for v in counts2.values() if v == 2) <= 4
    s = synth_ws.store()
    assert s.integrity_ok()
    assert s.query("SELECT COUNT(*) AS n FROM teacher_answers WHERE ok=1")[0]["n"] == 600
    s.close()


def test_label_from_a_thread_while_the_store_is_read(synth_ws, synth_task):
    import threading
    ids = _ids(synth_ws, 60)
    out = {}
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=5, malformed_rate=0, rate_429=0)) as url:
        th = threading.Thread(target=lambda: out.setdefault("r", label_items(
            synth_ws, "synth", ids, _sim_teacher(url, synth_task), LabelConfig(), progress=False)))
        th.start()
        reader = synth_ws.store()
        while th.is_alive():
            reader.effective_labels("synth")
            time.sleep(0.01)
        th.join()
        reader.close()
    assert out["r"].agreed + out["r"].tie_broken + out["r"].disagreed + out["r"].single == 60


def test_unparseable_replies_are_reasked_within_the_run(synth_ws, synth_task):
    ids = _ids(synth_ws, 40)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, rate_429=0, malformed_rate=0.2)) as url:
        r = label_items(synth_ws, "synth", ids, _sim_teacher(url, synth_task),
                        LabelConfig(tie_break=False, reask_unparseable=2), progress=False)
        assert sim_stats(url)["requests"] == r.calls_made
    rows = _answers(synth_ws)
    assert sum(1 for a in rows if not a["ok"]) == r.failed > 0  # every failed attempt is on record
    finals = {(a["content_hash"], a["pass_index"]) for a in rows if a["ok"]}
    assert len(finals) >= 75  # 0.2^3 chance per key of still failing after two re-asks
    assert r.calls_made == len(finals) + r.failed


def test_a_later_single_pass_run_keeps_the_consensus(synth_ws, synth_task):
    ids = _ids(synth_ws, 30)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        t = _sim_teacher(url, synth_task)
        label_items(synth_ws, "synth", ids, t, LabelConfig(passes=2), progress=False)
        s = synth_ws.store()
        before = {r["item_id"]: (r["label"], r["status"]) for r in s.query("SELECT * FROM labels")}
        r = label_items(synth_ws, "synth", ids, t, LabelConfig(passes=1), progress=False)
        after = {r_["item_id"]: (r_["label"], r_["status"]) for r_ in s.query("SELECT * FROM labels")}
        s.close()
    assert r.calls_made == 0 and before == after and "single" not in {v[1] for v in after.values()}


def test_progress_is_plain_lines_off_a_terminal_and_silent_when_off(synth_ws, synth_task, capsys):
    ids = _ids(synth_ws, 40)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        label_items(synth_ws, "synth", ids[:20], _sim_teacher(url, synth_task), LabelConfig(tie_break=False),
                    progress=True)  # captured streams are not terminals
        out = capsys.readouterr()
        label_items(synth_ws, "synth", ids[20:], _sim_teacher(url, synth_task), LabelConfig(tie_break=False),
                    progress=False)
        quiet = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.startswith("labelling synth")]
    assert lines and lines[-1].startswith("labelling synth (SIMULATED teacher): 40/40 calls (100 %)")
    assert "\r" not in out.err and "\x1b[" not in out.err  # no redrawn bar, no colour codes
    assert out.out == "" and quiet.out == "" and quiet.err == ""


def _pass_keys(task):
    return {p: variant_key(pass_variant(p)["temperature"], system_prompt(task, p)) for p in (0, 1, 2)}


def test_adaptive_passes_ask_later_passes_only_where_the_first_is_unsure(synth_ws, synth_task):
    ids = _ids(synth_ws)
    cfg = LabelConfig(passes=2, concurrency=32, calibration_items=150)  # 32 > the start level: workers wait
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        t = _sim_teacher(url, synth_task)
        r = label_items(synth_ws, "synth", ids, t, cfg, progress=False)
        n1 = sim_stats(url)["requests"]
        r2 = label_items(synth_ws, "synth", ids, t, cfg, progress=False)
        n2 = sim_stats(url)["requests"]
    a = r.adaptive_passes
    assert a is not None and a.calibration_items == 150 and a.evidence == 150 and a.certainty == "logprob"
    assert a.cutoff is not None and a.agreement_low >= cfg.agreement_target  # learnt, and its bound met the target
    assert a.skipped_items > 0 and a.calibration_items + a.skipped_items + a.extra_pass_items == len(ids)
    assert r.calls_made == n1 < 2 * len(ids) and r.failed == 0
    assert r2.calls_made == 0 and n2 == n1  # the re-run recomputes the same cutoff from the stored answers
    s = synth_ws.store()
    answers = s.query("SELECT content_hash, pass_index, label_logprob FROM teacher_answers WHERE ok=1")
    labels = s.query("SELECT status, quality, provenance FROM labels WHERE source='teacher'")
    s.close()
    by_hash: dict[str, dict[int, float]] = {}
    for row in answers:
        by_hash.setdefault(row["content_hash"], {})[row["pass_index"]] = row["label_logprob"]
    single = [h for h, got in by_hash.items() if set(got) == {0}]
    assert len(single) == a.skipped_items and len(labels) == len(ids)
    assert all(math.exp(by_hash[h][0]) >= a.cutoff - 1e-9 for h in single)  # only the sure ones skipped
    unsure = [h for h, got in by_hash.items() if 1 in got and math.exp(got[0]) < a.cutoff]
    assert len(unsure) >= a.extra_pass_items
    cut = [json.loads(x["provenance"]).get("adaptive_cutoff") for x in labels if x["status"] == "single"]
    assert len(cut) == a.skipped_items and set(cut) == {a.cutoff}


def test_adaptive_run_stopped_midway_resumes_without_paying_twice(synth_ws, synth_task):
    ids = _ids(synth_ws)
    with run_simulated_teacher(synth_ws, "synth", QUIET) as url:
        t = _sim_teacher(url, synth_task)
        r1 = label_items(synth_ws, "synth", ids, t, LabelConfig(calibration_items=150, max_calls=200),
                         progress=False)
        r2 = label_items(synth_ws, "synth", ids, t, LabelConfig(calibration_items=150), progress=False)
        per_key = sim_stats(url)["per_key"]
        fixed = label_items(synth_ws, "synth", ids, t, LabelConfig(adaptive_passes=False), progress=False)
    assert r1.stopped_reason == "max_calls" and r1.calls_made == 200 and r1.adaptive_passes is None
    assert r2.adaptive_passes is not None and r2.adaptive_passes.skipped_items > 0
    assert max(per_key.values()) == 1  # no (item, pass) asked twice across the stop and the resume
    # forcing fixed k afterwards buys exactly the skipped second passes (and the tie-breaks they call for)
    assert fixed.calls_made - fixed.tie_break_calls == r2.adaptive_passes.skipped_items
