"""Adaptive passes against fixed k = 2, side by side in one run, against the SIMULATED teacher.

The same Fashion-MNIST images (real pictures and gold labels from /usr/share/datasets/fashion-mnist) are labelled
in separate workspaces by

* ``fixed k=2``: every item asked twice, a tie-break where the two disagree (``adaptive_passes=False``);
* ``adaptive, sample per run``: the behaviour before evidence was reused (``reuse_evidence=False``) -- every
  labelling run buys its own calibration sample, asked every pass, learns the cutoff from it, and asks the later
  passes only where pass 0's label probability is below the cutoff;
* ``adaptive, reused evidence``: the default -- the same rule, but items that earlier runs of the same teacher and
  prompt asked every pass (their samples and their unsure items) count as evidence, so only the shortfall up to
  ``--calibration-items`` is bought;
* ``adaptive (verbalised)``: the default with ``use_logprobs=False`` -- the fallback for servers without logprobs;
* ``..., target t``: the default with another ``agreement_target`` (``--targets 0.93 0.9``);
* ``wheel order, no student`` and ``wheel order + student hints`` (``--student``, needs ``--rounds`` >= 2): as the
  wheel labels -- a calib split of ``--calib`` items (never trained on) asked every pass first, then the runs.  In
  the second, from run 2 on, a student (``--student-kind``) trained on the consensus labels of the items labelled so
  far (the calib split excepted) and temperature-calibrated on the calib split gives its (label, confidence) per
  item, and adaptive passes also skip where it agrees with a sure pass 0 (``label_adaptive.learn_student_rule``,
  the wheel's ``student_hints``, via ``wheel_stages.model_hints``).  Their calls include the calib split's.

``--rounds R`` labels the items in R successive runs of equal size in the same workspace (random order), as the
wheel does round after round; with ``--rounds 1`` the two adaptive arms are the same thing (nothing to reuse).
Each arm talks to its own simulated teacher (same error model and seed, over HTTP on 127.0.0.1), so every arm sees
exactly the answers the others would have seen for the same (item, pass): the comparison is paired item by item.
Printed per arm: calls per item (failed calls included, 95 % bootstrap interval), consensus-label accuracy
against gold (an item without a resolved label counts as wrong; Wilson 95 %), and against fixed k=2 the paired
difference in accuracy (normal approximation on per-item differences) and the share of calls saved (paired
bootstrap over items); then the calls of each run.  Target (issue 12): >= 35 % fewer calls than fixed k=2 at an
accuracy no more than 0.5 point lower.  ``--seeds 0 1 2`` repeats the whole comparison with other simulator seeds.

    python benchmarks/bench_adaptive_passes.py [--items 4000] [--rounds 4] [--seeds 0] \
        [--calibration-items 300] [--targets 0.93 0.9]

Results come from the SIMULATED teacher (its error model is a parameter, not an LLM finding).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from llm_flywheel.core.consensus import choose_cutoff
from llm_flywheel.core.stats import accuracy_ci, paired_diff_ci
from llm_flywheel.core.task import Task
from llm_flywheel.data import register
from llm_flywheel.data.fashion_mnist import fashion_mnist_source
from llm_flywheel.pipeline.label_adaptive import first_pass
from llm_flywheel.pipeline.calibration import calibrate
from llm_flywheel.pipeline.labeling import LabelConfig, LabelRunResult, label_items
from llm_flywheel.pipeline.training import train_student
from llm_flywheel.pipeline.wheel_stages import model_hints
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

DATASET = "fashion-mnist"
LABELS: list[str] = []  # the task's labels, set once the dataset is registered
FIXED, PER_RUN, REUSED = "fixed k=2", "adaptive, sample per run", "adaptive, reused evidence"
VERBALISED = "adaptive (verbalised), reused evidence"
WHEEL, STUDENT = "wheel order, no student", "wheel order + student hints"


def arms(targets: list[float], verbalised: bool, student: bool = False) -> dict[str, dict[str, object]]:
    """Arm name -> LabelConfig overrides; the first target is the one of the main arms."""
    out: dict[str, dict[str, object]] = {FIXED: {"adaptive_passes": False}}
    out[PER_RUN] = {"agreement_target": targets[0], "reuse_evidence": False}
    for i, t in enumerate(targets):
        out[REUSED if i == 0 else f"{REUSED}, target {t:g}"] = {"agreement_target": t}
    if verbalised:
        out[VERBALISED] = {"use_logprobs": False, "agreement_target": targets[0]}
    if student:
        out[WHEEL] = {"agreement_target": targets[0]}
        out[STUDENT] = {"agreement_target": targets[0]}
    return out


@dataclass
class Arm:
    name: str
    result: LabelRunResult  # the last run's (its adaptive decision is the one after every reuse)
    run_calls: list[int]  # calls made by each run
    calls: np.ndarray  # per item, in the shared item order
    correct: np.ndarray
    seconds: float
    first_p: np.ndarray  # pass 0's certainty (label probability from logprobs, else verbalised); NaN: no pass 0
    first_agrees: np.ndarray  # pass 0's label is this arm's consensus label
    first_correct: np.ndarray  # pass 0's label is gold


def _workspace(root: Path, n_items: int) -> tuple[Workspace, list[int]]:
    ws = Workspace.open(root)
    task, recs, total = fashion_mnist_source(limit=n_items // 2)
    LABELS[:] = task.labels
    register(ws, task, recs, total=total, progress=False)
    s = ws.store()
    try:
        return ws, [it.id for it in s.items(DATASET)]
    finally:
        s.close()


def _per_item(ws: Workspace, model: str, pv: str) -> tuple[np.ndarray, ...]:
    """Calls (every stored attempt, failed ones too), consensus right/wrong, and pass 0's certainty, agreement with
    the consensus and right/wrong, per item in source order."""
    s = ws.store()
    try:
        items = sorted(s.items(DATASET), key=lambda it: it.source_ref)
        answers = s.final_answers(model, pv, [it.content_hash for it in items])
        attempts = s.answer_attempts(model)
        labels = s.teacher_labels([it.id for it in items])
    finally:
        s.close()
    assert answers, "no answers stored"
    calls = np.array([attempts.get(it.content_hash, 0) for it in items], float)
    correct = np.array([labels.get(it.id) == it.gold_label for it in items], bool)
    firsts = [first_pass(answers.get(it.content_hash, []), LABELS, True) for it in items]
    p0 = np.array([np.nan if f is None or f[0] is None else f[1] for f in firsts])
    agrees = np.array([f is not None and f[0] is not None and f[0] == labels.get(it.id)
                       for f, it in zip(firsts, items)], bool)
    right0 = np.array([f is not None and f[0] == it.gold_label for f, it in zip(firsts, items)], bool)
    return calls, correct, p0, agrees, right0


def run_arm(name: str, overrides: dict[str, object], root: Path, n_items: int, seed: int,
            args: argparse.Namespace) -> Arm:
    ws, ids = _workspace(root, n_items)
    sim = SimConfig(latency_ms=args.latency_ms, seed=seed)
    cfg = LabelConfig(**{"passes": 2, "concurrency": args.concurrency, "calibration_items": args.calibration_items,
                         **overrides})
    order = np.random.default_rng(seed).permutation(len(ids))  # the same runs for every arm
    with run_simulated_teacher(ws, DATASET, sim) as url:
        s = ws.store()
        task_json = s.dataset_task_json(DATASET)
        s.close()
        teacher = teacher_from_spec(f"{url}|{model_id(DATASET)}", Task.from_json(task_json))
        t0 = time.perf_counter()
        runs = [label_items(ws, DATASET, [ids[i] for i in part], teacher, cfg, progress=False)
                for part in np.array_split(order, args.rounds)]
        dt = time.perf_counter() - t0
    calls, correct, *first = _per_item(ws, teacher.model, runs[-1].prompt_version)
    return Arm(name, runs[-1], [r.calls_made for r in runs], calls, correct, dt, *first)


def run_wheel_arm(name: str, overrides: dict[str, object], root: Path, n_items: int, seed: int,
                  args: argparse.Namespace) -> Arm:
    """The wheel's order: the calib split every pass first, then the runs (with the student's hints from run 2 in
    the :data:`STUDENT` arm)."""
    ws, ids = _workspace(root, n_items)
    calib = {ids[i] for i in np.random.default_rng(seed + 1).choice(len(ids), args.calib, replace=False)}
    with ws.store() as s:
        s.set_splits([(i, "calib" if i in calib else "train") for i in ids])
    cfg = LabelConfig(**{"passes": 2, "concurrency": args.concurrency, "calibration_items": args.calibration_items,
                         **overrides})
    order = np.random.default_rng(seed).permutation(len(ids))  # the same runs as every other arm
    with run_simulated_teacher(ws, DATASET, SimConfig(latency_ms=args.latency_ms, seed=seed)) as url:
        with ws.store() as s:
            teacher = teacher_from_spec(f"{url}|{model_id(DATASET)}", Task.from_json(s.dataset_task_json(DATASET)))
        t0 = time.perf_counter()
        runs = [label_items(ws, DATASET, sorted(calib), teacher, replace(cfg, adaptive_passes=False),
                            progress=False)]
        for r, part in enumerate(np.array_split(order, args.rounds)):
            part_ids = [ids[i] for i in part if ids[i] not in calib]  # labelled already, as in the wheel
            hints = _student_hints(ws, calib, part_ids, seed, args) if name == STUDENT and r else None
            runs.append(label_items(ws, DATASET, part_ids, teacher, cfg, progress=False, hints=hints))
        dt = time.perf_counter() - t0
    calls, correct, *first = _per_item(ws, teacher.model, runs[-1].prompt_version)
    return Arm(name, runs[-1], [r.calls_made for r in runs], calls, correct, dt, *first)


def _student_hints(ws: Workspace, calib: set[int], ids: list[int], seed: int,
                   args: argparse.Namespace) -> dict[str, tuple[str, float]] | None:
    """Train a student on the consensus labels so far (train split), calibrate it on the calib split, and return
    its hints on ``ids`` and the calib split, as the wheel's ``student_hints`` does with its promoted model."""
    with ws.store() as s:
        labels = s.effective_labels(DATASET, split="train")
    m = train_student(ws, DATASET, kind=args.student_kind, labels=labels, seed=seed, epochs=args.student_epochs,
                      val_labels="holdout", progress=False)
    calibrate(ws, DATASET, m.version, max_teacher_fraction=0.1)  # the wheel's default goal
    print(f"  student {m.version}: {len(labels):,} labels, val {m.metrics['val_acc']:.3f}", flush=True)
    return model_hints(ws, DATASET, m.version, sorted(set(ids) | calib))


