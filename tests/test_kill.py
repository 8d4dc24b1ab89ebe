"""Crash safety: SIGKILL a writer mid-import, and read while a writer imports.

A real `flywheel data add fashion-mnist` runs in a subprocess on Fashion-MNIST-format idx files the test writes;
this process watches the database through its own SQLite connection.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_flywheel.data.base import BATCH
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.store import Store
from llm_flywheel.store.workspace import Workspace

from test_data_fashion_mnist import write_fashion

N_TRAIN, N_TEST = 14_000, 1_000
TOTAL = N_TRAIN + N_TEST


def start_import(ws: Workspace, src: Path) -> subprocess.Popen:
    code = "import sys; from llm_flywheel.interfaces.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, "-w", str(ws.root), "data", "add", "fashion-mnist", "--path", str(src),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def count(conn: sqlite3.Connection | Store) -> int:
    return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def test_sigkill_mid_import_leaves_a_usable_database_and_rerun_completes(tmp_path):
    src = tmp_path / "fm"
    write_fashion(src, N_TRAIN, N_TEST, seed=11)
    ws = Workspace.open(tmp_path / "ws")
    proc = start_import(ws, src)
    watcher = ws.store()  # SQLite or PostgreSQL, whichever the suite runs on
    try:
        while proc.poll() is None and count(watcher) == 0:
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.3))  # land anywhere inside the next batch
        assert proc.poll() is None, f"import finished before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    finally:
        watcher.close()
        if proc.poll() is None:
            proc.kill()

    # the database opens, is consistent, and holds whole batches only
    with ws.store() as conn:
        assert conn.integrity_ok()
        n_killed = count(conn)
    assert 0 < n_killed < TOTAL and n_killed % BATCH == 0
    with ws.store() as s:
        assert s.integrity_ok()

    # a re-run completes without duplicates and without re-adding what survived
    rep = add_dataset(ws, "fashion-mnist", path=src, progress=False)
    assert rep.already_present == n_killed and rep.added == TOTAL - n_killed
    with ws.store() as s:
        assert s.integrity_ok()
        assert s.query("SELECT COUNT(*) FROM items")[0][0] == TOTAL
        assert s.query("SELECT COUNT(*) FROM (SELECT source_ref FROM items GROUP BY source_ref HAVING COUNT(*) > 1) AS dup"
                       )[0][0] == 0
        assert s.query("SELECT COUNT(DISTINCT content_hash) FROM items")[0][0] == TOTAL  # random pictures: all differ
        blob_paths = {r[0] for r in s.query("SELECT blob_path FROM items")}
        assert s.query("SELECT COUNT(*) FROM items WHERE split IS NULL")[0][0] == 0
        assert s.query("SELECT COUNT(*) FROM items WHERE split='test'")[0][0] == N_TEST
    # every blob is there once, under its hash; nothing but (at most) a few temp files of the killed write besides
    on_disk = {p.relative_to(ws.root).as_posix() for p in (ws.root / "blobs").rglob("*.png")}
    assert on_disk == blob_paths
    leftovers = [p for p in (ws.root / "blobs").rglob("*") if p.is_file() and p.suffix != ".png"]
    assert all(p.name.startswith(".tmp-") for p in leftovers) and len(leftovers) <= 1


@pytest.mark.sqlite_only
def test_reader_sees_whole_batches_while_a_writer_imports(tmp_path):
    src = tmp_path / "fm"
    write_fashion(src, 9_000, 1_000, seed=12)
    total = 10_000
    ws = Workspace.open(tmp_path / "ws")
    proc = start_import(ws, src)
    reader = sqlite3.connect(ws.db_path, timeout=30)
    snapshot = sqlite3.connect(ws.db_path, timeout=30, isolation_level=None)
    seen: list[int] = []
    held: int | None = None
    try:
        while proc.poll() is None:
            n = count(reader)  # never "database is locked": WAL readers do not wait for the writer
            seen.append(n)
            if held is None and 0 < n < total:
                snapshot.execute("BEGIN")
                held = count(snapshot)  # a read transaction that stays open while the writer goes on
            time.sleep(0.005)
        out, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert count(snapshot) == held  # the open transaction kept its consistent snapshot
        snapshot.execute("COMMIT")
    finally:
        reader.close()
        snapshot.close()
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(ws.db_path) as c:
        assert count(c) == total
    assert seen == sorted(seen)  # never goes backwards
    assert all(n % BATCH == 0 or n == total for n in seen)  # only whole committed batches are ever visible
    assert any(0 < n < total for n in seen) and held is not None  # we really read during the import


def test_stale_blob_temp_files_are_swept_by_the_next_import(tmp_path):
    """A kill between mkstemp and rename leaves a .tmp-* file; the next import removes it, a fresh one survives."""
    src = tmp_path / "src"
    write_fashion(src, n_train=20, n_test=10)
    ws = Workspace.open(tmp_path / "ws")
    shard = ws.root / "blobs" / "ab"
    shard.mkdir(parents=True)
    stale, fresh = shard / ".tmp-stale", shard / ".tmp-fresh"
    stale.write_bytes(b"half a png")
    fresh.write_bytes(b"being written right now")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    add_dataset(ws, "fashion-mnist", path=str(src), progress=False)
    assert not stale.exists()
    assert fresh.exists()
