"""Runs, model versions (and which one serves) and stored reports."""

from __future__ import annotations

import json
import time
from typing import Any

from llm_flywheel.store.schema import MODEL_ROLES


class ModelQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    # -- runs, rounds, models, reports --------------------------------------------------------------
    def start_run(self, kind: str, config: dict[str, Any]) -> int:
        cur = self.execute(
            "INSERT INTO runs(kind, config_json, status, started_at) VALUES(?,?,?,?) RETURNING id",
            (kind, json.dumps(config, default=str), "running", time.time()),
        )
        return int(cur.fetchone()[0])

    def finish_run(self, run_id: int, status: str = "done") -> None:
        self.execute("UPDATE runs SET status=?, finished_at=? WHERE id=?", (status, time.time(), run_id))

    def add_model(self, *, version: str, dataset: str, kind: str, path: str, metrics: dict[str, Any],
                  meta: dict[str, Any], round: int | None, role: str = "student") -> None:
        """Record a trained model; ``role='reference'`` (gold-trained) keeps it out of every default lookup."""
        if role not in MODEL_ROLES:
            raise ValueError(f"model role must be one of {MODEL_ROLES}, not {role!r}")
        self.execute(
            "INSERT INTO models(version, dataset, kind, path, metrics_json, meta_json, round, role, created_at) "
            "VALUES(?,?,?,?,?,?,?,?,?)",
            (version, dataset, kind, path, json.dumps(metrics, default=float), json.dumps(meta, default=str), round,
             role, time.time()),
        )

    def model(self, version: str) -> dict[str, Any] | None:
        """The ``models`` row of ``version`` as a dict, or None."""
        row = self.conn.execute("SELECT * FROM models WHERE version=?", (version,)).fetchone()
        return dict(row) if row else None

    def model_versions(self, dataset: str | None = None, *, role: str | None = None, limit: int | None = None
                       ) -> list[str]:
        """Model versions, newest first, optionally of one dataset and/or one role."""
        sql, params = "SELECT version FROM models WHERE 1=1", []
        if dataset is not None:
            sql, params = sql + " AND dataset=?", params + [dataset]
        if role is not None:
            sql, params = sql + " AND role=?", params + [role]
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return [r["version"] for r in self.query(sql, params)]

    def model_rows(self, dataset: str) -> list[dict[str, Any]]:
        """Every model version of ``dataset``, newest first: version, kind, role, round, promoted, created_at and
        its training metrics (``metrics``, parsed), and its folder (``path``, relative to the workspace)."""
        rows = self.query("SELECT version, kind, role, round, promoted, created_at, path, metrics_json FROM models "
                          "WHERE dataset=? ORDER BY id DESC", (dataset,))
        return [{**{k: r[k] for k in ("version", "kind", "role", "round", "promoted", "created_at", "path")},
                 "metrics": json.loads(r["metrics_json"] or "{}")} for r in rows]

    def serving_version(self, dataset: str, *, promoted_only: bool = False) -> str | None:
        """THE serving model of ``dataset``: the newest promoted student, else (unless ``promoted_only``) the newest
        student.  Reference models (gold-trained) are never returned: they are used only when named."""
        where = "dataset=? AND role='student'" + (" AND promoted=1" if promoted_only else "")
        row = self.conn.execute(f"SELECT version FROM models WHERE {where} ORDER BY promoted DESC, id DESC LIMIT 1",
                                (dataset,)).fetchone()
        return str(row["version"]) if row else None

    def add_report(self, kind: str, key: str, payload: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO reports(kind, key, json, created_at) VALUES(?,?,?,?)",
            (kind, key, json.dumps(payload, default=float), time.time()),
        )

    def latest_report(self, kind: str, key: str | None = None) -> dict[str, Any] | None:
        if key is None:
            row = self.conn.execute(
                "SELECT json FROM reports WHERE kind=? ORDER BY id DESC LIMIT 1", (kind,)
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT json FROM reports WHERE kind=? AND key=? ORDER BY id DESC LIMIT 1", (kind, key)
            ).fetchone()
        return json.loads(row["json"]) if row else None


    # -- wheel runs: resume, per-round metrics, promotion ----------------------------------------------
    def wheel_runs(self, dataset: str) -> list[dict[str, Any]]:
        """Wheel runs of ``dataset``, newest first: dicts with id, status, config (parsed ``config_json``) and
        started_at."""
        out = []
        for r in self.query("SELECT id, config_json, status, started_at FROM runs WHERE kind='wheel' ORDER BY id DESC"):
            c = json.loads(r["config_json"] or "{}")
            if c.get("dataset") == dataset:
                out.append({"id": int(r["id"]), "status": r["status"], "config": c, "started_at": r["started_at"]})
        return out

    def reopen_run(self, run_id: int, config: dict[str, Any]) -> None:
        """Mark a stopped/failed run running again, with its (possibly grown) config."""
        self.execute("UPDATE runs SET status='running', config_json=? WHERE id=?", (json.dumps(config, default=str), run_id))

    def run_status(self, run_id: int) -> str | None:
        row = self.query("SELECT status FROM runs WHERE id=?", (run_id,))
        return row[0]["status"] if row else None

    def round_metrics(self, run_id: int, round: int) -> tuple[dict[str, Any], bool] | None:
        """(stored metrics, finished) of one round of a run, or None when the round was never started."""
        row = self.query("SELECT metrics_json, finished_at FROM rounds WHERE run_id=? AND round=?", (run_id, round))
        if not row:
            return None
        return json.loads(row[0]["metrics_json"] or "{}"), row[0]["finished_at"] is not None

    def start_round(self, run_id: int, dataset: str, round: int) -> None:
        self.execute("INSERT INTO rounds(run_id, dataset, round, metrics_json, started_at) VALUES(?,?,?,?,?)",
                     (run_id, dataset, round, json.dumps({"round": round}), time.time()))

    def save_round(self, run_id: int, round: int, metrics: dict[str, Any], *, model_version: str | None,
                   finished: bool = False) -> None:
        self.execute(
            "UPDATE rounds SET metrics_json=?, model_version=?, finished_at=? WHERE run_id=? AND round=?",
            (json.dumps(metrics, default=float), model_version, time.time() if finished else None, run_id, round))

    def wheel_rounds(self, dataset: str, run_id: int) -> list[dict[str, Any]]:
        """Rounds of a run in order: dicts with round, model_version, metrics (parsed) and finished (bool)."""
        return [{"round": r["round"], "model_version": r["model_version"], "metrics": json.loads(r["metrics_json"] or "{}"),
                 "finished": r["finished_at"] is not None}
                for r in self.query("SELECT round, model_version, metrics_json, finished_at FROM rounds "
                                    "WHERE dataset=? AND run_id=? ORDER BY round", (dataset, run_id))]

    def latest_wheel_run_id(self, dataset: str) -> int | None:
        r = self.query("SELECT MAX(run_id) AS r FROM rounds WHERE dataset=?", (dataset,))[0]["r"]
        return int(r) if r is not None else None

    def promote(self, dataset: str, version: str) -> None:
        """Make ``version`` the one promoted model of ``dataset`` (atomically)."""
        with self.transaction() as c:
            c.execute("UPDATE models SET promoted=0 WHERE dataset=?", (dataset,))
            c.execute("UPDATE models SET promoted=1 WHERE version=?", (version,))

    # -- feedback of a served round ------------------------------------------------------------------------
    def cascade_answers(self, dataset: str, round: int, origin: str) -> dict[int, dict[str, Any]]:
        """item id -> its latest cascade answer (source, label, student_label, teacher_label) in ``round``."""
        last: dict[int, dict[str, Any]] = {}
        for r in self.query("SELECT item_id, source, label, student_label, teacher_label FROM cascade_log "
                            "WHERE dataset=? AND round=? AND origin=? AND item_id IS NOT NULL ORDER BY id",
                            (dataset, round, origin)):
            last[int(r["item_id"])] = dict(r)  # a re-served item counts once, with its latest answer
        return last

    def queue_for_review(self, item_ids: list[int], reason: str, *, score: float | None = None) -> None:
        """Put items in the human review queue (an item already queued stays as it is)."""
        now = time.time()
        with self.transaction() as c:
            for iid in item_ids:
                c.execute("INSERT INTO review_queue(item_id, reason, score, created_at) VALUES(?,?,?,?) ON CONFLICT DO NOTHING",
                          (iid, reason, score, now))


def wheel_report_key(dataset: str, run_id: int) -> str:
    """Key of a wheel run's end-of-run report (``reports`` kind 'wheel'): shared by the wheel and the report."""
    return f"{dataset}:{run_id}"
