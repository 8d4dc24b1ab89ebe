"""A real PostgreSQL server for the tests and benchmarks: Debian's binaries, a temporary data directory, loopback.

Why not a mock or a shared server: the store's SQL must run on the real engine, and a server made here from
nothing (``initdb`` + ``pg_ctl``) needs no setup on the machine beyond ``apt-get install postgresql``.  As root
(CI containers) the server runs as the ``postgres`` account the package creates, since PostgreSQL refuses root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ports import free_port

USER = "flywheel"
DATABASE = "flywheel"


def pg_bin() -> Path | None:
    """The newest installed server's bin directory (``/usr/lib/postgresql/<major>/bin``), or None."""
    env = os.environ.get("FLYWHEEL_PG_BIN")
    if env:
        return Path(env)
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return roots[-1].parent if roots else None


class LocalPostgres:
    """``with LocalPostgres() as pg: pg.url`` -- a server on 127.0.0.1 with a ``flywheel`` database, removed after."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: keep PostgreSQL's default fsync/synchronous_commit (benchmarks); tests turn them off."""
        self.durable = durable
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (or set FLYWHEEL_PG_BIN)")
        self.dir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        self._as: list[str] = []
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        out = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {out.stderr.strip() or out.stdout.strip()}")

    def start(self) -> "LocalPostgres":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        # Durability off: a test server that dies loses nothing anyone needs, and fsync would dominate the suite.
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "start")
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"postgresql://{USER}@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {DATABASE}")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
