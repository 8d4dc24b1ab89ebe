"""`flywheel calibrate / predict / serve` end to end on a tiny trained student (serve as a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner
from ports import free_port
from test_cascade import trained_calibrated_ws

from llm_flywheel.interfaces.cli import main


@pytest.fixture(scope="module")
def cal_ws(tmp_path_factory):
    return trained_calibrated_ws(tmp_path_factory.mktemp("cli") / "ws")


def _run(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args], catch_exceptions=False)


def test_help_is_useful():
    for cmd, words in (("calibrate", ("--target-accuracy", "--max-teacher-fraction", "guarantee")),
                       ("predict", ("--split", "--teacher", "source")),
                       ("serve", ("--host", "loopback", "/v1/predict", "/metrics"))):
        r = CliRunner().invoke(main, [cmd, "--help"])
        assert r.exit_code == 0
        for w in words:
            assert w in r.output, (cmd, w)


def test_calibrate_prints_choice_and_png(cal_ws):
    ws, version = cal_ws
    r = _run(ws, "calibrate", "synth", "--max-teacher-fraction", "0.25")
    assert r.exit_code == 0, r.output
    png = r.stdout.strip().splitlines()[-1]
    assert png.endswith(f"cascade-curve-{version}.png") and os.path.exists(png)
    r = _run(ws, "calibrate", "synth", "--target-accuracy", "0.9", "--delta", "0.1", "--json")
    rep = json.loads(r.stdout)
    assert rep["version"] == version and rep["choice"]["goal"] == "accuracy" and rep["choice"]["delta"] == 0.1
    r = _run(ws, "calibrate", "synth", "--target-accuracy", "1.5")
    assert r.exit_code == 2 and "--target-accuracy" in r.output and "0<x<1" in r.output
    # this workspace's calib labels were written without teacher calls: no single call to compare with
    r = _run(ws, "calibrate", "synth", "--goal", "teacher-parity")
    assert r.exit_code != 0 and "pass 0" in r.output and "flywheel label" in r.output
    r = _run(ws, "calibrate", "synth", "--goal", "teacher-parity", "--target-accuracy", "0.9")
    assert r.exit_code != 0 and "not both" in r.output
    _run(ws, "calibrate", "synth", "--target-accuracy", "0.9", "--delta", "0.1")  # leave the accuracy goal latest
    r = _run(ws, "calibrate", "nosuch")
    assert r.exit_code == 2 and "not in this workspace" in r.output and "flywheel data add" in r.output


def test_predict_files_and_split(cal_ws, tmp_path):
    ws, version = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=3)
    files = []
    for it in items:
        p = tmp_path / f"{it.id}.png"
        p.write_bytes((ws.root / it.blob_path).read_bytes())
        files.append(str(p))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    r = _run(ws, "predict", "synth", *files, str(bad), "--json")
    assert r.exit_code == 1 and "could not be read" in r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 4 and "error" in lines[-1]
    for d in lines[:3]:
        assert d["model_version"] == version and d["source"] in ("student", "deferred")
    # a split through the cascade with the simulated teacher answering the deferred items
    r = _run(ws, "predict", "synth", "--split", "stream", "--teacher", "simulated", "--threshold", "0.9999", "--json")
    assert r.exit_code == 0, r.output
    answers = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(answers) == 40
    assert {a["source"] for a in answers} <= {"student", "teacher"} and any(a["source"] == "teacher" for a in answers)
    assert "sent to the teacher" in r.output and "cascade accuracy (gold)" in r.output
    with ws.store() as s:
        n = s.query("SELECT COUNT(*) FROM cascade_log WHERE origin='predict' AND source='teacher'")[0][0]
    assert n == sum(a["source"] == "teacher" for a in answers)
    r = _run(ws, "predict", "synth")
    assert r.exit_code == 2 and "FILES or --split" in r.output


def test_serve_command_runs_a_loopback_server(cal_ws):
    ws, version = cal_ws
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from llm_flywheel.interfaces.cli import main; main()", "--workspace", str(ws.root), "serve", "synth",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert h.json()["model_version"] == version
        with ws.store() as s:
            it = s.items("synth", split="test", limit=1)[0]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("a.png", (ws.root / it.blob_path).read_bytes())})
        assert r.status_code == 200 and r.json()["model_version"] == version
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_predict_text_given_on_the_command_line(tmp_path):
    """A text dataset answers `--text` strings (repeatable, beside FILES) instead of "File 'my text' does not
    exist"; an image dataset refuses --text with exit 2 naming FILES."""
    topics = {"billing": "invoice refund payment charged bill", "hardware": "printer laptop screen keyboard broken",
              "account": "password login locked two-factor username"}
    rows = [f"{' '.join(w.split()[i % 5:] + w.split()[:i % 5])} ticket {i},{lab}"
            for i in range(150) for lab, w in [list(topics.items())[i % 3]]]
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    w = ["--workspace", str(tmp_path / "ws")]

    def run(*args):
        r = CliRunner().invoke(main, [*w, *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    run("data", "add", "text", str(tmp_path / "t.csv"), "--no-progress")
    run("label", "t", "--split", "all", "--simulated", "--no-progress")
    run("train", "t", "--kind", "text-tfidf", "--no-progress")
    run("calibrate", "t", "--max-teacher-fraction", "0.5")
    (tmp_path / "one.txt").write_text("my laptop screen is broken")
    r = run("predict", "t", str(tmp_path / "one.txt"), "--text", "refund the invoice I was charged twice",
            "--text", "password locked", "--json")
    answers = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [a.get("file") or a.get("text") for a in answers] == [
        str(tmp_path / "one.txt"), "refund the invoice I was charged twice", "password locked"]
    assert [a["student_label"] for a in answers] == ["hardware", "billing", "account"]
    r = CliRunner().invoke(main, [*w, "predict", "t"])
    assert r.exit_code == 2 and "--text" in r.output

    # a CSV of new tickets is one input per row (it was answered as one text, the whole file, with no error)
    (tmp_path / "new.csv").write_text("id,body\n1,my laptop screen is broken\n2,refund the invoice please\n3,\n")
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "new.csv"), "--json"])
    assert r.exit_code == 1 and "no 'text' column" in r.output and "--text-column" in r.output
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "new.csv"), "--text-column", "body", "--json"])
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [a["row"] for a in rows] == ["new.csv:2", "new.csv:3", "new.csv:4"]
    assert [a.get("student_label") for a in rows] == ["hardware", "billing", None]
    assert "empty or missing 'body'" in rows[2]["error"] and r.exit_code == 1  # the empty row is reported


