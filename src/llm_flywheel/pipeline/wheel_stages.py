"""The stages of one round that build the model: select -> label -> train -> calibrate -> promote.

Each stage is a function of a :class:`WheelContext` (what the run knows) and explicit inputs, returning a typed
result (:mod:`llm_flywheel.pipeline.wheel_results`); the round loop (``pipeline.flywheel``) only sequences them,
accounts their teacher spend and stores the round after each.  Only held-out splits make choices: training uses the
train pool (plus stream items the teacher answered), promotion the *validation* split's teacher labels, the threshold
the *calibration* split; the *test* split (gold) is only measured (``pipeline.wheel_measure``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from llm_flywheel.core.cost import Spend
from llm_flywheel.core.stats import pct
from llm_flywheel.core.task import Task
from llm_flywheel.pipeline import feedback
from llm_flywheel.pipeline.cost import spend_of
from llm_flywheel.pipeline.wheel_config import WheelConfig, WheelStopped, warning
from llm_flywheel.pipeline.wheel_results import (LabelResult, PromotionResult, RoundReport,
                                                  TrainResult)
from llm_flywheel.store.base import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import StudentError, predict_in_batches

log = logging.getLogger(__name__)


@dataclass
class WheelContext:
    """What every stage of a run needs: the workspace, the dataset, the settings, the teacher and the fixed item
    orders drawn once per run (seeded), plus what earlier rounds left (trained versions, stream served)."""

    ws: Workspace
    dataset: str
    cfg: WheelConfig
    teacher: Any
    task: Task
    con: Console
    progress: bool = False
    train_order: list[int] = field(default_factory=list)
    seed_ids: list[int] = field(default_factory=list)
    val_ids: list[int] = field(default_factory=list)
    calib_ids: list[int] = field(default_factory=list)
    test_ids: list[int] = field(default_factory=list)
    stream_order: list[int] = field(default_factory=list)
    run_id: int = 0
    trained: list[str] = field(default_factory=list)  # versions trained in this run, newest last (the QBC committee)
    served_stream: list[int] = field(default_factory=list)
    served_import: dict[str, Any] | None = None  # what `add_served` imported before the run (ServedImport.to_dict)
    prior_student: str | None = None  # the serving student when the run began: it chooses round 1's items (or None)
    reviewer: Callable[[list[Item]], dict[int, str]] | None = None  # labels what parity review asks (None: stop)

    def items(self, ids: Sequence[int]) -> list[Item]:
        """Items by id, in the order given (missing ids dropped)."""
        with self.ws.store() as store:
            by_id = {it.id: it for it in store.items(self.dataset, ids=list(ids))}
        return [by_id[i] for i in ids if i in by_id]

    def labels(self, split: str | Sequence[str]) -> dict[int, str]:
        with self.ws.store() as store:
            return store.effective_labels(self.dataset, split=split)

    def serving_version(self) -> str | None:
        """The promoted student (never a gold-trained reference model)."""
        with self.ws.store() as store:
            return store.serving_version(self.dataset, promoted_only=True)

    def save(self, rep: RoundReport, *, finished: bool = False) -> None:
        """Store the round as it stands: a re-run resumes from the stage after the last one stored."""
        with self.ws.store() as store:
            store.save_round(self.run_id, rep.round, rep.to_metrics(), model_version=rep.serving_version,
                             finished=finished)

    def warn(self, w: dict[str, str], into: list[dict[str, str]]) -> None:
        """A loud warning: printed now, stored with the round or run (terminal summary, report, summary.json)."""
        if w not in into:
            into.append(w)
        self.con.print(f"[bold yellow]WARNING[/] {w['message']} -- fix: {w['fix']}")
        log.info("warning: %s -- fix: %s", w["message"], w["fix"])

    @contextmanager
    def accounted(self, rep: RoundReport, stage: str) -> Iterator[Spend]:
        """Attribute what the block pays the teacher to ``stage`` of ``rep`` (also when it raises)."""
        spent = Spend()
        try:
            with spend_of(self.ws, self.dataset) as spent:
                yield spent
        finally:
            rep.add_spend(stage, spent)


# -- 1. select + label ----------------------------------------------------------------------------------------


def select_items(ctx: WheelContext, r: int, *, budget: int | None = None, committee: list[Any] | None = None
                 ) -> list[int]:
    """Round ``r``: the ``budget`` (default ``per_round_budget / passes``) unlabelled pool items the current models
    are least sure about (``cfg.policy``), from a seeded random sample of at most ``candidate_pool`` candidates.
    ``committee`` defaults to this run's newest versions, the serving one first."""
    from llm_flywheel.pipeline.training import load_student

    cfg = ctx.cfg
    with ctx.ws.store() as store:
        asked = store.teacher_asked_ids(ctx.dataset)
    cands = [i for i in ctx.train_order if i not in asked]
    if cfg.candidate_pool is not None and len(cands) > cfg.candidate_pool:
        rng = np.random.default_rng([cfg.seed, r])
        cands = [cands[i] for i in sorted(rng.choice(len(cands), cfg.candidate_pool, replace=False))]
    if committee is None:
        committee = [load_student(ctx.ws, v) for v in reversed(ctx.trained[-cfg.committee:])]
        serving = ctx.serving_version()
        if serving and serving in ctx.trained:  # the serving model leads the committee (margin uses it)
            committee.sort(key=lambda s, sv=serving: 0 if getattr(s, "version", None) == sv else 1)
    budget = cfg.per_round_budget // cfg.passes if budget is None else budget
    chosen = feedback.select(ctx.ws, ctx.dataset, cands, policy=cfg.policy, budget=budget, students=committee,
                             seed=cfg.seed + r)
    ctx.con.print(f"  selected {len(chosen):,} of {len(cands):,} unlabelled pool items by [bold]{cfg.policy}[/]")
    return [int(i) for i in chosen]


