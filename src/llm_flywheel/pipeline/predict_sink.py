"""The driver's side of ``predict --engine ray``: the typed answer rows, and writing each answer exactly once.

Why a separate sink: the workers never write the cascade log -- a batch Ray re-executes after a worker died would
log its items twice.  The driver receives each finished batch once, skips an item it has already written, and
appends to the cascade log and the Parquet file (kept under ``NAME.partial`` until the run completes).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from llm_flywheel.pipeline.cascade import SOURCES, CascadeAnswer
from llm_flywheel.store.serving import CascadeLogRow
from llm_flywheel.store.workspace import Workspace


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



def answer_row(index: int, a: CascadeAnswer | None, pid: int, *, item_id: int | None = None, path: str | None = None,
         error: str | None = None, version: str = "") -> PredictRow:
    if a is None:
        return PredictRow(index, item_id, path, None, None, "", 0.0, "", 0.0, None, version, 0.0, error, pid)
    return PredictRow(index, a.item_id if item_id is None else item_id, path, a.content_hash, a.label, a.source,
                      float(a.confidence), a.student_label, float(a.student_confidence), a.teacher_label,
                      a.model_version, float(a.latency_ms), None, pid)



class Sink:
    """The driver's side: each answer written once (cascade log, Parquet), counted for progress."""

    def __init__(self, ws: Workspace, dataset: str, threshold: float, n: int, cfg: Any,
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
