"""Cancel the Batch API jobs earlier runs left running, keeping what they had finished.

Why: a batch may take up to 24 hours, and while it runs an online run leaves its calls to it (never paying twice).
A user who needs the labels now cancels it: the provider stops it and returns the lines it had already answered
(billed, so they are collected and stored like any batch answer); the lines it never reached are stored as failed
attempts, so the next run -- online or a new batch -- asks them again.
"""

from __future__ import annotations

import sys
import time

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.batch_labeling import SUBMISSION_KEY, BatchConfig, BatchRunResult, BatchRun
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
    """Cancel one submission at the provider (if it ever got there), wait for it to end, collect it."""
    r = run.result
    bid = rec.batch_id
    if bid is None and rec.input_file_id:  # created just before a kill, its id never recorded?
        found = run.client.find(SUBMISSION_KEY, rec.submission)
        bid = found.id if found is not None else None
        if bid is not None:
            run.store.update_batch(rec.id, batch_id=bid, status=found.status)  # type: ignore[union-attr]
            rec = run.store.batch_record(rec.id)
    if bid is None:  # never sent: nothing to cancel or to pay; its lines are asked again
        run.collect(rec, BatchStatus("", "cancelled", errors=["cancelled before it was sent to the provider"]))
        r.batches_resumed += 1
        return
    try:
        st = run.client.cancel(bid)
    except BatchAPIError as e:
        if e.status == 404:
            st = BatchStatus(bid, "lost", errors=[f"the provider no longer knows this batch: {e}"])
        elif e.status in (400, 409):  # it ended meanwhile (a terminal batch cannot be cancelled): collect it
            st = run.client.get(bid)
            if not st.terminal:
                raise
        else:
            raise
    r.batches_resumed += 1
    run.say(f"batch {bid}: cancel requested ({st.status})")
    t0 = time.monotonic()
    while not st.terminal and st.status != "lost":
        if time.monotonic() - t0 >= run.bcfg.wait_s:  # type: ignore[operator]
            r.batches_pending += 1
            return
        time.sleep(run.bcfg.poll_s)
        st = run.client.get(bid)
    run.store.update_batch(rec.id, status=st.status, output_file_id=st.output_file_id,
                           error_file_id=st.error_file_id, detail="; ".join(st.errors)[:1000] or None)
    run.collect(rec, st)
