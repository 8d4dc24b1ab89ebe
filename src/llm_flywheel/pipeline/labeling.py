"""k-pass teacher labelling: cache, resume, budget, consensus, review queue -- the labelling stage's entry point.

The teacher is where the money goes, so this stage makes every call count:

* **Cache first.**  A call is made only when no final answer (``ok=1``) exists for its key
  (content hash, model, prompt version, pass).  Every answer is written to ``teacher_answers`` *before* it is used,
  one autocommitted row at a time, so a run killed at any moment resumes where it stopped and a re-run makes zero
  calls.  Failures (``ok=0``: network, HTTP, unparseable) are kept apart from disagreements and retried next run.
* **Budget.**  Before a call is sent its estimated cost is *reserved* (with a safety margin, and never below the
  most expensive call seen), so concurrent calls cannot overshoot the dollar cap or the call cap
  (:mod:`~llm_flywheel.pipeline.label_budget`).
* **Diverse passes -> consensus.**  Pass 0 is T=0 with the canonical prompt; later passes change wording, label
  order and temperature.  Agreement and confidences make one label with a quality score and a soft target
  (:mod:`llm_flywheel.core.consensus`); a disagreement gets a tie-break pass (pass index ``k``) and, whatever it
  says, stays visible: the label row records it and the item is queued for human review -- never silently dropped.
* **Adaptive passes** (default for k >= 2): later passes only where the first is unsure, with a cutoff learnt
  from data (:mod:`~llm_flywheel.pipeline.label_adaptive`).

The call loop lives in :mod:`~llm_flywheel.pipeline.label_runner`, progress output in
:mod:`~llm_flywheel.pipeline.label_progress`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from llm_flywheel.core.consensus import (
    DEFAULT_CONFIDENCE,
    Consensus,
    answer_probability,
    consensus,
)
from llm_flywheel.core.task import Task
from llm_flywheel.pipeline import label_adaptive as adaptive
from llm_flywheel.pipeline.label_budget import (
    WAIT,
    Budget,
    CircuitBreaker,
    fatal_message,
)
from llm_flywheel.pipeline.label_progress import PlainProgress, Progress, progress_for
from llm_flywheel.pipeline.label_runner import LabelRunner, make_jobs
from llm_flywheel.pipeline.label_types import STOP_REASONS, LabelConfig, LabelRunResult
from llm_flywheel.pipeline.served_answers import adopt_for_items
from llm_flywheel.pipeline.served_model import check_served_model, mixed_models_warning
from llm_flywheel.store.answers import TeacherLabelRow
from llm_flywheel.store.base import Item, Store
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import Teacher, TeacherAnswer
from llm_flywheel.teachers.concurrency import (
    AdaptiveConcurrency,
    remember_level,
    slot_ceiling,
    start_level,
)
from llm_flywheel.teachers.errors import require_readable_labels
from llm_flywheel.teachers.session import run_sync
from llm_flywheel.teachers.texts import over_limit, sent_len

__all__ = [
    "DEFAULT_CONFIDENCE", "STOP_REASONS", "WAIT", "Budget", "CircuitBreaker", "Consensus", "LabelConfig",
    "LabelRunResult", "PlainProgress", "Progress", "answer_probability", "cached_keys", "consensus", "open_batch_keys",
    "fatal_message", "final_answers", "label_items", "plan", "store_answer",
]

log = logging.getLogger(__name__)

SIMULATED_NOTE = ("teacher answers come from the SIMULATED teacher (gold labels through an explicit error model), "
                  "not from a real LLM")


# --- kept for callers of the former single module ------------------------------------------------------------------
def store_answer(store: Store, ans: TeacherAnswer, run_id: int | None = None) -> int | None:
    """Write one answer (autocommitted); see :meth:`Store.add_teacher_answer`."""
    return store.add_teacher_answer(ans, run_id)


def cached_keys(store: Store, model: str, prompt_version: str, hashes: Sequence[str]) -> set[tuple[str, int]]:
    """(content_hash, pass_index) pairs that already have a final answer."""
    return store.final_answer_keys(model, prompt_version, hashes)


def open_batch_keys(store: Store, model: str, prompt_version: str, base_url: str,
                    hashes: Sequence[str]) -> set[tuple[str, int]]:
    """(content_hash, pass_index) pairs of these contents that a Batch API submission not collected yet carries:
    not bought online (collecting the batch stores them)."""
    mine = set(hashes)
    return {k for k in store.pending_batch_keys(model, prompt_version, base_url) if k[0] in mine}


def final_answers(store: Store, model: str, prompt_version: str, hashes: Sequence[str],
                  max_pass: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """content_hash -> final answers (ordered by pass)."""
    return store.final_answers(model, prompt_version, hashes, max_pass)


# --- the run -------------------------------------------------------------------------------------------------------
def load_items(store: Store, dataset: str, item_ids: Sequence[int]) -> tuple[Task, list[Item]]:
    """The task and the items to label; an id that is not in the dataset is an error, not a silent skip."""
    task = Task.from_json(store.dataset_task_json(dataset))
    items = store.items(dataset, ids=list(item_ids)) if item_ids else []
    if item_ids and len(items) != len(set(item_ids)):
        missing = sorted(set(item_ids) - {it.id for it in items})
        raise ValueError(f"{len(missing)} item id(s) are not in dataset {dataset!r}: {missing[:10]}")
    return task, items


def label_items(
    ws: Workspace,
    dataset: str,
    item_ids: Sequence[int],
    teacher: Teacher,
    config: LabelConfig | None = None,
    *,
    progress: bool | str | Progress = True,
    hints: adaptive.Hints | None = None,
) -> LabelRunResult:
    """Label ``item_ids`` with ``config.passes`` diverse passes (+ tie-breaks), making only uncached calls.

    Writes ``labels`` rows (source='teacher') for every item with at least one final answer and queues
    disagreements in ``review_queue``.  Opens its own Store, so it can run in a thread beside a server.
    Raises ``TeacherConfigError`` before any call when the API key is missing.  Provider trouble never raises:
    the result says why the run stopped (``stopped_reason`` / ``stopped_message``).  ``progress``: ``False``
    silent, ``True`` a bar on a terminal and plain lines otherwise, ``"plain"`` always lines, or any
    :class:`~llm_flywheel.pipeline.label_progress.Progress`.  ``hints``: a student's calibrated (label,
    confidence) per content hash, a second signal for adaptive passes (:mod:`~llm_flywheel.pipeline.label_adaptive`).
    """
    cfg = config or LabelConfig()
    t_start = time.monotonic()
    store = ws.store()
    try:
        task, items = load_items(store, dataset, item_ids)
        teacher.check_ready()
        require_readable_labels(task, teacher.is_simulated)  # before anything is paid for
        check_served_model(store, teacher)  # cached answers must come from the model the server now serves
        pv = teacher.prompt_version_for(task)
        result = LabelRunResult(model=teacher.model, base_url=teacher.base_url, prompt_version=pv,
                                simulated=teacher.is_simulated, items=len(items))
        run_id = store.start_run("label", {"dataset": dataset, "model": teacher.model, "base_url": teacher.base_url,
                                           "prompt_version": pv, "items": len(items), "simulated": teacher.is_simulated,
                                           **asdict(cfg)})
        result.run_id = run_id
        # before anything is planned: they count as cached
        result.reused_from_serving = adopt_for_items(store, task, items, teacher.model, pv, run_id)
        prog = progress_for(progress if items else False)
        ctl = AdaptiveConcurrency(cfg.concurrency, adaptive=cfg.adaptive,
                                  start=start_level(teacher.base_url, teacher.model, cfg.concurrency,
                                                    local=teacher.local),
                                  ceiling=slot_ceiling(teacher.base_url), timeout_s=teacher.timeout)
        runner = LabelRunner(ws, store, task, teacher, cfg, _budget(store, teacher, task, cfg, items), result,
                             run_id, prog, ctl)
        status, skipped = "failed", set()
        try:
            skipped = run_sync(_run_phases(runner, items, pv, hints, f"labelling {dataset}"
                                           + (" (SIMULATED teacher)" if teacher.is_simulated else "")))
            status = "stopped" if runner.stop else "done"
            if result.in_open_batch:
                result.warnings.append(in_open_batch_warning(dataset, result.in_open_batch))
        finally:
            if prog is not None:
                prog.stop()
            result.concurrency = ctl.summary()
            if cfg.adaptive and ctl.windows:  # learned something: the next run on this endpoint starts there
                remember_level(teacher.base_url, teacher.model, ctl.settled)
            write_labels(store, task, teacher, pv, items, cfg, result, skipped)
            note_served_models(store, teacher, pv, items, result)
            result.elapsed_s = time.monotonic() - t_start
            store.finish_run(run_id, status)
            store.add_report("label_run", str(run_id), {**result.to_dict(),
                                                        "note": SIMULATED_NOTE if teacher.is_simulated else None})
        return result
    finally:
        store.close()


def in_open_batch_warning(dataset: str, n: int) -> dict[str, str]:
    """The calls an online run left to a Batch API submission not collected yet: said, so that items left without
    a label (or a later pass) are not a mystery."""
    return {"code": "in_open_batch",
            "message": f"{n} call(s) these items need are in a Batch API submission that is not collected yet; "
                       f"they were not bought online (that would pay twice), so their items have fewer answers "
                       f"until the batch is collected",
            "fix": f"`flywheel label {dataset} --batch` collects it (it waits for the provider; `--batch-wait-s 0` "
                   f"only checks once), or `flywheel label {dataset} --cancel-batches` (Python: "
                   f"`Dataset.cancel_batches`) cancels it, keeps what it answered and asks the rest now"}


def note_served_models(store: Store, teacher: Teacher, pv: str, items: Sequence[Item], result: Any) -> None:
    """Which models the items' answers say they came from; a warning on the result when more than one (each
    interface shows the result's warnings, so the log keeps it at info: printed once, not twice)."""
    result.served_models = store.served_model_counts(teacher.model, pv, [it.content_hash for it in items])
    w = mixed_models_warning(teacher.model, teacher.base_url, result.served_models)
    if w:
        result.warnings.append(w)
        log.info("%s -- %s", w["message"], w["fix"])


