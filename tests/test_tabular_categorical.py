"""Tables with text columns (a plan, a country): kept as categories from the import to the student, the teacher's
prompt, the HTTP service, `flywheel predict` and a notebook's DataFrame -- they used to be dropped, and with them
what decided the label."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main


def _churn_csv(path, n=300, seed=0):
    """Churn depends mostly on the plan (text) and the tickets; the customer id is an identifier."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        plan, country = rng.choice(["free", "basic", "premium"]), rng.choice(["US", "DE", "IN"])
        tickets = rng.randint(0, 10)
        churn = (plan == "free") + (tickets > 6) + rng.random() * 0.8 > 1.0
        lines.append(f"c{i},{plan},{country},{tickets},{'churn' if churn else 'stay'}")
    path.write_text("customer,plan,country,tickets,label\n" + "\n".join(lines) + "\n")
    return path


def _cli(ws, *args):
    r = CliRunner().invoke(main, ["--workspace", str(ws), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def churn_ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("churn")
    csv = _churn_csv(tmp / "churn.csv")
    ws = tmp / "ws"
    out = _cli(ws, "data", "add", "tabular", str(csv), "--no-progress")
    assert "categorical column(s): plan (3 values), country (3 values)" in " ".join(out.split())
    _cli(ws, "label", "churn", "--simulated", "--no-progress")
    _cli(ws, "train", "churn", "--no-progress")
    _cli(ws, "calibrate", "churn", "--max-teacher-fraction", "0.3")
    return tmp, ws


def test_the_student_learns_from_the_categories_and_the_teacher_reads_them(churn_ws):
    from llm_flywheel.core.task import Task
    from llm_flywheel.pipeline.training import load_student, serving_version
    from llm_flywheel.store.workspace import Workspace
    from llm_flywheel.teachers.prompts import row_content, system_prompt

    _, root = churn_ws
    ws = Workspace.open(root)
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json("churn"))
        version = serving_version(s, "churn")
        item = s.items("churn", split="train", limit=1)[0]
    assert task.features == ("plan", "country", "tickets") and task.categorical == ("plan", "country")
    assert "in this order: plan, country, tickets" in system_prompt(task, 0)
    assert row_content(item.features).startswith('Features: ["')  # the category as written, not a code
    student = load_student(ws, version)
    assert student.hp["categorical_columns"] == [0, 1]
    p = student.predict_proba_raw([["free", "US", 9.0], ["premium", "US", 1.0], ["martian", None, 5.0]])
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1)  # an unseen category reads as missing, not an error
    churn = list(student.labels).index("churn")
    assert p[0, churn] > 0.5 > p[1, churn]  # what the plan decides, the student learnt


def test_the_service_takes_categories_by_name_and_in_order_and_refuses_text_in_a_number(churn_ws):
    from test_serve import flush, running

    from llm_flywheel.interfaces.serve import create_app
    from llm_flywheel.pipeline.served_import import import_served
    from llm_flywheel.store.workspace import Workspace

    _, root = churn_ws
    ws = Workspace.open(root)
    app = create_app(ws, "churn", seed=0)
    with running(app) as url:
        by_name = httpx.post(f"{url}/v1/predict", json={"features": {"tickets": 9, "plan": "free", "country": "US"}})
        in_order = httpx.post(f"{url}/v1/predict", json={"features": ["free", "US", 9]})
        batch = httpx.post(f"{url}/v1/predict/batch", json={"inputs": [
            {"features": ["premium", "DE", 1]}, {"features": ["free", "US", "many"]}, {"features": [None, 7, None]}]})
    assert by_name.status_code == 200 and by_name.json()["input_hash"] == in_order.json()["input_hash"]
    assert by_name.json()["student_label"] == "churn"
    ok, bad, sparse = batch.json()["results"]
    assert ok["student_label"] == "stay"
    assert bad["error"]["status"] == 422 and "feature 'tickets': 'many' is not a number" in bad["error"]["detail"]
    assert "error" not in sparse  # a number where a category goes is that category's text ("7"); nulls: missing
    flush(app)  # what serving kept comes back as rows of the table, categories as text -- hashed as the import
    imp = import_served(ws, "churn")  # hashes them: the two rows the table already has are recognised
    assert (imp.served, imp.already_present, imp.added) == (3, 2, 1)
    with ws.store() as s:
        assert [it.features for it in s.items("churn") if it.source_ref.startswith("served:")] == [[None, "7", None]]


