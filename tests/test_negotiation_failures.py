"""How the teacher client classifies failures and survives long prompts and cut-off replies -- against real
HTTP servers on 127.0.0.1 (and a port where nothing listens, and a host name that cannot resolve)."""

from __future__ import annotations

import json
import socket

import pytest

from fault_server import (FaultServer, context_exceeded_above, free_port, cut_off, inline_thinker, ok, ollama_context,
                          openai_reasoning_model, slow, status, user_text)
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.base import FATAL_ERROR_KINDS, is_fatal
from llm_flywheel.teachers.openai_compat import (
    QUICK_RETRY_DELAY, REASON_MAX_CHARS, OpenAICompatTeacher, classify_transport_error, response_schema, run_sync,
    system_prompt,
)

TASK = Task(name="mail", modality="text", labels=("spam", "ham"), instructions="Is this email spam or ham?")


def _teacher(url: str, **kw) -> OpenAICompatTeacher:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("capability_cache", False)
    return OpenAICompatTeacher(url, "fault-model", api_key_env=None, task=TASK, **kw)


def _ask(t: OpenAICompatTeacher, text: str = "Buy cheap pills now!!!", pass_index: int = 0):
    return run_sync(t.alabel_raw(text, TASK, pass_index=pass_index))


# --- fatal failures: one quick retry, a message that names the URL and the fix -----------------------------------
def test_connection_refused_is_fatal_fast_and_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    t = _teacher(url)
    ans = _ask(t)
    assert not ans.ok and ans.error_kind == "connection" and is_fatal(ans.error_kind) and ans.extra["fatal"]
    assert f"nothing listens at {url}" in ans.error_detail and "start the server or fix --teacher" in ans.error_detail
    assert t.http_requests == 2  # one quick retry, not max_retries backoffs
    assert list(t.retry_waits) == [QUICK_RETRY_DELAY]


def test_dns_failure_is_fatal_and_names_the_host():
    t = _teacher("http://flywheel-no-such-host.invalid/v1")
    ans = _ask(t)
    assert not ans.ok and ans.error_kind == "dns" and ans.extra["fatal"]
    assert "'flywheel-no-such-host.invalid'" in ans.error_detail and "does not resolve" in ans.error_detail
    assert t.http_requests == 2


def test_transport_errors_are_classified():
    import httpx
    try:
        socket.getaddrinfo("flywheel-no-such-host.invalid", 80)
    except socket.gaierror as g:
        e = httpx.ConnectError(str(g))
        e.__cause__ = g
        assert classify_transport_error(e) == "dns"
    assert classify_transport_error(httpx.ConnectError("[Errno 111] Connection refused")) == "connection"
    assert classify_transport_error(httpx.RemoteProtocolError("Server disconnected")) == "dropped"
    assert {"connection", "dns", "auth", "not_found"} <= FATAL_ERROR_KINDS


OUT_OF_QUOTA = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                           "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}  # OpenAI's 429


@pytest.mark.parametrize("code,kind,words,body", [
    (401, "auth", "--api-key-env", None), (403, "auth", "--api-key-env", None),
    (404, "not_found", "/models lists them", None), (429, "auth", "out of quota", OUT_OF_QUOTA),
])
def test_auth_and_not_found_are_fatal_without_retry(code, kind, words, body):
    with FaultServer(default=status(code, body)) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
    assert ans.error_kind == kind and ans.extra["fatal"] and len(srv.requests) == 1
    assert srv.url in ans.error_detail and words in ans.error_detail


@pytest.mark.parametrize("headers,body,wait", [
    ({"Retry-After": "0.3"}, None, 0.3), ({"retry-after-ms": "300"}, None, 0.3),
    # OpenAI: the limit that ran out says when it resets
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms",
      "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6m0s"}, None, 0.3),
    # Google (Gemini's OpenAI-compatible endpoint): RetryInfo in a one-element list
    ({}, [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.3s"}]}}], 0.3),
])
def test_a_429_waits_as_long_as_the_provider_says(headers, body, wait):
    with FaultServer(script=[status(429, body, headers)], default=ok('{"label": "spam", "confidence": 0.9}')) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
    assert ans.ok and len(srv.requests) == 2
    assert wait <= t.retry_waits[0] <= wait + 0.06


@pytest.mark.parametrize("fault", [status(503), status(429, headers={"Retry-After": "0.01"}), slow(1.0)])
def test_transient_failures_keep_their_retries(fault):
    with FaultServer(default=fault) as srv:
        t = _teacher(srv.url, max_retries=3, timeout=0.2)
        ans = _ask(t)
    assert not ans.ok and not ans.extra["fatal"] and ans.error_kind in ("http_5xx", "http_429", "timeout")
    assert len(srv.requests) == 4  # 1 + max_retries


