"""The ``flywheel`` command.

Each stage of the wheel owns one module under ``llm_flywheel.commands`` that defines its click commands;
this file only builds the root group and registers them, so stages never edit each other's CLI code.
"""

from __future__ import annotations

import importlib
import logging
import click
from rich.console import Console

from . import __version__
from .workspace import Workspace

console = Console(stderr=True)

# module name under llm_flywheel.commands -> attribute names of click commands/groups to register
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "workspace": ("init",),
    "data": ("data",),
    "teacher": ("teacher",),
    "label": ("label",),
    "review": ("review",),
    "train": ("train", "evaluate"),
    "cascade": ("calibrate", "predict", "serve"),
    "wheel": ("run", "report", "demo"),
}


class Ctx:
    """What every command gets: the workspace location (opened lazily so `--help` never touches disk)."""

    def __init__(self, workspace: str | None, verbose: int) -> None:
        self.workspace_path = workspace
        self.verbose = verbose

    def workspace(self, *, create: bool = True) -> Workspace:
        return Workspace.open(self.workspace_path, create=create)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workspace",
    "-w",
    envvar="FLYWHEEL_WORKSPACE",
    default=None,
    help="Workspace folder (default ./flywheel-workspace, or $FLYWHEEL_WORKSPACE).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(__version__, prog_name="flywheel")
@click.pass_context
def main(ctx: click.Context, workspace: str | None, verbose: int) -> None:
    """llm-flywheel: an LLM teacher labels, a small student learns, a calibrated cascade serves, feedback turns the wheel."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(workspace, verbose)


def _register() -> None:
    for module, names in COMMAND_MODULES.items():
        try:
            mod = importlib.import_module(f"llm_flywheel.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"llm_flywheel.commands.{module}":
                continue  # stage not built yet
            raise
        for name in names:
            cmd = getattr(mod, name, None)
            if cmd is not None:
                main.add_command(cmd)


_register()
