"""Train / val / calib / test / stream splits, made once per dataset and stored -- duplicate-safe.

Why stored: every later choice (early stopping, temperature, cascade threshold, promotion) must be made on the
same held-out items run after run, and the test split must never leak into any of them.  The source's own test
split (Fashion-MNIST's 10,000, CIFAR's 500) becomes ``test``; the rest is shuffled with a fixed seed into the
other splits.  No gold label is used to make them: a real user has none.

Why grouped: a source can hold the same item twice (4 identical pairs in 400 SpamAssassin emails).  If one copy
lands in test and the other in train, a test item is trained on.  So items are split as *groups*: same content
hash -- and for text the same normalised text (casefolded, whitespace collapsed) -- always share one split.  A
group with a member in the source's test split goes to test whole.  Workspaces split before this existed are
checked (and, while nothing is labelled, repaired) by :func:`check_duplicates` / :func:`repair_duplicates`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_flywheel.store.base import SPLITS, Store

REPAIR_PRECEDENCE = ("test", "val", "calib", "stream", "train")
"""Where a cross-split duplicate group is moved: the most held-out split it touches.  Held-out splits never lose
items; only copies in the pool (train/stream) or a less strict held-out split move into them."""


class SplitRepairError(ValueError):
    """A repair that would move labelled items; the message names the fix."""


@dataclass(frozen=True)
class SplitSpec:
    """Sizes: a float < 1 is a fraction of the non-test items, an int is a count."""

    val: float | int = 0.05
    calib: float | int = 0.05
    stream: float | int = 0.2
    test: float | int = 0.2  # used only when the source has no test split of its own
    seed: int = 0


def normalise_text(text: str) -> str:
    """Casefold and collapse whitespace: 'Win  a PRIZE\\n' and 'win a prize' are the same item for splitting."""
    return " ".join(text.casefold().split())


def group_key(content_hash: str, text: str | None) -> str:
    """Items with equal keys must share a split.  Equal hashes of a text imply equal normalised texts, so for text
    the normalised-text key alone covers both rules."""
    if text is not None:
        return "text:" + hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()
    return "hash:" + content_hash


def _count(size: float | int, n: int) -> int:
    if isinstance(size, float) and size < 1:
        return int(round(size * n))
    return min(int(size), n)


def _groups(rows: Sequence[Any]) -> list[list[Any]]:
    """Rows grouped by :func:`group_key`, groups in order of their first row (rows come ordered by id)."""
    by_key: dict[str, list[Any]] = {}
    for r in rows:
        by_key.setdefault(group_key(r["content_hash"], r["text"]), []).append(r)
    return list(by_key.values())


def make_splits(store: Store, dataset: str, spec: SplitSpec = SplitSpec(), *, force: bool = False) -> dict[str, int]:
    """Assign every item of ``dataset`` a split (items already split keep theirs unless ``force``).

    Duplicates (see :func:`group_key`) always share a split.  Items added later (a new import) join the split of an
    already-split duplicate, else ``train`` -- the unlabelled pool -- so earlier splits stay fixed.  Without
    duplicates the assignment is the same as an item-by-item shuffle with the same seed.  Returns counts per split.
    """
    rows = store.split_rows(dataset)
    if not rows:
        raise ValueError(f"dataset {dataset!r} has no items; run `flywheel data add` first")
    groups = _groups(rows)
    already = any(r["split"] for r in rows)
    rng = np.random.default_rng(spec.seed)
    assignments: list[tuple[int, str]] = []
    if already and not force:
        for g in groups:
            present = {r["split"] for r in g if r["split"]}
            target = next((s for s in REPAIR_PRECEDENCE if s in present), "train")
            assignments += [(r["id"], target) for r in g if not r["split"]]
    else:
        has_source_test = any(r["source_split"] == "test" for r in rows)
        test_groups = [g for g in groups if any(r["source_split"] == "test" for r in g)] if has_source_test else []
        rest = [g for g in groups if not has_source_test or all(r["source_split"] != "test" for r in g)]
        order = np.arange(len(rest))
        rng.shuffle(order)  # the permutation depends only on the length: singleton groups shuffle like items did
        rest = [rest[i] for i in order]
        if not has_source_test:
            k = _count(spec.test, sum(len(g) for g in rest))
            taken = 0
            while rest and taken < k:
                test_groups.append(rest.pop(0))
                taken += len(test_groups[-1])
        n = sum(len(g) for g in rest)
        counts = {s: _count(getattr(spec, s), n) for s in ("val", "calib", "stream")}
        if n and sum(counts.values()) >= n:  # n == 0: every item is (a copy of) a source test item
            raise ValueError(f"split sizes {counts} leave no training pool out of {n} items")
        pos = 0
        for s in ("val", "calib", "stream"):
            taken = 0
            while pos < len(rest) and taken < counts[s]:
                assignments += [(r["id"], s) for r in rest[pos]]
                taken += len(rest[pos])
                pos += 1
        assignments += [(r["id"], "train") for g in rest[pos:] for r in g]
        assignments += [(r["id"], "test") for g in test_groups for r in g]
    store.set_splits(assignments)
    return split_counts(store, dataset)


def split_counts(store: Store, dataset: str) -> dict[str, int]:
    c = store.split_counts(dataset)
    return {s: c[s] for s in SPLITS if c.get(s)} | ({"unassigned": c[None]} if c.get(None) else {})


# -- duplicates across splits (workspaces split before grouping existed) -----------------------------------------------


@dataclass
class DuplicateReport:
    """Duplicate groups of a dataset and the cross-split ones a repair would fix."""

    dataset: str
    groups: int = 0  # groups of 2+ identical items (same split or not)
    duplicate_items: int = 0  # items beyond the first of each such group
    cross_split_groups: int = 0  # groups whose members sit in more than one split: a test item may be trained on
    cross_split_items: int = 0  # items a repair moves
    by_splits: dict[str, int] = field(default_factory=dict)  # "test+train" -> cross-split groups
    moves: list[tuple[int, str, str]] = field(default_factory=list)  # (item id, from split, to split)
    examples: list[dict[str, Any]] = field(default_factory=list)  # first few cross-split groups: ids and splits
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "groups": self.groups, "duplicate_items": self.duplicate_items,
                "cross_split_groups": self.cross_split_groups, "cross_split_items": self.cross_split_items,
                "by_splits": self.by_splits, "examples": self.examples, "repaired": self.repaired,
                "moves": [{"item_id": i, "from": a, "to": b} for i, a, b in self.moves]}


def check_duplicates(store: Store, dataset: str, *, max_examples: int = 5) -> DuplicateReport:
    """Find identical items (see :func:`group_key`) and those split apart; nothing is changed."""
    store.dataset_task_json(dataset)  # a clear error for an unknown dataset
    rep = DuplicateReport(dataset)
    for g in _groups(store.split_rows(dataset)):
        if len(g) < 2:
            continue
        rep.groups += 1
        rep.duplicate_items += len(g) - 1
        present = {r["split"] for r in g if r["split"]}
        if len(present) < 2:
            continue
        target = next(s for s in REPAIR_PRECEDENCE if s in present)
        rep.cross_split_groups += 1
        key = "+".join(s for s in REPAIR_PRECEDENCE if s in present)
        rep.by_splits[key] = rep.by_splits.get(key, 0) + 1
        moves = [(int(r["id"]), r["split"], target) for r in g if r["split"] and r["split"] != target]
        rep.moves += moves
        rep.cross_split_items += len(moves)
        if len(rep.examples) < max_examples:
            rep.examples.append({"item_ids": [int(r["id"]) for r in g], "splits": [r["split"] for r in g],
                                 "to": target})
    return rep


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
