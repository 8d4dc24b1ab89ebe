"""`flywheel label` / `flywheel teacher quality` end to end against the simulated teacher over HTTP."""

from __future__ import annotations

import json

from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher, sim_stats


def test_plan_then_label_then_rerun_then_quality(synth_ws):
    runner = CliRunner()
    w = ["-w", str(synth_ws.root)]
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, malformed_rate=0, rate_429=0)) as url:
        spec = f"{url}|{model_id('synth')}"
        res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "50", "--teacher", spec, "--plan", "--json"])
        assert res.exit_code == 0, res.output
        assert "SIMULATED" in res.output
        p = json.loads(res.output[res.output.index("{"):])
        assert p["calls_needed"] == 100 and sim_stats(url)["requests"] == 0
        res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "50", "--teacher", spec,
                                   "--concurrency", "8", "--json"])
        assert res.exit_code == 0, res.output
        r1 = json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])
        res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "50", "--teacher", spec, "--json"])
        r2 = json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])
    assert r1["calls_made"] >= 100 and r2["calls_made"] == 0 and r2["answers_cached"] == 100
    res = runner.invoke(main, [*w, "teacher", "quality", "synth", "--json"])
    assert res.exit_code == 0, res.output
    assert "SIMULATED" in res.output
    q = json.loads(res.output[res.output.index('{\n  "dataset"'):])
    assert q["n"] >= 100 and 0 < q["accuracy"] <= 1 and q["simulated"] is True and q["ece"] is not None
    s = synth_ws.store()
    assert s.latest_report("teacher_quality", "synth:simulated/synth-teacher")["n"] == q["n"]
    s.close()


def test_label_errors_are_clear(synth_ws, monkeypatch):
    runner = CliRunner()
    w = ["-w", str(synth_ws.root)]
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    res = runner.invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "5"])
    assert res.exit_code != 0 and "OPENROUTER_API_KEY is not set" in res.output
    res = runner.invoke(main, [*w, "label", "nope", "--teacher", "ollama:x"])
    assert res.exit_code != 0 and "not in this workspace" in res.output
    res = runner.invoke(main, [*w, "label", "synth", "--teacher", "bogus"])
    assert res.exit_code != 0 and "PROVIDER:MODEL" in res.output
    for cmd in (["label"], ["teacher", "simulate"], ["teacher", "quality"], ["review", "import"]):
        assert runner.invoke(main, [*cmd, "--help"]).exit_code == 0


def test_label_exit_codes_say_why_it_stopped(synth_ws, monkeypatch):
    """0 done; 2 bad configuration; 3 stopped on a fatal teacher error; 4 call cap reached; 5 items left unanswered."""
    from fault_server import FaultServer, status

    from llm_flywheel.interfaces.cli import ExitCode

    runner = CliRunner()
    w = ["-w", str(synth_ws.root)]
    base = [*w, "label", "synth", "--split", "all", "--passes", "1", "--no-tie-break", "--max-retries", "0"]
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    res = runner.invoke(main, [*base, "--limit", "3"])  # default teacher, no key in the environment
    assert res.exit_code == ExitCode.USAGE and "OPENROUTER_API_KEY" in res.output
    with FaultServer(default=status(401, {"error": {"message": "bad key"}})) as srv:
        res = runner.invoke(main, [*base, "--limit", "20", "--teacher", f"{srv.url}|fault-model", "--concurrency", "1"])
        assert res.exit_code == ExitCode.TEACHER_FAILED, res.output
        assert "stopped early" in res.output and len(srv.requests) < 20
    with FaultServer(default=status(503, {"error": {"message": "overloaded"}})) as srv:
        res = runner.invoke(main, [*base, "--limit", "4", "--teacher", f"{srv.url}|fault-model", "--no-progress"])
        assert res.exit_code == ExitCode.INCOMPLETE, res.output
        assert "re-run" in res.output
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=0, malformed_rate=0, rate_429=0)) as url:
        spec = f"{url}|{model_id('synth')}"
        res = runner.invoke(main, [*base, "--limit", "30", "--teacher", spec, "--max-calls", "10", "--json"])
        assert res.exit_code == ExitCode.BUDGET, res.output
        assert json.loads(res.output[res.output.rindex('{\n  "calls_made"'):])["exit_code"] == ExitCode.BUDGET
        res = runner.invoke(main, [*base, "--limit", "30", "--teacher", spec, "--no-progress"])
        assert res.exit_code == ExitCode.OK, res.output


def test_teacher_check_shows_what_the_endpoint_takes(synth_ws):
    """`flywheel teacher check` against an OpenAI reasoning model: one answer, and the requests it settled on."""
    from fault_server import FaultServer, openai_reasoning_model

    with FaultServer(default=openai_reasoning_model(thought=50)) as srv:
        r = CliRunner().invoke(main, ["-w", str(synth_ws.root), "teacher", "check", f"{srv.url}|gpt-5-mini",
                                      "--dataset", "synth", "--api-key-env", ""])
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "'ok': True" in out and "max_completion_tokens 300" in out and "temperature the model default" in out
    assert "stepped down: legacy_max_tokens=on -> legacy_max_tokens=off" in out
