"""Served traffic back into the wheel: what ``flywheel serve`` answered becomes training data.

Why: the flywheel's promise is that every deferral in production is collected.  The service logs each answer to
``cascade_log`` (origin ``serve``) and keeps the input under ``exports/served/`` (up to
``--max-logged-payload-bytes``), and a deferred input's teacher answer is stored before it is used -- but none of
it reached the dataset, so the next round never trained on production traffic, and labelling that content later
paid the teacher again.  This stage imports the kept inputs as ``train`` items (the production distribution: the
wheel's selection chooses among them), and with the teacher that served them adopts each answer serving bought as
the item's pass 0 -- the same prompt and model, so labelling never asks it again -- and labels the new items from
it, as the wheel labels its own stream's deferrals (one pass).  Nothing here calls the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_flywheel.core.splits import group_key
from llm_flywheel.core.task import Task
from llm_flywheel.data.base import Record, register
from llm_flywheel.data.tabular import feature_row, nan_missing
from llm_flywheel.pipeline.splits import make_splits, split_counts
from llm_flywheel.pipeline.served_answers import adopt_served_answers
from llm_flywheel.store.serving import ServedInput
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)

SOURCE_PREFIX = "served:"  # an imported input's source_ref: served:<the hash the service logged>


@dataclass
class ServedImport:
    """What one import did.  ``answers_adopted``: teacher answers serving had paid for, now labelling's pass 0 (never
    bought again); ``labelled``: new train items whose label is that answer; ``answers_other_teacher``: inputs with an
    answer bought from another teacher or prompt than the one given (or with none given)."""

    dataset: str
    served: int = 0
    deferred: int = 0
    not_kept: int = 0
    unreadable: int = 0
    already_present: int = 0
    added: int = 0
    left_for_later: int = 0
    answers_adopted: int = 0
    labelled: int = 0
    answers_other_teacher: int = 0
    teacher_calls: int = 0
    teacher: str | None = None
    splits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s = (f"{self.dataset}: {self.served:,} distinct inputs served ({self.deferred:,} deferred); "
             f"{self.added:,} added to train, {self.already_present:,} already in the dataset")
        if self.not_kept:
            s += (f", {self.not_kept:,} not found (larger than --max-logged-payload-bytes, deleted by retention, or "
                  f"kept under exports/served/ of another machine's workspace folder: run this where they are)")
        if self.unreadable:
            s += f", {self.unreadable:,} unreadable"
        if self.left_for_later:
            s += f", {self.left_for_later:,} left for a later import (the limit)"
        if self.teacher:
            s += (f"; {self.answers_adopted:,} teacher answers serving bought reused as pass 0, "
                  f"{self.labelled:,} new items labelled from them, {self.teacher_calls} teacher calls")
        return s


def _held(store: Any, dataset: str) -> tuple[set[str], set[str], bool]:
    """What the dataset already holds of served content: (served hashes it holds as they are or as an import of
    them, the split-group keys of its items -- a text's twin up to case and spacing --, whether it is text)."""
    rows = store.split_rows(dataset)
    held = {r["content_hash"] for r in rows}
    held |= {ref[len(SOURCE_PREFIX):] for ref in store.source_refs(dataset) if ref.startswith(SOURCE_PREFIX)}
    return held, {group_key(r["content_hash"], r["text"]) for r in rows}, bool(rows) and rows[0]["text"] is not None


def served_not_added(store: Any, dataset: str, root: Path | None) -> int:
    """Kept served inputs that :func:`import_served` would add: content the dataset does not hold (:func:`_held`),
    text twins read from the kept files under the workspace ``root`` (None counts them as not added); a kept file
    that is gone (retention, another machine's folder) is not counted, as the import could not add it."""
    kept = [s for s in store.served_inputs(dataset) if s.payload_ref]
    if not kept:
        return 0
    held, twins, text = _held(store, dataset)
    new = [s for s in kept if s.content_hash not in held and (root is None or (root / str(s.payload_ref)).is_file())]
    if not text:
        return len(new)
    return sum(root is None or _text_key(root, s) not in twins for s in new)


def _text_key(root: Path, s: ServedInput) -> str | None:
    try:
        return group_key("", (root / str(s.payload_ref)).read_bytes().decode("utf-8", "surrogatepass"))
    except (OSError, UnicodeDecodeError):
        return None


def import_served(ws: Workspace, dataset: str, teacher: Any | None = None, *, deferred_only: bool = False,
                  limit: int | None = None, progress: bool = False) -> ServedImport:
    """Import the inputs ``flywheel serve`` kept for ``dataset`` as train items; with ``teacher`` (the one serving
    used), adopt the answers serving bought and label the new items from them.  ``deferred_only``: only the inputs
    the cascade deferred (those the student was unsure of), not the ones it answered.  ``limit``: add at most this
    many new inputs, the deferred ones first (their answers are paid labels), then the most requested -- heavy
    traffic would otherwise grow the train pool without bound; the rest waits for a later import.  Idempotent: a
    re-run adds and adopts only what is new."""
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    res = ServedImport(dataset=dataset)
    with ws.store() as store:
        task = Task.from_json(store.dataset_task_json(dataset))
        served = [s for s in store.served_inputs(dataset) if s.deferred or not deferred_only]
        held, twins, _ = _held(store, dataset)
    res.served, res.deferred = len(served), sum(s.deferred for s in served)
    if limit is not None:  # stable: first served first among equals
        served = sorted(served, key=lambda s: (not s.deferred, -s.requests))
    records = []
    for s in served:
        if s.content_hash in held:
            res.already_present += 1
            continue
        if limit is not None and len(records) >= limit:
            res.left_for_later += 1
            continue
        rec = _record(ws.root, task, s)
        if rec is None:
            res.not_kept += 1
        elif rec.error:
            res.unreadable += 1
            log.warning("served input %s: %s", s.content_hash[:16], rec.error)
        elif task.modality == "text" and group_key("", rec.text) in twins:
            res.already_present += 1  # the same text up to case and spacing: it would have to join its twin's split
        else:
            records.append(rec)
    if records:
        rep = register(ws, task, records, total=len(records), progress=progress)
        res.added, res.unreadable = rep.added, res.unreadable + rep.skipped
        res.notes += rep.notes
    with ws.store() as store:
        if res.added:
            make_splits(store, dataset)  # new items join train; the held-out splits never move
        res.splits = split_counts(store, dataset)
    served_to_item = _served_items(ws, dataset, [s.content_hash for s in served])
    if teacher is not None:
        _adopt(ws, dataset, task, teacher, served_to_item, res, progress=progress)
    else:
        with ws.store(readonly=True) as store:
            res.answers_other_teacher = store.served_answer_count(list(served_to_item))
    if res.answers_other_teacher:
        res.notes.append(f"{res.answers_other_teacher:,} of these inputs have a teacher answer serving bought "
                         + ("from another teacher or prompt (not reused)" if teacher is not None else
                            "(not reused): give the teacher serving used (--teacher SPEC, or teacher= in Python) to "
                            "make them labels instead of paying for them again"))
    return res


def _record(root: Path, task: Task, s: ServedInput) -> Record | None:
    """The kept input as a record (None: not kept); a file that does not hash to what was served is an error."""
    if not s.payload_ref:
        return None
    path = root / s.payload_ref
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    ref = SOURCE_PREFIX + s.content_hash
    if hashlib.sha256(raw).hexdigest() != s.content_hash:
        return Record(ref, error=f"{s.payload_ref} was changed after it was served (its hash differs)")
    if task.modality == "image":
        return Record(ref, image=raw)
    if task.modality == "text":
        return Record(ref, text=raw.decode("utf-8", "surrogatepass"))
    try:
        row = feature_row(json.loads(raw), task.features, task.categorical)
        return Record(ref, features=[nan_missing(v) for v in row])
    except (ValueError, TypeError) as e:
        return Record(ref, error=f"{s.payload_ref} is not a row of feature values ({e})")


def _served_items(ws: Workspace, dataset: str, hashes: list[str]) -> dict[str, tuple[int, str, str | None]]:
    """served hash -> (item id, the item's content hash, split) for the served inputs the dataset now holds: the
    same hash, or an import of it (an image in a format the store re-encodes as PNG gets a new hash)."""
    want = set(hashes)
    refs = {SOURCE_PREFIX + h: h for h in hashes}
    out: dict[str, tuple[int, str, str | None]] = {}
    with ws.store(readonly=True) as store:
        ids = {r["content_hash"]: (int(r["id"]), r["split"]) for r in store.split_rows(dataset)}
        by_ref = store.items_by_source_ref(dataset, list(refs))
    for h, (iid, split) in ids.items():
        if h in want:
            out[h] = (iid, h, split)
    for ref, (iid, ih, split) in by_ref.items():
        out.setdefault(refs[ref], (iid, ih, split))
    return out


def _adopt(ws: Workspace, dataset: str, task: Task, teacher: Any, served_to_item: dict[str, tuple[int, str, str | None]],
           res: ServedImport, *, progress: bool) -> None:
    """Adopt the answers serving bought from ``teacher`` (:func:`~.served_answers.adopt_served_answers`), then label
    the train items that have no label yet from their cached answers."""
    from llm_flywheel.pipeline.cost import spend_of
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items

    model, pv = teacher.model, teacher.prompt_version_for(task)
    res.teacher = teacher.display_name
    pairs = [(iid, ih, sh) for sh, (iid, ih, _) in served_to_item.items()]
    with ws.store() as store:
        res.answers_other_teacher = (store.served_answer_count(list(served_to_item))
                                     - len(store.served_answers(list(served_to_item), model, pv)))
        run_id = store.start_run("served_import", {"dataset": dataset, "model": model, "prompt_version": pv})
        res.answers_adopted = adopt_served_answers(store, task, pairs, model, pv, run_id)
        store.finish_run(run_id)
        labelled = set(store.effective_labels(dataset))
        have = store.final_answer_keys(model, pv, [ih for _, ih, _ in served_to_item.values()])
    todo = sorted({iid for iid, ih, split in served_to_item.values()
                   if split == "train" and iid not in labelled and (ih, 0) in have})
    if todo:
        with spend_of(ws, dataset) as spent:
            out = label_items(ws, dataset, todo, teacher, LabelConfig(passes=1, queue_disagreements=False),
                              progress=progress)
        res.labelled, res.teacher_calls = out.labelled, spent.calls
