"""`flywheel report`: reports/summary.json (exact keys below) and a self-contained reports/index.html.

Why the summary is built from the store only: the report can be regenerated at any time, from any process, without
loading a model -- the wheel stores per-round metrics in ``rounds`` and the end-of-run measurements (teacher quality,
final confusion/reliability/curve, throughput, cost) as a ``wheel`` report.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from llm_flywheel.pipeline.wheel_finish import parity
from llm_flywheel.store.models import wheel_report_key
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.interfaces.report import history_section, review_section, served_section

ROUND_KEYS = ("round", "teacher_calls", "teacher_cost_usd", "student_accuracy", "cascade_accuracy", "teacher_fraction", "model_version")
OVERALL_KEYS = ("teacher_accuracy", "gold_ceiling_accuracy", "teacher_source", "cost_per_1k_teacher_only", "cost_per_1k_cascade", "breakeven_items")


class ReportError(RuntimeError):
    """Nothing to report (no wheel run for this dataset yet)."""


def latest_run_id(ws: Workspace, dataset: str) -> int | None:
    with ws.store(readonly=True) as store:
        return store.latest_wheel_run_id(dataset)


def build_summary(ws: Workspace, dataset: str, *, run_id: int | None = None) -> dict[str, Any]:
    """The summary dict of a wheel run (default: the latest for ``dataset``)."""
    run_id = run_id if run_id is not None else latest_run_id(ws, dataset)
    if run_id is None:
        raise ReportError(f"no wheel run for dataset {dataset!r} in {ws.root}; run `flywheel run {dataset}` first")
    with ws.store(readonly=True) as store:
        rows = store.wheel_rounds(dataset, run_id)
        extra = store.latest_report("wheel", wheel_report_key(dataset, run_id)) or {}
        status = store.run_status(run_id)
    rounds = []
    for r in rows:
        m = r["metrics"]
        if not r["finished"]:
            continue  # an unfinished round (killed run) has no final numbers yet
        m.setdefault("round", r["round"])
        m.setdefault("model_version", r["model_version"])
        rounds.append({k: m.get(k) for k in ROUND_KEYS} | {k: v for k, v in m.items() if k not in ROUND_KEYS})
    cost = extra.get("cost") or {}
    last = rounds[-1] if rounds else {}
    tq = extra.get("teacher_quality") or {}
    # the headline: what the teacher was paid until the cascade first matched its single call (older runs: computed)
    par = extra.get("parity") or (parity(rounds, tq.get("accuracy"), tq.get("accuracy_ci")) if rounds else {})
    summary: dict[str, Any] = {
        "dataset": dataset,
        "run_id": run_id,
        "run_status": status,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "spend_to_parity_usd": par.get("spend_usd"),
        "spend_to_parity_calls": par.get("calls"),
        "parity_round": par.get("round"),
        "spend_to_parity": par,
        "rounds": rounds,
        "teacher_accuracy": (extra.get("teacher_quality") or {}).get("accuracy"),
        "teacher_accuracy_ci": (extra.get("teacher_quality") or {}).get("accuracy_ci"),
        "gold_ceiling_accuracy": extra.get("gold_ceiling_accuracy"),
        "gold_ceiling_accuracy_ci": extra.get("gold_ceiling_accuracy_ci"),
        "teacher_source": extra.get("teacher_source"),
        "teacher_model": extra.get("teacher_model"),
        "cost_per_1k_teacher_only": cost.get("cost_per_1k_teacher_only"),
        "cost_per_1k_cascade": cost.get("cost_per_1k_cascade"),
        "breakeven_items": cost.get("breakeven_items"),
        "cost_ratio": cost.get("cost_ratio"),
        "cost_ratio_audited": cost.get("cost_ratio_audited"),  # the audit re-asks paid too
        "cost_ratio_audited_at_upper": cost.get("cost_ratio_audited_at_upper"),  # ... at the fraction's 95 % bound
        "labelling_spend_usd": cost.get("labelling_spend_usd"),
        "final_student_accuracy": last.get("student_accuracy"),
        "final_student_accuracy_ci": last.get("student_accuracy_ci"),
        "final_cascade_accuracy": last.get("cascade_accuracy"),
        "final_cascade_accuracy_ci": last.get("cascade_accuracy_ci"),
        "final_teacher_fraction": last.get("teacher_fraction"),
        "cost": cost,
        # figures that could not be computed, each with its reason ("n/a: ..."), and the loud warnings of the run,
        # each with the flag that fixes it -- the terminal summary and index.html show both
        "cost_not_available": extra.get("cost_na") or {},
        "teacher_price_note": extra.get("teacher_price_note"),
        "warnings": extra.get("warnings") or [],
        "sizes": extra.get("sizes"),
        "goal": _goal(extra.get("config") or {}),
        "teacher_quality": extra.get("teacher_quality"),
        "final": extra.get("final"),
        "throughput": extra.get("throughput"),
        "human_review": review_section.human_review_summary(ws, dataset),  # human labels and what they changed
        "served_traffic": served_section.served_summary(ws, dataset),  # what `flywheel serve` answered, and its cost
        "served_import": extra.get("served_import"),  # what `flywheel run --add-served` imported before this run
        "run_history": history_section.run_history(ws, dataset),  # every run of the dataset, oldest first
    }
    return summary


def _goal(config: dict[str, Any]) -> str | None:
    """The cascade goal in words."""
    ta, mf = config.get("target_accuracy"), config.get("max_teacher_fraction")
    parts = []
    if mf is not None:
        parts.append(f"at most {100 * mf:g} % of items to the teacher")
    if ta is not None:
        parts.append(f"accuracy >= {100 * ta:g} % (agreement with teacher labels) on items the student answers")
    if config.get("teacher_parity"):
        judge = ("a person's label on each calib item where the student and the teacher's first answer disagree"
                 if config.get("parity_reference") == "review" else "the teacher's independent pass 1")
        parts.append("cascade accuracy no lower than the teacher's single call (on calib, with probability "
                     f">= {100 * (1 - (config.get('delta') or 0.1)):g} %, judged by {judge})")
    return " and ".join(parts) or None


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def render_report(summary: dict[str, Any], out_dir: Path) -> Path:
    """Write summary.json and index.html for ``summary`` into ``out_dir``; returns the HTML path."""
    from llm_flywheel.interfaces.report import plots
    from llm_flywheel.interfaces.report.html import render_html

    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes | None] = {}
    rounds = summary.get("rounds") or []
    if rounds:
        images["rounds"] = plots.rounds_plot(rounds, summary.get("teacher_accuracy"))
    par = summary.get("spend_to_parity") or {}
    if any(p.get("accuracy") is not None for p in par.get("curve") or []):
        images["parity"] = plots.parity_plot(par["curve"], par.get("teacher_accuracy"), par.get("teacher_accuracy_ci"),
                                             par.get("round"))
    final = summary.get("final") or {}
    labels = final.get("labels")
    if final.get("curve"):
        images["cascade_curve"] = plots.cascade_curve_plot(final["curve"], final.get("threshold"))
    if final.get("confusion") and labels:
        images["confusion"] = plots.confusion_plot(final["confusion"], labels, f"student {final.get('version', '')} on test")
    if final.get("reliability"):
        images["reliability"] = plots.reliability_plot(final["reliability"], final.get("ece"), "student on test")
    cost = summary.get("cost") or {}
    if cost.get("cost_per_1k_teacher_only") is not None and cost.get("cost_per_1k_cascade") is not None:
        images["cost"] = plots.cost_plot(cost["cost_per_1k_teacher_only"], cost["cost_per_1k_cascade"], cost.get("student_cost_per_1k"),
                                         cost.get("cost_ratio"))
    tq = summary.get("teacher_quality") or {}
    if tq.get("per_class") and tq.get("labels"):
        images["teacher"] = plots.per_class_plot(tq["labels"], [tq["per_class"].get(lab) for lab in tq["labels"]], "teacher accuracy per class")
    if tq.get("confusion") and tq.get("labels"):
        images["teacher_confusion"] = plots.confusion_plot(tq["confusion"], tq["labels"], "teacher (single call) vs gold")
    if len(summary.get("run_history") or []) >= 2:
        images["history"] = plots.history_plot(summary["run_history"])
    st = summary.get("served_traffic") or {}
    if st.get("series"):
        images["served"] = plots.served_plot(st["series"], st["bucket_s"], served_section.SOURCES)
    safe = _json_safe(summary)
    (out_dir / "summary.json").write_text(json.dumps(safe, indent=2, default=str), encoding="utf-8")
    page = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(render_html(safe, images), encoding="utf-8")
    tmp.replace(page)
    return page


def write_report(ws: Workspace, dataset: str, *, run_id: int | None = None, out_dir: Path | None = None) -> Path:
    """Build the summary from the store and write ``reports/summary.json`` + ``reports/index.html``."""
    summary = build_summary(ws, dataset, run_id=run_id)
    return render_report(summary, out_dir or ws.reports_dir)


__all__ = ["OVERALL_KEYS", "ROUND_KEYS", "ReportError", "build_summary", "render_report", "wheel_report_key",
           "write_report"]
