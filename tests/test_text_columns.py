"""Which columns are the text: a file without a ``text`` column, several text columns, a label column under
another name -- and ``flywheel predict`` reading a new file the way its dataset was imported."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from llm_flywheel.core.task import TaskError
from llm_flywheel.data.registry import DatasetError, add_dataset
from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.predict_files import expand_tables, table_text_columns

TOPICS = {"billing": ("Invoice question", "I was charged twice for the subscription fee, please refund"),
          "hardware": ("Laptop broken", "my laptop screen stays black and the keyboard does not work"),
          "account": ("Cannot log in", "the password reset link expired and the two-factor code fails")}


def _tickets(path, n=60, label_name="category", blank_every=0):
    """What a help desk exports: an id, a subject, a body, the category (every ``blank_every``-th one missing)
    and a date."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "subject", "body", label_name, "created"])
        for i in range(n):
            lab = list(TOPICS)[i % 3]
            subject, body = TOPICS[lab]
            gap = blank_every and i % blank_every == 0
            w.writerow([1000 + i, f"{subject} #{i}", f"{body} (ticket {i})", "" if gap else lab,
                        f"2026-11-{1 + i % 28:02d}"])
    return path


def test_without_a_text_column_the_longest_free_text_is_used_and_the_others_named(ws, tmp_path):
    """Before: "text column 'text' not found" -- for a file whose text is plainly its body."""
    rep = add_dataset(ws, "text", path=_tickets(tmp_path / "t.csv"), label_column="category", progress=False)
    assert rep.added == 60
    assert ("no 'text' column: the text is 'body', the longest free-text column; other text column(s): subject -- "
            "--text-column subject,body joins them") in rep.notes
    with ws.store() as s:
        texts = [r[0] for r in s.query("SELECT text FROM items ORDER BY id")]
        assert texts[0] == TOPICS["billing"][1] + " (ticket 0)"
        assert table_text_columns(ws, "t", None) == ("body",)  # what predict reads from a new file


def test_a_missing_label_column_is_suggested_by_name_not_ids_or_dates(ws, tmp_path):
    """Before: "no label values; pass --task" -- with the labels sitting in a column called category."""
    with pytest.raises(TaskError, match=r"--label-column category \(3 values: account, billing, hardware\)$"):
        add_dataset(ws, "text", path=_tickets(tmp_path / "t.csv"), progress=False)


def test_no_free_text_column_is_a_clear_error(ws, tmp_path):
    (tmp_path / "x.csv").write_text("id,code,label\n1,A1,x\n2,B2,y\n")
    with pytest.raises(ValueError, match="no 'text' column and no column that reads as free text; columns: id, "
                                         r"code, label \(use --text-column, several as a,b\)"):
        add_dataset(ws, "text", path=tmp_path / "x.csv", progress=False)
    with pytest.raises(ValueError, match="the label column 'label' cannot also be the text"):
        add_dataset(ws, "text", path=tmp_path / "x.csv", text_column="code,label", progress=False)


def test_several_text_columns_are_joined_and_a_new_file_is_read_the_same_way(tmp_path):
    """Through the CLI: import subject+body, label, train, calibrate; `predict` on a new export without
    --text-column reads subject+body again (the same hash: an imported row finds its stored item)."""
    w = ["--workspace", str(tmp_path / "ws")]

    def run(*args, code=0):
        r = CliRunner().invoke(main, [*w, *args], catch_exceptions=False)
        assert r.exit_code == code, r.output
        return r

    src = _tickets(tmp_path / "t.csv", n=150)
    run("data", "add", "text", str(src), "--text-column", "subject,body", "--label-column", "category",
        "--name", "desk", "--no-progress")
    run("label", "desk", "--split", "all", "--simulated", "--no-progress")
    run("train", "desk", "--kind", "text-tfidf", "--no-progress")
    run("calibrate", "desk", "--max-teacher-fraction", "0.5")
    ws_root = tmp_path / "ws"
    from llm_flywheel.store.workspace import Workspace

    ws = Workspace.open(ws_root)
    with ws.store() as s:
        first = s.query("SELECT text, content_hash FROM items WHERE source_ref = 't.csv:2'")[0]
    assert first[0] == f"subject: {TOPICS['billing'][0]} #0\nbody: {TOPICS['billing'][1]} (ticket 0)"
    assert "text: the column(s) subject, body" in " ".join(run("data", "info", "desk").output.split())
    rows = expand_tables([src], _task(ws, "desk"), table_text_columns(ws, "desk", None))
    assert rows[0].content == first[0] and rows[0].content_hash == first[1]

    (tmp_path / "new.csv").write_text("id,body,subject\n7,the printer screen stays black,Laptop broken\n"
                                      "8,,Invoice question\n9,,\n", encoding="utf-8")
    r = run("predict", "desk", str(tmp_path / "new.csv"), "--json", code=1)  # row 9 has no text: reported
    got = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [a.get("student_label") for a in got] == ["hardware", "billing", None]
    assert "empty or missing 'subject+body'" in got[2]["error"]

    # served over HTTP: {"fields": {...}} is joined as the import joined it -- the stored row's hash, its answer
    import httpx
    from test_serve import running

    from llm_flywheel.interfaces.serve import create_app

    subject, body = TOPICS["billing"][0] + " #0", TOPICS["billing"][1] + " (ticket 0)"
    with running(create_app(ws, "desk", seed=0)) as url:
        a = httpx.post(f"{url}/v1/predict", json={"fields": {"body": body, "subject": subject}})
        b = httpx.post(f"{url}/v1/predict/batch", json={"inputs": [{"fields": {"subject": subject, "body": body}}]})
        unknown = httpx.post(f"{url}/v1/predict", json={"fields": {"title": "x"}})
        both = httpx.post(f"{url}/v1/predict", json={"text": "x", "fields": {"body": "x"}})
    assert a.status_code == 200 and a.json()["input_hash"] == first[1][:16] and a.json()["student_label"] == "billing"
    assert b.status_code == 200 and b.json()["results"][0]["input_hash"] == first[1][:16], b.text
    assert unknown.status_code == 422 and "not this dataset's text columns (subject, body)" in unknown.text
    assert both.status_code == 422 and "or" in both.text and "one of them" in both.text

    # the same dataset from a body-only export would mix two kinds of text: refused, naming the fix
    with pytest.raises(DatasetError, match="made of the column.s. subject, body; this import reads body. Pass "
                                           "--text-column subject,body"):
        add_dataset(ws, "text", path=src, text_column="body", label_column="category", as_name="desk",
                    progress=False)


