"""Human review: export what the teacher was unsure about as a CSV, import the corrections as human labels.

Why a CSV: reviewers use a spreadsheet.  Each row shows the item (image path or text), every teacher pass, the
consensus and its quality, and an empty ``label_final`` to fill in.  On import, a human label outranks the
teacher everywhere (``Store.effective_labels``).  A file with any bad row (unknown item id, a label not in the
task) is rejected as a whole with the bad rows listed -- half-applied review files are how label stores rot.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .task import Task
from .teachers.parsing import LabelMatcher
from .workspace import Workspace

WHICH = ("queue", "disagreements", "all")


class ReviewImportError(ValueError):
    """A review file that cannot be applied; ``bad_rows`` lists (line number, problem)."""

    def __init__(self, message: str, bad_rows: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows or []


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
    store = ws.store(readonly=True)
    try:
        Task.from_json(store.dataset_task_json(dataset))  # clear error for an unknown dataset
        base = ("SELECT i.id AS id, i.source_ref AS source_ref, i.content_hash AS h, i.blob_path AS blob, "
                "i.text AS text, l.label AS label, l.quality AS quality, l.status AS status, l.provenance AS prov, "
                "q.reason AS reason, q.score AS score FROM items i "
                "LEFT JOIN labels l ON l.item_id=i.id AND l.source='teacher' "
                "LEFT JOIN review_queue q ON q.item_id=i.id WHERE i.dataset=?")
        if which == "queue":
            sql = base + " AND q.item_id IS NOT NULL AND q.resolved_at IS NULL ORDER BY q.score DESC, i.id"
        elif which == "disagreements":
            sql = base + " AND l.status IN ('disagreed','tie_broken') ORDER BY l.status, i.id"
        else:
            sql = base + " AND l.item_id IS NOT NULL ORDER BY i.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = store.query(sql, (dataset,))
        passes: dict[int, dict[int, tuple[str | None, float | None]]] = {}
        max_pass = -1
        for r in rows:
            prov = _json(r["prov"])
            if not prov.get("model"):
                continue
            ans = store.query(
                "SELECT pass_index, label, confidence, error_kind FROM teacher_answers WHERE ok=1 AND content_hash=? "
                "AND model=? AND prompt_version=? ORDER BY pass_index",
                (r["h"], prov["model"], prov.get("prompt_version", "")))
            passes[r["id"]] = {a["pass_index"]: (a["label"] or (f"<{a['error_kind']}>" if a["error_kind"] else None),
                                                 a["confidence"]) for a in ans}
            max_pass = max([max_pass, *passes[r["id"]]])
    finally:
        store.close()
    cols = ["item_id", "source_ref", "image_path", "text"]
    for p in range(max_pass + 1):
        cols += [f"pass_{p}_label", f"pass_{p}_confidence"]
    cols += ["consensus", "status", "quality", "queue_reason", "teacher", "label_final", "note"]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-review-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in rows:
                rec: list[Any] = [r["id"], r["source_ref"], str(ws.abspath(r["blob"])) if r["blob"] else "", r["text"] or ""]
                pa = passes.get(r["id"], {})
                for p in range(max_pass + 1):
                    lab, conf = pa.get(p, (None, None))
                    rec += [lab or "", "" if conf is None else f"{conf:.2f}"]
                rec += [r["label"] or "", r["status"] or "", "" if r["quality"] is None else f"{r['quality']:.3f}",
                        r["reason"] or "", _teacher_name(r["prov"]), "", ""]
                w.writerow(rec)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rows)


def import_reviews(ws: Workspace, path: str | Path, *, reviewer: str | None = None) -> ReviewImportResult:
    """Apply ``label_final`` edits as human labels (all or nothing).  Rows with an empty ``label_final`` are
    ignored.  Labels are matched case/space/plural-insensitively against the item's task labels."""
    p = Path(path)
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
    result = ReviewImportResult()
    todo: list[tuple[int, str, str | None]] = []
    bad: list[tuple[int, str]] = []
    store = ws.store()
    try:
        tasks: dict[str, tuple[Task, LabelMatcher]] = {}
        for line, raw in enumerate(rows, start=2):
            r = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            final = r.get("label_final", "")
            if not final:
                result.ignored_empty += 1
                continue
            try:
                item_id = int(r.get("item_id", ""))
            except ValueError:
                bad.append((line, f"item_id {r.get('item_id')!r} is not a number"))
                continue
            row = store.conn.execute("SELECT dataset FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None:
                bad.append((line, f"item {item_id} is not in this workspace"))
                continue
            ds = row["dataset"]
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
        now = time.time()
        with store.transaction() as c:
            for item_id, label, note in todo:
                cur = c.execute("INSERT INTO reviews(item_id, label, reviewer, note, created_at) VALUES(?,?,?,?,?)",
                                (item_id, label, reviewer, note, now))
                teacher = c.execute("SELECT label FROM labels WHERE item_id=? AND source='teacher'", (item_id,)).fetchone()
                if teacher is None or teacher["label"] != label:
                    result.changed_from_teacher += 1
                prov = {"reviewer": reviewer, "review_id": cur.lastrowid, "file": p.name}
                c.execute(
                    "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                    "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                    "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                    "provenance=excluded.provenance, updated_at=excluded.updated_at",
                    (item_id, "human", label, 1.0, json.dumps({label: 1.0}), "human", json.dumps(prov), now))
                c.execute("UPDATE review_queue SET resolved_at=? WHERE item_id=? AND resolved_at IS NULL", (now, item_id))
                result.items.append(item_id)
        result.applied = len(todo)
    finally:
        store.close()
    return result


def _json(s: str | None) -> dict[str, Any]:
    try:
        v = json.loads(s) if s else {}
        return v if isinstance(v, dict) else {}
    except json.JSONDecodeError:
        return {}


def _teacher_name(prov: str | None) -> str:
    model = _json(prov).get("model") or ""
    return f"{model} (SIMULATED)" if model.startswith("simulated/") else model
