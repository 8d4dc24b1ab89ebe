"""Human review in Label Studio: push the review queue as pre-labelled tasks, pull the annotations back as human
labels.

Why a stage of its own: the round trip (project found or made, items not uploaded twice, every annotation and
every later edit recorded once, newest decision wins) is independent of the CSV export/import beside it in
:mod:`llm_flywheel.pipeline.review`; both share the queue (:mod:`llm_flywheel.pipeline.review_queue`).
"""

from __future__ import annotations

import base64
import json
import mimetypes
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.labelstudio import LabelStudio, choice_result, chosen_label, label_config, object_name
from llm_flywheel.pipeline.review_queue import (LOW_CONFIDENCE_BELOW, ReviewCandidate, ReviewImportError,
                                                review_queue, student_version)
from llm_flywheel.store.base import Store
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.parsing import LabelMatcher

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
    mime = mimetypes.guess_type(blob)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(ws.read_blob(blob)).decode('ascii')}"


def _ls_task(ws: Workspace, dataset: str, task: Task, c: ReviewCandidate, student_version: str | None) -> dict[str, Any]:
    r = c.row
    if task.modality == "image":
        content = _data_url(ws, r["blob_path"])
    elif task.modality == "text":
        content = r["text"] or ""
    else:
        feats = json.loads(r["features_json"] or "[]")
        names = list(task.features) or [f"f{i}" for i in range(len(feats))]
        content = ", ".join(f"{n}={'missing' if v is None else v if isinstance(v, str) else format(v, '.4g')}"
                            for n, v in zip(names, feats))
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
        version = student_version(ws, dataset) if queue and queue[0].student_probs is not None else None
        todo = [c for c in queue if c.item_id not in there]
        if limit is not None:
            todo = todo[: max(0, int(limit))]
        n = client.import_tasks(project_id, (_ls_task(ws, dataset, task, c, version) for c in todo)) if todo else 0
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


def pull_from_label_studio(ws: Workspace, dataset: str, token: str, *, url: str | None = None,
                           project_id: int | None = None, ls: Any | None = None) -> PullResult:
    """Store the completed annotations of the dataset's Label Studio project as human labels (they outrank the
    teacher).  Idempotent: every annotation (and every later edit of it) is recorded once in the review history;
    an item annotated more than once is labelled by its newest annotation.  All or nothing, like the CSV import:
    an annotation whose label is not one of the task's labels rejects the pull with the tasks listed."""
    with ws.store(readonly=True) as store:
        task = Task.from_json(store.dataset_task_json(dataset))
        known = store.latest_report(PROJECT_REPORT, dataset) or {}
        item_ids = {it.id for it in store.items(dataset)}
    url = url or known.get("url")
    if not url:
        raise ValueError(f"no Label Studio project is known for {dataset!r}; push first with "
                         f"`flywheel review push {dataset} --label-studio URL` (or give --label-studio URL)")
    client = ls or LabelStudio(url, token)
    try:
        if project_id is None:
            project_id = _known_project(client, dataset, known)
        exported = client.export(project_id)
        users = _user_emails(client)
    finally:
        if ls is None:
            client.close()
    res = PullResult(project_id=project_id, annotated_tasks=len(exported))
    source = _Source(client.url, project_id, dataset, item_ids, users)
    decisions = _decisions(exported, task, source, res)
    with ws.store() as store:
        _apply(store, dataset, decisions, res)
    return res


def _known_project(client: Any, dataset: str, known: dict[str, Any]) -> int:
    """The project the last push to this URL recorded, else the one titled for ``dataset``."""
    if known.get("url") == client.url and known.get("project_id") is not None:
        return int(known["project_id"])
    found = [p for p in client.projects() if p.get("title") == project_title(dataset)]
    if not found:
        raise ValueError(f"no project titled {project_title(dataset)!r} at {client.url}; push first")
    return int(found[0]["id"])


@dataclass(frozen=True)
class _Source:
    url: str
    project_id: int
    dataset: str
    item_ids: set[int]
    users: dict[Any, str]


@dataclass(frozen=True)
class _Decision:
    at: float  # when the annotation was made or last edited (epoch seconds): the newest decision wins
    item_id: int
    label: str
    reviewer: str
    note: str  # identifies the annotation: pulling it again is recognised
    provenance: dict[str, Any]


def _decisions(exported: list[dict[str, Any]], task: Task, src: _Source, res: PullResult) -> list[_Decision]:
    """Every usable annotation as a decision, oldest first; counts cancelled/empty ones in ``res.skipped``.
    Raises :class:`ReviewImportError` (nothing applied) when any task or label does not fit this workspace."""
    matcher = LabelMatcher(task.labels, task.descriptions)
    out: list[_Decision] = []
    bad: list[str] = []
    for t in exported:
        data = t.get("data") or {}
        iid = data.get("item_id")
        if data.get("dataset") != src.dataset or not isinstance(iid, int) or iid not in src.item_ids:
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
            out.append(_decision(t, a, iid, label, src))
    if bad:
        listing = "\n".join(f"  {b}" for b in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ReviewImportError(f"Label Studio project {src.project_id}: {len(bad)} annotation(s) cannot be applied; "
                                f"nothing was applied:\n{listing}")
    return sorted(out, key=lambda d: (d.at, d.note))


def _decision(t: dict[str, Any], a: dict[str, Any], iid: int, label: str, src: _Source) -> _Decision:
    stamp = a.get("updated_at") or a.get("created_at")
    at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    who = a.get("completed_by")
    who_id = who.get("id") if isinstance(who, dict) else who
    reviewer = (who.get("email") if isinstance(who, dict) else None) or src.users.get(who_id) or f"label-studio user {who_id}"
    note = f"label studio {src.url} project {src.project_id} task {t.get('id')} annotation {a.get('id')}"
    prov = {"source": "label_studio", "url": src.url, "project": src.project_id, "task": t.get("id"),
            "annotation": a.get("id"), "reviewer": reviewer, "annotated_at": stamp}
    return _Decision(at, iid, label, reviewer, note, prov)


def _apply(store: Store, dataset: str, decisions: list[_Decision], res: PullResult) -> None:
    for d in decisions:
        outcome = store.apply_human_label(d.item_id, d.label, at=d.at, reviewer=d.reviewer, note=d.note,
                                          provenance=d.provenance)
        if outcome == "seen":
            res.already_pulled += 1
            continue
        res.recorded += 1
        if outcome == "older":
            res.older += 1
        else:
            res.items.append(d.item_id)
    res.items = sorted(set(res.items))
    res.applied = len(res.items)
    humans = store.human_labels(dataset)
    tl = store.teacher_labels(res.items)
    res.changed_from_teacher = sum(1 for i in res.items if tl.get(i) != humans.get(i))


def _user_emails(client: Any) -> dict[Any, str]:
    try:
        users = client.request("GET", "/api/users")
    except Exception:  # listing users may need rights the token lacks: the reviewer is then "label-studio user N"
        return {}
    users = users.get("results", []) if isinstance(users, dict) else users or []
    return {u.get("id"): u.get("email") or u.get("username") for u in users if isinstance(u, dict)}
