"""The OpenAI-compatible client against purpose-built fault servers on 127.0.0.1."""

from __future__ import annotations

import math

import asyncio
import logging

import pytest

from fault_server import FaultServer, drop, ok, refuse_structured, slow, status
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, run_sync
from llm_flywheel.teachers.registry import parse_spec, teacher_from_spec
from llm_flywheel.teachers.openai_compat import TeacherConfigError


@pytest.fixture(scope="module")
def tiny_ws(tmp_path_factory):
    """A workspace with 10 synthetic images (the client tests need only one item)."""
    from conftest import make_synth_dataset
    from llm_flywheel.core.task import Task
    from llm_flywheel.store.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("tiny") / "ws")
    make_synth_dataset(ws, Task(name="synth", modality="image", labels=("bar", "ring", "cross", "dot"),
                                instructions="Classify the shape."), n_train=8, n_test=2)
    return ws


def _teacher(url: str, task, **kw) -> OpenAICompatTeacher:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("api_key_env", None)
    kw.setdefault("capability_cache", False)  # these servers come and go on reused ports: remember nothing
    return OpenAICompatTeacher(url, "fault-model", task=task, **kw)


def _ask(teacher, tiny_ws, task, pass_index=0):
    item = tiny_ws.store().items("synth", limit=1)[0]
    return run_sync(teacher.alabel_one(item, task, tiny_ws, pass_index=pass_index))


@pytest.mark.parametrize("fault", [
    status(429, headers={"Retry-After": "0.05"}),
    status(500),
    status(503),
    drop(),
])
def test_retryable_faults_are_retried_and_recover(tiny_ws, synth_task, fault):
    with FaultServer([fault, fault]) as srv:
        ans = _ask(_teacher(srv.url, synth_task), tiny_ws, synth_task)
    assert ans.ok and ans.label == "bar" and ans.error_kind is None
    assert len(srv.requests) == 3
    assert ans.extra["retries"] == 2


def test_timeout_is_retried(tiny_ws, synth_task):
    with FaultServer([slow(2.0)]) as srv:
        ans = _ask(_teacher(srv.url, synth_task, timeout=0.3), tiny_ws, synth_task)
    assert ans.ok and ans.label == "bar"
    assert len(srv.requests) == 2


@pytest.mark.parametrize("code,kind", [(400, "http_4xx"), (401, "auth"), (403, "auth"), (404, "not_found")])
def test_client_errors_are_not_retried(tiny_ws, synth_task, code, kind):
    from llm_flywheel.teachers.base import is_fatal
    with FaultServer(default=status(code)) as srv:
        ans = _ask(_teacher(srv.url, synth_task), tiny_ws, synth_task)
    assert not ans.ok and ans.error_kind == kind
    assert f"HTTP {code}" in ans.error_detail
    assert len(srv.requests) == 1
    assert ans.extra["fatal"] is is_fatal(kind) is (code != 400)
    if code != 400:
        assert srv.url in ans.error_detail  # names the URL it could not use


def test_gives_up_after_max_retries(tiny_ws, synth_task):
    with FaultServer(default=status(502)) as srv:
        ans = _ask(_teacher(srv.url, synth_task, max_retries=2), tiny_ws, synth_task)
    assert not ans.ok and ans.error_kind == "http_5xx"
    assert len(srv.requests) == 3


def test_response_format_fallback_schema_to_object_to_plain(tiny_ws, synth_task):
    fenced = '```json\n{"label": "Rings", "confidence": 0.8, "reason": "round"}\n```'
    with FaultServer(default=refuse_structured(ok(fenced))) as srv:
        t = _teacher(srv.url, synth_task)
        ans = _ask(t, tiny_ws, synth_task)
        ans2 = _ask(t, tiny_ws, synth_task, pass_index=1)
    kinds = [(r["body"].get("response_format") or {}).get("type") for r in srv.requests]
    # json_schema -> llama.cpp's native schema form -> plain JSON mode -> prompt only; the teacher remembers it
    assert kinds == ["json_schema", "json_object", "json_object", None, None]
    assert "schema" in srv.requests[1]["body"]["response_format"] and "schema" not in srv.requests[2]["body"]["response_format"]
    assert [d["to"] for d in t.negotiation] == ["json_object_schema", "json_object", "none"]
    assert ans.ok and ans.label == "ring" and ans.confidence == pytest.approx(0.8)
    assert ans2.ok and t.response_format == "none"


def test_logprobs_refused_then_dropped(tiny_ws, synth_task):
    def act(h, body):
        from fault_server import _send
        if body.get("logprobs"):
            _send(h, 400, {"error": {"message": "logprobs are not supported for this model"}})
        else:
            ok()(h, body)
    with FaultServer(default=act) as srv:
        t = _teacher(srv.url, synth_task)
        ans = _ask(t, tiny_ws, synth_task)
    assert ans.ok and not t.logprobs and len(srv.requests) == 2


