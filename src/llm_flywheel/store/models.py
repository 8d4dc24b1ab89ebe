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
            "INSERT INTO runs(kind, config_json, status, started_at) VALUES(?,?,?,?)",
            (kind, json.dumps(config, default=str), "running", time.time()),
        )
        return int(cur.lastrowid)

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

