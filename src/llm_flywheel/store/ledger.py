"""The teacher ledger: what the teacher has been paid, read from ``teacher_answers`` (every paid answer is stored
before it is used, so the ledger is the table itself).

Why a snapshot is enough to attribute spend: answers are append-only, so (calls, USD) before and after a stage
differ by exactly what the stage paid -- ``pipeline.cost.spend_of`` wraps this into one helper.
"""

from __future__ import annotations

from typing import Any


class LedgerQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``query``."""

    def teacher_totals(self, dataset: str) -> tuple[int, float]:
        """(calls, USD) recorded so far for ``dataset``, failed calls included (they are paid too); answers
        ``flywheel serve`` bought and labelling reused (``bought_by``) are serving's spend, not counted here."""
        r = self.query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(a.cost_usd), 0) AS c FROM teacher_answers a "
            "JOIN items i ON i.id=a.item_id WHERE i.dataset=? AND a.bought_by IS NULL",
            (dataset,),
        )[0]
        return int(r["n"]), float(r["c"])

    def teacher_cost_stats(self, dataset: str, *, model: str | None = None, online_only: bool = False
                           ) -> dict[str, Any]:
        """Mean recorded cost per *successful* teacher call for ``dataset`` (failed calls are counted, not averaged).
        ``online_only``: leave out answers collected from a Batch API job (priced at the batch rate) -- the price
        of answering live traffic.

        Keys: calls, ok_calls, priced (any call has a cost), mean_cost_per_call (0 when none is priced),
        total_cost_usd, mean_tokens_in, mean_tokens_out, mean_latency_s (None when unknown).
        """
        sql = (
            "SELECT COUNT(*) AS n, SUM(a.ok) AS n_ok, SUM(CASE WHEN a.ok=1 AND a.cost_usd IS NOT NULL THEN 1 ELSE 0 END) "
            "AS n_priced, SUM(CASE WHEN a.ok=1 THEN a.cost_usd ELSE 0 END) AS cost, SUM(a.cost_usd) AS cost_all, "
            "AVG(a.tokens_in) AS tin, AVG(a.tokens_out) AS tout, AVG(a.latency_s) AS lat "
            "FROM teacher_answers a JOIN items i ON i.id=a.item_id WHERE i.dataset=?"
        )
        params: list[Any] = [dataset]
        if model is not None:
            sql += " AND a.model=?"
            params.append(model)
        if online_only:
            sql += " AND NOT EXISTS (SELECT 1 FROM teacher_batch_lines b WHERE b.answer_id=a.id)"
        r = self.query(sql, params)[0]
        n_priced = int(r["n_priced"] or 0)
        return {
            "calls": int(r["n"] or 0),
            "ok_calls": int(r["n_ok"] or 0),
            "priced": n_priced > 0,
            "mean_cost_per_call": float(r["cost"] or 0.0) / n_priced if n_priced else 0.0,
            "total_cost_usd": float(r["cost_all"] or 0.0),
            "mean_tokens_in": float(r["tin"]) if r["tin"] is not None else None,
            "mean_tokens_out": float(r["tout"]) if r["tout"] is not None else None,
            "mean_latency_s": float(r["lat"]) if r["lat"] is not None else None,
        }

    def teacher_asked_ids(self, dataset: str) -> set[int]:
        """Items of ``dataset`` the teacher has a labels row for (agreed or not): the wheel never selects them again."""
        return {int(r["item_id"]) for r in self.query(
            "SELECT l.item_id FROM labels l JOIN items i ON i.id=l.item_id WHERE i.dataset=? AND l.source='teacher'",
            (dataset,))}
