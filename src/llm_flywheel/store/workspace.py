"""A workspace is one folder: ``flywheel.db`` plus content-addressed blobs, models and reports.

Why a folder: everything a run produced can be copied, archived or deleted as one thing, and every path
stored in the database is relative to it, so a workspace can move.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llm_flywheel.store.base import Store

DEFAULT_WORKSPACE = "flywheel-workspace"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | Path | None = None, *, create: bool = True) -> "Workspace":
        r = Path(root if root is not None else os.environ.get("FLYWHEEL_WORKSPACE", DEFAULT_WORKSPACE)).resolve()
        if not create and not (r / "flywheel.db").exists():
            raise FileNotFoundError(f"no workspace at {r} (run `flywheel init` or pass --workspace)")
        for sub in ("blobs", "models", "reports", "exports"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        ws = cls(r)
        ws.store().close()  # creates and migrates the database
        return ws

    @property
    def db_path(self) -> Path:
        return self.root / "flywheel.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def store(self, *, readonly: bool = False) -> Store:
        return Store(self.db_path, readonly=readonly)

    def abspath(self, rel: str) -> Path:
        return self.root / rel

    def put_blob(self, data: bytes, content_hash: str, suffix: str) -> str:
        """Store bytes once under their hash; returns the workspace-relative path.

        Written to a temporary file and renamed into place, so a kill never leaves a half-written blob.
        """
        rel = f"blobs/{content_hash[:2]}/{content_hash}{suffix}"
        dest = self.root / rel
        if dest.exists():
            return rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return rel

    def sweep_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete ``.tmp-*`` files a killed blob write left behind; returns how many.

        Only files older than ``older_than_s`` go, so a write in progress in another process is never touched.
        """
        cutoff = time.time() - older_than_s
        n = 0
        for tmp in (self.root / "blobs").glob("*/.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    n += 1
            except FileNotFoundError:  # removed by another sweeper meanwhile
                continue
        return n