def test_predict_reads_a_table_s_rows_by_the_model_s_column_names(tmp_path):
    """A tabular dataset answers a CSV of new rows by its feature names, whatever the column order; a missing
    column is named."""
    from helpers_tables import calibrated_table

    w = ["--workspace", str(calibrated_table(tmp_path))]
    (tmp_path / "new.csv").write_text("note,y,x\nbig,0.95,0.9\nsmall,0.05,0.1\n")  # other order, an extra column
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "new.csv"), "--json"])
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["student_label"] for x in r.stdout.splitlines() if x.startswith("{")] == ["high", "low"]
    (tmp_path / "bad.csv").write_text("x\n0.5\n")
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "bad.csv")])
    assert r.exit_code == 1 and "column(s) y, missing" in r.output


def test_predict_text_on_an_image_dataset_is_a_usage_error(cal_ws):
    ws, _ = cal_ws
    r = _run(ws, "predict", "synth", "--text", "a bar")
    assert r.exit_code == 2 and "give FILES" in r.output


def test_predict_engine_ray_without_ray_names_the_extra(cal_ws, monkeypatch):
    """Without the [ray] extra, --engine ray is exit 2 naming `pip install 'llm-flywheel[ray]'` (no traceback, no
    teacher started); the local engine does not need Ray."""
    ws, _ = cal_ws
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is missing
    r = _run(ws, "predict", "synth", "--split", "stream", "--engine", "ray", "--teacher", "simulated")
    assert r.exit_code == 2 and "pip install 'llm-flywheel[ray]'" in r.output and "SIMULATED" not in r.output
    r = _run(ws, "predict", "synth", "--split", "stream", "--limit", "3", "--show", "0")
    assert r.exit_code == 0, r.output


