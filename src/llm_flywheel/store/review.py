"""Human review: candidates, human labels and their history."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

REVIEW_EXPORT_SETS = ("queue", "disagreements", "all")


class ReviewQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    # -- human review ------------------------------------------------------------------------------
    def review_candidates(self, dataset: str, *, low_confidence_below: float | None = None) -> list[dict[str, Any]]:
        """What a person should look at: unresolved review-queue entries (teacher disagreements, label issues, audit
        disagreements) and, with ``low_confidence_below``, stream items the cascade deferred whose teacher label
        quality is below it (reason ``low_confidence``).  Items that already have a human label are left out."""
        cols = ("i.id AS id, i.source_ref AS source_ref, i.content_hash AS content_hash, i.modality AS modality, "
                "i.blob_path AS blob_path, i.text AS text, i.features_json AS features_json, i.split AS split, "
                "t.label AS teacher_label, t.quality AS quality, t.soft_json AS soft_json, t.status AS status, "
                "t.provenance AS provenance")
        no_human = "NOT EXISTS(SELECT 1 FROM labels h WHERE h.item_id=i.id AND h.source='human')"
        rows = [dict(r) for r in self.query(
            f"SELECT {cols}, q.reason AS reason, q.score AS queue_score FROM review_queue q JOIN items i ON i.id=q.item_id "
            f"LEFT JOIN labels t ON t.item_id=i.id AND t.source='teacher' "
            f"WHERE i.dataset=? AND q.resolved_at IS NULL AND {no_human} ORDER BY i.id", (dataset,))]
        if low_confidence_below is not None:
            rows += [dict(r) for r in self.query(
                f"SELECT {cols}, 'low_confidence' AS reason, NULL AS queue_score FROM labels t JOIN items i ON i.id=t.item_id "
                f"WHERE i.dataset=? AND t.source='teacher' AND t.label IS NOT NULL AND t.quality < ? AND {no_human} "
                f"AND NOT EXISTS(SELECT 1 FROM review_queue q WHERE q.item_id=i.id) "
                f"AND EXISTS(SELECT 1 FROM cascade_log c WHERE c.item_id=i.id AND c.source='teacher') ORDER BY i.id",
                (dataset, float(low_confidence_below)))]
        return rows

    def apply_human_label(self, item_id: int, label: str, *, at: float, reviewer: str | None, note: str,
                          provenance: dict[str, Any]) -> str:
        """Record one human decision made at time ``at`` (epoch seconds) and make the newest decision the item's
        human label; resolves its review-queue entry.  Returns ``seen`` (this decision -- same item, note and time --
        is already recorded: nothing changes), ``older`` (recorded in history; a newer decision stays the label) or
        ``applied``.  Why ``at`` and not now: pulling the same annotations twice, or in another order, must end in
        the same state."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM reviews WHERE item_id=? AND note=? AND created_at=?",
                         (item_id, note, at)).fetchone():
                return "seen"
            c.execute("INSERT INTO reviews(item_id, label, reviewer, note, created_at) VALUES(?,?,?,?,?)",
                      (item_id, label, reviewer, note, at))
            cur = c.execute("SELECT updated_at FROM labels WHERE item_id=? AND source='human'", (item_id,)).fetchone()
            if cur is not None and cur["updated_at"] > at:
                return "older"
            c.execute(
                "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                "provenance=excluded.provenance, updated_at=excluded.updated_at",
                (item_id, "human", label, 1.0, json.dumps({label: 1.0}), "human", json.dumps(provenance), at))
            c.execute("UPDATE review_queue SET resolved_at=? WHERE item_id=? AND resolved_at IS NULL", (time.time(), item_id))
            return "applied"

    def human_labels(self, dataset: str) -> dict[int, str]:
        """item id -> human label, for every item of ``dataset`` a person labelled."""
        return {int(r["item_id"]): r["label"] for r in self.query(
            "SELECT l.item_id AS item_id, l.label AS label FROM labels l JOIN items i ON i.id=l.item_id "
            "WHERE i.dataset=? AND l.source='human' AND l.label IS NOT NULL", (dataset,))}

    def teacher_labels(self, item_ids: Sequence[int]) -> dict[int, str | None]:
        """item id -> the teacher's consensus label (None where the passes disagreed), for the given items."""
        out: dict[int, str | None] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), 900):
            chunk = ids[s : s + 900]
            out |= {int(r["item_id"]): r["label"] for r in self.query(
                f"SELECT item_id, label FROM labels WHERE source='teacher' AND item_id IN ({','.join('?' * len(chunk))})",
                chunk)}
        return out

    def review_history(self, item_id: int) -> list[dict[str, Any]]:
        """Every recorded human decision on an item, oldest first."""
        return [dict(r) for r in self.query(
            "SELECT id, label, reviewer, note, created_at FROM reviews WHERE item_id=? ORDER BY created_at, id", (item_id,))]


    # -- the review CSV ------------------------------------------------------------------------------------
    def review_export_rows(self, dataset: str, which: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows of the review CSV: ``queue`` (unresolved queue entries, highest score first), ``disagreements``
        (teacher passes disagreed, tie-broken or not) or ``all`` (every teacher-labelled item).  Keys: id,
        source_ref, h (content hash), blob, text, label, quality, status, prov (provenance JSON), reason, score.
        ``limit`` applies to ``disagreements`` and ``all`` (the queue is cut after ordering by value)."""
        if which not in REVIEW_EXPORT_SETS:
            raise ValueError(f"which must be one of {REVIEW_EXPORT_SETS}, got {which!r}")
        sql = ("SELECT i.id AS id, i.source_ref AS source_ref, i.content_hash AS h, i.blob_path AS blob, "
               "i.text AS text, l.label AS label, l.quality AS quality, l.status AS status, l.provenance AS prov, "
               "q.reason AS reason, q.score AS score FROM items i "
               "LEFT JOIN labels l ON l.item_id=i.id AND l.source='teacher' "
               "LEFT JOIN review_queue q ON q.item_id=i.id WHERE i.dataset=?")
        if which == "queue":
            sql += " AND q.item_id IS NOT NULL AND q.resolved_at IS NULL ORDER BY q.score DESC, i.id"
        elif which == "disagreements":
            sql += " AND l.status IN ('disagreed','tie_broken') ORDER BY l.status, i.id"
        else:
            sql += " AND l.item_id IS NOT NULL ORDER BY i.id"
        if limit is not None and which != "queue":
            sql += f" LIMIT {int(limit)}"
        return [dict(r) for r in self.query(sql, (dataset,))]

    def teacher_passes(self, content_hash: str, model: str, prompt_version: str) -> dict[int, tuple[str | None, float | None]]:
        """pass index -> (label, or ``<error kind>`` for a failed parse; confidence) of a teacher's stored answers."""
        rows = self.query(
            "SELECT pass_index, label, confidence, error_kind FROM teacher_answers WHERE ok=1 AND content_hash=? "
            "AND model=? AND prompt_version=? ORDER BY pass_index", (content_hash, model, prompt_version))
        return {int(a["pass_index"]): (a["label"] or (f"<{a['error_kind']}>" if a["error_kind"] else None),
                                       a["confidence"]) for a in rows}

    def item_datasets(self, item_ids: Sequence[int]) -> dict[int, str]:
        """item id -> dataset, for the ids that exist (an unknown id is simply absent)."""
        out: dict[int, str] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), 900):
            chunk = ids[s : s + 900]
            out |= {int(r["id"]): r["dataset"] for r in self.query(
                f"SELECT id, dataset FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)}
        return out

    def record_reviews(self, decisions: Sequence[tuple[int, str, str | None]], *, reviewer: str | None,
                       file: str) -> int:
        """Apply (item id, label, note) decisions from one review file as human labels, all in one transaction
        (the whole file or nothing); each is kept in the review history and resolves the item's queue entry.
        Returns how many differ from the teacher's label."""
        now = time.time()
        changed = 0
        with self.transaction() as c:
            for item_id, label, note in decisions:
                cur = c.execute("INSERT INTO reviews(item_id, label, reviewer, note, created_at) VALUES(?,?,?,?,?) RETURNING id",
                                (item_id, label, reviewer, note, now))
                review_id = int(cur.fetchone()[0])
                teacher = c.execute("SELECT label FROM labels WHERE item_id=? AND source='teacher'", (item_id,)).fetchone()
                changed += teacher is None or teacher["label"] != label
                prov = {"reviewer": reviewer, "review_id": review_id, "file": file}
                c.execute(
                    "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                    "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                    "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                    "provenance=excluded.provenance, updated_at=excluded.updated_at",
                    (item_id, "human", label, 1.0, json.dumps({label: 1.0}), "human", json.dumps(prov), now))
                c.execute("UPDATE review_queue SET resolved_at=? WHERE item_id=? AND resolved_at IS NULL", (now, item_id))
        return changed