def test_the_service_names_a_category_the_model_never_saw(churn_ws, caplog):
    """A plan the model never saw ('enterprise') is answered (as a missing value, as before) and named: in the answer,
    in /metrics by column, and once in the log -- the threshold was calibrated without it.  Known values and nulls
    name nothing."""
    import logging

    from test_serve import running

    from llm_flywheel.interfaces.serve import create_app, parse_prometheus
    from llm_flywheel.store.workspace import Workspace

    _, root = churn_ws
    app = create_app(Workspace.open(root), "churn", seed=0, log_sample_rate=0.0)
    with caplog.at_level(logging.WARNING, logger="llm_flywheel.serve"), running(app) as url:
        new = [httpx.post(f"{url}/v1/predict", json={"features": {"tickets": 2, "plan": "enterprise", "country": c}})
               for c in ("US", "FR")]
        known = httpx.post(f"{url}/v1/predict", json={"features": ["free", "US", 9]})
        batch = httpx.post(f"{url}/v1/predict/batch", json={"inputs": [
            {"features": ["enterprise", None, 1]}, {"features": ["basic", "DE", 1]}]})
        metrics = parse_prometheus(httpx.get(f"{url}/metrics").text)
    assert all(r.status_code == 200 and r.json()["student_label"] in ("churn", "stay") for r in new)
    assert new[0].json()["unseen_categories"] == {"plan": "enterprise"}
    assert new[1].json()["unseen_categories"] == {"plan": "enterprise", "country": "FR"}
    assert known.json()["unseen_categories"] == {}
    assert [r["unseen_categories"] for r in batch.json()["results"]] == [{"plan": "enterprise"}, {}]
    assert metrics['flywheel_unseen_categories_total{column="plan"}'] == 3
    assert metrics['flywheel_unseen_categories_total{column="country"}'] == 1
    said = [r.getMessage() for r in caplog.records if "never seen" in r.getMessage()]
    assert len(said) == 2 and "column plan: value 'enterprise'" in said[0] and "country: value 'FR'" in said[1]


def test_predict_reads_a_csv_with_categories_and_finds_the_rows_it_labelled(churn_ws):
    from llm_flywheel.store.workspace import Workspace

    tmp, root = churn_ws
    rows = (tmp / "churn.csv").read_text().splitlines()[:4]
    (tmp / "few.csv").write_text("\n".join(rows) + "\n")
    out = _cli(root, "predict", "churn", str(tmp / "few.csv"), "--json")
    answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    with Workspace.open(root).store() as s:  # each row read as the import stored it: its cached answers apply
        stored = {it.source_ref: it.content_hash for it in s.items("churn")}
    assert [a["content_hash"] for a in answers] == [stored[f"churn.csv:{k}"] for k in (2, 3, 4)]
    assert all(a["student_label"] in ("churn", "stay") for a in answers)
    assert "never saw" not in out
    (tmp / "new.csv").write_text(rows[0] + "\nn1,enterprise,US,3,stay\nn2,enterprise,BR,3,stay\nn3,free,US,1,stay\n")
    out = " ".join(_cli(root, "predict", "churn", str(tmp / "new.csv")).split())
    assert ("WARNING 2 input(s) hold categories the model never saw in training, answered as missing values: plan "
            "'enterprise' x2, country 'BR' x1 -- fix:") in out


