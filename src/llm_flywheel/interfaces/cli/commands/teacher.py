"""`flywheel teacher simulate | quality | check`."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.interfaces.cli import Ctx, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import calibration_text, open_dataset
from llm_flywheel.store.base import StoreError
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.base import TeacherAnswer
from llm_flywheel.teachers.openai_compat import TeacherConfigError, run_sync
from llm_flywheel.teachers.registry import teacher_from_spec


@click.group()
def teacher() -> None:
    """Teachers: run the simulated one, measure a teacher against gold labels, check an endpoint."""


@teacher.command(epilog="\b\nThen label with it:\n"
                 "  flywheel label fashion-mnist --teacher 'http://127.0.0.1:8111/v1|simulated/fashion-mnist-teacher'\n\n"
                 "The simulated teacher listens on 127.0.0.1 only. It answers from the dataset's GOLD labels through "
                 "an explicit error model (look-alike confusions, over-confident confidence, ~1% malformed replies "
                 "and 429s, lognormal latency, Gemini-2.5-Flash-like token usage and cost). Results obtained with it "
                 "are simulated, and every report says so.")
@click.option("--dataset", required=True, help="Dataset in the workspace whose gold labels the simulator uses.")
@click.option("--port", type=int, default=8111, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--accuracy", type=float, default=0.85, show_default=True, help="Mean per-pass accuracy of the error model.")
@click.option("--latency-ms", type=float, default=200.0, show_default=True, help="Median latency (lognormal; 0: none).")
@click.option("--malformed-rate", type=float, default=0.01, show_default=True, help="Share of malformed replies.")
@click.option("--rate-429", type=float, default=0.01, show_default=True, help="Share of 429 responses (with Retry-After).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the error model.")
@pass_ctx
def simulate(ctx: Ctx, dataset: str, port: int, accuracy: float, latency_ms: float, malformed_rate: float,
             rate_429: float, seed: int) -> None:
    """Run the SIMULATED OpenAI-compatible teacher in the foreground (Ctrl-C to stop)."""
    import threading

    from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

    ws = ctx.workspace(create=False)
    try:
        cfg = SimConfig(accuracy=accuracy, latency_ms=latency_ms, malformed_rate=malformed_rate, rate_429=rate_429, seed=seed)
        cm = run_simulated_teacher(ws, dataset, cfg, port=port)
        url = cm.__enter__()
    except (ValueError, StoreError, OSError) as e:
        raise click.ClickException(str(e)) from None
    console.print(f"[bold yellow]SIMULATED teacher[/] for {dataset} at [bold]{url}[/] model "
                  f"[bold]{model_id(dataset, cfg)}[/] (accuracy ~{accuracy:.0%}, not an LLM)")
    console.print(f"teacher spec: [bold]'{url}|{model_id(dataset, cfg)}'[/]   Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        cm.__exit__(None, None, None)


@teacher.command()
@click.argument("dataset")
@click.option("--model", help="Teacher model id (default: the one with most answers on DATASET).")
@click.option("--split", help="Only items of this split (default: all with gold labels).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@pass_ctx
def quality(ctx: Ctx, dataset: str, model: str | None, split: str | None, as_json: bool) -> None:
    """Teacher accuracy (95% CI), per-class accuracy and ECE of its confidence, against gold labels; stored as a report."""
    from llm_flywheel.pipeline.quality import teacher_quality

    ws = open_dataset(ctx, dataset)
    try:
        q = teacher_quality(ws, dataset, model=model, split=split)
    except (ValueError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    if q["n"] == 0:
        raise click.ClickException(f"no gold labels for the answers of {q['model']} on {dataset}: nothing to measure")
    if q["simulated"]:
        console.print(f"[bold yellow]{q['note']}[/]")
    lo, hi = q["ci95"]
    console.print(f"[bold]{q['model']}[/] on {dataset}: per-answer accuracy {q['accuracy']:.1%} "
                  f"(95% CI {lo:.1%}-{hi:.1%}, n={q['n']}), {calibration_text(q)}"
                  + (f", mean stated confidence {q['mean_confidence']:.2f}" if q["mean_confidence"] is not None else "")
                  + f", off-list {q['off_list_rate']:.1%}")
    c = q["consensus"]
    if c["accuracy"] is not None:
        clo, chi = c["ci95"]
        console.print(f"consensus labels: accuracy {c['accuracy']:.1%} (95% CI {clo:.1%}-{chi:.1%}) on "
                      f"{c['n_labelled']} labelled of {c['n_items']} items (coverage {c['coverage']:.1%})")
    t = Table(title="per class (per answer)")
    t.add_column("gold")
    t.add_column("n", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("most confused with")
    for g, v in q["per_class"].items():
        row = {k: n for k, n in q["confusion"][g].items() if k != g and n}
        worst = ", ".join(f"{k} {n}" for k, n in sorted(row.items(), key=lambda kv: -kv[1])[:2])
        t.add_row(g, str(v["n"]), "-" if v["accuracy"] is None else f"{v['accuracy']:.1%}", worst)
    console.print(t)
    if as_json:
        click.echo(json.dumps(q, indent=2, default=str))


@teacher.command()
@click.argument("spec")
@click.option("--dataset", required=True, help="Dataset whose task (labels, instructions) to ask about.")
@click.option("--item", "item_id", type=int, help="Item id to send (default: the first item).")
@click.option("--api-key-env", default=None, help="Environment variable holding the API key.")
@pass_ctx
def check(ctx: Ctx, spec: str, dataset: str, item_id: int | None, api_key_env: str | None) -> None:
    """Make ONE call to a teacher (not cached) and show what came back: a quick endpoint/key/format check."""
    ws = ctx.workspace(create=False)
    store = ws.store()
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        items = store.items(dataset, ids=[item_id]) if item_id else store.items(dataset, limit=1)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    if not items:
        raise click.ClickException("no such item")
    try:
        t = teacher_from_spec(spec, task, api_key_env=api_key_env, max_retries=1)
        t.check_ready()
    except (ValueError, TeacherConfigError) as e:
        raise click.ClickException(str(e)) from None
    async def one() -> TeacherAnswer:
        async with t.session(task, ws=ws) as s:
            return await s.alabel(items[0])

    ans = run_sync(one())
    console.print(f"teacher {t.display_name}")
    info = t.server_info()
    if info.slots or info.n_ctx:
        console.print(f"server: {info.slots} parallel slots, {info.n_ctx} tokens of context each ({info.source})")
    if info.model_file:
        console.print(f"serving the model file {info.model_file}")
    console.print({k: v for k, v in ans.__dict__.items() if k not in ("logprobs",)})
    caps = t.capabilities()  # what the endpoint turned out to take: the requests every later call sends
    console.print(f"requests now: response_format {caps['response_format']}, logprobs "
                  f"{'on' if caps['logprobs'] else 'off'}, "
                  f"{'max_tokens' if caps['legacy_max_tokens'] else 'max_completion_tokens'} {t.max_tokens}, "
                  f"temperature {'per pass' if caps['temperature'] else 'the model default'}", highlight=False)
    for d in t.negotiation:
        console.print(f"  stepped down: {d['from']} -> {d['to']} ({escape(d['why'])})", highlight=False)
