"""A Hugging Face ``save_to_disk`` folder read as a table: what a notebook user has after ``ds.save_to_disk("imdb")``.

Why: the ``datasets`` library saves a ``Dataset`` as Arrow stream files (``data-00000-of-00001.arrow``) beside
``state.json`` (which files, which split) and ``dataset_info.json`` (the features: a ``ClassLabel`` column stores
class *numbers*, its ``names`` say what they mean), and a ``DatasetDict`` as one such folder per split under
``dataset_dict.json``.  Those folders were refused with the export to run first.  They are read here with pyarrow
(the ``files`` extra, as Parquet; ``table_files.read_table`` makes the rows a table): a ClassLabel number becomes
its name (-1, the library's "no label", is none), and the splits of a ``DatasetDict`` become a
:data:`SPLIT_COLUMN` the import reads as the source's split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLIT_COLUMN = "split"  # a DatasetDict's split names, one per row (``hf_split`` when the data has its own "split")


def is_hf_saved(path: str | Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def split_column(path: str | Path) -> str | None:
    """The column that holds a ``DatasetDict``'s splits, None for a single ``Dataset`` (the first file's schema
    decides, read without its rows)."""
    p = Path(path)
    if not (p / "dataset_dict.json").is_file():
        return None
    files = _files(p / _splits(p)[0])
    return _split_col([str(n) for n in _arrow(files[0]).schema.names] if files else [])


def read_hf_saved(path: str | Path) -> tuple[list[str], list[tuple[str, dict[str, Any]]], str]:
    """(columns, [(row reference, values)], a note) for every row of every split, ClassLabel numbers as names; a
    ``DatasetDict``'s split in :func:`split_column`.  ``data.table_files.read_table`` makes it a table."""
    p = Path(path)
    splits: list[str | None] = [*_splits(p)] if (p / "dataset_dict.json").is_file() else [None]
    parts = [(split, *_read_split(p / split if split else p, split)) for split in splits]
    names = parts[0][1]
    col = _split_col(names) if splits[0] else None
    rows = [(ref, {**values, **({col: split} if col else {})}) for split, _, batch in parts for ref, values in batch]
    kind = f"a Hugging Face DatasetDict saved to disk (splits: {', '.join(map(str, splits))})" if col else \
        "a Hugging Face Dataset saved to disk"
    return [*names, *([col] if col else [])], rows, f"{p.name}: {kind}; ClassLabel columns read as their names"


def saved_splits(path: str | Path) -> list[str | None]:
    """A ``DatasetDict``'s split names (its folders), ``[None]`` for a single ``Dataset``."""
    p = Path(path)
    return [*_splits(p)] if (p / "dataset_dict.json").is_file() else [None]


def features(path: str | Path) -> dict[str, Any]:
    """The ``features`` of ``dataset_info.json`` (the first split's for a ``DatasetDict``); {} when missing."""
    p = Path(path)
    split = saved_splits(p)[0]
    try:
        info = json.loads(((p / split if split else p) / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    feats = info.get("features") if isinstance(info, dict) else None
    return feats if isinstance(feats, dict) else {}


def class_names(path: str | Path) -> dict[str, list[str]]:
    """ClassLabel columns -> their class names (the first split's, as :func:`features`)."""
    return {str(c): [str(n) for n in f["names"]] for c, f in features(path).items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}


def image_columns(path: str | Path) -> list[str]:
    """The columns of ``Image`` type in a saved folder (its first split's ``dataset_info.json``)."""
    return [c for c, f in features(path).items() if isinstance(f, dict) and f.get("_type") == "Image"]


def label_column_of(path: str | Path) -> str | None:
    """The one ``ClassLabel`` column, which holds the gold label (None when there is none, or several)."""
    labels = list(class_names(path))
    return labels[0] if len(labels) == 1 else None


def arrow_files(d: str | Path) -> list[Path]:
    """The Arrow files of one saved ``Dataset`` folder, in ``state.json``'s order."""
    return _files(Path(d))


def record_batches(f: Path) -> Iterator[Any]:
    """An Arrow file's record batches, memory-mapped: a large set is never in memory whole."""
    reader = _arrow(f)
    if hasattr(reader, "num_record_batches"):  # the IPC file format
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        yield from reader


def _split_col(names: list[str]) -> str:
    return "hf_split" if SPLIT_COLUMN in names else SPLIT_COLUMN


def _splits(p: Path) -> list[str]:
    try:
        splits = json.loads((p / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{p}/dataset_dict.json is not readable ({type(e).__name__}: {e})") from None
    missing = [s for s in splits if not (p / s).is_dir()]
    if not splits or missing:
        raise ValueError(f"{p}: dataset_dict.json names split folders that are not there: {missing or splits}")
    return [str(s) for s in splits]


def _read_split(d: Path, split: str | None) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(column names, [(row reference, values)]) of one saved ``Dataset`` folder."""
    labels = class_names(d)
    names: list[str] = []
    out: list[tuple[str, dict[str, Any]]] = []
    for f in _files(d):
        table = _arrow(f).read_all()
        names = names or [str(c) for c in table.column_names]
        for i, rec in enumerate(table.to_pylist()):
            out.append((f"{split + '/' if split else ''}{f.name}:{i}",
                        {c: _class(v, labels[c]) if c in labels else v for c, v in rec.items()}))
    return names, out


def _files(d: Path) -> list[Path]:
    """The Arrow files ``state.json`` lists, in its order (every ``*.arrow`` when it lists none)."""
    try:
        state = json.loads((d / "state.json").read_text(encoding="utf-8"))
        files = [d / f["filename"] for f in state.get("_data_files", [])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{d}/state.json is not readable ({type(e).__name__}: {e})") from None
    if state.get("_indices_data_files"):  # old `datasets` saved a select/shuffle/filter as an index over all rows
        raise ValueError(f"{d}: saved with an indices mapping (rows chosen from a larger table), which would be read "
                         "as every row; save it again flattened: ds.flatten_indices().save_to_disk(...)")
    return files or sorted(d.glob("*.arrow"))


def _class(v: Any, names: list[str]) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return names[v] if 0 <= v < len(names) else None  # -1: the library's "no label" (a test split's)
    return v


def _arrow(f: Path) -> Any:
    """A reader of an Arrow file as ``datasets`` writes it (the IPC stream format; the file format read too)."""
    import pyarrow as pa  # an ImportError is named with the extra by read_table

    try:  # memory-mapped: a schema is read without the rows (split_column), the rows without a copy
        try:
            return pa.ipc.open_stream(pa.memory_map(str(f)))
        except pa.ArrowInvalid:
            return pa.ipc.open_file(pa.memory_map(str(f)))
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{f}: not a readable Arrow file ({type(e).__name__}: {str(e)[:200]})") from None
