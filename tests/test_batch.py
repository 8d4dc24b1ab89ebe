"""Batch API labelling end to end on loopback: the simulated teacher's /v1/files + /v1/batches, the real client,
the real store.  Full run, partial failures, SIGKILL after submit then resume, budget cap, plan, key hygiene."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_synth_dataset

from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
from llm_flywheel.pipeline.batch_plan import plan_both
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import (
    SimConfig,
    model_id,
    run_simulated_teacher,
    sim_stats,
)

QUIET = {"latency_ms": 0, "malformed_rate": 0, "rate_429": 0}
FAST = BatchConfig(poll_s=0.05)


def _ids(ws, n=None):
    with ws.store() as s:
        return [it.id for it in s.items("synth", limit=n)]


def _teacher(url, task, **kw):
    return teacher_from_spec(f"{url}|{model_id('synth')}", task, backoff_base=0.01, **kw)


def _answers(ws):
    with ws.store() as s:
        return [dict(r) for r in s.query("SELECT * FROM teacher_answers ORDER BY id")]


def _submitted(ws) -> Counter:
    """(content_hash, pass) -> how many batch lines asked for it."""
    with ws.store() as s:
        return Counter((r["content_hash"], r["pass_index"]) for r in s.query("SELECT * FROM teacher_batch_lines"))


def test_full_run_same_answers_as_online_at_the_batch_price(synth_ws, synth_task, tmp_path):
    ids = _ids(synth_ws, 80)
    cfg = SimConfig(**QUIET, batch_latency_s=0.3)
    with run_simulated_teacher(synth_ws, "synth", cfg) as url:
        t = _teacher(url, synth_task)
        fixed = LabelConfig(passes=2, adaptive_passes=False)
        r = label_items_batch(synth_ws, "synth", ids, t, fixed, FAST, progress=False)
        stats = sim_stats(url)
        again = label_items_batch(synth_ws, "synth", ids, t, fixed, FAST, progress=False)
        online_again = label_items(synth_ws, "synth", ids, t, LabelConfig(passes=2, adaptive_passes=False),
                                   progress=False)
        assert sim_stats(url)["requests"] == stats["requests"]  # the cache holds across both modes
    assert r.failed == 0 and r.stopped_reason is None and r.batches_pending == 0
    assert r.calls_made == stats["batch_lines"] == r.lines_submitted == 160 + r.tie_break_calls
    assert stats["batches_created"] == r.batches_submitted == (2 if r.tie_break_calls else 1)
    assert r.labelled + r.disagreed == 80 and r.unlabelled == 0
    assert again.calls_made == 0 and again.batches_submitted == 0 and again.answers_cached == 160
    assert online_again.calls_made == 0
    batch = {(a["content_hash"], a["pass_index"]): a for a in _answers(synth_ws)}
    assert len(batch) == r.calls_made and abs(sum(a["cost_usd"] for a in batch.values()) - r.cost_usd) < 1e-12

    # the same items online, in a second workspace holding the same dataset: same answers, online price
    ws2 = Workspace.open(tmp_path / "online")
    make_synth_dataset(ws2, synth_task)
    with run_simulated_teacher(ws2, "synth", cfg) as url:
        label_items(ws2, "synth", _ids(ws2, 80), _teacher(url, synth_task),
                    LabelConfig(passes=2, adaptive_passes=False), progress=False)
    online = {(a["content_hash"], a["pass_index"]): a for a in _answers(ws2)}
    common = set(batch) & set(online)
    assert len(common) >= 160
    for k in common:
        assert batch[k]["label"] == online[k]["label"] and batch[k]["confidence"] == online[k]["confidence"]
        assert batch[k]["cost_usd"] == pytest.approx(online[k]["cost_usd"] * cfg.batch_price_ratio, rel=1e-9)
    with synth_ws.store() as s:
        assert s.batch_cost_totals()["answers"] == r.calls_made
        labels = s.query("SELECT COUNT(*) AS n FROM labels WHERE source='teacher'")[0]["n"]
    assert labels == 80


def test_partial_failures_expired_and_failed_batches_are_asked_again_never_twice(synth_ws, synth_task):
    ids = _ids(synth_ws, 60)
    cfg = SimConfig(latency_ms=0, rate_429=0, malformed_rate=0.05, batch_line_failure_rate=0.15,
                    batch_latency_s=0.3, expire_batches=(1,), fail_batches=(2,))
    runs = []
    with run_simulated_teacher(synth_ws, "synth", cfg) as url:
        t = _teacher(url, synth_task)
        for _ in range(6):
            runs.append(label_items_batch(synth_ws, "synth", ids, t,
                                          LabelConfig(passes=2, tie_break=False, adaptive_passes=False),
                                          BatchConfig(poll_s=0.05, retry_rounds=1), progress=False))
            if runs[-1].failed == 0 and runs[-1].unlabelled == 0:
                break
        stats = sim_stats(url)
    first = runs[0]
    assert first.failed > 0 and {"timeout", "http_5xx"} <= set(first.errors)  # expired lines, server errors
    assert first.batches_submitted == 3  # expired, failed validation, then a follow-up
    assert runs[-1].failed == 0 and runs[-1].labelled + runs[-1].disagreed == 60 and runs[-1].unlabelled == 0
    answers = _answers(synth_ws)
    ok = Counter((a["content_hash"], a["pass_index"]) for a in answers if a["ok"])
    failed = Counter((a["content_hash"], a["pass_index"]) for a in answers if not a["ok"])
    assert set(ok) == {(h, p) for h in {a["content_hash"] for a in answers} for p in (0, 1)} and max(ok.values()) == 1
    # every submission of a key is one failure stored and retried, plus the one that answered it
    assert _submitted(synth_ws) == ok + failed
    assert stats["batch_lines"] == sum(r.calls_made for r in runs) - sum(
        1 for a in answers if a["error_kind"] == "timeout")  # expired lines never ran


def test_sigkill_after_submit_then_resume_pays_nothing_twice(synth_ws, synth_task):
    """Kill -9 `flywheel label --batch` while its batch runs; the next run collects that batch and submits none."""
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=4.0)) as url:
        spec = f"{url}|{model_id('synth')}"
        env = {**os.environ, "FLYWHEEL_WORKSPACE": str(synth_ws.root)}
        proc = subprocess.Popen([str(Path(sys.executable).with_name("flywheel")), "label", "synth", "--split", "all",
                                 "--limit", "100", "--teacher", spec, "--batch", "--batch-poll-s", "0.1",
                                 "--no-tie-break"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail("the labelling subprocess ended before it could be killed")
                with synth_ws.store() as s:
                    if any(b.batch_id for b in s.batches("synth")):
                        break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        with synth_ws.store() as s:
            (rec,) = s.batches("synth")
        assert rec.collected_at is None and rec.status in ("validating", "in_progress") and _answers(synth_ws) == []
        r = label_items_batch(synth_ws, "synth", _ids(synth_ws, 100), _teacher(url, synth_task),
                              LabelConfig(passes=2, tie_break=False), FAST, progress=False)
        stats = sim_stats(url)
    assert r.batches_resumed == 1 and r.batches_submitted == 0 and stats["batches_created"] == 1
    assert stats["batch_lines"] == r.calls_made == 200 and max(stats["per_key"].values()) == 1
    assert r.labelled + r.disagreed == 100 and r.failed == 0
    assert r.cost_usd == pytest.approx(sum(a["cost_usd"] for a in _answers(synth_ws)))


def test_batch_created_just_before_a_kill_is_found_by_its_submission_id(synth_ws, synth_task):
    ids = _ids(synth_ws, 30)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.3)) as url:
        t = _teacher(url, synth_task)
        first = label_items_batch(synth_ws, "synth", ids, t, LabelConfig(passes=1),
                                  BatchConfig(poll_s=0.05, wait_s=0), progress=False)
        assert first.batches_pending == 1 and first.calls_made == 0
        with synth_ws.store() as s:  # as if killed after the batch was created, before its id was recorded
            s.execute("UPDATE teacher_batches SET batch_id=NULL, status='uploaded'")
        r = label_items_batch(synth_ws, "synth", ids, t, LabelConfig(passes=1), FAST, progress=False)
        stats = sim_stats(url)
    assert stats["batches_created"] == 1 and r.batches_resumed == 1 and r.batches_submitted == 0
    assert r.calls_made == 30 and max(stats["per_key"].values()) == 1


def test_two_runs_collecting_one_batch_at_once_store_it_once(synth_ws, synth_task, monkeypatch):
    """A `--batch` run and a `--cancel-batches` (or a second `--batch`) polling the same batch both see it end: the
    one that stores it wins, the other counts nothing.  Before, failed lines were stored twice and both runs
    reported the calls and their cost."""
    from llm_flywheel.pipeline import batch_labeling

    ids = _ids(synth_ws, 40)
    cfg = SimConfig(**QUIET, batch_latency_s=0.2, batch_line_failure_rate=0.2)
    with run_simulated_teacher(synth_ws, "synth", cfg) as url:
        t = _teacher(url, synth_task)
        lab = LabelConfig(passes=1)
        left = label_items_batch(synth_ws, "synth", ids, t, lab, BatchConfig(poll_s=0.05, wait_s=0), progress=False)
        assert left.batches_pending == 1
        wait, inner, raced = batch_labeling.BatchRun.wait, [], []

        def wait_then_lose_the_race(self, rec):
            st = wait(self, rec)  # the batch has ended; another run collects it before this one does
            if st is not None and not raced:
                raced.append(rec.id)
                inner.append(label_items_batch(synth_ws, "synth", ids, t, lab, FAST, progress=False))
            return st

        monkeypatch.setattr(batch_labeling.BatchRun, "wait", wait_then_lose_the_race)
        outer = label_items_batch(synth_ws, "synth", ids, t, lab, FAST, progress=False)
    (won,) = inner
    answers = _answers(synth_ws)
    assert won.batches_resumed == 1 and won.lines_failed > 0 and won.calls_made == 40 + won.lines_submitted
    # every submitted line (the first batch's 40 and the winner's follow-up for its failed lines) stored once
    assert _submitted(synth_ws) == Counter((a["content_hash"], a["pass_index"]) for a in answers)
    assert {a["run_id"] for a in answers} == {won.run_id}
    assert outer.batches_resumed == 1 and outer.calls_made == 0 and outer.cost_usd == 0 and outer.failed == 0


def test_budget_cap_is_respected_and_the_rest_waits_for_the_next_run(synth_ws, synth_task):
    ids = _ids(synth_ws, 100)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.2)) as url:
        t = _teacher(url, synth_task)
        probe = label_items_batch(synth_ws, "synth", ids[:10], t, LabelConfig(passes=1), FAST, progress=False)
        per_line = probe.cost_usd / probe.calls_made
        budget = 40 * per_line
        r = label_items_batch(synth_ws, "synth", ids, t, LabelConfig(passes=1, budget_usd=budget), FAST,
                              progress=False)
        more = label_items_batch(synth_ws, "synth", ids, t, LabelConfig(passes=1), FAST, progress=False)
    assert r.cost_usd <= budget and r.stopped_reason == "budget" and r.stopped_by_budget
    assert 0 < r.calls_made < 90 and r.unlabelled > 0
    assert more.calls_made == 90 - r.calls_made and more.unlabelled == 0


def test_budget_with_no_price_known_starts_with_a_small_probe_batch(synth_ws, synth_task):
    ids = _ids(synth_ws, 60)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.2)) as url:
        r = label_items_batch(synth_ws, "synth", ids, _teacher(url, synth_task),
                              LabelConfig(passes=1, budget_usd=1e-9), FAST, progress=False)
    assert r.batches_submitted == 1 and r.calls_made <= 10 and r.stopped_reason == "budget"


def test_plan_shows_online_and_batch_prices(synth_ws, synth_task):
    ids = _ids(synth_ws, 40)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.2)) as url:
        t = _teacher(url, synth_task)
        label_items(synth_ws, "synth", ids[:20], t, LabelConfig(passes=1), progress=False)
        p_online = plan_both(synth_ws, "synth", ids, t, LabelConfig(passes=1))
        label_items_batch(synth_ws, "synth", ids[:30], t, LabelConfig(passes=1), FAST, progress=False)
        p = plan_both(synth_ws, "synth", ids, t, LabelConfig(passes=1))
        res = CliRunner().invoke(main, ["-w", str(synth_ws.root), "label", "synth", "--split", "all", "--limit", "40",
                                        "--teacher", f"{url}|{model_id('synth')}", "--passes", "1", "--plan",
                                        "--json"])
    assert p_online["est_cost_per_call_batch_usd"] == pytest.approx(p_online["est_cost_per_call_usd"] * 0.5)
    # after batch answers exist, each mode is priced from its own answers: online stays the online mean
    assert p["est_cost_per_call_usd"] == pytest.approx(p_online["est_cost_per_call_usd"])
    assert p["calls_needed"] == 10 and p["est_cost_batch_usd"] < p["est_cost_usd"]
    assert res.exit_code == 0, res.output
    assert "batch" in res.output and "online" in res.output
    js = json.loads(res.output[res.output.index("{"):])
    assert js["est_cost_batch_usd"] == pytest.approx(p["est_cost_batch_usd"])


def test_api_key_sent_only_in_the_header_and_never_written(synth_ws, synth_task, monkeypatch, caplog, capfd):
    key = "sk-FLYWHEEL-batch-canary-51c0ffee"
    monkeypatch.setenv("CANARY_KEY", key)
    monkeypatch.setenv("WRONG_KEY", "sk-FLYWHEEL-wrong-canary-0bad")
    caplog.set_level(logging.DEBUG)
    ids = _ids(synth_ws, 20)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.2, api_key=key,
                                                             batch_line_failure_rate=0.2)) as url:
        ok = label_items_batch(synth_ws, "synth", ids, _teacher(url, synth_task, api_key_env="CANARY_KEY"),
                               LabelConfig(passes=1), FAST)
        bad = label_items_batch(synth_ws, "synth", _ids(synth_ws, 40), _teacher(url, synth_task, api_key_env="WRONG_KEY"),
                                LabelConfig(passes=1), FAST)
    assert ok.calls_made >= 20 and ok.stopped_reason is None  # the key was sent: the server answered
    assert bad.stopped_reason == "fatal_error" and "WRONG_KEY" in (bad.stopped_message or "")
    out = capfd.readouterr()
    for secret in (key, "sk-FLYWHEEL-wrong-canary-0bad"):
        hits = [p for p in synth_ws.root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert hits == [] and secret not in caplog.text and secret not in out.out + out.err
        assert secret not in (bad.stopped_message or "")


def test_a_round_larger_than_one_batch_goes_out_as_several(synth_ws, synth_task):
    ids = _ids(synth_ws, 20)
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.2)) as url:
        t = _teacher(url, synth_task)
        by_lines = label_items_batch(synth_ws, "synth", ids[:10], t, LabelConfig(passes=1),
                                     BatchConfig(poll_s=0.05, max_lines=4), progress=False)
        by_bytes = label_items_batch(synth_ws, "synth", ids[10:], t, LabelConfig(passes=1),
                                     BatchConfig(poll_s=0.05, max_bytes=5000), progress=False)
        stats = sim_stats(url)
    assert by_lines.batches_submitted == 3 and by_lines.calls_made == 10
    assert by_bytes.batches_submitted >= 2 and by_bytes.calls_made == 10
    assert stats["batches_created"] == by_lines.batches_submitted + by_bytes.batches_submitted
    assert max(stats["per_key"].values()) == 1 and len(stats["per_key"]) == 20


def test_adaptive_passes_decided_between_batches_like_online(synth_ws, synth_task, tmp_path):
    """The first batch asks the calibration sample every pass and the rest pass 0; the next asks later passes only
    below the learnt cutoff -- the same keys, the same cutoff as online adaptive labelling of the same items."""
    cfg = SimConfig(**QUIET, batch_latency_s=0.2)
    lc = LabelConfig(passes=2, calibration_items=80, agreement_target=0.8)
    ids = _ids(synth_ws, 300)
    with run_simulated_teacher(synth_ws, "synth", cfg) as url:
        r = label_items_batch(synth_ws, "synth", ids, _teacher(url, synth_task), lc, FAST, progress=False)
    ws2 = Workspace.open(tmp_path / "online")
    make_synth_dataset(ws2, synth_task)
    with run_simulated_teacher(ws2, "synth", cfg) as url:
        o = label_items(ws2, "synth", _ids(ws2, 300), _teacher(url, synth_task), lc, progress=False)
    def keys(ws):
        return {(a["content_hash"], a["pass_index"]) for a in _answers(ws) if a["ok"]}

    assert r.adaptive_passes is not None and r.adaptive_passes.cutoff is not None
    assert r.adaptive_passes.cutoff == o.adaptive_passes.cutoff and r.adaptive_passes.skipped_items > 0
    assert keys(synth_ws) == keys(ws2) and r.calls_made == o.calls_made < 2 * 300
    assert r.batches_submitted >= 2 and r.labelled + r.disagreed == 300


def test_cli_batch_that_is_still_running_exits_5_and_the_rerun_collects_it(synth_ws):
    w = ["-w", str(synth_ws.root)]
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.5)) as url:
        args = [*w, "label", "synth", "--split", "all", "--limit", "20", "--teacher", f"{url}|{model_id('synth')}",
                "--passes", "1", "--batch", "--batch-poll-s", "0.05", "--no-progress"]
        first = CliRunner().invoke(main, [*args, "--batch-wait-s", "0"])
        second = CliRunner().invoke(main, [*args, "--json"])
        stats = sim_stats(url)
    assert first.exit_code == 5, first.output
    assert "still running" in first.output and "re-run" in first.output
    assert second.exit_code == 0, second.output
    js = json.loads(second.output[second.output.rindex('{\n  "calls_made"'):])
    assert js["batches_resumed"] == 1 and js["batches_submitted"] == 0 and js["calls_made"] == 20
    assert stats["batches_created"] == 1
