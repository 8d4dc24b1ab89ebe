"""Teacher specs and in-memory inputs: the two things every API entry point accepts from a user.

Why here: the workspace facade and the scikit-learn estimator turn the same Python objects (a spec string, a list
of texts, rows of numbers, images) into the same store items and teacher clients, so a text given to ``fit`` and to
``predict`` -- or to two estimators sharing a workspace -- is one item with one set of cached teacher answers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.interfaces.api.results import InputError, translate_errors


# --- teacher ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Teacher:
    """Which LLM labels, as a spec string plus client options; the HTTP client is built per use.

    Plain data on purpose: it can be pickled, deep-copied (scikit-learn's ``clone``), logged and compared, and it
    never holds the API key -- only the *name* of the environment variable that holds it.
    """

    spec: str
    api_key_env: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return "simulated" in self.spec.lower()

    def build(self, task: Any, ws: Any = None) -> Any:
        """The engine's OpenAI-compatible client for ``task`` (an ``llm_flywheel.core.task.Task``)."""
        from llm_flywheel.teachers.registry import teacher_from_spec

        with translate_errors():
            return teacher_from_spec(self.spec, task, api_key_env=self.api_key_env, workspace=ws,
                                     **dict(self.options))


def teacher(spec: str | Teacher, *, api_key_env: str | None = None, timeout: float | None = None, max_retries: int = 5,
            rpm: float | None = None, **options: Any) -> Teacher:
    """A teacher from a spec: ``openrouter:google/gemini-2.5-flash``, ``openai:gpt-4o-mini``, ``ollama:MODEL``,
    ``http://host:port/v1|MODEL`` (any OpenAI-compatible server).  ``api_key_env`` names the environment variable
    holding the key (default: the provider's, e.g. ``OPENROUTER_API_KEY``; ``""`` for none).  The spec is checked
    now, so a typo fails here and not after an hour of data loading.  ``timeout`` caps the wait per request (default:
    the client's adaptive wait, 4 x the measured p95 latency, 30-300 s)."""
    if isinstance(spec, Teacher):
        return spec
    from llm_flywheel.teachers.registry import parse_spec

    if not isinstance(spec, str):
        raise InputError(f"teacher must be a spec string such as 'openrouter:google/gemini-2.5-flash', not {spec!r}")
    with translate_errors():
        parse_spec(spec)
    opts = {"timeout": timeout, "max_retries": max_retries, **options}
    if rpm is not None:
        opts["rpm"] = rpm
    return Teacher(spec, api_key_env, opts)


def as_teacher(t: Teacher | str) -> Teacher:
    """A ``Teacher`` from a ``Teacher`` or a spec string (the argument every API method accepts)."""
    return t if isinstance(t, Teacher) else teacher(t)


def is_dataframe(items: Any) -> bool:
    """A pandas DataFrame (duck-typed: pandas stays optional): iterating one gives its column names, not its rows."""
    return hasattr(items, "iloc") and getattr(items, "ndim", 1) == 2


def dataframe_rows(items: Any) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """(rows, column names, categorical column names) of a DataFrame and ``(items, (), ())`` for anything else.  The
    names tell the teacher what each value is; a column of text (object, string or category dtype) is categorical:
    its values stay text, as ``flywheel data add tabular`` keeps them."""
    if not is_dataframe(items):
        return items, (), ()
    columns, cats = tuple(str(c) for c in items.columns), text_columns(items)
    if not cats:
        return items.to_numpy(dtype=float), columns, ()
    return [list(r) for r in items.itertuples(index=False, name=None)], columns, cats


def text_columns(items: Any) -> tuple[str, ...]:
    """A DataFrame's columns of text (object, string or category dtype); () for anything else."""
    if not is_dataframe(items):
        return ()
    return tuple(str(c) for c, dt in zip(items.columns, items.dtypes) if getattr(dt, "kind", "O") not in "biuf")


def read_paths(items: Any) -> Any:
    """Files given as paths (``sorted(Path("photos").glob("*.jpg"))``) as what they hold: an image file's bytes, a
    document's text as a folder import reads it (:func:`llm_flywheel.data.documents.document_text`), so a file is
    the same item here and in ``flywheel data add``.  Other inputs are returned as they are; plain strings are texts,
    never paths."""
    if isinstance(items, (str, bytes, np.ndarray)) or is_dataframe(items) or not isinstance(items, Sequence):
        return items
    if not items or not isinstance(items[0], os.PathLike):
        return items
    from llm_flywheel.data.documents import document_text, is_document
    from llm_flywheel.data.image_folder import IMAGE_EXTENSIONS

    out: list[Any] = []
    for x in items:
        if not isinstance(x, os.PathLike):
            raise InputError(f"mixed inputs: paths and {type(x).__name__}; give all files as paths, or none")
        p = Path(x)
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            out.append(p.read_bytes())
        elif is_document(p.name):
            try:
                out.append(document_text(p.read_bytes(), p.name)[0])
            except ValueError as e:
                raise InputError(f"{p}: {e}") from None
        else:
            raise InputError(f"{p}: not an image or a text document; a table is read with pandas (pd.read_csv) and "
                             "given as a DataFrame, or as its text column")
    kinds = {type(v) for v in out}
    if len(kinds) > 1:
        raise InputError("the files mix images and text documents; give one kind")
    return out


def infer_modality(items: Sequence[Any]) -> str:
    """``text`` for strings, ``image`` for PIL images / bytes / 2-3-D arrays, ``tabular`` for rows of numbers
    (a DataFrame included)."""
    if is_dataframe(items):
        return "tabular"
    if isinstance(items, np.ndarray):
        if items.ndim == 2 and items.dtype.kind in "biuf":
            return "tabular"
        if items.ndim in (3, 4):
            return "image"
        if items.ndim == 1 and items.dtype.kind in "UO" and all(isinstance(x, str) for x in items):
            return "text"
        raise InputError(f"cannot tell what a {items.ndim}-D {items.dtype} array holds; pass a list of texts, a "
                         "2-D numeric array (tabular) or a list of images")
    first = next(iter(items), None)
    if first is None:
        raise InputError("no items given (got an empty sequence)")
    if isinstance(first, str):
        return "text"
    if isinstance(first, (bytes, bytearray)) or type(first).__module__.startswith("PIL"):
        return "image"
    if isinstance(first, np.ndarray) and first.ndim >= 2:
        return "image"
    return "tabular"


def item_key(modality: str, x: Any, task: Any = None) -> tuple[str, Any]:
    """(stable key, record payload) of one in-memory input: the key names the item in the store, so the same input
    given twice (in ``fit`` and ``predict``, or across runs) is the same item with the same cached teacher answers."""
    from llm_flywheel.data.base import encode_png

    if modality == "text":
        if not isinstance(x, str):
            raise InputError(f"text items must be str, got {type(x).__name__}")
        return "t:" + hashlib.sha256(x.encode("utf-8")).hexdigest(), x
    if modality == "tabular":
        from llm_flywheel.data.base import row_json
        from llm_flywheel.data.tabular import nan_missing

        feats = finite_row(x, task)
        return "f:" + hashlib.sha256(row_json(feats).encode()).hexdigest(), [nan_missing(v) for v in feats]
    data = upright_image(x)
    if not isinstance(data, bytes):
        data = encode_png(np.asarray(data, dtype=np.uint8) if isinstance(data, np.ndarray) else data)
    return "i:" + hashlib.sha256(data).hexdigest(), data


def upright_image(x: Any) -> Any:
    """An in-memory image as the import stores it (``data.images``): bytes as stored (upright, PNG or JPEG) and PIL
    images turned upright by their EXIF orientation, so ``fit``'s items, ``predict``'s cache keys and what the
    teacher sees are one picture."""
    from llm_flywheel.data.images import storable_bytes, upright

    if isinstance(x, (bytes, bytearray)):
        try:
            return storable_bytes(bytes(x))[0]
        except Exception:  # undecodable: the import or the student names it
            return bytes(x)
    return upright(x) if type(x).__module__.startswith("PIL") else x


def finite_row(x: Any, task: Any = None) -> list[float | str | None]:
    """A row by the import's policy (``data.tabular.feature_row``): NaN is missing, infinity an error, a ``task``'s
    categorical column's value its text."""
    from llm_flywheel.data.tabular import feature_row

    try:
        if task is not None and task.categorical:
            return feature_row(list(x), task.features, task.categorical)
        return feature_row(np.asarray(x, dtype=float).ravel())
    except ValueError as e:
        raise InputError(str(e)) from None


def register_items(ws: Any, task: Any, items: Sequence[Any], *, gold: Sequence[str | None] | None = None) -> list[str]:
    """Store in-memory inputs as items of ``task.name`` (idempotent); returns their keys (``source_ref``) in order."""
    from llm_flywheel.data.base import Record, register

    if gold is not None and len(gold) != len(items):
        raise InputError(f"gold has {len(gold)} entries for {len(items)} items")
    recs, keys = [], []
    for i, x in enumerate(items):
        key, payload = item_key(task.modality, x, task)
        keys.append(key)
        field_name = {"text": "text", "tabular": "features", "image": "image"}[task.modality]
        recs.append(Record(key, **{field_name: payload}, gold_label=None if gold is None else gold[i]))
    with translate_errors():
        rep = register(ws, task, recs, total=len(recs), progress=False)
    if rep.skipped and rep.skipped == rep.seen:
        raise InputError(f"none of the {rep.seen} items could be stored: {'; '.join(rep.skipped_examples)}")
    return keys


def make_splits_once(ws: Any, dataset: str, **sizes: Any) -> dict[str, int]:
    """Split a dataset once; later items join ``train`` (the held-out splits never move)."""
    from llm_flywheel.pipeline.splits import SplitSpec, make_splits

    with ws.store() as s:
        try:
            return make_splits(s, dataset, SplitSpec(**sizes))
        except ValueError as e:
            raise InputError(f"{e}; give more items or smaller val/calib sizes") from e


def raw_inputs(task: Any, inputs: Any) -> list[Any]:
    """What the student reads for each of ``inputs`` (rows of a table: by the import's policy, :func:`finite_row`)."""
    modality = task.modality
    if isinstance(inputs, str):
        raise InputError("pass a list of inputs, e.g. predict(['my printer is on fire'])")
    inputs = read_paths(inputs)
    if modality == "tabular":
        from llm_flywheel.data.tabular import nan_missing

        rows = dataframe_rows(inputs)[0]
        if not task.categorical:
            rows = np.asarray(rows, dtype=float).reshape(len(inputs), -1)
        return [[nan_missing(v) for v in finite_row(row, task)] for row in rows]
    if modality == "image":
        return [np.asarray(x, dtype=np.uint8) if isinstance(x, np.ndarray) else upright_image(x) for x in inputs]
    return list(inputs)
