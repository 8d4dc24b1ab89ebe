"""The store on SQLite and on a real PostgreSQL (started by the tests): one schema, migrations, locking, URLs."""

from __future__ import annotations

import json
import sqlite3
import threading
import warnings

import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.store import Store, StoreError
from llm_flywheel.store.base import MIGRATIONS, _split_sql
from llm_flywheel.store.engine import HEAD_REVISION, KNOWN_REVISIONS, redact, to_pyformat, without_password
from llm_flywheel.store.workspace import Workspace


def _columns(store: Store) -> dict[str, set[str]]:
    from sqlalchemy import create_engine, inspect

    if store.dialect == "sqlite":
        eng = create_engine(f"sqlite:///{store.path}")
    else:
        from llm_flywheel.store.engine import engine_for
        eng = engine_for(store.url)
    insp = inspect(eng)
    return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names() if t != "alembic_version"}


def test_placeholders_become_pyformat_outside_literals():
    assert to_pyformat("SELECT * FROM t WHERE a=? AND b=:name") == "SELECT * FROM t WHERE a=%s AND b=%(name)s"
    assert to_pyformat("SELECT '?', ':x', 'it''s ?' WHERE c LIKE 'a%' AND d=?") == \
        "SELECT '?', ':x', 'it''s ?' WHERE c LIKE 'a%%' AND d=%s"
    assert to_pyformat("SELECT x::text FROM t") == "SELECT x::text FROM t"


def test_urls_never_show_a_password():
    url = "postgresql://alice:s3cret@db:5432/flywheel?schema=ws"
    assert "s3cret" not in redact(url) and "alice" in redact(url)
    assert without_password(url) == "postgresql://alice@db:5432/flywheel?schema=ws"


def test_head_revision_is_the_scripts_head():
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import llm_flywheel.store.engine as engine

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.__file__).parent / "migrations"))
    scripts = ScriptDirectory.from_config(cfg)
    assert scripts.get_current_head() == HEAD_REVISION
    assert {r.revision for r in scripts.walk_revisions()} == set(KNOWN_REVISIONS)


def test_legacy_sqlite_file_fresh_sqlite_and_postgres_have_one_schema(tmp_path, pg_url):
    legacy = tmp_path / "legacy.db"
    c = sqlite3.connect(legacy, isolation_level=None)
    for stmt in _split_sql(MIGRATIONS[0]):
        c.execute(stmt)
    c.execute("PRAGMA user_version=1")
    c.close()
    with Store(legacy) as old, Store(tmp_path / "new.db") as new, Store(pg_url) as pg:
        assert _columns(old) == _columns(new) == _columns(pg)
        assert {"items", "teacher_answers", "labels", "models", "cascade_log", "teacher_batches"} <= set(_columns(pg))
        for s in (old, new, pg):
            assert s.query("SELECT version_num FROM alembic_version")[0][0] == HEAD_REVISION
            assert s.integrity_ok()


def test_a_newer_store_is_refused(pg_url, tmp_path):
    for where in (pg_url, tmp_path / "f.db"):
        with Store(where) as s:
            s.execute("UPDATE alembic_version SET version_num='zz_from_the_future'")
        with pytest.raises(StoreError, match="upgrade the package"):
            Store(where)


def _writers_serialise(where: str, n: int = 12) -> list[int]:
    """Each writer reads the highest run id and inserts one more inside a transaction: with one writer at a time the
    values are 1..n; with interleaving (read committed, no lock) two writers would read the same value."""
    with Store(where) as s:
        s.execute("CREATE TABLE counter(v INTEGER NOT NULL UNIQUE)")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with Store(where) as s, s.transaction() as c:
                top = c.execute("SELECT COALESCE(MAX(v), 0) FROM counter").fetchone()[0]
                threading.Event().wait(0.01)  # widen the window a second writer would need
                c.execute("INSERT INTO counter(v) VALUES(?)", (top + 1,))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Store(where) as s:
        return sorted(r[0] for r in s.query("SELECT v FROM counter"))


def test_one_writer_at_a_time_on_both(tmp_path, pg_url):
    assert _writers_serialise(str(tmp_path / "f.db")) == list(range(1, 13))
    assert _writers_serialise(pg_url) == list(range(1, 13))


def test_processes_creating_one_new_store_at_once_migrate_it_once(pg_url):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        assert pool.map(_open_and_count, [pg_url] * 3) == [1, 1, 1]


def _open_and_count(url: str) -> int:
    with Store(url) as s:
        return len(s.query("SELECT version_num FROM alembic_version"))


def test_teacher_answer_bought_once_across_stores(pg_url, tmp_path):
    """Two processes' stores racing to write the same final answer: the first wins, the second is told (None)."""
    from llm_flywheel.teachers.base import TeacherAnswer

    ws = Workspace.open(tmp_path / "ws", store=pg_url)
    with ws.store() as s:
        s.put_dataset("d", "{}")
        s.add_items([{"dataset": "d", "source_ref": "r1", "content_hash": "h1", "modality": "text", "text": "x"}])
        item = s.items("d")[0]
    ans = TeacherAnswer(item_id=item.id, content_hash="h1", model="m", prompt_version="p", pass_index=0, ok=True,
                        label="a", confidence=0.9)
    with ws.store() as a, ws.store() as b:
        first, second = a.add_teacher_answer(ans), b.add_teacher_answer(ans)
    assert isinstance(first, int) and second is None
    with ws.store() as s:
        assert s.query("SELECT COUNT(*) AS n FROM teacher_answers")[0]["n"] == 1


def test_workspace_records_its_postgres_store_without_the_password(tmp_path, pg_url):
    root = tmp_path / "ws"
    with_pw = pg_url.replace("flywheel@", "flywheel:not-a-real-password@")  # trust auth: the password is ignored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ws = Workspace.open(root, store=with_pw)
    assert any("PGPASSWORD" in str(w.message) for w in caught)
    recorded = (root / "workspace.json").read_text()
    assert "not-a-real-password" not in recorded and json.loads(recorded)["store"].startswith("postgresql")
    assert not (root / "flywheel.db").exists()
    again = Workspace.open(root)  # no --store: the recorded one
    assert again.store_url == without_password(ws.store_url) and "not-a-real-password" not in again.store_url
    with pytest.raises(StoreError, match="cannot move"):
        Workspace.open(root, store=str(tmp_path / "other.db"))


def test_cli_store_option_and_clear_errors(tmp_path, pg_url):
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "--store", pg_url, "init"])
    assert r.exit_code == 0, r.output
    assert "PostgreSQL" in r.output
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "init"])  # later commands: the recorded store
    assert r.exit_code == 0 and "PostgreSQL" in r.output, r.output
    dead = "postgresql://flywheel@127.0.0.1:9/flywheel"
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws2"), "--store", dead, "init"])
    assert r.exit_code != 0 and "cannot connect" in r.output and "PGPASSWORD" in r.output
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws3"), "--store", "mysql://x/y", "init"])
    assert r.exit_code != 0 and "unsupported store URL" in r.output
