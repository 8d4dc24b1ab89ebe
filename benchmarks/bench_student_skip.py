"""Does the student's agreement with pass 0 let adaptive passes skip more?  An offline estimate for issue 12's
35 % target, on a finished `flywheel demo` workspace (the wheel's rule, ``label_adaptive.learn_student_rule``, fits
the same score on one half of the calib split and picks its cutoff on the other; here thirds keep a third for
measuring).

Why: adaptive passes skip pass 1 only where pass 0's own label probability clears a cutoff.  From round 2 on the
wheel also has a student, trained on other items' consensus labels, whose errors are less tied to the teacher's than
the teacher's own second pass is.  Where the student agrees with pass 0, pass 0 is probably what the consensus would
say.

Data: the demo's 1,000 calib items, with gold labels.  They are random, held out from every student, and asked
every pass (+ tie-breaks) in round 1.  ``--round R`` uses round R's model as the student: it is the model the wheel
has when it labels round R+1.  The items are split by content hash into thirds, and each third is the test third
once (pooled over the three rotations).
  * ``certainty`` (today's rule): skip pass 1 when pass 0's label probability >= the cutoff that
    :func:`~llm_flywheel.core.consensus.choose_cutoff` picks on the other two thirds (95 % Wilson lower bound of
    agreement with the consensus >= 0.93);
  * ``+student``: a logistic regression, fitted on one other third, predicts "pass 0 == consensus" from pass 0's
    certainty, whether the calibrated student agrees with pass 0, and the student's confidence.  Its prediction is
    the score; the same ``choose_cutoff`` on the remaining third picks the cutoff.
Measured on the test third:
  * the share of items answered by pass 0 alone;
  * calls saved against fixed k = 2 (skipped: 1 call; else the calls stored for the item: 2, + 1 where the passes
    disagreed);
  * the final label's accuracy against gold (skipped: pass 0's label; else the consensus), with paired 95 %
    intervals against fixed k = 2 and between the two rules.
Also on the half of each test third where the student's margin is smallest: the wheel's margin selection picks such
items in rounds 2-3, so that half is nearer to what later rounds label.

This is an estimate on calib items, not a labelling run.  It leaves out the evidence a run must buy, and round 1 has
no student.  The simulated teacher's errors are a parameter, not an LLM finding.

    flywheel -w demo-ws demo && python benchmarks/bench_student_skip.py demo-ws --round 1
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from llm_flywheel.core.consensus import answer_probability, choose_cutoff, consensus
from llm_flywheel.core.stats import paired_diff_ci
from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.calibration import apply_temperature
from llm_flywheel.pipeline.training import load_student
from llm_flywheel.store.workspace import Workspace

DATASET = "fashion-mnist"
TARGET = 0.93


def calib_rows(ws: Workspace, rnd: int) -> tuple[str, list[dict[str, Any]]]:
    """(the student's version, one row per calib item with passes 0 and 1 and an on-list pass 0)."""
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json(DATASET))
        items = s.items(DATASET, split="calib")
        metrics = s.query("SELECT metrics_json FROM rounds WHERE round=? ORDER BY run_id DESC LIMIT 1", (rnd,))
        version = json.loads(metrics[0]["metrics_json"])["trained_version"]
        cal = s.latest_report("calibration", version)
        keys = Counter((r["model"], r["prompt_version"]) for r in s.query("SELECT model, prompt_version FROM teacher_answers"))
        model, pv = keys.most_common(1)[0][0]
        answers = s.final_answers(model, pv, [it.content_hash for it in items])
    labels = list(task.labels)
    probs = apply_temperature(np.asarray(load_student(ws, version).predict_proba(items)), float(cal["temperature"]))
    rows = []
    for it, pr in zip(items, probs):
        ans = answers.get(it.content_hash, [])
        got = {a["pass_index"]: a for a in ans}
        if 0 not in got or 1 not in got or got[0]["label"] not in labels:
            continue
        con = consensus(ans, labels)
        top = np.sort(pr)
        rows.append(dict(h=it.content_hash, gold=it.gold_label, p0=got[0]["label"], calls=len(ans),
                         con=None if con is None else con.label, cert=answer_probability(got[0], len(labels))[0],
                         agree=float(labels[int(pr.argmax())] == got[0]["label"]), conf=float(top[-1]),
                         margin=float(top[-1] - top[-2])))
    return version, rows


