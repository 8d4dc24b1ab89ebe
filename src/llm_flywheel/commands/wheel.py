"""`flywheel run`, `flywheel report` and `flywheel demo`: turning the whole wheel and showing what each turn paid."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..cli import Ctx, console, pass_ctx

# The demo's sizes, chosen so 3 rounds on Fashion-MNIST finish well inside 15 minutes on 2 CPU cores with the
# native-resolution CNN; all choices are made on val/calib, test is only measured.
DEMO = dict(
    rounds=3,
    seed_labels=1500,
    val_labels=1000,
    calib_labels=2000,
    per_round_budget=4000,  # teacher calls per later round = 2,000 selected items x 2 passes
    passes=2,
    policy="margin",
    candidate_pool=10000,  # unlabelled pool items scored per selection
    stream_per_round=2000,
    test_limit=5000,  # Wilson 95 % CI about +-1 point; the whole wheel fits 15 min on 2 cores
    student_kind="image-cnn",
    epochs=20,
    target_accuracy=None,
    max_teacher_fraction=0.1,  # the goal: at most 10 % of items go to the teacher
    delta=0.1,
    audit_rate=0.03,
    concurrency=32,
    seed=0,
)
DEMO_IMPORT_LIMIT = None  # all 60,000 + 10,000 (the import takes well under a minute)


def _wheel_options(f: Any) -> Any:
    opts = [
        click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Turns of the wheel."),
        click.option("--teacher", "teacher_spec", default=None,
                     help="Teacher spec: openrouter:MODEL, openai:MODEL, gemini:MODEL, ollama:MODEL, or "
                          "'http://HOST:PORT/v1|MODEL'. Omit with --simulated to use the built-in simulated teacher."),
        click.option("--simulated", is_flag=True, help="Start the simulated teacher (loopback) for this dataset and use it."),
        click.option("--seed-labels", type=click.IntRange(0), default=500, show_default=True,
                     help="Random train items labelled in round 1."),
        click.option("--val-labels", type=click.IntRange(1), default=500, show_default=True,
                     help="Validation items labelled (promotion, early stopping)."),
        click.option("--calib-labels", type=click.IntRange(1), default=1000, show_default=True,
                     help="Calibration items labelled (temperature, threshold)."),
        click.option("--per-round-budget", type=click.IntRange(0), default=1000, show_default=True,
                     help="Teacher calls spent on actively selected items each round after the first."),
        click.option("--passes", type=click.IntRange(1), default=2, show_default=True, help="Teacher passes per training item."),
        click.option("--policy", type=click.Choice(["margin", "entropy", "qbc", "random"]), default="margin", show_default=True,
                     help="Active selection policy (random is the baseline)."),
        click.option("--stream-per-round", type=click.IntRange(0), default=1000, show_default=True,
                     help="Unseen stream items served through the cascade per round."),
        click.option("--test-limit", type=click.IntRange(1), default=None, help="Measure on at most N test items (default all)."),
        click.option("--student-kind", default=None, help="Student kind (default: the task's default, e.g. image-cnn)."),
        click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs (default: the student's)."),
        click.option("--target-accuracy", type=click.FloatRange(0, 1), default=None,
                     help="Cascade goal: accuracy on student-accepted items (with a finite-sample guarantee)."),
        click.option("--max-teacher-fraction", type=click.FloatRange(0, 1), default=None,
                     help="Cascade goal: at most this fraction of items sent to the teacher."),
        click.option("--delta", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Risk level of the accuracy guarantee."),
        click.option("--audit-rate", type=click.FloatRange(0, 1), default=0.03, show_default=True,
                     help="Share of student-accepted stream items re-asked to the teacher to measure disagreement."),
        click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True, help="Concurrent teacher requests."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed (selection, sampling, training)."),
        click.option("--cpu-usd-per-hour", type=click.FloatRange(0), default=0.09, show_default=True,
                     help="Assumed price of the serving machine for the cost model (the only assumed number)."),
        click.option("--no-gold-ceiling", is_flag=True, help="Skip training the gold-label ceiling at the end."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@contextlib.contextmanager
def _teacher(ws: Any, dataset: str, spec: str | None, simulated: bool) -> Iterator[Any]:
    """Yield a teacher object: from the spec, or the simulated teacher started on 127.0.0.1 for the run."""
    from ..task import Task
    from ..teachers.registry import teacher_from_spec

    store = ws.store()
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
    finally:
        store.close()
    if spec:
        yield teacher_from_spec(spec, task)
        return
    if not simulated:
        raise click.UsageError("give --teacher SPEC (e.g. openrouter:google/gemini-2.5-flash) or --simulated")
    from ..teachers.simulated import SimConfig, model_id, run_simulated_teacher

    sim = SimConfig()
    with run_simulated_teacher(ws, dataset, sim) as base_url:
        console.print(f"[yellow]simulated teacher[/] for {dataset} at {base_url} (answers from gold labels through an error model)")
        yield teacher_from_spec(f"{base_url}|{model_id(dataset, sim)}", task, api_key_env="")


def _print_final(ws: Any, dataset: str, page: Path) -> dict[str, Any]:
    from ..flywheel import round_table

    summary = json.loads((page.parent / "summary.json").read_text())
    console.print(round_table(summary["rounds"], title=f"{dataset}: the wheel, round by round"))
    src = summary.get("teacher_source")

    def pct(k: str) -> str:
        v, ci = summary.get(k), summary.get(f"{k}_ci")
        if v is None:
            return "–"
        return f"{100 * v:.1f} % (95 % CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else f"{100 * v:.1f} %"

    lines = [
        f"teacher: {src}" + (" (SIMULATED: answers from gold labels through an error model)" if src == "simulated" else ""),
        f"teacher accuracy (single call, random val+calib items): {pct('teacher_accuracy')}",
        f"student accuracy (test, final round): {pct('final_student_accuracy')}",
        f"cascade accuracy (test, final round): {pct('final_cascade_accuracy')}",
        f"gold-label ceiling (same student, same items): {pct('gold_ceiling_accuracy')}",
        "teacher fraction (stream, final round): "
        + ("–" if summary.get("final_teacher_fraction") is None else f"{100 * summary['final_teacher_fraction']:.1f} %"),
    ]
    c1, c2, ratio, be = (summary.get(k) for k in ("cost_per_1k_teacher_only", "cost_per_1k_cascade", "cost_ratio", "breakeven_items"))
    if c1 is not None and c2 is not None:
        lines.append(f"cost per 1,000 items: teacher everywhere ${c1:.4f}, cascade ${c2:.4f} ({ratio:.1f}x cheaper)")
    if be is not None:
        lines.append(f"breakeven: {be:,.0f} items served pay back ${summary.get('labelling_spend_usd') or 0:.4f} of teacher labels")
    elif c1 is not None:
        lines.append("breakeven: never (the cascade saves nothing per item at this teacher fraction)")
    for ln in lines:
        console.print("  " + ln)
    console.print(f"report: [bold]{page}[/]  (summary: {page.parent / 'summary.json'})")
    return summary


@click.command()
@click.argument("dataset")
@_wheel_options
@pass_ctx
def run(ctx: Ctx, dataset: str, teacher_spec: str | None, simulated: bool, no_gold_ceiling: bool, **kw: Any) -> None:
    """Turn the wheel: select -> label -> train -> calibrate -> promote -> serve the stream -> collect, N rounds.

    Round 1 labels a random seed set plus the validation and calibration items; each later round spends
    --per-round-budget teacher calls on the items the current student is least sure about (--policy). Each round
    trains a new model version, promotes it only if it beats the serving one on validation, serves the next unseen
    slice of the stream split through the calibrated cascade and collects the feedback. Per-round metrics go to the
    store; the report is written at the end. Killed mid-way, the same command resumes (teacher answers are cached).

    \b
    Example:
      flywheel run fashion-mnist --rounds 3 --simulated --target-accuracy 0.9
      flywheel run fashion-mnist --teacher openrouter:google/gemini-2.5-flash --max-teacher-fraction 0.1
    """
    from ..flywheel import WheelConfig, run_wheel
    from ..report import write_report

    if kw["target_accuracy"] is None and kw["max_teacher_fraction"] is None:
        kw["target_accuracy"] = 0.9
        console.print("no cascade goal given: using --target-accuracy 0.9")
    ws = ctx.workspace()
    try:
        cfg = WheelConfig(gold_ceiling=not no_gold_ceiling, **kw)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    with _teacher(ws, dataset, teacher_spec, simulated) as teacher:
        run_wheel(ws, dataset, teacher=teacher, config=cfg)
    page = write_report(ws, dataset)
    _print_final(ws, dataset, page)


@click.command()
@click.argument("dataset")
@click.option("--run-id", type=int, default=None, help="Report this wheel run (default: the latest for DATASET).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: the workspace's reports/).")
@pass_ctx
def report(ctx: Ctx, dataset: str, run_id: int | None, out_dir: Path | None) -> None:
    """Write reports/index.html (self-contained, plots embedded) and reports/summary.json for a wheel run."""
    from ..report import ReportError, write_report

    ws = ctx.workspace(create=False)
    try:
        page = write_report(ws, dataset, run_id=run_id, out_dir=out_dir)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    _print_final(ws, dataset, page)


@click.command()
@click.option("--teacher", "teacher_spec", default=None,
              help="Use a real teacher instead of the simulated one, e.g. openrouter:google/gemini-2.5-flash "
                   "(needs OPENROUTER_API_KEY).")
@click.option("--rounds", type=click.IntRange(1), default=DEMO["rounds"], show_default=True, help="Turns of the wheel.")
@click.option("--path", "fmnist_path", default=None, help="Folder with the Fashion-MNIST idx files (default: Debian's).")
@click.option("--limit", type=click.IntRange(1), default=DEMO_IMPORT_LIMIT, help="Import only the first N items per source split.")
@pass_ctx
def demo(ctx: Ctx, teacher_spec: str | None, rounds: int, fmnist_path: str | None, limit: int | None) -> None:
    """The whole wheel on Fashion-MNIST, 3 rounds, simulated teacher (or --teacher), in minutes on 2 CPU cores.

    Imports Fashion-MNIST from the Debian package dataset-fashion-mnist, starts the simulated teacher on 127.0.0.1
    (unless --teacher), turns the wheel, prints the per-round table and the headline numbers, and writes the report.
    Re-running resumes / reuses everything already paid for.
    """
    from ..data.registry import add_dataset
    from ..flywheel import WheelConfig, run_wheel
    from ..report import write_report

    t0 = time.perf_counter()
    ws = ctx.workspace()
    console.print(f"workspace: {ws.root}")
    rep = add_dataset(ws, "fashion-mnist", path=fmnist_path, limit=limit)
    console.print(rep.summary())
    cfg = WheelConfig(**(DEMO | {"rounds": rounds}))
    with _teacher(ws, "fashion-mnist", teacher_spec, simulated=teacher_spec is None) as teacher:
        run_wheel(ws, "fashion-mnist", teacher=teacher, config=cfg)
    page = write_report(ws, "fashion-mnist")
    _print_final(ws, "fashion-mnist", page)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
