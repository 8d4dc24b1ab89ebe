"""A re-run's round 1: a random share, or the items the serving student is least sure about?

A second ``flywheel run`` on a dataset (the nightly job, or a run with a larger ``--seed-labels``) starts with round 1.
It used to label a seeded random share of the train pool; the share's items already labelled cost nothing, the rest
are bought.  With ``--first-round auto`` (the default) the items it would buy are swapped for as many items the
dataset's serving student is least sure about (``--policy``, margin by default): the same number of new labels.

This benchmark measures that on Fashion-MNIST (``image-cnn``; or ``--dataset spam-assassin``, ``text-minilm``) with
the SIMULATED teacher (the wheel's own ``--simulated``: ~85 % single call, look-alike errors), through the CLI as a
user runs it:

1. ``data add DATASET`` once (Fashion-MNIST's test = the source's 10,000 test images; never chosen on);
2. per seed: run A, one round with ``--seed-labels FIRST`` (random: nothing serves yet);
3. two copies of A's workspace, each a run B of one round with ``--seed-labels THEN`` -- one ``--first-round random``
   (before this change), one ``--first-round auto``.  Both keep A's FIRST items (free) and buy THEN - FIRST new ones;
4. per arm: new teacher calls and dollars, the accuracy of the new labels against gold, and run B's student on all
   test images (gold) -- paired, item by item, against the other arm, per seed and pooled over seeds.

Run:  python benchmarks/bench_first_round.py --seeds 0,1,2 [--first 1000 --then 2500 --workdir /tmp/bfr]
      python benchmarks/bench_first_round.py --dataset spam-assassin --first 300 --then 800 --workdir /tmp/bfr-spam
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llm_flywheel.core.stats import accuracy_ci, paired_diff_ci
from llm_flywheel.pipeline.training import load_student
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import predict_in_batches

STUDENTS = {"fashion-mnist": ["--student-kind", "image-cnn", "--epochs", "20"], "spam-assassin": ["--student-kind",
                                                                                             "text-minilm"]}
FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))


def flywheel(ws: Path, *args: str, log: Path) -> None:
    """One CLI command on workspace ``ws``, its output appended to ``log``; a failure stops the benchmark."""
    with open(log, "a") as f:
        f.write(f"\n$ flywheel -w {ws} {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([FLYWHEEL, "-w", str(ws), *args], stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"flywheel {' '.join(args)} exited {rc}; see {log}")


def wheel(ws: Path, dataset: str, seed: int, seed_labels: int, log: Path, *extra: str) -> None:
    flywheel(ws, "run", dataset, "--simulated", "--rounds", "1", "--seed-labels", str(seed_labels),
             "--val-labels", "500", "--calib-labels", "1000", "--stream-per-round", "1000", *STUDENTS[dataset],
             "--seed", str(seed), "--no-gold-ceiling", "--no-progress", *extra, log=log)


def measure(ws_dir: Path, dataset: str, before: set[int]) -> dict:
    """Run B's numbers: its round-1 model on every test image, its new labels against gold, its teacher spend."""
    ws = Workspace(ws_dir)
    with ws.store(readonly=True) as s:
        run = s.wheel_runs(dataset)[0]
        m, _ = s.round_metrics(run["id"], 1)
        labels = s.effective_labels(dataset, split="train")
        train = {it.id: it for it in s.items(dataset, split="train")}
        test = [it for it in s.items(dataset, split="test") if it.gold_label is not None]
    new = [i for i in labels if i not in before]
    student = load_student(ws, m["trained_version"])
    probs = predict_in_batches(student, test)
    pred = np.asarray(student.labels)[probs.argmax(1)]
    correct = pred == np.asarray([it.gold_label for it in test])
    spend = m.get("spend", {}).get("label", {})
    return {"version": m["trained_version"], "correct": correct, "new_labels": len(new),
            "new_label_acc": float(np.mean([labels[i] == train[i].gold_label for i in new])) if new else None,
            "calls": spend.get("calls"), "usd": spend.get("usd"), "labels_total": len(labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--first", type=int, default=1000, help="run A's --seed-labels")
    ap.add_argument("--then", type=int, default=2500, help="run B's --seed-labels (THEN - FIRST new labels)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-first-round"))
    ap.add_argument("--fresh", action="store_true", help="start again (default: reuse finished seeds' workspaces)")
    ap.add_argument("--dataset", choices=sorted(STUDENTS), default="fashion-mnist",
                    help="spam-assassin: the text demo's emails with text-minilm (`make spam-assassin` fetches them)")
    args = ap.parse_args()
    dataset = args.dataset
    os.environ.setdefault("FLYWHEEL_THREADS", "2")
    if args.fresh:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "bench.log"
    base = args.workdir / "base"
    if not (base / "flywheel.db").exists():
        flywheel(base, "data", "add", dataset, "--no-progress", log=log)
    arms = ("random", "auto")
    results: dict[str, list[dict]] = {a: [] for a in arms}
    t0 = time.time()
    for seed in (int(s) for s in args.seeds.split(",")):
        a = args.workdir / f"seed{seed}" / "A"
        if not (a / "done").exists():
            shutil.rmtree(a, ignore_errors=True)
            shutil.copytree(base, a)
            wheel(a, dataset, seed, args.first, log)
            (a / "done").touch()
        with Workspace(a).store(readonly=True) as s:
            before = set(s.effective_labels(dataset, split="train"))
        for arm in arms:
            b = args.workdir / f"seed{seed}" / arm
            if not (b / "done").exists():
                shutil.rmtree(b, ignore_errors=True)
                shutil.copytree(a, b)
                wheel(b, dataset, seed, args.then, log, "--first-round", arm)
                (b / "done").touch()
            results[arm].append(measure(b, dataset, before))
        r, n = results["random"][-1], results["auto"][-1]
        d = paired_diff_ci(n["correct"], r["correct"])
        print(f"seed {seed}: run A {len(before):,} train labels; run B new labels random {r['new_labels']:,} "
              f"({r['calls']} calls, ${r['usd']:.4f}, {r['new_label_acc']:.1%} right) / auto {n['new_labels']:,} "
              f"({n['calls']} calls, ${n['usd']:.4f}, {n['new_label_acc']:.1%} right); student on gold test: random "
              f"{r['correct'].mean():.1%}, auto {n['correct'].mean():.1%}, auto - random {100 * d[0]:+.1f} pt "
              f"[{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]  ({time.time() - t0:.0f} s)", flush=True)
    pooled = {arm: np.concatenate([x["correct"] for x in results[arm]]) for arm in arms}
    d = paired_diff_ci(pooled["auto"], pooled["random"])
    print("\npooled over seeds (test images x seeds):")
    for arm in arms:
        acc, lo, hi = accuracy_ci(pooled[arm])
        calls = sum(x["calls"] or 0 for x in results[arm])
        usd = sum(x["usd"] or 0 for x in results[arm])
        lab = np.mean([x["new_label_acc"] for x in results[arm]])
        print(f"  --first-round {arm:<6}: student {acc:.1%} [{lo:.1%}, {hi:.1%}]; run B's teacher calls {calls:,}, "
              f"${usd:.4f}; new labels right vs gold {lab:.1%}")
    print(f"  auto - random: {100 * d[0]:+.2f} pt [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}] (paired over test images)")
    out = {arm: [{k: v for k, v in x.items() if k != "correct"} | {"accuracy": float(x["correct"].mean())}
                 for x in results[arm]] for arm in arms} | {"pooled_diff_pt": [100 * v for v in d]}
    (args.workdir / "result.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
