"""Blobs -- the stored bytes of image items -- behind one small interface.

Why an interface: the database already moves to a server when several machines share a workspace; the bytes must be
able to follow.  Today they live in the workspace folder (:class:`FileBlobStore`, content addressed, written by
rename so a kill never leaves half a file).  An object store is the next implementation: the same four methods over
S3/GCS/MinIO (``put`` = PUT of ``blobs/<h[:2]>/<h><suffix>``, ``get`` = GET, ``local_path`` = None), chosen by a
``"blobs": "s3://bucket/prefix"`` entry in the workspace's ``workspace.json`` -- see docs/store.md.  Keys stay the
workspace-relative paths already stored in ``items.blob_path``, so moving blobs never rewrites the database.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from llm_flywheel.store.records import StoreError


@runtime_checkable
class BlobStore(Protocol):
    def put(self, data: bytes, content_hash: str, suffix: str) -> str:
        """Store ``data`` once under its hash; returns its key (idempotent: the same bytes give the same key)."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``FileNotFoundError`` naming the key when they are gone."""

    def local_path(self, key: str) -> Path | None:
        """A path on this machine for tools that want a file (review exports), or None for remote stores."""

    def sweep_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Remove what killed writes left behind; returns how many."""


class FileBlobStore:
    """Blobs as files under the workspace folder: ``blobs/<first two hex>/<sha256><suffix>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes, content_hash: str, suffix: str) -> str:
        """Written to a temporary file and renamed into place, so a kill never leaves a half-written blob."""
        key = f"blobs/{content_hash[:2]}/{content_hash}{suffix}"
        dest = self.root / key
        if dest.exists():
            return key
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {key} is missing from {self.root} (was the workspace copied without "
                                    "its blobs/ folder?)") from None

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:  # a key is a stored relative path; never let it escape
            raise StoreError(f"blob key {key!r} points outside the workspace")
        return path

    def sweep_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Only files older than ``older_than_s`` go, so a write in progress in another process is never touched."""
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


def blob_store_for(root: Path, spec: str | None) -> BlobStore:
    """The blob store a workspace's config names (``None``/``"file"``: the folder itself)."""
    if spec in (None, "", "file"):
        return FileBlobStore(root)
    raise StoreError(f"blob store {spec!r} is not available in this version (only the workspace folder); "
                     "see docs/store.md for the object-store plan")
