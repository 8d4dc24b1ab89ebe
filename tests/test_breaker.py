"""The labeller's circuit breaker against real endpoints on 127.0.0.1: a closed port, a server answering 401, a
server whose failures are not identical in a row, and a content filter's 403 that must not pass for a bad key."""

from __future__ import annotations

import json

import pytest
from fault_server import FaultServer, free_port, ok, status
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher


def _ids(ws, n):
    s = ws.store()
    try:
        return [it.id for it in s.items("synth", limit=n)]
    finally:
        s.close()


def _answers(ws):
    s = ws.store()
    try:
        return s.query("SELECT * FROM teacher_answers")
    finally:
        s.close()


def test_closed_port_stops_the_run_after_n_identical_connection_errors(synth_ws, synth_task):
    url = f"http://127.0.0.1:{free_port()}/v1"
    ids = _ids(synth_ws, 60)
    t = OpenAICompatTeacher(url, "m", api_key_env=None, task=synth_task)
    r = label_items(synth_ws, "synth", ids, t, LabelConfig(concurrency=8, breaker_threshold=3), progress=False)
    assert r.stopped_reason == "fatal_error" and r.fatal_error_kind == "connection"
    assert url in r.stopped_message and "re-run" in r.stopped_message.lower()
    assert 3 <= r.calls_made + r.cancelled_calls <= 3 + 8  # the breaker's N plus at most what was in flight
    assert r.labelled == 0 and r.unlabelled == 60 and not r.stopped_by_budget
    assert all(a["error_kind"] == "connection" and not a["ok"] for a in _answers(synth_ws))


def test_401_stops_at_the_threshold_even_with_many_workers(synth_ws, synth_task, monkeypatch):
    monkeypatch.setenv("FW_KEY", "wrong")
    ids = _ids(synth_ws, 80)
    with FaultServer(default=status(401, {"error": {"message": "invalid api key"}})) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env="FW_KEY", task=synth_task)
        r = label_items(synth_ws, "synth", ids, t, LabelConfig(concurrency=8, breaker_threshold=4), progress=False)
    assert r.stopped_reason == "fatal_error" and r.fatal_error_kind in ("auth", "http_401")
    assert 4 <= len(srv.requests) <= 4 + 8 and r.calls_made == len(srv.requests)
    assert srv.url in r.stopped_message and "API key" in r.stopped_message


def test_breaker_needs_identical_fatal_errors_in_a_row(synth_ws, synth_task, monkeypatch):
    """401, 401, answer, 401, 401, answer ...: never three in a row, so the run goes on to the end."""
    monkeypatch.setenv("FW_KEY", "k")
    ids = _ids(synth_ws, 12)
    script = [status(401), status(401), ok()] * 8
    with FaultServer(script=script, default=ok()) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env="FW_KEY", task=synth_task, logprobs=False)
        r = label_items(synth_ws, "synth", ids, t,
                        LabelConfig(passes=1, tie_break=False, concurrency=1, adaptive=False, breaker_threshold=3),
                        progress=False)
    assert r.stopped_reason is None and r.stopped_message is None
    assert r.calls_made == 12 and r.failed == 8


def test_after_the_fix_a_rerun_continues(synth_ws, synth_task):
    ids = _ids(synth_ws, 20)
    dead = OpenAICompatTeacher(f"http://127.0.0.1:{free_port()}/v1", "m", api_key_env=None, task=synth_task)
    r1 = label_items(synth_ws, "synth", ids, dead, LabelConfig(passes=1, tie_break=False), progress=False)
    assert r1.stopped_reason == "fatal_error"
    with FaultServer(default=ok()) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env=None, task=synth_task, logprobs=False)
        r2 = label_items(synth_ws, "synth", ids, t, LabelConfig(passes=1, tie_break=False), progress=False)
    assert r2.stopped_reason is None and r2.labelled == 20 and r2.calls_made == 20


OPENROUTER_FLAGGED = {"error": {
    "code": 403,
    "message": 'openai/gpt-4o-mini requires moderation on OpenAI. Your input was flagged for "harassment". '
               "No credits were charged.",
    "metadata": {"reasons": ["harassment"], "flagged_input": "...you idiot...", "provider_name": "OpenAI",
                 "model_slug": "openai/gpt-4o-mini"}}}


def test_a_moderation_403_refuses_that_item_and_the_run_goes_on(synth_ws, synth_task, monkeypatch):
    """OpenRouter answers a flagged input with HTTP 403 (error.metadata.flagged_input).  Several flagged items in a
    row (spam corpora have them) used to trip the breaker as a bad API key and stop the run; they are refusals of
    those items, recorded as such, and a real 403 still stops the run."""
    monkeypatch.setenv("FW_KEY", "k")
    ids = _ids(synth_ws, 16)
    with FaultServer(script=[status(403, OPENROUTER_FLAGGED)] * 6, default=ok()) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env="FW_KEY", task=synth_task, logprobs=False)
        r = label_items(synth_ws, "synth", ids[:12], t,
                        LabelConfig(passes=1, tie_break=False, concurrency=1, adaptive=False, breaker_threshold=3),
                        progress=False)
    assert r.stopped_reason is None and r.errors == {"refused": 6}
    assert r.failed == 6 and r.calls_made == 18 and r.labelled == 12  # 6 refusals in a row, then asked again
    refused = [a for a in _answers(synth_ws) if a["error_kind"] == "refused"]
    assert len(refused) == 6 and all("content filter declined this item (HTTP 403)" in a["error_detail"]
                                     for a in refused)
    with FaultServer(default=status(403, {"error": {"message": "this key has no access to the model"}})) as srv:
        t = OpenAICompatTeacher(srv.url, "m", api_key_env="FW_KEY", task=synth_task, logprobs=False)
        r = label_items(synth_ws, "synth", ids[12:], t, LabelConfig(passes=1, concurrency=1, breaker_threshold=3),
                        progress=False)
    assert r.stopped_reason == "fatal_error" and r.fatal_error_kind == "auth"


@pytest.mark.parametrize("status_code, body, refusal", [
    (403, json.dumps(OPENROUTER_FLAGGED), True),
    (403, '{"error": {"message": "Request blocked: prompt injection patterns detected", "code": 403}}', True),
    (400, '{"error": {"message": "Your request was rejected as a result of our safety system.", '
          '"type": "invalid_request_error", "code": "content_policy_violation"}}', True),
    (400, '{"error": {"code": "content_filter", "message": "The response was filtered due to the prompt triggering '
          'Azure OpenAI\'s content management policy."}}', True),
    (403, '{"error": {"message": "Project does not have access to model gpt-4o"}}', False),
    (403, '{"error": {"message": "This API key has been flagged for abuse and disabled"}}', False),  # the account
    (401, '{"error": {"message": "Incorrect API key provided: sk-***. flagged"}}', False),  # 401 is always the key
    (400, '{"error": {"message": "Invalid schema for response_format"}}', False),
])
def test_content_refusals_are_told_apart_from_key_and_request_errors(status_code, body, refusal):
    from llm_flywheel.teachers.errors import is_content_refusal

    assert is_content_refusal(status_code, body) is refusal