def _task(ws, name):
    from llm_flywheel.core.task import Task

    with ws.store() as s:
        return Task.from_json(s.dataset_task_json(name))


def test_a_table_without_a_label_column_names_the_candidates(ws, tmp_path):
    rows = "\n".join(f"{i % 60},{('basic', 'pro')[i % 2]},{10 + i * 0.37:.2f},{('no', 'yes')[i % 3 == 0]}"
                     for i in range(60))
    (tmp_path / "churn.csv").write_text("tenure,plan,monthly,churned\n" + rows + "\n")
    with pytest.raises(TaskError, match=r"--label-column plan \(2 values: basic, pro\); --label-column churned "
                                        r"\(2 values: no, yes\)$"):
        add_dataset(ws, "tabular", path=tmp_path / "churn.csv", progress=False)


def test_a_test_split_with_some_gold_labels_missing_is_measured_on_the_rest(tmp_path):
    """A labels column with gaps (a Kaggle table missing a few rows): before, "the test split has items without a
    gold label: accuracies not measured" -- nothing measured at all; now the gold part is, and the run says so."""
    src = _tickets(tmp_path / "t.csv", n=240, blank_every=10)
    w = ["--workspace", str(tmp_path / "ws")]
    r = CliRunner().invoke(main, [*w, "data", "add", "text", str(src), "--label-column", "category", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*w, "run", "t", "--teacher", "simulated", "--rounds", "1", "--student-kind",
                                  "text-tfidf", "--no-progress"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "test items that have a gold label (the others have none)" in out and "accuracies not measured" not in out
    summary = json.loads((tmp_path / "ws" / "reports" / "summary.json").read_text())
    assert summary["rounds"][0]["student_accuracy"] is not None


def test_rows_with_several_labels_are_unlabelled_not_a_made_up_class(ws, tmp_path):
    """A multi-label export: ["billing", "hardware"] used to become a class "billing_hardware"."""
    rows = [{"text": f"ticket {i} about a charge", "label": [["billing", "hardware"], ["billing"], "account"][i % 3]}
            for i in range(30)]
    (tmp_path / "ml.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rep = add_dataset(ws, "text", path=tmp_path / "ml.jsonl", progress=False)
    assert _task(ws, "ml").labels == ("account", "billing")  # a one-element list is its element
    assert any(n.startswith("WARNING: 10 row(s) have several labels in 'label' (e.g. ['billing', 'hardware'])")
               for n in rep.notes)
    with ws.store() as s:
        golds = [r[0] for r in s.query("SELECT gold_label FROM items WHERE dataset = 'ml' ORDER BY id")]
    assert golds[:3] == [None, "billing", "account"]
    (tmp_path / "ml.csv").write_text('text,label\na,"[""x"", ""y""]"\nb,x\nc,x\n')  # the same, written in a CSV
    with pytest.raises(TaskError, match=r"only one label value 'x'.* -- 1 row\(s\) have several labels"):
        add_dataset(ws, "text", path=tmp_path / "ml.csv", progress=False)
