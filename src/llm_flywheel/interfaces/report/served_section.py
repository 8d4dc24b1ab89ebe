"""The report's "Served traffic" section: what ``flywheel serve`` answered, who answered it, and what it cost.

Why a section of its own: once the cascade is deployed, the questions are about production -- how much traffic,
how much of it went to the teacher, what that cost, and whether the deferred inputs have been brought back into
the wheel (``flywheel data add-served``).  Like every section it only reads the store: the service logs every
answer (``--log-sample-rate``) to ``cascade_log`` and stores every teacher answer with its cost.
"""

from __future__ import annotations

import html
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from llm_flywheel.pipeline.served_import import served_not_added
from llm_flywheel.store.workspace import Workspace

SOURCES = ("student", "teacher", "teacher_failed", "student_fallback", "deferred")
DAY, HOUR = 86_400, 3_600


def served_summary(ws: Workspace, dataset: str) -> dict[str, Any] | None:
    """summary.json's ``served_traffic`` (None before anything was served): totals by source, the deferred share,
    a per-day series (per hour while the traffic spans at most two days), the teacher's spend on served inputs and
    the kept inputs not yet added to the dataset."""
    with ws.store(readonly=True) as store:
        rows = store.served_traffic(dataset, DAY)
        if not rows:
            return None
        bucket = DAY if len({b for b, _, _ in rows}) > 2 else HOUR
        if bucket == HOUR:
            rows = store.served_traffic(dataset, HOUR)
        answers, usd = store.served_teacher_spend(dataset)
        waiting = served_not_added(store, dataset, ws.root)
    by_source: Counter[str] = Counter()
    per: dict[int, Counter[str]] = defaultdict(Counter)
    for b, src, n in rows:
        by_source[src] += n
        per[b][src] += n
    total = sum(by_source.values())
    series = [{"start": b, "requests": sum(c.values()), **{s: c.get(s, 0) for s in SOURCES},
               "deferred_fraction": 1 - c.get("student", 0) / sum(c.values())} for b, c in sorted(per.items())]
    return {"requests": total, "by_source": dict(by_source), "deferred_fraction": 1 - by_source["student"] / total,
            "bucket_s": bucket, "series": series, "teacher_answers": answers, "teacher_spend_usd": usd,
            "waiting_for_add_served": waiting}


def served_html(summary: Mapping[str, Any], image: str) -> str:
    """The section's HTML (empty when nothing was served); ``image``: the plot's ``<figure>`` (or "")."""
    st = summary.get("served_traffic")
    if not st:
        return ""
    e = html.escape
    ds = e(str(summary.get("dataset", "")))
    first, last = st["series"][0]["start"], st["series"][-1]["start"] + st["bucket_s"]
    fmt = "%Y-%m-%d" if st["bucket_s"] == DAY else "%Y-%m-%d %H:00"
    span = f"{time.strftime(fmt, time.gmtime(first))} – {time.strftime(fmt, time.gmtime(last))} UTC"
    rows = "".join(f"<tr><td>{e(s)}</td><td>{n:,}</td><td>{100 * n / st['requests']:.1f} %</td></tr>"
                   for s, n in sorted(st["by_source"].items(), key=lambda kv: -kv[1]))
    parts = ["<h2>Served traffic</h2>",
             f"<p>{st['requests']:,} answers logged by <code>flywheel serve</code> ({span}); "
             f"{100 * st['deferred_fraction']:.1f} % not answered by the student alone. The teacher was paid "
             f"${st['teacher_spend_usd']:.4f} for {st['teacher_answers']:,} served inputs (each bought once, stored "
             "before use).</p>",
             f"<table class='kv served'><tr><th>source</th><th>answers</th><th>share</th></tr>{rows}</table>", image]
    imp = summary.get("served_import")
    if imp:
        parts.append(f"<p>This run began by importing served traffic (<code>--add-served</code>): {imp['added']:,} "
                     f"input(s) added to train, {imp['labelled']:,} labelled with answers serving had bought "
                     f"({imp['teacher_calls']} teacher calls), {imp['already_present']:,} already in the dataset"
                     + (f", {imp['left_for_later']:,} left for a later run by the limit" if imp.get("left_for_later")
                        else "") + ".</p>")
    if st.get("waiting_for_add_served"):
        parts.append(f"<p class=note>{st['waiting_for_add_served']:,} kept input(s) are not in the dataset yet: "
                     f"<code>flywheel run {ds} --add-served all</code> (or <code>flywheel data add-served {ds} "
                     "--teacher SPEC</code>) adds them to the train split, labelled with the answers serving "
                     "bought.</p>")
    return "\n".join(p for p in parts if p)
