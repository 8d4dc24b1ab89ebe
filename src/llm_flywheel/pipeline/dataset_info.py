"""What a dataset holds: the numbers behind ``flywheel data info`` (and ``--json``).

Why here and not in the CLI: the CLI only parses and prints; the counts come from the store
(:meth:`Store.dataset_counts`) and the duplicate check from :mod:`llm_flywheel.pipeline.splits`, and a notebook
or the service may want the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.data.registry import imported_text_columns
from llm_flywheel.pipeline.served_import import served_not_added
from llm_flywheel.pipeline.splits import check_duplicates
from llm_flywheel.store.base import SPLITS, Store

DUPLICATE_KEYS = ("groups", "duplicate_items", "cross_split_groups", "cross_split_items", "by_splits")


@dataclass
class DatasetInfo:
    """Counts for one dataset; :meth:`to_dict` is the ``data info --json`` shape."""

    dataset: str
    modality: str
    labels: list[str]
    items: int
    duplicates: dict[str, Any]  # DUPLICATE_KEYS of the duplicate check
    by_split: dict[str, dict[str, int]]  # split -> source split -> items
    by_source_split: dict[str, int]
    gold_labels: dict[str, dict[str, int]]  # gold label ("(none)") -> split -> items
    labelled: dict[str, dict[str, int]]  # split -> items / teacher / teacher_undecided / human / unlabelled
    label_sources: list[dict[str, Any]] = field(default_factory=list)  # {source, status, n}
    teacher_answers: list[dict[str, Any]] = field(default_factory=list)  # {model, answers, ok, failed, cost_usd}
    # Batch API jobs not collected yet: {batch_id, model, status, requests, submitted_at (unix s)}
    open_batches: list[dict[str, Any]] = field(default_factory=list)
    # inputs `flywheel serve` kept that the dataset does not hold yet (`flywheel data add-served` adds them)
    served_not_added: int = 0
    # a text dataset's source columns (its last import): what `flywheel predict` reads from a new file
    text_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split_key(s: str | None) -> tuple[int, str]:
    return (SPLITS.index(s), s) if s in SPLITS else (len(SPLITS), str(s))


def dataset_info(store: Store, dataset: str, root: Path | None = None) -> DatasetInfo:
    """Counts for one dataset: by split x source split, gold label x split, labelled status, label sources,
    teacher answers per model, its duplicate groups and its Batch API jobs not collected yet (online runs leave
    their calls to them), and the served inputs it does not hold yet (``root``: the workspace folder, where they
    are kept)."""
    task = Task.from_json(store.dataset_task_json(dataset))
    c = store.dataset_counts(dataset)
    dups = check_duplicates(store, dataset).to_dict()
    return DatasetInfo(
        dataset=dataset, modality=task.modality, labels=list(task.labels), items=c.items,
        duplicates={k: dups[k] for k in DUPLICATE_KEYS},
        by_split=dict(sorted(c.by_split.items(), key=lambda kv: _split_key(kv[0]))),
        by_source_split={s: sum(v.get(s, 0) for v in c.by_split.values())
                         for s in sorted({s for v in c.by_split.values() for s in v}, key=_split_key)},
        gold_labels=c.gold_labels, labelled=dict(sorted(c.labelled.items(), key=lambda kv: _split_key(kv[0]))),
        label_sources=c.label_sources, teacher_answers=c.teacher_answers,
        open_batches=[{"batch_id": b.batch_id, "model": b.model, "status": b.status, "requests": b.n_lines,
                       "submitted_at": b.created_at} for b in store.batches(dataset) if b.collected_at is None],
        served_not_added=served_not_added(store, dataset, root),
        text_columns=list(imported_text_columns(store, dataset)) if task.modality == "text" else [],
    )

