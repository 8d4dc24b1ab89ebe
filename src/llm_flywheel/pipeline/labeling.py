"""k-pass teacher labelling: cache, resume, budget, consensus, review queue.

The teacher is where the money goes, so this module makes every call count:

* **Cache first.**  A call is made only when no final answer (``ok=1``) exists for its key
  (content hash, model, prompt version, pass).  Every answer is written to ``teacher_answers`` *before* it is used,
  one autocommitted row at a time, so a run killed at any moment resumes where it stopped and a re-run makes zero
  calls.  Failures (``ok=0``: network, HTTP, unparseable) are kept apart from disagreements and retried next run.
* **Budget.**  Before a call is sent its estimated cost is *reserved* (with a safety margin, and never below the
  most expensive call seen), so concurrent calls cannot overshoot the dollar cap or the call cap.
* **Diverse passes -> consensus.**  Pass 0 is T=0 with the canonical prompt; later passes change wording, label
  order and temperature.  Agreement and confidences make one label with a quality score and a soft target;
  a disagreement gets a tie-break pass (pass index ``k``) and, whatever it says, stays visible: the label row
  records it and the item is queued for human review -- never silently dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_flywheel.store.base import Item, Store
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.base import TeacherAnswer, is_fatal
from llm_flywheel.teachers.concurrency import AdaptiveConcurrency, is_overload, remember_level, start_level
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, RateLimiter, run_sync
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_CONFIDENCE = 0.7  # used in the soft target when a teacher gives no confidence
_CHUNK = 900


@dataclass
class LabelConfig:
    """How to label.  ``passes`` diverse passes per item; ``tie_break`` adds pass ``passes`` where they disagree.

    ``concurrency`` is a *cap*: with ``adaptive`` (the default) the labeller searches for the number of requests in
    flight that gives the most answers per second (see :mod:`llm_flywheel.teachers.concurrency`), starting low for
    a local server; ``adaptive=False`` keeps exactly ``concurrency`` in flight.

    ``breaker_threshold``: after this many consecutive answers failing with the same *fatal* error kind
    (:data:`~llm_flywheel.teachers.base.FATAL_ERROR_KINDS`: connection refused, DNS, auth, not found) the run stops
    (``stopped_reason='fatal_error'``) instead of failing every remaining item the same way.

    ``use_logprobs``: where answers carry the label's token log-probability, its probability is the per-answer
    confidence in the consensus quality and the soft target (the verbalised confidence only where it is missing).

    The dollar cap holds as long as no single call costs more than its reservation (1.5 x the estimate from the
    task's prices or recorded calls, and >= 1.2 x the dearest call seen).  With no price known at all, calls go
    one at a time until the first reported cost is seen.
    """

    passes: int = 2
    concurrency: int = 16
    rpm: float | None = None
    budget_usd: float | None = None
    max_calls: int | None = None
    tie_break: bool = True
    queue_disagreements: bool = True
    cost_safety: float = 1.5  # reservation = estimated cost x this (and >= the dearest call seen)
    reask_unparseable: int = 1  # re-ask an unparseable/refused reply this many times within the run
    adaptive: bool = True
    breaker_threshold: int = 3
    use_logprobs: bool = True

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"passes must be >= 1, got {self.passes}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError(f"budget_usd must be >= 0, got {self.budget_usd}")
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {self.max_calls}")
        if self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")


STOP_REASONS = (None, "budget", "max_calls", "fatal_error")


@dataclass
class LabelRunResult:
    """What a run did.  ``failed`` counts calls that failed *this run* (retried next run).

    Why a run stopped -- for scripts and exit codes:

    * ``stopped_reason``: ``None`` (every job was attempted), ``"budget"`` (the dollar cap), ``"max_calls"`` (the
      call cap) or ``"fatal_error"`` (the circuit breaker: ``breaker_threshold`` consecutive identical fatal errors
      such as connection refused, DNS failure, 401/403 or 404; see ``fatal_error_kind``);
    * ``stopped_message``: one human sentence naming the cause, the endpoint URL and the fix;
    * ``stopped_by_budget``: True for ``"budget"`` and ``"max_calls"`` (kept for older callers);
    * ``cancelled_calls``: calls still in flight (in back-off) when the breaker tripped, abandoned unanswered;
    * ``concurrency``: the adaptive controller's summary (cap, final and largest level, back-offs).
    A stopped run keeps everything it stored; re-running continues where it stopped and asks nothing twice.
    """

    calls_made: int = 0
    cost_usd: float = 0.0
    answers_cached: int = 0
    labelled: int = 0
    agreed: int = 0
    disagreed: int = 0
    failed: int = 0
    stopped_by_budget: bool = False
    tie_broken: int = 0
    single: int = 0
    unlabelled: int = 0
    off_list: int = 0
    tie_break_calls: int = 0
    queued_for_review: int = 0
    stopped_reason: str | None = None
    stopped_message: str | None = None
    fatal_error_kind: str | None = None
    cancelled_calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    base_url: str = ""
    prompt_version: str = ""
    simulated: bool = False
    items: int = 0
    elapsed_s: float = 0.0
    run_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- budget --------------------------------------------------------------------------------------------------------
WAIT = "wait"


class Budget:
    """Reserve-then-settle accounting so that concurrent calls never exceed the caps."""

    def __init__(self, budget_usd: float | None, max_calls: int | None, est_cost: float | None, safety: float) -> None:
        self.budget_usd, self.max_calls = budget_usd, max_calls
        self.est_cost, self.safety = est_cost, safety
        self.spent = 0.0
        self.reserved = 0.0
        self.calls = 0
        self.inflight = 0
        self.max_seen = 0.0
        self.exhausted = False

    def _per_call(self) -> float | None:
        cands = [c for c in (self.est_cost * self.safety if self.est_cost is not None else None,
                             self.max_seen * 1.2 if self.max_seen else None) if c is not None]
        return max(cands) if cands else None

    def reserve(self) -> float | str | None:
        """A reservation (USD) to settle later; ``WAIT`` to try again once in-flight calls settle; ``None``: stop."""
        if self.exhausted:
            return None
        if self.max_calls is not None and self.calls + self.inflight >= self.max_calls:
            if self.inflight:
                return WAIT
            self.exhausted = True
            return None
        est = 0.0
        if self.budget_usd is not None:
            per = self._per_call()
            if per is None:  # nothing known about prices yet: one probe call at a time
                if self.inflight:
                    return WAIT
                per = 0.0
            if self.spent + self.reserved + per > self.budget_usd + 1e-12:
                if self.inflight:
                    return WAIT
                self.exhausted = True
                return None
            est = per
        self.reserved += est
        self.inflight += 1
        return est

    def settle(self, reservation: float, actual: float | None) -> None:
        self.reserved -= reservation
        self.inflight -= 1
        self.calls += 1
        if actual:
            self.spent += actual
            self.max_seen = max(self.max_seen, actual)


# --- storage -------------------------------------------------------------------------------------------------------
def store_answer(store: Store, ans: TeacherAnswer, run_id: int | None = None) -> int | None:
    """Write one answer (autocommitted).  A final answer already stored for the same key is kept (first wins)."""
    cur = store.execute(
        "INSERT OR IGNORE INTO teacher_answers(item_id, content_hash, model, prompt_version, pass_index, ok, label, "
        "confidence, label_logprob, logprobs_json, reason, raw_text, tokens_in, tokens_out, cost_usd, latency_s, "
        "error_kind, error_detail, run_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            ans.item_id, ans.content_hash, ans.model, ans.prompt_version, ans.pass_index, int(bool(ans.ok)),
            ans.label, ans.confidence, ans.label_logprob,
            json.dumps(ans.logprobs) if ans.logprobs else None, ans.reason,
            ans.raw_text, ans.tokens_in, ans.tokens_out, ans.cost_usd, ans.latency_s, ans.error_kind,
            ans.error_detail, run_id, time.time(),
        ),
    )
    return cur.lastrowid if cur.rowcount else None


def cached_keys(store: Store, model: str, prompt_version: str, hashes: Sequence[str]) -> set[tuple[str, int]]:
    """(content_hash, pass_index) pairs that already have a final answer."""
    out: set[tuple[str, int]] = set()
    hs = list(dict.fromkeys(hashes))
    for i in range(0, len(hs), _CHUNK):
        chunk = hs[i : i + _CHUNK]
        rows = store.query(
            f"SELECT content_hash, pass_index FROM teacher_answers WHERE ok=1 AND model=? AND prompt_version=? "
            f"AND content_hash IN ({','.join('?' * len(chunk))})",
            [model, prompt_version, *chunk],
        )
        out.update((r["content_hash"], r["pass_index"]) for r in rows)
    return out


def final_answers(store: Store, model: str, prompt_version: str, hashes: Sequence[str],
                  max_pass: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """content_hash -> final answers (ordered by pass)."""
    out: dict[str, list[dict[str, Any]]] = {}
    hs = list(dict.fromkeys(hashes))
    for i in range(0, len(hs), _CHUNK):
        chunk = hs[i : i + _CHUNK]
        sql = (f"SELECT id, content_hash, pass_index, label, confidence, label_logprob, error_kind FROM teacher_answers "
               f"WHERE ok=1 AND model=? AND prompt_version=? AND content_hash IN ({','.join('?' * len(chunk))})")
        params: list[Any] = [model, prompt_version, *chunk]
        if max_pass is not None:
            sql += " AND pass_index<=?"
            params.append(max_pass)
        for r in store.query(sql + " ORDER BY pass_index", params):
            out.setdefault(r["content_hash"], []).append(dict(r))
    return out


# --- consensus -----------------------------------------------------------------------------------------------------
@dataclass
class Consensus:
    label: str | None
    quality: float
    soft: dict[str, float]
    status: str  # agreed | tie_broken | disagreed | single
    votes: dict[str, int]
    answer_ids: list[int]
    confidence_source: str = "verbalised"  # logprob | verbalised | mixed | default


def answer_probability(answer: dict[str, Any], k: int, use_logprobs: bool = True) -> tuple[float, str]:
    """How sure one answer is of its own label, in [1/k, 1], and where that came from.

    The label's token probability ``exp(label_logprob)`` when present (refuel's labelling study found it the better
    signal; verbalised confidences cluster at 0.8-0.99 whether right or wrong), else the verbalised confidence,
    else :data:`DEFAULT_CONFIDENCE`.  The floor 1/k: an answer never argues against its own label (a sampled pass
    can pick a label below 1/k; it still said that label).
    """
    lp = answer.get("label_logprob")
    if use_logprobs and lp is not None:
        try:
            lpf = float(lp)
        except (TypeError, ValueError):
            lpf = float("nan")
        if math.isfinite(lpf):
            return min(max(math.exp(min(lpf, 0.0)), 1.0 / k), 1.0), "logprob"
    c = answer.get("confidence")
    if c is not None:
        try:
            cf = float(c)
        except (TypeError, ValueError):
            cf = float("nan")
        if math.isfinite(cf):
            return min(max(cf, 1.0 / k), 1.0), "verbalised"
    return max(DEFAULT_CONFIDENCE, 1.0 / k), "default"


def consensus(answers: Sequence[dict[str, Any]], labels: Sequence[str], *, use_logprobs: bool = True) -> Consensus | None:
    """One label from several passes.

    Each valid answer contributes ``p``, its probability for its own label (:func:`answer_probability`: the label
    logprob where the provider returned one, else the verbalised confidence).

    * all valid passes agree (>= 2): ``agreed``, quality = mean p;
    * a strict majority after dissent: ``tie_broken``, quality = majority share x mean p of the majority;
    * no majority: ``disagreed``, label ``None`` (kept and queued, never dropped);
    * one valid pass: ``single``, quality halved (nothing checked it).
    The soft target averages, per pass, ``p`` on the answer and the rest spread over the other labels.
    """
    if not answers:
        return None
    ids = [int(a["id"]) for a in answers]
    valid = [a for a in answers if a.get("label") in labels]
    k = len(labels)
    if not valid:
        return Consensus(None, 0.0, {}, "disagreed", {"off_list": len(answers)}, ids)
    probs = [answer_probability(a, k, use_logprobs) for a in valid]
    sources = {src for _, src in probs}
    source = sources.pop() if len(sources) == 1 else "mixed"
    soft = dict.fromkeys(labels, 0.0)
    for a, (c, _) in zip(valid, probs):
        for lab in labels:
            soft[lab] += (c if lab == a["label"] else (1.0 - c) / max(k - 1, 1)) / len(valid)
    votes = Counter(a["label"] for a in valid)
    (top, n_top), *rest = votes.most_common()
    confs = [c for a, (c, _) in zip(valid, probs) if a["label"] == top]
    mean_c = sum(confs) / len(confs)
    n = len(valid)
    soft = {lab: round(p, 6) for lab, p in soft.items() if p > 0}
    if n == 1:
        return Consensus(top, 0.5 * mean_c, soft, "single", dict(votes), ids, source)
    if n_top == n:
        return Consensus(top, mean_c, soft, "agreed", dict(votes), ids, source)
    if n_top * 2 > n:
        return Consensus(top, n_top / n * mean_c, soft, "tie_broken", dict(votes), ids, source)
    return Consensus(None, n_top / n * mean_c, soft, "disagreed", dict(votes), ids, source)


# --- the run -------------------------------------------------------------------------------------------------------
def _load(ws: Workspace, store: Store, dataset: str, item_ids: Sequence[int]) -> tuple[Task, list[Item]]:
    task = Task.from_json(store.dataset_task_json(dataset))
    items = store.items(dataset, ids=list(item_ids)) if item_ids else []
    if item_ids and len(items) != len(set(item_ids)):
        missing = sorted(set(item_ids) - {it.id for it in items})
        raise ValueError(f"{len(missing)} item id(s) are not in dataset {dataset!r}: {missing[:10]}")
    return task, items


def _jobs(items: Sequence[Item], passes: Sequence[int], cached: set[tuple[str, int]]) -> list[tuple[Item, int]]:
    """One call per missing (content hash, pass); items sharing content share the call.  Item-major order so a
    partial run leaves whole items done."""
    seen: set[tuple[str, int]] = set(cached)
    jobs = []
    for it in items:
        for p in passes:
            key = (it.content_hash, p)
            if key not in seen:
                seen.add(key)
                jobs.append((it, p))
    return jobs


class CircuitBreaker:
    """Counts consecutive answers failing with the same fatal error kind; trips at ``threshold``.

    Why consecutive and identical: one 404 among successes is an item problem, but N in a row of
    "connection refused" mean nothing listens at the URL, and every further call would fail the same way.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.kind: str | None = None
        self.count = 0
        self.detail: str | None = None

    def record(self, ans: TeacherAnswer) -> bool:
        """Feed one answer; True when the breaker trips with it."""
        kind = ans.error_kind
        if kind == "http_4xx" and ans.extra.get("fatal"):  # older client vocabulary: 401/403/404 with a flag
            kind = f"http_{ans.extra.get('status', '4xx')}"
        elif not is_fatal(kind):
            self.kind, self.count = None, 0
            return False
        if kind != self.kind:
            self.kind, self.count = kind, 0
        self.count += 1
        self.detail = ans.error_detail
        return self.count >= self.threshold


