"""What the next batch asks: the (item, pass) keys still missing -- with adaptive passes decided between batches.

Why a module of its own: online labelling decides adaptive passes between two phases of one run; a batch run
decides them between batches.  Each round asks for what is missing now: the calibration sample's every pass and
everyone else's first pass; once first passes are back, the later passes for the items whose first answer is
below the cutoff learnt from the sample (:mod:`llm_flywheel.pipeline.label_adaptive`, the online path's own
functions); and the tie-breaks of items whose passes disagree.  Keys already answered or in an open batch are
never asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_flywheel.core.consensus import needs_tie_break
from llm_flywheel.pipeline import label_adaptive as adaptive
from llm_flywheel.pipeline.label_adaptive import AdaptiveSummary
from llm_flywheel.pipeline.labeling import LabelConfig, cached_keys, final_answers
from llm_flywheel.store.base import Item, Store

Job = tuple[Item, int]


@dataclass
class RoundJobs:
    """The jobs of the next batch round; with adaptive passes, the decision as it stands (``skipped``: content
    hashes answered by pass 0 alone, for the labels' quality; ``summary`` for the run's result)."""

    jobs: list[Job]
    skipped: set[str] = field(default_factory=set)
    summary: AdaptiveSummary | None = None


def round_jobs(store: Store, items: Sequence[Item], labels: Sequence[str], model: str, pv: str, base_url: str,
               cfg: LabelConfig, hints: adaptive.Hints | None = None) -> RoundJobs:
    """Missing main passes (all of them, or as adaptive passes decide), then due tie-breaks.

    The adaptive cutoff is learnt only once the calibration sample is settled -- its tie-breaks answered, as online
    labelling has them when it decides -- so a sample disagreement still waiting for its tie-break cannot make the
    cutoff more cautious than online's (that costs one more batch round, not more calls)."""
    hashes = [it.content_hash for it in items]
    pending = store.pending_batch_keys(model, pv, base_url)
    done = cached_keys(store, model, pv, hashes) | pending
    known = final_answers(store, model, pv, hashes, max_pass=cfg.passes)
    main = range(cfg.passes)
    ties = _tie_breaks(items, known, done, cfg)
    out = RoundJobs([])
    wanted = {(h, p) for h in hashes for p in main}
    if cfg.adaptive_k:
        reused = (adaptive.reusable_evidence(store, items, model, pv, cfg.passes, labels) if cfg.reuse_evidence
                  else {})
        sample = adaptive.plan_sample(hashes, reused, cfg.calibration_items)
        wanted = {(it.content_hash, p) for it in items for p in (main if it.content_hash in sample else (0,))}
        unsettled = {it.content_hash for it, _ in ties} | {h for h, p in pending if p == cfg.passes}
        if not unsettled & sample:
            out.summary, more, out.skipped = adaptive.decide(items, known, reused, sample, labels, cfg.passes,
                                                             cfg.agreement_target, cfg.use_logprobs, hints)
            wanted |= {(it.content_hash, p) for it in more for p in main[1:]}
    seen: set[tuple[str, int]] = set()
    for it in items:
        for p in main:
            key = (it.content_hash, p)
            if key in wanted and key not in done and key not in seen:
                seen.add(key)
                out.jobs.append((it, p))
    out.jobs += ties
    return out


def _tie_breaks(items: Sequence[Item], known: dict[str, list[dict]], done: set[tuple[str, int]],
                cfg: LabelConfig) -> list[Job]:
    """Pass ``k`` for items whose ``k`` main passes are all answered and have no strict majority."""
    if not cfg.tie_break or cfg.passes < 2:
        return []
    k, out, seen = cfg.passes, [], set()
    for it in items:
        got = {a["pass_index"]: a["label"] for a in known.get(it.content_hash, [])}
        key = (it.content_hash, k)
        if key in done or key in seen or any(p not in got for p in range(k)):
            continue
        if needs_tie_break([got[p] for p in range(k)]):
            seen.add(key)
            out.append((it, k))
    return out
