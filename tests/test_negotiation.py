"""Capability negotiation against fault servers that refuse structured output the ways real servers do.

At concurrency 32: no item is lost, exactly one downgrade path is taken (one probe while the others wait; in-flight
refusals of one mode downgrade it once), the result is remembered in the workspace store and a second client
starts from it; forgetting it starts over.
"""

from __future__ import annotations

import threading

import pytest

from conftest import make_synth_dataset
from fault_server import FaultServer, LLAMA_CPP_PYTHON_500, llama_cpp_python, ok, refuse_modes, rf_type
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, StoreCapabilityCache
from llm_flywheel.store.workspace import Workspace

N_ITEMS = 64
CONCURRENCY = 32
LATENCY = 0.03  # keeps requests in flight together


@pytest.fixture()
def neg_ws(tmp_path) -> tuple[Workspace, Task]:
    task = Task(name="synth", modality="image", labels=("bar", "ring", "cross", "dot"), instructions="Classify the shape.")
    ws = Workspace.open(tmp_path / "ws")
    make_synth_dataset(ws, task, n_train=N_ITEMS - 8, n_test=8)
    return ws, task


def _teacher(url: str, task: Task, **kw) -> OpenAICompatTeacher:
    kw.setdefault("backoff_base", 0.01)
    return OpenAICompatTeacher(url, "fault-model", api_key_env=None, task=task, **kw)


def _modes(srv: FaultServer, start: int = 0) -> list[str | None]:
    return [rf_type(r["body"]) for r in srv.requests[start:]]


def _422(mode: str) -> tuple[int, dict]:  # FastAPI / pydantic validation, as vLLM and others send it
    return 422, {"detail": [{"type": "literal_error", "loc": ["body", "response_format", "type"],
                             "msg": "Input should be 'text' or 'json_object'", "input": mode}]}


def _400(mode: str) -> tuple[int, dict]:  # OpenAI-style
    return 400, {"error": {"message": f"Invalid parameter: 'response_format' of type '{mode}' is not supported with "
                                      f"this model.", "type": "invalid_request_error", "param": "response_format"}}


