"""`flywheel run`, `flywheel report` and `flywheel demo`: turning the whole wheel and showing what each turn paid."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.core.stats import pct

from llm_flywheel.interfaces.cli import EXIT_CODES_HELP, Ctx, ExitCode, FlywheelExit, config_error, console, pass_ctx, progress_enabled
from llm_flywheel.interfaces.cli.commands import open_dataset

def _wheel_options(f: Any) -> Any:
    opts = [
        click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Turns of the wheel."),
        click.option("--teacher", "teacher_spec", default=None,
                     help="Teacher spec: openrouter:MODEL, openai:MODEL, gemini:MODEL, azure:DEPLOYMENT, ollama:MODEL, or "
                          "'http://HOST:PORT/v1|MODEL'. Omit with --simulated to use the built-in simulated teacher."),
        click.option("--simulated", is_flag=True, help="Start the simulated teacher (loopback) for this dataset and use it."),
        click.option("--api-key-env", default=None,
                     help="Environment variable holding the teacher's API key (default: the provider's, e.g. "
                          "OPENROUTER_API_KEY; needed for a keyed endpoint given as a URL)."),
        click.option("--seed-labels", type=click.IntRange(0), default=None,
                     help="Train items labelled in round 1 (default: from the dataset size, see below)."),
        click.option("--val-labels", type=click.IntRange(1), default=500, show_default=True,
                     help="At most this many validation items labelled (promotion, early stopping)."),
        click.option("--calib-labels", type=click.IntRange(1), default=1000, show_default=True,
                     help="At most this many calibration items labelled (temperature, threshold)."),
        click.option("--per-round-budget", type=click.IntRange(0), default=None,
                     help="Teacher calls spent on actively selected items each round after the first "
                          "(default: from the dataset size, see below)."),
        click.option("--passes", type=click.IntRange(1), default=2, show_default=True, help="Teacher passes per training item."),
        click.option("--policy", type=click.Choice(["margin", "entropy", "qbc", "random"]), default="margin", show_default=True,
                     help="Active selection policy (random is the baseline)."),
        click.option("--first-round", type=click.Choice(["auto", "random"]), default="auto", show_default=True,
                     help="Round 1's new items: auto = chosen by --policy with the serving student when the dataset "
                          "has one (a re-run), else random; random = always the seeded random share."),
        click.option("--stream-per-round", type=click.IntRange(0), default=None,
                     help="Unseen stream items served through the cascade per round (default: the stream split / "
                          "rounds, at most 1,000)."),
        click.option("--test-limit", type=click.IntRange(1), default=None, help="Measure on at most N test items (default all)."),
        click.option("--student-kind", default=None,
                     help="Student kind (default: the task's default; images: image-cnn, with at most 3,000 labelled "
                          "train images image-pair: image-cnn and efficientnet-lite0, val keeps one or their "
                          "average)."),
        click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs (default: the student's)."),
        click.option("--unlabelled", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="Self-training: R unlabelled train items per labelled one, learnt from the first student's "
                          "predictions; val keeps whichever student scores higher (0: off; 2 costs ~4x the training)."),
        click.option("--target-accuracy", type=click.FloatRange(0, 1), default=None,
                     help="Cascade goal: agreement with TEACHER labels on student-accepted items (finite-sample "
                          "guarantee); infeasible above the teacher's own accuracy."),
        click.option("--max-teacher-fraction", type=click.FloatRange(0, 1), default=None,
                     help="Cascade goal: at most this fraction of items sent to the teacher (always feasible; the "
                          "default goal is 0.1 when no goal is given)."),
        click.option("--teacher-parity", is_flag=True,
                     help="Cascade goal: accuracy no lower than the teacher's single call, with probability >= "
                          "1 - delta (checked on the calib items against the teacher's independent pass 1, so calib "
                          "is asked every pass); add --max-teacher-fraction to cap the teacher's share too. Lets a "
                          "student better than its teacher answer almost everything."),
        click.option("--parity-reference", type=click.Choice(["labels", "review"]), default="labels",
                     show_default=True,
                     help="Who judges --teacher-parity: the teacher's pass 1 (labels), or a person (review) on the "
                          "calib items where the student and the teacher's first answer disagree -- proven much "
                          "sooner when the teacher's passes repeat each other's mistakes. The run stops with those "
                          "items queued (`flywheel review export|push`, then `review import|pull`, then re-run)."),
        click.option("--delta", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Risk level of the accuracy guarantee."),
        click.option("--audit-rate", type=click.FloatRange(0, 1), default=0.03, show_default=True,
                     help="Share of student-accepted stream items re-asked to the teacher to measure disagreement."),
        click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True, help="Concurrent teacher requests."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed (selection, sampling, training)."),
        click.option("--cpu-usd-per-hour", type=click.FloatRange(0), default=0.09, show_default=True,
                     help="Assumed price of the serving machine for the cost model."),
        click.option("--teacher-usd-per-hour", type=click.FloatRange(0), default=None,
                     help="Price of the teacher's machine, for a teacher with no token price (a local server): each "
                          "call costs its measured latency x this (default: --cpu-usd-per-hour)."),
        click.option("--batch", is_flag=True,
                     help="Label through the provider's Batch API (/v1/files + /v1/batches) at its batch price "
                          "(about half); slower: a batch may take hours. Stream deferrals stay online."),
        click.option("--batch-poll-s", type=click.FloatRange(0), default=30.0, show_default=True,
                     help="Seconds between batch status polls."),
        click.option("--no-gold-ceiling", is_flag=True, help="Skip training the gold-label ceiling at the end."),
        click.option("--no-progress", is_flag=True,
                     help="No progress output (otherwise: a bar on a terminal, plain lines in logs and pipes)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@contextlib.contextmanager
def wheel_teacher(ws: Any, dataset: str, spec: str | None, simulated: bool, api_key_env: str | None = None,
             **client: Any) -> Iterator[Any]:
    """Yield a teacher object: from the spec, or the simulated teacher started on 127.0.0.1 for the run."""
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.openai_compat import TeacherConfigError
    from llm_flywheel.teachers.registry import teacher_from_spec

    store = ws.store()
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
    except StoreError as e:
        raise config_error(str(e)) from None
    finally:
        store.close()
    if spec:
        try:
            t = teacher_from_spec(spec, task, api_key_env=api_key_env, **client)
            t.check_ready()  # a missing API key is reported before any work
        except (ValueError, TeacherConfigError) as e:
            raise config_error(str(e)) from None
        yield t
        return
    if not simulated:
        raise click.UsageError("give --teacher SPEC (e.g. openrouter:google/gemini-2.5-flash) or --simulated")
    from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

    sim = SimConfig()
    with run_simulated_teacher(ws, dataset, sim) as base_url:
        console.print(f"[yellow]simulated teacher[/] for {dataset} at {base_url} (answers from gold labels through an error model)")
        yield teacher_from_spec(f"{base_url}|{model_id(dataset, sim)}", task, api_key_env="")


def round_table(rounds: Sequence[dict[str, Any]], title: str = "flywheel rounds") -> Table:
    """The per-round table printed by `flywheel run` / `flywheel demo`."""
    t = Table(title=title)
    for col in ("round", "model", "promoted", "labels", "teacher calls", "teacher $", "student acc (gold test)",
                "cascade acc (gold test)", "teacher frac (stream)"):
        t.add_column(col, justify="right")

    def acc(d: dict[str, Any], k: str) -> str:
        v, ci = d.get(k), d.get(f"{k}_ci")
        if v is None:
            return "–"
        return f"{100 * v:.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * v:.1f} %"

    for d in rounds:
        t.add_row(str(d.get("round")), str(d.get("model_version") or "–"), "yes" if d.get("promoted") else "no",
                  f"{d.get('labels_total', 0):,}", f"{d.get('teacher_calls', 0):,}", f"{d.get('teacher_cost_usd') or 0:.4f}",
                  acc(d, "student_accuracy"), acc(d, "cascade_accuracy"), pct(d.get("teacher_fraction")))
    return t


def _parity_line(par: dict[str, Any]) -> str:
    """The headline: teacher spend until the cascade first matched the teacher's single call (both vs gold)."""
    if par.get("round") is None:
        return f"spend to parity: {par.get('note') or 'n/a'}"
    ci, tci = par.get("cascade_accuracy_ci"), par.get("teacher_accuracy_ci")
    return (f"[bold]spend to parity: ${par['spend_usd']:.2f}, {par['calls']:,} teacher calls[/] (round {par['round']}: "
            f"cascade {100 * par['cascade_accuracy']:.1f} %"
            + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
            + f" >= teacher single call {100 * par['teacher_accuracy']:.1f} %"
            + (f" [{100 * tci[0]:.1f}, {100 * tci[1]:.1f}]" if tci else "") + ", gold test)")


