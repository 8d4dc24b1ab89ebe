"""One self-contained HTML page from the summary dict and PNG bytes (base64-embedded, no external assets).

Why a plain template in code: the page must render offline and be diffable; no template engine is needed for a
table and a few figures.  Every value is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from typing import Any

from llm_flywheel.interfaces.report import history_section, plots, review_section, served_section

ROUND_COLUMNS: tuple[tuple[str, str], ...] = (
    ("round", "round"),
    ("model_version", "model version"),
    ("promoted", "new model promoted"),
    ("labels_total", "train labels"),
    ("teacher_calls", "teacher calls"),
    ("teacher_cost_usd", "teacher cost (USD)"),
    ("student_accuracy", "student acc. (gold test)"),
    ("cascade_accuracy", "cascade acc. (gold test)"),
    ("teacher_fraction", "teacher fraction (stream)"),
    ("threshold", "threshold"),
    ("audit_disagreement_rate", "audit disagreement"),
)


def fmt(v: Any, key: str = "") -> str:
    """Human formatting by key: accuracies/fractions as %, USD with 4 decimals, counts as integers."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and not math.isfinite(v):
        return "never" if "breakeven" in key else str(v)
    if isinstance(v, (int, float)):
        if "usd" in key or key.startswith("cost_per_1k"):
            return f"${v:,.4f}" if abs(v) < 100 else f"${v:,.2f}"
        if "accuracy" in key or "fraction" in key or "rate" in key:
            return f"{100 * v:.1f} %"
        if "breakeven" in key or "calls" in key or "labels" in key or isinstance(v, int):
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


def with_ci(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    ci = d.get(f"{key}_ci")
    s = fmt(v, key)
    if v is not None and ci:
        s += f" <span class=ci>[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>"
    return s


def _img(png: bytes | None, alt: str, labels: Any = None) -> str:
    """A plot with its caption; ``labels``: the classes on its axes, named in the caption when the plot could only
    number them (``plots.tick_labels``)."""
    if not png:
        return ""
    key = plots.tick_labels(labels)[1] if labels else None
    alt = f"{alt} (classes: {key})" if key else alt
    b64 = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.7em 1em;border-radius:4px;margin:1em 0}
