"""How a dataset folder is laid out, for image folders and folders of documents alike: which sub-folders are the
source's own splits and which are classes.

Datasets ship as ``train/ test/``, but as often as ``train/ val/ test/`` (Kaggle's chest X-rays), ``training/
testing/``, ``20news-bydate-train/ 20news-bydate-test/`` or ``seg_train/ seg_test/`` -- and an archive unpacked
often wraps it all in one more folder (``chest_xray/chest_xray/train``).  Read naively, each of those becomes a
*class*: a task whose labels are ``train``, ``val`` and ``test`` and whose real labels are lost, without a word.
A folder whose sub-folders are all split names (one of them a train or test one) is read as the source's splits;
a folder holding nothing but one folder of folders is a wrapper and is stepped into.  A source ``val`` folder joins
the pool the wheel draws its own train / val / calib / stream splits from (only ``test`` is kept apart).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
           "test": "test", "testing": "test"}
_SUFFIXED = re.compile(r"[-_. ](train|training|val|valid|validation|dev|test|testing)$")
HIDDEN = ("__MACOSX",)  # what macOS's zip adds beside the data (AppleDouble ``._name`` files)


def hidden(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN


def visible(root: Path, p: Path) -> bool:
    """No part of ``p`` below ``root`` is hidden (``.git``, ``.DS_Store``, ``__MACOSX``)."""
    return not any(hidden(part) for part in p.relative_to(root).parts)


def visible_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file() and visible(root, p))


def kinds(files: Iterable[Path], most: int = 6) -> str:
    """How many files of each kind, commonest first: ``3 .pdf, 1 .jpg, 2 without an extension`` (for the notes that
    say which files an import or ``flywheel predict`` left out)."""
    counts = Counter(p.suffix.lower() or "without an extension" for p in files)
    shown = [f"{n:,} {k}" for k, n in counts.most_common(most)]
    rest = sum(counts.values()) - sum(n for _, n in counts.most_common(most))
    return ", ".join(shown + ([f"{rest:,} other"] if rest else []))


def entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(visible sub-folders, visible files) directly in ``folder``, sorted."""
    items = sorted(p for p in folder.iterdir() if not hidden(p.name))
    return [p for p in items if p.is_dir()], [p for p in items if p.is_file()]


def source_split_name(name: str) -> str | None:
    """``train``/``val``/``test`` for a folder named as a split (``training``, ``validation``, ``seg_test``,
    ``20news-bydate-train``), else None."""
    n = name.lower()
    m = _SUFFIXED.search(n)
    return _SPLITS.get(n) or (_SPLITS[m.group(1)] if m else None)


def split_cell(value: str) -> str:
    """A split column's cell as a source split: ``testing``/``Test`` -> ``test``, ``validation``/``dev`` -> ``val``
    (only ``test`` is kept apart, so a test split spelt otherwise would be trained on); other values as written."""
    v = value.strip().lower()
    return _SPLITS.get(v, v)


def unwrap(folder: Path) -> Path:
    """Step into a folder that holds nothing but one folder which itself holds folders (an unpacked archive's
    wrapper); a single class folder of files is left alone (its name is a label)."""
    while True:
        dirs, files = entries(folder)
        if len(dirs) != 1 or files or not entries(dirs[0])[0]:
            return folder
        folder = dirs[0]


def split_folders(root: Path) -> list[tuple[Path, str | None]]:
    """The folders to read under ``root`` and the source split each holds: its split sub-folders (each
    unwrapped), or the (unwrapped) root itself with no split."""
    root = unwrap(root)
    dirs, _ = entries(root)
    names = [source_split_name(d.name) for d in dirs]
    if dirs and all(names) and {"train", "test"} & set(names):
        return [(unwrap(d), s) for d, s in zip(dirs, names)]
    return [(root, None)]


def split_note(bases: list[tuple[Path, str | None]], counts: dict[str | None, int], root: Path) -> list[str]:
    """A note naming the split folders read, when they are not simply ``train/`` and ``test/``, or the wrapper
    folder stepped into (its sub-folders are the classes: say so, it may be a class of its own)."""
    if not any(s for _, s in bases):
        inner = bases[0][0]
        return [f"{root.name}/ holds only {inner.relative_to(root).as_posix()}/: its sub-folders are read as the "
                "classes"] if inner != root else []
    named = [(b.relative_to(root).as_posix(), s) for b, s in bases]
    if all(path == s for path, s in named) and "val" not in counts:
        return []
    parts = ", ".join(f"{path}/ as {s} ({counts.get(s, 0):,})" for path, s in named)
    val = " -- a source val split joins the pool the wheel draws train, val, calib and stream from" \
        if any(s == "val" for _, s in named) else ""
    return [f"source splits: {parts}{val}"]
