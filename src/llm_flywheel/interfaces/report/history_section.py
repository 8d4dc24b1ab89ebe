"""The report's "Runs of this dataset" section: one row per wheel run, oldest first.

Why: a wheel turned every night (``flywheel run --add-served``) writes a new report each time, and each report
showed only its own run -- so whether the cascade got better and cheaper night after night, the point of a
flywheel, was nowhere to be seen.  Built from the store only, like the rest of the report.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

from llm_flywheel.core.stats import pct
from llm_flywheel.store.models import wheel_report_key
from llm_flywheel.store.workspace import Workspace


def run_history(ws: Workspace, dataset: str) -> list[dict[str, Any]]:
    """summary.json's ``run_history``: each wheel run of ``dataset`` that finished a round, oldest first, with its
    last finished round's gold-test accuracies and stream teacher fraction, and what the run paid the teacher."""
    out = []
    with ws.store(readonly=True) as store:
        runs = store.wheel_runs(dataset)[::-1]
        for run in runs:
            rounds = [r for r in store.wheel_rounds(dataset, run["id"]) if r["finished"]]
            if not rounds:
                continue
            extra = store.latest_report("wheel", wheel_report_key(dataset, run["id"])) or {}
            last = rounds[-1]["metrics"]
            out.append({
                "run_id": run["id"], "started_at": run["started_at"], "status": run["status"], "rounds": len(rounds),
                "labels": last.get("labels_total"),
                "model_version": last.get("model_version") or rounds[-1]["model_version"],
                "teacher_calls": sum(int(r["metrics"].get("teacher_calls") or 0) for r in rounds),
                "teacher_cost_usd": sum(float(r["metrics"].get("teacher_cost_usd") or 0.0) for r in rounds),
                "served_added": (extra.get("served_import") or {}).get("added"),
                **{k: last.get(k) for k in ("student_accuracy", "student_accuracy_ci", "cascade_accuracy",
                                            "cascade_accuracy_ci", "teacher_fraction")}})
    return out


def _ci(v: Any, ci: Any) -> str:
    return pct(v) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if v is not None and ci else "")


def history_html(summary: Mapping[str, Any], image: str) -> str:
    """The section's HTML: only once there are two runs to compare; ``image``: the plot's ``<figure>`` (or "")."""
    rows = summary.get("run_history") or []
    if len(rows) < 2:
        return ""
    e = html.escape
    head = ("<tr><th>run</th><th>started</th><th>rounds</th><th>labels</th><th>served inputs added</th>"
            "<th>teacher calls</th><th>teacher $</th><th>student acc (gold test)</th><th>cascade acc (gold test)</th>"
            "<th>teacher frac (stream)</th><th>serving model</th></tr>")
    body = "".join(
        f"<tr{' class=current' if r['run_id'] == summary.get('run_id') else ''}><td>{r['run_id']}"
        f"{'' if r['status'] == 'done' else ' (' + e(str(r['status'])) + ')'}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['started_at'])) if r['started_at'] else '–'}</td>"
        f"<td>{r['rounds']}</td><td>{r['labels'] if r['labels'] is not None else '–'}</td>"
        f"<td>{r['served_added'] if r['served_added'] is not None else '–'}</td><td>{r['teacher_calls']:,}</td>"
        f"<td>{r['teacher_cost_usd']:.4f}</td><td>{_ci(r['student_accuracy'], r['student_accuracy_ci'])}</td>"
        f"<td>{_ci(r['cascade_accuracy'], r['cascade_accuracy_ci'])}</td><td>{pct(r['teacher_fraction'])}</td>"
        f"<td><code>{e(str(r['model_version'] or '–'))}</code></td></tr>" for r in rows)
    total = sum(r["teacher_cost_usd"] for r in rows)
    return "\n".join(p for p in (
        "<h2>Runs of this dataset</h2>",
        f"<p>{len(rows)} wheel runs, oldest first (this report's run highlighted); each run's last finished round, "
        f"measured on the gold test split. The teacher was paid ${total:.4f} in all (what each run bought; answers "
        "an earlier run or <code>flywheel serve</code> had bought are reused, not paid again).</p>",
        f"<table class='kv history'>{head}{body}</table>", image) if p)
