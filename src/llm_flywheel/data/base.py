"""Registering items in the store: the one path every dataset adapter goes through.

Why one path: content hashing, blob storage, batching (a kill loses at most one batch and a re-run skips what
is there), and the corrupt-file report are the same for every source.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np
from PIL import Image, UnidentifiedImageError

from llm_flywheel.core.splits import group_key
from llm_flywheel.core.task import Task
from llm_flywheel.data.images import storable_bytes, upright
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)

BATCH = 2000


@dataclass
class Record:
    """One item as a source yields it, before it is stored.

    Exactly one of ``image`` (PNG/JPEG bytes, a PIL image or an HxW[xC] uint8 array), ``text`` or
    ``features`` is set.  ``error`` marks a record the source could not read (it is reported, not stored).
    """

    source_ref: str
    image: bytes | Image.Image | np.ndarray | None = None
    text: str | None = None
    features: list[float | str] | None = None  # a categorical value as its text, NaN when missing
    source_split: str | None = None
    gold_label: str | None = None
    error: str | None = None


@dataclass
class ImportReport:
    dataset: str
    seen: int = 0
    added: int = 0
    already_present: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    duplicates: int = 0  # added items whose content repeats another item of the dataset (splits keep them together)
    gold_conflicts: int = 0  # of those, how many carry another gold label than the item they repeat
    notes: list[str] = field(default_factory=list)  # what the adapter decided (columns used, ...)
    splits: dict[str, int] = field(default_factory=dict)  # counts per split after the import

    def skip(self, ref: str, why: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(f"{ref}: {why}")

    def summary(self) -> str:
        s = f"{self.dataset}: {self.added} added, {self.already_present} already present"
        if self.skipped:
            s += f", {self.skipped} unreadable skipped (first: {'; '.join(self.skipped_examples)})"
        if self.splits:
            s += "; splits: " + ", ".join(f"{k} {v:,}" for k, v in self.splits.items())
        for note in self.notes:
            s += f"; {note}"
        return s


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes (same pixels -> same hash)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _image_bytes(img: bytes | Image.Image | np.ndarray) -> tuple[bytes, str]:
    """Validate and normalise an image to bytes + suffix as stored (``data.images.storable_bytes``: upright, PNG
    or JPEG).  Raises on anything undecodable."""
    if isinstance(img, bytes):
        with Image.open(io.BytesIO(img)) as im:
            im.verify()  # catches truncated/corrupt files without a full decode
        return storable_bytes(img)  # decodes it in full, once
    return encode_png(upright(img) if isinstance(img, Image.Image) else img), ".png"


def register(
    ws: Workspace,
    task: Task,
    records: Iterable[Record],
    *,
    total: int | None = None,
    progress: bool = True,
) -> ImportReport:
    """Store ``records`` as items of dataset ``task.name``; idempotent, resumable, never crashes on bad input."""
    report = ImportReport(task.name)
    store = ws.store()
    try:
        store.put_dataset(task.name, _keep_stored_features(store, task).to_json())
        existing = store.split_rows(task.name)
        present = store.source_refs(task.name)
        gold_of = {group_key(r["content_hash"], r["text"]): r["gold_label"] for r in existing}
        batch: list[dict[str, Any]] = []
        recs = _progress(records, total, f"importing {task.name}", progress)
        for rec, image in _converted(recs, present) if task.modality == "image" else ((r, None) for r in recs):
            report.seen += 1
            if rec.source_ref in present:
                report.already_present += 1
                continue
            row = _to_row(ws, task, rec, report, image)
            if row is None:
                continue
            key = group_key(row["content_hash"], row.get("text"))
            if key in gold_of:
                report.duplicates += 1
                first, gold = gold_of[key], row.get("gold_label")
                report.gold_conflicts += first is not None and gold is not None and first != gold
            gold_of.setdefault(key, row.get("gold_label"))
            batch.append(row)
            if len(batch) >= BATCH:
                report.added += store.add_items(batch)
                batch = []
        if batch:
            report.added += store.add_items(batch)
    finally:
        store.close()
    if report.duplicates:
        report.notes.append(f"{report.duplicates:,} added items repeat the content of another item (same bytes, or for "
                            "text the same text ignoring case and whitespace); they are kept and always share a split"
                            + (f"; {report.gold_conflicts:,} of them with another gold label than their copy (one "
                               "input in two classes, a cross-post: no answer can be right for both, so the gold "
                               "accuracy measured on them is at most half)" if report.gold_conflicts else ""))
    if report.skipped:
        log.warning(report.summary())
    return report


def _converted(records: Iterable[Record], present: set[str] | Any,
               workers: int = min(4, os.cpu_count() or 1)) -> Iterator[tuple[Record, Any]]:
    """Each record with its image file as stored (:func:`_image_bytes`' bytes and suffix, or the exception it
    raised), converted ``workers`` at a time, in order (an in-memory array is encoded by :func:`_to_row`).
    Why: decoding a phone photo (and re-encoding a HEIC as JPEG) is most of an import's time and Pillow / libheif
    release the GIL while they do it -- 10 HEIC photos of 12 MP took 3.5 s one at a time, 2.0 s two at a time.
    At most ``2 * workers`` records are held, so a folder of 5,000 photos is never read into memory at once."""
    def convert(rec: Record) -> Any:
        try:
            return _image_bytes(rec.image)  # type: ignore[arg-type]
        except Exception as e:  # reported by _to_row, as a sequential import would
            return e

    if workers < 2:
        yield from ((rec, None) for rec in records)
        return
    pending: deque[tuple[Record, Future[Any] | None]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="import") as ex:
        for rec in records:
            todo = isinstance(rec.image, bytes) and not rec.error and rec.source_ref not in present  # a file
            pending.append((rec, ex.submit(convert, rec) if todo else None))
            if len(pending) >= 2 * workers:
                done, fut = pending.popleft()
                yield done, fut.result() if fut is not None else None
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result() if fut is not None else None


def _to_row(ws: Workspace, task: Task, rec: Record, report: ImportReport,
            image: tuple[bytes, str] | Exception | None = None) -> dict[str, Any] | None:
    if rec.error:
        report.skip(rec.source_ref, rec.error)
        return None
    if rec.gold_label is not None and rec.gold_label not in task.labels:
        report.skip(rec.source_ref, f"label {rec.gold_label!r} is not one of the task's labels")
        return None
    row: dict[str, Any] = {
        "dataset": task.name,
        "source_ref": rec.source_ref,
        "modality": task.modality,
        "source_split": rec.source_split,
        "gold_label": rec.gold_label,
    }
    if task.modality == "image":
        if rec.image is None:
            report.skip(rec.source_ref, "no image")
            return None
        try:
            if isinstance(image, Exception):
                raise image
            data, suffix = image if image is not None else _image_bytes(rec.image)
        except UnidentifiedImageError:
            report.skip(rec.source_ref, "unreadable image (not a format PIL recognises)")
            return None
        except Exception as e:  # PIL raises many types for corrupt files
            report.skip(rec.source_ref, f"unreadable image ({type(e).__name__}: {e})")
            return None
        h = sha256(data)
        row.update(content_hash=h, blob_path=ws.put_blob(data, h, suffix))
    elif task.modality == "text":
        if rec.text is None or not rec.text.strip():
            report.skip(rec.source_ref, "empty text")
            return None
        row.update(content_hash=sha256(rec.text.encode("utf-8")), text=rec.text)
    else:
        feats = rec.features
        if feats is None or not all(isinstance(f, str) or np.isfinite(f) or np.isnan(f) for f in feats):
            report.skip(rec.source_ref, "no features")
            return None
        fj = row_json(feats)
        row.update(content_hash=sha256(fj.encode()), features_json=fj)
    return row


def stored_row(features: Iterable[float | str | None]) -> list[float | str | None]:
    """A row as the store keeps it: floats, a categorical value as its text, ``None`` for a missing value."""
    return [f if isinstance(f, str) else None if f is None or np.isnan(f) else float(f) for f in features]


def row_json(features: Iterable[float | str | None]) -> str:
    """:func:`stored_row` as the store's text; its content hash is the hash of this text, so anything that must find
    a stored row again (``flywheel predict`` on a table, a served input) writes it here."""
    return json.dumps(stored_row(features))


def stored_task(store: Any, dataset: str) -> Task | None:
    """The task ``dataset`` was stored with, or None for a dataset not in the store (yet)."""
    return Task.from_json(store.dataset_task_json(dataset)) if dataset in store.dataset_names() else None


def _keep_stored_features(store: Any, task: Task) -> Task:
    """A dataset keeps the feature names it was first stored with (none for a table stored before names were
    kept): they are part of the teacher's prompt, and a changed prompt would ask every item again."""
    stored = stored_task(store, task.name)
    return task if stored is None else replace(task, features=stored.features, categorical=stored.categorical)


