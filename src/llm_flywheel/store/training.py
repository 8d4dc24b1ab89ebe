"""What training reads from the store beyond the effective labels: each item's label row with its soft target.

Why here: every SQL statement lives in the store; ``pipeline/training.py`` asks for typed :class:`LabelDetail`
records and turns them into target distributions and weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

_CHUNK = 900  # SQLite's default limit on bound parameters is 999


@dataclass(frozen=True)
class LabelDetail:
    """An item's effective label (a human label outranks the teacher's) with the teacher's evidence for it."""

    source: str
    label: str
    quality: float | None
    soft: dict[str, float] | None  # the passes' distribution {label: probability}; None when absent or corrupt


class TrainingQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``query``."""

    def label_details(self, item_ids: Sequence[int]) -> dict[int, LabelDetail]:
        """item id -> :class:`LabelDetail` of its effective label; items with no decided label are left out."""
        out: dict[int, LabelDetail] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), _CHUNK):
            chunk = ids[s : s + _CHUNK]
            rows = self.query(  # type: ignore[attr-defined]
                "SELECT item_id, source, label, quality, soft_json FROM labels "
                f"WHERE item_id IN ({','.join('?' * len(chunk))})", chunk)
            for r in rows:
                if r["label"] is None:
                    continue
                prev = out.get(r["item_id"])
                if prev is not None and prev.source == "human":
                    continue
                try:
                    soft = json.loads(r["soft_json"]) if r["soft_json"] else None
                except (json.JSONDecodeError, TypeError):
                    soft = None  # a corrupt soft target falls back to the hard label
                out[r["item_id"]] = LabelDetail(r["source"], r["label"], r["quality"],
                                                soft if isinstance(soft, dict) else None)
        return out
