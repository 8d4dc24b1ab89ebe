"""tabular adapter: numeric feature detection, the missing-value policy, bad cells reported and skipped."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llm_flywheel.core.task import Task, TaskError
from llm_flywheel.data.registry import DatasetError, add_dataset
from llm_flywheel.data.tabular import FeatureError, category_value, feature_row, parse_number


def _features(ws, dataset):
    with ws.store() as s:
        return {r["source_ref"]: (json.loads(r["features_json"]), r["gold_label"])
                for r in s.query("SELECT source_ref, features_json, gold_label FROM items WHERE dataset=?", (dataset,))}


def test_auto_features_missing_values_and_bad_cells(ws, tmp_path):
    p = tmp_path / "flowers.csv"
    p.write_text(
        "id_name,sepal,petal,colour,label\n"
        "a,5.1,1.4,red,Setosa\n"
        "b,7.0,,blue,versicolor\n"          # empty cell -> NaN
        "c,NA,4.7,red,versicolor\n"         # NA -> NaN
        "d,6.3,6.0,green,virginica\n"
        "e,1e400,1.0,red,setosa\n"           # infinite -> row skipped
        "f,5.9,?,red,virginica\n",           # ? -> NaN
        encoding="utf-8",
    )
    rep = add_dataset(ws, "tabular", path=p, progress=False)
    assert rep.added == 5 and rep.skipped == 1 and "flowers.csv:6" in rep.skipped_examples[0]
    assert any(n.endswith("): id_name (text with 6 distinct values: an identifier or free text?)")
               for n in rep.notes), rep.notes
    assert "categorical column(s): colour (3 values)" in rep.notes  # few distinct texts: a category
    feats = _features(ws, "flowers")
    assert feats["flowers.csv:2"] == ([5.1, 1.4, "red"], "setosa")
    assert feats["flowers.csv:3"][0] == [7.0, None, "blue"]  # NaN stored as JSON null
    assert feats["flowers.csv:4"][0] == [None, 4.7, "red"]
    with ws.store() as s:
        meta = s.latest_report("dataset_import", "flowers")
        task = Task.from_json(s.dataset_task_json("flowers"))
    assert meta["features"] == ["sepal", "petal", "colour"] and meta["adapter"] == "tabular"
    assert task.features == ("sepal", "petal", "colour") and task.categorical == ("colour",)


def test_explicit_features_skip_rows_with_text_in_them(ws, tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("x,y,z,cls,split\n1,2,3,a,train\n4,oops,6,b,train\n7,8,9,b,test\n1,1,1,a,test\n")
    rep = add_dataset(ws, "tabular", path=p, features=["x", "y"], label_column="cls", split_column="split",
                      as_name="tab", progress=False)
    assert rep.added == 3 and rep.skipped == 1
    assert "feature 'y': 'oops' is not a number" in rep.skipped_examples[0]
    assert rep.splits["test"] == 2
    assert sorted(v[0] for v in _features(ws, "tab").values()) == [[1.0, 1.0], [1.0, 2.0], [7.0, 8.0]]


def test_categorical_columns_keep_their_text_and_a_table_with_other_columns_is_refused(ws, tmp_path):
    """Text columns with few values are categories (kept as written, the teacher reads them so; a code among them
    stays text); an identifier is left out.  Rows added later
    must have the dataset's columns: a table read with other columns would mix rows of two shapes."""
    p = tmp_path / "churn.csv"
    zones = ["north", "south", "east", "12", "012"]
    rows = [f"c{i},{['free', 'basic', 'premium'][i % 3]},{zones[i % 5]},{i},{'churn' if i % 3 else 'stay'}"
            for i in range(30)]
    p.write_text("customer,plan,zone,tenure,label\n" + "\n".join(rows) + "\n")
    rep = add_dataset(ws, "tabular", path=p, progress=False)
    assert rep.added == 30 and "categorical column(s): plan (3 values), zone (5 values)" in rep.notes, rep.notes
    assert any(n.endswith("customer (text with 30 distinct values: an identifier or free text?)") for n in rep.notes)
    feats = _features(ws, "churn")
    assert feats["churn.csv:2"][0] == ["free", "north", 0.0]
    assert feats["churn.csv:5"][0] == ["free", "12", 3.0] and feats["churn.csv:6"][0] == ["basic", "012", 4.0]
    q = tmp_path / "more.csv"
    q.write_text("customer,plan,zone,tenure,label\nc99,free,west,50,stay\nc98,basic,12,1,churn\n")
    with pytest.raises(DatasetError, match=r"holds rows of the features plan, zone, tenure; this import reads "
                                           r"tenure.*--features plan,zone,tenure"):
        add_dataset(ws, "tabular", path=q, as_name="churn", features=["tenure"], progress=False)
    more = add_dataset(ws, "tabular", path=q, as_name="churn", features=["plan", "zone", "tenure"], progress=False)
    assert more.added == 2 and _features(ws, "churn")["more.csv:2"][0] == ["free", "west", 50.0]


