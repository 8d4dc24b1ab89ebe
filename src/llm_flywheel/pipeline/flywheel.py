"""The round loop: select -> label -> train -> calibrate -> promote -> serve the stream -> collect -> repeat.

Why it is built this way:
- **Only held-out splits make choices.**  Training uses the train pool (plus stream items the teacher answered);
  promotion compares the new model with the serving one on the *validation* split's teacher labels (what a real
  user has); the threshold comes from the *calibration* split; the *test* split (gold) is only measured.
- **Every round is accounted.**  Teacher calls and dollars are attributed to the round that caused them (round 1
  carries the bootstrap: the random seed set and the validation/calibration labels).  Calls made only to *measure*
  the cascade on test are counted apart (``eval_teacher_calls``) so they never flatter or burden the wheel.
- **Resumable.**  Teacher answers are cached in the store, each finished phase is written to the round's row, and a
  re-run with the same configuration continues the unfinished run: finished rounds are skipped, a trained model is
  reused, and repeated teacher requests cost nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from llm_flywheel.pipeline import cost as costmod
from llm_flywheel.pipeline import feedback
from llm_flywheel.pipeline.quality import teacher_quality_on_items
from llm_flywheel.interfaces.report import wheel_report_key
from llm_flywheel.pipeline.splits import make_splits
from llm_flywheel.core.stats import confusion as confusion_matrix
from llm_flywheel.core.stats import pct, reliability, wilson_interval
from llm_flywheel.store.base import Item
from llm_flywheel.students.base import StudentError, predict_in_batches
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)


DEFAULT_MAX_TEACHER_FRACTION = 0.1
"""The default cascade goal: at most 10 % of items go to the teacher.  A budget is always feasible; an accuracy
target measured against teacher labels is not (it cannot exceed the teacher's own accuracy)."""

AUTO_SHARE_CAP = 500  # items: the most the sizing rule labels in one share (seed set, one round's selection)
AUTO_STREAM_CAP = 1000  # items: the most the sizing rule serves from the stream per round
SMALL_CALIB = 200  # fewer calibration items than this: the threshold rests on little evidence (a warning)


def auto_sizes(n_train: int, n_stream: int, rounds: int, passes: int) -> dict[str, int]:
    """The sizes the wheel uses when they are not given -- derived from the dataset, never assumed big.

    The rule: the train pool is cut into ``rounds + 1`` equal shares; round 1 labels one share at random (at most
    500 items) and every later round selects one share (at most 500 items, ``x passes`` teacher calls), so the
    pool is never used up before the last round and one share stays unlabelled for selection to choose from.  The
    stream split is divided evenly over the rounds (at most 1,000 items per round), so every round serves new
    traffic and the last round's teacher fraction -- what the cost model uses -- is always measured.
    """
    share = min(AUTO_SHARE_CAP, max(1, n_train // (rounds + 1)))
    return {"seed_labels": share, "per_round_budget": share * passes,
            "stream_per_round": min(AUTO_STREAM_CAP, n_stream // max(rounds, 1))}


class WheelStopped(RuntimeError):
    """The wheel stopped on a known condition; ``kind``: 'teacher' (a fatal teacher error), 'budget' (a cap was
    reached) or 'no_labels' (nothing to train on).  Everything paid for is stored: fix the cause and re-run -- the
    round resumes from the stage that stopped."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class WheelConfig:
    """Knobs of one wheel run.  Sizes are item counts; ``None`` for val/calib/test means the whole split, and for
    ``seed_labels``, ``per_round_budget`` and ``stream_per_round`` the sizing rule of :func:`auto_sizes`."""

    rounds: int = 3
    seed_labels: int | None = None  # random items of the train pool labelled in round 1 (None: auto_sizes)
    val_labels: int | None = 500  # at most this many validation items labelled (promotion + early stopping)
    calib_labels: int | None = 1000  # at most this many calibration items labelled (temperature + threshold)
    per_round_budget: int | None = None  # teacher calls on actively selected items per round >= 2 (None: auto_sizes)
    passes: int = 2  # teacher passes per labelled training item (consensus)
    policy: str = "margin"  # margin | entropy | qbc | random
    committee: int = 3  # model versions in the query-by-committee
    candidate_pool: int | None = 20000  # unlabelled items scored per selection (a random sample of the pool)
    stream_per_round: int | None = None  # unseen stream items served through the cascade per round (None: auto_sizes)
    test_limit: int | None = None  # test items measured (None = all)
    student_kind: str | None = None
    epochs: int | None = None
    student_hparams: dict[str, Any] = field(default_factory=dict)  # passed to the student (e.g. {"width": 16})
    target_accuracy: float | None = None  # threshold goal: accuracy on accepted items ...
    max_teacher_fraction: float | None = None  # ... and/or a teacher budget
    delta: float = 0.1
    audit_rate: float = 0.03
    concurrency: int = 16
    seed: int = 0
    cpu_usd_per_hour: float = costmod.DEFAULT_CPU_USD_PER_HOUR
    teacher_usd_per_hour: float | None = None  # price of the teacher's machine when it reports no token price
    gold_ceiling: bool = True  # train the same student on the same items with gold labels at the end

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.policy not in feedback.POLICIES:
            raise ValueError(f"policy {self.policy!r}: choose one of {', '.join(feedback.POLICIES)}")
        if self.passes < 1:
            raise ValueError("passes must be >= 1")
        for name in ("seed_labels", "per_round_budget", "stream_per_round"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.target_accuracy is None and self.max_teacher_fraction is None:
            object.__setattr__(self, "max_teacher_fraction", DEFAULT_MAX_TEACHER_FRACTION)

    def resume_key(self) -> dict[str, Any]:
        """The settings that must match for a re-run to continue an unfinished run (rounds may grow)."""
        d = asdict(self)
        d.pop("rounds")
        return d


@dataclass
class WheelResult:
    run_id: int
    dataset: str
    rounds: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def _teacher_source(model: str) -> str:
    return "simulated" if "simulated" in model.lower() else model


def _wilson(correct: np.ndarray) -> tuple[float, list[float]]:
    c = np.asarray(correct, dtype=bool)
    lo, hi = wilson_interval(int(c.sum()), int(c.size))
    return (float(c.mean()) if c.size else float("nan")), [lo, hi]


# -- the run --------------------------------------------------------------------------------------------------


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
    **overrides: Any,
) -> WheelResult:
    """Turn the wheel ``config.rounds`` times on ``dataset``; returns per-round metrics (also stored in ``rounds``).

    Give either a ``teacher`` object (Teacher protocol, as used by ``labeling.label_items``) or a ``teacher_spec``
    (e.g. ``openrouter:google/gemini-2.5-flash`` or ``http://127.0.0.1:8111/v1|simulated/...``).  ``overrides`` are
    WheelConfig fields.
    """
    cfg = config or WheelConfig(**{k: v for k, v in overrides.items() if k in {f.name for f in fields(WheelConfig)}})
    if config is not None and overrides:
        cfg = WheelConfig(**(asdict(config) | overrides))
    unknown = set(overrides) - {f.name for f in fields(WheelConfig)}
    if unknown:
        raise TypeError(f"unknown wheel option(s): {sorted(unknown)}")
    con = console or Console(stderr=True, quiet=not progress)  # a given console prints even without progress bars
    wheel = _Wheel(ws, dataset, cfg, con, progress)
    wheel.setup(teacher, teacher_spec)
    return wheel.run(on_round)


class _Wheel:
    def __init__(self, ws: Workspace, dataset: str, cfg: WheelConfig, con: Console, progress: bool) -> None:
        self.ws, self.dataset, self.cfg, self.con, self.progress = ws, dataset, cfg, con, progress

    # -- setup ---------------------------------------------------------------------------------------------
    def setup(self, teacher: Any | None, teacher_spec: str | None) -> None:
        store = self.ws.store()
        try:
            self.task = Task.from_json(store.dataset_task_json(self.dataset))
            if store.query("SELECT 1 FROM items WHERE dataset=? AND split IS NULL LIMIT 1", (self.dataset,)):
                make_splits(store, self.dataset)
            ids = {s: [it.id for it in store.items(self.dataset, split=s)] for s in ("train", "val", "calib", "test", "stream")}
        finally:
            store.close()
        if not ids["train"]:
            raise ValueError(f"dataset {self.dataset!r} has an empty train pool; re-make its splits")
        if not ids["calib"] or not ids["val"]:
            raise ValueError(f"dataset {self.dataset!r} needs val and calib splits (see `flywheel data add --val/--calib`)")
        if teacher is None:
            if not teacher_spec:
                raise ValueError("give a teacher or a teacher spec (e.g. openrouter:google/gemini-2.5-flash)")
            from llm_flywheel.teachers.registry import teacher_from_spec

            teacher = teacher_from_spec(teacher_spec, self.task)
        self.teacher = teacher
        rng = np.random.default_rng(self.cfg.seed)
        perm = {s: [int(i) for i in rng.permutation(v)] if v else [] for s, v in ids.items()}
        self.train_order = perm["train"]
        self.val_ids = perm["val"][: self.cfg.val_labels] if self.cfg.val_labels is not None else perm["val"]
        self.calib_ids = perm["calib"][: self.cfg.calib_labels] if self.cfg.calib_labels is not None else perm["calib"]
        self.test_ids = sorted(perm["test"][: self.cfg.test_limit] if self.cfg.test_limit is not None else perm["test"])
        self.stream_order = perm["stream"]
        self._size(ids)
        self.seed_ids = self.train_order[: self.cfg.seed_labels]

    def _warn(self, code: str, message: str, fix: str, where: list[dict[str, str]] | None = None) -> None:
        """A loud warning: printed now, stored with the run, shown in the terminal summary, report and summary.json."""
        w = {"code": code, "message": message, "fix": fix}
        target = self.warnings if where is None else where
        if w not in target:
            target.append(w)
        self.con.print(f"[bold yellow]WARNING[/] {message} -- fix: {fix}")
        log.info("warning: %s -- fix: %s", message, fix)

    def _size(self, ids: dict[str, list[int]]) -> None:
        """Fill the sizes left to the rule (:func:`auto_sizes`) and warn where a given size does not fit the data."""
        cfg = self.cfg
        self.warnings: list[dict[str, str]] = []
        n = {k: len(v) for k, v in ids.items()}
        auto = auto_sizes(n["train"], n["stream"], cfg.rounds, cfg.passes)
        given = {k: getattr(cfg, k) for k in auto}
        self.cfg = cfg = replace(cfg, **{k: v for k, v in auto.items() if given[k] is None})
        self.sizes = {"splits": n, "auto": sorted(k for k in auto if given[k] is None),
                      "seed_labels": cfg.seed_labels, "per_round_budget": cfg.per_round_budget,
                      "stream_per_round": cfg.stream_per_round, "val_labels": len(self.val_ids),
                      "calib_labels": len(self.calib_ids)}
        self.con.print(
            f"sizes (dataset: {n['train']:,} train pool, {n['val']:,} val, {n['calib']:,} calib, {n['stream']:,} stream, "
            f"{n['test']:,} test): label {cfg.seed_labels:,} random train items in round 1, then "
            f"{cfg.per_round_budget // cfg.passes:,} selected items x {cfg.passes} passes per round; val {len(self.val_ids):,}, "
            f"calib {len(self.calib_ids):,}; {cfg.stream_per_round:,} stream items per round"
            + (f" [dim](from the dataset size: {', '.join(self.sizes['auto'])})[/]" if self.sizes["auto"] else ""))
        if n["calib"] < SMALL_CALIB:
            self._warn("small_calib",
                       f"the calib split has only {n['calib']} items: the threshold rests on little evidence (the "
                       f"teacher budget is met conservatively; an accuracy goal is rarely provable)",
                       f"give the dataset a larger calib split before labelling (`flywheel data add ... --calib "
                       f"{SMALL_CALIB * 2}`)")
        for k, split in (("val_labels", "val"), ("calib_labels", "calib")):
            asked = getattr(cfg, k)
            # the defaults (500 / 1,000) are caps that small splits are expected to fall under; a given size is not
            if asked is not None and asked > n[split] and asked != WheelConfig.__dataclass_fields__[k].default:
                self._warn(f"capped_{split}", f"--{k.replace('_', '-')} {asked} asked for more items than the {split} "
                           f"split has ({n[split]}); using all {n[split]}",
                           f"--{k.replace('_', '-')} {n[split]}, or a larger {split} split (`flywheel data add ... --{split} N`)")
        need = cfg.rounds * cfg.stream_per_round
        if n["stream"] == 0:
            self._warn("no_stream", "the stream split is empty: the cascade serves no traffic, so no teacher fraction "
                       "is measured on new items (cost figures fall back to the test split)",
                       "give the dataset a stream split (`flywheel data add ... --stream 0.2`)")
        elif need > n["stream"]:
            self._warn("stream_short",
                       f"{cfg.rounds} rounds x --stream-per-round {cfg.stream_per_round} need {need:,} stream items but the "
                       f"stream split has {n['stream']:,}: " + _short_rounds(n["stream"], cfg.stream_per_round, cfg.rounds),
                       f"--stream-per-round {n['stream'] // cfg.rounds} (or leave it out: it is derived from the dataset)")
        used = cfg.seed_labels + (cfg.rounds - 1) * (cfg.per_round_budget // cfg.passes)
        if used > n["train"]:
            self._warn("pool_short",
                       f"--seed-labels {cfg.seed_labels} + {cfg.rounds - 1} rounds x {cfg.per_round_budget // cfg.passes} "
                       f"selected items need {used:,} train items but the pool has {n['train']:,}: later rounds have "
                       f"nothing left to select", "leave --seed-labels / --per-round-budget out (they are derived "
                       "from the dataset) or give smaller values")

    def _open_run(self) -> int:
        key = self.cfg.resume_key()
        store = self.ws.store()
        try:
            for r in store.query("SELECT id, config_json, status FROM runs WHERE kind='wheel' ORDER BY id DESC"):
                c = json.loads(r["config_json"] or "{}")
                if c.get("dataset") != self.dataset:
                    continue
                if r["status"] != "done" and c.get("resume_key") == json.loads(json.dumps(key)) and c.get("teacher") == self.teacher.model:
                    store.execute("UPDATE runs SET status='running', config_json=? WHERE id=?",
                                  (json.dumps(c | {"rounds": self.cfg.rounds}), r["id"]))
                    self.con.print(f"[yellow]resuming wheel run {r['id']}[/] (teacher answers are cached; finished rounds are kept)")
                    return int(r["id"])
                break  # only the newest run of this dataset can be resumed
            return store.start_run("wheel", {"dataset": self.dataset, "teacher": self.teacher.model, "rounds": self.cfg.rounds,
                                             "resume_key": key})
        finally:
            store.close()

    # -- store helpers -------------------------------------------------------------------------------------
    def _totals(self) -> tuple[int, float]:
        store = self.ws.store()
        try:
            return costmod.teacher_totals(store, self.dataset)
        finally:
            store.close()

    def _items(self, ids: Sequence[int]) -> list[Item]:
        store = self.ws.store()
        try:
            by_id = {it.id: it for it in store.items(self.dataset, ids=list(ids))}
        finally:
            store.close()
        return [by_id[i] for i in ids if i in by_id]

    def _round_row(self, r: int) -> tuple[dict[str, Any], bool]:
        store = self.ws.store()
        try:
            row = store.query("SELECT metrics_json, finished_at FROM rounds WHERE run_id=? AND round=?", (self.run_id, r))
            if not row:
                store.execute("INSERT INTO rounds(run_id, dataset, round, metrics_json, started_at) VALUES(?,?,?,?,?)",
                              (self.run_id, self.dataset, r, json.dumps({"round": r}), time.time()))
                return {"round": r}, False
            return json.loads(row[0]["metrics_json"] or "{}"), row[0]["finished_at"] is not None
        finally:
            store.close()

    def _save_round(self, m: dict[str, Any], *, finished: bool = False) -> None:
        store = self.ws.store()
        try:
            store.execute(
                "UPDATE rounds SET metrics_json=?, model_version=?, finished_at=? WHERE run_id=? AND round=?",
                (json.dumps(m, default=float), m.get("model_version"), time.time() if finished else None, self.run_id, m["round"]),
            )
        finally:
            store.close()

    def _label(self, ids: Sequence[int], passes: int, m: dict[str, Any], what: str) -> Any:
        from llm_flywheel.pipeline.labeling import LabelConfig, label_items

        if not ids:
            return None
        self.con.print(f"  labelling {len(ids):,} {what} items x {passes} pass(es) with [bold]{self.teacher.model}[/]")
        n0, c0 = self._totals()
        res = label_items(self.ws, self.dataset, list(ids), self.teacher,
                          LabelConfig(passes=passes, concurrency=self.cfg.concurrency), progress=self.progress)
        n1, c1 = self._totals()
        m["teacher_calls"] = m.get("teacher_calls", 0) + (n1 - n0)
        m["teacher_cost_usd"] = m.get("teacher_cost_usd", 0.0) + (c1 - c0)
        if res.errors:
            m.setdefault("label_errors", {})
            for k, v in res.errors.items():
                m["label_errors"][k] = m["label_errors"].get(k, 0) + v
        if res.stopped_reason:
            self._save_round(m)  # "labelled" stays unset: a re-run resumes this round from labelling
            why = getattr(res, "stopped_message", None) or res.stopped_reason
            kind = "budget" if res.stopped_by_budget else "teacher"
            fix = ("raise the cap" if kind == "budget" else "fix the teacher (its URL, model name and API key; "
                   f"`flywheel label {self.dataset} --limit 5 --teacher SPEC` tries it on a few items)")
            raise WheelStopped(
                f"labelling the {what} items stopped early: {str(why).rstrip('.')}.  Nothing paid for is lost: {fix}, "
                f"then run the same command again -- it resumes round {m['round']} from labelling.", kind)
        if res.failed and res.unlabelled:
            self._warn("label_incomplete",
                       f"round {m['round']}: {res.unlabelled} of {len(ids)} {what} items got no teacher answer "
                       f"(errors: {', '.join(f'{k} {v}' for k, v in sorted(res.errors.items()))}); the round goes on "
                       f"with the labels it has", "re-run the same command to retry them (answers already stored "
                       "cost nothing)", m.setdefault("warnings", []))
        return res

    def _labels(self, split: str | Sequence[str]) -> dict[int, str]:
        store = self.ws.store()
        try:
            return store.effective_labels(self.dataset, split=split)
        finally:
            store.close()

    def _asked(self) -> set[int]:
        """Items the teacher has a labels row for (agreed or not): never selected again."""
        store = self.ws.store()
        try:
            return {int(r["item_id"]) for r in store.query(
                "SELECT l.item_id FROM labels l JOIN items i ON i.id=l.item_id WHERE i.dataset=? AND l.source='teacher'",
                (self.dataset,))}
        finally:
            store.close()

    def _promoted_version(self) -> str | None:
        """The promoted student (Store.serving_version, promoted only; never a gold-trained reference model)."""
        store = self.ws.store()
        try:
            return store.serving_version(self.dataset, promoted_only=True)
        finally:
            store.close()

    def _promote(self, version: str) -> None:
        store = self.ws.store()
        try:
            with store.transaction() as c:
                c.execute("UPDATE models SET promoted=0 WHERE dataset=?", (self.dataset,))
                c.execute("UPDATE models SET promoted=1 WHERE version=?", (version,))
        finally:
            store.close()

    def _accuracy(self, student: Any, labelled: dict[int, str]) -> float | None:
        items = self._items(sorted(labelled))
        if not items:
            return None
        probs = predict_in_batches(student, items)
        pred = np.asarray(student.labels)[probs.argmax(1)]
        return float(np.mean(pred == np.asarray([labelled[it.id] for it in items])))

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, on_round: Callable[[dict[str, Any]], None] | None) -> WheelResult:
        self.run_id = self._open_run()
        results: list[dict[str, Any]] = []
        self.trained: list[str] = []  # versions trained in this run, newest last (the QBC committee)
        self.served_stream: list[int] = []
        try:
            for r in range(1, self.cfg.rounds + 1):
                m, done = self._round_row(r)
                stream_slice = self.stream_order[(r - 1) * self.cfg.stream_per_round : r * self.cfg.stream_per_round]
                if done:
                    self.con.print(f"[dim]round {r}: already finished in this run, kept[/]")
                    if m.get("trained_version"):
                        self.trained.append(m["trained_version"])
                    self.served_stream += stream_slice
                    results.append(m)
                    continue
                self.con.rule(f"[bold]round {r}/{self.cfg.rounds}")
                m = self._round(r, m, stream_slice)
                results.append(m)
                if on_round:
                    on_round(m)
            extra = self._finish(results)
            store = self.ws.store()
            try:
                store.finish_run(self.run_id, "done")
            finally:
                store.close()
        except (KeyboardInterrupt, WheelStopped):
            self._mark("stopped")
            raise
        except BaseException:
            self._mark("failed")
            raise
        return WheelResult(self.run_id, self.dataset, results, extra)

    def _mark(self, status: str) -> None:
        try:
            store = self.ws.store()
            try:
                store.finish_run(self.run_id, status)
            finally:
                store.close()
        except Exception:  # never hide the original error
            log.exception("could not mark run %s as %s", self.run_id, status)

    def _round(self, r: int, m: dict[str, Any], stream_slice: list[int]) -> dict[str, Any]:
        from llm_flywheel.pipeline.calibration import calibrate
        from llm_flywheel.pipeline.training import load_student, train_student

        cfg = self.cfg
        secs = m.setdefault("seconds", {})
        tick = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            secs[phase] = round(secs.get(phase, 0.0) + now - tick, 3)
            tick = now

        m.setdefault("teacher_calls", 0)
        m.setdefault("teacher_cost_usd", 0.0)
        m.setdefault("eval_teacher_calls", 0)
        m.setdefault("eval_teacher_cost_usd", 0.0)
        # 1. select + label ----------------------------------------------------------------------------
        if "labelled" not in m:
            if r == 1:
                self.con.print(f"bootstrap: {len(self.seed_ids):,} random train items, {len(self.val_ids):,} val, {len(self.calib_ids):,} calib")
                self._label(self.seed_ids + self.val_ids + self.calib_ids, cfg.passes, m, "seed/val/calib")
                m["selected"] = len(self.seed_ids)
            elif m.get("selected_ids") is not None:  # resumed after labelling stopped: the same items, not new ones
                chosen = [int(i) for i in m["selected_ids"]]
                self.con.print(f"  resuming: labelling the {len(chosen):,} items selected before the stop")
                self._label(chosen, cfg.passes, m, "selected")
            else:
                asked = self._asked()
                cands = [i for i in self.train_order if i not in asked]
                if cfg.candidate_pool is not None and len(cands) > cfg.candidate_pool:
                    rng = np.random.default_rng([cfg.seed, r])
                    cands = [cands[i] for i in sorted(rng.choice(len(cands), cfg.candidate_pool, replace=False))]
                budget_items = cfg.per_round_budget // cfg.passes
                committee = [load_student(self.ws, v) for v in reversed(self.trained[-cfg.committee:])]
                serving = self._promoted_version()
                if serving and serving in self.trained:  # the serving model leads the committee (margin uses it)
                    committee.sort(key=lambda s, sv=serving: 0 if getattr(s, "version", None) == sv else 1)
                chosen = feedback.select(self.ws, self.dataset, cands, policy=cfg.policy, budget=budget_items,
                                         students=committee, seed=cfg.seed + r)
                self.con.print(f"  selected {len(chosen):,} of {len(cands):,} unlabelled pool items by [bold]{cfg.policy}[/]")
                m["selected_ids"] = [int(i) for i in chosen]
                m["selected"] = len(chosen)
                self._save_round(m)
                self._label(chosen, cfg.passes, m, "selected")
            m["labelled"] = True
            lap("select_label")
            self._save_round(m)
        # 2. train -------------------------------------------------------------------------------------
        labels = self._labels("train")
        served = set(self.served_stream)
        labels |= {i: lab for i, lab in self._labels("stream").items() if i in served}
        m["labels_total"] = len(labels)
        if not m.get("trained_version") or not (self.ws.models_dir / m["trained_version"]).exists():
            self.con.print(f"  training on {len(labels):,} labels ({len(served):,} stream items served so far)")
            if not labels:
                errs = m.get("label_errors") or {}
                raise WheelStopped(
                    f"no labelled train items: no train item got a usable teacher label"
                    + (f" (errors: {', '.join(f'{k} {v}' for k, v in sorted(errs.items()))})" if errs else "")
                    + f".  Check the teacher (URL, model name, API key; `flywheel label {self.dataset} --limit 5 "
                    f"--teacher SPEC` shows what it answers), or label the pool with `flywheel label {self.dataset}`, "
                    f"then re-run the same command: it resumes this round.", "no_labels")
            try:
                tm = train_student(self.ws, self.dataset, kind=cfg.student_kind, labels=labels, seed=cfg.seed + r,
                                   epochs=cfg.epochs, round=r, progress=self.progress, **cfg.student_hparams)
            except StudentError as e:
                raise WheelStopped(f"training round {r} failed: {e}.  Fix it and re-run the same command: it resumes "
                                   f"this round (teacher answers are kept).", "no_labels") from e
            m["trained_version"] = tm.version
            m["student_kind"] = getattr(tm.student, "kind", cfg.student_kind)
            lap("train")
            self._save_round(m)
        version = m["trained_version"]
        if version not in self.trained:
            self.trained.append(version)
        # 3. calibrate ----------------------------------------------------------------------------------
        if "threshold" not in m:
            try:
                cal = calibrate(self.ws, self.dataset, version, target_accuracy=cfg.target_accuracy,
                                max_teacher_fraction=cfg.max_teacher_fraction, delta=cfg.delta)
            except ValueError as e:  # e.g. no calib item has a teacher label
                raise WheelStopped(f"calibrating round {r} failed: {e}", "no_labels") from e
            m["threshold"] = _get(cal, "threshold")
            m["temperature"] = _get(cal, "temperature", "T")
            m["calib_feasible"] = _get(cal, "feasible")
            m["calib_note"] = _get(cal, "note")
            m["student_agreement_calib"] = _get(cal, "student_accuracy_calib")
            m["calib_teacher_fraction"] = _get(cal, "teacher_fraction")
            if m["calib_feasible"] is False:
                self._warn("goal_infeasible",
                           f"round {r}: the cascade goal cannot be met ({m['calib_note']})",
                           "use a teacher budget, e.g. --max-teacher-fraction 0.1 (always feasible), or a "
                           "--target-accuracy below the teacher's own accuracy", m.setdefault("warnings", []))
            lap("calibrate")
            self._save_round(m)
        # 4. promote on validation (teacher labels: what a real user has) ---------------------------------
        val_labels = {i: lab for i, lab in self._labels("val").items() if i in set(self.val_ids)}
        new_student = load_student(self.ws, version)
        m["val_accuracy_new"] = self._accuracy(new_student, val_labels)
        current = self._promoted_version()
        if current and current != version and (self.ws.models_dir / current).exists():
            m["val_accuracy_current"] = self._accuracy(load_student(self.ws, current), val_labels)
        else:
            m["val_accuracy_current"] = None
        promote = current is None or current == version or m["val_accuracy_current"] is None or (
            (m["val_accuracy_new"] or 0) > m["val_accuracy_current"])
        if promote:
            self._promote(version)
        m["promoted"] = bool(promote)
        serving = version if promote else current
        m["model_version"] = serving
        self.con.print(f"  agreement with teacher labels on val: new {pct(m['val_accuracy_new'])} vs serving "
                       f"{pct(m['val_accuracy_current'])} -> "
                       f"{'[green]promoted[/]' if promote else '[yellow]kept ' + str(current) + '[/]'}")
        lap("promote")
        self._save_round(m)
        # 5. measure on test (gold): student alone and the cascade --------------------------------------
        self._evaluate(r, m, serving)
        lap("evaluate")
        # 6. serve this round's slice of the unseen stream ----------------------------------------------
        self._serve(r, m, serving, stream_slice)
        lap("serve")
        # 7. collect feedback (deferred answers are already labels; audit a sample of accepted answers) --
        n0, c0 = self._totals()
        fb = feedback.collect(self.ws, self.dataset, r, teacher=self.teacher if self.cfg.audit_rate > 0 else None,
                              audit_rate=self.cfg.audit_rate, seed=self.cfg.seed, progress=False)
        n1, c1 = self._totals()
        m["teacher_calls"] += n1 - n0
        m["teacher_cost_usd"] += c1 - c0
        m["feedback"] = fb.to_dict()
        m["audit_disagreement_rate"] = fb.audit_disagreement_rate
        self.served_stream += stream_slice
        lap("collect")
        self._save_round(m, finished=True)
        return m

    def _cascade(self, version: str) -> Any:
        from llm_flywheel.pipeline.cascade import Cascade

        return Cascade.from_store(self.ws, self.dataset, version=version, teacher=self.teacher)

    def _evaluate(self, r: int, m: dict[str, Any], version: str) -> None:
        items = self._items(self.test_ids)
        gold = np.asarray([it.gold_label for it in items], dtype=object)
        if not items or any(g is None for g in gold):
            self.con.print("[yellow]  test split has no gold labels: accuracies not measured[/]")
            return
        self.con.print(f"  measuring on {len(items):,} test items (gold)")
        n0, c0 = self._totals()
        answers = self._cascade(version).predict_items(items, origin="eval", round=r, log=False,
                                                       teacher_concurrency=self.cfg.concurrency)
        n1, c1 = self._totals()
        m["eval_teacher_calls"] += n1 - n0
        m["eval_teacher_cost_usd"] += c1 - c0
        student_pred = np.asarray([a.student_label for a in answers], dtype=object)
        cascade_pred = np.asarray([a.label for a in answers], dtype=object)
        m["student_accuracy"], m["student_accuracy_ci"] = _wilson(student_pred == gold)
        m["cascade_accuracy"], m["cascade_accuracy_ci"] = _wilson(cascade_pred == gold)
        deferred = np.asarray([a.source != "student" for a in answers])
        m["test_teacher_fraction"] = float(deferred.mean())
        if deferred.any():
            m["test_accuracy_deferred_teacher"] = float(np.mean(cascade_pred[deferred] == gold[deferred]))
            m["test_accuracy_deferred_student"] = float(np.mean(student_pred[deferred] == gold[deferred]))
        if (~deferred).any():
            m["test_accuracy_accepted"] = float(np.mean(student_pred[~deferred] == gold[~deferred]))
        self._last_eval = (version, items, answers, gold)
        self._save_round(m)

    def _serve(self, r: int, m: dict[str, Any], version: str, stream_slice: list[int]) -> None:
        items = self._items(stream_slice)
        if not items:
            m["teacher_fraction"] = None
            m["stream_served"] = 0
            return
        self.con.print(f"  serving {len(items):,} unseen stream items through the cascade ({version})")
        n0, c0 = self._totals()
        answers = self._cascade(version).predict_items(items, origin="run", round=r, teacher_concurrency=self.cfg.concurrency)
        n1, c1 = self._totals()
        m["teacher_calls"] += n1 - n0
        m["teacher_cost_usd"] += c1 - c0
        m["stream_served"] = len(answers)
        m["teacher_fraction"] = float(np.mean([a.source != "student" for a in answers]))
        m["stream_teacher_failed"] = int(sum(a.source == "teacher_failed" for a in answers))
        gold = [it.gold_label for it in items]
        if all(g is not None for g in gold):
            m["stream_cascade_accuracy"] = float(np.mean([a.label == g for a, g in zip(answers, gold)]))
        self._save_round(m)

    # -- end of run: teacher quality, gold ceiling, throughput, cost, final plots' data --------------------
    def _finish(self, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        from llm_flywheel.pipeline.training import load_student, train_student

        extra: dict[str, Any] = {"teacher_model": self.teacher.model, "teacher_source": _teacher_source(self.teacher.model),
                                 "config": asdict(self.cfg)}
        extra["teacher_quality"] = teacher_quality_on_items(self.ws, self.dataset, self.val_ids + self.calib_ids,
                                                            self.teacher.model, self.task.labels)
        last = rounds[-1]
        serving = last.get("model_version")
        test_items = self._items(self.test_ids)
        if serving and test_items and all(it.gold_label is not None for it in test_items):
            student = load_student(self.ws, serving)
            extra["final"] = self._final_plots_data(serving, student, test_items, last,
                                                    teacher_accuracy=extra["teacher_quality"].get("accuracy"))
            if self.cfg.gold_ceiling:
                labels = self._labels("train")
                served = set(self.served_stream)
                ids = sorted(set(labels) | {i for i in self._labels("stream") if i in served})
                gold = {it.id: it.gold_label for it in self._items(ids) if it.gold_label is not None}
                self.con.print(f"gold-label ceiling: same student kind, same {len(gold):,} items, gold labels")
                # hard gold labels, no teacher soft targets or quality weights: a pure gold ceiling
                tm = train_student(self.ws, self.dataset, kind=self.cfg.student_kind, labels=gold, seed=self.cfg.seed,
                                   soft=False, weight_by_quality=False, role="reference",
                                   epochs=self.cfg.epochs, round=None, progress=self.progress, **self.cfg.student_hparams)
                probs = predict_in_batches(tm.student, test_items)
                pred = np.asarray(tm.student.labels)[probs.argmax(1)]
                acc, ci = _wilson(pred == np.asarray([it.gold_label for it in test_items]))
                extra["gold_ceiling_accuracy"], extra["gold_ceiling_accuracy_ci"] = acc, ci
                extra["gold_ceiling_version"] = tm.version
            thr = costmod.measure_student_throughput(student, test_items[:2048], batch_size=64, min_items=512)
            extra["throughput"] = thr
        store = self.ws.store()
        try:
            tstats = costmod.teacher_cost_stats(store, self.dataset, model=self.teacher.model)
        finally:
            store.close()
        extra["teacher_cost"] = tstats
        extra["sizes"] = getattr(self, "sizes", None)
        self._cost(rounds, last, extra, tstats)
        self._final_warnings(rounds, last, extra)
        store = self.ws.store()
        try:
            store.add_report("wheel", wheel_report_key(self.dataset, self.run_id), extra)
        finally:
            store.close()
        return extra

    def _cost(self, rounds: list[dict[str, Any]], last: dict[str, Any], extra: dict[str, Any],
              tstats: dict[str, Any]) -> None:
        """The cost comparison, or for each figure that cannot be computed the reason (``extra['cost_na']``)."""
        na: dict[str, str] = {}
        extra["cost_na"] = na
        price, price_note = costmod.teacher_price(tstats, self.cfg.teacher_usd_per_hour
                                                  if self.cfg.teacher_usd_per_hour is not None else self.cfg.cpu_usd_per_hour)
        extra["teacher_price_note"] = price_note
        tf, tf_note = last.get("teacher_fraction"), f"the stream of round {last.get('round')}"
        if tf is None and last.get("test_teacher_fraction") is not None:
            # the last round served no stream: its model and threshold measured on test -- never an earlier
            # round's stream, which a different model or threshold served
            tf, tf_note = last["test_teacher_fraction"], f"the test split in round {last.get('round')} (it served no stream)"
        if price is None:
            na["cost"] = f"n/a: {price_note}"
        elif tf is None:
            na["cost"] = "n/a: no teacher fraction was measured (no stream items were served and test was not measured)"
        elif not extra.get("throughput"):
            na["cost"] = "n/a: the student's throughput was not measured (the test split has no gold labels)"
        if na:
            return
        calls = int(sum(r.get("teacher_calls") or 0 for r in rounds))
        spend = float(sum(r.get("teacher_cost_usd") or 0.0 for r in rounds))
        if not tstats.get("priced"):  # a local teacher: its calls are priced by their measured machine time
            spend = calls * price
        cost = costmod.compare(costmod.CostInputs(
            teacher_cost_per_call=price, student_items_per_s=extra["throughput"]["items_per_s"],
            teacher_fraction=tf, labelling_spend_usd=spend, cpu_usd_per_hour=self.cfg.cpu_usd_per_hour))
        cost["teacher_price_note"] = price_note
        cost["teacher_fraction_source"] = tf_note
        extra["cost"] = cost
        na.update(cost.get("not_available") or {})

    def _final_warnings(self, rounds: list[dict[str, Any]], last: dict[str, Any], extra: dict[str, Any]) -> None:
        """Everything a user must not miss, each with the flag that fixes it: setup, last round, final numbers."""
        warnings = list(getattr(self, "warnings", []))
        for w in last.get("warnings") or []:
            if w not in warnings:
                warnings.append(w)
        hold = self.warnings
        self.warnings = warnings
        try:
            teacher_acc = (extra.get("teacher_quality") or {}).get("accuracy")
            casc, stud = last.get("cascade_accuracy"), last.get("student_accuracy")
            if casc is not None and teacher_acc is not None and casc < teacher_acc:
                self._warn("cascade_below_teacher",
                           f"the cascade ({100 * casc:.1f} % on gold test) is less accurate than the teacher's single "
                           f"call ({100 * teacher_acc:.1f} %): the student is not good enough yet for the share it answers",
                           "label more (more --rounds, a larger --per-round-budget) or send more to the teacher "
                           "(a larger --max-teacher-fraction)")
            if casc is not None and stud is not None and casc + 0.01 < stud:
                self._warn("cascade_below_student",
                           f"the cascade ({100 * casc:.1f} % on gold test) is less accurate than the student alone "
                           f"({100 * stud:.1f} %): the items it defers are answered worse by the teacher"
                           + (" (the goal was infeasible, so every item went to the teacher)"
                              if last.get("calib_feasible") is False else ""),
                           "lower --max-teacher-fraction (e.g. 0.05), or drop --target-accuracy for a teacher budget")
            tf, cap = last.get("teacher_fraction"), self.cfg.max_teacher_fraction
            if tf is not None and cap is not None and self.cfg.target_accuracy is None and tf > cap + 0.02:
                self._warn("budget_overshoot",
                           f"the stream deferred {100 * tf:.1f} % against a {100 * cap:.0f} % teacher budget",
                           "calibrate on more items (a larger calib split) or lower --max-teacher-fraction")
            for k, why in (extra.get("cost_na") or {}).items():
                self._warn(f"cost_na_{k}", f"{k.replace('_', ' ')}: {why}",
                           "--teacher-usd-per-hour PRICE prices a teacher that reports no token cost"
                           if "price" in why or "cost" in why else "see the message")
        finally:
            self.warnings = hold
        extra["warnings"] = warnings

    def _final_plots_data(self, version: str, student: Any, items: list[Item], last: dict[str, Any], *,
                          teacher_accuracy: float | None = None) -> dict[str, Any]:
        """Confusion, reliability and the cascade curve of the serving model on test.

        The curve is exact up to the chosen threshold (every deferred test item has a teacher answer).  Above it
        the teacher was never asked about some deferred items; ``cascade_accuracy_est`` counts each of those at the
        teacher's measured single-call accuracy (random val + calib sample), so the curve can still be read there,
        drawn apart as an estimate.
        """
        from llm_flywheel.pipeline.calibration import apply_temperature

        labels = list(student.labels)
        gold = np.asarray([labels.index(it.gold_label) for it in items])
        probs = predict_in_batches(student, items)
        T = last.get("temperature")
        if T:
            probs = apply_temperature(probs, float(T))
        pred = probs.argmax(1)
        conf = probs.max(1)
        confusion = confusion_matrix(gold, pred, len(labels))
        correct = pred == gold
        ece, bins = reliability(conf, correct, 10)
        # cascade curve on test: exact wherever the deferred items have a teacher answer (all thresholds <= chosen)
        teacher_ok = {}
        ev = getattr(self, "_last_eval", None)
        if ev and ev[0] == version:
            for it, a in zip(ev[1], ev[2]):
                if a.source == "teacher" and a.teacher_label is not None:
                    teacher_ok[it.id] = a.teacher_label == it.gold_label
                elif a.source == "teacher_failed":
                    teacher_ok[it.id] = False
        thresholds = np.unique(np.quantile(conf, np.linspace(0, 0.6, 31)))
        curve: dict[str, list[float]] = {"threshold": [], "accepted_accuracy": [], "teacher_fraction": [], "cascade_accuracy": [],
                                         "cascade_accuracy_est": []}
        ids = np.asarray([it.id for it in items])
        for t in thresholds:
            acc_mask = conf >= t
            curve["threshold"].append(float(t))
            curve["teacher_fraction"].append(float(1 - acc_mask.mean()))
            curve["accepted_accuracy"].append(float(correct[acc_mask].mean()) if acc_mask.any() else float("nan"))
            dids = ids[~acc_mask]
            known = [teacher_ok[int(i)] for i in dids if int(i) in teacher_ok]
            tot = float(correct[acc_mask].sum() + sum(known))
            unknown = len(dids) - len(known)
            curve["cascade_accuracy"].append(tot / len(items) if not unknown else float("nan"))
            est = tot + unknown * teacher_accuracy if teacher_accuracy is not None else float("nan")
            curve["cascade_accuracy_est"].append(float(est / len(items)))
        return {"version": version, "labels": labels, "confusion": confusion.tolist(), "reliability": bins, "ece": float(ece),
                "threshold": last.get("threshold"), "temperature": T, "curve": curve,
                "student_accuracy": float(correct.mean()), "n": len(items)}


def _short_rounds(n_stream: int, per_round: int, rounds: int) -> str:
    """Which rounds a too-large --stream-per-round starves, in words."""
    full, rest = divmod(n_stream, per_round)
    parts = []
    if rest:
        parts.append(f"round {full + 1} serves only {rest}")
        full += 1
    if full < rounds:
        parts.append(f"round{'s' if rounds - full > 1 else ''} {full + 1}{f'-{rounds}' if rounds - full > 1 else ''} "
                     f"serve{'' if rounds - full > 1 else 's'} none (no teacher fraction, no cost figures)")
    return " and ".join(parts)


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
        if isinstance(obj, dict) and isinstance(obj.get("choice"), dict) and n in obj["choice"]:
            return obj["choice"][n]
    return None


def round_table(rounds: Sequence[dict[str, Any]], title: str = "flywheel rounds") -> Table:
    """The per-round table printed by `flywheel run` / `flywheel demo`."""
    t = Table(title=title)
    for col in ("round", "model", "promoted", "labels", "teacher calls", "teacher $", "student acc (gold test)",
                "cascade acc (gold test)", "teacher frac (stream)"):
        t.add_column(col, justify="right")

    def acc(d: dict[str, Any], k: str) -> str:
        v, ci = d.get(k), d.get(f"{k}_ci")
        if v is None:
            return "–"
        return f"{100 * v:.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * v:.1f} %"

    for d in rounds:
        t.add_row(str(d.get("round")), str(d.get("model_version") or "–"), "yes" if d.get("promoted") else "no",
                  f"{d.get('labels_total', 0):,}", f"{d.get('teacher_calls', 0):,}", f"{d.get('teacher_cost_usd') or 0:.4f}",
                  acc(d, "student_accuracy"), acc(d, "cascade_accuracy"), pct(d.get("teacher_fraction")))
    return t
