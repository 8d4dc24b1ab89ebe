"""Batch prediction with Ray Data: the cascade over a split (or a folder of files) on a cluster's workers.

Why this shape: the student is CPU work that splits cleanly by item, so ``ray.data.from_items`` of item ids (or
file paths) is cut into batches and ``map_batches`` hands them to a bounded pool of actors, each of which loads
the student ONCE and answers its batches with :meth:`Cascade.predict_items` -- exactly the local engine's code,
so the same threshold, the same teacher cache and the same labelling config decide every item.

What makes a killed worker cost nothing: a teacher answer is stored (by content hash) before it is used, so a
batch Ray re-executes on a restarted actor finds its answers cached and pays nothing again; and the workers do not
write the cascade log -- the driver writes each finished batch exactly once (a re-executed batch yields one
output, and an item already written is skipped), then appends it to the Parquet file.  A teacher call *in flight*
when its worker dies was paid and its answer lost: that much a crash can cost (at most the calls in flight).

Ray is an optional extra (``pip install 'llm-flywheel[ray]'``) imported only here, only when asked for.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.cascade import SOURCES, Cascade, CascadeAnswer, CascadeError
from llm_flywheel.store.serving import CascadeLogRow
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)
RAY_EXTRA = "pip install 'llm-flywheel[ray]'"
ENV_TO_WORKERS = ("FLYWHEEL_STORE",)  # where the store is: workers open it themselves


class RayUnavailable(CascadeError):
    """``--engine ray`` without Ray Data installed; the message names the extra to install."""


def import_ray() -> Any:
    """``ray`` with Ray Data, or :class:`RayUnavailable` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayUnavailable(f"--engine ray needs Ray Data, which is not installed ({e}); install it with "
                             f"{RAY_EXTRA}") from None
    return ray


@dataclass(frozen=True)
class TeacherRef:
    """How a worker builds the teacher: a spec and the NAME of the key's environment variable.  The key itself
    never travels: each worker reads it from its own environment (a local cluster inherits the driver's)."""

    spec: str
    api_key_env: str | None = None

    @classmethod
    def of(cls, teacher: Any) -> "TeacherRef":
        return cls(f"{teacher.base_url}|{teacher.model}", teacher.api_key_env or "")

    def build(self, task: Task, ws: Workspace) -> Any:
        from llm_flywheel.teachers.registry import teacher_from_spec

        return teacher_from_spec(self.spec, task, api_key_env=self.api_key_env, workspace=ws)


