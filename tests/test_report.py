"""Report rendering: summary.json keys and a self-contained HTML page, from a real store."""

from __future__ import annotations

import json
import re
import time

import pytest

from llm_flywheel.interfaces.report import OVERALL_KEYS, ROUND_KEYS, ReportError, build_summary, render_report, write_report, wheel_report_key

LABELS = ["bar", "ring", "cross", "dot"]


def _fill(ws, *, source="simulated"):
    s = ws.store()
    run_id = s.start_run("wheel", {"dataset": "synth"})
    for r, (tf, acc) in enumerate([(0.4, 0.8), (0.2, 0.85)], start=1):
        m = {"round": r, "teacher_calls": 100 * r, "teacher_cost_usd": 0.02 * r, "student_accuracy": acc - 0.05,
             "student_accuracy_ci": [acc - 0.1, acc], "cascade_accuracy": acc, "cascade_accuracy_ci": [acc - 0.05, acc + 0.04],
             "teacher_fraction": tf, "model_version": f"v{r}", "promoted": True, "labels_total": 50 * r}
        s.execute("INSERT INTO rounds(run_id, dataset, round, model_version, metrics_json, started_at, finished_at) VALUES(?,?,?,?,?,?,?)",
                  (run_id, "synth", r, f"v{r}", json.dumps(m), time.time(), time.time()))
    # an unfinished round 3 (killed run) must not show
    s.execute("INSERT INTO rounds(run_id, dataset, round, metrics_json, started_at) VALUES(?,?,?,?,?)",
              (run_id, "synth", 3, json.dumps({"phase": "trained"}), time.time()))
    s.add_report("wheel", wheel_report_key("synth", run_id), {
        "teacher_source": source, "teacher_model": "simulated/synth-teacher",
        "teacher_quality": {"accuracy": 0.83, "accuracy_ci": [0.78, 0.87], "n": 200, "labels": LABELS,
                            "per_class": dict(zip(LABELS, [0.9, 0.8, 0.7, 0.9])), "confusion": [[9, 1, 0, 0], [1, 8, 1, 0], [0, 2, 7, 1], [0, 0, 1, 9]],
                            "consensus_accuracy": 0.86, "agreement_rate": 0.9, "passes": 2},
        "gold_ceiling_accuracy": 0.9,
        "cost": {"cost_per_1k_teacher_only": 0.25, "cost_per_1k_cascade": 0.02, "breakeven_items": 1234.5, "cost_ratio": 12.5,
                 "student_cost_per_1k": 0.001, "teacher_cost_per_call": 0.00025, "student_items_per_s": 3000.0,
                 "cpu_usd_per_hour": 0.09, "teacher_fraction": 0.2, "labelling_spend_usd": 0.06, "saving_per_item": 0.00023},
        "final": {"version": "v2", "labels": LABELS, "confusion": [[20, 1, 0, 0], [0, 22, 1, 0], [1, 0, 25, 0], [0, 0, 0, 30]],
                  "reliability": [{"confidence": 0.5, "accuracy": 0.4, "n": 5}, {"confidence": 0.95, "accuracy": 0.93, "n": 90}],
                  "ece": 0.03, "threshold": 0.8,
                  "curve": {"threshold": [0.5, 0.7, 0.9], "cascade_accuracy": [0.8, 0.85, None], "teacher_fraction": [0.05, 0.15, 0.4],
                            "cascade_accuracy_est": [0.8, 0.85, 0.87],  # teacher not asked above the threshold
                            "accepted_accuracy": [0.82, 0.9, 0.97]}},
    })
    s.close()
    return run_id


def test_summary_has_exact_keys_and_html_is_self_contained(ws):
    run_id = _fill(ws)
    page = write_report(ws, "synth")
    assert page == ws.reports_dir / "index.html"
    summary = json.loads((ws.reports_dir / "summary.json").read_text())
    for k in OVERALL_KEYS:
        assert k in summary, k
    assert summary["teacher_source"] == "simulated"
    assert summary["run_id"] == run_id
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        for k in ROUND_KEYS:
            assert k in r, k
    assert summary["rounds"][1]["teacher_fraction"] == 0.2
    assert summary["breakeven_items"] == pytest.approx(1234.5)
    text = page.read_text()
    assert "Simulated teacher" in text
    imgs = re.findall(r'src="([^"]+)"', text)
    assert len(imgs) >= 6 and all(i.startswith("data:image/png;base64,") for i in imgs)
    assert "http://" not in text and "https://" not in text  # nothing fetched from outside
    assert "12.5×" in text


def test_real_teacher_has_no_simulated_banner_and_infinite_breakeven_is_null(ws, tmp_path):
    _fill(ws, source="google/gemini-2.5-flash")
    s = build_summary(ws, "synth")
    s["breakeven_items"] = float("inf")
    page = render_report(s, tmp_path / "out")
    assert "Simulated teacher" not in page.read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["breakeven_items"] is None


def test_no_run_is_a_clear_error(ws):
    with pytest.raises(ReportError, match="flywheel run"):
        write_report(ws, "synth")


def test_html_escapes_values(ws, tmp_path):
    page = render_report({"dataset": "<script>x</script>", "rounds": [], "teacher_source": "<b>m</b>"}, tmp_path)
    t = page.read_text()
    assert "<script>x" not in t and "&lt;script&gt;" in t