REFUSALS = {
    # name: (server action, downgrade path, requests sent in each refused/ignored mode)
    "400-every-format": (refuse_modes({m: _400(m) for m in ("json_schema", "json_object_schema", "json_object")},
                                      latency=LATENCY),
                         ["json_object_schema", "json_object", "none"],
                         {"json_schema": 1, "json_object_schema": 1, "json_object": 1}),
    "422-json-schema": (refuse_modes({"json_schema": _422("json_schema")}, latency=LATENCY),
                        ["json_object_schema"], {"json_schema": 1}),
    "500-llama-cpp-python": (llama_cpp_python(latency=LATENCY), ["json_object_schema"], {"json_schema": 1}),
    # prose under json_schema: the format is silently ignored; T=0 repeats itself, so two prose replies decide it
    "ignored-schema": (refuse_modes({}, prose_for=("json_schema",), latency=LATENCY),
                       ["json_object_schema"], {"json_schema": 2}),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals_at_concurrency_32_one_path_remembered_and_reused(neg_ws, name):
    ws, task = neg_ws
    action, path, refused_counts = REFUSALS[name]
    items = ws.store().items("synth")
    assert len(items) == N_ITEMS
    with FaultServer(default=action) as srv:
        t = _teacher(srv.url, task)
        answers = t.label(items, task, ws=ws, concurrency=CONCURRENCY)
        final = path[-1]
        # no item lost: every item answered, in the mode negotiated
        assert len(answers) == N_ITEMS and all(a.ok and a.label == "bar" for a in answers)
        assert sorted(a.item_id for a in answers) == sorted(it.id for it in items)
        # exactly one downgrade path, each refused mode tried by one probe only
        assert [d["to"] for d in t.negotiation] == path
        modes = _modes(srv)
        for mode, n in refused_counts.items():
            assert modes.count(mode) == n, (mode, modes[:10])
        final_rf = None if final == "none" else final
        assert modes.count(final_rf) == N_ITEMS
        assert len(srv.requests) == N_ITEMS + sum(refused_counts.values())
        # remembered in the store, keyed by (base_url, model)
        with ws.store() as s:
            caps = s.teacher_capability(srv.url, "fault-model")
        assert caps is not None and caps["response_format"] == final and [d["to"] for d in caps["downgrades"]] == path
        # a second client (a new teacher object, as in the next run) starts from what worked
        n0 = len(srv.requests)
        t2 = _teacher(srv.url, task)
        again = t2.label(items, task, ws=ws, concurrency=CONCURRENCY)
        assert all(a.ok for a in again) and t2.negotiation == [] and t2.capabilities_source == "memory"
        assert _modes(srv, n0) == [final_rf] * N_ITEMS
        # forgetting it starts the negotiation over (a server that was upgraded or replaced)
        t2.forget_capabilities()
        with ws.store() as s:
            assert s.teacher_capability(srv.url, "fault-model") is None
        n1 = len(srv.requests)
        t2.label(items[:1], task, ws=ws)
        assert _modes(srv, n1)[0] == "json_schema"


def test_memory_is_per_base_url_and_model(neg_ws):
    ws, task = neg_ws
    items = ws.store().items("synth", limit=2)
    with FaultServer(default=llama_cpp_python()) as srv:
        _teacher(srv.url, task).label(items, task, ws=ws)
        other = OpenAICompatTeacher(srv.url, "other-model", api_key_env=None, task=task)
        n0 = len(srv.requests)
        other.label(items[:1], task, ws=ws)
        assert _modes(srv, n0)[0] == "json_schema"  # another model on the same server negotiates for itself
    cache = StoreCapabilityCache(ws)
    assert cache.get(srv.url, "fault-model")["response_format"] == "json_object_schema"
    assert cache.get(srv.url, "other-model")["response_format"] == "json_object_schema"
    assert StoreCapabilityCache(ws, max_age_s=-1).get(srv.url, "fault-model") is None  # stale records are ignored


def test_a_mode_that_starts_failing_is_downgraded_once_under_load(neg_ws):
    """The server is swapped under a running client: the 32 requests in flight with json_schema are all refused,
    yet the mode steps down once, and every item is answered."""
    ws, task = neg_ws
    items = ws.store().items("synth")
    served = {"n": 0}
    lock = threading.Lock()
    llama = llama_cpp_python(latency=LATENCY)

    def swap(h, body):
        with lock:
            served["n"] += 1
            before = served["n"] <= 6
        (ok() if before else llama)(h, body)

    with FaultServer(default=swap) as srv:
        t = _teacher(srv.url, task)
        answers = t.label(items, task, ws=ws, concurrency=CONCURRENCY)
    assert all(a.ok and a.label == "bar" for a in answers) and len(answers) == N_ITEMS
    assert [d["to"] for d in t.negotiation] == ["json_object_schema"]
    modes = _modes(srv)
    assert modes.count("json_object_schema") == N_ITEMS - 6
    assert modes.count("json_schema") > 7  # many were in flight when it changed ...
    assert t.response_format == "json_object_schema"  # ... and still only one step was taken
    assert StoreCapabilityCache(ws).get(srv.url, "fault-model")["response_format"] == "json_object_schema"


def test_label_items_against_llama_cpp_python_loses_nothing(neg_ws):
    """The labeller (cache, store) over the same negotiation: every item labelled in one run, nothing failed."""
    ws, task = neg_ws
    ids = [it.id for it in ws.store().items("synth")]
    with FaultServer(default=llama_cpp_python(latency=0.005)) as srv:
        t = _teacher(srv.url, task)
        r = label_items(ws, "synth", ids, t, LabelConfig(passes=1, concurrency=CONCURRENCY, tie_break=False),
                        progress=False)
    assert r.failed == 0 and r.labelled == len(ids)
    assert _modes(srv).count("json_schema") == 1


def test_logprobs_refusal_is_remembered_too(neg_ws):
    ws, task = neg_ws
    items = ws.store().items("synth", limit=20)

    def act(h, body):
        from fault_server import _send
        if body.get("logprobs"):
            _send(h, 400, {"error": {"message": "logprobs is not supported by this model"}})
        else:
            ok()(h, body)

    with FaultServer(default=act) as srv:
        t = _teacher(srv.url, task)
        assert all(a.ok for a in t.label(items, task, ws=ws, concurrency=CONCURRENCY))
        assert sum(1 for r in srv.requests if r["body"].get("logprobs")) == 1
        t2 = _teacher(srv.url, task)
        n0 = len(srv.requests)
        t2.label(items[:3], task, ws=ws)
        assert not any(r["body"].get("logprobs") for r in srv.requests[n0:])
        assert t2.response_format == "json_schema"


def test_llama_cpp_python_500_body_is_recognised():
    from llm_flywheel.teachers.openai_compat import refused_response_format
    assert refused_response_format(500, LLAMA_CPP_PYTHON_500)
    assert not refused_response_format(500, '{"error": {"message": "Internal Server Error"}}')
    assert not refused_response_format(503, "Service Unavailable")
    assert refused_response_format(400, "Invalid schema for response_format 'label_answer'")


def test_prose_cut_off_at_max_tokens_also_counts_as_an_ignored_format(neg_ws):
    """A small model that ignores the format rambles until max_tokens: that must not confirm json_schema."""
    from fault_server import cut_off
    ws, task = neg_ws
    items = ws.store().items("synth", limit=8)

    def act(h, body):
        if rf_type(body) == "json_schema":
            cut_off("Well, looking at this picture carefully, the shape in the middle seems to be")(h, body)
        else:
            ok()(h, body)

    with FaultServer(default=act) as srv:
        t = _teacher(srv.url, task)
        answers = t.label(items, task, ws=ws, concurrency=CONCURRENCY)
    assert all(a.ok and a.label == "bar" for a in answers)
    assert [d["to"] for d in t.negotiation] == ["json_object_schema"] and _modes(srv).count("json_schema") == 2


def test_the_record_keeps_the_downgrades_of_earlier_runs(neg_ws):
    ws, task = neg_ws
    items = ws.store().items("synth", limit=3)
    with FaultServer(default=llama_cpp_python()) as srv:
        _teacher(srv.url, task).label(items, task, ws=ws)
        _teacher(srv.url, task).label(items, task, ws=ws)  # starts from memory, confirms, saves again
    caps = StoreCapabilityCache(ws).get(srv.url, "fault-model")
    assert caps["response_format"] == "json_object_schema"
    assert [(d["from"], d["to"]) for d in caps["downgrades"]] == [("json_schema", "json_object_schema")]
    assert "response_format" in caps["downgrades"][0]["why"]  # the server's own words


def test_a_reasoning_model_is_negotiated_once_under_load_and_remembered(neg_ws):
    """OpenAI's gpt-5.x / o-series refuse max_tokens and a temperature other than 1 with HTTP 400: the client
    switches once at concurrency 32 (one probe while the others wait), and a second client starts from the record."""
    from fault_server import openai_reasoning_model

    ws, task = neg_ws
    items = ws.store().items("synth", limit=40)
    with FaultServer(default=openai_reasoning_model(thought=50)) as srv:
        t = _teacher(srv.url, task)
        assert all(a.ok for a in t.label(items, task, ws=ws, concurrency=CONCURRENCY))
        refused = [r for r in srv.requests if "max_tokens" in r["body"] or r["body"].get("temperature", 1) != 1]
        assert len(refused) == 2 and len(srv.requests) == len(items) + 2
        t2 = _teacher(srv.url, task)
        n0 = len(srv.requests)
        assert all(a.ok for a in t2.label(ws.store().items("synth")[40:43], task, ws=ws))  # items not asked yet
        assert all("max_completion_tokens" in r["body"] and "temperature" not in r["body"] for r in srv.requests[n0:])
        assert len(srv.requests) > n0
