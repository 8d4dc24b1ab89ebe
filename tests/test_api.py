"""The public API facade (Workspace -> Dataset -> Model -> Cascade, run) end to end on real files, a real SQLite
store and the REAL simulated teacher over HTTP on 127.0.0.1; results are typed and errors name the fix."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import llm_flywheel as fw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _data import tickets  # noqa: E402

TASK = """name = "tickets"
modality = "text"
instructions = "Classify this IT support ticket by topic."

[labels]
billing = "invoices, payments, refunds"
hardware = "a broken device"
account = "logins and passwords"
"""


@pytest.fixture(scope="module")
def ticket_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    texts, topics = tickets(700, seed=7)
    with open(d / "tickets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, topics))
    (d / "tickets.toml").write_text(TASK)
    return d


def test_import_is_light_and_names_are_public():
    code = "import sys, llm_flywheel as fw; print(sorted(m for m in ('numpy','sklearn','torch','httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    for name in ("Workspace", "DistilledClassifier", "teacher", "LabelReport", "RunReport", "TeacherError"):
        assert name in dir(fw) and getattr(fw, name) is not None


def test_label_train_evaluate_calibrate_predict(ticket_files, tmp_path):
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_dataset("text", ticket_files / "tickets.csv", task=ticket_files / "tickets.toml", val=60, calib=150)
    assert ws.datasets() == ["tickets"] and ds.labels == ("billing", "hardware", "account")
    assert ws.add_dataset("text", ticket_files / "tickets.csv", task=ticket_files / "tickets.toml").name == "tickets"
    splits = ds.splits()
    assert splits["val"] == 60 and splits["calib"] == 150 and splits["test"] > 0

    with ds.simulated_teacher(accuracy=0.85) as teacher:
        assert teacher.simulated
        n = splits["train"] + splits["val"] + splits["calib"]
        plan = ds.plan(teacher, passes=2, budget_usd=10)
        assert isinstance(plan, fw.LabelPlan) and plan.items == n and plan.calls_needed == 2 * n
        assert plan.calls_cached == 0 and plan.simulated
        rep = ds.label(teacher, passes=2, adaptive=False)
        assert isinstance(rep, fw.LabelReport) and rep.items == n and rep.simulated
        assert rep.calls_made >= 2 * n and rep.labelled + rep.disagreed == n and rep.cost_usd > 0
        again = ds.label(teacher, passes=2, adaptive=False)
        assert again.calls_made == 0 and again.answers_cached == 2 * n and again.cost_usd == 0
        replan = ds.plan(teacher, passes=2, adaptive=False)
        assert replan.calls_needed == 0 and replan.calls_cached == 2 * n
        assert replan.est_cost_per_call_usd == pytest.approx(rep.cost_usd / rep.calls_made, rel=0.2)

        model = ds.train("text-tfidf")
        assert model.kind == "text-tfidf" and 0 < model.val_accuracy <= 1
        assert ds.model().version == model.version
        (info,) = ds.models()
        assert (info.version, info.serving, info.calibrated, info.role) == (model.version, True, False, "student")
        assert info.val_agreement == model.val_accuracy and info.labels > 0
        ev = model.evaluate()
        assert isinstance(ev, fw.Evaluation) and ev.n == splits["test"] and ev.ci95[0] <= ev.accuracy <= ev.ci95[1]
        assert [c.label for c in ev.per_class] == list(ds.labels)
        assert sum(map(sum, ev.confusion)) == ev.n

        cascade = model.calibrate(max_teacher_fraction=0.2, teacher=teacher)
        cal = cascade.calibration
        assert isinstance(cal, fw.Calibration) and cal.goal == "budget" and cal.n_calib > 100
        assert cascade.threshold == cal.threshold and cal.temperature > 0
        answers = cascade.predict(["my printer is on fire", "refund the invoice please", "locked out of my login"])
        assert len(answers) == 3 and all(isinstance(a, fw.Answer) for a in answers)
        for a in answers:
            assert a.label in ds.labels and a.source in ("student", "teacher")
            assert (a.source == "student") == (a.student_confidence >= cascade.threshold)
        proba = model.predict_proba(["my printer is on fire"])
        assert proba.shape == (1, 3) and abs(proba.sum() - 1) < 1e-5
        # without a teacher the cascade says what it would defer instead of guessing
        alone = model.cascade().predict(["my printer is on fire"] * 2)
        assert all(a.source in ("student", "deferred") for a in alone)


def test_run_the_wheel_returns_typed_rounds(tmp_path):
    texts, topics = tickets(800, seed=8)
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_items("t", texts, labels={"billing": "payments", "hardware": "devices", "account": "logins"},
                      gold=topics, val=60, calib=150, stream=200, test=150)
    with ds.simulated_teacher() as teacher, pytest.warns(fw.FlywheelWarning) as shown:
        run = ds.run(teacher, rounds=2, seed_labels=120, val_labels=60, calib_labels=150, per_round_budget=100,
                     stream_per_round=100, student_kind="text-tfidf", gold_ceiling=False)
    assert isinstance(run, fw.RunReport) and [r.round for r in run.rounds] == [1, 2]
    # what the CLI prints as WARNING lines reaches a notebook too: 150 calibration items are too few for the guarantee
    small = [w for w in run.warnings if w.code == "small_calib"]
    assert small and isinstance(small[0], fw.RunWarning) and "calib" in small[0].fix
    assert [str(w.message) for w in shown] == [f"{w.message} -- fix: {w.fix}" for w in run.warnings]
    assert all(w.filename == __file__ for w in shown)  # pointing at the user's run() call
    assert all(isinstance(r, fw.RoundReport) for r in run.rounds)
    assert run.final.model_version and run.teacher_calls == sum(r.teacher_calls for r in run.rounds)
    assert run.rounds[0].teacher_calls > 0 and run.teacher_cost_usd > 0
    for r in run.rounds:
        assert r.student_accuracy is not None and r.student_accuracy_ci95[0] <= r.student_accuracy
        assert 0 <= r.stream_teacher_fraction <= 1 and r.threshold is not None


def test_the_wheel_self_trains_when_asked(tmp_path):
    """``unlabelled=1`` (``flywheel run --unlabelled 1``): each round's student also learns its own predictions on
    as many unlabelled train items as it has labels, and the model records what that did."""
    texts, topics = tickets(500, seed=9)
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_items("t", texts, labels={"billing": "payments", "hardware": "devices", "account": "logins"},
                      gold=topics, val=50, calib=100, stream=60, test=60)
    with ds.simulated_teacher() as teacher, pytest.warns(fw.FlywheelWarning):  # calib 100: too small, said so
        run = ds.run(teacher, rounds=1, seed_labels=100, val_labels=50, calib_labels=100, stream_per_round=30,
                     student_kind="text-tfidf", gold_ceiling=False, unlabelled=1)
    st = ds.model(run.final.trained_version).metrics["self_training"]
    assert st is not None and st["pool"] == run.final.labels_total and st["val_first"] is not None
    with pytest.raises(fw.InputError, match="unlabelled must be >= 0"):
        ds.run(teacher, rounds=1, unlabelled=-1)


def test_errors_are_typed_and_name_the_fix(ticket_files, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(fw.InputError, match="no workspace"):
        fw.Workspace(tmp_path / "missing", create=False)
    ws = fw.Workspace(tmp_path / "ws")
    with pytest.raises(fw.InputError, match="add_dataset"):
        ws.dataset("nope")
    with pytest.raises(fw.InputError, match="unknown dataset"):
        ws.add_dataset("spreadsheet", ticket_files / "tickets.csv")
    with pytest.raises(fw.TeacherError, match="PROVIDER:MODEL"):
        fw.teacher("gpt-4o")
    ds = ws.add_dataset("text", ticket_files / "tickets.csv", task=ticket_files / "tickets.toml")
    with pytest.raises(fw.InputError, match="already exists"):
        ws.add_items("tickets", ["a text"], labels=["spam", "ham"])
    with pytest.raises(fw.InputError, match="not among the labels"):
        ws.add_items("other", ["a", "b", "c"], labels=["spam", "ham"], gold=["spam", "Ham", None])
    with pytest.raises(fw.NotReadyError, match="flywheel label"):
        ds.train("text-tfidf")
    with pytest.raises(fw.NotReadyError, match="no trained model"):
        ds.model()
    with pytest.raises(fw.TeacherError, match="OPENROUTER_API_KEY"):
        ds.label(fw.teacher("openrouter:google/gemini-2.5-flash"), limit=1)  # no key set: refused before any call


def test_the_simulated_teacher_recognises_in_memory_inputs():
    """What fw.simulated_teacher is told is what it answers: the same content hash the client sends."""
    texts, topics = tickets(50, seed=9)
    with fw.simulated_teacher(texts, topics, accuracy=1.0) as t:
        base = t.spec.split("|")[0]
        model = t.spec.split("|")[1]
        r = httpx.post(f"{base}/chat/completions", json={"model": model, "temperature": 0, "response_format": {
            "type": "json_object"}, "messages": [{"role": "user", "content": texts[3]}]}, timeout=10)
        assert topics[3] in r.json()["choices"][0]["message"]["content"]
        assert httpx.get(f"{base}/_stats", timeout=10).json()["unknown_items"] == 0


def test_tabular_cascade_reuses_paid_answers_for_known_rows(tmp_path):
    """A row the teacher already labelled is answered from the store, not asked again (same content hash)."""
    import numpy as np

    rng = np.random.default_rng(4)
    X = np.round(rng.normal(size=(400, 3)), 3)
    gold = np.where(X[:, 0] - X[:, 2] > 0, "pos", "neg").tolist()
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_items("rows", X, labels={"pos": "positive", "neg": "negative"}, gold=gold, val=40, calib=120,
                      stream=0, test=0)
    assert ds.modality == "tabular"
    with ds.simulated_teacher(accuracy=0.9) as teacher:
        ds.label(teacher, passes=1)
        cascade = ds.train("tabular-hgb").calibrate(max_teacher_fraction=0.5, teacher=teacher)
        stats = teacher.spec.split("|")[0] + "/_stats"
        before = httpx.get(stats, timeout=10).json()["completions"]
        answers = cascade.predict(X[:200])  # all of these were labelled (train/val/calib are the whole set here)
        assert any(a.source == "teacher" for a in answers)
        assert np.mean([a.label == g for a, g in zip(answers, gold)]) > 0.8  # the simulator knew these rows
        assert httpx.get(stats, timeout=10).json()["completions"] == before
        rows = np.round(rng.normal(size=(60, 3)), 3)
        fresh = cascade.predict(rows)  # unseen rows: the deferred ones are asked once, stored before use
        asked = httpx.get(stats, timeout=10).json()["completions"]
        assert {a.source for a in fresh} <= {"student", "teacher"}
        assert asked - before == sum(a.source == "teacher" for a in fresh) > 0
        assert [a.label for a in cascade.predict(rows)] == [a.label for a in fresh]
        assert httpx.get(stats, timeout=10).json()["completions"] == asked  # paid once
        with pytest.raises(fw.InputError, match=r"feature #2: infinite value"):  # imports skip such rows: refused
            cascade.predict([[0.1, np.inf, 0.3]])
        with pytest.raises(fw.InputError, match=r"feature #1: infinite value"):
            ws.add_items("rows", [[-np.inf, 0.0, 0.0]], labels={"pos": "positive", "neg": "negative"})
        assert cascade.predict([[0.1, np.nan, 0.3]])[0].student_label in ("pos", "neg")  # NaN: a missing value
    assert "rows.api" in ws.datasets()  # where the answered inputs are kept


def test_in_memory_items_are_split_like_data_add_so_the_wheel_can_measure(tmp_path):
    """add_items used to make no stream and no test split: ds.run() on it served no traffic and measured nothing,
    though the notebook had given gold labels."""
    texts, topics = tickets(260, seed=11)
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_items("t", texts, labels=["billing", "hardware", "account"], gold=topics)
    assert ds.splits() == {"test": 52, "stream": 42, "val": 21, "calib": 38, "train": 107}
    plain = ws.add_items("u", texts, labels=["billing", "hardware", "account"])  # no gold: nothing to test on
    assert plain.splits() == {"stream": 52, "val": 26, "calib": 39, "train": 143}
    # the fix a small_calib warning names, from Python: resplit while nothing is labelled, refused after
    assert ds.resplit(calib=0.25)["calib"] == 52 and ds.splits()["test"] == 52  # gold: a test split again
    with ds.simulated_teacher() as teacher:
        ds.label(teacher, passes=1, split="val", progress=False)
    with pytest.raises(fw.InputError, match="already has 21 labels"):
        ds.resplit(calib=0.3)


def test_works_inside_a_running_event_loop(tmp_path):
    """Jupyter runs cells inside an event loop; the API's blocking calls must still work there."""
    import asyncio

    texts, topics = tickets(200, seed=12)

    async def cell():
        ws = fw.Workspace(tmp_path / "ws")
        ds = ws.add_items("t", texts, labels=["billing", "hardware", "account"], gold=topics)
        with ds.simulated_teacher() as teacher:
            assert ds.label(teacher, passes=1).labelled > 100
            cascade = ds.train("text-tfidf").calibrate(teacher=teacher)
            return cascade.predict(texts[:5])

    answers = asyncio.run(cell())
    assert len(answers) == 5 and all(a.label in ("billing", "hardware", "account") for a in answers)


