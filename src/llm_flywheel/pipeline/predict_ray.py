"""Batch prediction with Ray Data: the cascade over a split (or a folder of files) on a cluster's workers.

Why this shape: the student is CPU work that splits cleanly by item, so the driver cuts the item ids (or file
paths) into chunks -- every copy of one content in the same chunk, so two workers never buy it twice -- and
``ray.data.from_items`` of the chunks goes through ``map_batches`` to a bounded pool of actors, each of which loads
the student ONCE and answers its chunks with :meth:`Cascade.predict_items` -- exactly the local engine's code, so
the same threshold, the same teacher cache and the same labelling config decide every item.

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
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.cascade import Cascade, CascadeError
from llm_flywheel.pipeline.predict_sink import (
    PredictProgress,
    PredictRow,
    Sink,
    answer_row,
)
from llm_flywheel.pipeline.ray_env import env_for_ray
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)
RAY_EXTRA = "pip install 'llm-flywheel[ray]'"


class RayUnavailable(CascadeError):
    """``--engine ray`` without Ray Data installed; the message names the extra to install."""


def import_ray() -> Any:
    """``ray`` with Ray Data, or :class:`RayUnavailable` naming the extra."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayUnavailable(f"--engine ray needs Ray Data, which is not installed ({e}); install it with "
                             f"{RAY_EXTRA}") from None
    return ray


class RayPredictError(CascadeError):
    """The Ray run stopped (a worker kept dying, a batch kept failing); the message says what was kept."""


@dataclass(frozen=True)
class TeacherRef:
    """How a worker builds the teacher: a spec and the NAME of the key's environment variable.  The key itself
    never travels: each worker reads it from its own environment (a local cluster inherits the driver's)."""

    spec: str
    api_key_env: str | None = None

    @classmethod
    def of(cls, teacher: Any) -> TeacherRef:
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


@dataclass
class RayPredictResult:
    """``teacher_calls``/``teacher_usd``: paid during the run for store items (the ledger's difference; a file's
    answers are in the served-answer cache).  ``worker_pids``: every worker process that answered (more than
    ``workers`` when one was restarted).  ``run_id``: this run's ``runs`` row (kind ``predict``)."""

    run_id: int
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

        idx = [int(i) for chunk in batch["indexes"] for i in chunk]
        if "item_ids" in batch:
            rows = self._items(idx, [int(i) for chunk in batch["item_ids"] for i in chunk])
        else:
            rows = self._files(idx, [str(p) for chunk in batch["paths"] for p in chunk])
        return pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(PredictRow)])

    def _items(self, idx: list[int], ids: list[int]) -> list[PredictRow]:
        with self.ws.store() as s:
            by_id = {it.id: it for it in s.items(self.dataset, ids=ids)}
        found = [by_id[i] for i in ids if i in by_id]
        answers = {a.item_id: a for a in self.casc.predict_items(found, log=False,
                                                                  teacher_concurrency=self.concurrency)}
        return [answer_row(k, answers.get(i), self.pid, item_id=i, version=self.casc.version,
                     error=None if i in answers else f"item {i} is not in {self.dataset!r}") for k, i in zip(idx, ids)]

    def _files(self, idx: list[int], paths: list[str]) -> list[PredictRow]:
        import asyncio

        from llm_flywheel.pipeline.predict_files import answer_inputs

        got = asyncio.run(answer_inputs(self.casc, [Path(p) for p in paths], log=False, concurrency=self.concurrency))
        return [answer_row(k, None, self.pid, path=p, error=str(a), version=self.casc.version) if isinstance(a, Exception)
                else answer_row(k, a, self.pid, path=p) for k, p, a in zip(idx, paths, got)]


