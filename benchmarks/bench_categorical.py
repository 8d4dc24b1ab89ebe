"""A table with text columns: the wheel with its categorical columns, against the same table's numbers only.

Before categorical features, `flywheel data add tabular` dropped every text column, so a churn table's `plan`
(free / basic / premium) reached neither the teacher nor the student.  This benchmark makes a seeded churn table
(2,000 customers: plan, country, region, tenure, support tickets -- and with ``--with-spend`` a monthly spend that
reveals the plan; churn decided by plan, tickets and tenure, with noise), imports it twice -- default flags (categories kept) and ``--features`` naming the numeric
columns (what the import did before) -- and turns the wheel with the simulated teacher, default flags, on each.
The student is measured on the gold test split (every fifth row, marked by ``--split-column``), paired row by row
on the rows that are test rows in both imports.

Note what the simulated teacher is: it answers from the gold label through its error model, whatever the prompt
holds, so this measures the *student's* gain from the categories; a real LLM also reads them in its prompt.

Run:  python benchmarks/bench_categorical.py [--seeds 0,1,2] [--rows 2000] [--with-spend]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llm_flywheel.core.stats import accuracy_ci, paired_diff_ci
from llm_flywheel.pipeline.training import load_student, serving_version
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import predict_in_batches

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))
NUMERIC = "tenure,tickets"


def churn_table(path: Path, n: int, seed: int, spend: bool) -> None:
    """``spend``: add a monthly-spend column, which reveals the plan (0 / 9 / 29 a month, plus noise)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        plan = rng.choices(["free", "basic", "premium"], [5, 3, 2])[0]
        country, region = rng.choice(["US", "DE", "FR", "IN", "BR"]), rng.choice(["north", "south", "east", "west"])
        tenure, tickets = rng.randint(1, 72), rng.randint(0, 12)
        paid = round({"free": 0.0, "basic": 9.0, "premium": 29.0}[plan] + rng.gauss(0, 4), 2)
        risk = 1.4 * (plan == "free") - 0.8 * (plan == "premium") + 0.25 * tickets - tenure / 24 + rng.gauss(0, 0.7)
        lines.append(f"c{seed}-{i},{plan},{country},{region},{tenure},{tickets},{f'{paid},' if spend else ''}"
                     f"{'churn' if risk > 0.6 else 'stay'},{'test' if i % 5 == 0 else 'train'}")
    path.write_text(f"customer,plan,country,region,tenure,tickets,{'spend,' if spend else ''}label,split\n"
                    + "\n".join(lines) + "\n")


def flywheel(ws: Path, *args: str) -> str:
    p = subprocess.run([FLYWHEEL, "-w", str(ws), *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"flywheel {' '.join(args)} exited {p.returncode}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def served_correct(ws_dir: Path, dataset: str) -> dict[str, bool]:
    """Test row (source ref) -> whether the serving student is right on it (gold)."""
    ws = Workspace(ws_dir)
    with ws.store(readonly=True) as s:
        version = serving_version(s, dataset)
        test = [it for it in s.items(dataset, split="test") if it.gold_label]
    student = load_student(ws, version)
    pred = np.asarray(student.labels)[predict_in_batches(student, test).argmax(1)]
    return {it.source_ref: bool(p == it.gold_label) for it, p in zip(test, pred)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--with-spend", action="store_true", help="add a numeric column that reveals the plan")
    args = ap.parse_args()
    numeric = NUMERIC + (",spend" if args.with_spend else "")
    both: dict[str, list[np.ndarray]] = {"categories": [], "numbers only": []}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            csv = Path(tmp) / f"churn{seed}.csv"
            churn_table(csv, args.rows, seed, args.with_spend)
            correct: dict[str, dict[str, bool]] = {}
            for arm, extra in (("categories", []), ("numbers only", ["--features", numeric])):
                ws = Path(tmp) / f"ws-{seed}-{arm.replace(' ', '-')}"
                notes = flywheel(ws, "data", "add", "tabular", str(csv), "--name", "churn", "--split-column", "split",
                                 "--no-progress", *extra)
                if seed == 0:  # which columns each import used
                    print(f"[{arm}] " + " ".join(" ".join(notes.split()).split("note: ")[1:]))
                flywheel(ws, "run", "churn", "--simulated", "--rounds", "2", "--seed", str(seed), "--no-progress")
                correct[arm] = served_correct(ws, "churn")
            # rows marked test in the file and test in both imports (identical rows share a split: a test row
            # with a twin in train may have moved to train in one import)
            common = sorted(set(correct["categories"]) & set(correct["numbers only"]))
            for arm in both:
                both[arm].append(np.asarray([correct[arm][r] for r in common]))
            c, n = both["categories"][-1], both["numbers only"][-1]
            d = paired_diff_ci(c, n)
            print(f"seed {seed}: student on gold test ({len(c)} rows test in both): categories {c.mean():.1%}, numbers only "
                  f"{n.mean():.1%}; difference {100 * d[0]:+.1f} pt [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}] "
                  f"({time.time() - t0:.0f} s)", flush=True)
    pooled = {k: np.concatenate(v) for k, v in both.items()}
    for k, v in pooled.items():
        acc, lo, hi = accuracy_ci(v)
        print(f"pooled, {k}: {acc:.1%} [{lo:.1%}, {hi:.1%}]")
    d = paired_diff_ci(pooled["categories"], pooled["numbers only"])
    print(f"pooled difference: {100 * d[0]:+.1f} pt [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]")


if __name__ == "__main__":
    main()
