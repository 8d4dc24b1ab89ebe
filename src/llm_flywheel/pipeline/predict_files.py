"""Answering input files (and texts) that are not store items with the cascade, shared by both predict engines.

Why here and not in the CLI: ``flywheel predict FILES`` (local) and the Ray Data workers of ``--engine ray`` must
read a file the same way -- the same content hash means the same cached teacher answer, so a file answered by one
engine is never paid for again by the other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.data.base import row_json, sha256
from llm_flywheel.data.documents import document_text, is_item_document
from llm_flywheel.data.hf_disk import is_hf_saved
from llm_flywheel.data.table_files import TABLE_SUFFIXES, on_other_sheets, read_table


@dataclass(frozen=True)
class RowInput:
    """One row of a table file given to ``predict``: where it is (``new.csv:3``) and what the student reads, hashed
    as the store hashes an imported row (the same row answers from the same cached teacher answer)."""

    ref: str
    content: Any = None  # the text, or the feature values
    content_hash: str = ""
    error: str | None = None
    values: dict[str, Any] | None = field(default=None, compare=False, hash=False)  # the row as read (--output)
    dialect: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)  # its file's CSV

    def __str__(self) -> str:
        return self.ref


def is_table(f: Any) -> bool:
    """An input file that stands for its rows (for a text or tabular dataset), not one input."""
    return isinstance(f, Path) and (f.suffix.lower() in TABLE_SUFFIXES or is_hf_saved(f))


def table_text_columns(ws: Any, dataset: str, given: str | Sequence[str] | None) -> tuple[str, ...]:
    """The columns a new table's text is read from: those given (``"a,b"``), else those the dataset was imported
    from -- a dataset imported with ``--text-column subject,body`` answers a new CSV the same way unasked."""
    from llm_flywheel.data.registry import imported_text_columns

    if given:
        return tuple(c.strip() for c in (given.split(",") if isinstance(given, str) else given))
    with ws.store(readonly=True) as store:
        return imported_text_columns(store, dataset)


def expand_tables(inputs: Sequence[Path | str], task: Task, text_columns: Sequence[str] = ("text",),
                  sheet: str | None = None) -> list[Path | str | RowInput]:
    """A table file (:data:`TABLE_SUFFIXES`) given to a text or tabular dataset stands for its rows -- a CSV of new
    tickets is many tickets, not one text -- read as ``flywheel data add`` reads them: the text column(s), or the
    task's feature columns by name (the columns other than ``label`` in file order for a task stored without
    names).  Other inputs stay as they are; a table that cannot be used raises with what to fix."""
    out: list[Path | str | RowInput] = []
    for f in inputs:
        if is_table(f) and task.modality in ("text", "tabular"):
            out += _table_rows(f, task, tuple(text_columns), sheet)
        elif isinstance(f, Path) and is_hf_saved(f) and task.modality == "image":
            out += _saved_pictures(f)
        else:
            out.append(f)
    return out


def _saved_pictures(path: Path) -> list[RowInput]:
    """A saved Hugging Face image dataset stands for its pictures, each as the import stores it (one hash)."""
    from llm_flywheel.data.hf_disk import image_columns
    from llm_flywheel.data.hf_images import picture_records
    from llm_flywheel.data.images import storable_bytes

    if not image_columns(path):
        raise ValueError(f"{path}: a Hugging Face dataset saved to disk without an Image column, and the model "
                         "reads pictures")
    out = []
    for rec in picture_records(path)[0]:  # a record holds the picture's bytes or why there are none
        why = rec.error
        if why is None:
            try:
                data = storable_bytes(rec.image)[0]
                out.append(RowInput(rec.source_ref, data, sha256(data)))
            except (ValueError, OSError) as e:  # PIL's "cannot identify image file" is an OSError
                why = str(e)
        if why is not None:
            out.append(RowInput(rec.source_ref, error=f"unreadable picture ({why})"))
    return out


def _table_rows(path: Path, task: Task, text_columns: tuple[str, ...], sheet: str | None) -> list[RowInput]:
    from llm_flywheel.data.tabular import feature_row
    from llm_flywheel.data.text import join_text

    table = read_table(path, sheet if path.suffix.lower() == ".xlsx" else None)
    columns, rows = table.columns, table.rows
    if task.modality == "text":
        missing = [c for c in text_columns if c not in columns]
        if missing:
            raise on_other_sheets(table, ValueError(
                f"{path}: no {', '.join(map(repr, missing))} column (columns: {', '.join(columns)}); name the text "
                "column(s) with --text-column (several as a,b)"))
        what, d = "+".join(text_columns), table.dialect
        texts = [(r, None if r.values is None else join_text(r.values, text_columns)) for r in rows]
        return [RowInput(r.ref, error=r.error or f"empty or missing {what!r}", values=r.written, dialect=d)
                if t is None else RowInput(r.ref, t, sha256(t.encode("utf-8")), values=r.written, dialect=d)
                for r, t in texts]  # hashed as data add stores it
    wanted = list(task.features) or [c for c in columns if c != "label"]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise on_other_sheets(table, ValueError(f"{path}: the model reads column(s) {', '.join(missing)}, missing "
                                                f"here (columns: {', '.join(columns)})"))
    out = []
    for r in rows:
        try:
            if r.values is None:
                raise ValueError(r.error)
            vals = feature_row([r.values.get(c) for c in wanted], wanted, task.categorical)
        except ValueError as e:  # a bad cell (feature_row says which): that row is reported, the others answered
            out.append(RowInput(r.ref, error=f"unreadable row ({e})", values=r.written, dialect=table.dialect))
            continue
        stored = row_json(vals)  # as an imported row is stored, so it finds that row's cached teacher answer
        out.append(RowInput(r.ref, json.loads(stored), sha256(stored.encode()), values=r.written,
                            dialect=table.dialect))
    return out


def read_input(path: Path, task: Task) -> tuple[Any, str]:
    """(content the student reads, content hash) of one input file; raises on a file the modality cannot read."""
    from llm_flywheel.data.tabular import feature_row

    modality = task.modality
    data = path.read_bytes()
    if modality == "image":
        from llm_flywheel.data.images import storable_bytes

        data = storable_bytes(data)[0]  # decoded (the check) and as the import stores it: one picture, one hash
        return data, sha256(data)
    if modality == "text":
        text = document_text(data, path.name)[0]  # as a folder of documents is imported: an email reduced, the same
        if not text:                             # text stripped; binary content refused, never sent to the teacher
            raise ValueError("no text (empty file)")
        return text, sha256(text.encode("utf-8"))
    feats = json.loads(data)
    if not isinstance(feats, list) or not all(x is None or isinstance(x, (int, float, str)) for x in feats):
        raise ValueError("a tabular input file must hold a JSON list of feature values")
    row = feature_row(feats, task.features, task.categorical)
    return row, sha256(row_json(row).encode())


def dataset_modality(ws: Any, dataset: str) -> str:
    """What DATASET's inputs are (image, text, tabular), from its stored task."""
    with ws.store(readonly=True) as s:
        return Task.from_json(s.dataset_task_json(dataset)).modality


