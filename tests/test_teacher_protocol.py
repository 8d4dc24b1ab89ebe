"""The Teacher protocol as labelling and the cascade use it: sessions, and what a local server says about itself.

Against purpose-built servers on 127.0.0.1 (tests/fault_server.py), one of which answers ``GET /props`` the way
llama.cpp's ``llama-server`` does."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from fault_server import FaultServer, ok, slow, user_text
from llm_flywheel.core.task import Task
from llm_flywheel.store.records import Item
from llm_flywheel.teachers import ServerInfo, Teacher, TeacherSession
from llm_flywheel.teachers.concurrency import LOCAL_START, forget_levels, start_level
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, run_sync

TASK = Task(name="mail", modality="text", labels=("spam", "ham"), instructions="Is this email spam or ham?")
LLAMA_PROPS = {"total_slots": 3, "default_generation_settings": {"n_ctx": 700}}  # -np 3, 700 tokens a slot


def _item(i: int, text: str) -> Item:
    return Item(id=i, dataset="mail", source_ref=str(i), content_hash=f"h{i:04d}", modality="text", blob_path=None,
                text=text, features=None, source_split="train", split="train", gold_label=None)


def _teacher(url: str, **kw) -> OpenAICompatTeacher:
    kw.setdefault("capability_cache", False)
    kw.setdefault("backoff_base", 0.01)
    return OpenAICompatTeacher(url, "fault-model", api_key_env=None, **kw)


@pytest.fixture(autouse=True)
def _cold_levels():
    forget_levels()
    yield
    forget_levels()


def test_the_openai_compatible_teacher_is_a_teacher_and_opens_sessions():
    t = _teacher("http://127.0.0.1:9/v1")
    assert isinstance(t, Teacher) and isinstance(t.session(TASK), TeacherSession)
    tin, tout, usd = t.estimate_call(TASK, text_len=400)  # a CallEstimate still unpacks like the old tuple
    assert tin > 100 and tout > 0 and usd is None  # a local server: no token prices


def test_a_session_labels_concurrently_without_touching_the_teacher():
    items = [_item(i, f"mail number {i}") for i in range(12)]
    ok_ham = ok('{"label": "ham", "confidence": 0.8}')
    with FaultServer(default=slow(0.05, ok_ham)) as srv:
        t = _teacher(srv.url)

        async def go():
            async with t.session(TASK, rpm=6000) as s:
                answers = await asyncio.gather(*(s.alabel(it, pass_index=0) for it in items))
                clients = len(s._all)
            return answers, clients, s

        answers, clients, session = run_sync(go())
    assert [a.label for a in answers] == ["ham"] * 12 and all(a.ok for a in answers)
    assert sorted(user_text(r["body"]) for r in srv.requests) == sorted(it.text for it in items)
    assert 1 < clients <= 12  # one connection per call in flight, reused after
    assert t.task is None and t.limiter.interval == 0  # the run's task and rate live in the session
    with pytest.raises(RuntimeError, match="closed"):
        run_sync(session.alabel(items[0]))


def test_a_llama_cpp_server_sets_the_start_level_prompt_cache_and_text_budget():
    long_text = "Dear friend, " + "you have won a prize. " * 400  # ~8,800 characters: far more than 700 tokens
    with FaultServer(default=ok('{"label": "spam", "confidence": 0.9}'), props=LLAMA_PROPS) as srv:
        t = _teacher(srv.url, task=TASK)
        t.check_ready()
        assert t.server_info() == ServerInfo(slots=3, n_ctx=700, source="llama.cpp /props")
        assert start_level(t.base_url, t.model, 16, local=t.local) == 3  # the server's slots, not LOCAL_START
        assert start_level(t.base_url, t.model, 2, local=t.local) == 2  # never above the user's cap
        short, long_ = run_sync(t.session(TASK).alabel(_item(1, "hi, lunch today?"))), \
            run_sync(t.session(TASK).alabel(_item(2, long_text)))
    assert srv.gets.count("/props") == 1  # asked once per teacher
    bodies = [r["body"] for r in srv.requests]
    assert all(b["cache_prompt"] is True for b in bodies)
    assert user_text(bodies[0]) == "hi, lunch today?" and short.ok and "input_truncated" not in short.extra
    sent = user_text(bodies[1])
    assert len(sent) < len(long_text) and long_text.startswith(sent.removesuffix(" …[truncated]"))
    assert long_.ok and long_.extra["input_truncated"] is True and "input_truncated" in long_.error_detail
    assert len(sent) // 3 + len(bodies[1]["messages"][0]["content"]) // 3 + bodies[1]["max_tokens"] <= 700


def test_a_server_without_props_changes_nothing_and_a_remote_api_is_not_asked():
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}')) as srv:
        t = _teacher(srv.url, task=TASK)
        t.check_ready()
        assert t.server_info() == ServerInfo()
        assert start_level(t.base_url, t.model, 16, local=t.local) == LOCAL_START
        text = "x" * 12_000  # within the 16,000 characters a teacher is sent (teachers.texts)
        ans = run_sync(t.session(TASK).alabel(_item(1, text)))
        remote = _teacher(srv.url, task=TASK, local=False)
        remote.check_ready()
        run_sync(remote.session(TASK).alabel(_item(2, "hello")))
    assert ans.ok and user_text(srv.requests[0]["body"]) == text  # no context size known: nothing is cut
    assert "cache_prompt" not in srv.requests[0]["body"]
    assert srv.gets.count("/props") == 1  # the local teacher's one question; the remote teacher asked nothing


def test_a_local_server_is_asked_for_the_label_only_a_remote_api_for_a_reason_too():
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}')) as srv:
        local, remote = _teacher(srv.url), _teacher(srv.url, local=False)
        a = run_sync(local.session(TASK).alabel(_item(1, "hello")))
        b = run_sync(remote.session(TASK).alabel(_item(1, "hello")))
    (lb, rb) = (r["body"] for r in srv.requests)
    props = lambda body: set(body["response_format"]["json_schema"]["schema"]["properties"])  # noqa: E731
    assert props(lb) == {"label", "confidence"} and props(rb) == {"label", "confidence", "reason"}
    assert "reason" not in lb["messages"][0]["content"] and "reason" in rb["messages"][0]["content"]
    assert a.ok and b.ok and a.prompt_version != b.prompt_version  # different prompts never share cached answers
    assert json.loads(a.raw_text)["label"] == "ham"


def test_a_llama_cpp_server_is_not_probed_one_request_at_a_time():
    """Without /props the first request probes the format while the others wait; llama.cpp said what it is."""
    with FaultServer(default=slow(0.3, ok('{"label": "ham", "confidence": 0.8}')), props=LLAMA_PROPS) as srv:
        t = _teacher(srv.url)
        t.check_ready()

        async def go():
            async with t.session(TASK) as s:
                return await asyncio.gather(*(s.alabel(_item(i, f"mail {i}")) for i in range(4)))

        answers = run_sync(go())
    assert all(a.ok for a in answers)
    assert not any(a.extra.get("probe_wait_s") for a in answers)  # nobody queued behind a probe


def _busy_slot(tokens: int) -> list[dict]:
    """llama.cpp's ``/slots`` with one busy slot that has decoded ``tokens`` so far (fields as the real server)."""
    return [{"id": 0, "id_task": 7, "n_ctx": 700, "is_processing": True, "n_prompt_tokens": 300,
             "n_prompt_tokens_processed": 300, "next_token": [{"has_next_token": True, "n_decoded": tokens}]}]


