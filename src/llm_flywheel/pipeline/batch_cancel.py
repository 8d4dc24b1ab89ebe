"""Cancel the Batch API jobs earlier runs left running, keeping what they had finished.

Why: a batch may take up to 24 hours, and while it runs an online run leaves its calls to it (never paying twice).
A user who needs the labels now cancels it: the provider stops it and returns the lines it had already answered
(billed, so they are collected and stored like any batch answer); the lines it never reached are stored as failed
attempts, so the next run -- online or a new batch -- asks them again.
"""

from __future__ import annotations

import sys

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.batch_labeling import BatchConfig, BatchRun, BatchRunResult
from llm_flywheel.pipeline.labeling import LabelConfig
from llm_flywheel.store.batches import BatchRecord
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.batch import BatchAPIError, BatchStatus
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher


def cancel_open_batches(ws: Workspace, dataset: str, teacher: OpenAICompatTeacher, *, wait_s: float = 600.0,
                        poll_s: float = 2.0, progress: bool = True) -> BatchRunResult:
    """Cancel every uncollected submission of ``teacher`` (model, prompt, endpoint) and collect what each had
    answered.  A batch the provider still reports as cancelling after ``wait_s`` stays open (``batches_pending``;
    run this again).  ``calls_made`` / ``cost_usd``: the answers collected; ``lines_failed``: the lines asked again
    later.  Raises :class:`~llm_flywheel.teachers.batch.BatchAPIError` when the provider refuses."""
    store = ws.store()
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        pv = teacher.prompt_version_for(task)
        result = BatchRunResult(model=teacher.model, base_url=teacher.base_url, prompt_version=pv,
                                simulated=teacher.is_simulated)
        result.run_id = store.start_run("batch_cancel", {"dataset": dataset, "model": teacher.model,
                                                         "base_url": teacher.base_url, "prompt_version": pv})
        say = (lambda s: print(f"cancelling {dataset}'s batches: {s}", file=sys.stderr, flush=True)) if progress \
            else (lambda s: None)
        run = BatchRun(ws, store, task, [], teacher, LabelConfig(), BatchConfig(poll_s=poll_s, wait_s=wait_s),
                       result, say)
        status = "failed"
        try:
            for rec in store.open_batches(teacher.model, pv, teacher.base_url):
                _cancel_one(run, rec)
            status = "stopped" if result.batches_pending else "done"
        finally:
            run.client.close()
            store.finish_run(result.run_id, status)
        return result
    finally:
        store.close()


def _cancel_one(run: BatchRun, rec: BatchRecord) -> None:
    """Cancel one submission at the provider (if it ever got there), then wait for it to end and collect it as any
    batch is (:meth:`BatchRun.drive`: a batch the provider no longer knows is collected as lost)."""
    r = run.result
    rec = run.found(rec)
    r.batches_resumed += 1
    if rec.batch_id is None:  # never sent: nothing to cancel or to pay; its lines are asked again
        run.collect(rec, BatchStatus("", "cancelled", errors=["cancelled before it was sent to the provider"]))
        return
    try:
        run.say(f"batch {rec.batch_id}: cancel requested ({run.client.cancel(rec.batch_id).status})")
    except BatchAPIError as e:
        if e.status in (400, 409):  # it ended meanwhile (a batch that has ended cannot be cancelled)
            if not run.client.get(rec.batch_id).terminal:
                raise
        elif e.status != 404:
            raise
    run.drive(rec)