def test_a_cap_on_the_alternatives_drops_them_and_keeps_logprobs(tiny_ws, synth_task):
    """A provider that takes logprobs but caps top_logprobs (some allow 5) loses only the alternatives."""
    toks = [{"token": '{"label": "', "logprob": -0.01}, {"token": "dot", "logprob": -0.3},
            {"token": '", "confidence": 0.9, "reason": "x"}', "logprob": -0.01}]

    def act(h, body):
        from fault_server import _send
        if body.get("top_logprobs", 0) > 5:
            _send(h, 400, {"error": {"message": "Invalid 'top_logprobs': must be less than or equal to 5"}})
        else:
            ok('{"label": "dot", "confidence": 0.9, "reason": "x"}', logprobs=toks)(h, body)
    with FaultServer(default=act) as srv:
        t = _teacher(srv.url, synth_task)
        first, again = _ask(t, tiny_ws, synth_task), _ask(t, tiny_ws, synth_task, pass_index=1)
    assert [("top_logprobs" in r["body"], r["body"].get("logprobs")) for r in srv.requests] == [
        (True, True), (False, True), (False, True)]  # refused once, then asked without the alternatives
    assert t.logprobs and not t.top_logprobs and t.capabilities()["top_logprobs"] is False
    assert first.ok and first.label_logprob == pytest.approx(-0.3) and again.label_logprob == pytest.approx(-0.3)


def test_logprobs_give_label_logprob(tiny_ws, synth_task):
    content = '{"label": "cross", "confidence": 0.7, "reason": "x"}'
    toks = [{"token": t, "logprob": lp} for t, lp in
            [('{"', -0.01), ("label", -0.01), ('":', -0.01), (' "', -0.01), ("cro", -0.3), ("ss", -0.2), ('",', -0.01),
             (' "confidence": 0.7, "reason": "x"}', -0.05)]]
    with FaultServer(default=ok(content, logprobs=toks)) as srv:
        ans = _ask(_teacher(srv.url, synth_task), tiny_ws, synth_task)
    assert ans.label == "cross"
    assert ans.label_logprob == pytest.approx(-0.5)
    assert ans.logprobs and ans.logprobs[0][0] == '{"'


def test_label_logprob_is_read_among_the_labels_from_the_alternatives(tiny_ws, synth_task):
    """A server that reports probabilities before its grammar (llama.cpp) gets asked for alternatives, and the
    label's probability is its share among the task's labels, not the forced token's raw value."""
    content = '{"label": "ring", "confidence": 0.7, "reason": "x"}'
    top = [{"token": t, "logprob": lp} for t, lp in [("The", -1.0), ("ring", -3.0), ("dot", -4.0), ("A", -4.5)]]
    toks = [{"token": '{"label": "', "logprob": -3.0, "top_logprobs": []},
            {"token": "ring", "logprob": -3.0, "top_logprobs": top},
            {"token": '", "confidence": 0.7, "reason": "x"}', "logprob": -0.1, "top_logprobs": []}]
    with FaultServer(default=ok(content, logprobs=toks)) as srv:
        ans = _ask(_teacher(srv.url, synth_task), tiny_ws, synth_task)
    body = srv.requests[0]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    e = math.exp  # "bar" and "cross" are not listed: each may be just below the list's lowest (-4.5)
    assert math.exp(ans.label_logprob) == pytest.approx(e(-3.0) / (e(-3.0) + e(-4.0) + 2 * e(-4.5)))


@pytest.mark.parametrize("content,label,kind,ok_", [
    ('Sure! Here it is: {"label": "DOTS", "confidence": "90%", "reason": "small blob"} Hope that helps.', "dot", None, True),
    ('{"label": "hexagon", "confidence": 0.99, "reason": "six sides"}', None, "off_list", True),
    ('{"label": "bar", "confidence": 0.9', None, "parse", False),
    ("I cannot tell what this is.", None, "parse", False),
    (None, None, "refused", False),
])
def test_answers_are_parsed_or_recorded(tiny_ws, synth_task, content, label, kind, ok_):
    with FaultServer(default=ok(content)) as srv:  # plain prompting: prose is then the model's, not an ignored format
        ans = _ask(_teacher(srv.url, synth_task, response_format="none"), tiny_ws, synth_task)
    assert ans.label == label and ans.error_kind == kind and ans.ok is ok_
    assert len(srv.requests) == 1  # a bad answer is recorded, not retried in a loop


