"""Human review round trip: export the uncertain items as CSV, import corrections that outrank the teacher."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.pipeline.review import ReviewImportError, export_reviews, import_reviews
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher


@pytest.fixture
def labelled_ws(synth_ws, synth_task):
    s = synth_ws.store()
    ids = [it.id for it in s.items("synth", limit=120)]
    s.close()
    cfg = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0, accuracy=0.6, pass_correlation=0.2)
    with run_simulated_teacher(synth_ws, "synth", cfg) as url:
        t = teacher_from_spec(f"{url}|{model_id('synth')}", synth_task)
        label_items(synth_ws, "synth", ids, t, LabelConfig(passes=2), progress=False)
    return synth_ws


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_queue_has_passes_consensus_and_empty_final(labelled_ws, tmp_path):
    out = tmp_path / "reviews.csv"
    n = export_reviews(labelled_ws, "synth", out)
    rows = _read(out)
    assert n == len(rows) > 0
    r = rows[0]
    for col in ("item_id", "image_path", "pass_0_label", "pass_0_confidence", "pass_1_label", "pass_2_label",
                "consensus", "status", "quality", "label_final"):
        assert col in r
    assert all(row["label_final"] == "" for row in rows)
    assert r["teacher"] == "simulated/synth-teacher (SIMULATED)"
    assert all(row["status"] in ("disagreed", "tie_broken") for row in rows)
    assert all(row["pass_0_label"] != row["pass_1_label"] for row in rows)
    from pathlib import Path
    assert Path(r["image_path"]).is_file()
    assert "gold" not in ",".join(r)  # reviewers do not see gold labels
    assert export_reviews(labelled_ws, "synth", tmp_path / "all.csv", which="all") == 120


def test_import_applies_human_labels_that_outrank_the_teacher(labelled_ws, tmp_path):
    out = tmp_path / "reviews.csv"
    export_reviews(labelled_ws, "synth", out)
    rows = _read(out)
    s = labelled_ws.store()
    gold = {it.id: it.gold_label for it in s.items("synth")}
    s.close()
    for i, row in enumerate(rows):
        if i % 2 == 0:
            g = gold[int(row["item_id"])]
            row["label_final"] = (g + ("es" if g.endswith("s") else "s")) if i % 4 == 0 else g.upper()  # variants
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = import_reviews(labelled_ws, out, reviewer="ana")
    edited = [int(r["item_id"]) for i, r in enumerate(rows) if i % 2 == 0]
    assert res.applied == len(edited) and res.ignored_empty == len(rows) - len(edited)
    s = labelled_ws.store()
    eff = s.effective_labels("synth")
    assert all(eff[i] == gold[i] for i in edited)
    assert s.query("SELECT COUNT(*) AS n FROM reviews WHERE reviewer='ana'")[0]["n"] == len(edited)
    resolved = {r["item_id"] for r in s.query("SELECT item_id FROM review_queue WHERE resolved_at IS NOT NULL")}
    s.close()
    assert resolved == set(edited)
    assert len(_read(out)) - len(edited) == export_reviews(labelled_ws, "synth", tmp_path / "again.csv")


def test_bad_file_lists_bad_rows_and_applies_nothing(labelled_ws, tmp_path):
    out = tmp_path / "bad.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "label_final"])
        w.writerow([1, "ring"])
        w.writerow([999999, "ring"])
        w.writerow([2, "hexagon"])
        w.writerow(["x", "dot"])
        w.writerow([3, ""])
    with pytest.raises(ReviewImportError) as e:
        import_reviews(labelled_ws, out)
    msg = str(e.value)
    assert "line 3" in msg and "999999" in msg and "line 4" in msg and "hexagon" in msg and "line 5" in msg
    assert "line 2" not in msg and len(e.value.bad_rows) == 3
    s = labelled_ws.store()
    assert s.query("SELECT COUNT(*) AS n FROM labels WHERE source='human'")[0]["n"] == 0
    s.close()
    with open(tmp_path / "nocol.csv", "w") as f:
        f.write("id,label\n1,ring\n")
    with pytest.raises(ReviewImportError, match="missing column"):
        import_reviews(labelled_ws, tmp_path / "nocol.csv")


def test_review_cli_round_trip(labelled_ws, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r.csv"
    res = runner.invoke(main, ["-w", str(labelled_ws.root), "review", "export", "synth", "--all-disagreements", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    rows[0]["label_final"] = "dot"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = runner.invoke(main, ["-w", str(labelled_ws.root), "review", "import", str(out), "--reviewer", "bo"])
    assert res.exit_code == 0, res.output
    s = labelled_ws.store()
    assert s.effective_labels("synth")[int(rows[0]["item_id"])] == "dot"
    s.close()
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,label_final\n1,square\n")
    res = runner.invoke(main, ["-w", str(labelled_ws.root), "review", "import", str(bad)])
    assert res.exit_code != 0 and "square" in res.output and "nothing was applied" in res.output


def test_export_queue_is_ordered_by_review_value_and_limit_keeps_the_best(labelled_ws, tmp_path):
    from llm_flywheel.pipeline.review import review_queue

    rows = _read(tmp_path / "q.csv") if export_reviews(labelled_ws, "synth", tmp_path / "q.csv") else []
    values = [float(r["review_value"]) for r in rows]
    assert values and values == sorted(values, reverse=True)
    best = [c.item_id for c in review_queue(labelled_ws, "synth", low_confidence_below=None)][:5]
    export_reviews(labelled_ws, "synth", tmp_path / "top.csv", limit=5)
    assert [int(r["item_id"]) for r in _read(tmp_path / "top.csv")] == best