def print_final(ws: Any, dataset: str, page: Path) -> dict[str, Any]:
    summary = json.loads((page.parent / "summary.json").read_text())
    console.print(round_table(summary["rounds"], title=f"{dataset}: the wheel, round by round"))
    src = summary.get("teacher_source")

    def pct(k: str) -> str:
        v, ci = summary.get(k), summary.get(f"{k}_ci")
        if v is None:
            return "–"
        return f"{100 * v:.1f} % (95 % CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else f"{100 * v:.1f} %"

    lines = [
        _parity_line(summary.get("spend_to_parity") or {}),
        f"teacher: {src}" + (" (SIMULATED: answers from gold labels through an error model)" if src == "simulated" else ""),
        f"cascade goal: {summary.get('goal') or '–'}",
        f"teacher accuracy (single call vs gold, random val+calib items): {pct('teacher_accuracy')}",
        f"student accuracy on gold test (final round): {pct('final_student_accuracy')}",
        f"cascade accuracy on gold test (final round): {pct('final_cascade_accuracy')}",
        f"gold-label ceiling on gold test (same student, same items, gold labels): {pct('gold_ceiling_accuracy')}",
        "teacher fraction (stream, final round): "
        + ("n/a: the last round served no stream items (see the warnings)" if summary.get("final_teacher_fraction") is None
           else f"{100 * summary['final_teacher_fraction']:.1f} %"),
    ]
    na = summary.get("cost_not_available") or {}
    c1, c2, ratio, be = (summary.get(k) for k in ("cost_per_1k_teacher_only", "cost_per_1k_cascade", "cost_ratio", "breakeven_items"))
    if c1 is not None and c2 is not None:
        r = (na.get("cost_ratio", "ratio n/a") if ratio is None else f"{ratio:.1f}x cheaper" if ratio >= 1.05 else
             f"{ratio:.2f}x: no saving" if ratio >= 0.95 else f"{1 / ratio:.1f}x DEARER")
        lines.append(f"cost per 1,000 items: teacher everywhere ${c1:.4f}, cascade ${c2:.4f} ({r})")
        cost = summary.get("cost") or {}
        if ratio is not None and cost.get("cost_ratio_audited_at_upper") is not None:
            audit = cost.get("audit_rate") or 0.0
            audited = cost["cost_ratio_audited"] or ratio
            lines.append(f"  with the {100 * audit:g} % audit re-asks paid: {audited:.1f}x; "
                         f"at the teacher fraction's 95 % upper bound ({100 * cost['teacher_fraction_upper']:.1f} %): "
                         f"{cost['cost_ratio_audited_at_upper']:.1f}x")
        if summary.get("teacher_price_note"):
            lines.append(f"teacher price: {summary['teacher_price_note']}")
    elif na.get("cost"):
        lines.append(f"cost: {na['cost']}")
    if be is not None:
        lines.append(f"breakeven: {be:,.0f} items served pay back ${summary.get('labelling_spend_usd') or 0:.4f} of teacher labels")
    elif c1 is not None:
        lines.append(f"breakeven: {na.get('breakeven_items', 'never (the cascade saves nothing per item at this teacher fraction)')}")
    for ln in lines:
        console.print("  " + ln)
    for w in summary.get("warnings") or []:
        console.print(f"  [bold red]WARNING[/] {escape(str(w.get('message')))}\n"
                      f"    [bold]fix:[/] {escape(str(w.get('fix')))}")
    console.print(f"report: [bold]{page}[/]  (summary: {page.parent / 'summary.json'})")
    return summary


