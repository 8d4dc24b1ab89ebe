"""``flywheel label --plan``'s two prices: what the same calls cost online and through the Batch API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_flywheel.pipeline.batch_types import BatchConfig
from llm_flywheel.pipeline.labeling import LabelConfig, plan
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher


def plan_both(ws: Workspace, dataset: str, item_ids: Sequence[int], teacher: OpenAICompatTeacher,
              config: LabelConfig | None = None, batch: BatchConfig | None = None) -> dict[str, Any]:
    """The online plan (:func:`llm_flywheel.pipeline.labeling.plan`) with the batch price beside it.

    Each mode is priced from its own recorded answers where there are some (a store holding half-price batch
    answers must not make the online estimate look cheap): online per call = the mean online answer, else the mean
    batch answer / ratio, else the task's prices; batch per call = the mean batch answer, else online x ratio.
    Adds ``est_cost_per_call_batch_usd``, ``est_cost_batch_usd``, ``est_cost_batch_usd_max``, ``price_ratio``."""
    bcfg = batch or BatchConfig()
    p = plan(ws, dataset, item_ids, teacher, config)
    with ws.store(readonly=True) as store:
        means = store.batch_cost_means(teacher.model)
    online, batched = means["online"], means["batch"]
    if online is None and batched is not None:
        online = batched / bcfg.price_ratio
    if online is not None and means["batch"] is not None:
        p["est_cost_per_call_usd"], p["price_source"] = online, "observed"
    online = online if online is not None else p["est_cost_per_call_usd"]
    per_batch = batched if batched is not None else (None if online is None else online * bcfg.price_ratio)
    calls = p["calls_needed"] + p["tie_break_calls_expected"]
    calls_max = p["calls_needed"] + p["tie_break_calls_max"]
    for key, per in (("", online), ("_batch", per_batch)):
        p[f"est_cost{key}_usd"] = None if per is None else per * calls
        p[f"est_cost{key}_usd_max"] = None if per is None else per * calls_max
    p["est_cost_per_call_batch_usd"] = per_batch
    p["price_ratio"] = bcfg.price_ratio
    return p