@dataclass(frozen=True)
class RayPredictConfig:
    """``address``: a running cluster (None: env ``RAY_ADDRESS``, else a local one on 127.0.0.1 for this run, with
    ``local_cpus`` CPUs; an already connected ``ray`` is used as is).  ``workers`` actors (each loads the student
    once) with ``cpus_per_worker`` each; ``teacher_concurrency`` calls in flight per worker.  A worker that dies is
    restarted and its batch re-run up to ``max_restarts`` times."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    batch_size: int = 1000
    teacher_concurrency: int = 16
    max_restarts: int = 3
    local_cpus: int | None = None
    log: bool = True
    parquet: Path | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "batch_size", "teacher_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_worker <= 0 or self.max_restarts < 0:
            raise ValueError("cpus_per_worker must be > 0 and max_restarts >= 0")


@dataclass(frozen=True)
class PredictRow:
    """One answer as the workers return it and the Parquet file holds it (``error``: an unreadable file)."""

    index: int
    item_id: int | None
    path: str | None
    content_hash: str | None
    label: str | None
    source: str
    confidence: float
    student_label: str
    student_confidence: float
    teacher_label: str | None
    model_version: str
    latency_ms: float
    error: str | None
    worker_pid: int


@dataclass(frozen=True)
class PredictProgress:
    done: int
    total: int
    elapsed_s: float
    by_source: dict[str, int]
    errors: int
    worker_pids: tuple[int, ...]


@dataclass
class RayPredictResult:
    """``teacher_calls``/``teacher_usd``: paid during the run for store items (the ledger's difference; a file's
    answers are in the served-answer cache).  ``worker_pids``: every worker process that answered (more than
    ``workers`` when one was restarted)."""

    dataset: str
    version: str
    threshold: float
    cluster: str
    workers: int
    n: int
    answered: int
    errors: int
    by_source: dict[str, int]
    teacher_fraction: float | None
    elapsed_s: float
    items_per_s: float
    teacher_calls: int
    teacher_usd: float
    worker_pids: tuple[int, ...]
    parquet: str | None
    answers: list[PredictRow] | None = None


def _row(index: int, a: CascadeAnswer | None, pid: int, *, item_id: int | None = None, path: str | None = None,
         error: str | None = None, version: str = "") -> PredictRow:
    if a is None:
        return PredictRow(index, item_id, path, None, None, "", 0.0, "", 0.0, None, version, 0.0, error, pid)
    return PredictRow(index, a.item_id if item_id is None else item_id, path, a.content_hash, a.label, a.source,
                      float(a.confidence), a.student_label, float(a.student_confidence), a.teacher_label,
                      a.model_version, float(a.latency_ms), None, pid)


class CascadeWorker:
    """The Ray Data actor: opens the workspace's store itself, loads the student once, answers batches."""

    def __init__(self, root: str, dataset: str, version: str, threshold: float, teacher: TeacherRef | None,
                 teacher_concurrency: int) -> None:
        ws = Workspace.open(root, create=False)
        with ws.store() as s:
            task = Task.from_json(s.dataset_task_json(dataset))
        self.ws, self.dataset, self.concurrency = ws, dataset, teacher_concurrency
        self.casc = Cascade.from_store(ws, dataset, version=version, threshold=threshold,
                                       teacher=teacher.build(task, ws) if teacher is not None else None)
        self.pid = os.getpid()

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        idx = [int(i) for i in batch["index"]]
        if "item_id" in batch:
            rows = self._items(idx, [int(i) for i in batch["item_id"]])
        else:
            rows = self._files(idx, [str(p) for p in batch["path"]])
        return pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(PredictRow)])

    def _items(self, idx: list[int], ids: list[int]) -> list[PredictRow]:
        with self.ws.store() as s:
            by_id = {it.id: it for it in s.items(self.dataset, ids=ids)}
        found = [by_id[i] for i in ids if i in by_id]
        answers = {a.item_id: a for a in self.casc.predict_items(found, log=False,
                                                                  teacher_concurrency=self.concurrency)}
        return [_row(k, answers.get(i), self.pid, item_id=i, version=self.casc.version,
                     error=None if i in answers else f"item {i} is not in {self.dataset!r}") for k, i in zip(idx, ids)]

    def _files(self, idx: list[int], paths: list[str]) -> list[PredictRow]:
        import asyncio

        from llm_flywheel.pipeline.predict_files import answer_inputs

        got = asyncio.run(answer_inputs(self.casc, [Path(p) for p in paths], log=False, concurrency=self.concurrency))
        return [_row(k, None, self.pid, path=p, error=str(a), version=self.casc.version) if isinstance(a, Exception)
                else _row(k, a, self.pid, path=p) for k, p, a in zip(idx, paths, got)]