def rules(rows: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Each rule's skip decision per row, fitted with the row's own third held out; the test thirds and their
    least-sure halves."""
    third = np.array([int(r["h"][:8], 16) % 3 for r in rows])
    X = np.array([[r["cert"], r["agree"], r["conf"], r["agree"] * r["conf"]] for r in rows])
    agrees = np.array([r["con"] == r["p0"] for r in rows])
    skip = {"certainty": np.zeros(len(rows), bool), "+student": np.zeros(len(rows), bool)}
    tests, hard = [], []
    for a in range(3):
        A, B, C = (np.where(third == k)[0] for k in (a, (a + 1) % 3, (a + 2) % 3))
        AB = np.concatenate([A, B])
        cut = choose_cutoff(list(X[AB, 0]), list(agrees[AB]), TARGET).cutoff
        skip["certainty"][C] = np.array([cut is not None and x >= cut for x in X[C, 0]], bool)
        score = LogisticRegression(max_iter=1000).fit(X[A], agrees[A]).predict_proba(X)[:, 1]
        cut2 = choose_cutoff(list(score[B]), list(agrees[B]), TARGET).cutoff
        skip["+student"][C] = np.array([cut2 is not None and x >= cut2 for x in score[C]], bool)
        tests.append(C)
        hard.append(C[np.argsort([rows[i]["margin"] for i in C])[: len(C) // 2]])
    return skip, tests, hard


def report(title: str, rows: list[dict[str, Any]], skip: dict[str, np.ndarray], idx: np.ndarray) -> None:
    fixed = np.array([rows[i]["con"] == rows[i]["gold"] for i in idx], float)
    fixed_calls = sum(rows[i]["calls"] for i in idx)
    right = {}
    print(f"{title} (n = {len(idx)}); fixed k = 2: label accuracy vs gold {100 * fixed.mean():.2f} %, "
          f"{fixed_calls / len(idx):.3f} calls an item")
    for name, sk in skip.items():
        right[name] = np.array([(rows[i]["p0"] if sk[i] else rows[i]["con"]) == rows[i]["gold"] for i in idx], float)
        calls = sum(1 if sk[i] else rows[i]["calls"] for i in idx)
        d, lo, hi = paired_diff_ci(right[name], fixed)
        print(f"  {name:9s}: pass 0 alone on {100 * sk[idx].mean():.1f} %, {100 * (1 - calls / fixed_calls):.1f} % "
              f"fewer calls; accuracy {100 * right[name].mean():.2f} %, vs fixed k = 2 {100 * d:+.2f} pt "
              f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    d, lo, hi = paired_diff_ci(right["+student"], right["certainty"])
    print(f"  +student vs certainty: accuracy {100 * d:+.2f} pt [{100 * lo:+.2f}, {100 * hi:+.2f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace", help="a workspace `flywheel demo` finished in")
    ap.add_argument("--round", type=int, default=1, help="whose model is the student (default 1)")
    args = ap.parse_args()
    version, rows = calib_rows(Workspace.open(args.workspace, create=False), args.round)
    print(f"round {args.round}'s student {version}; {len(rows)} calib items with passes 0 and 1 "
          f"[SIMULATED teacher]")
    skip, tests, hard = rules(rows)
    report("all calib items", rows, skip, np.concatenate(tests))
    report("the least-sure half of each test third", rows, skip, np.concatenate(hard))


if __name__ == "__main__":
    main()
