"""Images from a folder: one sub-folder per class (labelled) or a flat folder (unlabelled).

Layouts understood::

    photos/cat/1.jpg  photos/dog/2.png            labels from folder names (normalised to snake_case)
    photos/train/cat/1.jpg  photos/test/cat/9.jpg  the same, with the source's own train/test split (also val/,
                                                   training/, seg_test/, an archive's wrapper: ``data.folders``)
    photos/train/1.jpg  photos/test/9.jpg          unlabelled, with the source's split
    photos/1.jpg  photos/2.png                     unlabelled: the teacher will label them (needs --task)
    photos/1.jpg  photos/metadata.csv              labels from a table (or --labels FILE: Kaggle's train.csv;
                                                   ``data.image_labels``)

Every file with an image extension is read (phone formats too: HEIC, AVIF; ``data.images``); a file PIL cannot
decode (truncated, zero bytes, a text file named .jpg) is counted and skipped by :func:`register`, never a crash.
Hidden files are ignored; files with other extensions (a RAW .dng, a .mov beside the photos) are counted by
extension in the import notes, so a folder of a format nobody reads is never silently half-imported.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from llm_flywheel.core.task import Task, TaskError, load_task, normalise_label
from llm_flywheel.data.base import Record
from llm_flywheel.data.folders import entries, kinds, split_folders, split_note, visible_files
from llm_flywheel.data.image_labels import find_metadata, table_labels
from llm_flywheel.data.table_files import TABLE_SUFFIXES

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                              ".heic", ".heif", ".avif"})


def dataset_name(name: str) -> str:
    """A usable dataset name from a folder or file name (``"My Photos"`` -> ``my-photos``)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-._")
    return s or "dataset"


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in visible_files(folder) if p.suffix.lower() in IMAGE_EXTENSIONS)


