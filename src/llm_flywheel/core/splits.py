"""Duplicate-safe split assignment: pure functions over item rows, no store.

Why grouped: a source can hold the same item twice (4 identical pairs in 400 SpamAssassin emails).  If one copy
lands in test and the other in train, a test item is trained on.  So items are split as *groups*: same content
hash -- and for text the same normalised text (casefolded, whitespace collapsed) -- always share one split.  A
group with a member in the source's test split goes to test whole.

Why here and not in the pipeline: the import (``data``), the splitting stage (``pipeline.splits``) and the store's
de-duplicated test view all need the same grouping rule, and they sit in different layers; the core is the one
they may all import.  A "row" is anything indexable by ``id``, ``source_split``, ``split``, ``content_hash``,
``text`` and (optionally) ``gold_label`` (a row from ``Store.split_rows`` or a dict).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

REPAIR_PRECEDENCE = ("test", "val", "calib", "stream", "train")
"""Where a cross-split duplicate group is moved: the most held-out split it touches.  Held-out splits never lose
items; only copies in the pool (train/stream) or a less strict held-out split move into them."""


class SplitRow(Protocol):
    def __getitem__(self, key: str) -> Any: ...


class SplitError(ValueError):
    """Splits that cannot be made as asked; the message says why and what to change."""


# The default val and calib sizes (``None``): 5 % of the non-test items, raised towards a floor where that is
# too few to decide on -- a 150-email dataset got 6 val and 6 calib items at a flat 5 % -- but never past a
# ceiling share, so a small dataset keeps most of its items for training.  At 4,000+ non-test items 5 % is the
# rule (Fashion-MNIST, SpamAssassin: unchanged).  The calib floor is the wheel's "small calib" warning line.
AUTO_SHARE = 0.05
AUTO_FLOOR = {"val": 100, "calib": 200}
AUTO_CEILING_SHARE = {"val": 0.10, "calib": 0.15}
CALIB_TO_DEFER = 38
"""The fewest calib items with which the default cascade goal (at most 10 % to the teacher, delta 0.1) defers
anything (``thresholds.min_calib_to_defer(0.1, 0.1)``; a test keeps them equal).  Fewer, and the cascade never asks
its teacher: the auto calib size reaches it wherever that leaves at least 3 of 4 non-test items to the other
splits (from about 190 items), instead of stopping at 15 %."""
CALIB_TO_DEFER_MAX_SHARE = 0.25


@dataclass(frozen=True)
class SplitSpec:
    """Sizes: a float < 1 is a fraction of the non-test items, an int is a count, None (val, calib) the
    default rule of :func:`auto_size`."""

    val: float | int | None = None
    calib: float | int | None = None
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


def row_key(r: SplitRow) -> str:
    return group_key(r["content_hash"], r["text"])


def auto_size(split: str, n: int) -> int:
    """The default size of ``val`` or ``calib`` out of ``n`` non-test items: 5 %, or more for a small dataset
    (up to ``AUTO_FLOOR``, at most ``AUTO_CEILING_SHARE`` of the items; calib at least ``CALIB_TO_DEFER`` where
    that is at most a quarter of them).  120 items: val 12, calib 18; 200: val 20, calib 38; 1,000: val 100,
    calib 150; 4,000 and more: 5 %."""
    size = max(round(AUTO_SHARE * n), min(AUTO_FLOOR[split], round(AUTO_CEILING_SHARE[split] * n)))
    if split == "calib" and size < CALIB_TO_DEFER <= CALIB_TO_DEFER_MAX_SHARE * n:
        return CALIB_TO_DEFER  # a calib split on which the default teacher budget can defer something
    return size


def size_of(size: float | int | None, n: int, split: str = "") -> int:
    """A split size (fraction < 1, a count, or None for ``split``'s :func:`auto_size`) as a number of items out of
    ``n``."""
    if size is None:
        if split not in AUTO_FLOOR:
            raise SplitError(f"the {split or 'split'} size must be given (only val and calib have a default rule)")
        return auto_size(split, n)
    if isinstance(size, float) and size < 1:
        return round(size * n)
    return min(int(size), n)


def group_rows(rows: Sequence[SplitRow]) -> list[list[SplitRow]]:
    """Rows grouped by :func:`group_key`, groups in order of their first row (rows come ordered by id)."""
    by_key: dict[str, list[SplitRow]] = {}
    for r in rows:
        by_key.setdefault(row_key(r), []).append(r)
    return list(by_key.values())


def first_of_each_group(rows: Sequence[SplitRow]) -> list[SplitRow]:
    """One row per duplicate group (the first): what a measurement should count once."""
    return [g[0] for g in group_rows(rows)]


def plan_splits(rows: Sequence[SplitRow], spec: SplitSpec | None = None, *, force: bool = False,
                dataset: str = "dataset") -> list[tuple[int, str]]:
    """(item id, split) for every row that needs one (all rows when nothing is split yet, or with ``force``).

    Duplicates (see :func:`group_key`) always share a split.  Rows added later join the split of an already-split
    duplicate, else ``train`` -- the unlabelled pool -- so earlier splits stay fixed.  Without duplicates the
    assignment is the same as an item-by-item shuffle with the same seed.  Raises :class:`SplitError` when the
    held-out splits would leave no training pool, saying why (duplicates kept together) and what to change.
    """
    groups = group_rows(rows)
    if any(r["split"] for r in rows) and not force:
        out: list[tuple[int, str]] = []
        for g in groups:
            present = {r["split"] for r in g if r["split"]}
            target = next((s for s in REPAIR_PRECEDENCE if s in present), "train")
            out += [(r["id"], target) for r in g if not r["split"]]
        return out
    return _fresh_plan(groups, spec or SplitSpec(), dataset)


def _gold(r: SplitRow) -> Any:
    try:
        return r["gold_label"]
    except (KeyError, IndexError):  # a row without the column: as if unknown
        return None


def unlabelled_source_test(rows: Sequence[SplitRow]) -> bool:
    """True when the source's test split has no gold label while other items have some: Kaggle's ``test/``
    folder or a competition's unlabelled test rows -- inputs to answer, not a test set.  Such a split is split like
    the rest (test drawn at random, measured on the items with gold); keeping it as test left nothing to measure."""
    test = [r for r in rows if r["source_split"] == "test"]
    return bool(test) and not any(_gold(r) for r in test) and any(_gold(r) for r in rows)


def _fresh_plan(groups: list[list[SplitRow]], spec: SplitSpec, dataset: str) -> list[tuple[int, str]]:
    has_source_test = (any(r["source_split"] == "test" for g in groups for r in g)
                       and not unlabelled_source_test([r for g in groups for r in g]))
    test_groups = [g for g in groups if any(r["source_split"] == "test" for r in g)] if has_source_test else []
    rest = [g for g in groups if not has_source_test or all(r["source_split"] != "test" for r in g)]
    order = np.arange(len(rest))
    np.random.default_rng(spec.seed).shuffle(order)  # depends only on the length: singletons shuffle like items
    rest = [rest[i] for i in order]
    taken_by: dict[str, int] = {}
    if not has_source_test:
        k = size_of(spec.test, sum(len(g) for g in rest))
        taken_by["test"] = 0
        while rest and taken_by["test"] < k:
            test_groups.append(rest.pop(0))
            taken_by["test"] += len(test_groups[-1])
    n = sum(len(g) for g in rest)
    counts = {s: size_of(getattr(spec, s), n, s) for s in ("val", "calib", "stream")}
    if n and sum(counts.values()) >= n:  # n == 0: every item is (a copy of) a source test item
        raise SplitError(too_large_message(dataset, counts, n))
    out: list[tuple[int, str]] = []
    pos = 0
    for s in ("val", "calib", "stream"):
        taken_by[s] = 0
        while pos < len(rest) and taken_by[s] < counts[s]:
            out += [(r["id"], s) for r in rest[pos]]
            taken_by[s] += len(rest[pos])
            pos += 1
    if n and pos >= len(rest):
        raise SplitError(no_pool_message(dataset, groups, taken_by))
    out += [(r["id"], "train") for g in rest[pos:] for r in g]
    out += [(r["id"], "test") for g in test_groups for r in g]
    return out


def too_large_message(dataset: str, counts: dict[str, int], n: int) -> str:
    """The held-out sizes asked for add up to every non-test item: say which, and what to ask for instead."""
    asked = ", ".join(f"{s} {k:,}" for s, k in counts.items() if k)
    largest = max(counts, key=lambda s: counts[s])
    return (
        f"dataset {dataset!r}: the held-out splits asked for ({asked} items) leave no training pool out of the {n:,} "
        f"items left after the test split. Fix: ask for less, e.g. `--{largest} {max(1, n // 10)}` or a fraction "
        f"such as `--{largest} 0.1` ({largest}= in Python), and run the same `flywheel data add` again (the items are already stored; "
        f"nothing is imported twice)."
    )


def no_pool_message(dataset: str, groups: list[list[SplitRow]], taken_by: dict[str, int]) -> str:
    """Why a dataset has (or would have) no training pool, and what to do: ``taken_by`` is split -> items."""
    n_items = sum(len(g) for g in groups)
    held = [s for s, k in taken_by.items() if k]
    took = ", ".join(f"{s} {taken_by[s]:,}" for s in held)
    return (
        f"dataset {dataset!r} would have an empty train pool: its {n_items:,} items are only {len(groups):,} distinct "
        f"(duplicates -- the same bytes, or for text the same text ignoring case and whitespace -- are kept together "
        f"in one split so that no test item is ever trained on), and the held-out splits took every group "
        f"({took} items). Fix: import more distinct items (each of {', '.join(held)} and train needs at least one), "
        f"or ask for fewer held-out splits, e.g. `flywheel data add ... --stream 0 --resplit` "
        f"(`flywheel data check {dataset}` lists the duplicate groups)."
    )


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


def find_duplicates(dataset: str, rows: Sequence[SplitRow], *, max_examples: int = 5) -> DuplicateReport:
    """Identical items (see :func:`group_key`) and the moves that would put each cross-split group in one split."""
    rep = DuplicateReport(dataset)
    for g in group_rows(rows):
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
