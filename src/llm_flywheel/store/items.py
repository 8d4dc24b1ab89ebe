"""Datasets, items, splits and the labels that apply to them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_flywheel.core.splits import first_of_each_group
from llm_flywheel.store.records import Item, StoreError
from llm_flywheel.store.schema import SPLITS


@dataclass(frozen=True)
class DatasetUsage:
    """What already depends on a dataset's splits (re-splitting is refused once either is non-zero)."""

    labels: int
    models: int


@dataclass
class DatasetCounts:
    """The raw counts behind ``flywheel data info`` (keys as the JSON output names them)."""

    items: int = 0
    by_split: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> source split -> items
    gold_labels: dict[str, dict[str, int]] = field(default_factory=dict)  # gold label -> split -> items
    labelled: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> items/teacher/.../unlabelled
    label_sources: list[dict[str, Any]] = field(default_factory=list)  # {source, status, n}
    teacher_answers: list[dict[str, Any]] = field(default_factory=list)  # {model, answers, ok, failed, cost_usd}


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
            cur = c.executemany(
                "INSERT INTO items(dataset, source_ref, content_hash, modality, blob_path, text, "
                "features_json, source_split, split, gold_label, created_at) VALUES "
                "(:dataset, :source_ref, :content_hash, :modality, :blob_path, :text, :features_json, "
                ":source_split, :split, :gold_label, :created_at) ON CONFLICT DO NOTHING",
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
            return int(cur.rowcount)

    def items(
        self,
        dataset: str,
        *,
        split: str | Sequence[str] | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
        distinct: bool = False,
    ) -> list[Item]:
        """Items of ``dataset`` by id.  ``distinct``: only the first item of each duplicate group (same content
        hash, or for text the same normalised text -- :func:`llm_flywheel.core.splits.group_key`), so that a test
        set counts an email that appears twice once."""
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
        if limit is not None and not distinct:
            sql += f" LIMIT {int(limit)}"
        rows = self.query(sql, params)
        if distinct:  # one item per duplicate group: a measurement must not count a repeated item twice
            rows = first_of_each_group(rows)[:limit]
        return [Item.from_row(r) for r in rows]

    def item(self, item_id: int) -> Item:
        row = self.conn.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise StoreError(f"no item {item_id}")
        return Item.from_row(row)

    def set_splits(self, assignments: Iterable[tuple[int, str]]) -> None:
        with self.transaction() as c:
            c.executemany("UPDATE items SET split=? WHERE id=?", [(s, i) for i, s in assignments])

    def split_rows(self, dataset: str) -> list[Any]:
        """id, source_split, split, content_hash, text, gold_label of every item (by id): what splitting and its
        checks need."""
        return self.query("SELECT id, source_split, split, content_hash, text, gold_label FROM items WHERE dataset=? "
                          "ORDER BY id", (dataset,))

    def split_counts(self, dataset: str) -> dict[str | None, int]:
        """split (None: unassigned) -> number of items."""
        return {r["split"]: int(r["n"]) for r in self.query(
            "SELECT split, COUNT(*) AS n FROM items WHERE dataset=? GROUP BY split", (dataset,))}

    def split_count_summary(self, dataset: str) -> dict[str, int]:
        """split -> items in :data:`SPLITS` order (empty splits left out), plus ``unassigned`` when some have none."""
        c = self.split_counts(dataset)
        return {s: c[s] for s in SPLITS if c.get(s)} | ({"unassigned": c[None]} if c.get(None) else {})

    def item_count(self, dataset: str) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM items WHERE dataset=?", (dataset,))[0]["n"])

    def source_refs(self, dataset: str) -> set[str]:
        """Every item's ``source_ref``: what an import already holds (a re-run skips them)."""
        return {r["source_ref"] for r in self.query("SELECT source_ref FROM items WHERE dataset=?", (dataset,))}

    def items_by_source_ref(self, dataset: str, refs: Sequence[str]) -> dict[str, tuple[int, str, str | None]]:
        """source_ref -> (item id, content hash, split) for the refs the dataset holds."""
        out: dict[str, tuple[int, str, str | None]] = {}
        refs = list(refs)
        for s in range(0, len(refs), 900):
            chunk = refs[s : s + 900]
            for r in self.query(f"SELECT id, source_ref, content_hash, split FROM items WHERE dataset=? "
                                f"AND source_ref IN ({','.join('?' * len(chunk))})", [dataset, *chunk]):
                out[r["source_ref"]] = (int(r["id"]), r["content_hash"], r["split"])
        return out

    def source_test_outside_test(self, dataset: str) -> int:
        """Items the source marks as test that sit in another split (they joined an already-split dataset)."""
        return int(self.query("SELECT COUNT(*) AS n FROM items WHERE dataset=? AND source_split='test' "
                              "AND split!='test'", (dataset,))[0]["n"])

    def dataset_usage(self, dataset: str) -> DatasetUsage:
        r = self.query(
            "SELECT (SELECT COUNT(*) FROM labels l JOIN items i ON i.id=l.item_id WHERE i.dataset=?) AS labels,"
            " (SELECT COUNT(*) FROM models WHERE dataset=?) AS models", (dataset, dataset))[0]
        return DatasetUsage(labels=int(r["labels"]), models=int(r["models"]))

    def dataset_counts(self, dataset: str) -> DatasetCounts:
        """Counts by split x source split, gold label x split, labelled status by split, label sources and teacher
        answers per model."""
        out = DatasetCounts(items=self.item_count(dataset))
        for r in self.query("SELECT split, source_split, COUNT(*) AS n FROM items WHERE dataset=? "
                            "GROUP BY split, source_split", (dataset,)):
            out.by_split.setdefault(r["split"] or "unassigned", {})[r["source_split"] or "none"] = r["n"]
        for r in self.query("SELECT gold_label, split, COUNT(*) AS n FROM items WHERE dataset=? "
                            "GROUP BY gold_label, split", (dataset,)):
            out.gold_labels.setdefault(r["gold_label"] or "(none)", {})[r["split"] or "unassigned"] = r["n"]
        keys = ("items", "teacher", "teacher_undecided", "human", "unlabelled")
        for r in self.query(
            "SELECT i.split AS split, COUNT(*) AS items,"
            " SUM(CASE WHEN t.label IS NOT NULL THEN 1 ELSE 0 END) AS teacher,"
            " SUM(CASE WHEN t.item_id IS NOT NULL AND t.label IS NULL THEN 1 ELSE 0 END) AS teacher_undecided,"
            " SUM(CASE WHEN h.item_id IS NOT NULL THEN 1 ELSE 0 END) AS human,"
            " SUM(CASE WHEN COALESCE(h.label, t.label) IS NULL THEN 1 ELSE 0 END) AS unlabelled"
            " FROM items i LEFT JOIN labels t ON t.item_id=i.id AND t.source='teacher'"
            " LEFT JOIN labels h ON h.item_id=i.id AND h.source='human' WHERE i.dataset=? GROUP BY i.split",
            (dataset,),
        ):
            out.labelled[r["split"] or "unassigned"] = {k: int(r[k] or 0) for k in keys}
        out.label_sources = [dict(r) for r in self.query(
            "SELECT l.source AS source, l.status AS status, COUNT(*) AS n FROM labels l JOIN items i ON i.id=l.item_id"
            " WHERE i.dataset=? GROUP BY l.source, l.status ORDER BY l.source, l.status", (dataset,))]
        out.teacher_answers = [dict(r) for r in self.query(
            "SELECT a.model AS model, COUNT(*) AS answers, SUM(a.ok) AS ok, SUM(1 - a.ok) AS failed,"
            " ROUND(CAST(COALESCE(SUM(a.cost_usd), 0) AS NUMERIC), 6) AS cost_usd FROM teacher_answers a JOIN items i ON i.id=a.item_id"
            " WHERE i.dataset=? GROUP BY a.model ORDER BY a.model", (dataset,))]
        return out

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

