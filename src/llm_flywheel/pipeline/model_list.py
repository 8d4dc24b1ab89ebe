"""What model versions a dataset has, and which one serves: `flywheel models` and ``ds.models()``; and the files
of the ones nothing needs any more (``--prune``).

Why: after a few rounds (or nights) of the wheel a dataset holds many versions -- students, gold-trained reference
models -- and every default (calibrate, predict, serve) uses one of them.  Before, the only way to see which, and
what each was trained on, was to read the report or the database; and a nightly wheel kept every version's files
(an EfficientNet-Lite0 student is tens of MB) for ever.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
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
    path: str = ""  # the model's folder, relative to the workspace

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
        folder = ws.abspath(r["path"])
        out.append(ModelInfo(
            version=r["version"], kind=r["kind"], role=r["role"], round=r["round"], created_at=float(r["created_at"]),
            labels=m.get("n_train"), val_agreement=m.get("val_acc"), val_labels=m.get("val_labels"),
            promoted=bool(r["promoted"]), serving=r["version"] == serving, calibrated=bool(cal),
            threshold=cal.get("threshold"), goal=cal.get("goal"), teacher_fraction=choice.get("teacher_fraction"),
            on_disk=folder.is_dir(), size_bytes=_size(folder), path=r["path"]))
    return out


@dataclass
class PruneResult:
    """What :func:`prune_models` removed: the versions whose files are gone (their rows, metrics and calibrations
    stay in the store), the bytes freed, and why each kept version was kept."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune_models(ws: Workspace, dataset: str, *, keep: int = 3) -> PruneResult:
    """Delete the model files of ``dataset``'s versions nothing needs: kept are the serving version, the newest
    ``keep`` students, the newest reference model, and every version of an unfinished wheel run (its resume and
    its query-by-committee load them).  Rows, metrics and calibrations stay, so reports and ``flywheel models``
    still show them."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    infos = list_models(ws, dataset)
    kept: dict[str, str] = {}
    with ws.store(readonly=True) as store:
        for run in store.wheel_runs(dataset):
            if run["status"] == "done":
                continue
            for r in store.wheel_rounds(dataset, run["id"]):
                for v in (r["model_version"], r["metrics"].get("trained_version")):
                    if v:
                        kept.setdefault(v, f"in wheel run {run['id']} ({run['status']})")
    for m in infos:
        if m.serving:
            kept[m.version] = "serving"
    for m in [m for m in infos if m.role == "student"][:keep]:
        kept.setdefault(m.version, f"one of the newest {keep} students")
    for m in [m for m in infos if m.role == "reference"][:1]:
        kept.setdefault(m.version, "the newest reference model")
    res = PruneResult(kept=kept)
    for m in infos:
        if m.on_disk and m.version not in kept:
            shutil.rmtree(ws.abspath(m.path))
            res.removed.append(m.version)
            res.freed_bytes += m.size_bytes
    return res
