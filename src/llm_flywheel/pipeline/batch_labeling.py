"""Labelling through the provider's Batch API: the same answers as online labelling, at the batch price.

Why: a pool labelled once for training does not need its answers within seconds, and providers sell the same call
at about half price when it may take up to 24 hours.  Everything the online path guarantees holds here too:

* **Cache first, stored before use.**  Only (item, pass) keys without a final answer are submitted; every answer
  line is read by the online client's own reader and stored in ``teacher_answers`` like an online answer (so the
  cache, consensus, review queue, budget and ``plan`` see no difference), priced at the batch rate.
* **Nothing paid twice after a kill.**  A submission and the (item, pass) of each of its lines are recorded in the
  store *before* anything is sent; its own id travels as batch metadata, so a batch created just before a kill
  is found again.  The next run resumes polling the open batches and never submits their lines again.  An
  answer file is collected in one transaction.
* **Partial failures.**  Lines the provider failed (error file), lines an expired batch never reached and replies
  that do not parse are stored as failures and asked again in a follow-up batch (``BatchConfig.retry_rounds``
  within the run, then on the next run); a batch that fails validation is resubmitted the same way.
* **Budget.**  Each submission reserves its lines' estimated batch cost (x ``LabelConfig.cost_safety``); a
  submission is cut to what fits the dollar and call caps that remain.
* **Tie-breaks** are a follow-up batch for the items whose passes disagree.

* **Adaptive passes** (``LabelConfig.adaptive_passes``, the default for k >= 2) are decided between batches:
  the first batch asks the calibration sample every pass and everyone else pass 0; once the sample's tie-breaks are
  back, the next asks the later passes only where pass 0 is below the cutoff learnt from the sample
  (:mod:`llm_flywheel.pipeline.batch_jobs`).  Fewer calls, one or two more batch round trips than fixed k.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.batch_jobs import Job, round_jobs
from llm_flywheel.pipeline.batch_types import BatchConfig, BatchRunResult
from llm_flywheel.pipeline.label_adaptive import Hints
from llm_flywheel.pipeline.label_claims import CallClaims
from llm_flywheel.pipeline.labeling import (SIMULATED_NOTE, LabelConfig, cached_keys, load_items, mean_text_len,
                                            note_served_models, store_answer, write_labels)
from llm_flywheel.pipeline.liveness import owner_id
from llm_flywheel.pipeline.served_answers import adopt_for_items
from llm_flywheel.pipeline.served_model import check_served_model
from llm_flywheel.store.base import Item, Store
from llm_flywheel.store.batches import BatchLine, BatchRecord
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.batch import (BatchAPIError, BatchClient, BatchStatus, answer_from_line, parse_result_file,
                                         request_line)
from llm_flywheel.teachers.errors import require_readable_labels
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher

SUBMISSION_KEY = "flywheel_submission"


class BatchRun:
    """One batch labelling run over a store: resume, submit, poll, collect."""

    def __init__(self, ws: Workspace, store: Store, task: Task, items: Sequence[Item], teacher: OpenAICompatTeacher,
                 cfg: LabelConfig, bcfg: BatchConfig, result: BatchRunResult, say: Callable[[str], None],
                 hints: Hints | None = None) -> None:
        self.ws, self.store, self.task, self.items, self.teacher = ws, store, task, items, teacher
        self.hints = hints  # a student's (label, confidence) per content hash, for adaptive passes
        self.cfg, self.bcfg, self.result, self.say = cfg, bcfg, result, say
        self.pv = teacher.prompt_version_for(task)
        self.client = BatchClient(teacher.base_url, api_key_env=teacher.api_key_env,
                                  max_retries=teacher.max_retries, backoff_base=teacher.backoff_base)
        self.reserved = 0.0  # set aside for batches submitted and not yet collected this run
        self.pending_lines = 0  # lines of those batches
        self.skipped: set[str] = set()  # adaptive passes: content hashes answered by pass 0 alone
        self.max_seen = 0.0
        self.data: bytes | None = None  # the JSONL of the submission being recorded
        self.claims = CallClaims(store, teacher.model, self.pv, owner_id(f"batch{result.run_id}"), teacher.base_url)

    # -- what to ask --------------------------------------------------------------------------------------------
    def todo(self) -> list[Job]:
        """What the next batch asks (see :mod:`llm_flywheel.pipeline.batch_jobs`); keeps the adaptive decision."""
        nxt = round_jobs(self.store, self.items, self.task.labels, self.teacher.model, self.pv,
                         self.teacher.base_url, self.cfg, self.hints)
        self.skipped, self.result.adaptive_passes = nxt.skipped, nxt.summary
        return nxt.jobs

    def per_line(self) -> float | None:
        """Estimated batch cost of one line: the task's prices x ratio, or the mean batch line seen so far."""
        est = self.teacher.estimate_call(self.task, text_len=mean_text_len(self.items, self.teacher))[2]
        seen = self.store.batch_cost_means(self.teacher.model).get("batch")
        cands = [c for c in (None if est is None else est * self.bcfg.price_ratio, seen,
                             self.max_seen or None) if c is not None]
        return max(cands) if cands else None

    def fit(self, jobs: list[Job]) -> list[Job]:
        """The jobs the remaining dollar and call caps allow.  When a cap cuts the list, the result says which
        (``stopped_reason``) and this run submits nothing after them: the rest waits for the next run."""
        r, cfg = self.result, self.cfg
        n = len(jobs)
        if cfg.max_calls is not None:
            allowed = max(0, cfg.max_calls - r.calls_made - self.pending_lines)
            if allowed < n:
                n, r.stopped_reason = allowed, "max_calls"
        if cfg.budget_usd is not None and n:
            per = self.per_line()
            if per is None:  # nothing known about prices yet: a small probe batch first, priced when it returns
                n = min(n, 10)
            elif per > 0:
                left = cfg.budget_usd - r.cost_usd - self.reserved
                allowed = max(0, int(left // (per * cfg.cost_safety)))
                if allowed < n:
                    n, r.stopped_reason = allowed, "budget"
        r.stopped_by_budget = r.stopped_reason in ("budget", "max_calls")
        return jobs[:n]

    # -- submit -------------------------------------------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> tuple[BatchRecord | None, list[Job]]:
        """Record one submission and its lines, then upload and create it (each step recorded as it happens).
        A batch holds at most ``max_lines`` lines and ``max_bytes`` of JSONL; returns it (None when another run
        took every call of it meanwhile) and the jobs left over."""
        jobs, rest = jobs[: self.bcfg.max_lines], jobs[self.bcfg.max_lines:]
        try:
            jobs = self.claimed(jobs)
            rid = self.record(jobs, rest) if jobs else None
        finally:
            self.claims.release_all()  # recorded: an online run now sees the lines (CallClaims.in_batch)
        return (None if rid is None else self.send(self.store.batch_record(rid), self.data)), rest

    def claimed(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose calls this run now holds and no other run answered meanwhile: an online run making one of
        them right now keeps it (this run uses its answer), so no call is bought online and through a batch."""
        keys = {(it.content_hash, p) for it, p in jobs}
        mine = self.claims.take_many(keys)
        mine -= set(self.claims.answered(mine))
        if len(mine) < len(keys):
            self.say(f"{len(keys) - len(mine)} request(s) are being made or were just answered by another run; "
                     f"not submitted (their answers are used)")
        return [(it, p) for it, p in jobs if (it.content_hash, p) in mine]

    def record(self, jobs: list[Job], rest: list[Job]) -> int:
        """Store the submission and its lines (within ``max_bytes``: the jobs that do not fit go back to ``rest``);
        its JSONL is kept in ``self.data`` for :meth:`send`."""
        data = self.jsonl(jobs)
        if len(data) > self.bcfg.max_bytes:
            lines, keep, size = data.splitlines(keepends=True), 0, 0
            while keep < len(lines) and (size + len(lines[keep]) <= self.bcfg.max_bytes or not keep):
                size, keep = size + len(lines[keep]), keep + 1
            rest[:0] = jobs[keep:]
            jobs, data = jobs[:keep], b"".join(lines[:keep])
        lines_ = [BatchLine(f"{it.id}:{p}", it.id, it.content_hash, p) for it, p in jobs]
        per = self.per_line()
        reserve = None if per is None else per * self.cfg.cost_safety * len(lines_)
        rid = self.store.add_batch_submission(
            submission=uuid.uuid4().hex, dataset=self.items[0].dataset, base_url=self.teacher.base_url,
            model=self.teacher.model, prompt_version=self.pv, lines=lines_, price_ratio=self.bcfg.price_ratio,
            reserved_usd=reserve, run_id=self.result.run_id)
        self.reserved += reserve or 0.0
        self.pending_lines += len(lines_)
        self.result.lines_submitted += len(lines_)
        self.result.tie_break_calls += sum(1 for _, p in jobs if p >= self.cfg.passes)
        self.data = data
        return rid

    def jsonl(self, jobs: Sequence[Job]) -> bytes:
        return b"".join(json.dumps(request_line(self.teacher, self.task, it, p, self.ws, f"{it.id}:{p}"),
                                   separators=(",", ":")).encode() + b"\n" for it, p in jobs)

    def found(self, rec: BatchRecord) -> BatchRecord:
        """``rec`` with the id of the batch created for it just before a kill (uploaded, id never recorded: found at
        the provider by its submission id), when there is one."""
        if rec.batch_id or not rec.input_file_id:
            return rec
        st = self.client.find(SUBMISSION_KEY, rec.submission)
        if st is None:
            return rec
        self.store.update_batch(rec.id, batch_id=st.id, status=st.status)
        return self.store.batch_record(rec.id)

    def send(self, rec: BatchRecord, data: bytes | None = None) -> BatchRecord:
        """Bring a recorded submission to "created": upload its JSONL unless uploaded, create the batch unless a
        batch carrying its submission id already exists (created just before a kill)."""
        rec = self.found(rec)
        if rec.batch_id:
            return rec
        if not rec.input_file_id:
            if data is None:  # recorded, then killed before the upload: rebuild the same lines
                lines = self.store.batch_lines(rec.id)
                by_id = {it.id: it for it in self.store.items(rec.dataset, ids=[ln.item_id for ln in lines])}
                data = self.jsonl([(by_id[ln.item_id], ln.pass_index) for ln in lines])
            fid = self.client.upload(data, f"{rec.submission}.jsonl")
            self.store.update_batch(rec.id, input_file_id=fid, status="uploaded")
            rec = self.store.batch_record(rec.id)
        st = self.client.create(rec.input_file_id or "", {SUBMISSION_KEY: rec.submission, "dataset": rec.dataset},
                                self.bcfg.completion_window)
        self.store.update_batch(rec.id, batch_id=st.id, status=st.status)
        self.result.batches_submitted += 1
        self.result.batch_ids.append(st.id)
        self.say(f"batch {st.id}: submitted {rec.n_lines} requests ({st.status})")
        return self.store.batch_record(rec.id)

    # -- wait and collect ---------------------------------------------------------------------------------------
    def wait(self, rec: BatchRecord) -> BatchStatus | None:
        """Poll until the batch ends (its status recorded each time), or None when ``wait_s`` ran out."""
        t0 = time.monotonic()
        last, last_t = "", 0.0
        while True:
            st = self.client.get(rec.batch_id or "")
            self.store.update_batch(rec.id, status=st.status, output_file_id=st.output_file_id,
                                    error_file_id=st.error_file_id, detail="; ".join(st.errors)[:1000] or None)
            el = time.monotonic() - t0
            line = f"batch {st.id}: {st.status}, {st.completed}/{st.total} done, {st.failed} failed"
            if line != last or el - last_t >= 60:
                self.say(f"{line}, {el:.1f}s")
                last, last_t = line, el
            if st.terminal:
                return st
            if self.bcfg.wait_s is not None and el >= self.bcfg.wait_s:
                return None
            time.sleep(self.bcfg.poll_s)

    def collect(self, rec: BatchRecord, st: BatchStatus) -> None:
        """Read the output and error files, store every line's answer (failures too) in one transaction."""
        results = {}
        for fid in (st.error_file_id, st.output_file_id):  # an answer in the output wins
            if fid:
                results.update(parse_result_file(self.client.content(fid)))
        lines = self.store.batch_lines(rec.id)
        why = f"batch {st.status}: {'; '.join(st.errors)}"[:300] if st.status != "completed" else None
        answers = []
        texts = {it.id: it.text for it in self.items if it.modality == "text" and it.text}
        for ln in lines:
            note = self.teacher.fit_context(self.task, texts[ln.item_id])[1] if ln.item_id in texts else None
            ans = answer_from_line(self.teacher, self.task, ln.item_id, ln.content_hash, ln.pass_index,
                                   results.get(ln.custom_id), price_ratio=rec.price_ratio, note=note)
            if why and ln.custom_id not in results:
                ans.error_detail = why
            answers.append((ln, ans))
        cost = sum(a.cost_usd or 0.0 for _, a in answers)
        with self.store.transaction():  # holds the write lock: of two runs collecting one batch, one stores it
            done = self.store.batch_record(rec.id).collected_at is not None
            if not done:
                pairs = [(ln.custom_id, aid) for ln, a in answers
                         if (aid := store_answer(self.store, a, self.result.run_id)) is not None]
                self.store.collect_batch(rec.id, pairs, cost)
        if done:  # a cancel, or a --batch run beside this one, collected it meanwhile: counted there, not here
            self._release(rec)
            self.say(f"batch {rec.batch_id}: collected by another run meanwhile (its answers are stored once)")
            return
        self._count([a for _, a in answers], rec)

    def _release(self, rec: BatchRecord) -> None:
        if rec.run_id == self.result.run_id:
            self.reserved -= rec.reserved_usd or 0.0
            self.pending_lines -= rec.n_lines

    def _count(self, answers: list, rec: BatchRecord) -> None:
        r = self.result
        for a in answers:
            r.calls_made += 1
            r.cost_usd += a.cost_usd or 0.0
            self.max_seen = max(self.max_seen, a.cost_usd or 0.0)
            if not a.ok:
                r.failed += 1
                r.lines_failed += 1
            if a.error_kind:
                r.errors[a.error_kind] = r.errors.get(a.error_kind, 0) + 1
                r.off_list += a.error_kind == "off_list"
        self._release(rec)
        bad = sum(1 for a in answers if not a.ok)
        self.say(f"batch {rec.batch_id}: collected {len(answers)} answers, ${sum(a.cost_usd or 0.0 for a in answers):.4f}"
                 + (f"; {bad} failed (asked again in a follow-up batch or the next run)" if bad else ""))

    def drive(self, rec: BatchRecord) -> bool:
        """Send (if needed), wait and collect one submission; False when it is still running."""
        rec = self.send(rec)
        try:
            st = self.wait(rec)
        except BatchAPIError as e:
            if e.status != 404:
                raise
            st = BatchStatus(rec.batch_id or "", "lost", errors=[f"the provider no longer knows this batch: {e}"])
        if st is None:
            self.result.batches_pending += 1
            return False
        self.collect(rec, st)
        return True


def label_items_batch(ws: Workspace, dataset: str, item_ids: Sequence[int], teacher: OpenAICompatTeacher,
                      config: LabelConfig | None = None, batch: BatchConfig | None = None, *,
                      progress: bool = True, hints: Hints | None = None) -> BatchRunResult:
    """Label ``item_ids`` through the Batch API: collect the batches earlier runs left open, submit what is still
    missing (within the caps), poll with a progress line per change, collect, follow up on failures and
    tie-breaks, then write the consensus labels exactly as online labelling does.  Provider trouble never raises:
    the result says why the run stopped.  Raises ``TeacherConfigError`` before any call when the key is missing."""
    cfg, bcfg = config or LabelConfig(), batch or BatchConfig()
    t0 = time.monotonic()
    store = ws.store()
    try:
        task, items = load_items(store, dataset, item_ids)
        teacher.check_ready()
        require_readable_labels(task, teacher.is_simulated)  # before anything is paid for
        check_served_model(store, teacher)  # cached answers must come from the model the server now serves
        pv = teacher.prompt_version_for(task)
        result = BatchRunResult(model=teacher.model, base_url=teacher.base_url, prompt_version=pv,
                                simulated=teacher.is_simulated, items=len(items), price_ratio=bcfg.price_ratio)
        result.run_id = store.start_run("label_batch", {"dataset": dataset, "model": teacher.model,
                                                        "base_url": teacher.base_url, "prompt_version": pv,
                                                        "items": len(items), "passes": cfg.passes,
                                                        "price_ratio": bcfg.price_ratio})
        # first passes serving bought are this run's before the cache is read: they count as cached
        result.reused_from_serving = adopt_for_items(store, task, items, teacher.model, pv, result.run_id)
        hashes = {it.content_hash for it in items}
        cached = cached_keys(store, teacher.model, pv, list(hashes))
        result.answers_cached = sum(1 for h in hashes for p in range(cfg.passes) if (h, p) in cached)
        tag = " (SIMULATED teacher)" if teacher.is_simulated else ""
        say = (lambda s: print(f"labelling {dataset}{tag}: {s}", file=sys.stderr, flush=True)) if progress else (
            lambda s: None)
        run = BatchRun(ws, store, task, items, teacher, cfg, bcfg, result, say, hints)
        status = "failed"
        try:
            _rounds(run, store, teacher, pv)
            status = "stopped" if result.stopped_reason or result.batches_pending else "done"
            if result.batches_pending:  # every interface shows the result's warnings
                result.warnings.append({
                    "code": "batches_pending",
                    "message": f"{result.batches_pending} batch(es) of {dataset!r} are still running at the provider",
                    "fix": f"re-run the same labelling to collect them (`flywheel label {dataset} --batch`, or "
                           f"label(..., batch=True) again; nothing is submitted twice), or cancel them "
                           f"(`--cancel-batches`)"})
        finally:
            run.client.close()
            if items:
                if cfg.adaptive_k:  # the decision on the final answers (what the last round would ask next)
                    run.todo()
                write_labels(store, task, teacher, pv, items, cfg, result, run.skipped)
                note_served_models(store, teacher, pv, items, result)
            result.elapsed_s = time.monotonic() - t0
            store.finish_run(result.run_id, status)
            store.add_report("label_run", str(result.run_id),
                             {**result.to_dict(), "note": SIMULATED_NOTE if teacher.is_simulated else None})
        return result
    finally:
        store.close()


def _rounds(run: BatchRun, store: Store, teacher: OpenAICompatTeacher, pv: str) -> None:
    """Resume the open batches, then submit rounds: the main passes, follow-ups for failed lines, tie-breaks."""
    r = run.result
    try:
        for rec in store.open_batches(teacher.model, pv, teacher.base_url):
            r.batches_resumed += 1
            run.say(f"resuming batch {rec.batch_id or '(not yet created)'} of an earlier run ({rec.n_lines} requests)")
            if not run.drive(rec):
                return
        for _ in range(2 + run.bcfg.retry_rounds + 2 * run.cfg.adaptive_k):  # adaptive: settle, then decide
            jobs = run.fit(run.todo())
            recs = []
            while jobs:  # a round may need several batches (line and size caps); all run at once
                rec, jobs = run.submit(jobs)
                recs += [rec] if rec is not None else []
            finished = [run.drive(rec) for rec in recs]
            if not recs or not all(finished) or r.stopped_reason:
                return
    except BatchAPIError as e:
        r.stopped_reason = "fatal_error"
        r.fatal_error_kind = "batch_api" if not e.fatal else ("auth" if e.status in (401, 402, 403) else
                                                             "not_found" if e.status == 404 else "connection")
        r.stopped_message = f"the Batch API at {teacher.base_url} failed: {e}"
