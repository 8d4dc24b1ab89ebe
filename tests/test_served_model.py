"""Cached answers belong to the model that gave them: a local server restarted with another GGUF under the same name.

Against a purpose-built server on 127.0.0.1 that answers ``GET /props`` with a ``model_path``, as llama.cpp does."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fault_server import FaultServer, ok
from ports import free_port
from llm_flywheel.core.task import Task
from llm_flywheel.data.base import Record, register
from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.teachers.errors import TeacherConfigError
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.server import parse_props

TASK = Task(name="mail", modality="text", labels=("spam", "ham"), instructions="Is this email spam or ham?")


def _props(path: str) -> dict:
    return {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096}, "model_path": path}


def _run(ws, url: str, name: str = "local"):
    teacher = teacher_from_spec(f"{url}|{name}", TASK, api_key_env="")
    with ws.store() as s:
        ids = [it.id for it in s.items("mail")]
    return label_items(ws, "mail", ids, teacher, LabelConfig(passes=1), progress=False)


def test_a_swapped_model_file_under_the_same_name_is_refused_before_any_call(ws):
    register(ws, TASK, [Record(f"m{i}", text=f"mail number {i}") for i in range(6)], progress=False)
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}'),
                     props=_props("/models/qwen2.5-0.5b-instruct-q4_k_m.gguf")) as srv:
        first = _run(ws, srv.url)
        assert first.calls_made == 6
        srv.props = _props("/mnt/other/qwen2.5-0.5b-instruct-q4_k_m.gguf")  # the same file, moved: still its answers
        assert _run(ws, srv.url).calls_made == 0
        srv.props = _props("/models/smollm2-135m-instruct.Q4_1.gguf")  # another model behind the same name
        with pytest.raises(TeacherConfigError, match=r"smollm2-135m-instruct\.Q4_1\.gguf.*6 answers.*'local'.*"
                                                     r"qwen2\.5-0\.5b-instruct-q4_k_m\.gguf.*\|<new-name>"):
            _run(ws, srv.url)
        res = CliRunner().invoke(main, ["-w", str(ws.root), "label", "mail", "--split", "all",
                                        "--teacher", f"{srv.url}|local", "--passes", "1"])
        served = CliRunner().invoke(main, ["-w", str(ws.root), "serve", "mail", "--teacher", f"{srv.url}|local",
                                           "--port", str(free_port())])  # refused before any model is loaded
        asked = len(srv.requests)
        renamed = _run(ws, srv.url, name="smollm2")  # the fix the message names: the new model's own name
    assert asked == 6  # neither refused run made a call
    assert res.exit_code == 2 and "its own name" in res.output, res.output
    assert served.exit_code == 2 and "its own name" in served.output, served.output
    assert renamed.calls_made == 6
    with ws.store() as s:
        assert s.teacher_model_file("local")["model_file"] == "qwen2.5-0.5b-instruct-q4_k_m.gguf"
        assert s.teacher_model_file("smollm2")["model_file"] == "smollm2-135m-instruct.Q4_1.gguf"


def test_a_new_model_file_under_a_name_without_cached_answers_is_simply_remembered(ws):
    register(ws, TASK, [Record("m0", text="hello")], progress=False)
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}'), props=_props("/m/a.gguf")) as srv:
        with ws.store() as s:
            s.set_teacher_model_file("local", "old.gguf", srv.url)  # a name recorded, no answer cached under it
        assert _run(ws, srv.url).calls_made == 1
    with ws.store() as s:
        assert s.teacher_model_file("local")["model_file"] == "a.gguf"


def test_llama_cpp_python_without_an_alias_names_its_gguf_in_the_model_list(ws):
    register(ws, TASK, [Record("m0", text="hello")], progress=False)
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}'), models=[{"id": "/m/a.gguf"}]) as srv:
        assert _run(ws, srv.url).calls_made == 1
        srv.models = [{"id": "/m/b.gguf"}]
        with pytest.raises(TeacherConfigError, match=r"now serves b\.gguf"):
            _run(ws, srv.url)
        srv.models = [{"id": "/m/a.gguf"}, {"id": "/m/b.gguf"}]  # a list of several (Ollama, a router): unknown
        assert _run(ws, srv.url).calls_made == 0


def test_servers_that_do_not_say_which_model_they_serve_are_not_checked(ws):
    register(ws, TASK, [Record("m0", text="hello")], progress=False)
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}')) as srv:  # no /props (vLLM, Ollama, APIs)
        assert _run(ws, srv.url).calls_made == 1
    with ws.store() as s:
        assert s.teacher_model_file("local") is None
    assert parse_props({"model_path": "C:\\models\\a.gguf"}).model_file == "a.gguf"
    assert parse_props(json.loads('{"model_path": "  "}')).model_file is None


def test_a_provider_alias_that_moves_to_another_snapshot_is_recorded_and_said(ws):
    """A provider's alias (``gpt-4o``) is served by one dated snapshot, then another: each answer keeps the model
    its response named, and a run whose answers came from two says so with the fix (a dated name); one model: no
    warning."""
    register(ws, TASK, [Record(f"m{i}", text=f"mail number {i}") for i in range(6)], progress=False)
    old, new = "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"
    with FaultServer(default=ok('{"label": "ham", "confidence": 0.8}', model=old)) as srv:
        teacher = teacher_from_spec(f"{srv.url}|gpt-4o", TASK, api_key_env="")
        with ws.store() as s:
            ids = [it.id for it in s.items("mail")]
        first = label_items(ws, "mail", ids[:3], teacher, LabelConfig(passes=1), progress=False)
        srv.default = ok('{"label": "ham", "confidence": 0.8}', model=new)  # the alias moved
        both = label_items(ws, "mail", ids, teacher, LabelConfig(passes=1), progress=False)
        cli = CliRunner().invoke(main, ["-w", str(ws.root), "label", "mail", "--split", "all",
                                        "--teacher", f"{srv.url}|gpt-4o", "--passes", "1", "--json"])
    assert first.served_models == {old: 3} and first.warnings == []
    assert both.calls_made == 3 and both.served_models == {old: 3, new: 3}
    (w,) = both.warnings
    assert w["code"] == "mixed_models" and old in w["message"] and new in w["message"]
    assert f"{srv.url}|<one of them>" in w["fix"]
    assert cli.exit_code == 0 and "came from 2 models" in cli.output, cli.output
    with ws.store() as s:
        rows = s.query("SELECT served_model FROM teacher_answers WHERE ok=1 ORDER BY id")
    assert [r["served_model"] for r in rows] == [old] * 3 + [new] * 3

