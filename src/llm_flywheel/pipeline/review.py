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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.core.task import Task
from llm_flywheel.teachers.parsing import LabelMatcher
from llm_flywheel.store.workspace import Workspace

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
        if limit is not None and which != "queue":
            sql += f" LIMIT {int(limit)}"
        rows = store.query(sql, (dataset,))
        values: dict[int, float] = {}
        if which == "queue" and rows:  # most valuable first, like `review push` (see review_queue)
            values = {c.item_id: c.value for c in review_queue(ws, dataset, low_confidence_below=None)}
            rows = sorted(rows, key=lambda r: (-values.get(r["id"], -1.0), r["id"]))[:limit]
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
    cols += ["consensus", "status", "quality", "queue_reason", "review_value", "teacher", "label_final", "note"]
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
                        r["reason"] or "", f"{values[r['id']]:.4f}" if r["id"] in values else "",
                        _teacher_name(r["prov"]), "", ""]
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


# -- review where it pays: the queue ordered by expected value ----------------------------------------------

LOW_CONFIDENCE_BELOW = 0.5  # deferred stream items whose teacher label quality is below this join the queue
TEACHER_SMOOTH = 0.2  # weight of a uniform prior mixed into the teacher's pass votes (two passes are weak evidence)
STUDENT_SMOOTH = 0.1


@dataclass
class ReviewCandidate:
    """One item a person should look at, with why and what a decision is worth."""

    item_id: int
    reason: str
    teacher_label: str | None  # the stored consensus (None: the passes disagreed and nothing was decided)
    teacher_votes: dict[str, float]
    teacher_quality: float | None
    teacher_model: str
    student_probs: dict[str, float] | None
    p_wrong: float  # probability that the label the student trains on now is wrong
    value: float  # expected change of the item's training target if a person labels it (0..1)
    row: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def student_label(self) -> str | None:
        return max(self.student_probs, key=self.student_probs.__getitem__) if self.student_probs else None


def review_value(teacher_soft: np.ndarray, teacher_weight: float, teacher_label: int | None,
                 student_probs: np.ndarray | None) -> tuple[float, float]:
    """(P(label wrong), expected value) of asking a person about one item.

    The item's true class is estimated by combining the teacher's pass votes and the student's probabilities as
    independent evidence (a product, each mixed with a uniform prior).  How much a human label ``c`` would move the
    student is the change of the item's loss gradient (w.r.t. the logits): today ``w * (p - soft)`` (weight = label
    quality, soft = the pass votes; nothing when the passes disagreed and no label was kept), after the review
    ``p - e_c`` (one-hot, weight 1).  The value is the expected size of that change over ``c``,
    ``E_c[ 1/2 * |(p - e_c) - w * (p - soft)|_1 ]``: near 1 for a label that is probably wrong and pulls the student
    the wrong way, near 0 for a label everyone agrees with or a new item the student already gets right.
    """
    k = len(teacher_soft)
    soft = np.asarray(teacher_soft, dtype=np.float64)
    soft = soft / soft.sum() if soft.sum() > 0 else np.full(k, 1.0 / k)
    p = np.full(k, 1.0 / k) if student_probs is None else np.asarray(student_probs, dtype=np.float64)
    p = p / p.sum()
    post = ((1 - TEACHER_SMOOTH) * soft + TEACHER_SMOOTH / k) * ((1 - STUDENT_SMOOTH) * p + STUDENT_SMOOTH / k)
    post = post / post.sum()
    now = teacher_weight * (p - soft) if teacher_label is not None else np.zeros(k)
    moves = np.array([0.5 * np.abs((p - np.eye(k)[c]) - now).sum() for c in range(k)])
    p_wrong = 1.0 - float(post[teacher_label]) if teacher_label is not None else 1.0
    return p_wrong, float(post @ moves)