def _progress(it: Iterable[Record], total: int | None, desc: str, enabled: bool) -> Iterator[Record]:
    if not enabled:
        yield from it
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=False,
    ) as p:
        t = p.add_task(desc, total=total)
        for rec in it:
            yield rec
            p.advance(t)


class StoredImages(Sequence[bytes]):
    """The stored bytes of images, read when indexed.  Why not decoded images: a phone photo decodes to 36 MB (12
    megapixels) and a student batch holds hundreds -- the students decode one at a time and keep only the resized
    pixels, so memory follows the student's resolution, not the camera's."""

    def __init__(self, ws: Workspace, blob_paths: Sequence[str]) -> None:
        self.ws, self.blob_paths = ws, list(blob_paths)

    def __len__(self) -> int:
        return len(self.blob_paths)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self.ws.read_blob(p) for p in self.blob_paths[i]]
        return self.ws.read_blob(self.blob_paths[i])


def load_image(ws: Workspace, blob_path: str, mode: str | None = None) -> Image.Image:
    """Open a stored image (already validated at import).  One stored before the import turned photos upright is
    turned where the student decodes it (``students.image_pixels.to_pil``)."""
    im = Image.open(io.BytesIO(ws.read_blob(blob_path)))
    im.load()
    return im.convert(mode) if mode and im.mode != mode else im
