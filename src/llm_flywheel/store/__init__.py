"""The store: the one place that speaks SQL, plus the workspace's blob files.

Everything outside this package reads and writes through named, typed methods of :class:`Store`."""

from llm_flywheel.store.base import (
    DB_ERRORS,
    MIGRATIONS,
    MODEL_ROLES,
    SCHEMA_VERSION,
    SPLITS,
    Item,
    Row,
    Store,
    StoreError,
    connect,
)

__all__ = ["DB_ERRORS", "MIGRATIONS", "MODEL_ROLES", "SCHEMA_VERSION", "SPLITS", "Item", "Row", "Store", "StoreError",
           "connect"]
