"""text adapter: CSV/TSV/JSONL/JSON with text, label and split columns; malformed rows reported and skipped."""

from __future__ import annotations

import json

import pytest

from llm_flywheel.data.registry import add_dataset
from llm_flywheel.core.task import TaskError


def test_jsonl_with_labels_and_malformed_lines(ws, tmp_path):
    p = tmp_path / "mail.jsonl"
    lines = [json.dumps({"text": f"buy cheap pills {i}", "label": "Spam"}) for i in range(6)]
    lines += [json.dumps({"text": f"meeting at {i} pm", "label": "ham"}) for i in range(6)]
    lines += [
        "{not json",                               # line 13: not JSON
        json.dumps(["a", "list"]),                 # line 14: not an object
        json.dumps({"text": "   ", "label": "ham"}),  # line 15: empty text
        "",                                        # blank: ignored
        json.dumps({"text": "no label here"}),     # line 17: unlabelled, imported
        json.dumps({"body": "wrong column"}),      # line 18: missing text
    ]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert rep.dataset == "mail"
    assert rep.added == 13 and rep.skipped == 4
    assert any("mail.jsonl:13" in e and "not JSON" in e for e in rep.skipped_examples)
    assert any("mail.jsonl:14" in e and "JSON object" in e for e in rep.skipped_examples)
    with ws.store() as s:
        import llm_flywheel.core.task as t

        task = t.Task.from_json(s.dataset_task_json("mail"))
        assert task.labels == ("ham", "spam") and task.modality == "text"
        rows = {r["source_ref"]: r for r in s.query("SELECT source_ref, text, gold_label FROM items")}
    assert rows["mail.jsonl:1"]["gold_label"] == "spam"  # "Spam" normalised
    assert rows["mail.jsonl:17"]["gold_label"] is None
    assert add_dataset(ws, "text", path=p, progress=False).added == 0


def test_csv_columns_split_column_and_quoted_newlines(ws, tmp_path):
    p = tmp_path / "reviews.csv"
    rows = ['body,sentiment,part']
    for i in range(10):
        rows.append(f'"great, really great {i}\nsecond line",Positive,{"test" if i < 3 else "train"}')
        rows.append(f'awful {i},negative,train')
    rows.append('too,many,fields,here')
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rep = add_dataset(ws, "text", path=p, text_column="body", label_column="sentiment", split_column="part",
                      as_name="rev", progress=False)
    assert rep.added == 20 and rep.skipped == 1 and "4 fields, header has 3" in rep.skipped_examples[0]
    assert rep.splits["test"] == 3
    with ws.store() as s:
        texts = [r[0] for r in s.query("SELECT text FROM items WHERE gold_label='positive'")]
    assert all("\nsecond line" in x and "," in x for x in texts)


def test_tsv_and_json_list(ws, tmp_path):
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello there\tgreeting\nbye now\tfarewell\n", encoding="utf-8")
    assert add_dataset(ws, "text", path=tmp_path / "a.tsv", progress=False).added == 2
    (tmp_path / "b.json").write_text(json.dumps([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}, 3]))
    rep = add_dataset(ws, "text", path=tmp_path / "b.json", progress=False)
    assert rep.added == 2 and rep.skipped == 1


def test_undecodable_bytes_do_not_crash(ws, tmp_path):
    p = tmp_path / "bytes.csv"
    p.write_bytes(b"text,label\nok text,a\nbad \xff\xfe bytes,b\n")
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert rep.added == 2


def test_text_errors_are_clear(ws, tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("content,label\nhi,a\nyo,b\n")
    with pytest.raises(ValueError, match=r"no 'text' column and no column that reads as free text; columns: "
                                         r"content, label"):
        add_dataset(ws, "text", path=p, progress=False)
    with pytest.raises(ValueError, match="label column 'lab' not found"):
        add_dataset(ws, "text", path=p, text_column="content", label_column="lab", progress=False)
    (tmp_path / "one.csv").write_text("text,label\nhi,a\nyo,a\n")
    with pytest.raises(TaskError, match="only one label value 'a'.*--task"):
        add_dataset(ws, "text", path=tmp_path / "one.csv", progress=False)
    (tmp_path / "x.docx").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported file type '.docx'; use .csv, .tsv, .jsonl, .json, .parquet"):
        add_dataset(ws, "text", path=tmp_path / "x.docx", progress=False)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        add_dataset(ws, "text", path=tmp_path / "empty.csv", progress=False)


def test_task_file_labels_filter_unknown_values(ws, tmp_path):
    task = tmp_path / "t.toml"
    task.write_text('name = "mail"\nmodality = "text"\nlabels = ["spam", "ham"]\n')
    p = tmp_path / "m.csv"
    p.write_text("text,label\nwin money,spam\nlunch?,ham\nwhat is this,newsletter\nno label,\n")
    rep = add_dataset(ws, "text", path=p, task=task, progress=False)
    assert rep.added == 3 and rep.skipped == 1 and "newsletter" in rep.skipped_examples[0]


@pytest.mark.parametrize("name,content", [("t.csv", "text,label\n"), ("t.jsonl", ""), ("t.tsv", "text\tlabel\n")])
def test_a_file_without_rows_is_an_error_not_an_empty_dataset(ws, tmp_path, name, content):
    """A header-only or empty file used to register an empty dataset and exit 0 ("0 added")."""
    (tmp_path / name).write_text(content)
    (tmp_path / "t.toml").write_text('name = "t"\nmodality = "text"\n[labels]\na = "x"\nb = "y"\n')
    with pytest.raises(ValueError, match="no rows to import"):
        add_dataset(ws, "text", path=tmp_path / name, task=tmp_path / "t.toml", progress=False)
    with ws.store() as s:
        assert "t" not in s.dataset_names()


def test_a_label_column_with_no_values_says_so(ws, tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nhello,\nworld,\n")
    with pytest.raises(TaskError, match="no label values"):
        add_dataset(ws, "text", path=tmp_path / "t.csv", progress=False)


def test_label_cells_that_mean_missing_are_no_label(ws, tmp_path):
    """R's write.csv writes NA for a missing label, Excel #N/A: those rows are unlabelled, not a class 'na'."""
    rows = "".join(f"ticket {i},{['billing', 'hardware', 'NA', '#N/A', 'none'][i % 5]}\n" for i in range(20))
    (tmp_path / "r.csv").write_text("text,label\n" + rows)
    rep = add_dataset(ws, "text", path=tmp_path / "r.csv", progress=False)
    with ws.store() as s:
        labels = {it.source_ref: it.gold_label for it in s.items("r")}
    assert set(labels.values()) == {"billing", "hardware", "none", None}
    assert "8 label cell(s) in 'label' read as no label (4 'NA', 4 '#N/A')" in " ".join(rep.notes)
