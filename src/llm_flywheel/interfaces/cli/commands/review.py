"""`flywheel review export | import`: humans correct what the teacher was unsure about."""

from __future__ import annotations

import click

from llm_flywheel.interfaces.cli import Ctx, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import open_dataset, open_workspace
from llm_flywheel.pipeline.labelstudio import TOKEN_ENV, LabelStudioError
from llm_flywheel.pipeline.review import (LOW_CONFIDENCE_BELOW, ReviewImportError, export_reviews, import_reviews,
                                          measure_human_label_effect, pull_from_label_studio, push_to_label_studio,
                                          review_queue)
from llm_flywheel.store.base import StoreError


@click.group()
def review() -> None:
    """Human review: in Label Studio (push / pull) or as a CSV (export / import); human labels outrank the teacher."""


@review.command("export", epilog="Fill in the empty label_final column (leave it empty to skip a row), then run "
                "`flywheel review import FILE`.")
@click.argument("dataset")
@click.option("--queue", "which", flag_value="queue", default=True,
              help="Unresolved items of the review queue (disagreements, flagged items). The default.")
@click.option("--all-disagreements", "which", flag_value="disagreements",
              help="Every item whose teacher passes disagreed, tie-broken or not.")
@click.option("--all", "which", flag_value="all", help="Every teacher-labelled item (an audit).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N rows.")
@click.option("-o", "--output", default="reviews.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV file to write.")
@pass_ctx
def export_cmd(ctx: Ctx, dataset: str, which: str, limit: int | None, output: str) -> None:
    """Write a review CSV: item, image path or text, each teacher pass, consensus, quality, empty label_final."""
    ws = open_dataset(ctx, dataset)
    try:
        n = export_reviews(ws, dataset, output, which=which, limit=limit)
    except (ValueError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    console.print(f"wrote {n} row(s) to [bold]{output}[/] ({which})")


@review.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--reviewer", help="Who reviewed (stored with each label).")
@pass_ctx
def import_cmd(ctx: Ctx, path: str, reviewer: str | None) -> None:
    """Apply label_final edits as human labels (all or nothing; rows with an empty label_final are ignored)."""
    ws = open_workspace(ctx)
    try:
        res = import_reviews(ws, path, reviewer=reviewer)
    except ReviewImportError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"applied {res.applied} human label(s) ({res.changed_from_teacher} differ from the teacher); "
                  f"{res.ignored_empty} row(s) with empty label_final ignored")


def _token(env: str) -> str:
    import os

    tok = os.environ.get(env, "")
    if not tok:
        raise click.ClickException(f"set {env} to your Label Studio token (Account & Settings > Personal Access Token "
                                   "or Legacy Token); it is read from the environment only and never stored")
    return tok