@pytest.fixture
def quick_progress_checks(monkeypatch):
    import llm_flywheel.teachers.asking as asking

    monkeypatch.setattr(asking, "PROGRESS_CHECK_S", 0.2)


def test_a_llama_cpp_server_still_working_past_the_timeout_is_not_hung_up_on(quick_progress_checks):
    """A busy CPU server slows to seconds a token: while /slots shows the work advancing the client keeps waiting
    (up to its cap) instead of cancelling work half done and sending it again."""
    t0 = time.monotonic()
    advancing = lambda: _busy_slot(int(10 * (time.monotonic() - t0)))  # noqa: E731
    with FaultServer(script=[slow(1.5, ok('{"label": "spam", "confidence": 0.9}'))], props=LLAMA_PROPS,
                     slots=advancing) as srv:
        t = _teacher(srv.url, task=TASK, timeout=20)
        t.timeout_first = 0.4  # the latency-based timeout before any latency is measured
        t.check_ready()
        ans = run_sync(t.session(TASK).alabel(_item(1, "cheap pills")))
    assert ans.ok and ans.label == "spam" and ans.extra["retries"] == 0
    assert len(srv.requests) == 1 and t.progress_waits == 1  # one request, waited for past its 0.4 s
    assert ans.latency_s >= 1.5 and srv.gets.count("/slots") >= 2


