"""`flywheel label`: k-pass teacher labelling with cache, resume, rate limit and budget -- online, or through the
provider's Batch API at the batch price (``--batch``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.core.task import Task
from llm_flywheel.interfaces.cli import (
    EXIT_CODES_HELP,
    Ctx,
    ExitCode,
    FlywheelExit,
    config_error,
    console,
    label_exit_code,
    no_progress_option,
    pass_ctx,
    progress_enabled,
)
from llm_flywheel.interfaces.cli.commands import calibration_text, open_workspace
from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
from llm_flywheel.pipeline.batch_plan import plan_both
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.store.base import StoreError
from llm_flywheel.teachers.openai_compat import TeacherConfigError
from llm_flywheel.teachers.registry import parse_spec, teacher_from_spec

DEFAULT_TEACHER = "openrouter:google/gemini-2.5-flash"


def _ids(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(x) for x in value.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give item ids separated by commas, e.g. 1,2,3") from None


def _money(v: Any, digits: int = 4) -> str:
    return "unknown" if v is None else f"${v:,.{digits}f}"


@click.command(
    epilog="\b\nTeacher specs:\n"
    "  openrouter:google/gemini-2.5-flash   (key in $OPENROUTER_API_KEY; the default)\n"
    "  openai:gpt-4o-mini                   (key in $OPENAI_API_KEY)\n"
    "  gemini:gemini-2.5-flash              (key in $GEMINI_API_KEY)\n"
    "  ollama:llama3.2-vision | vllm:MODEL | llamacpp:MODEL   (local, no key)\n"
    "  http://127.0.0.1:8111/v1|simulated/fashion-mnist-teacher   (any OpenAI-compatible URL,\n"
    "                                       e.g. `flywheel teacher simulate`)\n"
    "  simulated                            (or --simulated: the SIMULATED teacher on 127.0.0.1 for this\n"
    "                                       command, answering from the gold labels through an error model)\n\n"
    "\b\nExamples:\n"
    "  flywheel label fashion-mnist --limit 1500 --plan\n"
    "  flywheel label fashion-mnist --limit 1500 --budget-usd 0.50 --concurrency 32\n"
    "  flywheel label fashion-mnist --limit 1500 --batch --budget-usd 0.25   (Batch API, about half price)\n\n"
    "Every answer is stored before it is used: re-running makes no new calls, a killed run resumes, failed calls "
    "(network, unparseable) are retried on the next run. Disagreeing passes get a tie-break pass and are queued "
    "for `flywheel review export`.\n\n"
    "--batch submits through the provider's Batch API (/v1/files + /v1/batches; OpenAI-style): answers can take up "
    "to 24 h and cost --batch-price-ratio of the online price. A killed run resumes polling its batches and never "
    "submits the same lines twice; failed lines go into a follow-up batch.\n\n" + EXIT_CODES_HELP,
)
@click.argument("dataset")
@click.option("--split", default="train,val,calib", show_default=True,
              help="Which split(s) to label, comma separated: train (the pool the student learns from), val "
                   "(choosing the model), calib (the cascade's threshold); test stays for measurement; 'all' for "
                   "every item.")
@click.option("--limit", type=click.IntRange(min=1), help="Label the first N items of the split (by id).")
@click.option("--ids", help="Label exactly these item ids (comma separated) instead of a split.")
@click.option("--teacher", "spec", default=DEFAULT_TEACHER, show_default=True, help="Teacher spec (see below).")
@click.option("--simulated", is_flag=True,
              help="Start the simulated teacher (loopback) for this dataset and use it (same as --teacher simulated).")
@click.option("--api-key-env", default=None,
              help="Environment variable holding the API key (default: the provider's, e.g. OPENROUTER_API_KEY).")
@click.option("--passes", type=click.IntRange(min=1), default=2, show_default=True, help="Diverse passes per item (k).")
@click.option("--no-tie-break", is_flag=True, help="Do not ask an extra pass where the passes disagree.")
@click.option("--fixed-passes", is_flag=True,
              help="Ask every item all k passes (default for k>=2: every pass for a calibration sample, then later "
                   "passes only where the first answer is less certain than a cutoff learnt from it).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="Calls in flight at once.")
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="At most this many requests per minute.")
@click.option("--budget-usd", type=click.FloatRange(min=0), help="Stop before spending more than this (USD).")
@click.option("--max-calls", type=click.IntRange(min=0), help="Stop before making more than this many calls.")
@click.option("--timeout", type=float, default=None,
              help="Cap on seconds per request [default: adaptive -- 4 x the p95 of measured latency, at least 30 s, "
                   "at most 300 s].")
@click.option("--max-retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="Retries per call on 429 / 5xx / timeouts / dropped connections. Never on other 4xx; a refused "
                   "connection, an unknown host, 401/403 or 404 stops the run instead (see exit codes).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print calls needed and the estimated cost online and through the Batch API; make no call.")
@click.option("--batch", "use_batch", is_flag=True,
              help="Submit through the provider's Batch API (cheaper, slower: each round of passes is a batch).")
@click.option("--batch-price-ratio", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Batch price / online price, used where the provider reports no cost per answer.")
@click.option("--batch-poll-s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="Seconds between batch polls.")
@click.option("--batch-wait-s", type=click.FloatRange(min=0), default=None,
              help="Stop waiting after this many seconds (the batch keeps running; re-run to collect it) "
                   "[default: wait until it ends].")
@click.option("--cancel-batches", is_flag=True,
              help="First cancel this teacher's Batch API jobs still running (what they answered is kept, the rest "
                   "is asked by this run): for labels now instead of within 24 h.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@no_progress_option
@pass_ctx
def label(ctx: Ctx, dataset: str, split: str, limit: int | None, ids: str | None, spec: str, simulated: bool,
          api_key_env: str | None, passes: int, no_tie_break: bool, fixed_passes: bool, concurrency: int,
          rpm: float | None, budget_usd: float | None,
          max_calls: int | None, timeout: float | None, max_retries: int, plan_only: bool, use_batch: bool,
          batch_price_ratio: float, batch_poll_s: float, batch_wait_s: float | None, cancel_batches: bool,
          as_json: bool, no_progress: bool) -> None:
    """Label DATASET items with an LLM teacher: k diverse passes -> consensus label + quality, cached in the store."""
    simulated = simulated or spec == "simulated"
    try:
        if not simulated:
            parse_spec(spec)  # a typo in the spec is reported before anything else
    except TeacherConfigError as e:
        raise config_error(str(e)) from None
    ws = open_workspace(ctx)
    item_ids = _ids(ids)
    store = ws.store()
    try:
        try:
            task = Task.from_json(store.dataset_task_json(dataset))
        except StoreError as e:
            raise config_error(str(e)) from None
        if item_ids is None:
            parts = [p.strip() for p in split.split(",") if p.strip()]
            items = store.items(dataset, split=None if split == "all" else parts, limit=limit)
            if not items:
                raise click.ClickException(
                    f"no items in dataset {dataset!r} split {split!r} (splits are made by `flywheel data add`; "
                    f"use --split all to ignore them)")
            item_ids = [it.id for it in items]
    finally:
        store.close()
    try:  # the configs check their values too (a message, exit 2, not a traceback)
        cfg = LabelConfig(passes=passes, concurrency=concurrency, rpm=rpm, budget_usd=budget_usd,
                          max_calls=max_calls, tie_break=not no_tie_break, adaptive_passes=not fixed_passes)
        bcfg = BatchConfig(price_ratio=batch_price_ratio, poll_s=batch_poll_s, wait_s=batch_wait_s)
    except ValueError as e:
        raise config_error(str(e)) from None
    with _simulated_spec(ws, dataset, spec, simulated) as teacher_spec:
        _label(ws, dataset, item_ids, task, teacher_spec, api_key_env, timeout, max_retries, plan_only, use_batch,
               as_json, no_progress, cfg, bcfg, cancel_batches)


@contextlib.contextmanager
def _simulated_spec(ws: Any, dataset: str, spec: str, simulated: bool) -> Iterator[str]:
    """``spec`` as given, or (--simulated / --teacher simulated) the spec of the simulated teacher started on
    127.0.0.1 for this command and stopped after it, like `flywheel run --simulated` and `predict --teacher simulated`."""
    if not simulated:
        yield spec
        return
    from llm_flywheel.teachers.simulated import model_id, run_simulated_teacher

    with run_simulated_teacher(ws, dataset) as url:
        yield f"{url}|{model_id(dataset)}"


def _label(ws: Any, dataset: str, item_ids: list[int], task: Task, spec: str, api_key_env: str | None,
           timeout: float | None, max_retries: int, plan_only: bool, use_batch: bool, as_json: bool,
           no_progress: bool, cfg: LabelConfig, bcfg: BatchConfig, cancel_batches: bool = False) -> None:
    """Plan, then label (online or through the Batch API), print, exit with the documented code."""
    try:
        teacher = teacher_from_spec(spec, task, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries)
    except (ValueError, TeacherConfigError) as e:
        raise config_error(str(e)) from None
    if teacher.is_simulated:
        console.print("[bold yellow]SIMULATED teacher[/]: answers come from gold labels through an error model, "
                      "not from an LLM.")
    if cancel_batches and not plan_only:
        _cancel_batches(ws, dataset, teacher, bcfg, no_progress)
    try:
        p = plan_both(ws, dataset, item_ids, teacher, cfg, bcfg)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    _print_plan(p, use_batch)
    if plan_only:
        if as_json:
            click.echo(json.dumps(p, indent=2, default=str))
        return
    try:
        if use_batch:
            res = label_items_batch(ws, dataset, item_ids, teacher, cfg, bcfg, progress=progress_enabled(no_progress))
        else:
            res = label_items(ws, dataset, item_ids, teacher, cfg, progress=progress_enabled(no_progress))
    except TeacherConfigError as e:
        raise config_error(str(e)) from None
    except KeyboardInterrupt:  # Ctrl-C: click would print a bare "Aborted!"
        how = "its batches are polled, not submitted again" if use_batch else "nothing is asked twice"
        raise FlywheelExit(f"interrupted: every teacher answer received so far is stored; run the same command again "
                           f"to resume ({how}).", ExitCode.ERROR) from None
    code = _print_result(res, teacher.display_name, dataset)
    code = _warn_off_list(res, task, spec, dataset, code)
    for w in res.warnings:
        console.print(f"[bold yellow]warning[/]: {escape(w['message'])}; {escape(w['fix'])}")
    _print_quality(ws, dataset, teacher.model)
    if as_json:
        click.echo(json.dumps(res.to_dict() | {"exit_code": int(code)}, indent=2, default=str))
    if code:
        raise SystemExit(int(code))


def _cancel_batches(ws: Any, dataset: str, teacher: Any, bcfg: BatchConfig, no_progress: bool) -> None:
    """``--cancel-batches``: cancel and collect this teacher's open batches, say what that kept and left."""
    from llm_flywheel.pipeline.batch_cancel import cancel_open_batches
    from llm_flywheel.teachers.batch import BatchAPIError

    try:
        r = cancel_open_batches(ws, dataset, teacher, poll_s=min(bcfg.poll_s, 5.0),
                                progress=progress_enabled(no_progress))
    except BatchAPIError as e:
        raise FlywheelExit(f"could not cancel the open batches at {teacher.base_url}: {e}; nothing was collected, "
                           f"re-run to try again", ExitCode.TEACHER_FAILED) from None
    kept = r.calls_made - r.lines_failed
    console.print(f"cancelled {r.batches_resumed} open batch(es): kept {kept} answer(s) they had finished "
                  f"({_money(r.cost_usd)}); {r.lines_failed} request(s) they had not answered are asked again"
                  + (f"; {r.batches_pending} still cancelling (re-run to collect them)" if r.batches_pending else ""),
                  highlight=False)