@contextlib.contextmanager
def ray_cluster(config: RayPredictConfig) -> Iterator[str]:
    """Connect to ``config.address`` / ``RAY_ADDRESS``, or start a local cluster on 127.0.0.1 (no dashboard) for
    the run; disconnects (and stops what it started) afterwards.  Yields a description of the cluster."""
    ray = import_ray()
    if ray.is_initialized():  # the caller's cluster (a test, a notebook): use it, leave it running
        yield "the connected Ray cluster"
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        where = f"Ray cluster at {address}"
    else:
        ray.init(address="local", num_cpus=config.local_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
        where = "a local Ray cluster on 127.0.0.1 (started for this run)"
    try:
        yield where
    finally:
        ray.shutdown()


def predict_with_ray(ws: Workspace, dataset: str, *, split: str | None = None, limit: int | None = None,
                     files: Sequence[Path] | None = None, version: str | None = None, threshold: float | None = None,
                     teacher: TeacherRef | None = None, config: RayPredictConfig | None = None,
                     progress: Callable[[PredictProgress], None] | None = None,
                     keep_answers: bool = False) -> RayPredictResult:
    """Answer a split of the store (``split``, at most ``limit`` items by id) or ``files`` on Ray workers.

    The model version and threshold are fixed here, before any worker starts, so every worker serves the same
    cascade even if another model is promoted meanwhile.  Answers are logged to ``cascade_log`` (origin
    ``predict``, unless ``config.log`` is False) and written to ``config.parquet`` (atomically, at the end).
    """
    cfg = config or RayPredictConfig()
    ray = import_ray()
    if (split is None) == (files is None):
        raise ValueError("give a split or files, not both")
    probe = Cascade.from_store(ws, dataset, version=version, threshold=threshold)  # fails fast, before any cluster
    version, thr = probe.version, probe.threshold
    probe.close()
    if split is not None:
        with ws.store() as s:
            ids = [it.id for it in s.items(dataset, split=split, limit=limit)]
        inputs: list[dict[str, Any]] = [{"index": k, "item_id": i} for k, i in enumerate(ids)]
    else:
        inputs = [{"index": k, "path": str(Path(p).resolve())} for k, p in enumerate(files or [])]
    if not inputs:
        raise CascadeError(f"nothing to answer: split {split!r} of {dataset!r} has no items" if split is not None
                           else "nothing to answer: no input files")
    with ws.store() as s:
        calls0, usd0 = s.teacher_totals(dataset)
    sink = _Sink(ws, dataset, thr, len(inputs), cfg, keep_answers)
    t0 = time.perf_counter()
    complete = False
    try:
        where = _run(ray, ws, dataset, inputs, version, thr, teacher, cfg, sink, progress, t0)
        complete = sink.answered + sink.errors == len(inputs)
    finally:
        sink.close(complete)
    elapsed = time.perf_counter() - t0
    if not complete:
        raise CascadeError(f"Ray returned {sink.answered + sink.errors} of {len(inputs)} answers; the rest are "
                           "missing (see the Ray logs)")
    with ws.store() as s:
        calls1, usd1 = s.teacher_totals(dataset)
    n_ok = sink.answered
    return RayPredictResult(
        dataset, version, thr, where, cfg.workers, len(inputs), n_ok, sink.errors, dict(sink.by_source),
        (n_ok - sink.by_source["student"]) / n_ok if n_ok else None, elapsed, len(inputs) / elapsed if elapsed else 0.0,
        calls1 - calls0, usd1 - usd0, tuple(sorted(sink.pids)), str(cfg.parquet) if cfg.parquet else None,
        sink.kept)


def _run(ray: Any, ws: Workspace, dataset: str, inputs: list[dict[str, Any]], version: str, thr: float,
         teacher: TeacherRef | None, cfg: RayPredictConfig, sink: "_Sink",
         progress: Callable[[PredictProgress], None] | None, t0: float) -> str:
    """Stream the inputs through the worker pool; each finished batch goes to ``sink`` as it arrives."""
    with ray_cluster(cfg) as where, _quiet_ray_data(ray):
        ds = ray.data.from_items(inputs, override_num_blocks=math.ceil(len(inputs) / cfg.batch_size))
        env = {k: os.environ[k] for k in ENV_TO_WORKERS if os.environ.get(k)}
        with warnings.catch_warnings():  # Ray 2.60 deprecates ray_remote_args with no named replacement yet
            warnings.simplefilter("ignore", DeprecationWarning)
            out = ds.map_batches(
                CascadeWorker, batch_size=cfg.batch_size, batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=cfg.workers), num_cpus=cfg.cpus_per_worker,
                fn_constructor_kwargs={"root": str(ws.root), "dataset": dataset, "version": version,
                                       "threshold": thr, "teacher": teacher,
                                       "teacher_concurrency": cfg.teacher_concurrency},
                runtime_env={"env_vars": env} if env else None,
                # Ray's default restarts a dead worker (and retries its batch) forever: bound both
                max_restarts=cfg.max_restarts, max_task_retries=cfg.max_restarts)
        for df in out.iter_batches(batch_size=None, batch_format="pandas"):
            sink.add(df)
            if progress is not None:
                progress(sink.progress(time.perf_counter() - t0))
    return where


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """Ray Data's own progress bars and INFO lines off for the run (the caller prints progress lines)."""
    ctx = ray.data.DataContext.get_current()
    bars, lg = ctx.enable_progress_bars, logging.getLogger("ray.data")
    level = lg.level
    ctx.enable_progress_bars = False
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        lg.setLevel(level)