_FIXES = {
    "connection": "start the server or correct the base URL (host and port)",
    "dns": "the host name does not resolve: correct the base URL",
    "auth": "check the API key (--api-key-env names the variable that holds it)",
    "not_found": "check the base URL path (usually ending in /v1) and the model name",
    "http_401": "check the API key (--api-key-env names the variable that holds it)",
    "http_402": "the account has no credit left",
    "http_403": "check the API key and the account's access to this model",
    "http_404": "check the base URL path (usually ending in /v1) and the model name",
}


def fatal_message(kind: str, count: int, base_url: str, model: str, detail: str | None) -> str:
    """The breaker's sentence: what happened, where, the fix (the client's own when its detail names one)."""
    fix = _FIXES.get(kind, "check the teacher's base URL, model and API key")
    det = (detail or "")[:240]
    what = det if det and base_url in det else "; ".join(x for x in (det, fix) if x)
    return (f"stopped after {count} consecutive '{kind}' errors from {base_url} (model {model}): {what}. "
            f"Re-run once fixed: stored answers are kept and nothing is asked twice")


class _Runner:
    BREAKER_GRACE_S = 2.0  # in-flight calls get this long to finish after the breaker trips, then are abandoned

    def __init__(self, ws: Workspace, store: Store, task: Task, teacher: OpenAICompatTeacher, cfg: LabelConfig,
                 budget: Budget, result: LabelRunResult, run_id: int, progress: Any, ctl: AdaptiveConcurrency) -> None:
        self.ws, self.store, self.task, self.teacher, self.cfg = ws, store, task, teacher, cfg
        self.budget, self.result, self.run_id, self.progress, self.ctl = budget, result, run_id, progress, ctl
        self.stop = False
        self.known: dict[str, dict[int, str | None]] = {}  # content hash -> pass -> label of final answers
        self.tb_pass = cfg.passes if cfg.tie_break and cfg.passes >= 2 else None
        self.tb_queued: set[str] = set()
        self.breaker = CircuitBreaker(cfg.breaker_threshold)
        self.calls: set[asyncio.Future[Any]] = set()
        self.abandoning = False

    def needs_tie_break(self, h: str) -> bool:
        """All main passes answered, no off-list among them, and no strict majority: ask pass ``k`` once."""
        if self.tb_pass is None or h in self.tb_queued:
            return False
        got = self.known.get(h, {})
        if self.tb_pass in got or any(p not in got for p in range(self.cfg.passes)):
            return False
        votes = [got[p] for p in range(self.cfg.passes)]
        if any(v is None for v in votes):
            return False
        top = Counter(votes).most_common(1)[0][1]
        return top * 2 <= len(votes)

    def _stop_for_budget(self) -> None:
        self.result.stopped_by_budget = True
        if self.cfg.max_calls is not None and self.budget.calls >= self.cfg.max_calls:
            self.result.stopped_reason = "max_calls"
            self.result.stopped_message = (f"call cap {self.cfg.max_calls} reached; raise --max-calls (or drop it) "
                                           f"and re-run to continue")
        else:
            self.result.stopped_reason = "budget"
            self.result.stopped_message = (f"budget ${self.cfg.budget_usd:g} reached (spent ${self.budget.spent:.4f}); "
                                           f"raise --budget-usd and re-run to continue")
        self.stop = True

    def _abandon_calls(self) -> None:
        """After the breaker trips: calls still waiting (e.g. in back-off against a dead port) are given up."""
        self.abandoning = True
        for f in list(self.calls):
            f.cancel()

    async def run(self, jobs: list[tuple[Item, int]], desc: str) -> None:
        if not jobs or self.stop:
            return
        queue: deque[tuple[Item, int, int]] = deque((it, p, 0) for it, p in jobs)
        prog = self.progress
        if prog is not None:
            prog.start(desc, len(jobs))
        loop = asyncio.get_running_loop()

        # one single-connection client per worker: httpcore's shared pool scans every connection on each
        # request (quadratic in the concurrency), which halved throughput at concurrency 32
        async def worker() -> None:
            async with self.teacher.make_client(1) as client:
                while queue and not self.stop:
                    ticket = await self.ctl.acquire()
                    if not queue or self.stop:
                        await self.ctl.release(ticket, count=False)
                        return
                    res = self.budget.reserve()
                    if res == WAIT:
                        await self.ctl.release(ticket, count=False)
                        await asyncio.sleep(0.005)
                        continue
                    if res is None:
                        await self.ctl.release(ticket, count=False)
                        if not self.stop:
                            self._stop_for_budget()
                        return
                    item, p, tries = queue.popleft()
                    call = asyncio.ensure_future(
                        self.teacher.alabel_one(item, self.task, self.ws, pass_index=p, client=client))
                    self.calls.add(call)
                    try:
                        ans = await call
                    except asyncio.CancelledError:
                        self.budget.settle(res, None)  # type: ignore[arg-type]
                        await self.ctl.release(ticket, count=False)
                        if self.abandoning and call.cancelled():
                            self.result.cancelled_calls += 1
                            return
                        raise
                    except BaseException:
                        self.budget.settle(res, None)  # type: ignore[arg-type]
                        await self.ctl.release(ticket, count=False)
                        raise
                    finally:
                        self.calls.discard(call)
                    store_answer(self.store, ans, self.run_id)  # stored before anything uses it
                    self.budget.settle(res, ans.cost_usd)  # type: ignore[arg-type]
                    retries = int(ans.extra.get("retries") or 0)
                    fatal = is_fatal(ans.error_kind) or bool(ans.extra.get("fatal"))
                    await self.ctl.release(ticket, latency_s=ans.latency_s, ok=bool(ans.ok),
                                           overload=not fatal and is_overload(ans.error_kind, retries))
                    self._count(ans)
                    if self.breaker.record(ans) and not self.stop:
                        self._trip()
                        loop.call_later(self.BREAKER_GRACE_S, self._abandon_calls)
                    if p == self.tb_pass:
                        self.result.tie_break_calls += 1
                    if ans.error_kind in ("parse", "refused") and tries < self.cfg.reask_unparseable:
                        queue.append((item, p, tries + 1))  # a sampled reply often parses when asked again
                        continue
                    if ans.ok:
                        self.known.setdefault(item.content_hash, {})[p] = ans.label
                        if self.needs_tie_break(item.content_hash):
                            self.tb_queued.add(item.content_hash)
                            queue.appendleft((item, self.tb_pass, 0))  # type: ignore[arg-type]  # resolve it now
                            if prog is not None:
                                prog.grow(1)
                    if prog is not None:
                        prog.advance(f"${self.result.cost_usd:.4f}, concurrency {self.ctl.limit}")

        await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(jobs)))))

    def _trip(self) -> None:
        r, b = self.result, self.breaker
        self.stop = True
        r.stopped_reason = "fatal_error"
        r.fatal_error_kind = b.kind
        r.stopped_message = fatal_message(b.kind or "fatal", b.count, self.teacher.base_url, self.teacher.model,
                                          b.detail)

    def _count(self, ans: TeacherAnswer) -> None:
        r = self.result
        r.calls_made += 1
        r.cost_usd += ans.cost_usd or 0.0
        if not ans.ok:
            r.failed += 1
        if ans.error_kind:
            r.errors[ans.error_kind] = r.errors.get(ans.error_kind, 0) + 1
            if ans.error_kind == "off_list":
                r.off_list += 1


