"""DistilledClassifier on in-memory text, tables and images, taught by the REAL simulated teacher on 127.0.0.1.

The correct classes go to the simulator only (``fw.simulated_teacher(X, y)``), never to the estimator.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

import llm_flywheel as fw
from llm_flywheel.interfaces.api.estimator import DistilledClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _data import shapes, tickets  # noqa: E402

LABELS = {"billing": "invoices and payments", "hardware": "a broken device", "account": "logins and passwords"}


def _stats(teacher: fw.Teacher) -> dict:
    return httpx.get(teacher.spec.split("|")[0] + "/_stats", timeout=10).json()


@pytest.fixture(scope="module")
def text_data():
    return tickets(320, seed=3)


@pytest.fixture(scope="module")
def text_teacher(text_data):
    X, y = text_data
    with fw.simulated_teacher(X, y, accuracy=0.9) as t:
        yield t


def test_text_fit_predict_learns_from_the_teacher_and_caches_every_answer(text_data, text_teacher, tmp_path):
    X, y = text_data
    clf = DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", workspace=str(tmp_path / "w"),
                              max_teacher_fraction=0.2)
    assert clf.fit(X[:240]) is clf
    rep = clf.label_report_
    assert isinstance(rep, fw.LabelReport) and rep.simulated and rep.items == 240
    assert rep.calls_made >= 240 * 2 and rep.cost_usd > 0
    assert list(clf.classes_) == sorted(LABELS)
    assert isinstance(clf.calibration_, fw.Calibration) and 0 < clf.calibration_.threshold
    proba = clf.predict_proba(X[240:])
    assert proba.shape == (80, 3) and np.allclose(proba.sum(axis=1), 1)
    pred = clf.predict(X[240:])
    assert (pred == clf.classes_[proba.argmax(axis=1)]).all()
    assert np.mean(pred == np.array(y[240:])) > 0.8  # the simulated teacher is right ~90 % of the time

    answers = clf.predict_answers(X[240:])
    assert [a.label for a in answers] == list(pred)
    assert {a.source for a in answers} <= {"student", "teacher"}
    for a in answers:
        assert a.label == (a.teacher_label if a.source == "teacher" else a.student_label)

    # the same training set again (new estimator, same workspace): every teacher answer comes from the cache
    before = _stats(text_teacher)["completions"]
    again = DistilledClassifier(**clf.get_params()).fit(X[:240])
    assert again.label_report_.calls_made == 0 and again.label_report_.answers_cached >= 240 * 2
    assert _stats(text_teacher)["completions"] == before
    assert (again.predict(X[240:]) == pred).all()


def test_the_teacher_is_asked_only_below_the_threshold_and_never_with_defer_off(text_data, text_teacher):
    X, _ = text_data
    clf = DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1,
                              max_teacher_fraction=0.5, defer_to_teacher=False).fit(X[:200])
    before = _stats(text_teacher)["completions"]
    answers = clf.predict_answers(X[200:])
    assert _stats(text_teacher)["completions"] == before
    deferred = [a for a in answers if a.source == "deferred"]
    assert deferred, "with max_teacher_fraction=0.5 some answers fall below the threshold"
    assert all(a.label is None and a.student_confidence < clf.calibration_.threshold for a in deferred)
    assert (clf.predict(X[200:]) == np.array([a.student_label for a in answers])).all()


def test_budget_caps_what_fit_spends(text_data, text_teacher):
    X, _ = text_data
    clf = DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1, budget_usd=0.012,
                              dataset="budget")
    clf.fit(X[:200])  # ~0.00009 USD a call: the cap stops labelling after roughly two thirds of the tickets
    rep = clf.label_report_
    assert 0 < rep.calls_made < 200 and rep.cost_usd <= 0.012
    assert rep.stopped_reason and "budget" in rep.stopped_reason
    with pytest.raises(fw.NotReadyError, match="budget"):
        DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1, budget_usd=0.0,
                            dataset="nobudget").fit(X[:200])


def test_pickle_carries_the_temporary_workspace(text_data, text_teacher):
    X, _ = text_data
    clf = DistilledClassifier(teacher=text_teacher, labels=list(LABELS), student="text-tfidf", passes=1).fit(X[:150])
    p1 = clf.predict_proba(X[150:200])
    clone = pickle.loads(pickle.dumps(clf))
    assert clone.workspace_ != clf.workspace_ and Path(clone.workspace_, "blobs").is_dir()
    old = clf.workspace_
    del clf
    import gc

    gc.collect()
    assert not Path(old).exists(), "a temporary workspace is removed with its estimator"
    before = _stats(text_teacher)["completions"]
    assert np.allclose(clone.predict_proba(X[150:200]), p1)
    assert _stats(text_teacher)["completions"] == before  # the deferred answers were cached inside the pickle


def test_tabular_rows_and_integer_classes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    with fw.simulated_teacher(X, y, accuracy=0.95) as t:
        clf = DistilledClassifier(teacher=t, labels={0: "low", 1: "high"}, student="tabular-hgb").fit(X[:400])
        assert clf.classes_.tolist() == [0, 1] and clf.n_features_in_ == 4
        pred = clf.predict(X[400:])
        assert pred.dtype.kind == "i" and np.mean(pred == y[400:]) > 0.85
        with pytest.raises(ValueError, match="4 features"):
            clf.predict(X[:5, :3])


def test_a_dataframe_s_column_names_reach_the_teachers_prompt():
    pd = pytest.importorskip("pandas")
    from llm_flywheel.core.task import Task
    from llm_flywheel.store.workspace import Workspace
    from llm_flywheel.teachers.prompts import system_prompt

    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(120, 2)), columns=["income", "debt"])
    y = (X["income"] > X["debt"]).astype(int).to_numpy()
    with fw.simulated_teacher(X.to_numpy(), y, accuracy=0.95) as t:
        clf = DistilledClassifier(teacher=t, labels={0: "decline", 1: "approve"}, student="tabular-hgb",
                                  passes=1, progress=False).fit(X)
    with Workspace.open(clf.workspace_).store(readonly=True) as s:
        task = Task.from_json(s.dataset_task_json(clf.dataset_))
    assert task.features == ("income", "debt") and "in this order: income, debt" in system_prompt(task, 0)


@pytest.mark.slow
def test_images_as_arrays_or_pil():
    images, truth = shapes(200, seed=5)
    with fw.simulated_teacher(images, truth, accuracy=0.95) as t:
        clf = DistilledClassifier(teacher=t, labels=["square", "cross", "ring"], student="image-cnn", passes=1,
                                  student_params={"epochs": 3}).fit(images[:160])
        assert clf.modality_ == "image"
        pred = clf.predict(images[160:])
        assert np.mean(pred == np.array(truth[160:])) > 0.7
        from PIL import Image

        pil = [Image.fromarray(a) for a in images[160:]]  # the same pictures as PIL images: the same items
        assert (clf.predict(pil) == pred).all()


def test_errors_name_the_fix(text_data, text_teacher):
    X, y = text_data
    with pytest.raises(fw.InputError, match="without y"):
        DistilledClassifier(teacher=text_teacher, labels=LABELS).fit(X, y)
    with pytest.raises(fw.InputError, match="teacher="):
        DistilledClassifier(labels=LABELS).fit(X)
    with pytest.raises(fw.InputError, match="labels="):
        DistilledClassifier(teacher=text_teacher).fit(X)
    with pytest.raises(fw.InputError, match="at least 3 samples"):
        DistilledClassifier(teacher=text_teacher, labels=LABELS).fit(X[:2])
    with pytest.raises(fw.InputError, match="not one string"):
        DistilledClassifier(teacher=text_teacher, labels=LABELS).fit("one ticket")
    with pytest.raises(fw.InputError, match="both become label"):
        DistilledClassifier(teacher=text_teacher, labels=["Spam", "spam"]).fit(X[:20])
    with pytest.raises(fw.TeacherError, match="PROVIDER:MODEL"):
        DistilledClassifier(teacher="nonsense", labels=LABELS).fit(X[:20])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        DistilledClassifier(teacher=text_teacher, labels=LABELS).predict(X[:3])


def test_an_unreachable_teacher_fails_fast_with_a_typed_error(text_data, tmp_path):
    from ports import free_port

    port = free_port()  # nothing listens there
    X, _ = text_data
    clf = DistilledClassifier(teacher=fw.teacher(f"http://127.0.0.1:{port}/v1|m", api_key_env="", max_retries=0),
                              labels=LABELS, student="text-tfidf")
    with pytest.raises(fw.TeacherError):
        clf.fit(X[:30])


def test_a_stopped_fit_resumes_without_asking_twice(text_data, text_teacher, tmp_path):
    """A fit stopped by its call cap keeps what it paid for: the next fit on the same workspace asks only the rest."""
    X, _ = text_data
    params = dict(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1, workspace=str(tmp_path / "w"),
                  dataset="resume")
    first = DistilledClassifier(**params, max_calls=70)
    try:
        first.fit(X[:160])
        assert first.label_report_.calls_made == 70 and first.label_report_.stopped_reason == "max_calls"
    except fw.NotReadyError as e:  # too few labels to train and calibrate on: the error says why
        assert "max_calls" in str(e)
    second = DistilledClassifier(**params).fit(X[:160])
    assert second.label_report_.calls_made == 160 - 70 and second.label_report_.answers_cached == 70
    assert second.label_report_.stopped_reason is None


@pytest.mark.slow
def test_the_default_text_student_is_chosen_on_val_from_minilm_and_tfidf(text_data, text_teacher):
    import json

    from llm_flywheel.store.workspace import Workspace

    X, y = text_data
    clf = DistilledClassifier(teacher=text_teacher, labels=LABELS, passes=1).fit(X[:200])
    with Workspace.open(clf.workspace_).store() as s:
        row = s.model(clf.version_)
    choice = json.loads(row["metrics_json"])["student_choice"]
    assert choice.startswith("chosen on val: text-minilm ") and ", text-tfidf " in choice
    assert row["kind"] in ("text-minilm", "text-tfidf") and row["kind"] in clf.version_
    assert np.mean(clf.predict(X[200:]) == np.array(y[200:])) > 0.8


def test_fit_shows_its_progress_in_a_notebook_and_is_silent_when_asked(text_data, text_teacher, tmp_path, capfd):
    """Labelling and training take minutes with a real teacher: ``fit`` reports them as plain lines on stderr (what
    a notebook shows); ``progress=False`` prints nothing."""
    X, _ = text_data
    DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1).fit(X[:150])
    shown = capfd.readouterr()
    DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1,
                        progress=False).fit(X[150:300])
    quiet = capfd.readouterr()
    assert any(" calls (100 %)" in ln for ln in shown.err.splitlines()), shown.err[-2000:]
    assert "calls (" not in quiet.err and quiet.out == ""


def test_a_calib_part_too_small_for_the_budget_names_fits_own_fix(text_data, text_teacher):
    """150 samples leave 30 for calibration, fewer than the 38 with which 'at most 10 % to the teacher' can defer
    anything: the warning says so in fit()'s terms (samples, calib_size), not as a `flywheel data add` flag."""
    X, _ = text_data
    clf = DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf")
    with pytest.warns(fw.FlywheelWarning, match=r"at least 190 distinct samples, or calib_size=0\.26") as got:
        clf.fit(X[:150])
    assert "flywheel data add" not in " ".join(str(w.message) for w in got)
    (w,) = [w for w in clf.calibration_.warnings if w.code == "budget_defers_nothing"]
    assert "30 calib items" in w.message
    clf2 = DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", calib_size=0.26)
    clf2.fit(X[:150])
    assert not [w for w in clf2.calibration_.warnings if w.code == "budget_defers_nothing"]  # the fix it named works


def test_files_given_as_paths_are_read_as_the_folder_import_reads_them(text_data, text_teacher, tmp_path):
    """`clf.fit(sorted(Path("tickets").glob("*.txt")))` raised "float() argument must be ... not 'PosixPath'"."""
    X, _ = text_data
    paths = []
    for i, text in enumerate(X[:200]):
        paths.append(tmp_path / "docs" / f"{i:03d}.txt")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_text(text + "\n")
    clf = DistilledClassifier(teacher=text_teacher, labels=LABELS, student="text-tfidf", passes=1)
    clf.fit(paths)  # the same items as the texts: the simulated teacher knows them, the answers are real
    assert clf.label_report_.labelled >= 100
    assert list(clf.predict(paths[:8])) == list(clf.predict(list(X[:8])))
    with pytest.raises(fw.InputError, match="no such file"):
        clf.predict([tmp_path / "missing.txt"])
    (tmp_path / "rows.csv").write_text("text\nhello\n")
    with pytest.raises(fw.InputError, match="pd.read_csv"):
        clf.predict([tmp_path / "rows.csv"])
