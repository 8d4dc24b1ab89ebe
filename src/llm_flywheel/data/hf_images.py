"""A Hugging Face ``save_to_disk`` folder of pictures as an image dataset: ``load_dataset("beans").save_to_disk(...)``.

Why: the image datasets a notebook user has at hand (beans, cifar10, food101, a folder loaded with
``imagefolder``) keep each picture in an ``Image`` column -- a struct of the file's ``bytes`` and its ``path``,
the bytes embedded by ``save_to_disk`` -- and the class in a ``ClassLabel`` column whose ``names`` say what the
numbers mean.  ``flywheel data add image-folder`` found no image files there (only ``.arrow`` and ``.json``).
Read batch by batch (a large set never sits in memory whole); a cell without bytes is read from its ``path`` when
that file is on this machine, else reported as unreadable while the import goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.data.base import Record
from llm_flywheel.data.folders import split_cell
from llm_flywheel.data.hf_disk import (arrow_files, class_names, features, image_columns, label_column_of,
                                       record_batches, saved_splits)
from llm_flywheel.data.image_folder import folder_task, normalised_labels


def hf_image_source(path: str | Path, *, task: str | Path | Task | None = None, name: str | None = None,
                    label_column: str | None = None) -> tuple[Task, Iterator[Record], int, list[str]]:
    """Task, records, count and notes for a saved folder with an ``Image`` column (as ``image_folder_source``):
    the class names of the ClassLabel column (``label_column``, default the only one), a ``DatasetDict``'s splits
    as the source's (``validation`` as ``val``; ``test`` stays test)."""
    root = Path(path)
    images, names = image_columns(root), class_names(root)
    if not images:
        raise ValueError(f"{root} is a Hugging Face dataset saved to disk without an Image column (columns: "
                         f"{', '.join(features(root)) or 'none'}): import it with `flywheel data add text {root}` "
                         "or `flywheel data add tabular`")
    col = label_column or label_column_of(root)
    if col is not None and col not in names:
        raise ValueError(f"{root}: {col!r} is not one of its ClassLabel columns ({', '.join(names) or 'none'}); "
                         "name one with --label-column")
    classes = names.get(col, []) if col else []
    norm = normalised_labels([(root, None, c) for c in classes])
    t = folder_task(root, norm, task, name, None)
    splits = saved_splits(root)
    recs, total = picture_records(root, col, [norm[c] for c in classes])
    notes = [f"{root.name}: a Hugging Face dataset saved to disk; pictures from column {images[0]!r}, "
             + (f"labels from ClassLabel column {col!r}" if col else "no label column (the teacher labels them)")
             + (f"; splits {', '.join(map(str, splits))}" if splits != [None] else "")]
    if len(images) > 1:
        notes.append(f"{len(images)} Image columns: {images[0]!r} is read, {', '.join(map(repr, images[1:]))} not")
    return t, recs, total, notes


def picture_records(path: str | Path, label_column: str | None = None,
                    classes: list[str] | None = None) -> tuple[Iterator[Record], int]:
    """(records, how many) of a saved folder's first Image column, every split's rows in order: a picture or
    the reason it cannot be read; ``label_column``'s class number as ``classes[n]`` (-1: none); the split as
    the source's.  The count reads no picture (the files are memory-mapped)."""
    root, col = Path(path), label_column
    image = image_columns(root)[0]
    files = [(s, f) for s in saved_splits(root) for f in arrow_files(root / s if s else root)]
    total = sum(b.num_rows for _, f in files for b in record_batches(f))

    def gen() -> Iterator[Record]:
        for split, f in files:
            src = split_cell(split) if split else None
            rows = (row for b in record_batches(f) for row in _table(b).select([image, *([col] if col else [])])
                    .to_pylist())
            for i, row in enumerate(rows):
                ref = f"{split + '/' if split else ''}{f.name}:{i}"
                data, err = _picture(row[image])
                lab = row.get(col) if col else None
                gold = classes[lab] if classes and isinstance(lab, int) and 0 <= lab < len(classes) else None
                yield (Record(ref, image=data, source_split=src, gold_label=gold) if err is None
                       else Record(ref, error=err, source_split=src))

    return gen(), total


def _table(batch: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_batches([batch])  # no copy; Table.select in every supported pyarrow


def _picture(cell: Any) -> tuple[bytes | None, str | None]:
    """(the picture's bytes, None) or (None, why not) for an ``Image`` cell ``{"bytes": ..., "path": ...}``."""
    if not isinstance(cell, dict):
        return None, "no picture in this row" if cell is None else f"not an Image cell ({type(cell).__name__})"
    if cell.get("bytes"):
        return bytes(cell["bytes"]), None
    p = cell.get("path")
    if not p:
        return None, "an empty Image cell"
    try:
        return Path(p).read_bytes(), None
    except OSError as e:
        return None, f"its bytes were not saved and {p} cannot be read here ({type(e).__name__}: {e.strerror or e})"