def _boot(fn, n: int, reps: int, rng: np.random.Generator) -> tuple[float, float]:
    vals = np.array([fn(rng.integers(0, n, n)) for _ in range(reps)])
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def compare(arms: list[Arm], seed: int) -> dict[str, dict[str, object]]:
    base = arms[0]
    n = len(base.calls)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, object]] = {}
    for a in arms:
        assert len(a.calls) == n
        acc = accuracy_ci(a.correct)
        row: dict[str, object] = {
            "calls": int(a.calls.sum()), "calls_per_item": float(a.calls.mean()),
            "calls_per_item_ci": _boot(lambda i, c=a.calls: c[i].mean(), n, 1000, rng),
            "accuracy": acc[0], "accuracy_ci": acc[1:], "run_calls": a.run_calls, "seconds": round(a.seconds, 1),
        }
        if a is not base:
            row["accuracy_diff_vs_fixed"] = paired_diff_ci(a.correct, base.correct)
            row["calls_saved"] = 1 - a.calls.sum() / base.calls.sum()
            row["calls_saved_ci"] = _boot(lambda i, c=a.calls: 1 - c[i].sum() / base.calls[i].sum(), n, 1000, rng)
        ap = a.result.adaptive_passes
        if ap is not None:
            row["cutoff"] = ap.cutoff
            row["agreement"] = (ap.agreement, ap.agreement_low, ap.agreement_high)
            row["calibration_items"] = ap.calibration_items  # of the last run
            row["reused_evidence"] = ap.reused_evidence
            row["skipped_items"] = ap.skipped_items
            row["certainty"] = ap.certainty
        out[a.name] = row
    return out