# --- context exceeded: shortened once, else a clear failure ----------------------------------------------------------
@pytest.mark.parametrize("style", ["llama.cpp", "llama-cpp-python"])
def test_context_exceeded_shortens_the_text_once_and_answers(style):
    long_text = "lorem ipsum dolor sit amet " * 400  # 10,800 chars
    with FaultServer(default=context_exceeded_above(6000, ok('{"label": "spam", "confidence": 0.8}'), style)) as srv:
        t = _teacher(srv.url)
        ans = _ask(t, long_text)
    assert ans.ok and ans.label == "spam" and ans.extra["input_truncated"]
    assert "input_truncated" in ans.error_detail and str(len(long_text)) in ans.error_detail
    assert len(srv.requests) == 2  # not retried as if transient
    sent = user_text(srv.requests[1]["body"])
    assert len(sent) <= 6000 and sent.startswith(long_text[:100]) and sent.endswith("[truncated]")


def test_context_exceeded_that_shortening_cannot_fix_fails_clearly():
    with FaultServer(default=context_exceeded_above(10)) as srv:
        t = _teacher(srv.url)
        ans = _ask(t, "a perfectly ordinary email that is still too long for this tiny window " * 3)
    assert not ans.ok and ans.error_kind == "context_exceeded" and not ans.extra["fatal"]
    assert "-c" in ans.error_detail and "-np" in ans.error_detail and "even with the item text cut" in ans.error_detail
    assert len(srv.requests) == 2


# --- truncation: bounded reason, label first, recovery, a re-ask that changes the cause ------------------------------
def test_schema_and_instructions_bound_the_reason_label_first():
    schema = response_schema(TASK)["schema"]
    assert list(schema["properties"]) == ["label", "confidence", "reason"]
    assert schema["properties"]["reason"]["maxLength"] == REASON_MAX_CHARS
    for p in range(3):
        assert f"{REASON_MAX_CHARS} characters" in system_prompt(TASK, p) and "12 words" in system_prompt(TASK, p)


def test_label_recovered_from_a_cut_off_reply():
    cut = '{"label": "spam", "confidence": 0.9, "reason": "the sender promises cheap pills and a prize and'
    with FaultServer(default=cut_off(cut)) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
    assert ans.ok and ans.label == "spam" and ans.confidence == pytest.approx(0.9) and ans.error_kind is None
    assert ans.extra["recovered_truncated"] and ans.error_detail.startswith("recovered_truncated")
    assert len(srv.requests) == 1


def test_cut_inside_the_label_is_re_asked_with_more_room_and_no_reason():
    with FaultServer([cut_off('{"label": "sp')], default=ok('{"label": "ham", "confidence": 0.7}')) as srv:
        t = _teacher(srv.url, max_tokens=300, reason=True)  # a loopback server is asked for no reason by default
        ans = _ask(t)
    assert ans.ok and ans.label == "ham" and len(srv.requests) == 2
    first, second = srv.requests[0]["body"], srv.requests[1]["body"]
    assert second["max_tokens"] > first["max_tokens"]
    assert "reason" in first["response_format"]["json_schema"]["schema"]["properties"]
    assert "reason" not in second["response_format"]["json_schema"]["schema"]["properties"]
    assert "no reason" in second["messages"][0]["content"]
    assert ans.tokens_out == 300 + 20 and ans.extra["discarded_replies"] == 1  # the cut-off reply was paid for too


def test_a_reply_cut_off_twice_is_a_truncated_failure():
    with FaultServer(default=cut_off('{"label": "')) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
    assert not ans.ok and ans.error_kind == "truncated" and "max_tokens" in ans.error_detail
    assert len(srv.requests) == 2


@pytest.mark.parametrize("text", ['{"label": "spam", "label": "ham", "reason": "x', '{"label": "spa', '{"reason": "x'])
def test_ambiguous_or_incomplete_labels_are_not_recovered(text):
    from llm_flywheel.teachers.parsing import LabelMatcher, recover_truncated
    assert recover_truncated(text, LabelMatcher(TASK.labels)) is None


def test_max_length_refused_keeps_json_schema_without_it():
    def act(h, body):
        from fault_server import _send
        rf = body.get("response_format") or {}
        if "maxLength" in json.dumps(rf):
            _send(h, 400, {"error": {"message": "Invalid schema for response_format 'label_answer': In context="
                                                "('properties', 'reason'), 'maxLength' is not permitted."}})
        else:
            ok('{"label": "spam", "confidence": 0.6, "reason": "r"}')(h, body)
    with FaultServer(default=act) as srv:
        t = _teacher(srv.url, reason=True)
        assert _ask(t).ok and _ask(t).ok
    assert t.response_format == "json_schema" and not t.schema_max_length and len(srv.requests) == 3


