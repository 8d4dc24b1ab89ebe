"""What a newcomer meets first: a wrong --workspace or a mistyped dataset name is one ``Error:`` line naming the fix
and the exit status `flywheel --help` documents (2 for an unknown dataset), for every command that takes one."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main

COMMANDS = [
    ["predict", "nosuch", "--text", "hi"],
    ["calibrate", "nosuch"],
    ["evaluate", "nosuch"],
    ["serve", "nosuch", "--port", "1"],
    ["review", "queue", "nosuch"],
    ["review", "export", "nosuch"],
    ["review", "effect", "nosuch"],
    ["data", "check", "nosuch"],
    ["label", "nosuch", "--plan"],
    ["report", "nosuch"],
    ["train", "nosuch"],
    ["teacher", "quality", "nosuch"],
    ["run", "nosuch", "--simulated"],
    ["run", "nosuch", "--teacher", "simulated"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_unknown_dataset_is_exit_2_naming_data_add(tmp_path, args):
    """evaluate/calibrate said "has no trained model to serve; run `flywheel train nosuch`" (exit 1), the others
    exit 1 where `flywheel --help` promises 2 for an unknown dataset."""
    ws = str(tmp_path / "ws")
    assert CliRunner().invoke(main, ["-w", ws, "init"]).exit_code == 0
    r = CliRunner().invoke(main, ["-w", ws, *args], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert "'nosuch' is not in this workspace" in r.output and "flywheel data add" in r.output, r.output


@pytest.mark.parametrize("args", [*COMMANDS, ["review", "import", "x.csv"]],
                         ids=[" ".join(a[:2]) for a in [*COMMANDS, ["review", "import"]]])
def test_no_workspace_is_an_error_line_not_a_traceback(tmp_path, args):
    """These commands raised FileNotFoundError with a traceback when the folder held no workspace."""
    missing = tmp_path / "nowhere"
    r = CliRunner().invoke(main, ["-w", str(missing), *args], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "no workspace at" in r.output and "--workspace" in r.output and "Traceback" not in r.output, r.output
    assert not missing.exists()


@pytest.mark.parametrize("option,value", [("--target-accuracy", "1.5"), ("--target-accuracy", "0"), ("--delta", "0"),
                                          ("--delta", "1"), ("--max-teacher-fraction", "2"),
                                          ("--max-teacher-fraction", "-0.1")])
def test_calibrate_goal_out_of_range_is_a_usage_error(tmp_path, option, value):
    """`flywheel calibrate --target-accuracy 1.5` exited 1 from deep inside the calibration; a bad option value is 2
    and names the option and its range, before any work."""
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "calibrate", "any", option, value],
                           catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert option in r.output and "range" in r.output, r.output


def test_serve_on_a_port_in_use_or_out_of_range_is_exit_2(tmp_path):
    """A port already taken: exit 2 naming --port before any model is loaded (uvicorn printed its own error after
    "serving ... on" and exited 3, the teacher-error status); --port 99999 was an OverflowError traceback."""
    import socket

    ws = str(tmp_path / "ws")
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(30)))
    assert CliRunner().invoke(main, ["-w", ws, "data", "add", "text", str(tmp_path / "t.csv"),
                                     "--no-progress"]).exit_code == 0
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = CliRunner().invoke(main, ["-w", ws, "serve", "t", "--port", str(port)], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert f"cannot listen on 127.0.0.1:{port}" in r.output and "--port" in r.output and "serving" not in r.output
    r = CliRunner().invoke(main, ["-w", ws, "serve", "t", "--port", "99999"], catch_exceptions=False)
    assert r.exit_code == 2 and "--port" in r.output, r.output


@pytest.mark.parametrize("option,value", [("--passes", "0"), ("--concurrency", "0"), ("--limit", "-3"),
                                          ("--budget-usd", "-1"), ("--max-retries", "-1"), ("--rpm", "0"),
                                          ("--batch-wait-s", "-5")])
def test_label_bad_numbers_are_usage_errors_not_tracebacks(tmp_path, option, value):
    """--passes 0 / --concurrency 0 / --budget-usd -1 were ValueError tracebacks, --limit -3 labelled the whole split
    (SQL LIMIT -3 is no limit); each is now exit 2 naming the value, before any call."""
    ws = str(tmp_path / "ws")
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(30)))
    assert CliRunner().invoke(main, ["-w", ws, "data", "add", "text", str(tmp_path / "t.csv"),
                                     "--no-progress"]).exit_code == 0
    r = CliRunner().invoke(main, ["-w", ws, "label", "t", "--simulated", "--no-progress", option, value],
                           catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert value.lstrip("-") in r.output and "calls made" not in r.output, r.output


@pytest.mark.parametrize("option,value", [("--limit", "-3"), ("--limit", "0"), ("--concurrency", "0"),
                                          ("--show", "-1")])
def test_predict_bad_numbers_are_usage_errors(tmp_path, option, value):
    """`flywheel predict --split stream --limit -3` answered the whole split (SQL LIMIT -3 is no limit)."""
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "predict", "any", "--split", "stream", option, value],
                           catch_exceptions=False)
    assert r.exit_code == 2 and option in r.output and "range" in r.output, r.output


@pytest.mark.parametrize("args", [["review", "export", "any", "--limit", "-3"], ["review", "queue", "any", "--limit", "0"],
                                  ["review", "push", "any", "--limit", "-1"],
                                  ["data", "add", "fashion-mnist", "--limit", "-5"]])
def test_review_and_data_limits_are_positive(tmp_path, args):
    """`review export --limit -3` wrote the whole queue and `review queue --limit 0` showed it all."""
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), *args], catch_exceptions=False)
    assert r.exit_code == 2 and "--limit" in r.output and "range" in r.output, r.output
