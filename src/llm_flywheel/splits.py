"""Train / val / calib / test / stream splits, made once per dataset and stored.

Why stored: every later choice (early stopping, temperature, cascade threshold, promotion) must be made on the
same held-out items run after run, and the test split must never leak into any of them.  The source's own test
split (Fashion-MNIST's 10,000, CIFAR's 500) becomes ``test``; the rest is shuffled with a fixed seed into the
other splits.  No gold label is used to make them: a real user has none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .store import SPLITS, Store


@dataclass(frozen=True)
class SplitSpec:
    """Sizes: a float < 1 is a fraction of the non-test items, an int is a count."""

    val: float | int = 0.05
    calib: float | int = 0.05
    stream: float | int = 0.2
    test: float | int = 0.2  # used only when the source has no test split of its own
    seed: int = 0


def _count(size: float | int, n: int) -> int:
    if isinstance(size, float) and size < 1:
        return int(round(size * n))
    return min(int(size), n)


def make_splits(store: Store, dataset: str, spec: SplitSpec = SplitSpec(), *, force: bool = False) -> dict[str, int]:
    """Assign every item of ``dataset`` a split (items already split keep theirs unless ``force``).

    Items added later (a new import) are assigned to ``train`` -- the unlabelled pool -- so earlier splits
    stay fixed.  Returns counts per split.
    """
    rows = store.query("SELECT id, source_split, split FROM items WHERE dataset=? ORDER BY id", (dataset,))
    if not rows:
        raise ValueError(f"dataset {dataset!r} has no items; run `flywheel data add` first")
    already = any(r["split"] for r in rows)
    rng = np.random.default_rng(spec.seed)
    assignments: list[tuple[int, str]] = []
    if already and not force:
        assignments = [(r["id"], "train") for r in rows if not r["split"]]
    else:
        has_source_test = any(r["source_split"] == "test" for r in rows)
        test_ids = [r["id"] for r in rows if r["source_split"] == "test"] if has_source_test else []
        rest = np.array([r["id"] for r in rows if not has_source_test or r["source_split"] != "test"])
        rng.shuffle(rest)
        if not has_source_test:
            k = _count(spec.test, len(rest))
            test_ids, rest = rest[:k].tolist(), rest[k:]
        n = len(rest)
        counts = {s: _count(getattr(spec, s), n) for s in ("val", "calib", "stream")}
        if sum(counts.values()) >= n:
            raise ValueError(f"split sizes {counts} leave no training pool out of {n} items")
        start = 0
        for s in ("val", "calib", "stream"):
            assignments += [(int(i), s) for i in rest[start : start + counts[s]]]
            start += counts[s]
        assignments += [(int(i), "train") for i in rest[start:]]
        assignments += [(int(i), "test") for i in test_ids]
    store.set_splits(assignments)
    return split_counts(store, dataset)


def split_counts(store: Store, dataset: str) -> dict[str, int]:
    c = Counter({r["split"]: r["n"] for r in store.query(
        "SELECT split, COUNT(*) AS n FROM items WHERE dataset=? GROUP BY split", (dataset,)
    )})
    return {s: c.get(s, 0) for s in SPLITS if c.get(s)} | ({"unassigned": c[None]} if c.get(None) else {})