# --- timeouts follow the server ----------------------------------------------------------------------------------------
def test_timeout_follows_measured_latency_within_the_cap():
    t = _teacher("http://127.0.0.1:1/v1", timeout=100.0)
    assert t.current_timeout() == min(100.0, t.timeout_first)  # nothing measured yet
    t.latencies.extend([2.0] * 19 + [20.0])  # p95 of 20 samples is the 19th: 2 s
    assert t.current_timeout() == pytest.approx(max(t.timeout_floor, 4 * 2.0))
    t.latencies.extend([20.0] * 30)
    assert t.current_timeout() == 80.0  # 4 x p95
    assert t.current_timeout(boost=1) == 100.0  # doubled after a timeout, but never above the caller's cap
    assert OpenAICompatTeacher("http://x/v1", "m", api_key_env=None).timeout == 300.0  # default cap


def test_measured_latency_sets_the_request_timeout():
    with FaultServer(default=ok('{"label": "spam", "confidence": 0.6}')) as srv:
        t = _teacher(srv.url, timeout=5.0)
        t.timeout_floor = 0.3
        for _ in range(6):
            assert _ask(t).ok
        # 4 x the measured p95 (a loopback answer: milliseconds, so usually the 0.3 s floor; a pause of the test
        # machine shows in the measurement, and the wait follows it), within the floor and the 5 s cap
        wait = t.current_timeout()
        assert t.latency_p95() is not None and wait == pytest.approx(min(5.0, max(0.3, 4 * t.latency_p95())))
        srv.script.extend([slow(wait + 1.5)])  # one answer far slower than anything measured: cut, asked again
        ans = _ask(t)
    assert ans.ok and ans.extra["retries"] == 1 and len(srv.requests) == 8


def test_bare_url_spec_with_nothing_listening_names_the_fix():
    from llm_flywheel.teachers.openai_compat import TeacherConfigError
    from llm_flywheel.teachers.registry import teacher_from_spec
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TeacherConfigError, match=f"nothing listens at {url}"):
        teacher_from_spec(url, TASK)
    with FaultServer() as srv:
        assert teacher_from_spec(srv.url, TASK).model == "fault-model"


def test_a_larger_input_gets_proportionally_longer_to_answer():
    t = _teacher("http://127.0.0.1:1/v1", timeout=1000.0)
    t.latencies.extend([20.0] * 10)
    t.sizes.extend([500] * 10)
    assert t.current_timeout(size=400) == 80.0  # 4 x p95
    assert t.current_timeout(size=2000) == pytest.approx(80.0 * 4)  # 4x the typical input: 4x the wait
    assert t.current_timeout(size=100_000) == 1000.0  # never above the cap


# --- OpenAI's reasoning models (gpt-5.x, o-series) on Chat Completions --------------------------------------------
SPAM = '{"label": "spam", "confidence": 0.9}'


def test_a_reasoning_model_gets_max_completion_tokens_and_its_default_temperature():
    """Before: HTTP 400 "Unsupported parameter: 'max_tokens'" failed every item as http_4xx."""
    with FaultServer(default=openai_reasoning_model(thought=100, content=SPAM)) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
        assert ans.ok and ans.label == "spam"
        bodies = [r["body"] for r in srv.requests]
        assert len(bodies) == 3 and "max_tokens" in bodies[0] and "temperature" in bodies[1]
        assert "max_completion_tokens" in bodies[2] and "temperature" not in bodies[2]
        caps = t.capabilities()
        assert caps["legacy_max_tokens"] is False and caps["temperature"] is False
        assert [d["to"] for d in caps["downgrades"]] == ["legacy_max_tokens=off", "temperature=off"]
        n = len(srv.requests)
        assert _ask(t, pass_index=1).ok and len(srv.requests) == n + 1  # later calls and passes: one request each


def test_a_reasoning_model_that_thinks_past_max_tokens_gets_room_and_later_calls_start_there(caplog):
    with FaultServer(default=openai_reasoning_model(thought=500, content=SPAM)) as srv:
        t = _teacher(srv.url)
        t.legacy_max_tokens = t.temperature = False  # as negotiated (previous test)
        with caplog.at_level("WARNING"):
            ans = _ask(t)
        assert ans.ok and ans.label == "spam" and ans.extra["reasked_after_truncation"] == 1
        assert [r["body"]["max_completion_tokens"] for r in srv.requests] == [300, 600]
        assert t.max_tokens == 600  # it thought all 300, then fit in 600
        assert "thinks before it answers (300 reasoning tokens" in caplog.text
        n = len(srv.requests)
        assert _ask(t).ok and [r["body"]["max_completion_tokens"] for r in srv.requests[n:]] == [600]