@pytest.mark.slow
def test_images_in_memory_through_the_facade(tmp_path):
    import numpy as np

    from _data import shapes

    images, truth = shapes(300, seed=6)
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_items("shapes", images, labels={"square": "a filled square", "cross": "a cross", "ring": "a ring"},
                      gold=truth, val=30, calib=90, test=60, stream=0)
    assert ds.modality == "image"
    with ds.simulated_teacher(accuracy=0.9) as teacher:
        rep = ds.label(teacher, passes=1)
        assert rep.calls_made == 240 and rep.labelled == 240
        model = ds.train("image-cnn", epochs=3)
        assert model.evaluate().n == 60
        answers = model.calibrate(max_teacher_fraction=0.3, teacher=teacher).predict(images[:40])
    assert np.mean([a.label == t for a, t in zip(answers, truth[:40])]) > 0.7


def test_label_says_when_the_answers_came_from_two_models(ticket_files, tmp_path):
    """A provider alias that moved to another snapshot between two label() calls: the report counts the models the
    responses named and the notebook sees a FlywheelWarning at its own call."""
    from fault_server import FaultServer, ok

    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_dataset("text", ticket_files / "tickets.csv", task=ticket_files / "tickets.toml", val=60, calib=150)
    with FaultServer(default=ok('{"label": "billing", "confidence": 0.9}', model="alias-2024-08")) as srv:
        teacher = fw.teacher(f"{srv.url}|alias")
        first = ds.label(teacher, passes=1, limit=3)
        srv.default = ok('{"label": "billing", "confidence": 0.9}', model="alias-2024-11")
        with pytest.warns(fw.FlywheelWarning, match="came from 2 models") as rec:
            rep = ds.label(teacher, passes=1, limit=6)
    assert first.served_models == {"alias-2024-08": 3} and first.warnings == ()
    assert rep.served_models == {"alias-2024-08": 3, "alias-2024-11": 3}
    assert [w.code for w in rep.warnings] == ["mixed_models"] and rec[0].filename == __file__


