"""`flywheel predict`: the calibrated cascade over files, texts, table rows or a split of the store."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.core.stats import accuracy_ci, pct
from llm_flywheel.interfaces.cli import Ctx, config_error, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import open_dataset
from llm_flywheel.interfaces.cli.commands.cascade import TEACHER_HELP, _fail, _teacher


@click.command(epilog="\b\nExamples:\n"
               "  flywheel predict fashion-mnist shirt.png boot.jpg --teacher openrouter:google/gemini-2.5-flash\n"
               "  flywheel predict fashion-mnist --split stream --limit 1000 --teacher simulated\n"
               "  flywheel predict fashion-mnist --split stream --engine ray --parquet stream.parquet\n"
               "  flywheel predict fashion-mnist photos/ --engine ray --ray-address ray://head:10001\n"
               "  flywheel predict tickets --text 'my printer is on fire' --text 'refund please'\n"
               "  flywheel predict tickets new-tickets.csv --json      (one answer per row)\n"
               "  flywheel predict tickets new-tickets.xlsx -o scored.xlsx   (the rows with their answers)\n\n"
               "Every answer is logged to the store's cascade_log (unless --no-log); deferred store items answered by "
               "the teacher are cached and become labels for the next round.  --engine ray (needs "
               "pip install 'llm-flywheel[ray]') answers on a Ray cluster's workers: RAY_ADDRESS / --ray-address, "
               "else a local cluster on 127.0.0.1 for the run; workers open the workspace's store themselves and "
               "read the teacher's key from their own environment.")
@click.argument("dataset")
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--text-column", default=None,
              help="In table FILES (.csv/.tsv/.jsonl/.parquet/.xlsx) of a text dataset: the column(s) holding the "
                   "text, several as a,b (each row is one input) [default: those the dataset was imported from].")
@click.option("--sheet", help="In .xlsx FILES: the sheet to read (default: each workbook's first).")
@click.option("--text", "texts", multiple=True,
              help="A text to answer (text datasets; repeat for several), instead of or beside FILES.")
@click.option("--split", help="Answer the items of this split of the store instead of files (e.g. stream).")
@click.option("--limit", type=click.IntRange(min=1), help="With --split: at most this many items (by id).")
@click.option("--version", help="Model version (default: the serving model -- the promoted student, else the newest student; a gold-trained reference model only when named).")
@click.option("--teacher", "spec", default=None, help=TEACHER_HELP)
@click.option("--api-key-env", default=None, help="Environment variable holding the teacher's API key.")
@click.option("--threshold", type=float, help="Override the calibrated threshold (the guarantee no longer applies).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Teacher calls in flight at once, per worker with --engine ray [default: 4 for a server on this "
                   "machine or network (a CPU llama.cpp server has about 4 slots), 16 for a hosted API].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data over a cluster's workers (a split or FILES/folders).")
@click.option("--ray-address", default=None, help="--engine ray: the cluster to use (default: env RAY_ADDRESS, else a local one).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="--engine ray: worker actors, each loads the student once (default 2).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="--engine ray: items per batch (default 1000).")
@click.option("--parquet", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="--engine ray: also write every answer to this Parquet file (written when the run completes).")
@click.option("--no-log", is_flag=True, help="Do not log the answers to cascade_log.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every answer to this file (.csv/.tsv/.jsonl/.parquet/.xlsx, by suffix) beside its input: a "
                   "table's rows keep their columns and gain predicted_label, answered_by, confidence, student_label, "
                   "student_confidence, teacher_label, model_version, error. With FILES or --text.")
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Print the first N answers.")
@click.option("--json", "as_json", is_flag=True, help="Print every answer as a JSON line on stdout.")
@pass_ctx
def predict(ctx: Ctx, dataset: str, files: tuple[Path, ...], text_column: str | None, sheet: str | None,
            texts: tuple[str, ...], split: str | None, limit: int | None, version: str | None, spec: str | None,
            api_key_env: str | None, threshold: float | None, concurrency: int | None, engine: str,
            ray_address: str | None, workers: int | None, batch_size: int | None, parquet: Path | None,
            output: Path | None, no_log: bool, show: int, as_json: bool) -> None:
    """Answer FILES or folders (or a split of the store) with the calibrated cascade of DATASET.

    A table file (.csv/.tsv/.jsonl/.parquet/.xlsx) given to a text or tabular dataset stands for its rows (the text
    column; the feature columns the model was trained on, by name); any other file is one input.

    Each answer says its label, source (student | teacher | teacher_failed | deferred), confidence and model version.
    """
    from llm_flywheel.data.folders import kinds
    from llm_flywheel.pipeline.cascade import Cascade, CascadeError
    from llm_flywheel.pipeline.predict_files import (dataset_modality, expand_inputs, expand_tables, is_table,
                                                     table_text_columns)
    from llm_flywheel.store.base import SPLITS, StoreError
    from llm_flywheel.students.base import StudentError
    from llm_flywheel.teachers.concurrency import fixed_concurrency

    if bool(files or texts) == bool(split):
        raise click.UsageError("give input FILES or --split SPLIT (not both); a text dataset also takes --text TEXT")
    if split and split not in SPLITS:
        raise click.BadParameter(f"{split!r}: choose one of {', '.join(SPLITS)}", param_hint="--split")
    if engine == "local" and (parquet or ray_address or workers or batch_size):
        raise click.UsageError("--parquet, --ray-address, --workers and --batch-size go with --engine ray")
    if engine == "ray" and texts:
        raise click.UsageError("--engine ray answers a split or FILES; put the texts in files (one per file)")
    if engine == "ray":
        _require_ray()
    if output is not None:
        _check_output(output, engine, split)
    ws = open_dataset(ctx, dataset)
    modality = dataset_modality(ws, dataset)
    found, left_out = expand_inputs(files, modality)
    inputs: list[Any] = [*found, *texts]
    if left_out:
        console.print(f"note: {len(left_out):,} file(s) in the folders are not {modality} inputs, left "
                      f"out ({kinds(left_out)})")
    if (files or texts) and not inputs:
        raise click.UsageError("the folders given hold no files" + (" this dataset reads" if left_out else ""))
    if engine == "ray" and any(is_table(p) for p in inputs):
        raise click.UsageError("--engine ray answers one input per file; answer a table's rows with --engine local, "
                               "or import them (`flywheel data add`) and answer the split")
    with _teacher(ws, dataset, spec, api_key_env) as teacher:
        concurrency = fixed_concurrency(bool(teacher is not None and teacher.local), concurrency)
        if engine == "ray":
            _predict_ray(ws, dataset, split, limit, [p for p in inputs if isinstance(p, Path)], version, threshold,
                         teacher, concurrency, ray_address, workers, batch_size, parquet, no_log, show, as_json)
            return
        try:
            casc = Cascade.from_store(ws, dataset, version=version, teacher=teacher, threshold=threshold)
        except (StoreError, StudentError, CascadeError, ValueError) as e:
            raise _fail(e) from None
        console.print(f"model {casc.version}  threshold {casc.threshold:.4f}  temperature {casc.temperature:.3f}"
                      + (f"  teacher {teacher.display_name}" if teacher is not None else "  (no teacher)"))
        if split:
            _predict_split(ws, dataset, casc, split, limit, concurrency, no_log, show, as_json)
            return
        if texts and casc.task.modality != "text":
            raise click.UsageError(f"--text is for text datasets; {dataset} is {casc.task.modality}: give FILES")
        try:
            inputs = expand_tables(inputs, casc.task, table_text_columns(ws, dataset, text_column), sheet)
        except (OSError, ValueError) as e:
            casc.close()
            raise _fail(e) from None
        answers = asyncio.run(_predict_inputs(casc, inputs, no_log, concurrency))
        note = _unseen_note(casc, inputs, answers)
    if note:
        note += f" -- fix: add these rows (`flywheel data add tabular`) and `flywheel run {dataset}` to train on them"
    if output is not None:
        from llm_flywheel.pipeline.predict_output import write_answers

        console.print(f"wrote {write_answers(output, inputs, answers):,} answers to {escape(str(output))}")
    _print_file_answers(inputs, answers, as_json, note, show)


def _check_output(output: Path, engine: str, split: str | None) -> None:
    from llm_flywheel.pipeline.predict_output import check_output

    if engine == "ray" or split:
        raise click.UsageError("--output goes with FILES or --text on the local engine (--engine ray writes "
                               "--parquet; a split's answers: --json)")
    try:
        check_output(output)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _unseen_note(casc: Any, inputs: list[Any], answers: list[Any]) -> str | None:
    """A table's categories the model never saw, over the inputs it answered (``pipeline.unseen``)."""
    from llm_flywheel.pipeline.predict_files import RowInput, read_input
    from llm_flywheel.pipeline.unseen import unseen_categories, unseen_summary

    if not casc.task.categorical:
        return None
    contents = []
    for f, a in zip(inputs, answers):
        if not isinstance(a, Exception):
            contents.append(f.content if isinstance(f, RowInput) else read_input(f, casc.task)[0])
    return unseen_summary(unseen_categories(casc, contents))


