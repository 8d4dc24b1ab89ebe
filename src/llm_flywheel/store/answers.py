"""Teacher answers and what each teacher endpoint can do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

_CHUNK = 900  # SQLite's bound-parameter limit is 999 on older builds
_T = TypeVar("_T")


def _chunks(values: Sequence[_T]) -> Iterator[list[_T]]:
    uniq = list(dict.fromkeys(values))
    for i in range(0, len(uniq), _CHUNK):
        yield uniq[i : i + _CHUNK]


@dataclass(frozen=True)
class AnswerCostStats:
    """What the recorded calls of one model cost on average (``n`` calls with a reported cost)."""

    n: int
    mean_cost_usd: float | None
    mean_tokens_in: float | None
    mean_tokens_out: float | None


@dataclass
class TeacherLabelRow:
    """One consensus label to write; ``review_score`` set (0.5 tie-broken, 1.0 disagreed) queues it for review."""

    item_id: int
    label: str | None
    quality: float
    soft: dict[str, float]
    status: str
    provenance: dict[str, Any] = field(default_factory=dict)
    review_score: float | None = None


class AnswerQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    # -- teacher capabilities ----------------------------------------------------------------------
    def teacher_capability(self, base_url: str, model: str) -> dict[str, Any] | None:
        """What (base_url, model) accepted last time (``updated_at`` added), or None."""
        rows = self.query("SELECT caps_json, updated_at FROM teacher_capabilities WHERE base_url=? AND model=?",
                          (base_url, model))
        if not rows:
            return None
        try:
            caps = json.loads(rows[0]["caps_json"])
        except ValueError:
            return None
        return {**caps, "updated_at": rows[0]["updated_at"]} if isinstance(caps, dict) else None

    def set_teacher_capability(self, base_url: str, model: str, caps: dict[str, Any]) -> None:
        self.execute("INSERT INTO teacher_capabilities(base_url, model, caps_json, updated_at) VALUES (?,?,?,?) "
                     "ON CONFLICT(base_url, model) DO UPDATE SET caps_json=excluded.caps_json, "
                     "updated_at=excluded.updated_at", (base_url, model, json.dumps(caps, sort_keys=True), time.time()))

    def forget_teacher_capability(self, base_url: str | None = None, model: str | None = None) -> int:
        """Forget what endpoints accepted (all of them, one base URL, or one (base_url, model)); rows removed."""
        sql, params = "DELETE FROM teacher_capabilities WHERE 1=1", []
        if base_url is not None:
            sql, params = sql + " AND base_url=?", [*params, base_url]
        if model is not None:
            sql, params = sql + " AND model=?", [*params, model]
        return self.execute(sql, params).rowcount


    def teacher_model_file(self, model: str) -> dict[str, Any] | None:
        """The model file a server said it serves under the teacher model name ``model`` (``model_file``,
        ``base_url``, ``seen_at``), or None when no server ever said."""
        rows = self.query("SELECT model_file, base_url, seen_at FROM teacher_model_files WHERE model=?", (model,))
        return dict(rows[0]) if rows else None

    def set_teacher_model_file(self, model: str, model_file: str, base_url: str) -> None:
        self.execute("INSERT INTO teacher_model_files(model, model_file, base_url, seen_at) VALUES (?,?,?,?) "
                     "ON CONFLICT(model) DO UPDATE SET model_file=excluded.model_file, base_url=excluded.base_url, "
                     "seen_at=excluded.seen_at", (model, model_file, base_url, time.time()))

    def served_model_counts(self, model: str, prompt_version: str, hashes: Sequence[str]) -> dict[str, int]:
        """served model (what the responses said answered) -> final answers of ``hashes`` under ``model`` and
        ``prompt_version``; answers stored before the column existed, or from a server that says nothing, are left
        out."""
        out: dict[str, int] = {}
        for chunk in _chunks(hashes):
            for r in self.query(
                    "SELECT served_model, COUNT(*) AS n FROM teacher_answers WHERE ok=1 AND model=? AND "
                    f"prompt_version=? AND served_model IS NOT NULL AND content_hash IN ({','.join('?' * len(chunk))}) "
                    "GROUP BY served_model", [model, prompt_version, *chunk]):
                out[r["served_model"]] = out.get(r["served_model"], 0) + int(r["n"])
        return out

    def teacher_answer_count(self, model: str) -> int:
        """Final answers cached under the teacher model name ``model`` (any prompt, any item)."""
        return int(self.query("SELECT COUNT(*) AS n FROM teacher_answers WHERE ok=1 AND model=?", (model,))[0]["n"])

    # -- teacher answers ---------------------------------------------------------------------------
    def add_teacher_answer(self, ans: Any, run_id: int | None = None) -> int | None:
        """Write one answer (a ``teachers.base.TeacherAnswer``), autocommitted; its row id, or None when a final
        answer for the same key was already stored (first wins)."""
        cur = self.execute(
            "INSERT INTO teacher_answers(item_id, content_hash, model, prompt_version, pass_index, ok, "
            "label, confidence, label_logprob, logprobs_json, reason, raw_text, tokens_in, tokens_out, cost_usd, "
            "latency_s, error_kind, error_detail, run_id, created_at, served_model, bought_by) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING id",
            (
                ans.item_id, ans.content_hash, ans.model, ans.prompt_version, ans.pass_index, int(bool(ans.ok)),
                ans.label, ans.confidence, ans.label_logprob,
                json.dumps(ans.logprobs) if ans.logprobs else None, ans.reason,
                ans.raw_text, ans.tokens_in, ans.tokens_out, ans.cost_usd, ans.latency_s, ans.error_kind,
                ans.error_detail, run_id, time.time(), getattr(ans, "served_model", None),
                getattr(ans, "bought_by", None),
            ),
        )
        row = cur.fetchone()
        return int(row[0]) if row is not None else None

    def final_answer_keys(self, model: str, prompt_version: str, hashes: Sequence[str]) -> set[tuple[str, int]]:
        """(content_hash, pass_index) pairs that already have a final (``ok=1``) answer."""
        out: set[tuple[str, int]] = set()
        for chunk in _chunks(hashes):
            rows = self.query(
                f"SELECT content_hash, pass_index FROM teacher_answers WHERE ok=1 AND model=? AND prompt_version=? "
                f"AND content_hash IN ({','.join('?' * len(chunk))})", [model, prompt_version, *chunk])
            out.update((r["content_hash"], r["pass_index"]) for r in rows)
        return out

    def final_answers(self, model: str, prompt_version: str, hashes: Sequence[str],
                      max_pass: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """content_hash -> its final answers ordered by pass; each a dict with keys ``id, content_hash,
        pass_index, label, confidence, label_logprob, error_kind`` (what :mod:`llm_flywheel.core.consensus`
        reads)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for chunk in _chunks(hashes):
            sql = ("SELECT id, content_hash, pass_index, label, confidence, label_logprob, error_kind "
                   "FROM teacher_answers WHERE ok=1 AND model=? AND prompt_version=? "
                   f"AND content_hash IN ({','.join('?' * len(chunk))})")
            params: list[Any] = [model, prompt_version, *chunk]
            if max_pass is not None:
                sql += " AND pass_index<=?"
                params.append(max_pass)
            for r in self.query(sql + " ORDER BY pass_index", params):
                out.setdefault(r["content_hash"], []).append(dict(r))
        return out

    def dataset_final_answers(self, datasets: Sequence[str], model: str, prompt_version: str,
                              max_pass: int) -> dict[str, list[dict[str, Any]]]:
        """Like :meth:`final_answers` for every item of ``datasets``, in one query (the adaptive-pass evidence of
        a 70k-item dataset without sending 70k hashes back to the database)."""
        if not datasets:
            return {}
        out: dict[str, list[dict[str, Any]]] = {}
        sql = ("SELECT id, content_hash, pass_index, label, confidence, label_logprob, error_kind "
               "FROM teacher_answers WHERE ok=1 AND model=? AND prompt_version=? AND pass_index<=? AND content_hash IN "
               f"(SELECT content_hash FROM items WHERE dataset IN ({','.join('?' * len(datasets))})) "
               "ORDER BY pass_index")
        for r in self.query(sql, [model, prompt_version, max_pass, *datasets]):
            out.setdefault(r["content_hash"], []).append(dict(r))
        return out

    def evidence_horizon(self, run_key: str) -> int:
        """The answer id a labelling run (``run_key``: its dataset, teacher, prompt, passes and items) started from:
        recorded on its first attempt (one past the newest answer then), read back by its resumes and re-runs, so
        the evidence it decides on never changes.  Insert-or-keep, so two attempts at once agree."""
        self.execute("INSERT INTO evidence_horizons(run_key, horizon, created_at) "
                     "SELECT ?, COALESCE(MAX(id), 0) + 1, ? FROM teacher_answers WHERE 1=1 ON CONFLICT DO NOTHING",
                     (run_key, time.time()))
        return int(self.query("SELECT horizon FROM evidence_horizons WHERE run_key=?", (run_key,))[0]["horizon"])

    def answer_cost_stats(self, model: str) -> AnswerCostStats:
        """Mean cost and tokens of the recorded calls of ``model`` that reported a cost."""
        row = self.query("SELECT AVG(cost_usd) AS c, AVG(tokens_in) AS ti, AVG(tokens_out) AS tout, "
                         "COUNT(cost_usd) AS n FROM teacher_answers WHERE model=? AND cost_usd IS NOT NULL",
                         (model,))[0]
        if not row["n"]:
            return AnswerCostStats(0, None, None, None)
        return AnswerCostStats(int(row["n"]), float(row["c"]),
                               None if row["ti"] is None else float(row["ti"]),
                               None if row["tout"] is None else float(row["tout"]))

    # -- teacher labels ----------------------------------------------------------------------------
    def human_labelled_ids(self, item_ids: Sequence[int]) -> set[int]:
        """Those of ``item_ids`` that carry a human label (a disagreement there needs no review)."""
        out: set[int] = set()
        for chunk in _chunks(item_ids):
            out.update(r["item_id"] for r in self.query(
                f"SELECT item_id FROM labels WHERE source='human' AND item_id IN ({','.join('?' * len(chunk))})",
                list(chunk)))
        return out

    def write_teacher_labels(self, rows: Sequence[TeacherLabelRow], *, at: float) -> int:
        """Upsert the teacher's consensus labels and queue those marked for review, in one transaction;
        returns how many review-queue rows were added or raised."""
        queued = 0
        with self.transaction() as c:
            for r in rows:
                c.execute(
                    "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                    "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                    "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                    "provenance=excluded.provenance, updated_at=excluded.updated_at",
                    (r.item_id, "teacher", r.label, r.quality, json.dumps(r.soft), r.status,
                     json.dumps(r.provenance), at),
                )
                if r.review_score is not None:
                    cur = c.execute(
                        "INSERT INTO review_queue(item_id, reason, score, created_at) VALUES(?,?,?,?) "
                        "ON CONFLICT(item_id) DO UPDATE SET score=CASE WHEN COALESCE(review_queue.score, 0) > excluded.score "
                        "THEN COALESCE(review_queue.score, 0) ELSE excluded.score END "
                        "WHERE review_queue.resolved_at IS NULL",
                        (r.item_id, "disagreement", r.review_score, at),
                    )
                    queued += cur.rowcount
        return queued

    def teacher_label_status_counts(self) -> dict[str, int]:
        """status -> number of teacher labels (agreed, tie_broken, disagreed, single) across the workspace."""
        rows = self.query("SELECT status, COUNT(*) AS n FROM labels WHERE source='teacher' GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def answer_attempts(self, model: str) -> dict[str, int]:
        """content_hash -> every stored call of ``model`` on it, failed ones included (what was paid for)."""
        rows = self.query("SELECT content_hash, COUNT(*) AS n FROM teacher_answers WHERE model=? "
                          "GROUP BY content_hash", (model,))
        return {r["content_hash"]: int(r["n"]) for r in rows}
