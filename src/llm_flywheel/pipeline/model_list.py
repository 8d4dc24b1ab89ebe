"""What model versions a dataset has, and which one serves: `flywheel models` and ``ds.models()``.

Why: after a few rounds (or nights) of the wheel a dataset holds many versions -- students, gold-trained reference
models -- and every default (calibrate, predict, serve) uses one of them.  Before, the only way to see which, and
what each was trained on, was to read the report or the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llm_flywheel.store.workspace import Workspace


@dataclass(frozen=True)
class ModelInfo:
    """One model version.  ``val_agreement``: agreement with the val split's labels (teacher labels, or gold when it
    was trained with gold validation: ``val_labels``); ``serving``: the one every default uses; ``role``:
    ``student``, or ``reference`` (gold-trained, used only when named)."""

    version: str
    kind: str
    role: str
    round: int | None
    created_at: float
    labels: int | None
    val_agreement: float | None
    val_labels: str | None
    promoted: bool
    serving: bool
    calibrated: bool
    threshold: float | None
    goal: str | None
    teacher_fraction: float | None
    on_disk: bool
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(path: Any) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def list_models(ws: Workspace, dataset: str) -> list[ModelInfo]:
    """The dataset's model versions, newest first, each with its latest calibration and whether it serves."""
    with ws.store(readonly=True) as store:
        store.dataset_task_json(dataset)  # an unknown dataset raises StoreError naming the fix
        rows = store.model_rows(dataset)
        serving = store.serving_version(dataset)
        cals = {r["version"]: store.latest_report("calibration", r["version"]) for r in rows}
    out = []
    for r in rows:
        m, cal = r["metrics"], cals[r["version"]] or {}
        choice = cal.get("choice") or {}
        folder = ws.models_dir / r["version"]
        out.append(ModelInfo(
            version=r["version"], kind=r["kind"], role=r["role"], round=r["round"], created_at=float(r["created_at"]),
            labels=m.get("n_train"), val_agreement=m.get("val_acc"), val_labels=m.get("val_labels"),
            promoted=bool(r["promoted"]), serving=r["version"] == serving, calibrated=bool(cal),
            threshold=cal.get("threshold"), goal=cal.get("goal"), teacher_fraction=choice.get("teacher_fraction"),
            on_disk=folder.is_dir(), size_bytes=_size(folder)))
    return out