def test_long_calls_report_progress_unless_told_not_to(ticket_files, tmp_path, capfd):
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_dataset("text", ticket_files / "tickets.csv", task=ticket_files / "tickets.toml", progress=False)
    with ds.simulated_teacher(accuracy=0.9) as teacher:
        capfd.readouterr()
        ds.label(teacher, split="val", passes=1)
        shown = capfd.readouterr()
        ds.label(teacher, split="calib", passes=1, progress=False)
        quiet = capfd.readouterr()
    assert any(ln.startswith("labelling tickets") and "(100 %)" in ln for ln in shown.err.splitlines()), shown.err
    assert quiet.err == "" and quiet.out == ""


def test_calibrating_on_too_few_items_warns_instead_of_silently_never_deferring(tmp_path):
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    texts, topics = tickets(120, seed=3)
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_items("tiny", texts, labels=["billing", "hardware", "account"], gold=topics, calib=18)
    with ds.simulated_teacher(accuracy=0.9) as teacher:
        ds.label(teacher, passes=1, progress=False)
    model = ds.train("text-tfidf", progress=False)
    with pytest.warns(fw.FlywheelWarning, match="never asks the teacher") as caught:
        cascade = model.calibrate(max_teacher_fraction=0.1)
    assert caught[0].filename == __file__  # raised at the notebook's line
    assert cascade.calibration.warnings[0].code == "budget_defers_nothing" and "--calib 38" in cascade.calibration.warnings[0].fix
    out = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "calibrate", "tiny", "--max-teacher-fraction", "0.1"])
    assert out.exit_code == 0 and "WARNING" in out.output and "never asks" in " ".join(out.output.split())