def ignored_note(root: Path, used: Path | None = None) -> list[str]:
    """A note naming the visible files that are not images by extension (``3 .dng, 1 .mov``), if any; ``used``
    (the labels table) is not one of them."""
    other = [p for p in visible_files(root) if p.suffix.lower() not in IMAGE_EXTENSIONS and p != used]
    if not other:
        return []
    return [f"{len(other):,} file(s) without an image extension ignored ({kinds(other)}); images are "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"]


def scan(bases: list[tuple[Path, str | None]]) -> list[tuple[Path, str | None, str | None]]:
    """(file, source split, folder label) for every image file under the folders ``bases`` in a stable order: the
    source's split folders (``train/ val/ test/``, ``seg_train/``, ...) and wrapper folders as
    :func:`llm_flywheel.data.folders.split_folders` reads them."""
    out: list[tuple[Path, str | None, str | None]] = []
    for base, split in bases:
        dirs, files = entries(base)
        out += [(f, split, None) for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]  # top level: unlabelled
        for d in dirs:
            out += [(f, split, d.name) for f in _images_under(d)]
    return out


def image_folder_source(
    path: str | Path, *, task: str | Path | Task | None = None, name: str | None = None,
    labels: str | Path | None = None, label_column: str | None = None, file_column: str | None = None,
) -> tuple[Task, Iterator[Record], int, list[str]]:
    """Task, records, count and notes (files ignored) for an image folder.

    With ``task`` (a TOML path or Task) the folder labels must be among its labels; without one, the task is
    derived from the folder names (at least two classes).  ``name`` overrides the dataset name.  ``labels``: a
    table naming each picture's label (default: the folder's ``metadata.csv``/``.jsonl``), read by
    :func:`llm_flywheel.data.image_labels.table_labels` with ``label_column`` / ``file_column``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    bases = split_folders(root)
    files = scan(bases)
    table = Path(labels) if labels is not None else find_metadata(root)
    if labels is not None and not table.is_file():
        raise FileNotFoundError(f"labels file {table} does not exist")
    notes = ignored_note(root, table) + split_note(bases, Counter(s for _, s, _ in files), root)
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}"
                         + (f"; {notes[0].split(';')[0]}" if notes else ""))
    if table is not None:
        try:
            files, more = _with_table_labels(files, root, table, label_column, file_column, labels is not None)
        except ValueError as e:
            if labels is not None:
                raise
            more = [f"{table.name} not used for labels ({str(e).split(': ', 1)[-1]})"]  # captions only, say
            table = None
        notes += more
    norm = normalised_labels(files)
    t = folder_task(root, norm, task, name, table)

    def gen() -> Iterator[Record]:
        for f, split, lab in files:
            ref = f.relative_to(root).as_posix()
            try:
                data = f.read_bytes()
            except OSError as e:
                yield Record(ref, error=f"cannot read ({type(e).__name__}: {e.strerror or e})", source_split=split)
                continue
            if not data:
                yield Record(ref, error="empty file (0 bytes)", source_split=split)
                continue
            yield Record(ref, image=data, source_split=split, gold_label=norm[lab] if lab is not None else None)

    return t, gen(), len(files), notes


def normalised_labels(files: list[tuple[Path, str | None, str | None]]) -> dict[str, str]:
    """{label as written: normalised}; a name without letters or two that normalise alike is an error."""
    raw_labels = sorted({lab for _, _, lab in files if lab is not None})
    norm = {lab: normalise_label(lab) for lab in raw_labels}
    bad = [lab for lab, n in norm.items() if not n]
    if bad:
        raise ValueError(f"class name(s) {bad} have no letters or digits; rename them")
    clash: dict[str, list[str]] = {}
    for lab, n in norm.items():
        clash.setdefault(n, []).append(lab)
    clashes = {n: labs for n, labs in clash.items() if len(labs) > 1}
    if clashes:
        raise ValueError(f"classes {clashes} normalise to the same label; merge or rename them")
    return norm


def folder_task(root: Path, norm: dict[str, str], task: str | Path | Task | None, name: str | None,
                table: Path | None, modality: str = "image") -> Task:
    """The given task (the labels found must be among its own) or one made of the labels found (two at least);
    ``modality``: what the folder holds (images, or text files: ``data.text_folder``)."""
    if task is not None:
        t = task if isinstance(task, Task) else load_task(task)
        if t.modality != modality:
            raise TaskError(f"task {t.name!r} has modality {t.modality!r}; a folder of {modality} files needs "
                            f"{modality!r}")
        unknown = sorted(n for n in norm.values() if n not in t.labels)
        if unknown:
            raise TaskError(
                f"folder label(s) {unknown} are not in task {t.name!r} (labels: {', '.join(t.labels)}); "
                f"{'correct ' + table.name if table is not None else 'rename the folders'} or add the labels to the "
                "task file"
            )
    else:
        classes = sorted(set(norm.values()))
        if len(classes) < 2:
            what = ("no class sub-folders" + (f" and no labels in {table.name}" if table is not None else "")
                    if not classes else f"only one class ({classes[0]!r})")
            raise TaskError(
                f"{root} has {what}; pass --task FILE.toml naming the labels (an unlabelled folder is labelled by "
                "the teacher)" + (", or --labels FILE: a table of file names and labels (Kaggle's train.csv)"
                                  + _labels_hint(root) if table is None and not classes and modality == "image"
                                  else ""))
        t = Task(
            name=dataset_name(name or root.name), modality=modality, labels=tuple(classes),
            descriptions={lab: lab.replace("_", " ") for lab in classes},
            instructions="Classify the main object in this image." if modality == "image" else "Classify this text.",
        )
    if name:
        t = replace(t, name=dataset_name(name))
    return t


def _with_table_labels(files: list[tuple[Path, str | None, str | None]], root: Path, table: Path,
                       label_column: str | None, file_column: str | None, given: bool,
                       ) -> tuple[list[tuple[Path, str | None, str | None]], list[str]]:
    """The scanned files with the table's labels (a row's label wins over a class folder's, counted)."""
    found, notes = table_labels(table, [f for f, _, _ in files], root, label_column=label_column,
                                file_column=file_column, guess=given)
    differ = sum(1 for f, _, lab in files if lab is not None and f in found
                 and normalise_label(found[f]) != normalise_label(lab))
    if differ:
        notes.append(f"WARNING: {differ:,} image(s) sit in a class folder that {table.name} contradicts: "
                     f"{table.name}'s label is used")
    return [(f, split, found.get(f, lab)) for f, split, lab in files], notes


def _labels_hint(root: Path) -> str:
    """`` -- e.g. --labels data/train.csv`` for a table beside the folder with its name (Kaggle's layout) or
    inside it, where there is one."""
    near = [root.parent / f"{root.name}{ext}" for ext in sorted(TABLE_SUFFIXES)]
    near += sorted(p for p in root.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    found = next((p for p in near if p.is_file()), None)
    return f" -- e.g. --labels {found}" if found else ""