async def _predict_inputs(casc: Any, inputs: list[Any], no_log: bool, concurrency: int) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_flywheel.pipeline.predict_files import answer_inputs

    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=len(inputs) < 50) as p:
            task = p.add_task("cascade answers", total=len(inputs))
            return await answer_inputs(casc, inputs, log=not no_log, concurrency=concurrency,
                                       on_answer=lambda _: p.advance(task))
    finally:
        casc.close()


def _print_file_answers(inputs: list[Any], answers: list[Any], as_json: bool, note: str | None = None,
                        show: int | None = None) -> None:
    """Every answer as a JSON line with ``--json``; the first ``show`` in a table (all when None) and, when more
    were answered, the count by source."""
    shown = len(answers) if show is None else min(show, len(answers))
    t = Table(title="cascade answers" if shown == len(answers) else f"first {shown:,} of {len(answers):,} answers")
    for col in ("input", "label", "source", "confidence", "student", "model version"):
        t.add_column(col)
    bad, by_source = 0, Counter()
    for i, (f, a) in enumerate(zip(inputs, answers)):
        if isinstance(a, Exception):
            bad += 1
            if i < shown:
                t.add_row(escape(str(f)), f"[red]error: {a}[/]", "", "", "", "")
            if as_json:
                click.echo(json.dumps({_key(f): str(f), "error": str(a)}))
            continue
        by_source[a.source] += 1
        if i < shown:
            t.add_row(escape(str(f)), str(a.label), a.source, f"{a.confidence:.3f}",
                      f"{a.student_label} ({a.student_confidence:.3f})", a.model_version)
        if as_json:
            click.echo(json.dumps({_key(f): str(f), **a.to_dict()}))
    if shown:
        console.print(t)
    if shown < len(answers):
        console.print("answered by " + ", ".join(f"{k} {v:,}" for k, v in by_source.most_common())
                      + (f"; {bad:,} unreadable" if bad else ""))
    if note:
        console.print(f"[bold red]WARNING[/] {escape(note)}")
    if bad:
        raise click.ClickException(f"{bad} of {len(inputs)} inputs could not be read")