def review_queue(ws: Workspace, dataset: str, *, low_confidence_below: float | None = LOW_CONFIDENCE_BELOW,
                 student: Any | None = None, use_student: bool = True) -> list[ReviewCandidate]:
    """The review queue of ``dataset``, most valuable first (see :func:`review_value`).

    Members: unresolved queue entries (teacher pass disagreements, cleanlab label issues, audited student/teacher
    disagreements) and deferred stream items whose teacher label quality is below ``low_confidence_below``.
    ``student``: a model with ``predict_proba``; by default the dataset's latest promoted model, if any (its
    probabilities on items it trained on are optimistic, so it mostly breaks ties between equally weak labels).
    """
    from llm_flywheel.pipeline.training import QUALITY_FLOOR

    store = ws.store(readonly=True)
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        rows = store.review_candidates(dataset, low_confidence_below=low_confidence_below)
        items = {it.id: it for it in store.items(dataset, ids=[r["id"] for r in rows])} if rows else {}
    finally:
        store.close()
    if not rows:
        return []
    if student is None and use_student:
        student = _latest_student(ws, dataset)
    probs = None
    if student is not None:
        from llm_flywheel.students.base import predict_in_batches

        p = predict_in_batches(student, [items[r["id"]] for r in rows])
        order = [list(student.labels).index(lab) for lab in task.labels]
        probs = p[:, order]
    out = []
    for i, r in enumerate(rows):
        votes = {k: float(v) for k, v in _json(r["soft_json"]).items() if k in task.labels}
        soft = np.array([votes.get(lab, 0.0) for lab in task.labels])
        t = task.labels.index(r["teacher_label"]) if r["teacher_label"] in task.labels else None
        w = float(np.clip(r["quality"], QUALITY_FLOOR, 1.0)) if r["quality"] is not None else 1.0
        sp = probs[i] if probs is not None else None
        p_wrong, value = review_value(soft, w, t, sp)
        out.append(ReviewCandidate(
            item_id=r["id"], reason=r["reason"], teacher_label=r["teacher_label"], teacher_votes=votes,
            teacher_quality=r["quality"], teacher_model=_teacher_name(r["provenance"]),
            student_probs=dict(zip(task.labels, map(float, sp))) if sp is not None else None,
            p_wrong=p_wrong, value=value, row=r))
    out.sort(key=lambda c: (-c.value, c.item_id))
    return out


def _latest_student(ws: Workspace, dataset: str) -> Any | None:
    from llm_flywheel.pipeline.training import load_student

    version = _student_version(ws, dataset)
    if version is None:
        return None
    student = load_student(ws, version)
    student.version = version  # type: ignore[attr-defined]
    return student


# -- Label Studio round trip ----------------------------------------------------------------------------------

PROJECT_REPORT = "labelstudio_project"


@dataclass
class PushResult:
    url: str
    project_id: int
    project_created: bool
    candidates: int
    uploaded: int
    already_there: int


@dataclass
class PullResult:
    project_id: int
    annotated_tasks: int
    recorded: int = 0  # new annotations (or edits) written to the review history
    applied: int = 0  # items whose human label was set or changed by this pull
    already_pulled: int = 0
    older: int = 0  # recorded in history, a newer decision of the same item stays
    changed_from_teacher: int = 0
    skipped: int = 0  # cancelled / empty annotations
    items: list[int] = field(default_factory=list)


def project_title(dataset: str) -> str:
    return f"llm-flywheel review: {dataset}"