def _budget(store: Store, teacher: Teacher, task: Task, cfg: LabelConfig, items: Sequence[Item]) -> Budget:
    _, _, est = teacher.estimate_call(task, text_len=mean_text_len(items, teacher))  # until a call is recorded
    observed = store.answer_cost_stats(teacher.model).mean_cost_usd
    return Budget(cfg.budget_usd, cfg.max_calls, observed if observed is not None else est, cfg.cost_safety)


async def _run_phases(runner: LabelRunner, items: Sequence[Item], pv: str, hints: adaptive.Hints | None,
                      desc: str) -> set[str]:
    beat = asyncio.ensure_future(runner.claims.keep_fresh())  # this run's claims on calls stay its own
    try:
        async with runner.open():
            return await _phases(runner, items, pv, desc, hints)
    finally:
        beat.cancel()
        runner.claims.release_all()


async def _phases(runner: LabelRunner, items: Sequence[Item], pv: str, desc: str,
                  hints: adaptive.Hints | None = None) -> set[str]:
    """Fixed k: every missing pass.  Adaptive: calibration sample + pass 0, then later passes where unsure.
    Returns the content hashes the adaptive cutoff answered with pass 0 alone.  One event loop for all phases:
    the concurrency controller's locks belong to the loop they were first used in."""
    cfg, store, model = runner.cfg, runner.store, runner.teacher.model
    hashes = [it.content_hash for it in items]
    cached = store.final_answer_keys(model, pv, hashes)
    runner.in_batch = open_batch_keys(store, model, pv, runner.teacher.base_url, hashes)
    main = list(range(cfg.passes))
    runner.result.answers_cached = sum(1 for h in set(hashes) for p in main if (h, p) in cached)
    for h, answers in store.final_answers(model, pv, hashes, max_pass=cfg.passes).items():
        runner.known[h] = {a["pass_index"]: a["label"] for a in answers}
    due = runner.tie_breaks_due(items)  # resumed runs: passes all cached but the tie-break still missing
    if not cfg.adaptive_k:
        await runner.run(runner.not_batched(make_jobs(items, main, cached)) + due, desc)
        return set()
    labels = runner.task.labels
    reused = (adaptive.reusable_evidence(store, items, model, pv, cfg.passes, labels) if cfg.reuse_evidence
              else {})
    sample = adaptive.plan_sample(hashes, reused, cfg.calibration_items)
    in_sample = [it for it in items if it.content_hash in sample]
    first = make_jobs(in_sample, main, cached)
    first += make_jobs(items, [0], cached | {(it.content_hash, p) for it, p in first})
    await runner.run(runner.not_batched(first) + due, desc)
    if runner.stop:
        return set()
    answers = store.final_answers(model, pv, hashes, max_pass=cfg.passes)
    summary, more, skipped = adaptive.decide(items, answers, reused, sample, labels, cfg.passes,
                                             cfg.agreement_target, cfg.use_logprobs, hints)
    runner.result.adaptive_passes = summary
    cut = "none (every item asked every pass)" if summary.cutoff is None else f"{summary.cutoff:.4f}"
    log.info("adaptive passes: cutoff %s from %d evidence items (%d reused); %d items need more passes, %d answered "
             "by pass 0", cut, summary.evidence, summary.reused_evidence, len(more), len(skipped))
    await runner.run(runner.not_batched(make_jobs(more, main[1:], store.final_answer_keys(model, pv, hashes))),
                     desc + ", later passes")
    return skipped


