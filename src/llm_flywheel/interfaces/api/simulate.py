"""A simulated teacher for in-memory data: the real simulated OpenAI-compatible server, told the answers.

Why: examples, tests and demos must run offline, through the very same HTTP client and cache as a paid LLM.  The
simulated server (``teachers/simulated.py``) recognises an input by the sha256 of exactly what the client sends
(the text, ``"Features: [...]"`` for a row of numbers, the image bytes) and answers from a gold label through its
error model (``accuracy`` is a parameter, not a finding).  Here the gold labels come from ``y``, which only the
simulator sees -- never the estimator or the dataset being labelled.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llm_flywheel.core.task import normalise_label
from llm_flywheel.data.base import stored_row
from llm_flywheel.interfaces.api.results import InputError
from llm_flywheel.interfaces.api.inputs import (Teacher, dataframe_rows, infer_modality, is_dataframe, read_paths,
                                             register_items)
from llm_flywheel.teachers.prompts import row_content


def label_name(value: Any) -> str:
    """The store's label name for a class value (``"Not Spam"`` -> ``not_spam``, ``1`` -> ``1``, ``-1`` -> ``m1``):
    the same value always maps to the same name, so the teacher, the store and ``classes_`` agree."""
    s = normalise_label(str(value.item() if isinstance(value, np.generic) else value).strip().lower().replace("-", "m"))
    if not s:
        raise InputError(f"class {value!r} has no usable name; use classes made of letters or digits")
    return s


def label_names(classes: Sequence[Any]) -> dict[Any, str]:
    """class value -> label name, refusing two values that would share a name."""
    out: dict[Any, str] = {}
    seen: dict[str, Any] = {}
    for c in classes:
        n = label_name(c)
        if n in seen and seen[n] != c:
            raise InputError(f"classes {seen[n]!r} and {c!r} both become label {n!r}; rename one of them")
        seen[n], out[c] = c, n
    return out


def teacher_payload(modality: str, x: Any) -> Any:
    """What the teacher client sends for one input (and so what the simulator hashes to recognise it)."""
    if modality == "tabular":  # the client sends a row as the store keeps it; a list may hold categories
        return row_content(stored_row(x if isinstance(x, list) else np.asarray(x, dtype=float).ravel()))
    return x


_RUNNING: dict[str, contextlib.ExitStack] = {}  # spec -> what stops its server (and removes its folder)


class SimulatedTeacher(Teacher):
    """A :class:`Teacher` whose server runs in this process until :meth:`close` (or the end of a ``with`` block,
    or the interpreter's exit).  Copies and pickles are plain ``Teacher`` specs pointing at the same server."""

    def close(self) -> None:
        stack = _RUNNING.pop(self.spec, None)
        if stack is not None:
            stack.close()

    def __enter__(self) -> "SimulatedTeacher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        return (Teacher, (self.spec, self.api_key_env, dict(self.options)))


@atexit.register
def _close_all() -> None:
    for spec in list(_RUNNING):
        _RUNNING.pop(spec).close()


def start_simulated(ws: Any, dataset: str, config: Any, stack: contextlib.ExitStack) -> SimulatedTeacher:
    """Start the simulated server for ``dataset`` of ``ws`` under ``stack`` (closed by the returned teacher)."""
    from llm_flywheel.teachers.simulated import model_id, run_simulated_teacher

    try:
        url = stack.enter_context(run_simulated_teacher(ws, dataset, config))
    except BaseException:
        stack.close()
        raise
    t = SimulatedTeacher(f"{url}|{model_id(dataset, config)}", api_key_env="",
                         options={"max_retries": 2, "timeout": 30.0})
    _RUNNING[t.spec] = stack
    return t


def simulated_teacher(X: Sequence[Any], y: Sequence[Any], *, labels: Sequence[Any] | Mapping[Any, str] | None = None,
                      accuracy: float = 0.9, seed: int = 0, latency_ms: float = 0.0, rate_429: float = 0.0,
                      malformed_rate: float = 0.0, model: str = "simulated/oracle-teacher") -> SimulatedTeacher:
    """Start the SIMULATED teacher on 127.0.0.1 knowing ``y`` for the inputs ``X``; returns its :class:`Teacher`.

    Use it in a ``with`` block or call ``.close()`` (it also stops when Python exits).  Unknown inputs get a
    plausible, deterministic guess (like an LLM on data it cannot read).  ``labels``: the full class list when
    ``y`` does not show every class.
    """
    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.simulated import SimConfig
    from llm_flywheel.store.workspace import Workspace as _Ws

    X = read_paths(X)  # files as paths: as the classifier reads them
    if len(X) != len(y):
        raise InputError(f"X has {len(X)} items but y has {len(y)} labels")
    modality = infer_modality(X)
    y_list = list(np.asarray(y).tolist()) if isinstance(y, np.ndarray) else list(y)
    classes = list(dict.fromkeys([*(labels or []), *sorted(set(y_list), key=str)]))
    names = label_names(classes)
    if len(set(names.values())) < 2:
        raise InputError("the simulated teacher needs at least 2 classes")
    task = Task(name="oracle", modality="image" if modality == "image" else "text",
                labels=tuple(dict.fromkeys(names.values())))
    root = tempfile.mkdtemp(prefix="flywheel-oracle-")
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, root, True)
    try:
        ws = _Ws.open(root)
        rows = X if modality != "tabular" else dataframe_rows(X)[0] if is_dataframe(X) else np.asarray(X, dtype=float)
        items = [teacher_payload(modality, x) for x in rows]
        register_items(ws, task, items, gold=[names[v] for v in y_list])
    except BaseException:
        stack.close()
        raise
    cfg = SimConfig(accuracy=accuracy, seed=seed, latency_ms=latency_ms, rate_429=rate_429,
                    malformed_rate=malformed_rate, model=model)
    return start_simulated(ws, "oracle", cfg, stack)
