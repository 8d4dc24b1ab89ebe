"""The round loop: select -> label -> train -> calibrate -> promote -> measure -> serve the stream -> collect.

Why it is built this way:
- **A round is a sequence of stage functions** (``wheel_stages``: select/label, train, calibrate, promote;
  ``wheel_measure``: evaluate, serve, collect), each returning a typed result gathered in a :class:`RoundReport`.
  This module only orders them, accounts each stage's teacher spend and stores the round after every stage.
- **Only held-out splits make choices.**  Promotion uses the *validation* split's teacher labels, the threshold the
  *calibration* split; the *test* split (gold) is only measured.
- **Every round is accounted**, per stage (``label``, ``serve``, ``audit``; ``eval`` -- calls made only to measure
  on test -- apart), through one helper (``pipeline.cost.spend_of``).  Round 1 carries the bootstrap.
- **Resumable.**  Teacher answers are cached in the store and each finished stage is stored with the round: a re-run
  with the same configuration continues the unfinished run, and repeated teacher requests cost nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.liveness import LeaseHeld, lease
from llm_flywheel.pipeline.served_import import ServedImport, import_served, served_not_added
from llm_flywheel.pipeline.splits import make_splits
from llm_flywheel.pipeline.wheel_config import (  # noqa: F401  (re-exported: the names callers import from here)
    AUTO_SHARE_CAP, AUTO_STREAM_CAP, DEFAULT_MAX_TEACHER_FRACTION, SMALL_CALIB, WheelConfig, WheelStopped,
    auto_sizes, plan_sizes, warning, without_unbinding)
from llm_flywheel.pipeline.wheel_finish import cost_section, finish, teacher_source  # noqa: F401
from llm_flywheel.pipeline.wheel_measure import collect_stage, evaluate_stage, serve_stage
from llm_flywheel.pipeline.wheel_calibrate import calibrate_stage, infeasible_goal_warning
from llm_flywheel.pipeline.wheel_results import EvalResult, RoundReport
from llm_flywheel.pipeline.wheel_stages import (PhaseTimer, WheelContext,
                                                promote_stage, select_and_label, train_stage, training_labels)
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "calib", "test", "stream")


@dataclass
class WheelResult:
    """A finished run: per-round metrics (the stored flat form), their typed reports, and the end-of-run report."""

    run_id: int
    dataset: str
    rounds: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    reports: list[RoundReport] = field(default_factory=list)


def run_wheel(
    ws: Workspace,
    dataset: str,
    *,
    teacher: Any | None = None,
    teacher_spec: str | None = None,
    config: WheelConfig | None = None,
    progress: bool = True,
    console: Console | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    reviewer: Callable[[list[Any]], dict[int, str]] | None = None,
    **overrides: Any,
) -> WheelResult:
    """Turn the wheel ``config.rounds`` times on ``dataset``; returns per-round metrics (also stored in ``rounds``).

    Give either a ``teacher`` object (Teacher protocol, as used by ``labeling.label_items``) or a ``teacher_spec``
    (e.g. ``openrouter:google/gemini-2.5-flash`` or ``http://127.0.0.1:8111/v1|simulated/...``).  ``overrides`` are
    WheelConfig fields.  ``reviewer``: with ``parity_reference='review'``, a callable given the calib items a
    person must judge (a list of items) that returns ``{item id: label}``; without one the run stops with them
    queued for `flywheel review`.
    """
    names = {f.name for f in fields(WheelConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown wheel option(s): {sorted(unknown)}")
    cfg = WheelConfig(**(asdict(config) | overrides)) if config is not None else WheelConfig(**overrides)
    con = console or Console(stderr=True, quiet=not progress)  # a given console prints even without progress bars
    ctx, sizing = setup(ws, dataset, cfg, con, progress, teacher, teacher_spec)
    ctx.reviewer = reviewer
    return turn(ctx, sizing.warnings, sizing.sizes, on_round)


def setup(ws: Workspace, dataset: str, cfg: WheelConfig, con: Console, progress: bool, teacher: Any | None,
          teacher_spec: str | None) -> tuple[WheelContext, Any]:
    """Check the dataset's splits, resolve the teacher, draw the run's item orders (seeded) and size the run."""
    with ws.store() as store:
        task = Task.from_json(store.dataset_task_json(dataset))
        if store.split_counts(dataset).get(None):
            make_splits(store, dataset)
        test = store.items(dataset, split="test")
        ids = {s: [it.id for it in (test if s == "test" else store.items(dataset, split=s))] for s in SPLITS}
    gold_test = [it.id for it in test if it.gold_label is not None]
    if 0 < len(gold_test) < len(ids["test"]):  # measure on what can be measured, and say what was left out
        con.print(f"[yellow]measuring on the {len(gold_test):,} of {len(ids['test']):,} test items that have a gold "
                  "label (the others have none)[/]")
        ids["test"] = gold_test
    if not ids["train"]:
        raise ValueError(f"dataset {dataset!r} has an empty train pool; re-make its splits")
    if not ids["calib"] or not ids["val"]:
        raise ValueError(f"dataset {dataset!r} needs val and calib splits (see `flywheel data add --val/--calib`)")
    if teacher is None:
        if not teacher_spec:
            raise ValueError("give a teacher or a teacher spec (e.g. openrouter:google/gemini-2.5-flash)")
        from llm_flywheel.teachers.registry import teacher_from_spec

        teacher = teacher_from_spec(teacher_spec, task)

    def sized(ids: dict[str, list[int]]) -> Any:
        n_val, n_calib = (len(ids[s][:n] if n is not None else ids[s]) for s, n in (("val", cfg.val_labels),
                                                                                    ("calib", cfg.calib_labels)))
        return plan_sizes(cfg, {k: len(v) for k, v in ids.items()}, n_val, n_calib)

    imported = add_served_first(ws, dataset, sized(ids).config, teacher, con, progress) if cfg.add_served else None
    if imported is not None and imported.added:
        with ws.store(readonly=True) as store:
            ids["train"] = [it.id for it in store.items(dataset, split="train")]
    rng = np.random.default_rng(cfg.seed)
    perm = {s: [int(i) for i in rng.permutation(v)] if v else [] for s, v in ids.items()}

    def head(order: list[int], n: int | None) -> list[int]:
        return order[:n] if n is not None else order

    val_ids, calib_ids = head(perm["val"], cfg.val_labels), head(perm["calib"], cfg.calib_labels)
    sizing = sized(ids)
    cfg = sizing.config
    ctx = WheelContext(ws=ws, dataset=dataset, cfg=cfg, teacher=teacher, task=task, con=con, progress=progress,
                       train_order=perm["train"], seed_ids=perm["train"][: cfg.seed_labels], val_ids=val_ids,
                       calib_ids=calib_ids, test_ids=sorted(head(perm["test"], cfg.test_limit)),
                       stream_order=perm["stream"], served_import=imported.to_dict() if imported else None)
    if cfg.first_round == "auto" and cfg.policy != "random":  # the student that chooses a re-run's round 1
        ctx.prior_student = ctx.serving_version()
    _print_sizes(ctx, sizing.sizes)
    with ws.store(readonly=True) as store:
        unserved = served_not_added(store, dataset, ws.root)
    if unserved:  # production traffic the wheel could train on, already partly paid for
        sizing.warnings.append(warning(
            "served_not_added", f"{unserved:,} inputs `flywheel serve` kept for {dataset} are not in the dataset, so "
            "this run neither trains on them nor reuses the teacher answers serving bought for them",
            f"`flywheel run {dataset} --add-served-limit N` imports more next time" if cfg.add_served else
            f"`flywheel run {dataset} --add-served all` (or `flywheel data add-served {dataset} --teacher SPEC`; "
            "Python: ds.run(teacher, add_served='all')) imports them first"))
    for w in sizing.warnings:
        ctx.warn(w, [])
    return ctx, sizing


def _print_sizes(ctx: WheelContext, sizes: dict[str, Any]) -> None:
    cfg, n = ctx.cfg, sizes["splits"]
    ctx.con.print(
        f"sizes (dataset: {n['train']:,} train pool, {n['val']:,} val, {n['calib']:,} calib, {n['stream']:,} stream, "
        f"{n['test']:,} test): label {cfg.seed_labels:,} random train items in round 1"
        + (f" (those not labelled yet swapped for the items the serving student {ctx.prior_student} is least sure "
           f"about, by {cfg.policy})" if ctx.prior_student else "") + ", then "
        f"{cfg.per_round_budget // cfg.passes:,} selected items x {cfg.passes} passes per round; val "
        f"{len(ctx.val_ids):,}, calib {len(ctx.calib_ids):,}; {cfg.stream_per_round:,} stream items per round"
        + (f" [dim](from the dataset size: {', '.join(sizes['auto'])})[/]" if sizes["auto"] else ""))


def _resumable(store: Any, dataset: str, cfg: WheelConfig, teacher_model: str) -> dict[str, Any] | None:
    """The newest run of this dataset when it is unfinished with the same settings and teacher, else None."""
    runs = store.wheel_runs(dataset)
    if not runs:  # only the newest run of this dataset can be resumed
        return None
    r, key = runs[0], json.loads(json.dumps(cfg.resume_key()))
    stored = without_unbinding(r["config"].get("resume_key") or {})
    return r if r["status"] != "done" and stored == key and r["config"].get("teacher") == teacher_model else None


def open_run(ctx: WheelContext) -> int:
    """The run :func:`_resumable` finds (resume), else a new run."""
    with ctx.ws.store() as store:
        r = _resumable(store, ctx.dataset, ctx.cfg, ctx.teacher.model)
        if r is not None:
            store.reopen_run(r["id"], r["config"] | {"rounds": ctx.cfg.rounds})
            ctx.con.print(f"[yellow]resuming wheel run {r['id']}[/] (teacher answers are cached; finished rounds "
                          "are kept)")
            return r["id"]
        return store.start_run("wheel", {"dataset": ctx.dataset, "teacher": ctx.teacher.model,
                                         "rounds": ctx.cfg.rounds, "resume_key": ctx.cfg.resume_key()})


def add_served_first(ws: Workspace, dataset: str, cfg: WheelConfig, teacher: Any, con: Console,
                     progress: bool) -> ServedImport | None:
    """``cfg.add_served``: before a new run draws its item orders, bring what ``flywheel serve`` kept into the
    train split, labelled with the answers serving bought from this run's teacher (no call) -- the nightly job in
    one command.  ``cfg`` is sized for the pool as it is, to recognise a run to resume: that run keeps the pool it
    started with (its seeded orders are drawn over it), so the import waits for the next run."""
    with ws.store(readonly=True) as store:
        resuming = _resumable(store, dataset, cfg, teacher.model)
    if resuming is not None:
        con.print(f"[yellow]served traffic not imported:[/] run {resuming['id']} is resumed with the train pool it "
                  "started with; the next run imports it")
        return None
    imp = import_served(ws, dataset, teacher, deferred_only=cfg.add_served == "deferred",
                        limit=cfg.add_served_limit, progress=progress)
    con.print(f"served traffic: {escape(imp.summary())}", highlight=False)
    for n in imp.notes:
        con.print(f"  [dim]{escape(n)}[/]", highlight=False)
    return imp


def turn(ctx: WheelContext, warnings: list[dict[str, str]], sizes: dict[str, Any],
         on_round: Callable[[dict[str, Any]], None] | None = None) -> WheelResult:
    """Run (or resume) the rounds, then the end-of-run measurements, holding the dataset's wheel lease: a second
    wheel on the same dataset (another terminal, a cron job, another machine) stops at once instead of resuming the
    first one's unfinished run beside it."""
    try:
        with lease(ctx.ws, f"wheel:{ctx.dataset}"):
            return _turn(ctx, warnings, sizes, on_round)
    except LeaseHeld as e:
        raise WheelStopped(
            f"another wheel is turning on dataset {ctx.dataset!r} ({e.holder}); wait for it to finish, or stop it "
            f"(everything it paid for is kept, and the next `flywheel run {ctx.dataset}` resumes its run)",
            "busy") from None


def _turn(ctx: WheelContext, warnings: list[dict[str, str]], sizes: dict[str, Any],
          on_round: Callable[[dict[str, Any]], None] | None) -> WheelResult:
    ctx.run_id = open_run(ctx)
    results: list[dict[str, Any]] = []
    reports: list[RoundReport] = []
    last_eval: EvalResult | None = None
    per = ctx.cfg.stream_per_round
    try:
        for r in range(1, ctx.cfg.rounds + 1):
            stream_slice = ctx.stream_order[(r - 1) * per : r * per]
            with ctx.ws.store() as store:
                stored = store.round_metrics(ctx.run_id, r)
                if stored is None:
                    store.start_round(ctx.run_id, ctx.dataset, r)
            m, done = stored if stored is not None else ({"round": r}, False)
            if done:
                ctx.con.print(f"[dim]round {r}: already finished in this run, kept[/]")
                if m.get("trained_version"):
                    ctx.trained.append(m["trained_version"])
                ctx.served_stream += stream_slice
                results.append(m)
                continue
            ctx.con.rule(f"[bold]round {r}/{ctx.cfg.rounds}")
            rep = run_round(ctx, RoundReport.from_metrics(m), stream_slice)
            last_eval = rep.evaluation
            reports.append(rep)
            results.append(rep.to_metrics())
            if on_round:
                on_round(results[-1])
        extra = finish(ctx, results, last_eval, warnings, sizes)
        _mark(ctx, "done")
    except (KeyboardInterrupt, WheelStopped):
        _mark(ctx, "stopped")
        raise
    except BaseException:
        _mark(ctx, "failed")
        raise
    return WheelResult(ctx.run_id, ctx.dataset, results, extra, reports)


def _mark(ctx: WheelContext, status: str) -> None:
    try:
        with ctx.ws.store() as store:
            store.finish_run(ctx.run_id, status)
    except Exception:  # never hide the original error
        log.exception("could not mark run %s as %s", ctx.run_id, status)


def run_round(ctx: WheelContext, rep: RoundReport, stream_slice: list[int]) -> RoundReport:
    """One turn: each stage in order, stored after each; stages already stored (a resumed round) are skipped."""
    timer = PhaseTimer(rep.seconds)
    r = rep.round
    if rep.label is None:
        rep.label = select_and_label(ctx, rep)
        rep.pending_selection = rep.pending_selected = None
        timer.lap("select_label")
        ctx.save(rep)
    labels = training_labels(ctx)
    if rep.train is None or not (ctx.ws.models_dir / rep.train.trained_version).exists():
        rep.train = train_stage(ctx, r, labels, rep.label_errors)
        timer.lap("train")
        ctx.save(rep)
    rep.train.labels_total = len(labels)
    version = rep.train.trained_version
    if version not in ctx.trained:
        ctx.trained.append(version)
    if rep.calib is None:
        rep.calib = calibrate_stage(ctx, r, version)
        w = infeasible_goal_warning(r, rep.calib)
        if w:
            ctx.warn(w, rep.warnings)
        timer.lap("calibrate")
        ctx.save(rep)
    rep.promotion = promote_stage(ctx, version)
    timer.lap("promote")
    ctx.save(rep)
    serving = rep.promotion.model_version or version
    with ctx.accounted(rep, "eval"):
        rep.evaluation = evaluate_stage(ctx, r, serving)
    timer.lap("evaluate")
    ctx.save(rep)
    with ctx.accounted(rep, "serve"):
        rep.serving = serve_stage(ctx, r, serving, stream_slice)
    timer.lap("serve")
    ctx.save(rep)
    with ctx.accounted(rep, "audit"):
        rep.collect = collect_stage(ctx, r)
    ctx.served_stream += stream_slice
    timer.lap("collect")
    ctx.save(rep, finished=True)
    return rep