def test_warnings_and_not_available_figures_are_loud(ws, tmp_path):
    """An infeasible goal or a figure that cannot be computed is shown with its reason and fix, not as '1' or '–'."""
    _fill(ws, source="http://127.0.0.1:9/v1")
    s = build_summary(ws, "synth")
    s["warnings"] = [{"code": "goal_infeasible", "message": "round 2: the cascade goal cannot be met (no threshold passes)",
                      "fix": "use a teacher budget, e.g. --max-teacher-fraction 0.1"}]
    s["cost_not_available"] = {"cost": "n/a: the teacher reports no token price and no latency was measured"}
    s["cost"], s["cost_per_1k_teacher_only"], s["cost_ratio"], s["breakeven_items"] = {}, None, None, None
    s["rounds"][-1]["threshold"] = 1.000001
    s["rounds"][-1]["calib_feasible"] = False
    page = render_report(s, tmp_path / "out").read_text()
    assert "--max-teacher-fraction 0.1" in page and "1 warning(s)" in page
    assert "n/a: the teacher reports no token price" in page
    assert "every item to the teacher (goal infeasible)" in page
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["warnings"][0]["fix"].startswith("use a teacher budget")
    assert "gold test" in page  # every accuracy says against what


def test_spend_to_parity_leads_the_report(ws, tmp_path):
    """Rounds stored before per-stage spend existed: parity is computed from them (round 2's cascade 85 % first
    reaches the teacher's 83 %); the spend is round 1's whole spend plus round 2's (here: all of it, labelling)."""
    _fill(ws)
    s = build_summary(ws, "synth")
    assert s["parity_round"] == 2
    assert s["spend_to_parity_calls"] == 100 + 200 and s["spend_to_parity_usd"] == pytest.approx(0.06)
    par = s["spend_to_parity"]
    assert par["teacher_accuracy"] == 0.83 and par["cascade_accuracy"] == 0.85 and "gold" in par["reference"]
    assert par["significant_round"] is None  # round 2's interval [0.80, 0.89] still holds 0.83
    assert [p["round"] for p in par["curve"]] == [1, 2]
    text = render_report(s, tmp_path / "out").read_text()
    assert text.index("Spend to parity") < text.index("<h2>Summary</h2>")
    assert "$0.06</b> and <b>300</b> teacher calls" in text and 'alt="cascade accuracy vs cumulative teacher spend"' in text


def test_served_traffic_has_its_section_with_sources_spend_and_what_waits(ws):
    """Three days of `flywheel serve` answers in the store: the report counts them by source, per day, with the
    teacher's spend on served inputs and the kept inputs not yet in the dataset."""
    from llm_flywheel.store.serving import CascadeLogRow

    _fill(ws)
    day0 = 1_790_000_000 - 1_790_000_000 % 86_400
    rows, kept = [], ws.root / "exports" / "served"
    for d, (n_student, n_teacher) in enumerate([(8, 2), (9, 1), (5, 5)]):
        for i in range(n_student + n_teacher):
            h = f"{d:02d}{i:062d}"
            src = "student" if i < n_student else "teacher"
            ref = None
            if src == "teacher":
                ref = f"exports/served/{h[:2]}/{h}.png"
            rows.append(CascadeLogRow(day0 + d * 86_400 + 60 * i, "synth", None, h, src, "bar", 0.9, "bar", 0.9,
                                      "bar" if src == "teacher" else None, "v2", 0.8, 3.0, None, "serve", ref))
    with ws.store() as s:
        s.log_cascade_rows(rows)
        for r in rows:
            if r.source == "teacher":
                s.save_served_teacher_answer(r.content_hash, "m", "pv", label="bar", confidence=0.9, tokens_in=300,
                                             tokens_out=20, cost_usd=0.001, latency_s=1.0)
                (ws.root / r.payload_ref).parent.mkdir(parents=True, exist_ok=True)
                (ws.root / r.payload_ref).write_bytes(b"x")
    assert kept.exists()
    page = write_report(ws, "synth")
    st = json.loads((ws.reports_dir / "summary.json").read_text())["served_traffic"]
    assert st["requests"] == 30 and st["by_source"] == {"student": 22, "teacher": 8}
    assert st["bucket_s"] == 86_400 and [d["requests"] for d in st["series"]] == [10, 10, 10]
    assert [d["deferred_fraction"] for d in st["series"]] == pytest.approx([0.2, 0.1, 0.5])
    assert st["teacher_answers"] == 8 and st["teacher_spend_usd"] == pytest.approx(0.008)
    assert st["waiting_for_add_served"] == 8
    text = page.read_text()
    assert "<h2>Served traffic</h2>" in text and "served answers by source" in text
    assert "flywheel data add-served synth" in text


def test_runs_of_the_dataset_side_by_side_once_there_are_two(ws):
    """A nightly wheel writes one report a night: the report shows every run, so the trend is visible."""
    first = _fill(ws)
    summary = json.loads((write_report(ws, "synth").parent / "summary.json").read_text())
    assert [r["run_id"] for r in summary["run_history"]] == [first]
    assert "Runs of this dataset" not in (ws.reports_dir / "index.html").read_text()  # one run: nothing to compare
    with ws.store() as s:
        s.finish_run(first, "done")
    second = _fill(ws)  # still running (killed, say): its finished rounds show
    page = write_report(ws, "synth")
    hist = json.loads((ws.reports_dir / "summary.json").read_text())["run_history"]
    assert [r["run_id"] for r in hist] == [first, second]
    assert hist[1]["rounds"] == 2 and hist[1]["teacher_calls"] == 300 and hist[1]["cascade_accuracy"] == 0.85
    assert abs(hist[1]["teacher_cost_usd"] - 0.06) < 1e-9 and hist[1]["model_version"] == "v2"
    text = page.read_text()
    assert "Runs of this dataset" in text and "accuracy and spend, run by run" in text
    assert f"<tr><td>{first}</td>" in text and f"<tr class=current><td>{second} (running)</td>" in text
    assert "$0.1200 in all" in text