def _replay_once(fixed: Arm, ok: np.ndarray, parts: list[np.ndarray], n_cal: int, t: float, reuse: bool,
                 rng: np.random.Generator) -> tuple[float, float]:
    """One replayed sequence of runs: (calls saved, accuracy difference) against the fixed arm."""
    n = len(fixed.calls)
    full = np.zeros(n, bool)  # items asked every pass so far (reused evidence)
    skip = np.zeros(n, bool)
    for part in parts:
        cand = part[ok[part]]
        need = max(0, n_cal - int(full.sum())) if reuse else n_cal
        cal = rng.choice(cand, size=min(need, len(cand)), replace=False)
        full[cal] = True
        ev = full if reuse else np.isin(np.arange(n), cal)
        ch = choose_cutoff(list(fixed.first_p[ev]), list(fixed.first_agrees[ev]), t)
        rest = np.setdiff1d(cand, cal)
        sure = rest[fixed.first_p[rest] >= (np.inf if ch.cutoff is None else ch.cutoff)]
        skip[sure] = True
        full[np.setdiff1d(rest, sure)] = True
    calls = np.where(skip, 1.0, fixed.calls)
    right = np.where(skip, fixed.first_correct, fixed.correct)
    return 1 - calls.sum() / fixed.calls.sum(), right.mean() - fixed.correct.mean()