def test_predict_answers_a_folder(cal_ws, tmp_path):
    """A folder given as FILES stands for the files under it (hidden ones skipped); an empty one is exit 2."""
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=3)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / ".hidden").write_bytes(b"x")
    for k, it in enumerate(items):
        (tmp_path / "in" / ("sub" if k else "") / f"{it.id}.png").write_bytes((ws.root / it.blob_path).read_bytes())
    r = _run(ws, "predict", "synth", str(tmp_path / "in"), "--json", "--no-log")
    assert r.exit_code == 0, r.output
    got = [json.loads(x)["file"] for x in r.stdout.splitlines() if x.startswith("{")]
    assert sorted(os.path.basename(f) for f in got) == sorted(f"{it.id}.png" for it in items)
    (tmp_path / "empty").mkdir()
    r = _run(ws, "predict", "synth", str(tmp_path / "empty"))
    assert r.exit_code == 2 and "no files" in r.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".xlsx"])
def test_predict_output_writes_each_row_back_with_its_answer(tmp_path, suffix):
    """`predict t new.csv -o scored.csv`: the rows as the file has them (decimal commas and all), the answer
    columns after them (a `label` column of the input kept, the answer's renamed), an unreadable row with its error;
    the table on the terminal is cut to --show."""
    from helpers_tables import calibrated_table
    from llm_flywheel.data.table_files import read_table

    w = ["--workspace", str(calibrated_table(tmp_path))]
    (tmp_path / "new.csv").write_text("id;x;y;answered_by\n1;0,9;0,95;me\n2;0,1;0,05;me\n3;0,5\n",
                                      encoding="utf-8")
    out = tmp_path / f"scored{suffix}"
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "new.csv"), "-o", str(out), "--show", "1"])
    assert r.exit_code == 1 and "1 of 3 inputs could not be read" in r.output  # the bad row, after writing
    assert f"wrote 3 answers to {out}" in " ".join(r.output.split()) and "first 1 of 3 answers" in r.output
    got = read_table(out)
    assert got.columns == ["id", "x", "y", "answered_by", "predicted_label", "flywheel_answered_by", "confidence",
                           "student_label", "student_confidence", "teacher_label", "model_version", "error"]
    rows = [row.values for row in got.rows]
    assert [str(row.written["x"]) for row in got.rows[:2]] == ["0,9", "0,1"]  # as the file has them
    assert [r_["student_label"] for r_ in rows[:2]] == ["high", "low"]
    for r_ in rows[:2]:  # no teacher: an unsure row is "deferred", with no label
        assert (r_["flywheel_answered_by"], r_["predicted_label"] or None) in (("student", r_["student_label"]),
                                                                                ("deferred", None))
    assert rows[2]["error"] == "new.csv:4: unreadable row (2 fields, header has 4)"
    assert rows[2]["predicted_label"] in (None, "")
    assert not list(tmp_path.glob(".scored*"))  # no partial file left behind


