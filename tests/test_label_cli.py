"""`flywheel label` chooses between adaptive passes (default for k >= 2) and fixed k (--fixed-passes)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

QUIET = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0)


def _label(runner, w, spec, *extra):
    res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--teacher", spec, "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])


def _label_twice(ws, *extra):
    runner, w = CliRunner(), ["-w", str(ws.root)]
    with run_simulated_teacher(ws, "synth", QUIET) as url:
        spec = f"{url}|{model_id('synth')}"
        first = _label(runner, w, spec, *extra)
        again = _label(runner, w, spec, *extra)
    return first, again


def test_fixed_passes_asks_every_item_k_times(synth_ws):
    n = len(synth_ws.store().items("synth"))
    first, again = _label_twice(synth_ws, "--fixed-passes")
    assert first["calls_made"] >= 2 * n and again["calls_made"] == 0


def test_adaptive_passes_are_the_default_and_ask_fewer(synth_ws):
    """500 items: above the 300-item calibration sample, so items the first pass is sure of get no second pass."""
    n = len(synth_ws.store().items("synth"))
    first, again = _label_twice(synth_ws)
    assert n < first["calls_made"] < 2 * n and again["calls_made"] == 0


def test_simulated_teacher_by_flag_or_spec_like_run_and_predict(synth_ws):
    """`flywheel label --simulated` and `--teacher simulated` start the simulated teacher for the command (as
    `flywheel run --simulated` and `flywheel predict --teacher simulated` do) instead of 'cannot read teacher spec';
    both name the same model, so the second run reuses the first's answers."""
    runner, w = CliRunner(), ["-w", str(synth_ws.root)]
    res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "20", "--simulated", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "SIMULATED" in res.output
    first = json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])
    res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "20", "--teacher", "simulated", "--json",
                               "--no-progress"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])
    assert first["calls_made"] >= 20 and again["calls_made"] == 0 and again["answers_cached"] > 0
    assert model_id("synth") in res.output