def bootstrap_items(ctx: WheelContext, rep: RoundReport) -> tuple[list[int], bool]:
    """Round 1's train items and whether a student chose some: the seeded random share of ``seed_labels`` items,
    unless the dataset already had a serving student when the run began (``ctx.prior_student``, see
    ``FIRST_ROUND``).  Then the share's items the teacher was already asked about stay (free), and the rest -- the
    ones this round would pay for -- are swapped for as many items that student is least sure about: the same
    spend, spent where the deployed model needs it.  Stored before labelling, so a resume labels the same items."""
    if rep.pending_selection is not None:  # chosen before labelling stopped
        return rep.pending_selection, ctx.prior_student is not None
    if ctx.prior_student is None:
        return ctx.seed_ids, False
    from llm_flywheel.pipeline.training import load_student

    try:
        student = load_student(ctx.ws, ctx.prior_student)
    except StudentError as e:  # e.g. its files were removed by hand: the random share still turns the wheel
        ctx.warn(warning("first_round_random", f"round 1: the serving student {ctx.prior_student} could not be "
                         f"loaded ({e}); labelling a random share instead of the items it is least sure about",
                         f"`flywheel models {ctx.dataset}` shows which versions still have their files; "
                         f"`flywheel promote {ctx.dataset} VERSION` picks one"), rep.warnings)
        ctx.prior_student = None
        return ctx.seed_ids, False
    with ctx.ws.store() as store:
        asked = store.teacher_asked_ids(ctx.dataset)
    kept = [i for i in ctx.seed_ids if i in asked]
    chosen = kept + select_items(ctx, 1, budget=len(ctx.seed_ids) - len(kept), committee=[student])
    rep.pending_selection, rep.pending_selected = chosen, len(chosen)
    ctx.save(rep)
    return chosen, True


def select_and_label(ctx: WheelContext, rep: RoundReport) -> LabelResult:
    """Round 1 labels the bootstrap (seed set + val + calib, :func:`bootstrap_items`); later rounds select, store the selection (a
    resume labels the very same items), then label.  Spend goes to ``rep.spend['label']``."""
    r = rep.round
    if r == 1:
        seed_ids, chosen_by_student = bootstrap_items(ctx, rep)
        how = (f"random, those not labelled yet swapped for the serving student's {ctx.cfg.policy} choice"
               if chosen_by_student else "random")
        ctx.con.print(f"bootstrap: {len(seed_ids):,} train items ({how}), {len(ctx.val_ids):,} val, "
                      f"{len(ctx.calib_ids):,} calib")
        rep.pending_selected = len(seed_ids)
        cfg = ctx.cfg
        if cfg.teacher_parity or (cfg.adaptive_passes and cfg.passes > 1):
            # calib is asked every pass, and first: parity's reference is pass 1 on *every* calib item
            # (calibration._parity_subset), the threshold is fitted on full consensus labels, and these random items
            # are the evidence every later adaptive run reuses instead of buying a sample of its own
            label_stage(ctx, rep, ctx.calib_ids, "calib", passes=max(2, cfg.passes), adaptive=False)
            label_stage(ctx, rep, seed_ids + ctx.val_ids, "seed/val")
        else:
            label_stage(ctx, rep, seed_ids + ctx.val_ids + ctx.calib_ids, "seed/val/calib")
        return LabelResult(selected=len(seed_ids), selected_ids=list(seed_ids) if chosen_by_student else None)
    if rep.pending_selection is not None:  # resumed after labelling stopped: the same items, not new ones
        chosen = rep.pending_selection
        ctx.con.print(f"  resuming: labelling the {len(chosen):,} items selected before the stop")
    else:
        chosen = select_items(ctx, r)
        rep.pending_selection, rep.pending_selected = chosen, len(chosen)
        ctx.save(rep)
    label_stage(ctx, rep, chosen, "selected")
    return LabelResult(selected=len(chosen), selected_ids=list(chosen))