def reads(modality: str | None, f: Path) -> bool:
    """Whether a file found in a folder is an input of this modality, as the folder import decides: a picture by
    its extension, a document by :func:`llm_flywheel.data.documents.is_item_document` (not a README or
    SpamAssassin's ``cmds``), a table for text and tables (its rows are the inputs; beside pictures it is their
    metadata)."""
    if modality is None:
        return True
    if is_table(f):
        return modality != "image"
    if modality == "image":
        from llm_flywheel.data.image_folder import IMAGE_EXTENSIONS

        return f.suffix.lower() in IMAGE_EXTENSIONS
    if modality == "text":
        return is_item_document(f.name)
    return f.suffix.lower() == ".json"


def expand_inputs(paths: Iterable[Path], modality: str | None = None) -> tuple[list[Path], list[Path]]:
    """(inputs, left out): files as given; a folder stands for the files under it that ``modality`` reads
    (:func:`reads`; sorted, hidden ones and macOS's ``__MACOSX`` skipped) -- a README or a PDF beside the
    documents is left out, never decoded and sent to a paid teacher."""
    from llm_flywheel.data.folders import visible_files

    out: list[Path] = []
    left: list[Path] = []
    for p in paths:
        if p.is_dir() and not is_hf_saved(p):  # a saved Hugging Face dataset stands for its rows, as a table does
            for f in sorted(visible_files(p)):
                (out if reads(modality, f) else left).append(f)
        else:
            out.append(p)
    return out, left


async def answer_inputs(casc: Any, inputs: Sequence[Path | str | RowInput], *, log: bool, concurrency: int = 16,
                        origin: str = "predict", on_answer: Callable[[Any], None] | None = None) -> list[Any]:
    """The cascade's answer (or the read error, as a ValueError) for each file (Path), text (str) or table row
    (:class:`RowInput`), in order; ``on_answer`` is called with each as it comes (progress).

    Teacher answers go through the content-hash cache (stored before use); the teacher session is closed at the
    end because it belongs to this event loop.  A file is read (and a picture decoded) inside the ``concurrency``
    limit and off the event loop: every input used to be read before the first answer, so 240 phone photos held
    800 MB, and a decode stalled the teacher calls in flight.
    """
    sem = asyncio.Semaphore(max(1, concurrency))
    modality = casc.task.modality

    async def one(f: Path | str | RowInput) -> Any:
        if isinstance(f, RowInput) and f.error is not None:
            return ValueError(f.error)
        async with sem:
            try:
                content, h = ((f.content, f.content_hash) if isinstance(f, RowInput) else
                              (f, sha256(f.encode("utf-8"))) if isinstance(f, str) else
                              await asyncio.to_thread(read_input, f, casc.task))
            except Exception as e:  # unreadable input: report it, keep going
                return ValueError(f"cannot read {modality} input ({type(e).__name__}: {e})")
            return await casc.apredict_raw(content, origin=origin, log=log, content_hash=h)

    async def reported(f: Path | str | RowInput) -> Any:
        a = await one(f)
        if on_answer is not None:
            on_answer(a)
        return a

    try:
        return list(await asyncio.gather(*(reported(f) for f in inputs)))
    finally:
        await casc.aclose()
