"""Train / val / calib / test / stream splits, made once per dataset and stored -- duplicate-safe.

Why stored: every later choice (early stopping, temperature, cascade threshold, promotion) must be made on the
same held-out items run after run, and the test split must never leak into any of them.  The source's own test
split (Fashion-MNIST's 10,000, CIFAR's 500) becomes ``test``; the rest is shuffled with a fixed seed into the
other splits.  No gold label is used to make them: a real user has none.

This module is the stage over the store; the assignment itself (duplicates grouped by content hash or normalised
text, see :func:`llm_flywheel.core.splits.group_key`) is pure and lives in :mod:`llm_flywheel.core.splits`.
Workspaces split before grouping existed are checked (and, while nothing is labelled, repaired) by
:func:`check_duplicates` / :func:`repair_duplicates`.
"""

from __future__ import annotations

from llm_flywheel.core.splits import (REPAIR_PRECEDENCE, DuplicateReport, SplitError, SplitSpec, find_duplicates,
                                      group_key, group_rows, no_pool_message, normalise_text, plan_splits)
from llm_flywheel.store.base import Store

__all__ = ["REPAIR_PRECEDENCE", "DuplicateReport", "SplitError", "SplitRepairError", "SplitSpec", "check_duplicates",
           "explain_empty_train_pool", "group_key", "make_splits", "normalise_text", "repair_duplicates",
           "split_counts"]


class SplitRepairError(ValueError):
    """A repair that would move labelled items; the message names the fix."""


def make_splits(store: Store, dataset: str, spec: SplitSpec | None = None, *, force: bool = False) -> dict[str, int]:
    """Assign every item of ``dataset`` a split (items already split keep theirs unless ``force``); returns counts
    per split.  See :func:`llm_flywheel.core.splits.plan_splits` for the rules (and the :class:`SplitError` raised
    when duplicates kept together would leave no training pool)."""
    rows = store.split_rows(dataset)
    if not rows:
        raise ValueError(f"dataset {dataset!r} has no items; run `flywheel data add` first")
    store.set_splits(plan_splits(rows, spec, force=force, dataset=dataset))
    return split_counts(store, dataset)


def explain_empty_train_pool(store: Store, dataset: str) -> str:
    """The error for a dataset split (before duplicate-aware splitting, or by hand) with nothing in ``train``: how
    many distinct items it has, where they went, and the fix."""
    rows = store.split_rows(dataset)
    taken = {s: n for s, n in store.split_count_summary(dataset).items() if s != "train"}
    return no_pool_message(dataset, group_rows(rows), taken).replace("would have", "has")


def split_counts(store: Store, dataset: str) -> dict[str, int]:
    """split -> items, in the store's split order, plus ``unassigned`` when some have none."""
    return store.split_count_summary(dataset)


def check_duplicates(store: Store, dataset: str, *, max_examples: int = 5) -> DuplicateReport:
    """Find identical items (see :func:`group_key`) and those split apart; nothing is changed."""
    store.dataset_task_json(dataset)  # a clear error for an unknown dataset
    return find_duplicates(dataset, store.split_rows(dataset), max_examples=max_examples)


def repair_duplicates(store: Store, dataset: str) -> DuplicateReport:
    """Move every cross-split duplicate into the most held-out split of its group (:data:`REPAIR_PRECEDENCE`).

    Refused (:class:`SplitRepairError`, nothing changed) when a split it would touch already has labels (or items the
    cascade answered): the labels, models and calibrations made on those splits would silently change meaning.
    """
    rep = check_duplicates(store, dataset)
    if not rep.moves:
        return rep
    touched = {a for _, a, _ in rep.moves} | {b for _, _, b in rep.moves}
    labelled = {s: n for s, n in store.labelled_counts_by_split(dataset).items() if s in touched and n}
    if labelled:
        what = ", ".join(f"{s} ({n:,} labelled or served items)" for s, n in sorted(labelled.items()))
        raise SplitRepairError(
            f"{rep.cross_split_groups} duplicate group(s) of {dataset!r} cross splits, but the repair would move items "
            f"of splits that already have labels: {what}; the labels, models and calibrations made on them would "
            f"change meaning. Fix: import the same source again as a new dataset, whose splits keep duplicates "
            f"together (`flywheel data add ... --name {dataset}-dedup`; teacher answers are cached by content, so "
            f"relabelling it costs nothing), or use a new workspace.")
    store.set_splits([(i, b) for i, _, b in rep.moves])
    rep.repaired = True
    store.add_report("split_repair", dataset, rep.to_dict())
    return rep
