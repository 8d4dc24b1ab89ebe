"""The teacher's spend cap in serving, through live services on 127.0.0.1 and the real store: a call cap, a USD
budget from the costs the answers carry, one cap shared by two services on one store, a teacher whose answers carry
no cost, and the CLI's refusal of a cap without a teacher."""

from __future__ import annotations

import httpx
import pytest

from fault_server import FaultServer, ok
from llm_flywheel.interfaces.serve import create_app
from llm_flywheel.pipeline.calibration import DEFER_ALL
from llm_flywheel.pipeline.serve_budget import TeacherSpendCap
from test_cascade import SYNTH_TASK, trained_calibrated_ws
from test_serve import running

PNG = {"Content-Type": "image/png"}
PRICED = {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320, "cost": 0.001}


@pytest.fixture(scope="module")
def cal_ws(tmp_path_factory):
    return trained_calibrated_ws(tmp_path_factory.mktemp("budget") / "ws", epochs=1)


@pytest.fixture(scope="module")
def pngs(cal_ws):
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=24)
    return [(ws.root / it.blob_path).read_bytes() for it in items]


def _teacher(ws, url, model):
    from llm_flywheel.teachers.registry import teacher_from_spec

    return teacher_from_spec(f"{url}|{model}", SYNTH_TASK, api_key_env="", workspace=ws)


def _app(ws, url, model, **cfg):
    return create_app(ws, "synth", teacher=_teacher(ws, url, model), threshold=DEFER_ALL, deadline_s=20, **cfg)