def replay(fixed: Arm, targets: list[float], n_cal: int, draws: int, seed: int,
           rounds: int) -> dict[str, dict[str, float]]:
    """What the adaptive rule would have done with ``draws`` other random calibration samples (and, for several
    runs, other splits of the items into runs), replayed on the fixed arm's stored answers (every item there has
    all passes): a skipped item costs one call and keeps pass 0's label, any other item costs what it cost the
    fixed arm and keeps its consensus.  Shows how much the outcome depends on which items the samples happened to
    hold -- a replay, not a live run.  Per target: a sample per run, and (several runs) reused evidence."""
    rng = np.random.default_rng(seed)
    ok = ~np.isnan(fixed.first_p)
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        for reuse in ([False, True] if rounds > 1 else [False]):
            runs = [_replay_once(fixed, ok, np.array_split(rng.permutation(len(fixed.calls)), rounds), n_cal, t,
                                 reuse, rng) for _ in range(draws)]
            sv, df = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
            key = f"target {t:g}" + ("" if rounds == 1 else (", reused evidence" if reuse else ", sample per run"))
            out[key] = {"saved_mean": float(sv.mean()), "saved_p5": float(np.percentile(sv, 5)),
                        "diff_mean": float(df.mean()), "diff_p5": float(np.percentile(df, 5)),
                        "p_meets_target": float(np.mean((sv >= 0.35) & (df >= -0.005)))}
    return out


def _versus(done: list[Arm], seed: int, res: dict[str, dict[str, object]]) -> None:
    """Paired item by item: reused evidence against the per-run sample (what the reuse itself changed), and the
    student's hints against the same wheel order without them (what the hints changed)."""
    by = {a.name: a for a in done}
    for new_name, old_name in ((REUSED, PER_RUN), (STUDENT, WHEEL)):
        if old_name not in by or new_name not in by:
            continue
        old, new = by[old_name], by[new_name]
        n = len(old.calls)
        lo, hi = _boot(lambda i, o=old, w=new: 1 - w.calls[i].sum() / o.calls[i].sum(), n, 1000,
                       np.random.default_rng(seed))
        saved = 1 - new.calls.sum() / old.calls.sum()
        d = paired_diff_ci(new.correct, old.correct)
        res[new_name][f"vs {old_name}"] = {"calls_saved": saved, "calls_saved_ci": (lo, hi), "accuracy_diff": d}
        print(f"{new_name} vs {old_name}: {100 * saved:.1f} % fewer calls [{100 * lo:.1f}, {100 * hi:.1f}], accuracy "
              f"{100 * d[0]:+.2f} pt [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]")


