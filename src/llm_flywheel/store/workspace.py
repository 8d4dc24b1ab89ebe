"""A workspace is one folder -- content-addressed blobs, models and reports -- plus its store.

Why a folder: everything a run produced can be copied, archived or deleted as one thing, and every path
stored in the database is relative to it, so a workspace can move.  The store is ``flywheel.db`` in the folder
(SQLite) unless the workspace was made with a store URL (PostgreSQL, shared by several machines); that URL, without
any password, is recorded in ``workspace.json`` so every later command finds the same store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from llm_flywheel.store.base import Store
from llm_flywheel.store.blobs import BlobStore, blob_store_for
from llm_flywheel.store.engine import SQLITE_FILE, redact, resolve_url, without_password
from llm_flywheel.store.records import StoreError

DEFAULT_WORKSPACE = "flywheel-workspace"
STORE_ENV = "FLYWHEEL_STORE"
"""The store for workspaces made without ``--store`` (e.g. ``postgresql://flywheel@db/flywheel?schema={workspace}``:
one schema per workspace on a shared server)."""
CONFIG_FILE = "workspace.json"


@dataclass(frozen=True)
class Workspace:
    root: Path
    store_url: str = ""

    @classmethod
    def open(cls, root: str | Path | None = None, *, create: bool = True, store: str | None = None) -> "Workspace":
        """Open (and by default create) the workspace at ``root``.

        ``store``: where its database lives, for a new workspace (default: env ``FLYWHEEL_STORE``, else
        ``<root>/flywheel.db``).  An existing workspace keeps the store it was made with; a different ``store``
        for it is refused rather than silently starting an empty database.
        """
        r = Path(root if root is not None else os.environ.get("FLYWHEEL_WORKSPACE", DEFAULT_WORKSPACE)).resolve()
        recorded = _recorded_store(r)
        exists = recorded is not None or (r / SQLITE_FILE).exists()
        if not create and not exists:
            raise FileNotFoundError(f"no workspace at {r} (run `flywheel init` or pass --workspace)")
        url = _choose_store(r, recorded, exists, store)
        for sub in ("blobs", "models", "reports", "exports"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        ws = cls(r, url)
        ws.store().close()  # creates and migrates the database
        if recorded is None and not url.startswith("sqlite"):
            _record_store(r, url)
        return ws

    @property
    def db_path(self) -> Path:
        """The SQLite file (the default store); meaningless for a workspace on PostgreSQL."""
        return self.root / SQLITE_FILE

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def store_display(self) -> str:
        """Where the store is, fit to print (a path, or the URL without its password)."""
        return str(self.db_path) if self.store_url.startswith("sqlite") else redact(self.store_url)

    def store(self, *, readonly: bool = False) -> Store:
        return Store(self.store_url or self.db_path, readonly=readonly)

    def abspath(self, rel: str) -> Path:
        return self.root / rel

    @cached_property
    def blobs(self) -> BlobStore:
        """Where image bytes live (the folder today; an object store later, see :mod:`llm_flywheel.store.blobs`)."""
        return blob_store_for(self.root, _recorded_config(self.root).get("blobs"))

    def put_blob(self, data: bytes, content_hash: str, suffix: str) -> str:
        """Store bytes once under their hash; returns the key recorded in ``items.blob_path``."""
        return self.blobs.put(data, content_hash, suffix)

    def read_blob(self, key: str) -> bytes:
        return self.blobs.get(key)

    def sweep_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete what killed blob writes left behind (older than ``older_than_s``); returns how many."""
        return self.blobs.sweep_temp_files(older_than_s)

def _recorded_config(root: Path) -> dict:
    cfg = root / CONFIG_FILE
    if not cfg.exists():
        return {}
    try:
        data = json.loads(cfg.read_text())
        if not isinstance(data, dict):
            raise ValueError
    except ValueError:
        raise StoreError(f"{cfg} is not a workspace config (expected {{\"store\": URL}}); fix or remove it") from None
    return data


def _recorded_store(root: Path) -> str | None:
    url = _recorded_config(root).get("store")
    return str(url) if url else None


def _choose_store(root: Path, recorded: str | None, exists: bool, asked: str | None) -> str:
    """The store URL: the one the workspace was made with, else the one asked for, else env, else the SQLite file."""
    default = resolve_url(root / SQLITE_FILE)
    if exists:
        have = resolve_url(recorded, root) if recorded else default
        if asked is not None and resolve_url(asked, root) != have:
            raise StoreError(f"the workspace at {root} already uses the store {redact(have)}; it cannot move to "
                             f"{redact(resolve_url(asked, root))} (use another --workspace for a new store)")
        return have
    spec = asked if asked is not None else os.environ.get(STORE_ENV) or None
    return resolve_url(spec, root) if spec else default


def _record_store(root: Path, url: str) -> None:
    """Write the store URL into the workspace -- never its password (that belongs in PGPASSWORD or ~/.pgpass)."""
    safe = without_password(url)
    if safe != url:
        import warnings
        warnings.warn("the store URL's password is not recorded in the workspace: later commands need it in "
                      "PGPASSWORD or ~/.pgpass", stacklevel=3)
    (root / CONFIG_FILE).write_text(json.dumps({**_recorded_config(root), "store": safe}, indent=2) + "\n")