def _data_url(ws: Workspace, blob: str) -> str:
    """Images travel inside the task as ``data:`` URLs: Label Studio needs no access to this machine's disk."""
    import base64
    import mimetypes

    path = ws.abspath(blob)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _ls_task(ws: Workspace, dataset: str, task: Task, c: ReviewCandidate, student_version: str | None) -> dict[str, Any]:
    from llm_flywheel.interfaces.labelstudio import choice_result, object_name

    r = c.row
    if task.modality == "image":
        content = _data_url(ws, r["blob_path"])
    elif task.modality == "text":
        content = r["text"] or ""
    else:
        feats = json.loads(r["features_json"] or "[]")
        content = ", ".join(f"f{i}={v:.4g}" for i, v in enumerate(feats))
    votes = ", ".join(f"{k} {v:.0%}" for k, v in sorted(c.teacher_votes.items(), key=lambda kv: -kv[1]))
    why = (f"in the queue for: {c.reason}; teacher passes: {votes or 'none'}"
           + (f"; student: {c.student_label} {c.student_probs[c.student_label]:.0%}" if c.student_label else "")
           + f"; P(label wrong) {c.p_wrong:.0%}, review value {c.value:.2f}")
    data = {object_name(task): content, "why": why, "item_id": c.item_id, "dataset": dataset,
            "source_ref": r["source_ref"], "content_hash": r["content_hash"], "split": r["split"], "reason": c.reason,
            "teacher_model": c.teacher_model, "teacher_label": c.teacher_label, "teacher_status": r["status"],
            "teacher_quality": c.teacher_quality, "student_model": student_version, "student_label": c.student_label,
            "p_wrong": round(c.p_wrong, 4), "review_value": round(c.value, 4)}
    preds = []
    top = c.teacher_label or (max(c.teacher_votes, key=c.teacher_votes.__getitem__) if c.teacher_votes else None)
    if top:
        preds.append({"model_version": f"teacher {c.teacher_model}"[:200], "score": float(c.teacher_votes.get(top, 0.0)),
                      "result": choice_result(task, top)})
    if c.student_label:
        preds.append({"model_version": f"student {student_version}"[:200], "score": c.student_probs[c.student_label],
                      "result": choice_result(task, c.student_label)})
    return {"data": data, "predictions": preds}


def push_to_label_studio(ws: Workspace, dataset: str, url: str, token: str, *, limit: int | None = None,
                         low_confidence_below: float | None = LOW_CONFIDENCE_BELOW, project_id: int | None = None,
                         ls: Any | None = None) -> PushResult:
    """Upload the review queue (most valuable first) as tasks of a Label Studio project made for this dataset.

    The project is reused when it exists (the one recorded by the last push to this URL, else the one titled
    ``llm-flywheel review: DATASET``); items already in it are not uploaded again.  The teacher's and the student's
    answers go in as predictions (pre-labels a person confirms or changes), the item's provenance in task data.
    """
    from llm_flywheel.interfaces.labelstudio import LabelStudio, label_config

    store = ws.store(readonly=True)
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        known = store.latest_report(PROJECT_REPORT, dataset) or {}
    finally:
        store.close()
    client = ls or LabelStudio(url, token)
    try:
        client.whoami()
        created = False
        if project_id is None and known.get("url") == client.url and client.project(known["project_id"]):
            project_id = int(known["project_id"])
        if project_id is None:
            title = project_title(dataset)
            found = [p for p in client.projects() if p.get("title") == title]
            if found:
                project_id = int(found[0]["id"])
            else:
                desc = (f"Review queue of llm-flywheel dataset {dataset!r} ({task.modality}, {task.num_labels} labels). "
                        "Pre-labels: the teacher's and the student's answers. Pull with `flywheel review pull`.")
                project_id = int(client.create_project(title, label_config(task), desc)["id"])
                created = True
        elif client.project(project_id) is None:
            raise ValueError(f"Label Studio project {project_id} does not exist at {client.url}")
        there = {int(t["data"]["item_id"]) for t in client.export(project_id, all_tasks=True)
                 if isinstance(t.get("data"), dict) and t["data"].get("item_id") is not None}
        queue = review_queue(ws, dataset, low_confidence_below=low_confidence_below)
        student_version = None
        if queue and queue[0].student_probs is not None:
            student_version = _student_version(ws, dataset)
        todo = [c for c in queue if c.item_id not in there]
        if limit is not None:
            todo = todo[: max(0, int(limit))]
        n = client.import_tasks(project_id, (_ls_task(ws, dataset, task, c, student_version) for c in todo)) if todo else 0
        store = ws.store()
        try:
            store.add_report(PROJECT_REPORT, dataset, {"url": client.url, "project_id": project_id,
                                                       "title": project_title(dataset), "pushed": n})
        finally:
            store.close()
        return PushResult(url=client.url, project_id=project_id, project_created=created, candidates=len(queue),
                          uploaded=n, already_there=len(queue) - len([c for c in queue if c.item_id not in there]))
    finally:
        if ls is None:
            client.close()