def _key(f: Any) -> str:
    """JSON key naming an input: 'file' for a path, 'text' for a --text, 'row' for a table's row (``new.csv:3``)."""
    return "text" if isinstance(f, str) else "file" if isinstance(f, Path) else "row"


def _predict_split(ws: Any, dataset: str, casc: Any, split: str, limit: int | None, concurrency: int, no_log: bool,
                   show: int, as_json: bool) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with ws.store() as s:
        items = s.items(dataset, split=split, limit=limit)
    if not items:
        raise click.ClickException(f"split {split!r} of {dataset!r} has no items")
    answers = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as p:
        task = p.add_task(f"cascade on {split}", total=len(items))
        for s in range(0, len(items), 1000):
            chunk = items[s : s + 1000]
            answers += casc.predict_items(chunk, origin="predict", log=not no_log, teacher_concurrency=concurrency)
            p.advance(task, len(chunk))
    casc.close()
    if as_json:
        for a in answers:
            click.echo(json.dumps(a.to_dict()))
    _print_split(dataset, split, casc.version, items, answers, show)


def _print_split(dataset: str, split: str, version: str, items: list[Any], answers: list[Any], show: int,
                 extra: list[tuple[str, str]] | None = None) -> None:
    """The first ``show`` answers and the summary (by source, and accuracy where every item has a gold label);
    ``answers`` are CascadeAnswer (local) or PredictRow (ray) -- the same fields."""
    from llm_flywheel.pipeline.cascade import summarize

    if show:
        t = Table(title=f"first {min(show, len(answers))} answers")
        for col in ("item", "label", "source", "confidence", "student", "gold"):
            t.add_column(col)
        for it, a in list(zip(items, answers))[:show]:
            t.add_row(str(it.id), str(a.label), a.source, f"{a.confidence:.3f}",
                      f"{a.student_label} ({a.student_confidence:.3f})", str(it.gold_label or "–"))
        console.print(t)
    sm = summarize(answers)
    t = Table(title=f"cascade on {dataset}/{split} ({version})", show_header=False)
    t.add_row("items", f"{sm['n']:,}")
    for src, n in sm["by_source"].items():
        if n:
            t.add_row(f"answered by {src}", f"{n:,} ({pct(n / sm['n'])})")
    t.add_row("sent to the teacher", pct(sm["teacher_fraction"]))
    t.add_row("mean latency per item", f"{sm['mean_latency_ms']:.2f} ms")
    for k, v in extra or []:
        t.add_row(k, v)
    gold = [it.gold_label for it in items]
    if all(g is not None for g in gold):
        for name, preds in (("student accuracy (gold)", [a.student_label for a in answers]),
                            ("cascade accuracy (gold)", [a.label for a in answers])):
            acc, lo, hi = accuracy_ci([p == g for p, g in zip(preds, gold)])
            t.add_row(name, f"{pct(acc)}  (95 % CI {pct(lo)} – {pct(hi)})")
    console.print(t)


