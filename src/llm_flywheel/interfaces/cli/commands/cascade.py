"""`flywheel calibrate`, `flywheel predict`: the calibrated cascade from the command line (`flywheel serve`: commands/serve.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.core.stats import pct
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
@click.option("--reference", type=click.Choice(["labels", "gold", "review"]), default="labels", show_default=True,
              help="What 'correct' means on the calib split: its teacher/human labels, or gold labels; review "
                   "(with --goal teacher-parity): a person's label on each calib item where the student and the "
                   "teacher's first answer disagree (those not yet reviewed are queued for `flywheel review`).")
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
    single = rep.get("teacher_single_call") or {}
    if ch.get("target") is None and "reviewed" in single:  # parity judged by review: ties give no accuracy
        what = (f"judged by people on {single['reviewed']:,} calib disagreements: student alone right on "
                f"{single['student_only_right']:,}, teacher alone on {single['teacher_only_right']:,}")
    else:
        what = f"{target} {ch['target']:.4g}" if ch.get("target") is not None else target
    t.add_row("goal", f"{ch['goal']}  {what}" + (f", delta {ch['delta']:g}" if quality_goal else ""))
    t.add_row("threshold", "defer everything" if ch["threshold"] > 1 else f"{ch['threshold']:.4f}")
    t.add_row("student answers (calib)", pct(ch["coverage"]))
    against = ("accuracy vs GOLD labels" if rep.get("reference") == "gold" else
               "agreement with TEACHER labels (human outranks)" if rep.get("reference") == "review" else
               "agreement with TEACHER labels")
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
    for w in rep.get("warnings") or []:
        console.print(f"[bold red]WARNING[/] {escape(w['message'])} -- fix: {escape(w['fix'])}")
    click.echo(rep["plot"])


@click.command()
@click.argument("dataset")
@click.argument("version")
@pass_ctx
def promote(ctx: Ctx, dataset: str, version: str) -> None:
    """Make VERSION (a calibrated student) DATASET's serving model: the default of calibrate, predict and serve, and
    what a running `flywheel serve` swaps in within --follow-promoted seconds.  The wheel promotes on its own."""
    from llm_flywheel.pipeline.training import promote_model
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.students.base import StudentError

    ws = open_dataset(ctx, dataset)
    try:
        before = promote_model(ws, dataset, version)
    except (StoreError, StudentError) as e:
        raise _fail(e) from None
    was = f" (was {before})" if before and before != version else ""
    console.print(f"promoted {version}{was}: the serving model of {dataset}; a running `flywheel serve` swaps it in "
                  "at its next check")