def test_label_through_the_batch_api_from_python(ticket_files, tmp_path):
    """A notebook could only label online (the CLI and the wheel had --batch): now label(batch=True), with the
    plan's batch price, a batch left running said so as a warning, and the next call collecting it."""
    ws = fw.Workspace(tmp_path / "ws")
    ds = ws.add_dataset("text", ticket_files / "tickets.csv", task=ticket_files / "tickets.toml", val=60, calib=150)
    with ds.simulated_teacher() as teacher:
        first = ds.label(teacher, split="train", limit=40, passes=1, progress=False)  # online: prices observed
        plan = ds.plan(teacher, split="val", passes=1)
        assert plan.calls_needed == 60 and plan.est_cost_batch_usd == pytest.approx(0.5 * plan.est_cost_usd)
        with pytest.warns(fw.FlywheelWarning, match="still running"):
            waiting = ds.label(teacher, split="val", passes=1, batch=True, batch_wait_s=0, batch_poll_s=0.05,
                               progress=False)
        assert waiting.batch and waiting.batches_pending == 1 and waiting.calls_made == 0
        assert ds.plan(teacher, split="val", passes=1).calls_in_open_batch == 60
        done = ds.label(teacher, split="val", passes=1, batch=True, batch_poll_s=0.05, progress=False)
        with pytest.warns(fw.FlywheelWarning, match="still running"):  # another batch, cancelled from Python
            ds.label(teacher, split="calib", limit=20, passes=1, batch=True, batch_wait_s=0, progress=False)
        cancelled = ds.cancel_batches(teacher, progress=False)
        online = ds.label(teacher, split="calib", limit=20, passes=1, progress=False)
    assert cancelled.batch and cancelled.batches_pending == 0 and cancelled.calls_made == 20  # answered or not
    assert online.calls_made == cancelled.failed and online.labelled == 20 and not online.warnings
    assert done.batches_pending == 0 and done.calls_made == 60 and done.labelled == 60 and not done.warnings
    assert done.cost_usd == pytest.approx(0.5 * first.cost_usd / 40 * 60, rel=0.25)  # half price a call
    with pytest.raises(fw.InputError, match="price_ratio"):
        ds.label(teacher, split="val", batch=True, batch_price_ratio=2.0, progress=False)