def test_a_dataframe_with_text_columns_is_a_table_with_categories(tmp_path):
    pd = pytest.importorskip("pandas")
    import llm_flywheel as fw

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"plan": rng.choice(["free", "basic", "premium"], 300), "tickets": rng.integers(0, 10, 300),
                       "tenure": np.round(rng.random(300) * 60, 2)})  # distinct rows (identical ones are one item)
    y = np.where((df["plan"] == "free") | (df["tickets"] > 7), "churn", "stay").tolist()
    ws = fw.Workspace(tmp_path / "ws")
    with fw.simulated_teacher(df, y, accuracy=1.0) as teacher:  # the simulator recognises the rows it was given
        ds = ws.add_items("churn", df, labels=["churn", "stay"], gold=y)
        assert ds.task.categorical == ("plan",)
        ds.label(teacher, passes=1, progress=False)
        with ws._ws.store() as s:
            labels, items = s.effective_labels("churn"), {it.id: it for it in s.items("churn")}
        assert np.mean([labels[i] == items[i].gold_label for i in labels]) == 1.0
        model = ds.train("tabular-hgb", progress=False)
        p = model.predict_proba(pd.DataFrame({"plan": ["free", "premium"], "tickets": [1, 1], "tenure": [30.0, 30.0]}))
        assert p[0, ds.labels.index("churn")] > 0.5 > p[1, ds.labels.index("churn")]
        with pytest.raises(fw.InputError, match=r"holds rows of the columns \['plan', 'tickets', 'tenure'\]"):
            ws.add_items("churn", df[["tickets"]], labels=["churn", "stay"])
        cascade = model.calibrate(max_teacher_fraction=0.3)  # a plan it never saw: answered, named, warned once
        with pytest.warns(fw.FlywheelWarning, match=r"1 input\(s\) hold categories the model never saw .*"
                                                     r"plan 'enterprise' x1"):
            answers = cascade.predict(pd.DataFrame({"plan": ["enterprise", "free"], "tickets": [1, 1],
                                                    "tenure": [30.0, 30.0]}))
        assert [a.unseen_categories for a in answers] == [{"plan": "enterprise"}, {}]


def test_the_sklearn_estimator_names_the_text_columns_it_cannot_take():
    pd = pytest.importorskip("pandas")
    import llm_flywheel as fw

    df = pd.DataFrame({"plan": ["free", "basic"] * 20, "tickets": range(40)})
    clf = fw.DistilledClassifier(teacher="http://127.0.0.1:9/v1|m", labels=["churn", "stay"])
    with pytest.raises(fw.InputError, match="column\\(s\\) plan hold text: encode them first.*ws.add_items"):
        clf.fit(df)


def test_a_category_column_empty_in_training_still_reads_text_later_as_missing():
    """The task says which columns are categories: one missing in every training row is still encoded as one, so a
    category sent for it later reads as missing instead of failing as text in a number column."""
    from llm_flywheel.core.task import Task
    from llm_flywheel.store.base import Item
    from llm_flywheel.students.registry import build_student

    task = Task(name="t", modality="tabular", labels=("x", "y"), features=("plan", "size", "zone"),
                categorical=("plan", "zone"))
    rng = np.random.default_rng(0)
    train = [Item(id=i, dataset="t", source_ref=str(i), content_hash=str(i), modality="tabular", blob_path=None,
                  text=None, features=[None, float(rng.random()), "a" if i % 2 else "b"], source_split=None,
                  split="train", gold_label=None) for i in range(60)]
    student = build_student("tabular-hgb", task, None)
    student.fit(train, np.arange(60) % 2, [], np.zeros(0, int))
    assert student.hp["categorical_columns"] == [0, 2]
    p = student.predict_proba_raw([["premium", 0.3, "a"], [None, 0.3, "b"]])
    assert p.argmax(1).tolist() == [1, 0]  # the zone decides; the unseen plan is missing, not an error