def _label_row(con: Consensus, item: Item, prov: Mapping[str, Any], cfg: LabelConfig,
               human: set[int]) -> TeacherLabelRow:
    review = None
    if cfg.queue_disagreements and con.status in ("disagreed", "tie_broken") and item.id not in human:
        review = 1.0 if con.status == "disagreed" else 0.5
    return TeacherLabelRow(item.id, con.label, round(con.quality, 6), con.soft, con.status,
                           {**prov, "answer_ids": con.answer_ids, "votes": con.votes,
                            "confidence_source": con.confidence_source}, review)


def write_labels(store: Store, task: Task, teacher: Teacher, pv: str, items: Sequence[Item],
                 cfg: LabelConfig, result: LabelRunResult, skipped: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Consensus labels + review queue from every stored final answer; online and batch labelling both end here,
    so a batch answer becomes a label exactly the way an online one does."""
    # every final pass of this teacher counts, also those of earlier runs with more passes: a later 1-pass run
    # (the cascade's) must not downgrade a 2-pass consensus to a single vote
    answers = store.final_answers(teacher.model, pv, [it.content_hash for it in items])
    human = store.human_labelled_ids([it.id for it in items])
    prov = {"model": teacher.model, "prompt_version": pv, "simulated": teacher.is_simulated}
    cutoff = result.adaptive_passes.cutoff if result.adaptive_passes else None
    counts: Counter[str] = Counter()
    rows = []
    for it in items:
        sure = it.content_hash in skipped  # answered by pass 0 above a cutoff learnt from checked items
        con = consensus(answers.get(it.content_hash, []), task.labels, use_logprobs=cfg.use_logprobs,
                        single_factor=1.0 if sure else 0.5)
        if con is None:
            counts["unlabelled"] += 1
            continue
        counts[con.status] += 1
        rows.append(_label_row(con, it, {**prov, "adaptive_cutoff": cutoff} if sure else prov, cfg, human))
    result.queued_for_review += store.write_teacher_labels(rows, at=time.time())
    result.agreed = counts["agreed"]
    result.tie_broken = counts["tie_broken"]
    result.disagreed = counts["disagreed"]
    result.single = counts["single"]
    result.unlabelled = counts["unlabelled"]
    result.labelled = counts["agreed"] + counts["tie_broken"] + counts["single"]


def mean_text_len(items: Sequence[Item], teacher: Teacher) -> int:
    """Mean characters a teacher is sent per text item (each at most its ``text_max_chars``, a CJK character counted
    as 4: ``teachers.texts.sent_len``): the token guess."""
    lens = [sent_len(it.text or "", teacher.text_max_chars) for it in items if it.modality == "text"]
    return round(sum(lens) / len(lens)) if lens else 0


def texts_cut(items: Sequence[Item], teacher: Teacher) -> int:
    """How many item texts are longer than a teacher is sent (they are cut: ``teachers.texts``)."""
    return sum(1 for it in items if it.modality == "text" and over_limit(it.text or "", teacher.text_max_chars))


def plan(ws: Workspace, dataset: str, item_ids: Sequence[int], teacher: Teacher,
         config: LabelConfig | None = None) -> dict[str, Any]:
    """What a run would cost, before any call: calls needed (cached ones excluded), tokens and USD.

    Calls an open Batch API submission carries are not needed (``calls_in_open_batch``: collecting the batch
    stores them).  The price per call is the mean recorded for this model when there is one ('observed'), else
    the task's price table applied to a token estimate ('task prices').  Tie-breaks are estimated from the disagreement
    rate seen so far (15 % when nothing is known) and bounded by one per item.  With adaptive passes the
    count is an upper bound: items whose first pass clears the learnt cutoff skip the later passes.
    """
    cfg = config or LabelConfig()
    store = ws.store(readonly=True)
    try:
        task, items = load_items(store, dataset, item_ids)
        pv = teacher.prompt_version_for(task)
        hashes = [it.content_hash for it in items]
        uniq = len(set(hashes))
        cached = store.final_answer_keys(teacher.model, pv, hashes)
        batched = open_batch_keys(store, teacher.model, pv, teacher.base_url, hashes)
        missing = make_jobs(items, list(range(cfg.passes)), cached)
        needed = sum(1 for it, p in missing if (it.content_hash, p) not in batched)
        in_batch = len(missing) - needed
        tb_max = (len(make_jobs(items, [cfg.passes], cached | batched)) if cfg.tie_break and cfg.passes >= 2
                  else 0)
        by = store.teacher_label_status_counts()
        tot = sum(by.values())
        dis_rate = (by.get("disagreed", 0) + by.get("tie_broken", 0)) / tot if tot else 0.15
        tb_exp = min(tb_max, round(dis_rate * tb_max)) if needed else 0
        stats = store.answer_cost_stats(teacher.model)
    finally:
        store.close()
    tin, tout, est = teacher.estimate_call(task, text_len=mean_text_len(items, teacher))
    note = None
    if stats.n:
        per_call, source = stats.mean_cost_usd, "observed"
        tin, tout = int(stats.mean_tokens_in or tin), int(stats.mean_tokens_out or tout)
    elif est is not None:
        per_call, source = est, "task prices"
        note = (f"no call of {teacher.model} is recorded yet, so the tokens are a guess: about {tin:,} in and {tout} "
                "out a call. A reasoning model also bills the reasoning it hides as output, often hundreds of tokens "
                "a call; label a few first (--max-calls 20) and plan again: the plan then prices the calls it saw")
    else:
        per_call, source = None, "unknown (no prices in the task and no calls recorded)"
    calls_exp = needed + tb_exp
    cost = None if per_call is None else per_call * calls_exp
    cost_max = None if per_call is None else per_call * (needed + tb_max)
    return {
        "dataset": dataset, "model": teacher.model, "base_url": teacher.base_url, "prompt_version": pv,
        "simulated": teacher.is_simulated, "items": len(items), "unique_contents": uniq, "passes": cfg.passes,
        "adaptive_passes": cfg.adaptive_k,
        "calls_cached": uniq * cfg.passes - needed - in_batch, "calls_needed": needed,
        "calls_in_open_batch": in_batch,
        "tie_break_calls_expected": tb_exp, "tie_break_calls_max": tb_max,
        "est_tokens_in": tin * calls_exp, "est_tokens_out": tout * calls_exp,
        "est_cost_per_call_usd": per_call, "price_source": source, "estimate_note": note,
        "est_cost_usd": cost, "est_cost_usd_max": cost_max,
        "budget_usd": cfg.budget_usd, "max_calls": cfg.max_calls,
        "fits_budget": None if cfg.budget_usd is None or cost_max is None else cost_max <= cfg.budget_usd,
        "texts_cut": texts_cut(items, teacher), "text_max_chars": teacher.text_max_chars,
    }
