"""Batch API submissions: what was sent, which (item, pass) each line covers, and what came back.

Why a table and not a file: a labelling run can be killed at any moment between "uploaded", "created" and
"collected".  The submission is recorded (with its lines) *before* anything is sent, and every step after it is
one autocommitted update, so the next run finds the batch it already paid for instead of submitting it again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_BATCH_FIELDS = ("input_file_id", "batch_id", "status", "output_file_id", "error_file_id", "cost_usd", "detail")


@dataclass
class BatchRecord:
    """One row of ``teacher_batches`` (see store/schema.py v5)."""

    id: int
    submission: str
    dataset: str
    base_url: str
    model: str
    prompt_version: str
    input_file_id: str | None
    batch_id: str | None
    status: str
    output_file_id: str | None
    error_file_id: str | None
    n_lines: int
    reserved_usd: float | None
    cost_usd: float | None
    price_ratio: float
    detail: str | None
    run_id: int | None
    created_at: float
    updated_at: float
    collected_at: float | None


@dataclass
class BatchLine:
    """One request line of a submission: ``custom_id`` is how the provider's output names it."""

    custom_id: str
    item_id: int
    content_hash: str
    pass_index: int
    answer_id: int | None = None


class BatchQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    def add_batch_submission(self, *, submission: str, dataset: str, base_url: str, model: str, prompt_version: str,
                             lines: Sequence[BatchLine], price_ratio: float, reserved_usd: float | None,
                             run_id: int | None) -> int:
        """Record a submission and its lines in one transaction (status ``prepared``); returns its row id."""
        now = time.time()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO teacher_batches(submission, dataset, base_url, model, prompt_version, status, n_lines, "
                "reserved_usd, price_ratio, run_id, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (submission, dataset, base_url, model, prompt_version, "prepared", len(lines), reserved_usd,
                 price_ratio, run_id, now, now))
            bid = int(cur.fetchone()[0])
            c.executemany(
                "INSERT INTO teacher_batch_lines(batch, custom_id, item_id, content_hash, pass_index) VALUES (?,?,?,?,?)",
                [(bid, ln.custom_id, ln.item_id, ln.content_hash, ln.pass_index) for ln in lines])
        return bid

    def update_batch(self, batch: int, **fields: Any) -> None:
        """Set any of input_file_id, batch_id, status, output_file_id, error_file_id, cost_usd, detail."""
        bad = set(fields) - set(_BATCH_FIELDS)
        if bad:
            raise ValueError(f"unknown teacher_batches field(s): {sorted(bad)}")
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        self.execute(f"UPDATE teacher_batches SET {cols}, updated_at=? WHERE id=?",
                     [*fields.values(), time.time(), batch])

    def batch_record(self, batch: int) -> BatchRecord:
        rows = self.query("SELECT * FROM teacher_batches WHERE id=?", (batch,))
        if not rows:
            raise KeyError(f"no batch submission {batch}")
        return BatchRecord(**dict(rows[0]))

    def open_batches(self, model: str, prompt_version: str, base_url: str | None = None) -> list[BatchRecord]:
        """Submissions of this (model, prompt version) whose answers are not collected yet, oldest first."""
        sql = "SELECT * FROM teacher_batches WHERE collected_at IS NULL AND model=? AND prompt_version=?"
        params: list[Any] = [model, prompt_version]
        if base_url is not None:
            sql, params = sql + " AND base_url=?", [*params, base_url]
        return [BatchRecord(**dict(r)) for r in self.query(sql + " ORDER BY id", params)]

    def batches(self, dataset: str | None = None) -> list[BatchRecord]:
        sql, params = "SELECT * FROM teacher_batches", []
        if dataset is not None:
            sql, params = sql + " WHERE dataset=?", [dataset]
        return [BatchRecord(**dict(r)) for r in self.query(sql + " ORDER BY id", params)]

    def batch_lines(self, batch: int) -> list[BatchLine]:
        rows = self.query("SELECT custom_id, item_id, content_hash, pass_index, answer_id FROM teacher_batch_lines "
                          "WHERE batch=? ORDER BY item_id, pass_index, custom_id", (batch,))
        return [BatchLine(**dict(r)) for r in rows]

    def collect_batch(self, batch: int, answers: Sequence[tuple[str, int]], cost_usd: float) -> None:
        """Mark a submission collected: (custom_id, teacher_answers.id) of its stored answers and their cost.
        Opens no transaction: call it inside ``Store.transaction()`` together with the answers' inserts, so a kill
        during collection leaves the batch uncollected and its answers unwritten -- never half of each."""
        now = time.time()
        self.conn.executemany("UPDATE teacher_batch_lines SET answer_id=? WHERE batch=? AND custom_id=?",
                              [(aid, batch, cid) for cid, aid in answers])
        self.execute("UPDATE teacher_batches SET status='collected', collected_at=?, updated_at=?, cost_usd=? "
                     "WHERE id=?", (now, now, cost_usd, batch))

    def pending_batch_keys(self, model: str, prompt_version: str, base_url: str) -> set[tuple[str, int]]:
        """(content_hash, pass_index) covered by a submission to ``base_url`` not collected yet: never submit those
        again (the same filter as :meth:`open_batches`, so every pending key belongs to a batch that is resumed)."""
        rows = self.query(
            "SELECT l.content_hash, l.pass_index FROM teacher_batch_lines l JOIN teacher_batches b ON b.id=l.batch "
            "WHERE b.collected_at IS NULL AND b.model=? AND b.prompt_version=? AND b.base_url=?",
            (model, prompt_version, base_url))
        return {(r["content_hash"], r["pass_index"]) for r in rows}

    def in_open_batch(self, model: str, prompt_version: str, base_url: str, content_hash: str,
                      pass_index: int) -> bool:
        """True when a submission to ``base_url`` not collected yet carries this call (the filter of
        :meth:`pending_batch_keys`, for one key): asked by an online run just before it would pay for the call."""
        return bool(self.query(
            "SELECT 1 FROM teacher_batch_lines l JOIN teacher_batches b ON b.id=l.batch WHERE l.content_hash=? "
            "AND l.pass_index=? AND b.collected_at IS NULL AND b.model=? AND b.prompt_version=? AND b.base_url=? "
            "LIMIT 1", (content_hash, pass_index, model, prompt_version, base_url)))

    def batch_cost_means(self, model: str) -> dict[str, float | None]:
        """Mean recorded cost per answer of ``model`` online and through batches (keys ``online``, ``batch``;
        None where none is recorded): the plan prices each mode from its own answers."""
        rows = self.query(
            "SELECT (l.answer_id IS NOT NULL) AS batched, AVG(a.cost_usd) AS c, COUNT(a.cost_usd) AS n "
            "FROM teacher_answers a LEFT JOIN teacher_batch_lines l ON l.answer_id=a.id "
            "WHERE a.model=? AND a.cost_usd IS NOT NULL GROUP BY batched", (model,))
        out: dict[str, float | None] = {"online": None, "batch": None}
        for r in rows:
            out["batch" if r["batched"] else "online"] = float(r["c"]) if r["n"] else None
        return out

    def batch_cost_totals(self, model: str | None = None) -> dict[str, float | int]:
        """Spend through the Batch API (keys: ``answers``, ``cost_usd``): the ledger's batch line."""
        sql = ("SELECT COUNT(a.id) AS n, COALESCE(SUM(a.cost_usd), 0) AS c FROM teacher_batch_lines l "
               "JOIN teacher_answers a ON a.id=l.answer_id JOIN teacher_batches b ON b.id=l.batch")
        params: list[Any] = []
        if model is not None:
            sql, params = sql + " WHERE b.model=?", [model]
        r = self.query(sql, params)[0]
        return {"answers": int(r["n"]), "cost_usd": float(r["c"])}

    # -- the simulated teacher's view of a dataset (it must not run SQL itself) --------------------------------
    def gold_by_hash(self, dataset: str) -> dict[str, str | None]:
        """content_hash -> gold label for every item of ``dataset``."""
        rows = self.query("SELECT content_hash, gold_label FROM items WHERE dataset=?", (dataset,))
        return {r["content_hash"]: r["gold_label"] for r in rows}