def _student_version(ws: Workspace, dataset: str) -> str | None:
    from llm_flywheel.students.base import StudentError
    from llm_flywheel.pipeline.training import latest_version

    store = ws.store(readonly=True)
    try:
        return latest_version(store, dataset)
    except StudentError:
        return None
    finally:
        store.close()


def pull_from_label_studio(ws: Workspace, dataset: str, token: str, *, url: str | None = None,
                           project_id: int | None = None, ls: Any | None = None) -> PullResult:
    """Store the completed annotations of the dataset's Label Studio project as human labels (they outrank the
    teacher).  Idempotent: every annotation (and every later edit of it) is recorded once in the review history;
    an item annotated more than once is labelled by its newest annotation.  All or nothing, like the CSV import:
    an annotation whose label is not one of the task's labels rejects the pull with the tasks listed."""
    from datetime import datetime

    from llm_flywheel.interfaces.labelstudio import LabelStudio, chosen_label

    store = ws.store(readonly=True)
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        known = store.latest_report(PROJECT_REPORT, dataset) or {}
        item_ids = {it.id for it in store.items(dataset)}
    finally:
        store.close()
    url = url or known.get("url")
    if not url:
        raise ValueError(f"no Label Studio project is known for {dataset!r}; push first with "
                         f"`flywheel review push {dataset} --label-studio URL` (or give --label-studio URL)")
    client = ls or LabelStudio(url, token)
    try:
        if project_id is None:
            if known.get("url") == client.url and known.get("project_id") is not None:
                project_id = int(known["project_id"])
            else:
                found = [p for p in client.projects() if p.get("title") == project_title(dataset)]
                if not found:
                    raise ValueError(f"no project titled {project_title(dataset)!r} at {client.url}; push first")
                project_id = int(found[0]["id"])
        exported = client.export(project_id)
        users = _user_emails(client)
    finally:
        if ls is None:
            client.close()
    matcher = LabelMatcher(task.labels, task.descriptions)
    decisions: list[tuple[float, int, str, str | None, str, dict[str, Any]]] = []
    bad: list[str] = []
    res = PullResult(project_id=project_id, annotated_tasks=len(exported))
    for t in exported:
        data = t.get("data") or {}
        iid = data.get("item_id")
        if data.get("dataset") != dataset or not isinstance(iid, int) or iid not in item_ids:
            bad.append(f"task {t.get('id')}: item {iid!r} of dataset {data.get('dataset')!r} is not in this workspace")
            continue
        for a in t.get("annotations") or []:
            raw = chosen_label(a.get("result"))
            if a.get("was_cancelled") or raw is None:
                res.skipped += 1
                continue
            label = matcher.match(raw)
            if label is None:
                bad.append(f"task {t.get('id')} annotation {a.get('id')}: {raw!r} is not one of {', '.join(task.labels)}")
                continue
            stamp = a.get("updated_at") or a.get("created_at")
            at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
            who = a.get("completed_by")
            who_id = who.get("id") if isinstance(who, dict) else who
            reviewer = (who.get("email") if isinstance(who, dict) else None) or users.get(who_id) or f"label-studio user {who_id}"
            note = f"label studio {client.url} project {project_id} task {t.get('id')} annotation {a.get('id')}"
            prov = {"source": "label_studio", "url": client.url, "project": project_id, "task": t.get("id"),
                    "annotation": a.get("id"), "reviewer": reviewer, "annotated_at": stamp}
            decisions.append((at, iid, label, reviewer, note, prov))
    if bad:
        listing = "\n".join(f"  {b}" for b in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ReviewImportError(f"Label Studio project {project_id}: {len(bad)} annotation(s) cannot be applied; "
                                f"nothing was applied:\n{listing}")
    decisions.sort(key=lambda d: (d[0], d[4]))
    store = ws.store()
    try:
        for at, iid, label, reviewer, note, prov in decisions:
            outcome = store.apply_human_label(iid, label, at=at, reviewer=reviewer, note=note, provenance=prov)
            if outcome == "seen":
                res.already_pulled += 1
                continue
            res.recorded += 1
            if outcome == "older":
                res.older += 1
            else:
                res.items.append(iid)
        res.items = sorted(set(res.items))
        res.applied = len(res.items)
        humans = store.human_labels(dataset)
        tl = store.teacher_labels(res.items)
        res.changed_from_teacher = sum(1 for i in res.items if tl.get(i) != humans.get(i))
    finally:
        store.close()
    return res


def _user_emails(client: Any) -> dict[Any, str]:
    try:
        users = client.request("GET", "/api/users")
    except Exception:  # listing users may need rights the token lacks: the reviewer is then "label-studio user N"
        return {}
    users = users.get("results", []) if isinstance(users, dict) else users or []
    return {u.get("id"): u.get("email") or u.get("username") for u in users if isinstance(u, dict)}


# -- what the human labels changed ------------------------------------------------------------------------------

EFFECT_REPORT = "human_review_effect"


def measure_human_label_effect(ws: Workspace, dataset: str, *, kind: str | None = None, epochs: int | None = None,
                               seed: int = 0, splits: Sequence[str] = ("train", "stream"), progress: bool = False,
                               **hparams: Any) -> dict[str, Any]:
    """Train the same student twice on the same labelled items -- with the human labels, and with the teacher's
    labels only -- and measure both on the test split's gold labels (Wilson intervals, and the paired difference).

    Why two fresh trainings and not the wheel's models: only the same kind, seed and item set isolates what the
    human labels changed.  Items only a human labelled (the teacher's passes disagreed) are left out of the "without"
    run, as the wheel would have left them out.  The result is stored (report ``human_review_effect``) for the report.
    """
    from llm_flywheel.pipeline.evaluation import accuracy_ci, paired_diff_ci
    from llm_flywheel.students.base import predict_in_batches
    from llm_flywheel.pipeline.training import train_student

    store = ws.store(readonly=True)
    try:
        with_h = store.effective_labels(dataset, split=list(splits))
        humans = {i: lab for i, lab in store.human_labels(dataset).items() if i in with_h}
        teacher = store.teacher_labels(sorted(with_h))
        test = store.items(dataset, split="test")
    finally:
        store.close()
    if not humans:
        raise ValueError(f"dataset {dataset!r} has no human labels on {'/'.join(splits)} items; review some first "
                         "(`flywheel review push` / `pull`, or `review export` / `import`)")
    test = [it for it in test if it.gold_label is not None]
    if not test:
        raise ValueError(f"dataset {dataset!r} has no gold-labelled test items to measure on")
    without = {i: teacher[i] for i in with_h if teacher.get(i) is not None}
    gold = np.asarray([it.gold_label for it in test], dtype=object)
    out: dict[str, Any] = {"dataset": dataset, "n_human": len(humans), "n_labels_with": len(with_h),
                           "n_labels_without": len(without), "n_test": len(test),
                           "changed_from_teacher": sum(1 for i, lab in humans.items() if teacher.get(i) != lab),
                           "new_items": sum(1 for i in humans if teacher.get(i) is None)}
    correct = {}
    for name, labels in (("with", with_h), ("without", without)):
        tm = train_student(ws, dataset, kind=kind, labels=labels, seed=seed, epochs=epochs, progress=progress,
                           export_onnx=False, **hparams)
        pred = np.asarray(tm.student.labels, dtype=object)[predict_in_batches(tm.student, test).argmax(1)]
        correct[name] = pred == gold
        acc, lo, hi = accuracy_ci(correct[name])
        out[f"accuracy_{name}"], out[f"accuracy_{name}_ci"], out[f"version_{name}"] = acc, [lo, hi], tm.version
    d, lo, hi = paired_diff_ci(correct["with"], correct["without"])
    out["difference"], out["difference_ci"] = d, [lo, hi]
    store = ws.store()
    try:
        store.add_report(EFFECT_REPORT, dataset, out)
    finally:
        store.close()
    return out