def test_request_shape_image_as_data_url_and_diverse_passes(tiny_ws, synth_task):
    item = tiny_ws.store().items("synth", limit=1)[0]
    raw = tiny_ws.abspath(item.blob_path).read_bytes()
    with FaultServer() as srv:
        t = _teacher(srv.url, synth_task)
        run_sync(t.alabel_one(item, synth_task, tiny_ws, pass_index=0))
        run_sync(t.alabel_one(item, synth_task, tiny_ws, pass_index=1))
    b0, b1 = srv.requests[0]["body"], srv.requests[1]["body"]
    url = b0["messages"][1]["content"][1]["image_url"]["url"]
    import base64
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == raw
    assert b0["temperature"] == 0.0 and b1["temperature"] > 0
    assert b0["messages"][0]["content"] != b1["messages"][0]["content"]
    assert b0["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == list(synth_task.labels)


def test_cost_from_provider_or_task_prices(tiny_ws, synth_task):
    from dataclasses import replace
    priced = replace(synth_task, input_per_mtok=1.0, output_per_mtok=10.0)
    with FaultServer([ok(usage={"prompt_tokens": 1000, "completion_tokens": 100, "cost": 0.123})]) as srv:
        t = _teacher(srv.url, priced, local=False)  # stands in for a paid remote API
        a1 = _ask(t, tiny_ws, priced)
        a2 = _ask(t, tiny_ws, priced)
    assert a1.cost_usd == pytest.approx(0.123)
    assert a2.cost_usd == pytest.approx((300 * 1.0 + 20 * 10.0) / 1e6)
    assert a2.tokens_in == 300 and a2.tokens_out == 20


def test_local_server_is_not_charged_the_tasks_api_prices(tiny_ws, synth_task):
    """A built-in task carries a paid API's token prices; a server on loopback (llama.cpp, Ollama) is the user's
    own hardware, so it gets no token cost from the task (the cost model prices it by measured latency), while
    prices given to the teacher itself still apply."""
    from dataclasses import replace
    priced = replace(synth_task, input_per_mtok=1.0, output_per_mtok=10.0)
    with FaultServer([ok(), ok()]) as srv:
        local = _teacher(srv.url, priced)
        assert local.local and local.price_per_mtok(priced) == (None, None)
        assert _ask(local, tiny_ws, priced).cost_usd is None
        own = _teacher(srv.url, priced, price_in_per_mtok=2.0, price_out_per_mtok=4.0)
        assert own.price_per_mtok(priced) == (2.0, 4.0)
        assert _ask(own, tiny_ws, priced).cost_usd == pytest.approx((300 * 2.0 + 20 * 4.0) / 1e6)
    # the simulated teacher also listens on loopback, but it stands in for a paid API: it keeps the task's prices
    sim = OpenAICompatTeacher("http://127.0.0.1:9/v1", "simulated/synth-teacher", task=priced, api_key_env=None,
                              capability_cache=False)
    assert not sim.local and sim.price_per_mtok(priced) == (1.0, 10.0)


def test_api_key_only_in_header_and_redacted(tiny_ws, synth_task, monkeypatch, caplog):
    key = "sk-or-v1-FLYWHEELSECRET0123456789"
    monkeypatch.setenv("MY_TEST_KEY", key)
    echo = status(401, {"error": {"message": f"Incorrect API key provided: {key}"}})
    caplog.set_level(logging.DEBUG)
    with FaultServer([echo]) as srv:
        t = _teacher(srv.url, synth_task, api_key_env="MY_TEST_KEY")
        ans = _ask(t, tiny_ws, synth_task)
        ans2 = _ask(t, tiny_ws, synth_task)
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    assert not ans.ok and ans.error_kind == "auth" and "MY_TEST_KEY" in ans.error_detail
    assert key not in repr(t) and key not in str(ans) and key not in str(ans2) and key not in caplog.text
    assert ans2.ok


def test_missing_key_is_a_clear_error(synth_task, monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    t = teacher_from_spec("openrouter:google/gemini-2.5-flash", synth_task)
    with pytest.raises(TeacherConfigError, match="OPENROUTER_API_KEY is not set"):
        t.check_ready()


def test_specs():
    assert parse_spec("openrouter:google/gemini-2.5-flash") == ("https://openrouter.ai/api/v1", "google/gemini-2.5-flash", "OPENROUTER_API_KEY")
    assert parse_spec("openai:gpt-4o-mini")[2] == "OPENAI_API_KEY"
    assert parse_spec("gemini:gemini-2.5-flash")[0].startswith("https://generativelanguage.googleapis.com")
    assert parse_spec("ollama:llama3.2-vision") == ("http://127.0.0.1:11434/v1", "llama3.2-vision", None)
    assert parse_spec("anthropic:claude-haiku-4-5") == ("https://api.anthropic.com/v1", "claude-haiku-4-5",
                                                        "ANTHROPIC_API_KEY")
    assert parse_spec("groq:llama-3.1-8b-instant")[:2] == ("https://api.groq.com/openai/v1", "llama-3.1-8b-instant")
    assert parse_spec("http://127.0.0.1:9/v1/|m/x") == ("http://127.0.0.1:9/v1", "m/x", None)
    with pytest.raises(TeacherConfigError, match="PROVIDER:MODEL"):
        parse_spec("nonsense")


def test_bare_url_spec_discovers_model(synth_task):
    with FaultServer() as srv:
        t = teacher_from_spec(srv.url, synth_task)
    assert t.model == "fault-model" and t.api_key_env is None


def test_prompt_version_changes_with_the_prompt(synth_task):
    from dataclasses import replace
    a = OpenAICompatTeacher("http://127.0.0.1:1/v1", "m", task=synth_task, api_key_env=None)
    b = OpenAICompatTeacher("http://127.0.0.1:1/v1", "m", task=replace(synth_task, instructions="Other words."), api_key_env=None)
    assert a.prompt_version != b.prompt_version
    assert a.prompt_version == OpenAICompatTeacher("http://10.0.0.9/v1", "m2", task=synth_task).prompt_version
    # a local server is asked for the label only (no reason): another prompt, so another cache key; a remote API
    # and a local teacher told to ask for reasons share theirs
    remote = OpenAICompatTeacher("http://x/v1", "m2", task=synth_task)
    assert remote.reason and not a.reason and remote.prompt_version != a.prompt_version
    assert remote.prompt_version == OpenAICompatTeacher("http://127.0.0.1:1/v1", "m", task=synth_task, reason=True,
                                                        api_key_env=None).prompt_version


def test_alabel_raw_for_inputs_outside_the_store(synth_task):
    import numpy as np
    from PIL import Image
    with FaultServer() as srv:
        t = _teacher(srv.url, synth_task)
        ans = asyncio.run(t.alabel_raw(Image.fromarray(np.zeros((8, 8), np.uint8)), synth_task))
        ans_t = asyncio.run(t.alabel_raw("some text", synth_task))
    assert ans.ok and ans.item_id == 0 and len(ans.content_hash) == 64
    assert srv.requests[1]["body"]["messages"][1]["content"] == "some text" and ans_t.ok


def test_retry_after_is_honoured_and_backoff_grows(tiny_ws, synth_task):
    with FaultServer([status(429, headers={"Retry-After": "0.3"}), status(503), status(503)]) as srv:
        t = _teacher(srv.url, synth_task, backoff_base=0.02)
        ans = _ask(t, tiny_ws, synth_task)
    waits = list(t.retry_waits)
    assert ans.ok and len(waits) == 3
    assert 0.3 <= waits[0] <= 0.36  # the server's Retry-After, not our backoff
    assert 0.02 <= waits[1] <= 0.06 and 0.04 <= waits[2] <= 0.12  # base x 2^attempt x jitter(0.5-1.5)


def test_rate_limiter_spaces_request_starts():
    from llm_flywheel.teachers.openai_compat import RateLimiter

    async def go():
        lim = RateLimiter(rpm=600)  # one start per 0.1 s
        for _ in range(4):
            await lim.wait()
        return lim._next
    import time
    t0 = time.monotonic()
    nxt = asyncio.run(go())
    assert nxt - t0 >= 0.4 - 1e-6  # four starts booked 0.1 s apart
    with pytest.raises(ValueError):
        RateLimiter(rpm=0)


def test_azure_spec_uses_the_resource_endpoint_and_its_v1_api(monkeypatch):
    """azure:DEPLOYMENT: Azure OpenAI's v1 API (no api-version), the key as a Bearer token, as the OpenAI client sends
    it; a missing endpoint names the variable before any call."""
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    with pytest.raises(TeacherConfigError, match="AZURE_OPENAI_ENDPOINT"):
        parse_spec("azure:my-gpt")
    for endpoint in ("https://res.openai.azure.com", "https://res.openai.azure.com/", "https://res.openai.azure.com/openai/v1/"):
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", endpoint)
        assert parse_spec("azure:my-gpt") == ("https://res.openai.azure.com/openai/v1", "my-gpt", "AZURE_OPENAI_API_KEY")
    with FaultServer(default=ok('{"label": "bar", "confidence": 0.9}')) as srv:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", srv.url[: -len("/v1")])
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-test-key")
        from llm_flywheel.core.task import Task

        task = Task(name="t", modality="text", labels=("bar", "ring"), instructions="Which shape is named?")
        t = teacher_from_spec("azure:my-gpt", task)
        t.check_ready()
        assert run_sync(t.alabel_raw("a bar", task)).label == "bar"
    req = srv.requests[0]
    assert req["path"] == "/openai/v1/chat/completions" and req["body"]["model"] == "my-gpt"
    assert req["headers"]["Authorization"] == "Bearer azure-test-key"