@contextlib.contextmanager
def ray_cluster(config: RayPredictConfig) -> Iterator[str]:
    """Connect to ``config.address`` / ``RAY_ADDRESS``, or start a local cluster on 127.0.0.1 (no dashboard) for
    the run; disconnects (and stops what it started) afterwards.  Yields a description of the cluster."""
    ray = import_ray()
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    if ray.is_initialized():  # the caller's cluster (a test, a notebook): use it, leave it running
        yield "the connected Ray cluster"
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
            where = f"Ray cluster at {address}"
        else:
            ray.init(address="local", num_cpus=config.local_cpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
            where = "a local Ray cluster on 127.0.0.1 (started for this run)"
    except Exception as e:  # a cluster that is not there, or a local one that did not come up
        ray.shutdown()  # stops what a failed local start left running
        target = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise RayPredictError(f"could not connect to {target} ({type(e).__name__}: {e}); check --ray-address / "
                              "RAY_ADDRESS, or run with --engine local") from None
    try:
        yield where
    finally:
        ray.shutdown()


def _chunks(keyed: list[tuple[str, Any]], size: int, column: str) -> list[dict[str, list[Any]]]:
    """The inputs as chunks of about ``size`` (one chunk = one batch of one worker), items of the same content
    always in the same chunk: one labelling call asks a content once, so two workers never buy it twice."""
    groups: dict[str, list[tuple[int, Any]]] = {}
    for k, (key, ref) in enumerate(keyed):
        groups.setdefault(key, []).append((k, ref))
    chunks: list[dict[str, list[Any]]] = []
    cur: list[tuple[int, Any]] = []
    for members in groups.values():
        cur += members
        if len(cur) >= size:
            chunks.append({"indexes": [k for k, _ in cur], column: [r for _, r in cur]})
            cur = []
    if cur:
        chunks.append({"indexes": [k for k, _ in cur], column: [r for _, r in cur]})
    return chunks


def _reason(e: BaseException) -> str:
    """The line of a Ray error that says why: its last one (Ray puts the worker's own exception there)."""
    import re

    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address nothing answers at fails in seconds with its name (``ray.init`` retries for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayPredictError(f"nothing answers at the Ray cluster address {address} ({e}); start the cluster "
                              "(`ray start --head`) or fix --ray-address / RAY_ADDRESS") from None


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
            keyed = [(it.content_hash, it.id) for it in s.items(dataset, split=split, limit=limit)]
    else:
        keyed = [(str(k), str(Path(p).resolve())) for k, p in enumerate(files or [])]
    inputs = _chunks(keyed, cfg.batch_size, "item_ids" if split is not None else "paths")
    n = len(keyed)
    if not inputs:
        raise CascadeError(f"nothing to answer: split {split!r} of {dataset!r} has no items" if split is not None
                           else "nothing to answer: no input files")
    with ws.store() as s:
        calls0, usd0 = s.teacher_totals(dataset)
        run_id = s.start_run("predict", {"engine": "ray", "dataset": dataset, "split": split, "items": n,
                                         "version": version, "threshold": thr, "workers": cfg.workers,
                                         "batch_size": cfg.batch_size, "parquet": cfg.parquet,
                                         "teacher": teacher.spec if teacher is not None else None})
    sink = Sink(ws, dataset, thr, n, cfg, keep_answers)
    t0 = time.perf_counter()
    complete = False
    try:
        where = _run(ray, ws, dataset, inputs, version, thr, teacher, cfg, sink, progress, t0)
        complete = sink.answered + sink.errors == n
    finally:
        sink.close(complete)
        with ws.store() as s:
            s.finish_run(run_id, "done" if complete else "failed")
    elapsed = time.perf_counter() - t0
    if not complete:
        raise CascadeError(f"Ray returned {sink.answered + sink.errors} of {n} answers; the rest are "
                           "missing (see the Ray logs)")
    with ws.store() as s:
        calls1, usd1 = s.teacher_totals(dataset)
    n_ok = sink.answered
    return RayPredictResult(
        run_id, dataset, version, thr, where, cfg.workers, n, n_ok, sink.errors, dict(sink.by_source),
        (n_ok - sink.by_source["student"]) / n_ok if n_ok else None, elapsed, n / elapsed if elapsed else 0.0,
        calls1 - calls0, usd1 - usd0, tuple(sorted(sink.pids)), str(cfg.parquet) if cfg.parquet else None,
        sink.kept)


def _run(ray: Any, ws: Workspace, dataset: str, inputs: list[dict[str, Any]], version: str, thr: float,
         teacher: TeacherRef | None, cfg: RayPredictConfig, sink: Sink,
         progress: Callable[[PredictProgress], None] | None, t0: float) -> str:
    """Stream the inputs through the worker pool; each finished batch goes to ``sink`` as it arrives."""
    with ray_cluster(cfg) as where, _quiet_ray_data(ray):
        ds = ray.data.from_items(inputs, override_num_blocks=len(inputs))  # one chunk per block and per batch
        env = env_for_ray()
        with warnings.catch_warnings():  # Ray 2.60 deprecates ray_remote_args with no named replacement yet
            warnings.simplefilter("ignore", DeprecationWarning)
            out = ds.map_batches(
                CascadeWorker, batch_size=1, batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=cfg.workers), num_cpus=cfg.cpus_per_worker,
                fn_constructor_kwargs={"root": str(ws.root), "dataset": dataset, "version": version,
                                       "threshold": thr, "teacher": teacher,
                                       "teacher_concurrency": cfg.teacher_concurrency},
                runtime_env={"env_vars": env} if env else None,
                # Ray's default restarts a dead worker (and retries its batch) forever: bound both
                max_restarts=cfg.max_restarts, max_task_retries=cfg.max_restarts)
        try:
            for df in out.iter_batches(batch_size=None, batch_format="pandas"):
                sink.add(df)
                if progress is not None:
                    progress(sink.progress(time.perf_counter() - t0))
        except (CascadeError, OSError):
            raise
        except Exception as e:  # Ray's own errors (a worker that kept dying, a task error): say what is kept
            raise RayPredictError(
                f"the Ray run failed after {sink.answered + sink.errors} of {sink.n} answers ({_reason(e)}); the "
                "teacher answers bought so far are stored, so a re-run pays nothing for them") from e
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
