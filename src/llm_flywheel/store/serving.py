"""Serving: the cascade log, teacher answers bought for served inputs, and retention.

Why here: every SQL statement lives in the store.  The cascade (``pipeline/cascade.py``) and the HTTP service
(``interfaces/serve``) call these named methods; the wheel reads the same log as feedback (``pipeline/feedback.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass

_CHUNK = 900  # SQLite's default limit on bound parameters is 999


@dataclass(frozen=True)
class CascadeLogRow:
    """One answer of the cascade as written to ``cascade_log`` (the wheel's feedback)."""

    ts: float
    dataset: str | None
    item_id: int | None
    content_hash: str | None
    source: str
    label: str | None
    confidence: float
    student_label: str
    student_confidence: float
    teacher_label: str | None
    model_version: str
    threshold: float
    latency_ms: float
    round: int | None
    origin: str
    payload_ref: str | None


@dataclass(frozen=True)
class StoredTeacherAnswer:
    """A final teacher answer already paid for: ``label`` may be off the task's list (final all the same)."""

    label: str | None
    confidence: float | None


@dataclass(frozen=True)
class ServedInput:
    """One distinct input ``flywheel serve`` answered for a dataset: where it was kept (None: not kept, or retention
    deleted it), how often it was asked, and whether the cascade deferred it at least once."""

    content_hash: str
    payload_ref: str | None
    requests: int
    deferred: bool


@dataclass(frozen=True)
class ServedAnswer:
    """A teacher answer serving bought, with what it cost: the row labelling adopts as the item's pass 0."""

    content_hash: str
    label: str | None
    confidence: float | None
    tokens_in: int | None
    tokens_out: int | None
    cost_usd: float | None
    latency_s: float | None


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass removed; ``kept_pending`` rows were old enough but belong to store items (kept)."""

    rows_deleted: int
    kept_pending: int
    payload_refs_released: tuple[str, ...]


# Rows retention never deletes: those of store items.  ``feedback.collect`` reads them by round as the wheel's
# feedback, and the split guard (``ItemQueries``: served items are never re-split) and review (``ReviewQueries``)
# read them too; they grow with the dataset, not with traffic.  ``collected_at`` (set by
# :meth:`ServingQueries.mark_feedback_collected`) records what the wheel has read, for the day a reader no longer
# needs the rest.  Rows of requests from outside the store (``item_id`` NULL: ``flywheel serve`` traffic) are what
# retention ages out; their saved input goes with the last row that refers to it.
_PENDING = "item_id IS NOT NULL"


class ServingQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    # -- cascade log ---------------------------------------------------------------------------------------
    def log_cascade_rows(self, rows: Sequence[CascadeLogRow]) -> None:
        """Append answers to ``cascade_log`` in one transaction."""
        if not rows:
            return
        with self.transaction() as c:  # type: ignore[attr-defined]
            c.executemany(
                "INSERT INTO cascade_log(ts, dataset, item_id, content_hash, source, label, confidence, student_label, "
                "student_confidence, teacher_label, model_version, threshold, latency_ms, round, origin, payload_ref) "
                "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", [astuple(r) for r in rows])

    def mark_feedback_collected(self, dataset: str, round: int, origin: str = "run") -> int:
        """Mark the log rows of one round as read by the wheel (``feedback.collect``), so retention may delete
        them; returns how many rows were marked."""
        cur = self.execute(  # type: ignore[attr-defined]
            "UPDATE cascade_log SET collected_at=? WHERE dataset=? AND round=? AND origin=? AND collected_at IS NULL",
            (time.time(), dataset, round, origin))
        return int(cur.rowcount)

    def cascade_log_size(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM cascade_log")[0]["n"])  # type: ignore[attr-defined]

    def prune_cascade_log(self, *, older_than: float | None, max_rows: int | None) -> RetentionResult:
        """Delete served-traffic log rows older than the timestamp ``older_than``, then the oldest beyond ``max_rows``
        -- never a row of a store item (see ``_PENDING``).  Returns the payload files no remaining row refers to."""
        deleted = 0
        with self.transaction() as c:  # type: ignore[attr-defined]
            cand = "NOT (" + _PENDING + ")"
            refs = set()
            if older_than is not None:
                refs |= {r[0] for r in c.execute(
                    f"SELECT DISTINCT payload_ref FROM cascade_log WHERE ts < ? AND {cand} AND payload_ref IS NOT NULL",
                    (older_than,))}
                deleted += c.execute(f"DELETE FROM cascade_log WHERE ts < ? AND {cand}", (older_than,)).rowcount
            if max_rows is not None:
                n = int(c.execute("SELECT COUNT(*) FROM cascade_log").fetchone()[0])
                excess = n - max_rows
                if excess > 0:
                    ids = [r[0] for r in c.execute(f"SELECT id FROM cascade_log WHERE {cand} ORDER BY id LIMIT ?",
                                                   (excess,))]
                    for s in range(0, len(ids), _CHUNK):
                        chunk = ids[s : s + _CHUNK]
                        marks = ",".join("?" * len(chunk))
                        refs |= {r[0] for r in c.execute(
                            f"SELECT DISTINCT payload_ref FROM cascade_log WHERE id IN ({marks}) "
                            "AND payload_ref IS NOT NULL", chunk)}
                        deleted += c.execute(f"DELETE FROM cascade_log WHERE id IN ({marks})", chunk).rowcount
            still = {r[0] for r in c.execute("SELECT DISTINCT payload_ref FROM cascade_log WHERE payload_ref IS NOT NULL")}
            pending = int(c.execute(f"SELECT COUNT(*) FROM cascade_log WHERE {_PENDING}"
                                    + (" AND ts < ?" if older_than is not None else ""),
                                    (older_than,) if older_than is not None else ()).fetchone()[0])
        return RetentionResult(deleted, pending, tuple(sorted(refs - still)))

    def payload_refs_in_use(self) -> dict[str, bool]:
        """Every payload file the log refers to -> whether a row retention keeps (a store item's) refers to it."""
        out: dict[str, bool] = {}
        for r in self.query(  # type: ignore[attr-defined]
                f"SELECT payload_ref, MAX(CASE WHEN {_PENDING} THEN 1 ELSE 0 END) AS pending FROM cascade_log "
                "WHERE payload_ref IS NOT NULL "
                "GROUP BY payload_ref"):
            out[str(r["payload_ref"])] = bool(r["pending"])
        return out

    def release_payload_refs(self, refs: Sequence[str]) -> None:
        """Forget saved inputs that retention deleted (the rows stay, with no payload)."""
        with self.transaction() as c:  # type: ignore[attr-defined]
            for s in range(0, len(refs), _CHUNK):
                chunk = list(refs[s : s + _CHUNK])
                c.execute(f"UPDATE cascade_log SET payload_ref=NULL WHERE payload_ref IN ({','.join('?' * len(chunk))})",
                          chunk)

    def served_inputs(self, dataset: str) -> list[ServedInput]:
        """Every distinct input served for ``dataset`` from outside the store (``flywheel serve`` traffic)."""
        return [ServedInput(str(r["content_hash"]), r["ref"], int(r["n"]), bool(r["deferred"]))
                for r in self.query(  # type: ignore[attr-defined]
                    "SELECT content_hash, MAX(payload_ref) AS ref, COUNT(*) AS n, "
                    "MAX(CASE WHEN source='student' THEN 0 ELSE 1 END) AS deferred FROM cascade_log "
                    "WHERE dataset=? AND origin='serve' AND item_id IS NULL AND content_hash IS NOT NULL "
                    "GROUP BY content_hash ORDER BY MIN(id)", (dataset,))]

    def served_traffic(self, dataset: str, bucket_s: int) -> list[tuple[int, str, int]]:
        """(bucket start as unix seconds, source, answers) of the requests ``flywheel serve`` logged for
        ``dataset``, in buckets of ``bucket_s`` seconds (sampled as the service logs: ``--log-sample-rate``)."""
        return [(int(r["b"]) * bucket_s, str(r["source"]), int(r["n"])) for r in self.query(  # type: ignore[attr-defined]
            "SELECT CAST(ts AS INTEGER) / ? AS b, source, COUNT(*) AS n FROM cascade_log "
            "WHERE dataset=? AND origin='serve' GROUP BY b, source ORDER BY b", (int(bucket_s), dataset))]

    def served_teacher_spend(self, dataset: str) -> tuple[int, float]:
        """(answers, USD) the teacher was paid for inputs served for ``dataset`` (any teacher, as far as logged)."""
        r = self.query(  # type: ignore[attr-defined]
            "SELECT COUNT(*) AS n, COALESCE(SUM(a.cost_usd), 0) AS usd FROM served_teacher_answers a WHERE "
            "a.content_hash IN (SELECT content_hash FROM cascade_log WHERE dataset=? AND origin='serve')",
            (dataset,))[0]
        return int(r["n"]), float(r["usd"])

    def served_answers(self, hashes: Sequence[str], model: str, prompt_version: str) -> dict[str, ServedAnswer]:
        """content hash -> the answer serving bought from this teacher and prompt, for the hashes that have one."""
        out: dict[str, ServedAnswer] = {}
        hs = list(hashes)
        for s in range(0, len(hs), _CHUNK):
            chunk = hs[s : s + _CHUNK]
            for r in self.query(  # type: ignore[attr-defined]
                    "SELECT content_hash, label, confidence, tokens_in, tokens_out, cost_usd, latency_s "
                    f"FROM served_teacher_answers WHERE model=? AND prompt_version=? "
                    f"AND content_hash IN ({','.join('?' * len(chunk))})", [model, prompt_version, *chunk]):
                out[str(r["content_hash"])] = ServedAnswer(
                    str(r["content_hash"]), r["label"], r["confidence"], r["tokens_in"], r["tokens_out"],
                    r["cost_usd"], r["latency_s"])
        return out

    def served_answer_count(self, hashes: Sequence[str]) -> int:
        """How many of ``hashes`` have a teacher answer bought by serving, from any teacher."""
        hs, n = list(hashes), 0
        for s in range(0, len(hs), _CHUNK):
            chunk = hs[s : s + _CHUNK]
            n += int(self.query(  # type: ignore[attr-defined]
                "SELECT COUNT(DISTINCT content_hash) AS n FROM served_teacher_answers "
                f"WHERE content_hash IN ({','.join('?' * len(chunk))})", chunk)[0]["n"])
        return n

    # -- teacher answers for the cascade -------------------------------------------------------------------
    def teacher_labels_for(self, item_ids: Sequence[int], model: str | None) -> dict[int, tuple[str | None, float | None]]:
        """item id -> (teacher label, quality) for items the teacher ``model`` (None: any) already labelled."""
        out: dict[int, tuple[str | None, float | None]] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), _CHUNK):
            chunk = ids[s : s + _CHUNK]
            rows = self.query(  # type: ignore[attr-defined]
                f"SELECT item_id, label, quality, provenance FROM labels WHERE source='teacher' AND label IS NOT NULL "
                f"AND item_id IN ({','.join('?' * len(chunk))})", chunk)
            for r in rows:
                try:
                    prov_model = json.loads(r["provenance"] or "{}").get("model")
                except (json.JSONDecodeError, AttributeError):
                    prov_model = None
                if model is None or prov_model in (None, model):
                    out[int(r["item_id"])] = (r["label"], r["quality"])
        return out

    def stored_teacher_answer(self, content_hash: str, model: str, prompt_version: str) -> StoredTeacherAnswer | None:
        """A final answer of this teacher and prompt for this exact content, bought by labelling (any pass) or by
        any serving process; None when nobody has paid for it yet."""
        row = self.query(  # type: ignore[attr-defined]
            "SELECT label, confidence FROM served_teacher_answers WHERE content_hash=? AND model=? AND prompt_version=?",
            (content_hash, model, prompt_version))
        if not row:
            row = self.query(  # type: ignore[attr-defined]
                "SELECT label, confidence FROM teacher_answers WHERE content_hash=? AND model=? AND prompt_version=? "
                "AND ok=1 ORDER BY pass_index LIMIT 1", (content_hash, model, prompt_version))
        if not row:
            return None
        return StoredTeacherAnswer(row[0]["label"], row[0]["confidence"])

    def save_served_teacher_answer(self, content_hash: str, model: str, prompt_version: str, *, label: str | None,
                                   confidence: float | None, tokens_in: int | None, tokens_out: int | None,
                                   cost_usd: float | None, latency_s: float | None) -> None:
        """Store a final teacher answer for a served input BEFORE it is used (first writer wins)."""
        self.execute(  # type: ignore[attr-defined]
            "INSERT INTO served_teacher_answers(content_hash, model, prompt_version, label, confidence, "
            "tokens_in, tokens_out, cost_usd, latency_s, created_at) VALUES(?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(content_hash, model, prompt_version) DO NOTHING",
            (content_hash, model, prompt_version, label, confidence, tokens_in, tokens_out, cost_usd, latency_s,
             time.time()))

    def served_spend_since(self, model: str, prompt_version: str, since: float) -> tuple[int, float, int, float]:
        """(answers, USD, answers with a cost, the dearest answer's USD) serving bought from this teacher since the
        timestamp ``since``, by any process on this store."""
        r = self.query(  # type: ignore[attr-defined]
            "SELECT COUNT(*) AS n, COALESCE(SUM(cost_usd), 0) AS usd, COUNT(cost_usd) AS priced, "
            "COALESCE(MAX(cost_usd), 0) AS dearest FROM served_teacher_answers "
            "WHERE model=? AND prompt_version=? AND created_at >= ?", (model, prompt_version, since))[0]
        return int(r["n"]), float(r["usd"]), int(r["priced"]), float(r["dearest"])

    def check_writable(self) -> None:
        """Raise when the store cannot take a write now (for /readyz).  A real statement, not an empty transaction
        (which a read-only PostgreSQL accepts): it deletes claims abandoned for a day, which is worth doing anyway."""
        with self.transaction() as c:  # type: ignore[attr-defined]
            c.execute("DELETE FROM served_teacher_claims WHERE claimed_at < ?", (time.time() - 86400.0,))
