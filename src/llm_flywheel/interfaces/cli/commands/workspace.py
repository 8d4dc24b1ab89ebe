"""`flywheel init`."""

from __future__ import annotations

import click

from llm_flywheel.interfaces.cli import Ctx, console, pass_ctx


@click.command(epilog="\b\nExamples:\n"
               "  flywheel init                                             # ./flywheel-workspace/flywheel.db\n"
               "  flywheel --store postgresql://flywheel@db:5432/flywheel init   # shared by several machines\n")
@pass_ctx
def init(ctx: Ctx) -> None:
    """Create (or upgrade) a workspace: its store (SQLite in WAL mode, or PostgreSQL with --store) plus blobs/,
    models/, reports/."""
    ws = ctx.workspace(create=True)
    kind = "SQLite, WAL mode" if ws.store_url.startswith("sqlite") else "PostgreSQL"
    console.print(f"workspace ready at [bold]{ws.root}[/] (store {ws.store_display}, {kind})")