def label_stage(ctx: WheelContext, rep: RoundReport, ids: Sequence[int], what: str, *, passes: int | None = None,
                adaptive: bool | None = None) -> Any:
    """Ask the teacher ``passes`` (default ``cfg.passes``) times about ``ids``, adaptively unless ``adaptive`` says
    otherwise; a stop (fatal teacher error, budget) is stored and raised as :class:`WheelStopped` so the same command
    resumes this round from labelling."""
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items

    if not ids:
        return None
    cfg = ctx.cfg
    passes = cfg.passes if passes is None else passes
    adaptive = cfg.adaptive_passes if adaptive is None else adaptive
    ctx.con.print(f"  labelling {len(ids):,} {what} items x {passes} pass(es){' (adaptive)' if adaptive else ''}"
                  f"{' through the Batch API' if cfg.batch else ''} with [bold]{ctx.teacher.model}[/]")
    lcfg = LabelConfig(passes=passes, concurrency=cfg.concurrency, adaptive_passes=adaptive)
    hints = student_hints(ctx, ids) if adaptive and passes >= 2 and cfg.student_hints else None
    with ctx.accounted(rep, "label"):
        if cfg.batch:  # the provider's batch price; slower (a batch may take hours), the stream stays online
            from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch

            res = label_items_batch(ctx.ws, ctx.dataset, list(ids), ctx.teacher, lcfg,
                                    BatchConfig(poll_s=cfg.batch_poll_s), progress=ctx.progress, hints=hints)
        else:
            res = label_items(ctx.ws, ctx.dataset, list(ids), ctx.teacher, lcfg, progress=ctx.progress, hints=hints)
    for k, v in (res.errors or {}).items():
        rep.label_errors[k] = rep.label_errors.get(k, 0) + v
    if res.stopped_reason:
        ctx.save(rep)  # the label stage stays unfinished: a re-run resumes this round from labelling
        why = getattr(res, "stopped_message", None) or res.stopped_reason
        kind = "budget" if res.stopped_by_budget else "teacher"
        fix = ("raise the cap" if kind == "budget" else "fix the teacher (its URL, model name and API key; "
               f"`flywheel label {ctx.dataset} --limit 5 --teacher SPEC` tries it on a few items)")
        raise WheelStopped(
            f"labelling the {what} items stopped early: {str(why).rstrip('.')}.  Nothing paid for is lost: {fix}, "
            f"then run the same command again -- it resumes round {rep.round} from labelling.", kind)
    if res.failed and res.unlabelled:
        ctx.warn(warning("label_incomplete",
                         f"round {rep.round}: {res.unlabelled} of {len(ids)} {what} items got no teacher answer "
                         f"(errors: {', '.join(f'{k} {v}' for k, v in sorted(res.errors.items()))}); the round goes "
                         f"on with the labels it has",
                         "re-run the same command to retry them (answers already stored cost nothing)"), rep.warnings)
    for w in getattr(res, "warnings", None) or []:  # e.g. the provider's alias moved to another snapshot
        ctx.warn(warning(w["code"], f"round {rep.round}: {w['message']}", w["fix"]), rep.warnings)
    return res


def student_hints(ctx: WheelContext, ids: Sequence[int]) -> dict[str, tuple[str, float]] | None:
    """The promoted student's calibrated (label, confidence) on ``ids`` and on the calib split -- the only evidence
    it never trained on -- for adaptive passes; None before any model is promoted (round 1)."""
    with ctx.ws.store() as s:
        version = s.serving_version(ctx.dataset, promoted_only=True)
    if version is None:
        return None
    return model_hints(ctx.ws, ctx.dataset, version, sorted(set(ids) | set(ctx.calib_ids)))


def model_hints(ws: Workspace, dataset: str, version: str, ids: Sequence[int]) -> dict[str, tuple[str, float]] | None:
    """Model ``version``'s calibrated (label, confidence) per content hash of ``ids`` (a second signal for adaptive
    passes: :mod:`~llm_flywheel.pipeline.label_adaptive`); None when it is not calibrated."""
    from llm_flywheel.pipeline.cascade import Cascade, CascadeError

    with ws.store() as s:
        items = s.items(dataset, ids=list(ids))
    try:
        casc = Cascade.from_store(ws, dataset, version=version)
    except CascadeError:  # not calibrated: no calibrated confidence to give
        return None
    try:
        return {a.content_hash: (a.student_label, a.student_confidence)
                for a in casc.predict_items(items, log=False) if a.content_hash and a.student_label}
    finally:
        casc.close()


