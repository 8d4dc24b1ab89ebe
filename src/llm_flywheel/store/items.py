"""Datasets, items, splits and the labels that apply to them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from llm_flywheel.store.records import Item, StoreError


class ItemQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    # -- datasets --------------------------------------------------------------------------------
    def put_dataset(self, name: str, task_json: str) -> None:
        self.execute(
            "INSERT INTO datasets(name, task_json, created_at) VALUES(?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET task_json=excluded.task_json",
            (name, task_json, time.time()),
        )

    def dataset_names(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM datasets ORDER BY name")]

    def dataset_task_json(self, name: str) -> str:
        row = self.conn.execute("SELECT task_json FROM datasets WHERE name=?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.dataset_names()) or "none"
            raise StoreError(f"dataset {name!r} is not in this workspace (known: {known}); run `flywheel data add` first")
        return row["task_json"]

    # -- items -----------------------------------------------------------------------------------
    def add_items(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert items in one transaction; already-present (dataset, source_ref) are skipped.

        Returns the number of new items.  Callers batch (a few thousand rows) so a kill loses at most a batch,
        and a re-run skips what is already there.
        """
        now = time.time()
        with self.transaction() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO items(dataset, source_ref, content_hash, modality, blob_path, text, "
                "features_json, source_split, split, gold_label, created_at) VALUES "
                "(:dataset, :source_ref, :content_hash, :modality, :blob_path, :text, :features_json, "
                ":source_split, :split, :gold_label, :created_at)",
                [
                    {
                        "blob_path": None,
                        "text": None,
                        "features_json": None,
                        "source_split": None,
                        "split": None,
                        "gold_label": None,
                        **r,
                        "created_at": now,
                    }
                    for r in rows
                ],
            )
            return c.total_changes - before

    def items(
        self,
        dataset: str,
        *,
        split: str | Sequence[str] | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[Item]:
        sql = "SELECT * FROM items WHERE dataset=?"
        params: list[Any] = [dataset]
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            sql += f" AND split IN ({','.join('?' * len(splits))})"
            params += splits
        if ids is not None:
            ids = list(ids)
            if not ids:
                return []
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            params += ids
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Item.from_row(r) for r in self.query(sql, params)]

    def item(self, item_id: int) -> Item:
        row = self.conn.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise StoreError(f"no item {item_id}")
        return Item.from_row(row)

    def set_splits(self, assignments: Iterable[tuple[int, str]]) -> None:
        with self.transaction() as c:
            c.executemany("UPDATE items SET split=? WHERE id=?", [(s, i) for i, s in assignments])

    def split_rows(self, dataset: str) -> list[sqlite3.Row]:
        """id, source_split, split, content_hash, text of every item (by id): what splitting and its checks need."""
        return self.query("SELECT id, source_split, split, content_hash, text FROM items WHERE dataset=? ORDER BY id",
                          (dataset,))

    def split_counts(self, dataset: str) -> dict[str | None, int]:
        """split (None: unassigned) -> number of items."""
        return {r["split"]: int(r["n"]) for r in self.query(
            "SELECT split, COUNT(*) AS n FROM items WHERE dataset=? GROUP BY split", (dataset,))}

    def labelled_counts_by_split(self, dataset: str) -> dict[str | None, int]:
        """split -> items already used: a label row (teacher or human, decided or not), a review, or a cascade answer."""
        return {r["split"]: int(r["n"]) for r in self.query(
            "SELECT i.split AS split, COUNT(*) AS n FROM items i WHERE i.dataset=? AND ("
            " EXISTS(SELECT 1 FROM labels l WHERE l.item_id=i.id) OR EXISTS(SELECT 1 FROM reviews r WHERE r.item_id=i.id)"
            " OR i.id IN (SELECT item_id FROM cascade_log WHERE item_id IS NOT NULL)) GROUP BY i.split", (dataset,))}

    # -- labels ----------------------------------------------------------------------------------
    def effective_labels(self, dataset: str, *, split: str | Sequence[str] | None = None) -> dict[int, str]:
        """item id -> best available label: a human label outranks the teacher's consensus."""
        sql = (
            "SELECT i.id AS id, COALESCE(h.label, t.label) AS label FROM items i "
            "LEFT JOIN labels h ON h.item_id=i.id AND h.source='human' "
            "LEFT JOIN labels t ON t.item_id=i.id AND t.source='teacher' "
            "WHERE i.dataset=? AND COALESCE(h.label, t.label) IS NOT NULL"
        )
        params: list[Any] = [dataset]
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            sql += f" AND i.split IN ({','.join('?' * len(splits))})"
            params += splits
        return {r["id"]: r["label"] for r in self.query(sql, params)}

