"""Reference models (trained on gold labels) are never defaults: one definition of the serving model everywhere."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from click.testing import CliRunner

from llm_flywheel.pipeline.cascade import Cascade, CascadeError, promoted_version
from llm_flywheel.store import DB_ERRORS
from llm_flywheel.interfaces.cli import main
from llm_flywheel.store.base import MIGRATIONS, Store, _split_sql
from llm_flywheel.students.base import StudentError
from llm_flywheel.pipeline.training import latest_version, serving_version
from test_cascade import trained_calibrated_ws


def _run(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cal_ws(tmp_path_factory):
    return trained_calibrated_ws(tmp_path_factory.mktemp("ref") / "ws")


def _add(s: Store, version: str, *, role: str = "student", dataset: str = "d") -> None:
    s.add_model(version=version, dataset=dataset, kind="image-cnn", path=f"models/{version}", metrics={}, meta={},
                round=None, role=role)


def test_evaluate_ceiling_then_calibrate_predict_evaluate_use_the_served_model(cal_ws):
    """The bug: `evaluate --ceiling` registered `<v>-gold-ceiling`, the newest model, and every default picked it."""
    ws, student = cal_ws
    r = _run(ws, "evaluate", "synth", "--ceiling")
    assert r.exit_code == 0, r.output
    ceiling = f"{student}-gold-ceiling"
    with ws.store() as s:
        assert s.model(ceiling)["role"] == "reference" and s.model(student)["role"] == "student"
        assert s.model_versions("synth")[0] == ceiling  # the ceiling IS the newest row ...
        assert s.serving_version("synth") == student  # ... and still not the serving model

    r = _run(ws, "calibrate", "synth", "--target-accuracy", "0.9", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == student

    r = _run(ws, "predict", "synth", "--split", "stream", "--limit", "5", "--json", "--no-log", "--show", "0")
    assert r.exit_code == 0, r.output
    answers = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 5 and {a["model_version"] for a in answers} == {student}

    r = _run(ws, "evaluate", "synth")
    assert r.exit_code == 0, r.output
    with ws.store() as s:
        assert s.latest_report("evaluation")["version"] == student
    assert Cascade.from_store(ws, "synth").version == student  # what `flywheel serve` builds

    # asked for by name, the reference model is used
    r = _run(ws, "calibrate", "synth", "--version", ceiling, "--target-accuracy", "0.9", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == ceiling
    r = _run(ws, "predict", "synth", "--split", "stream", "--limit", "2", "--json", "--no-log", "--show", "0",
             "--version", ceiling)
    assert r.exit_code == 0, r.output
    assert {json.loads(x)["model_version"] for x in r.stdout.splitlines() if x.startswith("{")} == {ceiling}
    # ... and calibrating it did not make it the default
    r = _run(ws, "calibrate", "synth", "--target-accuracy", "0.9", "--json")
    assert json.loads(r.stdout)["version"] == student

    # a ceiling of a ceiling is refused with what to do instead
    r = _run(ws, "evaluate", "synth", "--version", ceiling, "--ceiling")
    assert r.exit_code != 0 and "reference model" in r.output and "--ceiling" in r.output

    # `flywheel models` says which one serves, and that the ceiling is a reference
    r = _run(ws, "models", "synth", "--json")
    assert r.exit_code == 0, r.output
    listed = {m["version"]: m for m in json.loads(r.stdout)}
    assert list(listed)[0] == ceiling and listed[ceiling]["role"] == "reference" and not listed[ceiling]["serving"]
    assert listed[student]["serving"] and listed[student]["calibrated"] and listed[student]["on_disk"]
    assert listed[student]["threshold"] is not None and listed[student]["labels"] > 0
    r = _run(ws, "models", "synth")
    out = " ".join(r.output.split())
    assert f"{student} serving" in out and f"{ceiling} reference (gold labels)" in out
    r = _run(ws, "models", "nosuch")
    assert r.exit_code == 2 and "flywheel data add" in r.output


def test_serving_model_definition(tmp_path):
    with Store(tmp_path / "f.db") as s:
        assert s.serving_version("d") is None
        with pytest.raises(StudentError, match="no trained model"):
            serving_version(s, "d")
        _add(s, "ref-only", role="reference")
        with pytest.raises(StudentError, match="reference model ref-only.*--version"):
            serving_version(s, "d")
        with pytest.raises(CascadeError, match="no trained model"):
            promoted_version(s, "d")
        _add(s, "a")
        _add(s, "b")
        _add(s, "b-gold-ceiling", role="reference")
        _add(s, "other", dataset="e")
        # no promoted student: the newest student, every lookup agrees
        assert serving_version(s, "d") == latest_version(s, "d") == promoted_version(s, "d") == "b"
        assert latest_version(s, "d", promoted_first=False) == "b"
        assert s.serving_version("d", promoted_only=True) is None
        s.execute("UPDATE models SET promoted=1 WHERE version='a'")
        assert serving_version(s, "d") == latest_version(s, "d") == promoted_version(s, "d") == "a"
        assert s.serving_version("d", promoted_only=True) == "a"
        assert latest_version(s, "d", promoted_first=False) == "b"
        # a reference model can never be promoted, whatever code tries
        with pytest.raises(DB_ERRORS, match="reference.model"):
            s.execute("UPDATE models SET promoted=1 WHERE version='b-gold-ceiling'")
        with pytest.raises(DB_ERRORS, match="reference.model"):
            s.execute("INSERT INTO models(version, dataset, kind, path, promoted, role, created_at) "
                      "VALUES('x', 'd', 'k', 'p', 1, 'reference', 0)")
        with pytest.raises(ValueError, match="role"):
            _add(s, "bad", role="gold")


def test_migration_backfills_existing_ceilings(tmp_path):
    """A workspace made before roles existed: `-gold-ceiling` rows and the wheel's recorded ceiling become references."""
    path = tmp_path / "old.db"
    c = sqlite3.connect(path, isolation_level=None)
    for stmt in _split_sql(MIGRATIONS[0]):
        c.execute(stmt)
    c.execute("PRAGMA user_version=1")
    now = time.time()
    for i, v in enumerate(("s1", "s1-gold-ceiling", "s2", "wheel-ceiling")):
        c.execute("INSERT INTO models(version, dataset, kind, path, promoted, created_at) VALUES(?,?,?,?,?,?)",
                  (v, "d", "k", f"models/{v}", int(v == "s1-gold-ceiling"), now + i))
    c.execute("INSERT INTO reports(kind, key, json, created_at) VALUES('wheel', 'd#1', ?, ?)",
              (json.dumps({"gold_ceiling_version": "wheel-ceiling"}), now))
    c.execute("INSERT INTO reports(kind, key, json, created_at) VALUES('wheel', 'd#0', 'not json', ?)", (now,))
    c.close()
    with Store(path) as s:
        roles = {r["version"]: (r["role"], r["promoted"]) for r in s.query("SELECT version, role, promoted FROM models")}
        assert roles == {"s1": ("student", 0), "s1-gold-ceiling": ("reference", 0), "s2": ("student", 0),
                         "wheel-ceiling": ("reference", 0)}
        assert s.serving_version("d") == "s2"
        assert s.model_versions("d", role="reference") == ["wheel-ceiling", "s1-gold-ceiling"]


