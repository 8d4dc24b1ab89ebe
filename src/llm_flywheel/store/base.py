"""The store at the centre of the wheel: SQLite by default, PostgreSQL when several machines share it.

Why SQLite in WAL mode by default: one file that survives ``kill -9`` (every write is a transaction), lets the
service read while a labelling run writes, and needs no server.  Why PostgreSQL as well: replicas on several
machines (``flywheel serve --replicas``, ``predict --engine ray``) log feedback and share one teacher cache.
Every expensive result (a teacher answer) is written here *before* it is used, so any run can be killed and
resumed without paying twice.

The schema is versioned by Alembic (store/migrations/, baseline = the Core tables in :mod:`.tables`); SQLite
files made before Alembic are brought to v5 by the legacy :data:`MIGRATIONS` and then stamped.  To change the
schema, add an Alembic revision; never edit an old one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_flywheel.store import engine as _engine
from llm_flywheel.store.answers import AnswerQueries
from llm_flywheel.store.batches import BatchQueries
from llm_flywheel.store.claims import ClaimQueries
from llm_flywheel.store.engine import Connection, Row, redact
from llm_flywheel.store.items import ItemQueries
from llm_flywheel.store.ledger import LedgerQueries
from llm_flywheel.store.measure import MeasureQueries
from llm_flywheel.store.models import ModelQueries
from llm_flywheel.store.records import DB_ERRORS, Item, StoreError
from llm_flywheel.store.review import ReviewQueries
from llm_flywheel.store.serving import ServingQueries
from llm_flywheel.store.training import TrainingQueries
from llm_flywheel.store.schema import MIGRATIONS, MODEL_ROLES, SCHEMA_VERSION, SPLITS, _split_sql

__all__ = ["DB_ERRORS", "MIGRATIONS", "MODEL_ROLES", "SCHEMA_VERSION", "SPLITS", "Item", "Row", "Store", "StoreError",
           "connect"]


def connect(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open a SQLite connection with the settings every part of the project relies on."""
    return _engine._sqlite_connect(Path(path), timeout)


class Store(ItemQueries, AnswerQueries, BatchQueries, ClaimQueries, LedgerQueries, MeasureQueries, ModelQueries,
            ReviewQueries, ServingQueries, TrainingQueries):
    """Typed access to the store.  One instance per thread/process; the database does the locking."""

    def __init__(self, where: str | Path, *, readonly: bool = False) -> None:
        """``where``: a SQLite file path, ``sqlite:///path`` or ``postgresql://user@host/db[?schema=name]``."""
        self.url = _engine.resolve_url(where)
        self.dialect = _engine.dialect_of(self.url)
        self.path: Path | None = _engine.sqlite_path(self.url) if self.dialect == "sqlite" else None
        self.where = str(self.path) if self.path is not None else redact(self.url)
        try:
            self.conn: Connection = _engine.open_connection(self.url)
            if self.dialect == "sqlite":
                self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:  # "file is not a database", a corrupt header, ...
            raise StoreError(f"{self.where} is not a usable SQLite database ({e}); move it aside or use another workspace") from None
        try:
            if not readonly:
                self.migrate()
            else:
                self._check_version()
        except BaseException:
            self.conn.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------
    def _check_version(self) -> tuple[int, str | None]:
        """(the legacy SQLite version -- 0 for a new file, PostgreSQL has none -- and the Alembic revision), after
        refusing a store newer than this package."""
        version = 0
        if self.dialect == "sqlite":
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _engine.SQLITE_USER_VERSION:
                raise StoreError(f"{self.where} has schema v{version}, newer than this llm-flywheel "
                                 f"(v{_engine.SQLITE_USER_VERSION}); upgrade the package")
        revision = _engine.current_revision(self.conn)
        _engine.check_revision(revision, self.where)
        return version, revision

    def migrate(self) -> None:
        """Legacy SQLite migrations up to v5 (files made before Alembic), then Alembic to the head revision."""
        version, revision = self._check_version()
        if revision == _engine.HEAD_REVISION:
            return
        if self.dialect == "sqlite" and revision is None and 0 < version:
            for target in range(version, SCHEMA_VERSION):
                with self.transaction() as c:
                    for stmt in _split_sql(MIGRATIONS[target]):
                        c.execute(stmt)
                    c.execute(f"PRAGMA user_version={target + 1}")
            _engine.run_alembic(self.url, stamp_only=True)
        _engine.run_alembic(self.url)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """All or nothing, and the write lock is taken up front (``BEGIN IMMEDIATE`` / an advisory lock)."""
        with self.conn.transaction() as c:
            yield c

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """Rows indexable by position and by column name (``sqlite3.Row`` or :class:`Row`)."""
        return self.conn.execute(sql, params).fetchall()

    def integrity_ok(self) -> bool:
        """SQLite: ``PRAGMA integrity_check``.  PostgreSQL keeps its own pages consistent (WAL, checksums); there a
        store is sound when it answers and is at a known revision."""
        if self.dialect == "sqlite":
            return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return _engine.current_revision(self.conn) in _engine.KNOWN_REVISIONS