@pytest.mark.parametrize("slots", [lambda: _busy_slot(5), lambda: [], None],
                         ids=["no-progress", "no-slot-busy", "no-slots-route"])
def test_a_server_that_shows_no_progress_is_timed_out_as_before(quick_progress_checks, slots):
    with FaultServer(script=[slow(3.0)], default=ok('{"label": "ham", "confidence": 0.8}'), props=LLAMA_PROPS,
                     slots=slots) as srv:
        t = _teacher(srv.url, task=TASK, timeout=20)
        t.timeout_first = 0.4
        t.check_ready()
        ans = run_sync(t.session(TASK).alabel(_item(1, "lunch?")))
    assert ans.ok and ans.label == "ham"  # the retry answered
    assert ans.extra["retries"] == 1 and len(srv.requests) == 2 and t.progress_waits == (1 if slots and slots() else 0)
    assert ans.latency_s < 2.5  # hung up on well before the slow reply's 3 s


def test_the_cap_still_bounds_a_server_that_keeps_working(quick_progress_checks):
    t0 = time.monotonic()
    advancing = lambda: _busy_slot(int(10 * (time.monotonic() - t0)))  # noqa: E731
    with FaultServer(script=[slow(4.0)], default=ok('{"label": "ham", "confidence": 0.8}'), props=LLAMA_PROPS,
                     slots=advancing) as srv:
        t = _teacher(srv.url, task=TASK, timeout=1.2)  # the caller's cap
        t.timeout_first = 0.4
        t.check_ready()
        ans = run_sync(t.session(TASK).alabel(_item(1, "lunch?")))
    assert ans.ok and ans.extra["retries"] == 1 and len(srv.requests) == 2


def test_llama_cpp_with_logprobs_is_not_asked_for_a_stated_confidence():
    """llama.cpp's own server (it answers /props) with logprobs on: the schema ends after the label -- its label
    probability comes from the logprobs -- under the same prompt and cache key; without logprobs, on another local
    server, or with ``confidence=True``, the number is asked for as before."""
    def schema_props(body: dict) -> list[str]:
        fmt = body["response_format"]
        return list((fmt.get("json_schema", {}).get("schema") or fmt.get("schema"))["properties"])

    with FaultServer(default=ok('{"label": "spam"}'), props=LLAMA_PROPS) as srv:
        lean, asked = _teacher(srv.url, task=TASK), _teacher(srv.url, task=TASK, confidence=True)
        no_lp = _teacher(srv.url, task=TASK, logprobs=False)
        for i, t in enumerate((lean, asked, no_lp)):
            t.check_ready()
            ans = run_sync(t.session(TASK).alabel(_item(i, "win a prize now")))
            assert ans.ok and ans.label == "spam"
    with FaultServer(default=ok('{"label": "spam", "confidence": 0.9}')) as plain:  # no /props: vLLM, Ollama, ...
        other = _teacher(plain.url, task=TASK)
        other.check_ready()
        run_sync(other.session(TASK).alabel(_item(9, "win a prize now")))
    bodies = [r["body"] for r in srv.requests]
    assert [schema_props(b) for b in bodies] == [["label"], ["label", "confidence"], ["label", "confidence"]]
    assert schema_props(plain.requests[0]["body"]) == ["label", "confidence"]
    assert bodies[0]["messages"] == bodies[1]["messages"]  # the same prompt ...
    assert lean.prompt_version == asked.prompt_version == other.prompt_version  # ... and the same cache key
