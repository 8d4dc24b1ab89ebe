"""Retention for the cascade log and the saved inputs under ``exports/served/``, by age, row count and bytes.

Why it is careful: the log is the wheel's feedback.  Rows of store items -- what ``feedback.collect`` reads by
round, and what the split guard and review read -- are never deleted, nor is a saved input such a row points to
(see :meth:`llm_flywheel.store.serving.ServingQueries.prune_cascade_log`); served traffic goes oldest first.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from llm_flywheel.store.workspace import Workspace

logger = logging.getLogger(__name__)
SERVED_DIR = "exports/served"


@dataclass(frozen=True)
class RetentionReport:
    rows_deleted: int
    rows_kept_pending: int
    payloads_deleted: int
    payload_bytes_left: int


def apply_retention(ws: Workspace, *, max_age_days: float | None = None, max_rows: int | None = None,
                    max_payload_bytes: int | None = None, now: float | None = None) -> RetentionReport:
    """One retention pass (safe to run while the service writes: SQLite does the locking)."""
    now = time.time() if now is None else now
    older_than = None if max_age_days is None else now - max_age_days * 86400.0
    with ws.store() as store:
        res = store.prune_cascade_log(older_than=older_than, max_rows=max_rows)
        deleted = _unlink(ws.root, res.payload_refs_released)
        in_use = store.payload_refs_in_use()
        files = _served_files(ws.root)
        # saved inputs no row refers to any more (their rows were deleted above, or by an earlier pass)
        # (a file younger than a minute may belong to a request whose log row is not written yet)
        settled = min(now - 60.0, older_than) if older_than is not None else now - 60.0
        orphans = [rel for rel in files if rel not in in_use and files[rel][1] < settled]
        deleted += _unlink(ws.root, orphans)
        for rel in orphans:
            files.pop(rel, None)
        total = sum(size for size, _ in files.values())
        if max_payload_bytes is not None and total > max_payload_bytes:
            freed: list[str] = []
            for rel, (size, mtime) in sorted(files.items(), key=lambda kv: kv[1][1]):  # oldest first
                if total <= max_payload_bytes:
                    break
                if in_use.get(rel) or (rel not in in_use and mtime >= now - 60.0):
                    continue  # a kept row needs it, or its row is not written yet
                freed.append(rel)
                total -= size
            store.release_payload_refs(freed)
            deleted += _unlink(ws.root, freed)
    return RetentionReport(res.rows_deleted, res.kept_pending, deleted, total)


def _served_files(root: Path) -> dict[str, tuple[int, float]]:
    """relative path -> (bytes, mtime) of every saved input."""
    out: dict[str, tuple[int, float]] = {}
    base = root / SERVED_DIR
    if not base.exists():
        return out
    for dirpath, _, names in os.walk(base):
        for n in names:
            if n.startswith(".tmp-"):
                continue
            p = Path(dirpath) / n
            try:
                st = p.stat()
            except OSError:
                continue
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime)
    return out


def _unlink(root: Path, rels: tuple[str, ...] | list[str]) -> int:
    n = 0
    for rel in rels:
        if not rel.startswith(SERVED_DIR + "/"):
            continue  # only ever delete what the service saved
        try:
            (root / rel).unlink()
            n += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("retention could not delete %s: %s", rel, e)
    return n
