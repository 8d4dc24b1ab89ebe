"""Human review: export what the teacher was unsure about as a CSV, import the corrections as human labels.

Why a CSV: reviewers use a spreadsheet.  Each row shows the item (image path or text), every teacher pass, the
consensus and its quality, and an empty ``label_final`` to fill in.  On import, a human label outranks the
teacher everywhere (``Store.effective_labels``).  A file with any bad row (unknown item id, a label not in the
task) is rejected as a whole with the bad rows listed -- half-applied review files are how label stores rot.

The rest of human review lives beside this module and is re-exported here, so ``pipeline.review`` stays the one
import: the queue ordered by value (:mod:`.review_queue`), the Label Studio round trip (:mod:`.review_labelstudio`)
and the with/without measurement (:mod:`.review_effect`).
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.review_effect import EFFECT_REPORT, HumanLabelEffect, measure_human_label_effect
from llm_flywheel.pipeline.review_labelstudio import (PROJECT_REPORT, PullResult, PushResult, project_title,
                                                      pull_from_label_studio, push_to_label_studio)
from llm_flywheel.pipeline.review_queue import (LOW_CONFIDENCE_BELOW, STUDENT_SMOOTH, TEACHER_SMOOTH,
                                                ReviewCandidate, ReviewImportError, json_object, review_queue,
                                                review_value, teacher_name)
from llm_flywheel.store.base import Store
from llm_flywheel.store.review import REVIEW_EXPORT_SETS as WHICH
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.parsing import LabelMatcher

__all__ = ["EFFECT_REPORT", "LOW_CONFIDENCE_BELOW", "PROJECT_REPORT", "STUDENT_SMOOTH", "TEACHER_SMOOTH", "WHICH",
           "HumanLabelEffect", "PullResult", "PushResult", "ReviewCandidate", "ReviewImportError",
           "ReviewImportResult", "export_reviews", "import_reviews", "measure_human_label_effect", "project_title",
           "pull_from_label_studio", "push_to_label_studio", "review_queue", "review_value"]


@dataclass
class ReviewImportResult:
    applied: int = 0
    ignored_empty: int = 0
    changed_from_teacher: int = 0
    items: list[int] = field(default_factory=list)


def export_reviews(ws: Workspace, dataset: str, path: str | Path, *, which: str = "queue",
                   limit: int | None = None) -> int:
    """Write the review CSV; returns the number of rows.

    ``which``: ``queue`` -- unresolved items of the review queue (disagreements and other flagged items);
    ``disagreements`` -- every teacher label whose passes disagreed (resolved by a tie-break or not);
    ``all`` -- every teacher-labelled item (for an audit).
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    with ws.store(readonly=True) as store:
        Task.from_json(store.dataset_task_json(dataset))  # clear error for an unknown dataset
        rows = store.review_export_rows(dataset, which, limit=limit)
        values: dict[int, float] = {}
        if which == "queue" and rows:  # most valuable first, like `review push` (see review_queue)
            values = {c.item_id: c.value for c in review_queue(ws, dataset, low_confidence_below=None)}
            rows = sorted(rows, key=lambda r: (-values.get(r["id"], -1.0), r["id"]))[:limit]
        passes: dict[int, dict[int, tuple[str | None, float | None]]] = {}
        for r in rows:
            prov = json_object(r["prov"])
            if prov.get("model"):
                passes[r["id"]] = store.teacher_passes(r["h"], prov["model"], prov.get("prompt_version", ""))
    max_pass = max((p for pa in passes.values() for p in pa), default=-1)
    _write_csv(Path(path), _header(max_pass), (_csv_row(ws, r, passes.get(r["id"], {}), max_pass, values) for r in rows))
    return len(rows)


def _header(max_pass: int) -> list[str]:
    cols = ["item_id", "source_ref", "image_path", "text"]
    for p in range(max_pass + 1):
        cols += [f"pass_{p}_label", f"pass_{p}_confidence"]
    return cols + ["consensus", "status", "quality", "queue_reason", "review_value", "teacher", "label_final", "note"]


