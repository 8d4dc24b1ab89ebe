"""Two labelling runs over the same items never pay twice for one call.

Why: a run lists the calls it is missing when it starts, and a second run started meanwhile -- `flywheel label`
twice, the wheel beside a notebook, another machine on the same PostgreSQL store -- lists the same calls; both used
to pay for every one of them.  Now a run claims each call in the store just before making it (content, teacher,
prompt, pass: :mod:`llm_flywheel.store.claims`).  A call another live run has claimed is *parked*: this run goes on
with its other calls, then waits for the parked answers and uses them as if they had been cached.

Batch API runs take part too: a batch run holds the claims of a submission's calls while it records the lines, and
an online run, holding a call's claim, checks that no open batch carries it before paying (:meth:`CallClaims.in_batch`)
-- so a call is bought online or through a batch, never both.

A run refreshes all its claims every :data:`CLAIM_REFRESH_S` and deletes each once its answer is stored (or its call
failed, so that another run may try).  A claim whose run died stops being refreshed and is taken over after
:data:`CLAIM_STALE_S`; one whose process is known to be gone (same machine and boot, no such pid) is taken over at
once, so ``kill -9`` and an immediate re-run do not wait (:mod:`~llm_flywheel.pipeline.liveness`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from llm_flywheel.pipeline.liveness import known_dead
from llm_flywheel.store.base import Store

log = logging.getLogger(__name__)

CLAIM_STALE_S = 30.0  # a claim not refreshed for this long belongs to a run that died: taken over
CLAIM_REFRESH_S = 10.0  # a run refreshes all its claims this often

Key = tuple[str, int]  # (content hash, pass index)


class CallClaims:
    """The claims of one labelling run (``owner``) on calls of one teacher and prompt."""

    def __init__(self, store: Store, model: str, prompt_version: str, owner: str, base_url: str = "") -> None:
        self.store, self.model, self.pv, self.owner, self.base_url = store, model, prompt_version, owner, base_url

    def take(self, h: str, p: int) -> bool:
        """Claim the call; True when this run holds it (and so may pay for it)."""
        return self.store.claim_teacher_call(h, self.model, self.pv, p, self.owner, stale_after_s=CLAIM_STALE_S,
                                             is_dead=known_dead)

    def take_many(self, keys: Iterable[Key]) -> set[Key]:
        """Claim many calls (a batch run while it records a submission's lines); the keys this run holds."""
        return self.store.claim_teacher_calls(self.model, self.pv, list(keys), self.owner,
                                              stale_after_s=CLAIM_STALE_S, is_dead=known_dead)

    def release(self, h: str, p: int) -> None:
        self.store.release_teacher_call_claim(h, self.model, self.pv, p, self.owner)

    def answered(self, keys: Iterable[Key]) -> dict[Key, str | None]:
        """The calls among ``keys`` with a final answer stored (by any run) -> its label."""
        keys = set(keys)
        found = self.store.final_answers(self.model, self.pv, sorted({h for h, _ in keys}))
        return {(h, a["pass_index"]): a["label"] for h, ans in found.items() for a in ans
                if (h, a["pass_index"]) in keys}

    def in_batch(self, h: str, p: int) -> bool:
        """True when a Batch API submission not collected yet carries the call: an online run must not buy it.
        Asked while holding the call's claim, which a batch run also takes while it records its lines, so a
        submission recorded after this check cannot carry the call (:mod:`~llm_flywheel.pipeline.batch_labeling`)."""
        return self.store.in_open_batch(self.model, self.pv, self.base_url, h, p)

    def free(self, keys: Iterable[Key]) -> set[Key]:
        """The calls among ``keys`` that no live run holds: unclaimed, stale, or of a process that is gone."""
        keys = set(keys)
        held = self.store.teacher_call_claims(self.model, self.pv, sorted({h for h, _ in keys}))
        now = time.time()
        return {k for k in keys if k not in held or held[k].owner == self.owner
                or now - held[k].claimed_at > CLAIM_STALE_S or known_dead(held[k].owner)}

    async def keep_fresh(self) -> None:
        """Refresh every claim of this run, every :data:`CLAIM_REFRESH_S`, until cancelled."""
        while True:
            await asyncio.sleep(CLAIM_REFRESH_S)
            try:
                self.store.refresh_teacher_call_claims(self.owner)
            except Exception as e:  # a store hiccup: the next beat tries again (a claim lives CLAIM_STALE_S)
                log.warning("could not refresh this run's claims: %s: %s", type(e).__name__, e)

    def release_all(self) -> None:
        try:
            self.store.release_teacher_call_claims(self.owner)
        except Exception as e:  # they go stale and are taken over
            log.warning("could not release this run's claims: %s: %s", type(e).__name__, e)
