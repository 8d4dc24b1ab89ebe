"""Where a store lives (a URL), the DBAPI connection the mixins speak to, and the migrations.

Why hand-written portable SQL on a DBAPI connection instead of SQLAlchemy expressions: the queries were already
written and tested, the serving path logs a row per request (no per-statement compile there), and the SQL the
store may use is small (the rules: docs/store.md).  SQLAlchemy supplies what is hard to get right --
URLs, pooling, per-dialect DDL from the Core tables -- and Alembic the migrations.

One writer at a time, on both engines: SQLite's ``BEGIN IMMEDIATE`` takes the database's write lock;
on PostgreSQL :meth:`Connection.transaction` takes a transaction-scoped advisory lock per schema, so a
read-then-write transaction (a budget reservation, a claim) means the same thing on both.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from llm_flywheel.store.records import StoreError

SQLITE_FILE = "flywheel.db"
BASELINE_REVISION = "v5_baseline"
KNOWN_REVISIONS = ("v5_baseline", "v6_served_teacher_claims", "v7_teacher_model_files", "v8_answer_served_model",
                    "v9_claims_and_leases", "v10_evidence_horizons", "v11_serving_spend")
"""Every Alembic revision this package knows, oldest first; ``tests/test_store_backends.py`` checks them against
the scripts' graph."""
HEAD_REVISION = KNOWN_REVISIONS[-1]
LEGACY_SQLITE_VERSION = 5
"""``PRAGMA user_version`` of the last SQLite-only migration; SQLite files also carry it (and later revisions add to
it) so an older llm-flywheel refuses a newer file instead of misreading it."""
SQLITE_USER_VERSION = LEGACY_SQLITE_VERSION + len(KNOWN_REVISIONS) - 1
"""``PRAGMA user_version`` of a SQLite file at :data:`HEAD_REVISION`: one more per revision after the baseline."""

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def redact(url: str) -> str:
    """The URL without its password: what may be printed, logged or written to a file."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def without_password(url: str) -> str:
    """The URL with its password dropped (libpq then reads it from PGPASSWORD or ~/.pgpass)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}@{netloc[1]}", parts.path, parts.query, parts.fragment))


def workspace_slug(root: Path) -> str:
    """A schema name for a workspace folder (``{workspace}`` in a store URL): stable and distinct per path."""
    return "ws_" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def resolve_url(spec: str | Path, root: Path | None = None) -> str:
    """A store URL from what a user may write: a path (a SQLite file), ``sqlite:///...``, ``postgresql://...``.

    ``{workspace}`` in the URL becomes :func:`workspace_slug` of ``root``, so one PostgreSQL database can hold
    many workspaces, one schema each (``postgresql://host/flywheel?schema={workspace}``).
    """
    s = str(spec)
    if "://" not in s:
        return f"sqlite:///{Path(s).resolve()}"
    if "{workspace}" in s:
        if root is None:
            raise StoreError("a store URL with {workspace} needs a workspace folder")
        s = s.replace("{workspace}", workspace_slug(root))
    scheme = s.split("://", 1)[0]
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return "postgresql+psycopg://" + s.split("://", 1)[1]
    if scheme == "sqlite":
        return s
    raise StoreError(f"unsupported store URL {redact(s)!r}: use a path, sqlite:///path or postgresql://user@host/db")


def dialect_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def _split_schema(url: str) -> tuple[str, str | None]:
    """Our own ``schema=`` query parameter is taken out of the URL; psycopg never sees it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = [(k, v) for k, v in query if k != "schema"]
    if schema is not None and not _SCHEMA_RE.match(schema):
        raise StoreError(f"schema name {schema!r} must be lower-case letters, digits and _ (at most 63)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)), schema


# -- rows and placeholders -------------------------------------------------------------------------
class Row:
    """What ``sqlite3.Row`` offers (index by position or column name, ``keys()``, ``dict(row)``) for PostgreSQL."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._index[key]]
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and tuple(self._values) == tuple(other._values) and self._index == other._index

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    index = {c.name: i for i, c in enumerate(desc)} if desc else {}
    return lambda values: Row(values, index)


_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|::|\?|:[A-Za-z_]\w*|%")


@lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """SQLite's ``?`` and ``:name`` placeholders as psycopg's ``%s`` / ``%(name)s`` (literal ``%`` doubled).

    Quoted strings and ``::`` casts keep their ``?`` and ``:x``, so those stay literals; a ``%`` is doubled
    everywhere, literals included, because psycopg reads ``%`` in the whole query.
    """
    def sub(m: re.Match[str]) -> str:
        t = m.group(0)
        if t[0] in "'\"":
            return t.replace("%", "%%")
        if t == "?":
            return "%s"
        if t == "%":
            return "%%"
        if t.startswith(":") and t != "::":
            return f"%({t[1:]})s"
        return t
    return _TOKEN.sub(sub, sql)


class Connection:
    """The DBAPI connection the store's mixins use: ``execute``/``executemany`` with SQLite's placeholders on both
    engines, rows indexable by column name, and :meth:`transaction` with one writer at a time."""

    def __init__(self, raw: Any, dialect: str, lock_key: int) -> None:
        self.raw = raw  # the pooled DBAPI connection (closing it returns it to the pool)
        self.dialect = dialect
        self._lock_key = lock_key
        self._driver = raw.driver_connection
        self._mutex = threading.RLock()  # psycopg connections are not for concurrent use from threads

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        if self.dialect == "sqlite":
            return self._driver.execute(sql, params)
        with self._mutex:
            return self._driver.execute(to_pyformat(sql), _pg_params(params))

    def executemany(self, sql: str, seq: Sequence[Any]) -> Any:
        if self.dialect == "sqlite":
            return self._driver.executemany(sql, seq)
        with self._mutex:
            cur = self._driver.cursor()
            cur.executemany(to_pyformat(sql), [_pg_params(p) for p in seq])
            return cur

    @contextmanager
    def transaction(self) -> Iterator["Connection"]:
        """All or nothing, with the write lock taken up front (see the module's docstring)."""
        if self.dialect == "sqlite":
            self._driver.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._driver.execute("ROLLBACK")
                raise
            else:
                self._driver.execute("COMMIT")
            return
        with self._mutex, self._driver.transaction():
            self._driver.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            yield self

    def close(self) -> None:
        self.raw.close()