def test_ctrl_c_says_the_answers_are_kept_and_the_rerun_resumes(synth_ws):
    """SIGINT in the middle of `flywheel label` (a real process, one call in flight at a time): a message saying
    what is kept and how to resume instead of click's bare "Aborted!"; the re-run's plan counts the stored answers."""
    import os
    import signal
    import subprocess
    import sys
    import time

    boot = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored\n"
            "from llm_flywheel.interfaces.cli import main; main()")
    cmd = [sys.executable, "-c", boot, "-w", str(synth_ws.root),
           "label", "synth", "--split", "all", "--simulated", "--concurrency", "1", "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    lines = []
    for line in p.stdout:  # the plan is printed before the first call
        lines.append(line)
        if "calls needed" in line:
            break
    time.sleep(3)  # some answers arrive (the simulator answers in ~0.2 s), far fewer than the ~600 calls asked
    p.send_signal(signal.SIGINT)
    out = "".join(lines) + p.communicate(timeout=60)[0]
    assert p.returncode == 1, out
    assert "interrupted" in out and "run the same command again" in out and "Aborted!" not in out, out
    r = CliRunner().invoke(main, ["-w", str(synth_ws.root), "label", "synth", "--split", "all", "--simulated",
                                  "--plan", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.rindex('{\n  "dataset"'):])["calls_cached"] > 0


def test_a_teacher_answering_only_off_list_labels_is_a_failure_naming_the_fix(synth_ws, synth_task):
    """Every answer names a label the task does not have (a real HTTP server on 127.0.0.1): exit 1 and a warning
    naming the task's labels and `flywheel teacher check`, where it used to exit 0 with 'disagreed 5'."""
    from fault_server import FaultServer, ok

    with FaultServer(default=ok('{"label": "Payments", "confidence": 0.9}')) as srv:
        res = CliRunner().invoke(main, ["-w", str(synth_ws.root), "label", "synth", "--split", "all", "--limit", "5",
                                        "--teacher", f"{srv.url}|offlist", "--max-retries", "0", "--no-progress"])
    out = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "outside the task's list" in out and "flywheel teacher check" in out, res.output
    assert ", ".join(synth_task.labels) in out, res.output


def test_a_server_answering_only_5xx_stops_the_run_naming_the_fix(synth_ws):
    """Every request answered HTTP 500 (a real server on 127.0.0.1): the run stops after a few answers with exit 3
    and says what to check, where it used to retry item after item for minutes and end with 'incomplete'."""
    from fault_server import FaultServer, status

    with FaultServer(default=status(500)) as srv:
        res = CliRunner().invoke(main, ["-w", str(synth_ws.root), "label", "synth", "--split", "all", "--limit", "40",
                                        "--passes", "1", "--teacher", f"{srv.url}|broken", "--max-retries", "0",
                                        "--concurrency", "1", "--no-progress", "--json"])
        asked = len(srv.requests)
    out = " ".join(res.output.split())
    assert res.exit_code == 3, res.output
    assert "'http_5xx'" in out and "check its log" in out, res.output
    assert asked < 40


def test_a_5xx_after_answers_is_never_a_reason_to_stop(synth_ws):
    """The same 500s after the server has answered once: retried next run (exit 5), never stopped (exit 3)."""
    from fault_server import FaultServer, ok, status

    with FaultServer(script=[ok()], default=status(500)) as srv:
        res = CliRunner().invoke(main, ["-w", str(synth_ws.root), "label", "synth", "--split", "all", "--limit", "12",
                                        "--passes", "1", "--teacher", f"{srv.url}|flaky", "--max-retries", "0",
                                        "--concurrency", "1", "--no-progress"])
    assert res.exit_code == 5, res.output


def test_the_default_labels_what_train_and_calibrate_need_and_never_test(synth_ws):
    """`flywheel label` then `flywheel calibrate` works as `ds.label()` then `model.calibrate()` does: train, val
    and calib by default (calibrate stopped on an unlabelled calib split before); test stays for measurement."""
    from llm_flywheel.pipeline.splits import make_splits

    with synth_ws.store() as s:
        make_splits(s, "synth")
        want = {it.id for it in s.items("synth", split=["train", "val", "calib"])}
    runner, w = CliRunner(), ["-w", str(synth_ws.root)]
    res = runner.invoke(main, [*w, "label", "synth", "--simulated", "--no-progress", "--fixed-passes", "--passes", "1"])
    assert res.exit_code == 0, res.output
    with synth_ws.store() as s:
        asked = {r["item_id"] for r in s.query("SELECT DISTINCT item_id FROM teacher_answers")}
    assert asked == want
    res = runner.invoke(main, [*w, "label", "synth", "--simulated", "--no-progress", "--split", "calib, val",
                               "--json"])
    assert res.exit_code == 0 and json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])["calls_made"] > 0


def test_extra_request_fields_from_the_environment_reach_every_call_and_bad_ones_are_refused(synth_ws, monkeypatch):
    """$FLYWHEEL_TEACHER_EXTRA_BODY: a provider's own knob (OpenAI's reasoning_effort) from the command line."""
    from fault_server import FaultServer, ok

    w = ["-w", str(synth_ws.root), "label", "synth", "--split", "all", "--limit", "3", "--no-progress"]
    with FaultServer(default=ok('{"label": "bar", "confidence": 0.9}')) as srv:
        monkeypatch.setenv("FLYWHEEL_TEACHER_EXTRA_BODY", '{"reasoning_effort": "low"}')
        res = CliRunner().invoke(main, [*w, "--teacher", f"{srv.url}|m"])
        assert res.exit_code == 0, res.output
        assert srv.requests and all(r["body"].get("reasoning_effort") == "low" for r in srv.requests)
        for bad, words in (("low", "is not JSON"), ('{"model": "x"}', "not model or messages")):
            monkeypatch.setenv("FLYWHEEL_TEACHER_EXTRA_BODY", bad)
            n = len(srv.requests)
            res = CliRunner().invoke(main, [*w, "--teacher", f"{srv.url}|m"])
            assert res.exit_code == 2 and words in " ".join(res.output.split()), res.output
            assert "FLYWHEEL_TEACHER_EXTRA_BODY" in res.output and len(srv.requests) == n
    # commands that build the simulated teacher themselves say it too (they raised a traceback)
    for cmd in (["run", "synth", "--simulated", "--rounds", "1"], ["serve", "synth", "--teacher", "simulated"]):
        res = CliRunner().invoke(main, ["-w", str(synth_ws.root), *cmd])
        assert res.exit_code == 2 and "FLYWHEEL_TEACHER_EXTRA_BODY" in res.output, (cmd, res.output)