.ci{color:#777;font-size:.85em} figure{display:inline-block;margin:.5em} img{max-width:100%}
.kv td:first-child{font-weight:600} .note{color:#555;font-size:.9em}
tr.current td{background:#eef6ee}
.warn{background:#fde2e1;border:1px solid #d9534f;padding:.7em 1em;border-radius:4px;margin:1em 0}
.warn li{margin:.3em 0} .headline{font-size:1.15em}
"""


def render_html(summary: Mapping[str, Any], images: Mapping[str, bytes | None]) -> str:
    """The report page.  ``images``: name -> PNG bytes (parity, rounds, cascade_curve, confusion, reliability, cost,
    teacher, teacher_confusion)."""
    ds = html.escape(str(summary.get("dataset", "")))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>llm-flywheel report – {ds}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>llm-flywheel report – {ds}</h1>"]
    for section in (_teacher_banner(summary), _warnings(summary), _parity(summary, images), _overall(summary),
                    _rounds(summary, images),
                    history_section.history_html(summary, _img(images.get("history"), "accuracy and spend, run by run")),
                    _cascade(summary, images), _cost(summary, images), _teacher(summary, images),
                    review_section.review_html(summary),  # human labels and what they changed
                    served_section.served_html(summary, _img(images.get("served"), "served answers by source"))):
        parts.append(section)
    parts.append(f"<p class=note>Generated {html.escape(str(summary.get('generated_at', '')))} by llm-flywheel; "
                 "the same numbers are in summary.json.</p></body></html>")
    return "\n".join(p for p in parts if p)


def _teacher_banner(summary: Mapping[str, Any]) -> str:
    e = html.escape
    src = summary.get("teacher_source")
    if src != "simulated":
        return f"<p>Teacher: <code>{e(str(src))}</code></p>"
    return ("<div class=banner><b>Simulated teacher.</b> The teacher in this run is the built-in simulator: it answers "
            "from the dataset's gold labels through an explicit error model (confusions between look-alike classes, "
            "over-confident confidence, malformed answers, 429s, priced tokens). Accuracies and costs show how the wheel "
            f"behaves, not how a particular LLM would label this data. Model id: "
            f"<code>{e(str(summary.get('teacher_model', '')))}</code>.</div>")


def _warnings(summary: Mapping[str, Any]) -> str:
    e = html.escape
    warnings = summary.get("warnings") or []
    out = ""
    if warnings:
        out = (f"<div class=warn><b>{len(warnings)} warning(s): read these before the numbers.</b><ul>"
               + "".join(f"<li>{e(str(w.get('message')))}<br><b>Fix:</b> {e(str(w.get('fix')))}</li>" for w in warnings)
               + "</ul></div>")
    if summary.get("goal"):
        out += f"<p>Cascade goal: {e(str(summary['goal']))}.</p>"
    return out


def _parity(summary: Mapping[str, Any], images: Mapping[str, bytes | None]) -> str:
    """The headline: teacher spend until the cascade first matched the teacher's single call."""
    e = html.escape
    par = summary.get("spend_to_parity") or {}
    if not par:
        return ""
    out = ["<h2>Spend to parity</h2>"]
    if par.get("round") is not None:
        ci = par.get("cascade_accuracy_ci")
        tci = par.get("teacher_accuracy_ci")
        out.append(
            f"<p class=headline><b>${par['spend_usd']:,.2f}</b> and <b>{par['calls']:,}</b> teacher calls until the "
            f"cascade first matched the teacher's single call (round {par['round']}): cascade "
            f"{100 * par['cascade_accuracy']:.1f} %" + (f" <span class=ci>[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>"
                                                        if ci else "")
            + f" vs teacher {100 * par['teacher_accuracy']:.1f} %"
            + (f" <span class=ci>[{100 * tci[0]:.1f}, {100 * tci[1]:.1f}]</span>" if tci else "") + ".</p>")
        sig = par.get("significant_round")
        out.append("<p class=note>" + (f"From round {sig} the cascade's whole 95 % interval lies above the teacher's "
                                       "accuracy." if sig else "The cascade's interval still overlaps the teacher's "
                                       "accuracy.") + "</p>")
    else:
        out.append(f"<p>{e(str(par.get('note') or 'not reached'))}</p>")
    out.append(f"<p class=note>Measured against {e(str(par.get('reference') or 'gold labels'))}. Spend counts every "
               "teacher call the wheel paid before the measurement (bootstrap, selected items, earlier rounds' stream "
               "deferrals and audits), never the calls made only to measure on test; nothing is chosen on test.</p>")
    out.append(_img(images.get("parity"), "cascade accuracy vs cumulative teacher spend"))
    return "".join(out)


OVERALL_ROWS = (
    ("teacher_accuracy", "teacher accuracy (single call, vs gold)"),
    ("gold_ceiling_accuracy", "gold-label ceiling (same student, same items, gold labels)"),
    ("final_student_accuracy", "final student accuracy (on gold test)"),
    ("final_cascade_accuracy", "final cascade accuracy (on gold test)"),
    ("final_teacher_fraction", "final teacher fraction (stream)"),
    ("cost_per_1k_teacher_only", "cost per 1,000 items, teacher everywhere"),
    ("cost_per_1k_cascade", "cost per 1,000 items, cascade"),
    ("cost_ratio", "cost ratio (teacher / cascade)"),
    ("cost_ratio_audited", "cost ratio with the audit re-asks paid"),
    ("cost_ratio_audited_at_upper", "... and at the teacher fraction's 95 % upper bound"),
    ("labelling_spend_usd", "teacher spend of the whole run (USD)"),
    ("breakeven_items", "breakeven (items served until labelling has paid off)"),
)


def _overall(summary: Mapping[str, Any]) -> str:
    e = html.escape
    parts = ["<h2>Summary</h2><table class=kv>"]
    na = summary.get("cost_not_available") or {}
    for k, name in OVERALL_ROWS:
        v = with_ci(summary, k) if f"{k}_ci" in summary else e(fmt(summary.get(k), k))
        if k.startswith("cost_ratio") and summary.get(k) is not None:
            v = f"{summary[k]:.1f}×"
        if summary.get(k) is None and (na.get(k) or na.get("cost")) and (k.startswith("cost") or k in (
                "breakeven_items", "labelling_spend_usd")):
            v = e(na.get(k) or na["cost"])
        parts.append(f"<tr><td>{e(name)}</td><td>{v}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def _rounds(summary: Mapping[str, Any], images: Mapping[str, bytes | None]) -> str:
    e = html.escape
    columns = ROUND_COLUMNS + ((("calib_reviewed", "calib items reviewed (parity)"),)
                               if any(r.get("calib_reviewed") for r in summary.get("rounds", [])) else ())
    parts = ["<h2>Rounds</h2><table><tr>" + "".join(f"<th>{e(n)}</th>" for _, n in columns) + "</tr>"]
    for r in summary.get("rounds", []):
        cells = []
        for k, _ in columns:
            if k == "threshold" and isinstance(r.get(k), (int, float)) and r[k] > 1:
                cells.append("above 1: every item to the teacher" + (" (goal infeasible)" if r.get("calib_feasible") is False else ""))
                continue
            cells.append(with_ci(r, k) if k in ("student_accuracy", "cascade_accuracy") else e(fmt(r.get(k), k)))
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    parts.append(
        "<p class=note>Accuracies are on the <b>test</b> split against gold labels with Wilson 95 % intervals; test is "
        "never used for a choice. Thresholds are chosen on the calibration split, promotion on the validation split "
        "(teacher labels), the teacher fraction is measured on that round's slice of the unseen stream. Teacher calls "
        "and cost per round include bootstrap labelling of the seed, validation and calibration sets in round 1, "
        "selected items, deferrals of the stream and audits (per stage in summary.json, <code>spend</code>); calls "
        "made only to measure the cascade on test are listed separately (<code>eval_teacher_calls</code>).</p>")
    parts.append(_img(images.get("rounds"), "accuracy and teacher fraction per round"))
    return "".join(parts)


def _cascade(summary: Mapping[str, Any], images: Mapping[str, bytes | None]) -> str:
    return "".join(["<h2>Cascade</h2>",
                    _img(images.get("cascade_curve"), "final model: accuracy / teacher fraction vs threshold (test, gold)"),
                    _per_class((summary.get("final") or {}).get("per_class") or []),
                    _img(images.get("confusion"), "final student: confusion matrix on test",
                         (summary.get("final") or {}).get("labels")),
                    _img(images.get("reliability"), "final student: reliability after temperature scaling (test)")])


def _per_class(rows: list[Mapping[str, Any]]) -> str:
    """Recall per class on gold test: what accuracy overall hides on a rare class."""
    if not rows:
        return ""

    def cell(r: Mapping[str, Any], who: str) -> str:
        v, ci = r.get(f"{who}_recall"), r.get(f"{who}_recall_ci")
        if v is None or not r.get("n"):
            return "–"
        return f"{100 * v:.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    e = html.escape
    parts = ["<table><tr><th>class</th><th>gold test items</th><th>student recall [95 % CI]</th>"
             "<th>cascade recall [95 % CI]</th></tr>"]
    parts += [f"<tr><td>{e(str(r['label']))}</td><td>{r['n']:,}</td><td>{cell(r, 'student')}</td>"
              f"<td>{cell(r, 'cascade')}</td></tr>" for r in rows]
    parts.append("</table><p>Recall: of a class's gold test items, the share answered with that class.</p>")
    return "".join(parts)


def _cost(summary: Mapping[str, Any], images: Mapping[str, bytes | None]) -> str:
    e = html.escape
    cost = summary.get("cost") or {}
    parts = ["<h2>Cost</h2>", _img(images.get("cost"), "cost per 1,000 items")]
    if cost:
        parts.append("<table class=kv>")
        for k, name in (
            ("teacher_cost_per_call", "teacher cost per call (USD; " + str(cost.get("teacher_price_note") or "measured mean") + ")"),
            ("student_items_per_s", "measured student throughput, end to end (items/s)"),
            ("cpu_usd_per_hour", "assumed price of the serving machine (USD/hour)"),
            ("teacher_fraction", "teacher fraction used (last round's stream)"),
            ("student_cost_per_1k", "student compute per 1,000 items (USD)"),
            ("saving_per_item", "saving per item (USD)"),
        ):
            v = cost.get(k)
            parts.append(f"<tr><td>{e(name)}</td><td>{e(fmt(v, k) if k != 'student_items_per_s' else f'{v:,.0f}' if v else '–')}</td></tr>")
        parts.append("</table>")
    elif (summary.get("cost_not_available") or {}).get("cost"):
        parts.append(f"<p class=warn>Cost: {e(str(summary['cost_not_available']['cost']))}</p>")
    return "".join(parts)


def _teacher(summary: Mapping[str, Any], images: Mapping[str, bytes | None]) -> str:
    e = html.escape
    tq = summary.get("teacher_quality") or {}
    parts = ["<h2>Teacher quality</h2>"]
    if tq:
        parts.append(
            f"<p>On {tq.get('n', 0):,} randomly drawn validation/calibration items with gold labels: single-call accuracy "
            f"{with_ci(summary, 'teacher_accuracy')}, {tq.get('passes', '?')}-pass consensus accuracy "
            f"{e(fmt(tq.get('consensus_accuracy'), 'accuracy'))}, pass agreement {e(fmt(tq.get('agreement_rate'), 'rate'))}.</p>"
        )
    parts.append(_img(images.get("teacher"), "teacher accuracy per class (gold)", tq.get("labels")))
    parts.append(_img(images.get("teacher_confusion"), "teacher confusion (gold)", tq.get("labels")))
    return "".join(parts)