RUN_EPILOG = (
    "\b\nSizes left out are derived from the dataset (never assumed big):\n"
    "  the train pool is cut into rounds+1 shares (at most 500 items each); round 1 labels one share at random,\n"
    "  each later round selects one share (x --passes teacher calls); val and calib are labelled whole up to\n"
    "  --val-labels / --calib-labels; the stream split is divided evenly over the rounds (at most 1,000 per round).\n"
    "  Every accuracy printed says against what: agreement with TEACHER labels (val, calib) or accuracy on the\n"
    "  GOLD test split.  Anything infeasible or capped is printed as a WARNING with the flag that fixes it, and\n"
    "  is also in index.html and summary.json (\"warnings\").\n\n" + EXIT_CODES_HELP
)


def stopped_exit(e: Exception) -> FlywheelExit:
    kind = getattr(e, "kind", "")
    code = {"budget": ExitCode.BUDGET, "busy": ExitCode.ERROR, "review": ExitCode.INCOMPLETE}.get(
        kind, ExitCode.TEACHER_FAILED)
    return FlywheelExit(str(e), code)


@click.command(epilog=RUN_EPILOG)
@click.argument("dataset")
@_wheel_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cap on seconds per teacher request [default: adaptive, 4 x p95 of measured latency, 30-300 s].")
@click.option("--max-retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="Retries per teacher call on 429 / 5xx / timeouts / dropped connections.")
@click.option("--add-served", type=click.Choice(["all", "deferred"]), default=None,
              help="First import what `flywheel serve` kept for DATASET into its train split (all inputs, or only "
                   "those the cascade deferred), labelled with the answers serving bought from this --teacher: "
                   "no call is paid twice (as `flywheel data add-served`; a resumed run imports nothing).")
@click.option("--add-served-limit", type=click.IntRange(0), default=None,
              help="With --add-served: at most N new inputs per run, deferred first, then the most requested.")
@pass_ctx
def run(ctx: Ctx, dataset: str, teacher_spec: str | None, simulated: bool, no_gold_ceiling: bool,
        api_key_env: str | None, no_progress: bool, timeout: float | None, max_retries: int, **kw: Any) -> None:
    """Turn the wheel: select -> label -> train -> calibrate -> promote -> serve the stream -> collect, N rounds.

    Round 1 labels a random seed set plus the validation and calibration items (on a dataset that already has a
    serving student, the seed items not labelled yet are those it is least sure about); each later round spends
    --per-round-budget teacher calls on the items the current student is least sure about (--policy). Each round
    trains a new model version, promotes it unless it does worse than the serving one on validation (a tie goes to
    the newer), serves the next unseen slice of the stream split through the calibrated cascade and collects the
    feedback. Per-round metrics go to the store; the report is written at the end. Killed mid-way, the same command
    resumes (teacher answers are cached).

    \b
    Example:
      flywheel run fashion-mnist --rounds 3 --simulated
      flywheel run fashion-mnist --teacher openrouter:google/gemini-2.5-flash --max-teacher-fraction 0.05
      flywheel run mydata --teacher 'http://127.0.0.1:8080/v1|my-model' --api-key-env MY_KEY
      flywheel run tickets --teacher openrouter:google/gemini-2.5-flash --rounds 1 --add-served all   # nightly
    """
    from llm_flywheel.pipeline.flywheel import DEFAULT_MAX_TEACHER_FRACTION, WheelConfig, WheelStopped, run_wheel
    from llm_flywheel.interfaces.report import write_report
    from llm_flywheel.store.base import StoreError

    if kw["target_accuracy"] is None and kw["max_teacher_fraction"] is None and not kw["teacher_parity"]:
        kw["max_teacher_fraction"] = DEFAULT_MAX_TEACHER_FRACTION
        console.print(f"no cascade goal given: at most {DEFAULT_MAX_TEACHER_FRACTION:.0%} of items go to the teacher "
                      f"(--max-teacher-fraction {DEFAULT_MAX_TEACHER_FRACTION:g}; always feasible)")
    ws = open_dataset(ctx, dataset)  # `run` needs a dataset, so a missing workspace is a wrong --workspace
    if teacher_spec == "simulated":  # the spelling `label` / `predict` / `serve` accept
        teacher_spec, simulated = None, True
    try:
        cfg = WheelConfig(gold_ceiling=not no_gold_ceiling, **kw)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        with wheel_teacher(ws, dataset, teacher_spec, simulated, api_key_env, timeout=timeout,
                      max_retries=max_retries) as teacher:
            run_wheel(ws, dataset, teacher=teacher, config=cfg, progress=progress_enabled(no_progress), console=console)
    except WheelStopped as e:
        raise stopped_exit(e) from None
    except (StoreError, ValueError) as e:  # e.g. no val/calib split, an empty train pool
        raise config_error(str(e)) from None
    page = write_report(ws, dataset)
    print_final(ws, dataset, page)


@click.command()
@click.argument("dataset")
@click.option("--run-id", type=int, default=None, help="Report this wheel run (default: the latest for DATASET).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: the workspace's reports/).")
@pass_ctx
def report(ctx: Ctx, dataset: str, run_id: int | None, out_dir: Path | None) -> None:
    """Write reports/index.html (self-contained, plots embedded) and reports/summary.json for a wheel run."""
    from llm_flywheel.interfaces.report import ReportError, write_report

    ws = open_dataset(ctx, dataset)
    try:
        page = write_report(ws, dataset, run_id=run_id, out_dir=out_dir)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    print_final(ws, dataset, page)