def test_prune_keeps_what_is_needed_and_removes_only_files(tmp_path):
    """A nightly wheel kept every version's files for ever: --prune removes what nothing needs."""
    from llm_flywheel.pipeline.model_list import list_models
    from llm_flywheel.store.workspace import Workspace
    from test_cascade import SYNTH_TASK

    ws = Workspace.open(tmp_path / "ws")
    with ws.store() as s:
        s.put_dataset("d", SYNTH_TASK.to_json())
    names = [f"d-v{i}" for i in range(6)] + ["d-ref-old", "d-ref-new"]
    with ws.store() as s:
        for v in names:
            (ws.models_dir / v).mkdir(parents=True)
            (ws.models_dir / v / "model.onnx").write_bytes(b"x" * 1000)
            _add(s, v, role="reference" if "ref" in v else "student")
        s.promote("d", "d-v1")  # an old student serves
        run = s.start_run("wheel", {"dataset": "d"})  # an unfinished run trained d-v0
        s.start_round(run, "d", 1)
        s.save_round(run, 1, {"trained_version": "d-v0"}, model_version=None)
    r = _run(ws, "models", "d", "--prune", "--keep", "2", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    # newest first: d-ref-new, d-ref-old, d-v5, d-v4, ... -> students kept: v5, v4; serving v1; run's v0; ref-new
    assert sorted(res["removed"]) == ["d-ref-old", "d-v2", "d-v3"] and res["freed_bytes"] == 3000
    assert res["kept"]["d-v1"] == "serving" and res["kept"]["d-v0"].startswith("in wheel run")
    on_disk = {m.version: m.on_disk for m in list_models(ws, "d")}
    assert [v for v in names if not on_disk[v]] == ["d-v2", "d-v3", "d-ref-old"]
    assert all((ws.models_dir / v).is_dir() == on_disk[v] for v in names)
    r = _run(ws, "promote", "d", "d-v2")
    assert r.exit_code != 0 and "are gone" in r.output and "flywheel models d" in r.output