def _print_result(res: Any, teacher_name: str, dataset: str) -> int:
    """The run's table and why it stopped; its exit code."""
    t = Table(title=f"labelling {dataset} with {teacher_name}" + (" via the Batch API" if _is_batch(res) else ""))
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [("items", res.items), ("calls made", res.calls_made), ("answers reused from cache", res.answers_cached),
            ("tie-break calls", res.tie_break_calls), ("cost", _money(res.cost_usd)),
            ("labelled (agreed / tie-broken / single)", f"{res.labelled} ({res.agreed} / {res.tie_broken} / {res.single})"),
            ("disagreed (no majority, queued)", res.disagreed), ("queued for review", res.queued_for_review),
            ("failed calls (re-asked once; still failing -> next run)", res.failed), ("off-list answers", res.off_list),
            ("no answer yet", res.unlabelled), ("elapsed", f"{res.elapsed_s:.1f}s")]
    if _is_batch(res):
        rows[4] = ("cost (batch price)", f"{_money(res.cost_usd)} ({res.price_ratio:g} x online)")
        counts = f"{res.batches_submitted} / {res.batches_resumed} / {res.batches_pending}"
        rows += [("batches submitted / resumed / still running", counts),
                 ("batch requests submitted", res.lines_submitted)]
    if getattr(res, "reused_from_serving", 0):
        rows.insert(3, ("of those, first passes `flywheel serve` had bought", res.reused_from_serving))
    if getattr(res, "answered_elsewhere", 0):
        rows.insert(3, ("answers another run bought meanwhile (not paid again)", res.answered_elsewhere))
    if getattr(res, "in_open_batch", 0):
        rows.insert(3, ("calls left to an open Batch API job (not bought online)", res.in_open_batch))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    if res.errors:
        console.print("errors by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(res.errors.items())))
    code = label_exit_code(res)
    if res.stopped_reason:
        why = getattr(res, "stopped_message", None) or res.stopped_reason
        tail = "" if "re-run" in str(why).lower() else " Re-run to continue; nothing is asked twice."
        console.print(f"[bold red]stopped early[/]: {str(why).rstrip('.')}.{tail}")
    elif _is_batch(res) and res.batches_pending:  # the result's warning says so and names the fix
        code = ExitCode.INCOMPLETE
    elif code == ExitCode.INCOMPLETE and res.failed and res.unlabelled:  # else: left to a batch (a warning says)
        console.print(f"[bold yellow]incomplete[/]: {res.unlabelled} item(s) have no teacher answer yet ({res.failed} "
                      f"failed call(s)); re-run the same command to retry them (answers already stored cost nothing).")
    return int(code)


def _warn_off_list(res: Any, task: Task, spec: str, dataset: str, code: int) -> int:
    """Answers naming labels outside the task's list usually mean the task's label names or instructions do not
    fit the teacher: say so with the fix.  Nothing labelled and only off-list answers is a failure (exit 1), not 0."""
    if not res.off_list or 2 * res.off_list < res.calls_made:
        return code
    console.print(
        f"[bold yellow]warning[/]: {res.off_list} of {res.calls_made} answers named a label outside the task's list "
        f"({', '.join(task.labels)}). Fix: give the labels names and descriptions the teacher will use (the task "
        f"TOML's [labels]) or another model; `flywheel teacher check '{spec}' --dataset {dataset}` shows one raw answer.",
        highlight=False)
    return ExitCode.ERROR if code == ExitCode.OK and res.labelled == 0 else code


def _is_batch(res: Any) -> bool:
    return hasattr(res, "batches_submitted")


def _print_quality(ws: Any, dataset: str, model: str) -> None:
    """Where gold labels exist, measure the teacher right away (stored as a teacher_quality report)."""
    from llm_flywheel.pipeline.quality import teacher_quality

    try:
        q = teacher_quality(ws, dataset, model=model)
    except ValueError:
        return
    if not q["n"]:
        return
    lo, hi = q["ci95"]
    sim = " [SIMULATED: a parameter of the error model]" if q["simulated"] else ""
    console.print(f"teacher vs gold: per-answer accuracy {q['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={q['n']}), "
                  f"{calibration_text(q)}{sim}; details: `flywheel teacher quality {dataset}`")


def _print_plan(p: dict[str, Any], use_batch: bool = False) -> None:
    t = Table(title=f"plan: {p['dataset']} with {p['model']}" + (" (SIMULATED)" if p["simulated"] else ""))
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [("items", p["items"]), ("passes", p["passes"]), ("calls already cached", p["calls_cached"]),
            *([("calls in an open Batch API job (paid when it is collected)", p["calls_in_open_batch"])]
              if p.get("calls_in_open_batch") else []),
            ("calls needed", p["calls_needed"]),
            ("tie-break calls (expected / at most)", f"{p['tie_break_calls_expected']} / {p['tie_break_calls_max']}"),
            ("estimated cost per call online / batch", (f"{_money(p['est_cost_per_call_usd'], 7)} / "
             f"{_money(p['est_cost_per_call_batch_usd'], 7)} ({p['price_source']}; batch {p['price_ratio']:g} x online)")),
            ("estimated cost online (expected / at most)" + ("" if use_batch else "  <- this run"),
             f"{_money(p['est_cost_usd'])} / {_money(p['est_cost_usd_max'])}"),
            ("estimated cost via --batch (expected / at most)" + ("  <- this run" if use_batch else ""),
             f"{_money(p['est_cost_batch_usd'])} / {_money(p['est_cost_batch_usd_max'])}"),
            ("estimated tokens in / out", f"{p['est_tokens_in']:,} / {p['est_tokens_out']:,}")]
    if p.get("texts_cut"):
        rows.append((f"texts cut to the {p['text_max_chars']:,} characters a teacher is sent", p["texts_cut"]))
    if p["budget_usd"] is not None:
        rows.append(("budget", f"${p['budget_usd']:g}" + ("" if p["fits_budget"] in (None, True) else " (will stop early)")))
    if p["max_calls"] is not None:
        rows.append(("call cap", p["max_calls"]))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    if p.get("estimate_note"):
        console.print(f"note: {escape(p['estimate_note'])}")
