"""Typed records the store hands out."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


def _db_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


DB_ERRORS = _db_errors()
"""The database errors a store may raise (a constraint refused, a lock timed out), whichever engine it runs on."""


class StoreError(RuntimeError):
    """A store that cannot be used (newer schema, not a flywheel database, ...)."""


@dataclass(frozen=True)
class Item:
    id: int
    dataset: str
    source_ref: str
    content_hash: str
    modality: str
    blob_path: str | None
    text: str | None
    features: list[float] | None
    source_split: str | None
    split: str | None
    gold_label: str | None

    @classmethod
    def from_row(cls, row: Any) -> "Item":
        return cls(
            id=row["id"],
            dataset=row["dataset"],
            source_ref=row["source_ref"],
            content_hash=row["content_hash"],
            modality=row["modality"],
            blob_path=row["blob_path"],
            text=row["text"],
            features=json.loads(row["features_json"]) if row["features_json"] else None,
            source_split=row["source_split"],
            split=row["split"],
            gold_label=row["gold_label"],
        )


