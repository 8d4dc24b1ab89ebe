"""`flywheel calibrate`, `flywheel predict`: the calibrated cascade from the command line (`flywheel serve`: commands/serve.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.core.stats import accuracy_ci, pct
from llm_flywheel.interfaces.cli import Ctx, config_error, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import open_dataset

TEACHER_HELP = ("Teacher for deferred items: a spec such as openrouter:google/gemini-2.5-flash, ollama:MODEL, "
                "'http://HOST:PORT/v1|MODEL', or 'simulated' (starts the SIMULATED teacher on 127.0.0.1 for this "
                "command). Omitted: deferred items are reported as 'deferred' with no label.")


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


@contextlib.contextmanager
def _teacher(ws: Any, dataset: str, spec: str | None, api_key_env: str | None) -> Iterator[Any]:
    """The teacher a spec names (None without one); 'simulated' runs the simulated teacher for the command."""
    if not spec:
        yield None
        return
    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.openai_compat import TeacherConfigError
    from llm_flywheel.teachers.registry import teacher_from_spec

    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json(dataset))
    if spec == "simulated":
        from llm_flywheel.teachers.simulated import model_id, run_simulated_teacher

        with run_simulated_teacher(ws, dataset) as url:
            console.print(f"[yellow]SIMULATED teacher[/] (gold labels through an error model) at {url}")
            yield teacher_from_spec(f"{url}|{model_id(dataset)}", task, api_key_env="", workspace=ws)
        return
    try:
        t = teacher_from_spec(spec, task, api_key_env=api_key_env, workspace=ws)
        t.check_ready()
    except (TeacherConfigError, ValueError) as e:
        raise config_error(str(e)) from None
    yield t


# -- calibrate --------------------------------------------------------------------------------------------------------


@click.command(epilog="\b\nExamples:\n"
               "  flywheel calibrate fashion-mnist --target-accuracy 0.95 --delta 0.1\n"
               "  flywheel calibrate fashion-mnist --max-teacher-fraction 0.1\n"
               "  flywheel calibrate fashion-mnist --target-accuracy 0.9 --max-teacher-fraction 0.2\n"
               "  flywheel calibrate fashion-mnist --goal teacher-parity --delta 0.1\n\n"
               "The accuracy goal comes with a finite-sample guarantee: P(accuracy of student-answered items >= "
               "target) >= 1 - delta, where accuracy is agreement with the calib split's labels (teacher "
               "consensus, human corrections outranking it; --reference gold uses gold labels instead).")
@click.argument("dataset")
@click.option("--version", help="Model version (default: the serving model -- the promoted student, else the newest student; a gold-trained reference model only when named).")
@click.option("--goal", type=click.Choice(["teacher-parity"]), default=None,
              help="teacher-parity: cascade accuracy no lower than the teacher's single call (pass 0), guaranteed "
                   "at 1 - delta, judged against the teacher's independent pass 1 (every calib item needs one: "
                   "`flywheel label DATASET --split calib --fixed-passes`) or gold with --reference gold; a student "
                   "better than its teacher answers most items.")
@click.option("--target-accuracy", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Goal: accuracy on the items the student answers (0-1).")
@click.option("--delta", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Allowed probability that the accuracy guarantee fails.")
@click.option("--max-teacher-fraction", type=click.FloatRange(0, 1),
              help="Goal: at most this fraction of items sent to the teacher.")
@click.option("--reference", type=click.Choice(["labels", "gold"]), default="labels", show_default=True,
              help="What 'correct' means on the calib split: its teacher/human labels, or gold labels.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored report as JSON on stdout.")
@pass_ctx
def calibrate(ctx: Ctx, dataset: str, version: str | None, goal: str | None, target_accuracy: float | None,
              delta: float, max_teacher_fraction: float | None, reference: str, as_json: bool) -> None:
    """Fit the temperature and choose the cascade threshold of a model on DATASET's calib split.

    Prints the choice and writes the accuracy/coverage/cost curve PNG under the workspace's reports/.
    """
    from llm_flywheel.pipeline.calibration import calibrate as run_calibrate
    from llm_flywheel.pipeline.cascade import CascadeError, promoted_version
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.students.base import StudentError

    parity = goal == "teacher-parity"
    if parity and target_accuracy is not None:
        raise click.UsageError("give --goal teacher-parity or --target-accuracy, not both")
    if target_accuracy is None and max_teacher_fraction is None and not parity:
        from llm_flywheel.pipeline.flywheel import DEFAULT_MAX_TEACHER_FRACTION

        max_teacher_fraction = DEFAULT_MAX_TEACHER_FRACTION
        console.print(f"no goal given: at most {DEFAULT_MAX_TEACHER_FRACTION:.0%} of items go to the teacher "
                      f"(--max-teacher-fraction {DEFAULT_MAX_TEACHER_FRACTION:g}; always feasible)")
    ws = open_dataset(ctx, dataset)
    try:
        if version is None:
            with ws.store() as s:
                version = promoted_version(s, dataset)
        with console.status(f"calibrating {version} on the calib split"):
            rep = run_calibrate(ws, dataset, version, target_accuracy=target_accuracy, teacher_parity=parity,
                                max_teacher_fraction=max_teacher_fraction, delta=delta, reference=reference).to_dict()
    except (ValueError, StoreError, StudentError, CascadeError) as e:
        raise _fail(e) from None
    if as_json:
        click.echo(json.dumps(rep, indent=2, default=str))
        return
    ch = rep["choice"]
    t = Table(title=f"calibration of {version}", show_header=False)
    n_all = rep.get("n_calib_all", rep["n_calib"])
    t.add_row("calib items", f"{rep['n_calib']:,} with a reference label ({rep['reference_note']}); the teacher budget "
                             f"counts all {n_all:,}")
    t.add_row("temperature", f"{rep['temperature']:.3f}")
    t.add_row("ECE before → after", f"{rep['ece_before']:.4f} → {rep['ece_after']:.4f}")
    quality_goal = ch["goal"].startswith(("accuracy", "parity"))
    target = "teacher single-call accuracy" if ch["goal"].startswith("parity") else "target"
    t.add_row("goal", f"{ch['goal']}  {target} {ch['target']:.4g}" + (f", delta {ch['delta']:g}" if quality_goal else ""))
    t.add_row("threshold", "defer everything" if ch["threshold"] > 1 else f"{ch['threshold']:.4f}")
    t.add_row("student answers (calib)", pct(ch["coverage"]))
    against = "accuracy vs GOLD labels" if rep.get("reference") == "gold" else "agreement with TEACHER labels"
    t.add_row(f"{against} of those (calib)", pct(ch["accuracy_accepted"]))
    t.add_row(f"guaranteed lower bound ({1 - ch['delta']:.0%})", pct(ch["accuracy_bound"]))
    t.add_row("sent to the teacher (calib)", pct(ch["teacher_fraction"]))
    if ch.get("cascade_accuracy") is not None:
        ref = (rep.get("teacher_single_call") or {}).get("note") or "the reference labels"
        t.add_row("cascade vs teacher single call (calib)", f"{pct(ch['cascade_accuracy'])} vs {pct(ch['teacher_accuracy'])} ({ref})")
    t.add_row("feasible", "[green]yes[/]" if ch["feasible"] else "[red]NO[/]")
    t.add_row("note", ch["note"])
    t.add_row("curve", rep["plot"])
    console.print(t)
    if not ch["feasible"]:
        console.print("[bold red]WARNING[/] the goal cannot be met: every item the budget allows goes to the teacher "
                      "and no accuracy is guaranteed -- fix: a teacher budget (--max-teacher-fraction 0.1, always "
                      "feasible) or a --target-accuracy below the teacher's own accuracy")
    click.echo(rep["plot"])


# -- predict ----------------------------------------------------------------------------------------------------------


@click.command(epilog="\b\nExamples:\n"
               "  flywheel predict fashion-mnist shirt.png boot.jpg --teacher openrouter:google/gemini-2.5-flash\n"
               "  flywheel predict fashion-mnist --split stream --limit 1000 --teacher simulated\n"
               "  flywheel predict fashion-mnist --split stream --engine ray --parquet stream.parquet\n"
               "  flywheel predict fashion-mnist photos/ --engine ray --ray-address ray://head:10001\n"
               "  flywheel predict tickets --text 'my printer is on fire' --text 'refund please'\n\n"
               "Every answer is logged to the store's cascade_log (unless --no-log); deferred store items answered by "
               "the teacher are cached and become labels for the next round.  --engine ray (needs "
               "pip install 'llm-flywheel[ray]') answers on a Ray cluster's workers: RAY_ADDRESS / --ray-address, "
               "else a local cluster on 127.0.0.1 for the run; workers open the workspace's store themselves and "
               "read the teacher's key from their own environment.")
@click.argument("dataset")
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--text", "texts", multiple=True,
              help="A text to answer (text datasets; repeat for several), instead of or beside FILES.")
@click.option("--split", help="Answer the items of this split of the store instead of files (e.g. stream).")
@click.option("--limit", type=click.IntRange(min=1), help="With --split: at most this many items (by id).")
@click.option("--version", help="Model version (default: the serving model -- the promoted student, else the newest student; a gold-trained reference model only when named).")
@click.option("--teacher", "spec", default=None, help=TEACHER_HELP)
@click.option("--api-key-env", default=None, help="Environment variable holding the teacher's API key.")
@click.option("--threshold", type=float, help="Override the calibrated threshold (the guarantee no longer applies).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="Teacher calls in flight at once (per worker with --engine ray).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data over a cluster's workers (a split or FILES/folders).")
@click.option("--ray-address", default=None, help="--engine ray: the cluster to use (default: env RAY_ADDRESS, else a local one).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="--engine ray: worker actors, each loads the student once (default 2).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="--engine ray: items per batch (default 1000).")
@click.option("--parquet", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="--engine ray: also write every answer to this Parquet file (written when the run completes).")
@click.option("--no-log", is_flag=True, help="Do not log the answers to cascade_log.")
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="With --split: print the first N answers.")
@click.option("--json", "as_json", is_flag=True, help="Print every answer as a JSON line on stdout.")
@pass_ctx
def predict(ctx: Ctx, dataset: str, files: tuple[Path, ...], texts: tuple[str, ...], split: str | None,
            limit: int | None, version: str | None, spec: str | None, api_key_env: str | None,
            threshold: float | None, concurrency: int, engine: str, ray_address: str | None, workers: int | None,
            batch_size: int | None, parquet: Path | None, no_log: bool, show: int, as_json: bool) -> None:
    """Answer FILES or folders (or a split of the store) with the calibrated cascade of DATASET.

    Each answer says its label, source (student | teacher | teacher_failed | deferred), confidence and model version.
    """
    from llm_flywheel.pipeline.cascade import Cascade, CascadeError
    from llm_flywheel.pipeline.predict_files import expand_inputs
    from llm_flywheel.store.base import SPLITS, StoreError
    from llm_flywheel.students.base import StudentError

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
    inputs: list[Path | str] = [*expand_inputs(files), *texts]
    if (files or texts) and not inputs:
        raise click.UsageError("the folders given hold no files")
    ws = open_dataset(ctx, dataset)
    with _teacher(ws, dataset, spec, api_key_env) as teacher:
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
        answers = asyncio.run(_predict_inputs(casc, inputs, no_log))
    _print_file_answers(inputs, answers, as_json)


async def _predict_inputs(casc: Any, inputs: list[Path | str], no_log: bool) -> list[Any]:
    from llm_flywheel.pipeline.predict_files import answer_inputs

    try:
        return await answer_inputs(casc, inputs, log=not no_log, concurrency=16)
    finally:
        casc.close()


def _print_file_answers(inputs: list[Path | str], answers: list[Any], as_json: bool) -> None:
    t = Table(title="cascade answers")
    for col in ("input", "label", "source", "confidence", "student", "model version"):
        t.add_column(col)
    bad = 0
    for f, a in zip(inputs, answers):
        if isinstance(a, Exception):
            bad += 1
            t.add_row(escape(str(f)), f"[red]error: {a}[/]", "", "", "", "")
            if as_json:
                click.echo(json.dumps({_key(f): str(f), "error": str(a)}))
            continue
        t.add_row(escape(str(f)), str(a.label), a.source, f"{a.confidence:.3f}", f"{a.student_label} ({a.student_confidence:.3f})",
                  a.model_version)
        if as_json:
            click.echo(json.dumps({_key(f): str(f), **a.to_dict()}))
    console.print(t)
    if bad:
        raise click.ClickException(f"{bad} of {len(inputs)} inputs could not be read")


def _key(f: Path | str) -> str:
    """JSON key naming an input: 'file' for a path, 'text' for a --text."""
    return "text" if isinstance(f, str) else "file"


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
