"""`flywheel review export | import`: humans correct what the teacher was unsure about."""

from __future__ import annotations

import click

from ..cli import Ctx, console, pass_ctx
from ..review import ReviewImportError, export_reviews, import_reviews
from ..store import StoreError


@click.group()
def review() -> None:
    """Human review: export a CSV of uncertain teacher labels, import the corrections (they outrank the teacher)."""


@review.command("export", epilog="Fill in the empty label_final column (leave it empty to skip a row), then run "
                "`flywheel review import FILE`.")
@click.argument("dataset")
@click.option("--queue", "which", flag_value="queue", default=True,
              help="Unresolved items of the review queue (disagreements, flagged items). The default.")
@click.option("--all-disagreements", "which", flag_value="disagreements",
              help="Every item whose teacher passes disagreed, tie-broken or not.")
@click.option("--all", "which", flag_value="all", help="Every teacher-labelled item (an audit).")
@click.option("--limit", type=int, help="At most N rows.")
@click.option("-o", "--output", default="reviews.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV file to write.")
@pass_ctx
def export_cmd(ctx: Ctx, dataset: str, which: str, limit: int | None, output: str) -> None:
    """Write a review CSV: item, image path or text, each teacher pass, consensus, quality, empty label_final."""
    ws = ctx.workspace(create=False)
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
    ws = ctx.workspace(create=False)
    try:
        res = import_reviews(ws, path, reviewer=reviewer)
    except ReviewImportError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"applied {res.applied} human label(s) ({res.changed_from_teacher} differ from the teacher); "
                  f"{res.ignored_empty} row(s) with empty label_final ignored")
