"""One module of click commands per stage of the wheel; registered by ``llm_flywheel.interfaces.cli``."""

from __future__ import annotations

from typing import Any


def require_dataset(ws: Any, dataset: str) -> None:
    """Exit 2 (an unknown dataset is a configuration error, see `flywheel --help`) when DATASET is not in the
    workspace -- checked first, so the message names `flywheel data add` rather than a missing model or run."""
    from llm_flywheel.interfaces.cli import config_error
    from llm_flywheel.store.base import StoreError

    with ws.store() as s:
        try:
            s.dataset_task_json(dataset)
        except StoreError as e:
            raise config_error(str(e)) from None


def open_workspace(ctx: Any) -> Any:
    """The existing workspace (never creates one): a wrong --workspace or working folder is an ``Error:`` line
    naming `flywheel init` / --workspace, not a FileNotFoundError traceback."""
    import click

    try:
        return ctx.workspace(create=False)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None


def open_dataset(ctx: Any, dataset: str) -> Any:
    """The existing workspace, checked to hold DATASET: what every command that takes a dataset starts with."""
    ws = open_workspace(ctx)
    require_dataset(ws, dataset)
    return ws


def calibration_text(q: dict[str, Any]) -> str:
    """How well the teacher's certainty matches its accuracy, for a ``teacher_quality`` report: the stated
    confidence's ECE and, where the server returned logprobs, the label probability's (llama.cpp with logprobs on
    states no confidence at all)."""
    parts = [f"ECE {q['ece']:.3f} (stated confidence)" if q.get("ece") is not None else "no stated confidence"]
    if q.get("ece_logprob") is not None:
        parts.append(f"ECE {q['ece_logprob']:.3f} (label probability from logprobs, {q['logprob_answers']} answers)")
    return ", ".join(parts)