# -- 2. train -------------------------------------------------------------------------------------------------


def training_labels(ctx: WheelContext) -> dict[int, str]:
    """The train pool's labels plus those of stream items already served (deferred answers, audits)."""
    labels = ctx.labels("train")
    served = set(ctx.served_stream)
    return labels | {i: lab for i, lab in ctx.labels("stream").items() if i in served}


def train_stage(ctx: WheelContext, r: int, labels: dict[int, str], label_errors: dict[str, int] | None = None
                ) -> TrainResult:
    """Train round ``r``'s model version on ``labels``; nothing to train on is a :class:`WheelStopped`."""
    from llm_flywheel.pipeline.training import train_student

    cfg = ctx.cfg
    ctx.con.print(f"  training on {len(labels):,} labels ({len(ctx.served_stream):,} stream items served so far)")
    if not labels:
        errs = label_errors or {}
        raise WheelStopped(
            "no labelled train items: no train item got a usable teacher label"
            + (f" (errors: {', '.join(f'{k} {v}' for k, v in sorted(errs.items()))})" if errs else "")
            + f".  Check the teacher (URL, model name, API key; `flywheel label {ctx.dataset} --limit 5 "
            f"--teacher SPEC` shows what it answers), or label the pool with `flywheel label {ctx.dataset}`, "
            f"then re-run the same command: it resumes this round.", "no_labels")
    try:
        tm = train_student(ctx.ws, ctx.dataset, kind=cfg.student_kind, labels=labels, seed=cfg.seed + r,
                           epochs=cfg.epochs, round=r, progress=ctx.progress, unlabelled=cfg.unlabelled,
                           **cfg.student_hparams)
    except StudentError as e:
        raise WheelStopped(f"training round {r} failed: {e}.  Fix it and re-run the same command: it resumes "
                           f"this round (teacher answers are kept).", "no_labels") from e
    if tm.metrics.get("student_choice"):
        ctx.con.print(f"  student: {tm.student.kind} -- {tm.metrics['student_choice']}")
    return TrainResult(trained_version=tm.version, student_kind=tm.student.kind,
                       labels_total=len(labels))


# -- 4. promote -----------------------------------------------------------------------------------------------


def agreement(student: Any, items: Sequence[Item], labelled: dict[int, str]) -> float | None:
    """Share of ``items`` on which ``student`` predicts ``labelled``'s label (None without items)."""
    if not items:
        return None
    probs = predict_in_batches(student, list(items))
    pred = np.asarray(student.labels)[probs.argmax(1)]
    return float(np.mean(pred == np.asarray([labelled[it.id] for it in items])))


def should_promote(new: float | None, current: float | None, *, has_current: bool) -> bool:
    """The new version serves when there is no other, when the serving one cannot be measured, or when it agrees
    with the validation labels at least as often: a tie goes to the newer version, trained on the serving one's
    labels and the round's new ones (on a small val split ties are common, and "strictly better" kept the first
    student forever -- a nightly run on 80 new production tickets a day never served what it learnt)."""
    return not has_current or current is None or (new is not None and new >= current)


def promote_stage(ctx: WheelContext, version: str) -> PromotionResult:
    """Compare ``version`` with the serving model on the validation split's teacher labels; promote the better."""
    from llm_flywheel.pipeline.training import load_student

    val_set = set(ctx.val_ids)
    val_labels = {i: lab for i, lab in ctx.labels("val").items() if i in val_set}
    items = ctx.items(sorted(val_labels))
    new = agreement(load_student(ctx.ws, version), items, val_labels)
    current = ctx.serving_version()
    other = bool(current and current != version and (ctx.ws.models_dir / current).exists())
    cur = agreement(load_student(ctx.ws, current), items, val_labels) if other else None
    promote = should_promote(new, cur, has_current=other)
    if promote:
        with ctx.ws.store() as store:
            store.promote(ctx.dataset, version)
    ctx.con.print(f"  agreement with teacher labels on val: new {pct(new)} vs serving {pct(cur)} -> "
                  f"{'[green]promoted[/]' if promote else '[yellow]kept ' + str(current) + '[/]'}")
    return PromotionResult(val_accuracy_new=new, val_accuracy_current=cur, promoted=bool(promote),
                           model_version=version if promote else current)


class PhaseTimer:
    """Seconds per phase of a round, added to what a stopped attempt already spent."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.tick = seconds, time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self.tick, 3)
        self.tick = now