def test_a_model_that_never_stops_thinking_fails_as_truncated_after_a_bounded_number_of_re_asks():
    with FaultServer(default=openai_reasoning_model(thought=100_000)) as srv:
        t = _teacher(srv.url)
        t.legacy_max_tokens = t.temperature = False
        ans = _ask(t)
        assert not ans.ok and ans.error_kind == "truncated"
        rooms = [r["body"]["max_completion_tokens"] for r in srv.requests]
        assert rooms == [300, 600, 1200, 2400] and t.max_tokens == 2400  # 3 re-asks, each billed: then it stops


def test_batch_lines_refused_for_max_tokens_make_the_follow_up_batch_ask_without_it():
    from llm_flywheel.teachers.batch import answer_from_line, parse_result_file

    t = _teacher("http://127.0.0.1:9/v1")
    line = {"custom_id": "1-0", "response": {"status_code": 400, "body": {"error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
                   "instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}}}
    res = parse_result_file(json.dumps(line).encode())["1-0"]
    ans = answer_from_line(t, TASK, 1, "h", 0, res, price_ratio=0.5)
    assert not ans.ok and ans.error_kind == "http_4xx"
    assert "max_completion_tokens" in t._body(TASK, "x", 0) and "max_tokens" not in t._body(TASK, "x", 0)


def test_unsupported_param_reads_the_param_or_the_message():
    from llm_flywheel.teachers.errors import unsupported_param

    assert unsupported_param(400, json.dumps({"error": {"message": "Unsupported value: 'temperature' does not support "
                                                        "0.7 with this model.", "param": "temperature"}})) == "temperature"
    assert unsupported_param(400, json.dumps({"error": {"message": "Invalid 'max_tokens': integer above maximum value.",
                                                        "param": "max_tokens"}})) is None  # a bad value, not unsupported
    assert unsupported_param(400, "Unsupported parameter: 'max_tokens' is not supported with this model.") == \
        "legacy_max_tokens"
    assert unsupported_param(400, json.dumps({"error": {"message": "Invalid parameter: 'response_format' of type "
                                                        "'json_schema' is not supported", "param": "response_format"}})) is None
    assert unsupported_param(500, "'temperature' is not supported") is None
    assert unsupported_param(400, "max_tokens must be at most 4096") is None


def test_an_empty_reply_cut_off_at_the_limit_counts_its_tokens_as_thinking_where_the_provider_does_not_itemise():
    """Gemini-style: a thinking model's reply is empty with finish_reason "length" and no reasoning_tokens field."""
    def act(h, body):
        room = body.get("max_tokens") or 300
        if room < 500:
            return cut_off("")(h, body)  # completion_tokens = max_tokens, nothing itemised
        ok(SPAM)(h, body)

    with FaultServer(default=act) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
        assert ans.ok and ans.label == "spam"
        assert [r["body"]["max_tokens"] for r in srv.requests] == [300, 600] and t.max_tokens == 600



def test_a_model_that_thinks_in_its_reply_is_read_after_its_thinking_and_given_room_once():
    """Qwen3 / DeepSeek-R1 through a server without a reasoning parser.  Before: the draft label in the thinking
    ("ham") was taken as the answer; a reply cut off mid-thought was prose to the format check."""
    with FaultServer(default=inline_thinker(thought=400, content=SPAM, draft='{"label": "ham"}')) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
        assert ans.ok and ans.label == "spam" and ans.confidence == 0.9
        assert [r["body"]["max_tokens"] for r in srv.requests] == [300, 600] and t.max_tokens == 600
        assert ans.extra["reasked_after_truncation"] == 1 and ans.extra["reasoning_tokens"] > 300
        assert t.capabilities()["downgrades"] == [] or all("response_format" not in d["from"]
                                                           for d in t.capabilities()["downgrades"])
        n = len(srv.requests)
        assert _ask(t, pass_index=1).label == "spam" and len(srv.requests) == n + 1  # later calls start with room


def test_a_reply_cut_off_while_thinking_says_so():
    with FaultServer(default=inline_thinker(thought=100_000)) as srv:
        ans = _ask(_teacher(srv.url))
        assert not ans.ok and ans.error_kind == "truncated" and "while the model was still thinking" in ans.error_detail


def test_a_prompt_a_server_cut_without_an_error_is_shortened_and_asked_again(caplog):
    """Ollama at its default 4,096-token context keeps part of a longer prompt and answers 200 -- the instructions
    lost, the label a guess.  Before: that guess was stored as the teacher's label."""
    long_mail = "Dear customer, " + "you have won a prize, click the link to claim it. " * 600  # ~7,500 tokens
    with FaultServer(default=ollama_context(num_ctx=4096)) as srv:
        t = _teacher(srv.url, text_max_chars=0)  # sent whole (within the default 16,000 characters it would fit)
        with caplog.at_level("WARNING"):
            ans = _ask(t, long_mail)
            short = _ask(t, "Buy cheap pills now!!!")
        assert ans.ok and ans.label == "spam" and ans.extra["input_truncated"] and ans.extra["discarded_replies"] == 1
        assert "the server took only 2050 prompt tokens" in ans.error_detail
        sent = [len(user_text(r["body"])) for r in srv.requests]
        assert sent[0] == len(long_mail) and sent[1] < 4096 * 4 and user_text(srv.requests[1]["body"]).endswith(
            "…[truncated]")
        assert short.ok and short.label == "spam" and len(srv.requests) == 3  # a short item: one call, untouched
        assert caplog.text.count("took 2,050 of about") == 1 and "OLLAMA_CONTEXT_LENGTH" in caplog.text


def test_a_server_with_too_little_context_for_the_instructions_fails_as_context_exceeded():
    """77 intents, each described: the instructions alone are ~1,900 tokens, more than Ollama's 2,048-token
    context keeps of a long prompt -- no cut of the item can help, so it fails naming the fix."""
    labels = tuple(f"intent_{i}" for i in range(77))
    task = Task(name="bank", modality="text", labels=labels, instructions="Which banking intent is this?",
                descriptions={lab: f"the customer asks about {lab.replace('_', ' ')}: " + "card, transfer, fee " * 5
                              for lab in labels})
    with FaultServer(default=ollama_context(num_ctx=2048, good='{"label": "intent_3"}')) as srv:
        t = OpenAICompatTeacher(srv.url, "fault-model", api_key_env=None, task=task, backoff_base=0.01,
                                capability_cache=False)
        ans = run_sync(t.alabel_raw("my card was charged twice " * 400, task, pass_index=0))
        assert not ans.ok and ans.error_kind == "context_exceeded" and "OLLAMA_CONTEXT_LENGTH" in ans.error_detail
        assert len(srv.requests) == 1 and ans.extra["tokens_taken"] == 1026
        assert "the instructions alone take most of what it keeps" in ans.error_detail
    cached = ok('{"label": "spam"}', usage={"prompt_tokens": 12, "completion_tokens": 5})  # prompt in its cache
    with FaultServer(default=cached) as srv:  # counting only what it did not have cached: not a cut
        ans = _ask(_teacher(srv.url, text_max_chars=0), "win a prize " * 2000)
        assert ans.ok and "input_truncated" not in ans.extra and len(srv.requests) == 1


def _no_endpoints(what: str) -> dict:  # OpenRouter's provider routing, as it words it
    return {"error": {"message": f"No endpoints found that support {what}. To learn more about provider routing, "
                                 "visit: https://openrouter.ai/docs/guides/routing/provider-selection", "code": 404}}


def test_openrouter_no_endpoints_for_a_format_or_logprobs_steps_down_instead_of_stopping():
    """OpenRouter's 404 "No endpoints found that support ..." was read as a wrong model name and stopped the run."""
    def act(h, body):
        rf = (body.get("response_format") or {}).get("type")
        if rf == "json_schema":
            return status(404, _no_endpoints("the provided 'response_format' value"))(h, body)
        if body.get("logprobs"):
            return status(404, _no_endpoints("the provided 'logprobs' value"))(h, body)
        ok(SPAM)(h, body)

    with FaultServer(default=act) as srv:
        t = _teacher(srv.url, logprobs=True)
        ans = _ask(t)
        assert ans.ok and ans.label == "spam"
        assert t.response_format != "json_schema" and not t.logprobs


def test_openrouter_no_endpoints_for_images_stops_naming_the_fix():
    with FaultServer(default=status(404, _no_endpoints("image input"))) as srv:
        t = _teacher(srv.url)
        ans = _ask(t)
    assert ans.error_kind == "not_found" and ans.extra["fatal"] and len(srv.requests) == 1
    assert "choose a vision model" in ans.error_detail and "'fault-model'" in ans.error_detail