def test_a_csv_answer_is_written_the_way_its_input_was(tmp_path):
    """A European Excel file (";", Windows-1252, decimal commas) comes back ";"-separated, in Windows-1252, with
    "0,93" confidences -- before, a UTF-8 comma file that opened in one column with its accents broken."""
    from helpers_tables import calibrated_table

    w = ["--workspace", str(calibrated_table(tmp_path))]
    (tmp_path / "new.csv").write_bytes("Stadt;x;y\nZürich;0,9;0,95\nGenève;0,1;0,05\n".encode("cp1252"))
    out = tmp_path / "scored.csv"
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "new.csv"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    lines = out.read_bytes().decode("cp1252").splitlines()
    assert lines[0].startswith("Stadt;x;y;predicted_label;answered_by;confidence;")
    cells = lines[1].split(";")
    assert cells[:3] == ["Zürich", "0,9", "0,95"] and "," in cells[5] and "." not in cells[5]
    (tmp_path / "plain.csv").write_text("x,y\n0.9,0.95\n", encoding="utf-8")  # a plain file: a plain answer
    r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "plain.csv"), "-o", str(out)])
    first = out.read_text(encoding="utf-8").splitlines()[1].split(",")
    assert r.exit_code == 0 and first[:2] == ["0.9", "0.95"] and "." in first[4]


def test_predict_output_is_checked_before_anything_is_answered(tmp_path):
    from helpers_tables import calibrated_table

    w = ["--workspace", str(calibrated_table(tmp_path))]
    (tmp_path / "new.csv").write_text("x,y\n0.9,0.95\n")
    for out, msg in ((tmp_path / "s.docx", "write .csv, .tsv, .jsonl, .parquet, .xlsx"),
                     (tmp_path / "missing" / "s.csv", "does not exist")):
        r = CliRunner().invoke(main, [*w, "predict", "t", str(tmp_path / "new.csv"), "-o", str(out)])
        assert r.exit_code == 2 and msg in r.output
    r = CliRunner().invoke(main, [*w, "predict", "t", "--split", "test", "-o", str(tmp_path / "s.csv")])
    assert r.exit_code == 2 and "--output goes with FILES or --text" in r.output


def test_an_xlsx_output_keeps_a_formula_looking_text_as_text(tmp_path):
    """A row whose text starts with '=' (hostile or not) is written to Excel as text, never as a formula."""
    openpyxl = pytest.importorskip("openpyxl")
    from llm_flywheel.pipeline.predict_output import write_answers

    write_answers(tmp_path / "o.xlsx", ['=HYPERLINK("http://x","click")'], [ValueError("unreadable")])
    cell = openpyxl.load_workbook(tmp_path / "o.xlsx").active["A2"]
    assert cell.data_type == "s" and cell.value == '=HYPERLINK("http://x","click")'


def test_predict_reads_a_saved_hugging_face_image_dataset_as_its_pictures(cal_ws, tmp_path):
    """``ds.save_to_disk("new")`` of pictures given to predict: each row a picture, hashed as the import stores it
    (the test items answer with their stored hash), an unreadable row reported on its own."""
    from test_cascade import SYNTH_TASK
    from test_data_hf_disk import IMAGE_TYPE, pa

    from llm_flywheel.pipeline.predict_files import RowInput, expand_tables

    ws, version = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=3)
    cells = [{"bytes": (ws.root / it.blob_path).read_bytes(), "path": f"{it.id}.png"} for it in items]
    cells.append({"bytes": b"not a picture", "path": "broken.png"})
    d = tmp_path / "new"
    d.mkdir()
    table = pa.table({"image": pa.array(cells, IMAGE_TYPE)})
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (d / "dataset_info.json").write_text(json.dumps({"features": {"image": {"_type": "Image"}}}))
    rows = expand_tables([d], SYNTH_TASK)
    assert [r.content_hash for r in rows[:3]] == [it.content_hash for it in items]
    assert isinstance(rows[3], RowInput) and rows[3].error and "unreadable picture" in rows[3].error
    r = _run(ws, "predict", "synth", str(d), "--json")
    assert r.exit_code == 1 and "could not be read" in r.output, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 4 and "error" in lines[-1]
    assert all(a["model_version"] == version and a["source"] in ("student", "deferred") for a in lines[:3])
