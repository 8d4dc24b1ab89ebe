"""The report's "Human review" section: how many human labels the wheel has, and what they changed.

Why a section of its own: people decide whether review is worth their time from two numbers -- how many labels they
gave and how much the student gained on test.  The gain is measured by ``flywheel review effect`` (two trainings,
with and without the human labels); the report only reads what the store holds, like every other section.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from typing import Any

from llm_flywheel.core.stats import pct
from llm_flywheel.pipeline.review_effect import EFFECT_REPORT
from llm_flywheel.store.workspace import Workspace


def human_review_summary(ws: Workspace, dataset: str) -> dict[str, Any]:
    """summary.json's ``human_review``: counts of human labels (by split, how many differ from the teacher), the open
    review queue, and the latest with/without measurement (None until ``flywheel review effect`` ran)."""
    store = ws.store(readonly=True)
    try:
        humans = store.human_labels(dataset)
        teacher = store.teacher_labels(sorted(humans))
        by_split = Counter(it.split for it in store.items(dataset, ids=sorted(humans))) if humans else Counter()
        open_queue = len(store.review_candidates(dataset))
        effect = store.latest_report(EFFECT_REPORT, dataset)
    finally:
        store.close()
    return {
        "n_human": len(humans),
        "by_split": {str(k): v for k, v in sorted(by_split.items(), key=lambda kv: str(kv[0]))},
        "changed_from_teacher": sum(1 for i, lab in humans.items() if teacher.get(i) != lab),
        "open_queue": open_queue,
        "effect": effect,
    }


def _pt(v: Any) -> str:
    return "–" if v is None else f"{100 * v:+.1f} pt"


def _ci(ci: Any) -> str:
    return f" <span class=ci>[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>" if ci else ""


def review_html(summary: Mapping[str, Any]) -> str:
    """The section's HTML (empty when the summary has no ``human_review``)."""
    hr = summary.get("human_review")
    if not hr:
        return ""
    e = html.escape
    ds = e(str(summary.get("dataset", "")))
    parts = ["<h2>Human review</h2>"]
    if not hr.get("n_human"):
        parts.append(f"<p>No human labels yet; {hr.get('open_queue', 0):,} item(s) wait in the review queue "
                     f"(most valuable first: <code>flywheel review push {ds} --label-studio URL</code>, or "
                     f"<code>flywheel review export {ds}</code> for a CSV).</p>")
        return "\n".join(parts)
    splits = ", ".join(f"{v:,} {e(k)}" for k, v in (hr.get("by_split") or {}).items())
    parts.append(f"<p>{hr['n_human']:,} human label(s) ({splits}); {hr.get('changed_from_teacher', 0):,} differ from "
                 f"the teacher's label. They outrank the teacher in every later training. "
                 f"{hr.get('open_queue', 0):,} item(s) still wait in the review queue.</p>")
    eff = hr.get("effect")
    if eff:
        parts.append(
            "<table class='kv human-review'>"
            f"<tr><td>student accuracy on test, with the human labels</td><td>{pct(eff.get('accuracy_with'))}"
            f"{_ci(eff.get('accuracy_with_ci'))}</td></tr>"
            f"<tr><td>student accuracy on test, teacher labels only</td><td>{pct(eff.get('accuracy_without'))}"
            f"{_ci(eff.get('accuracy_without_ci'))}</td></tr>"
            f"<tr><td>difference (paired, same test items)</td><td>{_pt(eff.get('difference'))}"
            f"{_ci(eff.get('difference_ci'))}</td></tr></table>"
            f"<p class=note>Measured by <code>flywheel review effect {ds}</code> with {eff.get('n_human', 0):,} human "
            f"label(s) ({eff.get('changed_from_teacher', 0):,} corrections, {eff.get('new_items', 0):,} items the "
            f"teacher left undecided): the same student kind and seed trained on {eff.get('n_labels_with', 0):,} vs "
            f"{eff.get('n_labels_without', 0):,} labels, measured on {eff.get('n_test', 0):,} gold test items.</p>")
    else:
        parts.append(f"<p class=note>What they changed is not measured yet: <code>flywheel review effect {ds}</code> "
                     "trains the student with and without them and measures both on test.</p>")
    return "\n".join(parts)