def _fmt(v: object) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_table(seed: int, res: dict[str, dict[str, object]]) -> None:
    print(f"\nseed {seed} (SIMULATED teacher)")
    print("| arm | calls/item [95 %] | calls saved vs fixed [95 %] | consensus accuracy [95 %] | "
          "accuracy minus fixed, paired [95 %] | last run: cutoff (agreement [95 %]), evidence bought + reused | "
          "calls per run |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res.items():
        cp = r["calls_per_item_ci"]
        saved = f"{100 * r['calls_saved']:.1f} % [{100 * r['calls_saved_ci'][0]:.1f}, " \
                f"{100 * r['calls_saved_ci'][1]:.1f}]" if "calls_saved" in r else "-"
        acc = f"{100 * r['accuracy']:.2f} % [{100 * r['accuracy_ci'][0]:.2f}, {100 * r['accuracy_ci'][1]:.2f}]"
        d = r.get("accuracy_diff_vs_fixed")
        diff = f"{100 * d[0]:+.2f} pt [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]" if d else "-"
        cut = "-" if "cutoff" not in r else ("none" if r["cutoff"] is None else
                                            f"{r['cutoff']:.4f} ({_fmt(r['agreement'])})")
        ev = f", {r['calibration_items']} + {r['reused_evidence']}" if "cutoff" in r else ""
        runs = " / ".join(f"{c:,}" for c in r["run_calls"])
        print(f"| {name} | {r['calls_per_item']:.3f} [{cp[0]:.3f}, {cp[1]:.3f}] | {saved} | {acc} | {diff} | {cut}{ev} | "
              f"{runs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=4000, help="half from the train split, half from test")
    ap.add_argument("--rounds", type=int, default=1, help="label the items in this many successive runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--calibration-items", type=int, default=LabelConfig.calibration_items)
    ap.add_argument("--targets", type=float, nargs="+", default=[LabelConfig.agreement_target],
                    help="agreement targets of the adaptive arms (the first also for the verbalised arm)")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-verbalised", action="store_true", help="skip the verbalised-confidence arm")
    ap.add_argument("--draws", type=int, default=200, help="calibration samples replayed on the fixed arm (0: none)")
    ap.add_argument("--student", action="store_true", help="add the wheel-order arms (with and without hints)")
    ap.add_argument("--calib", type=int, default=1000, help="the calib split of the wheel-order arms")
    ap.add_argument("--student-kind", default="image-cnn")
    ap.add_argument("--student-epochs", type=int, default=None)
    ap.add_argument("--only", nargs="+", help="run only these arms (names as printed; the first is the baseline)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    spec = arms(args.targets, not args.no_verbalised, args.student)
    if args.only:
        spec = {n: spec[n] for n in args.only}
    if args.student and args.rounds < 2:
        ap.error("--student needs --rounds >= 2 (the first run has no student)")
    names = list(spec)
    all_res = {}
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmp:
        for seed in args.seeds:
            done = [(run_wheel_arm if n in (WHEEL, STUDENT) else run_arm)(n, spec[n], Path(tmp) / f"s{seed}-{i}",
                                                                          args.items, seed, args)
                    for i, n in enumerate(names)]
            res = compare(done, seed)
            all_res[seed] = res
            print_table(seed, res)
            _versus(done, seed, res)
            if args.draws:
                rep = replay(done[0], args.targets, args.calibration_items, args.draws, seed, args.rounds)
                res["replay"] = rep
                runs = " and splits into runs" * (args.rounds > 1)
                print(f"replay of {args.draws} other calibration samples{runs} on the fixed arm's answers "
                      " (mean / 5th percentile; share of draws meeting both targets):")
                for k, v in rep.items():
                    print(f"  {k}: calls saved {100 * v['saved_mean']:.1f} % / {100 * v['saved_p5']:.1f} %, "
                          f"accuracy {100 * v['diff_mean']:+.2f} / {100 * v['diff_p5']:+.2f} pt; "
                          f"meets >= 35 % and >= -0.5 pt in {100 * v['p_meets_target']:.0f} %")
    if len(args.seeds) > 1:
        print("\nover seeds: calls saved / accuracy difference (point estimates)")
        for n in names[1:]:
            saved = [all_res[s][n]["calls_saved"] for s in args.seeds]
            diffs = [all_res[s][n]["accuracy_diff_vs_fixed"][0] for s in args.seeds]
            print(f"  {n}: saved {', '.join(f'{100 * x:.1f} %' for x in saved)}; "
                  f"accuracy {', '.join(f'{100 * x:+.2f} pt' for x in diffs)}")
    print("\ntarget: >= 35 % fewer calls than fixed k=2, accuracy no more than 0.5 point lower")
    if args.json:
        Path(args.json).write_text(json.dumps(all_res, indent=2, default=str))


if __name__ == "__main__":
    main()
