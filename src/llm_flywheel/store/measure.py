"""Queries behind the measurements: teacher quality against gold, single-call answers, label-issue queueing.

Why a mixin of its own: evaluation, teacher quality, calibration and the label-noise search read the same few
joins (answers x items x gold); naming them here keeps every SQL statement in the store and lets the pipeline
stages stay plain arithmetic over typed rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

_CHUNK = 900  # below SQLite's default limit of 999 bound parameters


def _split_clause(split: str | Sequence[str] | None) -> tuple[str, list[Any]]:
    if split is None:
        return "", []
    splits = [split] if isinstance(split, str) else list(split)
    return f" AND i.split IN ({','.join('?' * len(splits))})", splits


class MeasureQueries:
    """Mixed into :class:`~llm_flywheel.store.base.Store`; uses its ``query`` and ``transaction``."""

    def busiest_teacher_model(self, dataset: str) -> str | None:
        """The teacher model with the most successful answers on ``dataset`` (None: no answers)."""
        rows = self.query(  # type: ignore[attr-defined]
            "SELECT a.model AS model, COUNT(*) AS n FROM teacher_answers a JOIN items i ON i.id=a.item_id "
            "WHERE i.dataset=? AND a.ok=1 GROUP BY a.model ORDER BY n DESC LIMIT 1", (dataset,))
        return rows[0]["model"] if rows else None

    def teacher_answers_with_gold(self, dataset: str, model: str,
                                  split: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Successful answers of ``model`` on items with gold labels, matched by content hash (duplicates of an item
        are measured against its gold).  Keys: pass_index, label, confidence, label_logprob, gold."""
        sc, sp = _split_clause(split)
        return [dict(r) for r in self.query(  # type: ignore[attr-defined]
            "SELECT a.pass_index AS pass_index, a.label AS label, a.confidence AS confidence, "
            "a.label_logprob AS label_logprob, i.gold_label AS gold "
            "FROM teacher_answers a JOIN items i ON i.content_hash=a.content_hash AND i.dataset=? "
            f"WHERE a.ok=1 AND a.model=? AND i.gold_label IS NOT NULL{sc} GROUP BY a.id, i.id", [dataset, model, *sp])]

    def teacher_consensus_with_gold(self, dataset: str, split: str | Sequence[str] | None = None
                                    ) -> list[dict[str, Any]]:
        """Teacher consensus rows of items with gold labels.  Keys: label, quality, status, prov (JSON), gold."""
        sc, sp = _split_clause(split)
        return [dict(r) for r in self.query(  # type: ignore[attr-defined]
            "SELECT l.label AS label, l.quality AS quality, l.status AS status, l.provenance AS prov, "
            "i.gold_label AS gold FROM labels l JOIN items i ON i.id=l.item_id "
            f"WHERE l.source='teacher' AND i.dataset=? AND i.gold_label IS NOT NULL{sc}", [dataset, *sp])]

    def teacher_failure_counts(self, dataset: str, model: str, split: str | Sequence[str] | None = None
                               ) -> dict[str, int]:
        """error kind -> number of failed calls of ``model`` on ``dataset``."""
        sc, sp = _split_clause(split)
        return {r["k"]: int(r["n"]) for r in self.query(  # type: ignore[attr-defined]
            "SELECT a.error_kind AS k, COUNT(*) AS n FROM teacher_answers a JOIN items i ON i.id=a.item_id "
            f"WHERE a.ok=0 AND a.model=? AND i.dataset=?{sc} GROUP BY a.error_kind", [model, dataset, *sp])}

    def gold_labels(self, item_ids: Sequence[int]) -> dict[int, str]:
        """item id -> gold label, for those of ``item_ids`` that have one."""
        out: dict[int, str] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), _CHUNK):
            chunk = ids[s : s + _CHUNK]
            out |= {int(r["id"]): r["gold_label"] for r in self.query(  # type: ignore[attr-defined]
                f"SELECT id, gold_label FROM items WHERE id IN ({','.join('?' * len(chunk))}) "
                "AND gold_label IS NOT NULL", chunk)}
        return out

    def teacher_answers_by_pass(self, item_ids: Sequence[int], model: str) -> dict[int, dict[int, str | None]]:
        """item id -> {pass index -> label} of ``model``'s successful answers on those items."""
        out: dict[int, dict[int, str | None]] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), _CHUNK):
            chunk = ids[s : s + _CHUNK]
            for r in self.query(  # type: ignore[attr-defined]
                    "SELECT item_id, pass_index, label FROM teacher_answers WHERE ok=1 AND model=? "
                    f"AND item_id IN ({','.join('?' * len(chunk))})", [model, *chunk]):
                out.setdefault(int(r["item_id"]), {})[int(r["pass_index"])] = r["label"]
        return out

    def first_answers_by_hash(self, content_hashes: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """model -> {content hash -> label of the successful pass-0 answer}: what *one* teacher call per item says
        (matched by content hash, like the cache; None where the answer was off the label list)."""
        return self.pass_answers_by_hash(content_hashes, 0)

    def pass_answers_by_hash(self, content_hashes: Sequence[str], pass_index: int, *, asked: bool = False
                             ) -> dict[str, dict[str, str | None]]:
        """model -> {content hash -> label of the successful answer of pass ``pass_index``} (None: off the list).
        ``asked=True``: every item the pass was *asked* about, failed calls included (their label is None)."""
        out: dict[str, dict[str, str | None]] = {}
        hs = list(content_hashes)
        ok = "" if asked else "ok=1 AND "
        for s in range(0, len(hs), _CHUNK):
            chunk = hs[s : s + _CHUNK]
            for r in self.query(  # type: ignore[attr-defined]
                    f"SELECT content_hash, model, label, ok FROM teacher_answers WHERE {ok}pass_index=? "
                    f"AND content_hash IN ({','.join('?' * len(chunk))})", [pass_index, *chunk]):
                got = out.setdefault(r["model"], {})
                if r["ok"] or r["content_hash"] not in got:
                    got[r["content_hash"]] = r["label"] if r["ok"] else None
        return out

    def queue_scored_for_review(self, scores: dict[int, float], reason: str) -> int:
        """Queue items with a per-item score (an item already queued keeps its entry); returns how many were new."""
        now = time.time()
        with self.transaction() as c:  # type: ignore[attr-defined]
            cur = c.executemany("INSERT INTO review_queue(item_id, reason, score, created_at) VALUES(?,?,?,?) "
                                "ON CONFLICT DO NOTHING", [(i, reason, s, now) for i, s in scores.items()])
            return int(cur.rowcount)
