"""`flywheel data add` and `flywheel data info`."""

from __future__ import annotations

import json
from typing import Any

import logging

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llm_flywheel.interfaces.cli import Ctx, ExitCode, FlywheelExit, config_error, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import require_dataset
from llm_flywheel.core.splits import (AUTO_CEILING_SHARE, AUTO_FLOOR, AUTO_SHARE, CALIB_TO_DEFER,
                                      CALIB_TO_DEFER_MAX_SHARE, SplitError)
from llm_flywheel.core.task import TaskError
from llm_flywheel.data.registry import ADAPTERS, add_dataset
from llm_flywheel.pipeline.dataset_info import dataset_info
from llm_flywheel.pipeline.splits import SplitRepairError, check_duplicates, repair_duplicates
from llm_flywheel.store.base import StoreError

_ADAPTER_HELP = "\n".join(f"  {k:<13} {v}" for k, v in ADAPTERS.items())


@click.group()
def data() -> None:
    """Import datasets into the workspace and inspect what is there."""


def _size(value: str | None, *, auto: bool = False) -> float | int | None:
    """A size option: a fraction, a count, or (val/calib only) ``auto`` -> None, the default rule."""
    if value is None or (auto and value == "auto"):
        return None
    try:
        f = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a fraction (0.05) or a count (500)" + (" or auto" if auto else "")) from None
    if f < 0:
        raise click.BadParameter(f"{value!r} is negative")
    return f if f < 1 else int(f)


def _auto_rule(split: str) -> str:
    """The default size rule in words, from the constants that implement it (so the help cannot drift)."""
    defer = (f"; calib at least {CALIB_TO_DEFER}, the fewest the default teacher budget can defer on, where that "
             f"is at most {CALIB_TO_DEFER_MAX_SHARE:.0%}" if split == "calib" else "")
    return (f"{AUTO_SHARE:.0%}, raised for a small dataset towards {AUTO_FLOOR[split]} items (at most "
            f"{AUTO_CEILING_SHARE[split]:.0%}{defer})")


@data.command(
    "add",
    epilog="\b\nDatasets:\n" + _ADAPTER_HELP + "\n\n\b\nExamples:\n"
    "  flywheel data add fashion-mnist                     # the real 70,000 from /usr/share/datasets\n"
    "  flywheel data add fashion-mnist --limit 2000        # first 2,000 train + 2,000 test, for a quick try\n"
    "  flywheel data add cifar5 --path cifar-100-python.tar.gz\n"
    "  flywheel data add image-folder ./photos --name fruit\n"
    "  flywheel data add image-folder ./train --labels train.csv    # Kaggle: a flat folder and id,label\n"
    "  flywheel data add text reviews.jsonl --label-column sentiment\n"
    "  flywheel data add text aclImdb/                    # a folder of documents: train/pos/1.txt, test/neg/...\n"
    "  flywheel data add tabular iris.csv --label-column species\n\n"
    "\b\nTabular missing values: empty cells and NA, N/A, NaN, null, None, ? are stored as NaN; a non-numeric\n"
    "or infinite cell in a numeric feature column skips the row (reported). Without --features, every numeric\n"
    "column except the label/split columns is a feature, and so is every categorical one: text with at most 50\n"
    "distinct values, each seen twice on average (a plan, a country; an identifier or free text is left out).\n"
    "Category values stay text: the teacher reads them as written, the student encodes them. Rows added to an\n"
    "existing table are read with its columns.\n\n"
    "Re-running an import adds nothing new. Unreadable files/rows are counted, the first few named, and skipped.",
)
@click.argument("dataset", type=click.Choice(list(ADAPTERS)), metavar="DATASET")
@click.argument("source", required=False, type=click.Path(), metavar="[PATH]")
@click.option("--path", "path_opt", type=click.Path(), help="Where the source is (same as PATH). fashion-mnist: folder "
              "of idx files (default /usr/share/datasets/fashion-mnist); cifar5: cifar-100-python folder or .tar.gz.")
@click.option("--limit", type=click.IntRange(min=1), help="fashion-mnist/cifar5: import only the first N items of each source split.")
@click.option("--task", "task_file", type=click.Path(dir_okay=False), help="Task TOML (labels, descriptions, "
              "instructions). Default: derived from folder names / label column values.")
@click.option("--name", "as_name", help="Dataset name in the workspace (default: the task's or the folder/file name).")
@click.option("--text-column", help="text: column holding the text, or several as a,b (joined as 'name: value' lines; "
                                    "default 'text', else the file's longest free-text column).")