def test_the_notes_say_why_a_column_is_not_a_feature(ws, tmp_path):
    p = tmp_path / "mix.csv"
    p.write_text("id,age,empty,plan,size,label\n" + "".join(
        f"a{i},{'oops' if i == 3 else i},,{'free' if i % 2 else 'basic'},{i * 1.5},{'x' if i % 2 else 'y'}\n"
        for i in range(8)))
    rep = add_dataset(ws, "tabular", path=p, progress=False)
    assert ("column(s) not used as features (name them in --features to use them): id (text with 8 distinct values: "
            "an identifier or free text?), age (numbers mixed with text), empty (empty)") in rep.notes


def test_feature_row_policy():
    assert feature_row([1, None, float("nan"), "x", 12.0, " b "], ("a", "b", "c", "d", "e", "f"), ("d", "e", "f")) \
        == [1.0, None, None, "x", "12", "b"]
    assert category_value("NA") is None and category_value(True) == "true" and category_value(2.5) == "2.5"
    with pytest.raises(ValueError, match="feature 'b': 'oops' is not a number"):
        feature_row([1, "oops"], ("a", "b"))
    with pytest.raises(FeatureError) as bad:  # the import reports `what`: the cell whole, ';' included
        feature_row(["1;2"], ("a",))
    assert bad.value.what == "feature 'a': '1;2' is not a number"


def test_jsonl_table_and_numeric_labels(ws, tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_text("\n".join(json.dumps({"a": i, "b": i * 0.5, "label": i % 2}) for i in range(8)))
    rep = add_dataset(ws, "tabular", path=p, progress=False)
    assert rep.added == 8
    feats = _features(ws, "n")
    assert {lab for _, lab in feats.values()} == {"0", "1"}


def test_tabular_errors_are_clear(ws, tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("name,label\nx,a\ny,b\n")
    with pytest.raises(ValueError, match="no numeric or categorical feature columns.*--features"):
        add_dataset(ws, "tabular", path=p, progress=False)
    p2 = tmp_path / "u.csv"
    p2.write_text("x,label\n1,a\n2,b\n")
    with pytest.raises(ValueError, match=r"feature column\(s\) \['q'\] not found"):
        add_dataset(ws, "tabular", path=p2, features=["q"], progress=False)
    with pytest.raises(ValueError, match="label column 'label' cannot also be a feature"):
        add_dataset(ws, "tabular", path=p2, features=["x", "label"], progress=False)


@pytest.mark.parametrize("cell, expected", [("1.5", 1.5), (" 2 ", 2.0), ("", None), ("NaN", None), ("null", None),
                                            (None, None), (3, 3.0), (True, 1.0)])
def test_parse_number(cell, expected):
    v = parse_number(cell)
    assert (math.isnan(v) if expected is None else v == expected)


def test_the_teacher_is_told_the_feature_names_and_a_reimport_keeps_the_prompt(ws, tmp_path):
    """An LLM cannot label "[14.2, 1.7]" without knowing what the numbers are: a table's columns reach the prompt.
    A dataset stored without names keeps its prompt on a re-import, or every cached answer would be asked again."""
    from dataclasses import replace

    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.prompts import compute_prompt_version, system_prompt

    p = tmp_path / "wine.csv"
    p.write_text("alcohol,malic_acid,colour,label\n14.2,1.7,red,a\n13.1,,white,b\n12.0,2.5,red,a\n")
    add_dataset(ws, "tabular", path=p, progress=False)
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json("wine"))
    assert task.features == ("alcohol", "malic_acid")  # the text column is not a feature
    assert "in this order: alcohol, malic_acid (null: a missing value)" in system_prompt(task, 0)
    unnamed = replace(task, features=())
    assert "alcohol" not in system_prompt(unnamed, 1)
    assert compute_prompt_version(task) != compute_prompt_version(unnamed)
    assert Task.from_json(unnamed.to_json()) == unnamed and "features" not in unnamed.to_json()

    with ws.store() as s:  # a dataset stored before names were kept
        s.put_dataset("wine", unnamed.to_json())
    add_dataset(ws, "tabular", path=p, progress=False)
    with ws.store() as s:
        assert Task.from_json(s.dataset_task_json("wine")).features == ()


def test_a_label_column_of_quantities_or_ids_is_refused_naming_the_fix(ws, tmp_path):
    rng = np.random.default_rng(0)
    rows = ["rooms,area,price"] + [f"{r},{a},{a * 3500 + r * 10000 + rng.normal(0, 2e4):.2f}"
                                   for r, a in zip(rng.integers(1, 7, 120), rng.integers(30, 200, 120))]
    (tmp_path / "houses.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(TaskError, match=r"'price' has 120 distinct values in 120 labelled rows.*regression target"):
        add_dataset(ws, "tabular", path=tmp_path / "houses.csv", label_column="price", progress=False)
    (tmp_path / "tickets.csv").write_text("text,ticket_id\n" + "".join(f"t {i},T-{i:04d}\n" for i in range(60)))
    with pytest.raises(TaskError, match="look like ids or free text"):
        add_dataset(ws, "text", path=tmp_path / "tickets.csv", label_column="ticket_id", progress=False)
    # many classes that recur (an intent set: 40 intents, 3 examples each) are classes
    (tmp_path / "intents.csv").write_text("text,label\n" + "".join(f"ask {i},intent_{i % 40}\n" for i in range(120)))
    assert add_dataset(ws, "text", path=tmp_path / "intents.csv", progress=False).added == 120
