"""The ``flywheel`` command.

Each stage of the wheel owns one module under ``llm_flywheel.interfaces.cli.commands`` that defines its click commands;
this file only builds the root group and registers them, so stages never edit each other's CLI code.
"""

from __future__ import annotations

import importlib
import logging
from enum import IntEnum
from typing import Any

import click
from rich.console import Console

from llm_flywheel._version import __version__
from llm_flywheel.store.records import StoreError
from llm_flywheel.store.workspace import Workspace

console = Console(stderr=True)


class ExitCode(IntEnum):
    """Exit statuses a script can rely on (documented in the README and in ``flywheel --help``)."""

    OK = 0  # done
    ERROR = 1  # a failure not listed below (the message says what happened)
    USAGE = 2  # bad usage or configuration: unknown option, bad value, missing API key, unknown dataset
    TEACHER_FAILED = 3  # stopped early on a teacher error that asking again cannot fix (connection, DNS, auth, 404)
    BUDGET = 4  # stopped at --budget-usd / --max-calls; re-run with a larger cap to continue
    INCOMPLETE = 5  # some items still have no teacher answer (transient errors), or wait for a person; re-run after


EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0  done\n"
    "  1  other error (the message says what happened)\n"
    "  2  bad usage or configuration (bad option, missing API key, unknown dataset)\n"
    "  3  stopped early on a teacher error (connection refused, DNS, 401/403, 404)\n"
    "  4  --budget-usd / --max-calls reached (re-run with a larger cap to continue)\n"
    "  5  finished, but some items still lack a teacher answer (re-run to retry them), or `flywheel run` waits\n"
    "     for people to review calib items (--parity-reference review: review them, then re-run)"
)


class FlywheelExit(click.ClickException):
    """A known condition: print ``Error: message`` (no traceback) and exit with ``code``."""

    def __init__(self, message: str, code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.exit_code = int(code)


def config_error(message: str) -> FlywheelExit:
    """Bad configuration (missing key, unknown dataset...): exit status 2 like click's own usage errors."""
    return FlywheelExit(message, ExitCode.USAGE)


def label_exit_code(result: Any) -> int:
    """The exit status of a labelling run (``labeling.LabelRunResult``): why it stopped, or whether work is left."""
    if getattr(result, "stopped_by_budget", False):
        return ExitCode.BUDGET
    if getattr(result, "stopped_reason", None):
        return ExitCode.TEACHER_FAILED
    if getattr(result, "failed", 0) and getattr(result, "unlabelled", 0):
        return ExitCode.INCOMPLETE
    if getattr(result, "in_open_batch", 0):  # left to a batch not collected yet: work is left, as for --batch
        return ExitCode.INCOMPLETE
    return ExitCode.OK


def progress_enabled(no_progress: bool) -> bool:
    """Progress unless --no-progress: the stages draw a bar on a terminal and print plain lines otherwise (logs, CI)."""
    return not no_progress


def no_progress_option(f: Any) -> Any:
    return click.option("--no-progress", is_flag=True,
                        help="No progress output (otherwise: a bar on a terminal, plain lines in logs and pipes).")(f)

# module name under llm_flywheel.interfaces.cli.commands -> attribute names of click commands/groups to register
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "workspace": ("init",),
    "data": ("data",),
    "teacher": ("teacher",),
    "label": ("label",),
    "review": ("review",),
    "train": ("train", "models"),
    "evaluate": ("evaluate",),
    "cascade": ("calibrate", "promote"),
    "predict": ("predict",),
    "serve": ("serve",),
    "wheel": ("run", "report"),
    "demo": ("demo",),
}


class Ctx:
    """What every command gets: the workspace location (opened lazily so `--help` never touches disk)."""

    def __init__(self, workspace: str | None, verbose: int, store: str | None = None) -> None:
        self.workspace_path = workspace
        self.verbose = verbose
        self.store = store

    def workspace(self, *, create: bool = True) -> Workspace:
        try:
            return Workspace.open(self.workspace_path, create=create, store=self.store)
        except StoreError as e:
            raise click.ClickException(str(e)) from None


pass_ctx = click.make_pass_decorator(Ctx)


class _Main(click.Group):
    """The ``flywheel`` group: a teacher that cannot be used as configured (a missing key, a bad spec, a bad
    ``$FLYWHEEL_TEACHER_EXTRA_BODY``), wherever a command builds it, is exit 2 with its message, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from llm_flywheel.teachers.errors import TeacherConfigError

        try:
            return super().invoke(ctx)
        except TeacherConfigError as e:
            raise config_error(str(e)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option(
    "--workspace",
    "-w",
    envvar="FLYWHEEL_WORKSPACE",
    default=None,
    help="Workspace folder (default ./flywheel-workspace, or $FLYWHEEL_WORKSPACE).",
)
@click.option(
    "--store",
    default=None,
    help="Where a NEW workspace keeps its database: postgresql://user@host/db[?schema=name] to share it between "
    "machines (password from PGPASSWORD or ~/.pgpass, never recorded), default <workspace>/flywheel.db or "
    "$FLYWHEEL_STORE.  An existing workspace always uses the store it was made with.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(__version__, prog_name="flywheel")
@click.pass_context
def main(ctx: click.Context, workspace: str | None, store: str | None, verbose: int) -> None:
    """llm-flywheel: an LLM teacher labels, a small student learns, a calibrated cascade serves, feedback turns the wheel."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(workspace, verbose, store)


def _register() -> None:
    for module, names in COMMAND_MODULES.items():
        try:
            mod = importlib.import_module(f"llm_flywheel.interfaces.cli.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"llm_flywheel.interfaces.cli.commands.{module}":
                continue  # stage not built yet
            raise
        for name in names:
            cmd = getattr(mod, name, None)
            if cmd is not None:
                main.add_command(cmd)


_register()