class _RichProgress:
    """A rich bar on the console's stream (a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar: Any = None
        self.desc = ""

    def start(self, desc: str, total: int) -> None:
        self.desc = desc
        self.p.start()
        self.bar = self.p.add_task(desc, total=total)

    def grow(self, n: int) -> None:
        self.p.update(self.bar, total=self.p.tasks[self.bar].total + n)

    def advance(self, info: str) -> None:
        self.p.update(self.bar, advance=1, description=f"{self.desc} [dim]{info}[/]")

    def stop(self) -> None:
        self.p.stop()


class PlainProgress:
    """Progress as plain lines (for logs, CI and pipes, where a redrawn bar is noise or invisible): one line at
    most every ``every_s`` seconds or every 10 %, and one at the end."""

    def __init__(self, stream: Any = None, every_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.done = self.total = 0
        self.desc, self.info = "", ""
        self._t0 = self._last = 0.0
        self._last_decile = 0
        self._printed = (-1, -1)

    def start(self, desc: str, total: int) -> None:
        self.desc, self.total, self.done = desc, total, 0
        self._t0 = self._last = time.monotonic()
        self._last_decile = 0
        self._line()

    def grow(self, n: int) -> None:
        self.total += n

    def advance(self, info: str) -> None:
        self.done += 1
        self.info = info
        now = time.monotonic()
        decile = int(10 * self.done / max(self.total, 1))
        if now - self._last >= self.every_s or decile > self._last_decile:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self._last = now
        self._last_decile = int(10 * self.done / max(self.total, 1))
        self._printed = (self.done, self.total)
        el = now - self._t0
        rate = self.done / el if el > 0 else 0.0
        eta = f", eta {(self.total - self.done) / rate:.0f}s" if rate > 0 and self.done < self.total else ""
        pct = 100.0 * self.done / max(self.total, 1)
        info = f", {self.info}" if self.info else ""
        print(f"{self.desc}: {self.done}/{self.total} calls ({pct:.0f} %), {el:.0f}s, {rate:.1f} calls/s{eta}{info}",
              file=self.stream, flush=True)

    def stop(self) -> None:
        if self.desc and self._printed != (self.done, self.total):
            self._line()


def _isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _progress_ctx(enabled: bool | str) -> Any:
    """``False``: nothing; ``"plain"``: lines; ``True``: a bar when stdout and stderr (where the CLI console and
    the bar write) are terminals, plain lines on stderr when either is not (logs, CI, pipes)."""
    if not enabled:
        return None
    if enabled == "plain" or not all(_isatty(f) for f in (sys.stdout, sys.stderr)):
        return PlainProgress()
    return _RichProgress()


def label_items(
    ws: Workspace,
    dataset: str,
    item_ids: Sequence[int],
    teacher: OpenAICompatTeacher,
    config: LabelConfig | None = None,
    *,
    progress: bool | str = True,
) -> LabelRunResult:
    """Label ``item_ids`` with ``config.passes`` diverse passes (+ tie-breaks), making only uncached calls.

    Writes ``labels`` rows (source='teacher') for every item with at least one final answer and queues
    disagreements in ``review_queue``.  Opens its own Store, so it can run in a thread beside a server.
    Raises ``TeacherConfigError`` before any call when the API key is missing.  Provider trouble never raises:
    the result says why the run stopped (``stopped_reason`` / ``stopped_message``).  ``progress``: ``False``
    silent, ``True`` a bar on a terminal and plain lines otherwise, ``"plain"`` always lines.
    """
    cfg = config or LabelConfig()
    t_start = time.monotonic()
    store = ws.store()
    try:
        task, items = _load(ws, store, dataset, item_ids)
        teacher.check_ready()
        if teacher.task is None:
            teacher.task = task
        pv = teacher.prompt_version_for(task)
        result = LabelRunResult(model=teacher.model, base_url=teacher.base_url, prompt_version=pv,
                                simulated=teacher.is_simulated, items=len(items))
        if cfg.rpm:
            teacher.limiter = RateLimiter(cfg.rpm)
        hashes = [it.content_hash for it in items]
        cached = cached_keys(store, teacher.model, pv, hashes)
        main_passes = list(range(cfg.passes))
        jobs = _jobs(items, main_passes, cached)
        result.answers_cached = sum(1 for h in set(hashes) for p in main_passes if (h, p) in cached)
        run_id = store.start_run("label", {"dataset": dataset, "model": teacher.model, "base_url": teacher.base_url,
                                           "prompt_version": pv, "items": len(items), "simulated": teacher.is_simulated,
                                           **{k: v for k, v in asdict(cfg).items()}})
        result.run_id = run_id
        _, _, est = teacher.estimate_call(task)
        observed = _observed_cost_per_call(store, teacher.model)
        budget = Budget(cfg.budget_usd, cfg.max_calls, observed if observed is not None else est, cfg.cost_safety)
        prog = _progress_ctx(progress and bool(items))
        tag = " (SIMULATED teacher)" if teacher.is_simulated else ""
        ctl = AdaptiveConcurrency(cfg.concurrency, adaptive=cfg.adaptive,
                                  start=start_level(teacher.base_url, teacher.model, cfg.concurrency,
                                                    local=getattr(teacher, "local", None)),
                                  timeout_s=getattr(teacher, "timeout", None))
        status = "failed"
        try:
            runner = _Runner(ws, store, task, teacher, cfg, budget, result, run_id, prog, ctl)
            for h, answers in final_answers(store, teacher.model, pv, hashes, max_pass=cfg.passes).items():
                runner.known[h] = {a["pass_index"]: a["label"] for a in answers}
            for it in items:  # resumed runs: passes all cached but the tie-break still missing
                if runner.needs_tie_break(it.content_hash):
                    runner.tb_queued.add(it.content_hash)
                    jobs.append((it, cfg.passes))
            run_sync(runner.run(jobs, f"labelling {dataset}{tag}"))
            status = "stopped" if runner.stop else "done"
        finally:
            if prog is not None:
                prog.stop()
            result.concurrency = ctl.summary()
            if cfg.adaptive and ctl.windows:  # learned something: the next run on this endpoint starts there
                remember_level(teacher.base_url, teacher.model, ctl.settled)
            _write_labels(store, task, teacher, pv, items, cfg, result)
            result.elapsed_s = time.monotonic() - t_start
            store.finish_run(run_id, status)
            store.add_report("label_run", str(run_id), {**result.to_dict(),
                                                        "note": SIMULATED_NOTE if teacher.is_simulated else None})
        return result
    finally:
        store.close()


SIMULATED_NOTE = ("teacher answers come from the SIMULATED teacher (gold labels through an explicit error model), "
                  "not from a real LLM")


def _write_labels(store: Store, task: Task, teacher: OpenAICompatTeacher, pv: str, items: Sequence[Item],
                  cfg: LabelConfig, result: LabelRunResult) -> None:
    # every final pass of this teacher counts, also those of earlier runs with more passes: a later 1-pass run
    # (the cascade's) must not downgrade a 2-pass consensus to a single vote
    answers = final_answers(store, teacher.model, pv, [it.content_hash for it in items])
    now = time.time()
    human = set()
    ids = [it.id for it in items]
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        human.update(r["item_id"] for r in store.query(
            f"SELECT item_id FROM labels WHERE source='human' AND item_id IN ({','.join('?' * len(chunk))})", chunk))
    counts: Counter[str] = Counter()
    with store.transaction() as c:
        for it in items:
            con = consensus(answers.get(it.content_hash, []), task.labels, use_logprobs=cfg.use_logprobs)
            if con is None:
                counts["unlabelled"] += 1
                continue
            counts[con.status] += 1
            prov = {"model": teacher.model, "prompt_version": pv, "answer_ids": con.answer_ids, "votes": con.votes,
                    "confidence_source": con.confidence_source, "simulated": teacher.is_simulated}
            c.execute(
                "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                "provenance=excluded.provenance, updated_at=excluded.updated_at",
                (it.id, "teacher", con.label, round(con.quality, 6), json.dumps(con.soft), con.status,
                 json.dumps(prov), now),
            )
            if cfg.queue_disagreements and con.status in ("disagreed", "tie_broken") and it.id not in human:
                score = 1.0 if con.status == "disagreed" else 0.5
                cur = c.execute(
                    "INSERT INTO review_queue(item_id, reason, score, created_at) VALUES(?,?,?,?) "
                    "ON CONFLICT(item_id) DO UPDATE SET score=MAX(COALESCE(score,0), excluded.score) "
                    "WHERE resolved_at IS NULL",
                    (it.id, "disagreement", score, now),
                )
                result.queued_for_review += cur.rowcount
    result.agreed = counts["agreed"]
    result.tie_broken = counts["tie_broken"]
    result.disagreed = counts["disagreed"]
    result.single = counts["single"]
    result.unlabelled = counts["unlabelled"]
    result.labelled = counts["agreed"] + counts["tie_broken"] + counts["single"]


def _observed_cost_per_call(store: Store, model: str) -> float | None:
    row = store.query("SELECT AVG(cost_usd) AS c, MAX(cost_usd) AS m, COUNT(cost_usd) AS n FROM teacher_answers "
                      "WHERE model=? AND cost_usd IS NOT NULL", (model,))[0]
    return float(row["c"]) if row["n"] else None


def plan(ws: Workspace, dataset: str, item_ids: Sequence[int], teacher: OpenAICompatTeacher,
         config: LabelConfig | None = None) -> dict[str, Any]:
    """What a run would cost, before any call: calls needed (cached ones excluded), tokens and USD.

    The price per call is the mean recorded for this model when there is one ('observed'), else the task's
    price table applied to a token estimate ('task prices').  Tie-breaks are estimated from the disagreement
    rate seen so far (15 % when nothing is known) and bounded by one per item.
    """
    cfg = config or LabelConfig()
    store = ws.store(readonly=True)
    try:
        task, items = _load(ws, store, dataset, item_ids)
        pv = teacher.prompt_version_for(task)
        hashes = [it.content_hash for it in items]
        uniq = len(set(hashes))
        cached = cached_keys(store, teacher.model, pv, hashes)
        needed = len(_jobs(items, list(range(cfg.passes)), cached))
        tb_max = len(_jobs(items, [cfg.passes], cached)) if cfg.tie_break and cfg.passes >= 2 else 0
        rows = store.query("SELECT status, COUNT(*) AS n FROM labels WHERE source='teacher' GROUP BY status")
        by = {r["status"]: r["n"] for r in rows}
        tot = sum(by.values())
        dis_rate = (by.get("disagreed", 0) + by.get("tie_broken", 0)) / tot if tot else 0.15
        tb_exp = min(tb_max, round(dis_rate * tb_max)) if needed else 0
        row = store.query("SELECT AVG(cost_usd) AS c, AVG(tokens_in) AS ti, AVG(tokens_out) AS to_, COUNT(cost_usd) AS n "
                          "FROM teacher_answers WHERE model=? AND cost_usd IS NOT NULL", (teacher.model,))[0]
        tin, tout, est = teacher.estimate_call(task)
        if row["n"]:
            per_call, source = float(row["c"]), "observed"
            tin, tout = int(row["ti"] or tin), int(row["to_"] or tout)
        elif est is not None:
            per_call, source = est, "task prices"
        else:
            per_call, source = None, "unknown (no prices in the task and no calls recorded)"
    finally:
        store.close()
    calls_exp = needed + tb_exp
    cost = None if per_call is None else per_call * calls_exp
    cost_max = None if per_call is None else per_call * (needed + tb_max)
    return {
        "dataset": dataset, "model": teacher.model, "base_url": teacher.base_url, "prompt_version": pv,
        "simulated": teacher.is_simulated, "items": len(items), "unique_contents": uniq, "passes": cfg.passes,
        "calls_cached": uniq * cfg.passes - needed, "calls_needed": needed,
        "tie_break_calls_expected": tb_exp, "tie_break_calls_max": tb_max,
        "est_tokens_in": tin * calls_exp, "est_tokens_out": tout * calls_exp,
        "est_cost_per_call_usd": per_call, "price_source": source,
        "est_cost_usd": cost, "est_cost_usd_max": cost_max,
        "budget_usd": cfg.budget_usd, "max_calls": cfg.max_calls,
        "fits_budget": None if cfg.budget_usd is None or cost_max is None else cost_max <= cfg.budget_usd,
    }