@click.option("--label-column", help="text/tabular/image-folder: column holding the gold label (default 'label' if "
                                     "present).")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, exists=True),
              help="image-folder: a table (CSV/JSONL/Parquet/Excel) of file names and labels, e.g. Kaggle's train.csv "
                   "(default: the folder's metadata.csv / metadata.jsonl, Hugging Face's layout).")
@click.option("--file-column", help="image-folder --labels: column naming each picture (default: file_name, "
                                    "filename, image, image_id, id, ...).")
@click.option("--split-column", help="text/tabular: column saying train/test; rows marked test become the test split.")
@click.option("--sheet", help="text/tabular: the sheet of an .xlsx workbook to read (default: its first).")
@click.option("--features", help="tabular: comma-separated feature columns (default: every numeric and categorical "
                                 "column; a text column named here is categorical).")
@click.option("--val", default="auto", show_default=True, help="Validation split: fraction of non-test items or a "
              f"count. auto: {_auto_rule('val')}.")
@click.option("--calib", default="auto", show_default=True,
              help=f"Calibration split: fraction or count. auto: {_auto_rule('calib')}.")
@click.option("--stream", default="0.2", show_default=True, help="Stream split (unseen traffic for the cascade).")
@click.option("--test", "test_size", default="0.2", show_default=True,
              help="Test split, only when the source has no test split of its own.")