def _post(url, png):
    r = httpx.post(f"{url}/v1/predict", content=png, headers=PNG, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["source"]


def test_a_call_cap_stops_buying_and_answers_already_bought_stay_free(cal_ws, pngs):
    ws, _ = cal_ws
    with FaultServer(default=ok(usage=PRICED)) as fs:
        app = _app(ws, fs.url, "cap-calls", teacher_max_calls=3)
        with running(app) as url:
            sources = [_post(url, p) for p in pngs[:6]]
            again = _post(url, pngs[0])  # bought before the cap was reached: reused, not bought
            ready = httpx.get(f"{url}/readyz").json()["teacher"]["spend_cap"]
            metrics = httpx.get(f"{url}/metrics").text
        asked = len(fs.requests)
    assert sources == ["teacher"] * 3 + ["student_fallback"] * 3 and again == "teacher"
    assert asked == 3
    assert ready["calls"] == 3 and ready["max_calls"] == 3 and ready["refused_total"] == 3 and not ready["unpriced"]
    assert "flywheel_teacher_spend_refused_total 3" in metrics


def test_a_usd_budget_counts_what_the_answers_cost(cal_ws, pngs):
    ws, _ = cal_ws
    with FaultServer(default=ok(usage=PRICED)) as fs:  # $0.001 an answer
        app = _app(ws, fs.url, "cap-usd", teacher_budget_usd=0.0035)
        with running(app) as url:
            sources = [_post(url, p) for p in pngs[6:12]]
            ready = httpx.get(f"{url}/readyz").json()["teacher"]["spend_cap"]
    # a call is reserved at 1.2 x the dearest answer: after 2 answers $0.0032 fits, after 3 $0.0042 does not
    assert sources == ["teacher"] * 3 + ["student_fallback"] * 3
    assert ready["spent_usd"] == pytest.approx(0.003) and ready["budget_usd"] == 0.0035


def test_two_services_on_one_store_share_one_cap(cal_ws, pngs):
    """What one service bought counts against the other's cap: the spend is read from the store they share (as Ray
    Serve replicas or services on several machines do)."""
    ws, _ = cal_ws
    with FaultServer(default=ok(usage=PRICED)) as fs:
        a, b = (_app(ws, fs.url, "cap-shared", teacher_max_calls=4) for _ in range(2))
        with running(a) as ua, running(b) as ub:
            sources = [_post(ua if i % 2 else ub, p) for i, p in enumerate(pngs[12:20])]
        asked = len(fs.requests)
    assert sources.count("teacher") == 4 and asked == 4
    assert sources[4:] == ["student_fallback"] * 4


def test_a_usd_budget_on_answers_without_a_cost_stops_and_says_so(cal_ws, pngs, caplog):
    import logging

    ws, _ = cal_ws
    with FaultServer(default=ok()) as fs, caplog.at_level(logging.WARNING, logger="llm_flywheel.pipeline.serve_budget"):
        app = _app(ws, fs.url, "cap-unpriced", teacher_budget_usd=5.0)
        with running(app) as url:
            sources = [_post(url, p) for p in pngs[20:23]]
            ready = httpx.get(f"{url}/readyz").json()["teacher"]["spend_cap"]
    assert sources == ["teacher", "student_fallback", "student_fallback"]
    assert ready["unpriced"] is True
    assert "carry no cost" in caplog.text and "--teacher-max-calls" in caplog.text


def test_bad_caps_are_refused_before_serving(cal_ws):
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    ws, _ = cal_ws
    r = CliRunner().invoke(main, ["-w", str(ws.root), "serve", "synth", "--teacher-max-calls", "5"])
    assert r.exit_code == 2 and "give --teacher SPEC" in r.output
    r = CliRunner().invoke(main, ["-w", str(ws.root), "serve", "synth", "--teacher-budget-usd", "-1"])
    assert r.exit_code == 2 and "--teacher-budget-usd must be > 0" in r.output
    with pytest.raises(ValueError, match="needs a teacher"):
        create_app(ws, "synth", teacher_max_calls=5)
    with pytest.raises(ValueError, match="budget_usd or max_calls"):
        TeacherSpendCap()


def test_billed_replies_without_a_usable_answer_count_against_the_cap(cal_ws, pngs):
    """An unparseable reply is paid for but stores nothing: the service counts it itself."""
    ws, _ = cal_ws
    with FaultServer(default=ok('{"label": "ring", "confid', usage=PRICED)) as fs:
        app = _app(ws, fs.url, "cap-unusable", teacher_max_calls=2)
        with running(app) as url:
            sources = [_post(url, p) for p in pngs[:4]]
            ready = httpx.get(f"{url}/readyz").json()["teacher"]["spend_cap"]
        asked = len(fs.requests)
    assert sources == ["teacher_failed"] * 2 + ["student_fallback"] * 2
    assert ready["calls"] == 2 and ready["spent_usd"] == pytest.approx(0.002)
    assert asked >= 2 and asked <= 4  # the client may re-ask a reply that is not JSON once; never for the capped ones


def _counting(delay_s: float):
    """A fault-server action that answers after ``delay_s`` and records the most requests it held at once."""
    import threading
    import time as _time

    from fault_server import _send, completion

    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def act(h, body):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        _time.sleep(delay_s)
        with lock:
            state["now"] -= 1
        _send(h, 200, completion('{"label": "bar", "confidence": 0.9, "reason": "r"}', usage=PRICED))
    return act, state


@pytest.mark.parametrize("given, expected", [(3, 3), (None, 4)])  # None: the default for a server on this machine
def test_a_batch_of_deferred_inputs_asks_the_teacher_only_so_many_at_once(cal_ws, pngs, given, expected):
    import base64

    ws, _ = cal_ws
    act, state = _counting(0.3)
    with FaultServer(default=act) as fs:
        app = _app(ws, fs.url, f"cap-concurrency-{given}", **({"teacher_concurrency": given} if given else {}))
        with running(app) as url:
            body = {"inputs": [{"image_base64": base64.b64encode(p).decode()} for p in pngs[:12]]}
            res = httpx.post(f"{url}/v1/predict/batch", json=body, timeout=120).json()["results"]
    assert [r["source"] for r in res] == ["teacher"] * 12  # all answered within the deadline, in waves
    assert state["most"] == expected and len(fs.requests) == 12


def test_one_content_sent_three_times_at_once_under_a_cap_is_bought_once(cal_ws, pngs):
    """Reading the cap is a store query: requests for the same content that arrive meanwhile share the one call."""
    import base64

    ws, _ = cal_ws
    act, _ = _counting(0.3)
    with FaultServer(default=act) as fs:
        app = _app(ws, fs.url, "cap-same-content", teacher_max_calls=10)
        with running(app) as url:
            one = {"image_base64": base64.b64encode(pngs[5]).decode()}
            res = httpx.post(f"{url}/v1/predict/batch", json={"inputs": [one] * 3}, timeout=60).json()["results"]
    assert [r["source"] for r in res] == ["teacher"] * 3 and len(fs.requests) == 1


@pytest.mark.parametrize("given, expected", [(2, 2), (None, 4)])  # None: the default for a server on this machine
def test_predict_files_asks_a_local_teacher_only_so_many_at_once(cal_ws, pngs, tmp_path, given, expected):
    """`flywheel predict FILES` used 16 calls at once whatever --concurrency said."""
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    ws, _ = cal_ws
    files = []
    for i, p in enumerate(pngs[:12]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(p)
    act, state = _counting(0.3)
    with FaultServer(default=act) as fs:
        r = CliRunner().invoke(main, ["-w", str(ws.root), "predict", "synth", *map(str, files), "--teacher",
                                      f"{fs.url}|predict-concurrency-{given}", "--api-key-env", "", "--threshold",
                                      "1.0", "--no-log", "--json", *(["--concurrency", str(given)] if given else [])])
    assert r.exit_code == 0, r.output
    assert state["most"] == expected and len(fs.requests) == 12