def _pg_params(params: Sequence[Any] | dict[str, Any]) -> Any:
    if isinstance(params, dict):
        return {k: int(v) if isinstance(v, bool) else v for k, v in params.items()}
    return [int(v) if isinstance(v, bool) else v for v in params]


# -- engines ---------------------------------------------------------------------------------------
_ENGINES: OrderedDict[tuple[int, str], Any] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
_MAX_ENGINES = 8
"""Engines (and their pooled connections) kept per process; a process touching more stores -- a test session makes
hundreds of workspaces -- disposes the least recently used, so idle connections never pile up on the server."""


def _sqlite_connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills, fast
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


def engine_for(url: str) -> Any:
    """One SQLAlchemy engine per URL and process (a forked worker makes its own)."""
    key = (os.getpid(), url)
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = _ENGINES[key] = _make_engine(url)
            while len(_ENGINES) > _MAX_ENGINES:
                _, old = _ENGINES.popitem(last=False)
                old.dispose(close=True)  # idle connections closed; checked-out ones close when their Store does
        else:
            _ENGINES.move_to_end(key)
        return eng


def _make_engine(url: str) -> Any:
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    if dialect_of(url) == "sqlite":
        path = sqlite_path(url)
        # NullPool: a file is opened per Store and closed with it, as before (a moved or replaced file is seen).
        eng = create_engine("sqlite://", creator=lambda: _sqlite_connect(path), poolclass=NullPool)

        @event.listens_for(eng, "begin")
        def _begin(conn: Any) -> None:  # SQLAlchemy's recipe: real transactions on pysqlite, write lock up front
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return eng
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreError("a PostgreSQL store needs the driver: pip install 'llm-flywheel[postgres]'") from None
    base, schema = _split_schema(url)
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if schema:
        connect_args["options"] = f"-c search_path={schema}"
    eng = create_engine(base, connect_args=connect_args, pool_pre_ping=True, pool_size=4, max_overflow=16)

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn: Any, _rec: Any) -> None:
        _configure_pg(dbapi_conn)
    eng._flywheel_schema = schema  # type: ignore[attr-defined]
    return eng


def _configure_pg(conn: Any) -> None:
    """Numbers come back as Python floats (``AVG``/``SUM`` of integers are ``numeric`` on PostgreSQL)."""
    from psycopg.types.numeric import FloatLoader

    conn.adapters.register_loader("numeric", FloatLoader)


def open_connection(url: str) -> Connection:
    """A connection to the store at ``url`` (created if it is a new SQLite file or a new schema)."""
    eng = engine_for(url)
    dialect = dialect_of(url)
    if dialect == "sqlite":
        raw = eng.raw_connection()
        return Connection(raw, dialect, 0)
    schema = getattr(eng, "_flywheel_schema", None)
    try:
        raw = eng.raw_connection()
    except Exception as e:  # OperationalError: refused, auth, unknown database
        raise StoreError(f"cannot connect to the PostgreSQL store {redact(url)}: {_first_line(e)} "
                         "(is the server running? user and database right? password in PGPASSWORD or ~/.pgpass)") from None
    # Autocommit, like the SQLite connection: a statement outside Connection.transaction() is its own transaction.
    # Set on every checkout because a migration (run_alembic) hands the pooled connection back in READ COMMITTED.
    raw.driver_connection.autocommit = True
    raw.driver_connection.row_factory = _row_factory
    if schema:
        try:
            raw.driver_connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        except Exception:  # another process created it between the check and the insert: that is what we wanted
            if not raw.driver_connection.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0]:
                raise
    return Connection(raw, dialect, _lock_key(schema))


def _lock_key(schema: str | None) -> int:
    """The advisory lock that stands for "the write lock of this store" (one per schema)."""
    return int.from_bytes(hashlib.sha256(f"flywheel:{schema or 'public'}".encode()).digest()[:8], "big", signed=True)


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- migrations ------------------------------------------------------------------------------------
def current_revision(conn: Connection) -> str | None:
    if conn.dialect == "sqlite":
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone()
    else:
        exists = conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0]
    if not exists:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def check_revision(revision: str | None, where: str) -> None:
    if revision is not None and revision not in KNOWN_REVISIONS:
        raise StoreError(f"{where} has schema revision {revision}, newer than this llm-flywheel knows; upgrade the package")


def run_alembic(url: str, *, stamp_only: bool = False) -> None:
    """Bring the store at ``url`` to :data:`HEAD_REVISION` (or only record that it is at the baseline).

    Runs in one transaction with the store's write lock, and Alembic reads the current revision inside it, so
    processes that open a new store at the same moment create it once.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    eng = engine_for(url)
    pg = dialect_of(url) == "postgresql"
    with eng.connect() as conn:
        if pg:  # a real transaction (the store's own connections autocommit), so the advisory lock lasts until COMMIT
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            if pg:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_lock_key(getattr(eng, '_flywheel_schema', None))})")
            cfg.attributes["connection"] = conn
            if stamp_only:
                command.stamp(cfg, BASELINE_REVISION)
            else:
                command.upgrade(cfg, "head")
            if not pg:
                conn.exec_driver_sql(f"PRAGMA user_version={SQLITE_USER_VERSION}")