@click.option("--seed", default=0, show_default=True, help="Seed for the split shuffle.")
@click.option("--resplit", is_flag=True, help="Re-make the splits (refused once the dataset has labels or models).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_ctx
def add(ctx: Ctx, dataset: str, source: str | None, path_opt: str | None, limit: int | None, task_file: str | None,
        as_name: str | None, text_column: str | None, label_column: str | None, labels_file: str | None,
        file_column: str | None, split_column: str | None, sheet: str | None, features: str | None, val: str,
        calib: str, stream: str, test_size: str, seed: int, resplit: bool, no_progress: bool) -> None:
    """Import DATASET into the workspace, store each item once (by content hash) and make its splits.

    Splits are made once: train (the pool the teacher labels), val, calib, stream, and test (the source's own
    test split when it has one). Items added later join train, so held-out splits never change.
    """
    if source and path_opt and source != path_opt:
        raise click.UsageError("give the path once: either PATH or --path")
    logging.getLogger("llm_flywheel.data.base").setLevel(logging.ERROR)  # we print the report ourselves
    try:
        ws = ctx.workspace()
        report = add_dataset(
            ws, dataset, path=source or path_opt, limit=limit, task=task_file, as_name=as_name,
            text_column=text_column, label_column=label_column, split_column=split_column, labels=labels_file,
            file_column=file_column, sheet=sheet,
            features=[f.strip() for f in features.split(",") if f.strip()] if features else None,
            val=_size(val, auto=True), calib=_size(calib, auto=True), stream=_size(stream), test=_size(test_size), seed=seed,
            resplit=resplit, progress=not no_progress,
        )
    except SplitError as e:  # split sizes that cannot be made: a bad option value, exit 2 like click's own
        raise config_error(str(e)) from None
    except (ValueError, FileNotFoundError, TaskError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    console.print(f"[bold green]{report.dataset}[/]: {report.added:,} added, {report.already_present:,} already present"
                  + (f", [yellow]{report.skipped:,} unreadable skipped[/]" if report.skipped else ""))
    for ex in report.skipped_examples:
        console.print(f"  [yellow]skipped[/] {escape(ex)}", highlight=False)
    if report.splits:
        console.print("splits: " + ", ".join(f"{k} {v:,}" for k, v in report.splits.items()))
    for note in report.notes:
        console.print(f"note: {escape(note)}", highlight=False)


# -- info ---------------------------------------------------------------------------------------------------------

def _print_info(out: Console, info: dict[str, Any]) -> None:
    gold_known = [g for g in info["gold_labels"] if g != "(none)"]
    src = ", ".join(f"{k} {v:,}" for k, v in info["by_source_split"].items())
    out.print(f"[bold]{info['dataset']}[/] ({info['modality']}): [bold]{info['items']:,}[/] items ({src}); "
              f"task has {len(info['labels'])} labels, {len(gold_known)} gold labels present")
    cols = info.get("text_columns") or []
    if cols and cols != ["text"]:
        out.print(f"text: the column(s) {escape(', '.join(cols))} (`flywheel predict` reads a new "
                  "file's rows from them)", highlight=False)
    d = info["duplicates"]
    line = (f"duplicates: {d['duplicate_items']:,} items repeat another ({d['groups']:,} groups); "
            f"{d['cross_split_groups']:,} groups cross splits")
    if d["cross_split_groups"]:
        where = ", ".join(f"{k} {v:,}" for k, v in d["by_splits"].items())
        out.print(f"[bold red]{line}[/] ({escape(where)}): a test item may be trained on; run "
                  f"`flywheel data check {escape(info['dataset'])} --repair`", highlight=False)
    else:
        out.print(line, highlight=False)
    splits = list(info["by_split"])
    src_splits = list(info["by_source_split"])
    t = Table(title="items by split x source split")
    t.add_column("split")
    for s in src_splits:
        t.add_column(f"source {s}", justify="right")
    t.add_column("total", justify="right", style="bold")
    for s in splits:
        row = info["by_split"][s]
        t.add_row(s, *[f"{row.get(x, 0):,}" for x in src_splits], f"{sum(row.values()):,}")
    out.print(t)

    t = Table(title="gold labels by split")
    t.add_column("gold label")
    for s in splits:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right", style="bold")
    order = [lab for lab in info["labels"] if lab in info["gold_labels"]] + \
        [g for g in info["gold_labels"] if g not in info["labels"]]
    for g in order:
        row = info["gold_labels"][g]
        t.add_row(g, *[f"{row.get(s, 0):,}" for s in splits], f"{sum(row.values()):,}")
    out.print(t)

    t = Table(title="labelled status by split")
    for c in ("split", "items", "teacher label", "teacher undecided", "human label", "unlabelled"):
        t.add_column(c, justify="left" if c == "split" else "right")
    for s, r in info["labelled"].items():
        t.add_row(s, *[f"{r[k]:,}" for k in ("items", "teacher", "teacher_undecided", "human", "unlabelled")])
    out.print(t)

    if info["label_sources"] or info["teacher_answers"]:
        t = Table(title="labels by source")
        for c in ("source", "status", "labels"):
            t.add_column(c, justify="right" if c == "labels" else "left")
        for r in info["label_sources"]:
            t.add_row(r["source"], r["status"], f"{r['n']:,}")
        out.print(t)
        t = Table(title="teacher answers by model")
        for c in ("model", "answers", "ok", "failed", "cost USD"):
            t.add_column(c, justify="left" if c == "model" else "right")
        for r in info["teacher_answers"]:
            t.add_row(r["model"], f"{r['answers']:,}", f"{r['ok']:,}", f"{r['failed']:,}", f"{r['cost_usd']:.4f}")
        out.print(t)
    if info.get("served_not_added"):
        out.print(f"[bold yellow]served inputs not in the dataset yet[/]: {info['served_not_added']:,} kept by "
                  f"`flywheel serve`; add them (labelled with the answers serving bought): `flywheel data add-served "
                  f"{escape(info['dataset'])} --teacher SPEC`", highlight=False)
    if info.get("open_batches"):
        jobs = info["open_batches"]
        out.print(f"[bold yellow]open Batch API jobs[/]: {len(jobs)} ({sum(b['requests'] for b in jobs):,} requests; "
                  + ", ".join(f"{b['batch_id'] or 'not yet sent'} {b['status']}" for b in jobs[:3])
                  + (", ..." if len(jobs) > 3 else "") + f"); online runs leave their calls to them. Collect: "
                  f"`flywheel label {info['dataset']} --batch`; cancel: `flywheel label {info['dataset']} "
                  f"--cancel-batches`", highlight=False)


@data.command("info")
@click.argument("dataset", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout instead of tables.")
@pass_ctx
def info(ctx: Ctx, dataset: str | None, as_json: bool) -> None:
    """Counts for DATASET (default: every dataset): by split x source split, by gold label, by labelled status
    (teacher / human label present) and by label source."""
    try:
        ws = ctx.workspace(create=False)
    except (FileNotFoundError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    with ws.store(readonly=True) as store:
        names = [dataset] if dataset else store.dataset_names()
        try:
            infos = [dataset_info(store, n, ws.root).to_dict() for n in names]
        except StoreError as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps({i["dataset"]: i for i in infos}, indent=2))
        return
    if not infos:
        console.print("no datasets yet: run `flywheel data add fashion-mnist` (see `flywheel data add --help`)")
        return
    out = Console()
    for i in infos:
        _print_info(out, i)


# -- check -------------------------------------------------------------------------------------------------------


@data.command("check", epilog="\b\nExamples:\n"
              "  flywheel data check spam-assassin            # report duplicates that cross splits (exit 1 if any)\n"
              "  flywheel data check spam-assassin --repair   # move them into one split, while nothing is labelled\n\n"
              "Identical items -- same content hash, or for text the same text after casefolding and collapsing "
              "whitespace -- must share a split, else a test item can be trained on. Imports keep them together; "
              "this checks workspaces split before that. A repair moves each group into the most held-out split it "
              "touches (test, val, calib, stream, train), and is refused once those splits have labels.")
@click.argument("dataset")
@click.option("--repair", is_flag=True, help="Move cross-split duplicates into one split (refused once labelled).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@pass_ctx
def check(ctx: Ctx, dataset: str, repair: bool, as_json: bool) -> None:
    """Report items of DATASET that repeat another item in a different split; --repair moves them together."""
    try:
        ws = ctx.workspace(create=False)
        require_dataset(ws, dataset)
        with ws.store() as store:
            rep = repair_duplicates(store, dataset) if repair else check_duplicates(store, dataset)
    except (FileNotFoundError, StoreError, SplitRepairError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        console.print(f"[bold]{dataset}[/]: {rep.duplicate_items:,} items repeat another ({rep.groups:,} groups); "
                      f"{rep.cross_split_groups:,} groups cross splits ({rep.cross_split_items:,} items to move)",
                      highlight=False)
        for k, v in rep.by_splits.items():
            console.print(f"  {k}: {v:,} groups", highlight=False)
        for ex in rep.examples:
            console.print(f"  e.g. items {ex['item_ids']} in {ex['splits']} -> {ex['to']}", highlight=False)
        if rep.repaired:
            console.print(f"[green]repaired[/]: moved {len(rep.moves):,} items; every duplicate group now shares one split")
    if rep.cross_split_groups and not rep.repaired:
        raise FlywheelExit(f"{rep.cross_split_groups} duplicate group(s) of {dataset} cross splits; run "
                           f"`flywheel data check {dataset} --repair` before labelling", ExitCode.ERROR)


# -- add-served ---------------------------------------------------------------------------------------------------


@data.command("add-served", epilog="\b\nExamples:\n"
              "  flywheel data add-served tickets --teacher openrouter:google/gemini-2.5-flash\n"
              "  flywheel data add-served tickets --teacher simulated    # the teacher `flywheel serve --teacher "
              "simulated` used\n"
              "  flywheel data add-served tickets                        # inputs only, unlabelled\n\n"
              "`flywheel serve` keeps each input up to --max-logged-payload-bytes under exports/served/ and stores "
              "every teacher answer before using it. This brings both back: the inputs join the train split (the "
              "pool the wheel's selection draws from; content the dataset already holds is skipped), and the answers "
              "serving bought from --teacher become the new items' labels, stored as labelling's first pass so no "
              "later run pays for them again. No teacher call is made. Re-running adds only what is new.")
@click.argument("dataset")
@click.option("--teacher", "spec", default=None,
              help="The teacher `flywheel serve` used (same spec): its answers become labels. Omitted: the inputs "
                   "join unlabelled.")
@click.option("--api-key-env", default=None, help="Environment variable holding the teacher's API key.")
@click.option("--deferred-only", is_flag=True,
              help="Only the inputs the cascade deferred (the student was unsure), not the ones it answered.")
@click.option("--limit", type=click.IntRange(0), default=None,
              help="Add at most N new inputs: the deferred first (their answers are paid labels), then the most "
                   "requested; the rest waits for a later run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@pass_ctx
def add_served(ctx: Ctx, dataset: str, spec: str | None, api_key_env: str | None, deferred_only: bool,
               limit: int | None, as_json: bool) -> None:
    """Add the inputs `flywheel serve` answered for DATASET to its train split, labelled with the answers serving
    already paid for."""
    from llm_flywheel.interfaces.cli.commands import open_dataset
    from llm_flywheel.interfaces.cli.commands.cascade import _teacher
    from llm_flywheel.pipeline.served_import import import_served

    ws = open_dataset(ctx, dataset)
    logging.getLogger("llm_flywheel.data.base").setLevel(logging.ERROR)  # the summary says it
    with _teacher(ws, dataset, spec, api_key_env) as teacher:
        try:
            res = import_served(ws, dataset, teacher, deferred_only=deferred_only, limit=limit,
                                progress=not as_json)
        except (ValueError, StoreError) as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        return
    console.print(escape(res.summary()), highlight=False)
    if res.splits:
        console.print("splits: " + ", ".join(f"{k} {v:,}" for k, v in res.splits.items()))
    for note in res.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if not res.served:
        console.print(f"nothing served for {escape(dataset)} yet: `flywheel serve {escape(dataset)}` logs its traffic "
                      "here", highlight=False)
