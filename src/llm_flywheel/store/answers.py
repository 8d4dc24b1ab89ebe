"""Teacher answers and what each teacher endpoint can do."""

from __future__ import annotations

import json
import time
from typing import Any



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

