"""The SQLite store at the centre of the wheel.

Why SQLite in WAL mode: one file that survives ``kill -9`` (every write is a transaction), lets the
service read while a labelling run writes, and needs no server.  Every expensive result (a teacher
answer) is written here *before* it is used, so any run can be killed and resumed without paying twice.

The schema is versioned with ``PRAGMA user_version`` and migrated forward by :data:`MIGRATIONS`; to change
it, append a migration, never edit an old one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_flywheel.store.answers import AnswerQueries
from llm_flywheel.store.batches import BatchQueries
from llm_flywheel.store.items import ItemQueries
from llm_flywheel.store.ledger import LedgerQueries
from llm_flywheel.store.measure import MeasureQueries
from llm_flywheel.store.models import ModelQueries
from llm_flywheel.store.records import Item, StoreError
from llm_flywheel.store.review import ReviewQueries
from llm_flywheel.store.serving import ServingQueries
from llm_flywheel.store.training import TrainingQueries
from llm_flywheel.store.schema import MIGRATIONS, MODEL_ROLES, SCHEMA_VERSION, SPLITS, _split_sql

__all__ = ["MIGRATIONS", "MODEL_ROLES", "SCHEMA_VERSION", "SPLITS", "Item", "Store", "StoreError", "connect"]


def connect(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open a connection with the settings every part of the project relies on."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills, fast
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


class Store(ItemQueries, AnswerQueries, BatchQueries, LedgerQueries, MeasureQueries, ModelQueries, ReviewQueries, ServingQueries,
            TrainingQueries):
    """Typed access to ``flywheel.db``.  One instance per thread/process; SQLite does the locking."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            self.conn = connect(self.path)
        except sqlite3.DatabaseError as e:  # "file is not a database", a corrupt header, ...
            raise StoreError(f"{self.path} is not a usable SQLite database ({e}); move it aside or use another workspace") from None
        if not readonly:
            self.migrate()
        else:
            self._check_version()

    # -- lifecycle -----------------------------------------------------------------------------
    def _check_version(self) -> int:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema v{version}, newer than this llm-flywheel (v{SCHEMA_VERSION}); upgrade the package"
            )
        return version

    def migrate(self) -> None:
        version = self._check_version()
        for target in range(version, SCHEMA_VERSION):
            with self.transaction() as c:
                for stmt in _split_sql(MIGRATIONS[target]):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={target + 1}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: all or nothing, and the write lock is taken up front."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