@review.command("queue")
@click.argument("dataset")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show the N most valuable items.")
@pass_ctx
def queue_cmd(ctx: Ctx, dataset: str, limit: int) -> None:
    """The review queue, most valuable first: P(label wrong) and how much a human label would move the student."""
    from rich.table import Table

    ws = open_dataset(ctx, dataset)
    try:
        q = review_queue(ws, dataset)
    except (ValueError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    t = Table(title=f"review queue of {dataset}: {len(q)} item(s)")
    for col in ("item", "reason", "teacher", "student", "P(wrong)", "value"):
        t.add_column(col, justify="right")
    for c in q[:limit]:
        t.add_row(str(c.item_id), c.reason, c.teacher_label or "(undecided)", c.student_label or "–",
                  f"{c.p_wrong:.2f}", f"{c.value:.3f}")
    console.print(t)


@review.command("push", epilog=f"The token is read from ${TOKEN_ENV} (or --token-env). Then label in Label Studio and "
                "run `flywheel review pull DATASET`.")
@click.argument("dataset")
@click.option("--label-studio", "url", required=True, metavar="URL", help="Label Studio base URL, e.g. http://localhost:8080.")
@click.option("--limit", type=click.IntRange(min=1), help="Upload at most N items (the most valuable).")
@click.option("--project", "project_id", type=int, help="Use this Label Studio project id (default: find or create "
              "'llm-flywheel review: DATASET').")
@click.option("--low-confidence-below", type=float, default=LOW_CONFIDENCE_BELOW, show_default=True,
              help="Also queue deferred stream items whose teacher label quality is below this.")
@click.option("--token-env", default=TOKEN_ENV, show_default=True, help="Environment variable holding the API token.")
@pass_ctx
def push_cmd(ctx: Ctx, dataset: str, url: str, limit: int | None, project_id: int | None, low_confidence_below: float,
             token_env: str) -> None:
    """Upload the review queue to Label Studio, with the teacher's and the student's answers as pre-labels."""
    ws = open_dataset(ctx, dataset)
    try:
        res = push_to_label_studio(ws, dataset, url, _token(token_env), limit=limit, project_id=project_id,
                                   low_confidence_below=low_confidence_below)
    except (ValueError, StoreError, LabelStudioError) as e:
        raise click.ClickException(str(e)) from None
    console.print(f"{'created' if res.project_created else 'using'} project {res.project_id} at {res.url}: uploaded "
                  f"{res.uploaded} task(s), {res.already_there} already there, {res.candidates} in the queue\n"
                  f"label them at {res.url}/projects/{res.project_id}/data, then run "
                  f"[bold]flywheel review pull {dataset}[/]", soft_wrap=True)


@review.command("pull")
@click.argument("dataset")
@click.option("--label-studio", "url", metavar="URL", help="Label Studio base URL (default: the one of the last push).")
@click.option("--project", "project_id", type=int, help="Label Studio project id (default: the one of the last push).")
@click.option("--token-env", default=TOKEN_ENV, show_default=True, help="Environment variable holding the API token.")
@pass_ctx
def pull_cmd(ctx: Ctx, dataset: str, url: str | None, project_id: int | None, token_env: str) -> None:
    """Store completed Label Studio annotations as human labels (idempotent; the newest annotation of an item wins)."""
    ws = open_dataset(ctx, dataset)
    try:
        res = pull_from_label_studio(ws, dataset, _token(token_env), url=url, project_id=project_id)
    except (ValueError, StoreError, LabelStudioError) as e:
        raise click.ClickException(str(e)) from None
    console.print(f"project {res.project_id}: {res.annotated_tasks} annotated task(s); {res.applied} item(s) got a "
                  f"human label ({res.changed_from_teacher} differ from the teacher); {res.recorded} new annotation(s) "
                  f"recorded, {res.already_pulled} already pulled, {res.older} older one(s) kept in history only, "
                  f"{res.skipped} cancelled/empty", soft_wrap=True)


@review.command("effect")
@click.argument("dataset")
@click.option("--kind", help="Student kind (default: the task's default).")
@click.option("--epochs", type=int, help="Training epochs (default: the student's).")
@click.option("--seed", type=int, default=0, show_default=True)
@pass_ctx
def effect_cmd(ctx: Ctx, dataset: str, kind: str | None, epochs: int | None, seed: int) -> None:
    """Measure what the human labels changed: the same student trained with and without them, both on gold test."""
    ws = open_dataset(ctx, dataset)
    try:
        r = measure_human_label_effect(ws, dataset, kind=kind, epochs=epochs, seed=seed)
    except (ValueError, StoreError) as e:
        raise click.ClickException(str(e)) from None

    def ci(c: tuple[float, float]) -> str:
        return f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"

    console.print(f"{r.n_human} human label(s) ({r.changed_from_teacher} differ from the teacher) on {r.n_test} "
                  f"gold test items: student {100 * r.accuracy_with:.1f} % {ci(r.accuracy_with_ci)} with them, "
                  f"{100 * r.accuracy_without:.1f} % {ci(r.accuracy_without_ci)} without; difference "
                  f"{100 * r.difference:+.1f} pt {ci(r.difference_ci)} (in the report: `flywheel report {dataset}`)",
                  soft_wrap=True)