def _csv_row(ws: Workspace, r: dict[str, Any], pa: dict[int, tuple[str | None, float | None]], max_pass: int,
             values: dict[int, float]) -> list[Any]:
    rec: list[Any] = [r["id"], r["source_ref"], str(ws.blobs.local_path(r["blob"]) or r["blob"]) if r["blob"] else "", r["text"] or ""]
    for p in range(max_pass + 1):
        lab, conf = pa.get(p, (None, None))
        rec += [lab or "", "" if conf is None else f"{conf:.2f}"]
    return rec + [r["label"] or "", r["status"] or "", "" if r["quality"] is None else f"{r['quality']:.3f}",
                  r["reason"] or "", f"{values[r['id']]:.4f}" if r["id"] in values else "", teacher_name(r["prov"]),
                  "", ""]


def _write_csv(out: Path, header: list[str], rows: Any) -> None:
    """Write atomically: a reviewer never opens half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-review-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_reviews(ws: Workspace, path: str | Path, *, reviewer: str | None = None) -> ReviewImportResult:
    """Apply ``label_final`` edits as human labels (all or nothing).  Rows with an empty ``label_final`` are
    ignored.  Labels are matched case/space/plural-insensitively against the item's task labels."""
    p = Path(path)
    rows = _read_review_csv(p)
    result = ReviewImportResult()
    with ws.store() as store:
        todo = _checked_decisions(store, p, rows, result)
        result.changed_from_teacher = store.record_reviews(todo, reviewer=reviewer, file=p.name)
    result.items = [item_id for item_id, _, _ in todo]
    result.applied = len(todo)
    return result


def _read_review_csv(p: Path) -> list[dict[str, str]]:
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except FileNotFoundError:
        raise ReviewImportError(f"review file {p} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReviewImportError(f"{p} is not a readable CSV file ({type(e).__name__}: {e})") from None
    missing = {"item_id", "label_final"} - set(fields)
    if missing:
        raise ReviewImportError(f"{p}: missing column(s) {sorted(missing)}; export a file with `flywheel review export`")
    return [{(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None} for raw in rows]


def _checked_decisions(store: Store, p: Path, rows: list[dict[str, str]],
                       result: ReviewImportResult) -> list[tuple[int, str, str | None]]:
    """(item id, task label, note) for every filled-in row; :class:`ReviewImportError` listing every bad row."""
    ids: dict[int, int] = {}
    for line, r in enumerate(rows, start=2):
        try:
            ids[line] = int(r.get("item_id", ""))
        except ValueError:
            pass
    datasets = store.item_datasets(sorted(set(ids.values())))
    tasks: dict[str, tuple[Task, LabelMatcher]] = {}
    todo: list[tuple[int, str, str | None]] = []
    bad: list[tuple[int, str]] = []
    for line, r in enumerate(rows, start=2):
        final = r.get("label_final", "")
        if not final:
            result.ignored_empty += 1
            continue
        if line not in ids:
            bad.append((line, f"item_id {r.get('item_id')!r} is not a number"))
            continue
        item_id = ids[line]
        ds = datasets.get(item_id)
        if ds is None:
            bad.append((line, f"item {item_id} is not in this workspace"))
            continue
        if ds not in tasks:
            t = Task.from_json(store.dataset_task_json(ds))
            tasks[ds] = (t, LabelMatcher(t.labels, t.descriptions))
        task, matcher = tasks[ds]
        label = matcher.match(final)
        if label is None:
            bad.append((line, f"item {item_id}: label {final!r} is not one of {', '.join(task.labels)}"))
            continue
        todo.append((item_id, label, r.get("note") or None))
    if bad:
        listing = "\n".join(f"  line {ln}: {msg}" for ln, msg in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ReviewImportError(f"{p}: {len(bad)} bad row(s); nothing was applied:\n{listing}{more}", bad)
    return todo


class GoldReviewer:
    """A person simulated by the items' gold labels, for demos and benchmarks whose data has them -- as the simulated
    teacher stands in for an LLM.  Give it to ``run_wheel(reviewer=...)``; real people's labels arrive through
    ``flywheel review import`` or Label Studio instead.  Items without a gold label are left unreviewed."""

    name = "simulated reviewer (gold labels)"

    def __call__(self, items: list[Any]) -> dict[int, str]:
        return {it.id: it.gold_label for it in items if it.gold_label is not None}
