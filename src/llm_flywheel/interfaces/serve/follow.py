"""The service follows the dataset's serving model: a model the wheel promotes is answered with, without a restart.

Why: the wheel retrains and promotes while `flywheel serve` answers traffic, and a service that kept the model it
started with would serve round 1 for ever.  Every ``follow_promoted_s`` seconds the service reads the serving
model's version from the store (:func:`~llm_flywheel.pipeline.cascade.promoted_version`).  When it changed, the new
student and its latest calibration load in a worker thread, answer one warm-up input, and are swapped in at once:

* a request keeps the cascade it started with, so its guess, threshold and model version belong together;
* teacher calls in flight, the breaker and the answer cache carry over (:meth:`Cascade.with_model`);
* a model that cannot be loaded yet (not calibrated, a file missing) is logged once and tried again at the next
  check, while the old one keeps serving.

``--version`` pins a model and turns this off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llm_flywheel.pipeline.cascade import Cascade, promoted_version

logger = logging.getLogger(__name__)


def warm(cascade: Cascade) -> None:
    """Run the student once, so that the first request it answers does not pay for lazy loading."""
    sample: Any = {"text": "warm up", "tabular": None}.get(cascade.task.modality)
    if cascade.task.modality == "image":
        from PIL import Image

        sample = Image.new("RGB", (32, 32))
    if sample is not None:
        cascade.student_guess(sample)


def check_once(st: Any) -> bool:
    """Swap the dataset's serving model into ``st`` (the app's ``ServeState``) when it is not the one answering;
    True when it did."""
    current = st.cascade
    with st.ws.store() as s:
        latest = promoted_version(s, current.dataset)
    if latest == current.version:
        return False
    try:
        new = current.reload(latest)
        warm(new)
    except Exception as e:  # the old model keeps serving; the next check tries again
        if st.unloadable != latest:
            logger.warning("model %s is now the serving model but cannot be served yet (%s: %s); still serving %s",
                           latest, type(e).__name__, e, current.version)
            st.unloadable = latest
        return False
    st.cascade = new
    st.feedback.cascade = new
    st.metrics.version = new.version
    st.swaps += 1
    logger.info("now serving model %s (was %s)", new.version, current.version)
    return True


async def follow_promoted(st: Any, interval_s: float) -> None:
    """:func:`check_once` every ``interval_s`` seconds until cancelled; never lets an error end the loop."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(check_once, st)
        except Exception as e:  # e.g. the store briefly unreachable
            logger.warning("could not check for a newly promoted model: %s: %s", type(e).__name__, e)
