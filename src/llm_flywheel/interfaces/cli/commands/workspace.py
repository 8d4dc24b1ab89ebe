"""`flywheel init`."""

from __future__ import annotations

import click

from llm_flywheel.interfaces.cli import Ctx, console, pass_ctx


@click.command()
@pass_ctx
def init(ctx: Ctx) -> None:
    """Create (or upgrade) a workspace: flywheel.db in WAL mode plus blobs/, models/, reports/."""
    ws = ctx.workspace(create=True)
    console.print(f"workspace ready at [bold]{ws.root}[/] (database {ws.db_path.name}, WAL mode)")