def _require_ray() -> None:
    """Before anything starts: without the [ray] extra, exit 2 naming the install command."""
    from llm_flywheel.pipeline.predict_ray import RayUnavailable, import_ray

    try:
        import_ray()
    except RayUnavailable as e:
        raise config_error(str(e)) from None


def _predict_ray(ws: Any, dataset: str, split: str | None, limit: int | None, files: list[Path],
                 version: str | None, threshold: float | None, teacher: Any, concurrency: int,
                 ray_address: str | None, workers: int | None, batch_size: int | None, parquet: Path | None,
                 no_log: bool, show: int, as_json: bool) -> None:
    """--engine ray: run, print progress lines, then the answers and the summary."""
    from dataclasses import asdict

    from llm_flywheel.pipeline.cascade import CascadeError
    from llm_flywheel.pipeline.predict_ray import (
        RayPredictConfig,
        TeacherRef,
        predict_with_ray,
    )
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.students.base import StudentError

    cfg = RayPredictConfig(address=ray_address, workers=workers or 2, batch_size=batch_size or 1000,
                           teacher_concurrency=concurrency, log=not no_log, parquet=parquet)
    last = [0.0]

    def progress(p: Any) -> None:  # a line every 2 s and at the end, readable in a log file too
        if p.done < p.total and p.elapsed_s - last[0] < 2.0:
            return
        last[0] = p.elapsed_s
        click.echo(f"predict (ray): {p.done:,}/{p.total:,} items  {p.done / max(p.elapsed_s, 1e-9):.1f} items/s  "
                      f"student {p.by_source['student']:,}  teacher/deferred {p.done - p.by_source['student'] - p.errors:,}  "
                      f"errors {p.errors}  workers {len(p.worker_pids)}", err=True)

    console.print(f"predict (ray): {cfg.workers} workers, batches of {cfg.batch_size}"
                  + (f", teacher {teacher.display_name}" if teacher is not None else " (no teacher)"))
    try:
        res = predict_with_ray(ws, dataset, split=split, limit=limit, files=None if split else files,
                               version=version, threshold=threshold,
                               teacher=TeacherRef.of(teacher) if teacher is not None else None, config=cfg,
                               progress=progress, keep_answers=as_json or not parquet)
    except (StoreError, StudentError, CascadeError, ValueError) as e:
        raise _fail(e) from None
    answers = res.answers or []
    if as_json:
        for a in answers:
            click.echo(json.dumps(asdict(a)))
    extra = [("engine", f"ray, {res.cluster}, {res.workers} workers ({len(res.worker_pids)} processes answered); "
                        f"run {res.run_id}"),
             ("throughput", f"{res.items_per_s:.1f} items/s ({res.elapsed_s:.1f} s)")]
    if split:  # a file's teacher answer is bought through the served-answer cache, not the labelling ledger
        extra.append(("teacher calls paid", f"{res.teacher_calls:,} (${res.teacher_usd:.4f})"))
    if res.parquet:
        extra.append(("parquet", res.parquet))
    console.print(f"model {res.version}  threshold {res.threshold:.4f}")
    if res.answers is None:  # a big run: the answers are in the Parquet file, not held in memory here
        extra = [("items", f"{res.n:,}"), *((f"answered by {k}", f"{v:,}") for k, v in res.by_source.items() if v),
                 ("errors", f"{res.errors:,}"), *extra]
        for k, v in extra:
            click.echo(f"{k}: {v}", err=True)
        return
    if split:
        with ws.store() as s:
            by_id = {it.id: it for it in s.items(dataset, split=split, limit=limit)}
        _print_split(dataset, split, res.version, [by_id[a.item_id] for a in answers], answers, show, extra)
        return
    for k, v in extra:
        click.echo(f"{k}: {v}", err=True)
    _print_file_answers([Path(a.path or "") for a in answers],
                        [ValueError(a.error) if a.error is not None else a for a in answers], False)