class _Sink:
    """The driver's side: each answer written once (cascade log, Parquet), counted for progress."""

    def __init__(self, ws: Workspace, dataset: str, threshold: float, n: int, cfg: RayPredictConfig,
                 keep: bool) -> None:
        self.ws, self.dataset, self.threshold, self.n, self.cfg = ws, dataset, threshold, n, cfg
        self.seen = bytearray(n)
        self.answered = self.errors = 0
        self.by_source = {s: 0 for s in SOURCES}
        self.pids: set[int] = set()
        self.kept: list[PredictRow] | None = [] if keep else None
        self._writer: Any = None
        self._tmp = cfg.parquet.with_name(cfg.parquet.name + ".partial") if cfg.parquet else None
        self._store = ws.store() if cfg.log else None

    def add(self, df: Any) -> None:
        rows = [_typed(rec) for rec in df.to_dict("records")]
        fresh = []
        for r in rows:
            k = int(r.index)
            if self.seen[k]:  # an answer Ray delivered twice is written once
                continue
            self.seen[k] = 1
            fresh.append(r)
            self.pids.add(int(r.worker_pid))
            if r.error is not None:
                self.errors += 1
            else:
                self.answered += 1
                self.by_source[r.source] += 1
        if not fresh:
            return
        if self._store is not None:
            now = time.time()
            self._store.log_cascade_rows([
                CascadeLogRow(now, self.dataset, r.item_id, r.content_hash, r.source, r.label, r.confidence,
                              r.student_label, r.student_confidence, r.teacher_label, r.model_version,
                              self.threshold, r.latency_ms, None, "predict", None) for r in fresh if r.error is None])
        if self._tmp is not None:
            self._write_parquet(fresh)
        if self.kept is not None:
            self.kept += fresh

    def _write_parquet(self, rows: list[PredictRow]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=_arrow_schema(pa))
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self._tmp), table.schema)
        self._writer.write_table(table)

    def progress(self, elapsed: float) -> PredictProgress:
        return PredictProgress(self.answered + self.errors, self.n, elapsed, dict(self.by_source), self.errors,
                               tuple(sorted(self.pids)))

    def close(self, complete: bool) -> None:
        """Close the store and the Parquet file; the file appears under its name only for a complete run."""
        if self._store is not None:
            self._store.close()
        if self._writer is not None:
            self._writer.close()
            assert self._tmp is not None and self.cfg.parquet is not None
            if complete:
                os.replace(self._tmp, self.cfg.parquet)
            else:
                self._tmp.unlink(missing_ok=True)


_CASTS = {f.name: (int if str(f.type).startswith("int") else float if f.type == "float" else str) for f in fields(PredictRow)}


def _typed(rec: dict[str, Any]) -> PredictRow:
    """A row back from pandas (ints with a None became floats, None may be NaN) as plain Python values."""
    return PredictRow(**{k: None if v is None or (isinstance(v, float) and math.isnan(v)) else _CASTS[k](v)
                         for k, v in rec.items()})


def _arrow_schema(pa: Any) -> Any:
    types = {"int": pa.int64(), "int | None": pa.int64(), "float": pa.float64(), "str": pa.string(),
             "str | None": pa.string()}
    return pa.schema([(f.name, types[str(f.type)]) for f in fields(PredictRow)])
