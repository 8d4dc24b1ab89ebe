"""How many calibration labels does the cascade's guarantee need?  Smaller bootstrap sets, their guarantee's cost.

Issue 12.3: round 1 used to buy 2,000 calib items (each asked twice) before the first student existed.  This
benchmark takes a finished wheel run (e.g. ``flywheel -w /tmp/demo demo``, 1,000 calib items labelled; or
``--previous-settings``, 2,000), keeps its final student, and re-chooses the threshold from random subsets of ``n``
labelled calib items (``--sizes``, ``--draws`` subsets each): temperature and quality goals see only the ``n`` labels, the
budget goal sees every calib item's confidence (free: no label needed).  Each threshold is then applied to the gold
test split and we report, per ``n`` and goal, the teacher fraction and the cascade's accuracy (mean and 10th-90th
percentile over draws), how often the goal's promise was broken on test (deferral above the budget; cascade below
the teacher's single call), and the teacher calls the bootstrap would buy.  Nothing is chosen on test.

Where the teacher was never asked about a deferred test item, it counts at the teacher's measured single-call
accuracy (an estimate; the share of such items is printed).

    .venv/bin/python benchmarks/bench_bootstrap.py --workspace /tmp/demo --sizes 1000,500,250,125 --draws 30
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from llm_flywheel.store.workspace import Workspace


def _choose():
    from llm_flywheel.core.calibration import apply_temperature, fit_temperature
    from llm_flywheel.core.thresholds import choose_threshold

    return choose_threshold, apply_temperature, fit_temperature


def load(ws: Workspace, dataset: str, test_limit: int | None) -> dict:
    from llm_flywheel.pipeline.training import load_student
    from llm_flywheel.students.base import predict_in_batches

    with ws.store(readonly=True) as s:
        version = s.serving_version(dataset, promoted_only=True)
        model = s.busiest_teacher_model(dataset)
        calib = s.items(dataset, split="calib")
        cons = s.effective_labels(dataset, split="calib")
        test = [it for it in s.items(dataset, split="test") if it.gold_label is not None][:test_limit]
        first = s.first_answers_by_hash([it.content_hash for it in calib + test]).get(model, {})
        vc = s.items(dataset, split=["val", "calib"])
        labelled = [it.id for it in calib if it.id in cons]
        passes = s.teacher_answers_by_pass(labelled, model)
    calls_per_item = sum(len(v) for v in passes.values()) / max(len(labelled), 1)
    student = load_student(ws, version)
    labels = list(student.labels)
    gold_vc = [(first.get(it.content_hash), it.gold_label) for it in vc if it.gold_label is not None
               and it.content_hash in first]
    p_teacher = float(np.mean([a == g for a, g in gold_vc]))
    return {"version": version, "labels": labels, "calib": calib, "cons": cons, "first": first,
            "calib_probs": predict_in_batches(student, calib), "test": test,
            "test_probs": predict_in_batches(student, test), "p_teacher": p_teacher, "n_teacher": len(gold_vc),
            "calls_per_item": calls_per_item}


def run(d: dict, sizes: list[int], draws: int, delta: float, budget: float, calls_per_item: float, seed: int) -> list[dict]:
    choose_threshold, apply_temperature, fit_temperature = _choose()
    labels, calib = d["labels"], d["calib"]
    lab = np.array([i for i, it in enumerate(calib) if d["cons"].get(it.id) in labels])
    y = np.array([labels.index(d["cons"][it.id]) if d["cons"].get(it.id) in labels else -1 for it in calib])
    t_first = np.array([d["first"].get(it.content_hash) == d["cons"].get(it.id) for it in calib])
    gold = np.array([labels.index(it.gold_label) for it in d["test"]])
    t_ok = [d["first"].get(it.content_hash) for it in d["test"]]
    known = np.array([a is not None for a in t_ok])
    t_right = np.array([a == it.gold_label for a, it in zip(t_ok, d["test"])])
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        if n > len(lab):
            continue
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(draws):
            sub = rng.choice(lab, size=n, replace=False)
            T = fit_temperature(d["calib_probs"][sub], y[sub])
            cal = apply_temperature(d["calib_probs"], T)
            conf, correct = cal[sub].max(1), cal[sub].argmax(1) == y[sub]
            goals = {"budget": dict(max_teacher_fraction=budget, budget_conf=cal.max(1)),
                     "parity": dict(parity=True, teacher_correct=t_first[sub]),
                     "parity+budget": dict(parity=True, teacher_correct=t_first[sub], max_teacher_fraction=budget,
                                           budget_conf=cal.max(1))}
            tp = apply_temperature(d["test_probs"], T)
            tconf, tcorrect = tp.max(1), tp.argmax(1) == gold
            for g, kw in goals.items():
                thr = float(getattr(choose_threshold(conf, correct, delta=delta, **kw), "threshold"))
                defer = tconf < thr
                acc = (tcorrect[~defer].sum() + (t_right & known)[defer].sum()
                       + d["p_teacher"] * (defer & ~known).sum()) / len(gold)
                rows.setdefault(g, []).append((float(defer.mean()), float(acc), float((defer & ~known).mean())))
        for g, r in rows.items():
            a = np.array(r)
            out.append({"n_calib_labels": n, "goal": g, "bootstrap_calls": round(n * calls_per_item),
                        "teacher_fraction_mean": a[:, 0].mean(), "teacher_fraction_p10_p90": np.percentile(a[:, 0], [10, 90]).tolist(),
                        "cascade_accuracy_mean": a[:, 1].mean(), "cascade_accuracy_p10_p90": np.percentile(a[:, 1], [10, 90]).tolist(),
                        "budget_broken": float(np.mean(a[:, 0] > budget)) if "budget" in g else None,
                        "below_teacher": float(np.mean(a[:, 1] < d["p_teacher"])), "estimated_share": a[:, 2].mean(),
                        "draws": len(a)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--sizes", default="2000,1000,500,250")
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--budget", type=float, default=0.1, help="max teacher fraction of the budget goal")
    ap.add_argument("--calls-per-item", type=float, default=None, help="teacher calls per labelled calib item "
                    "(default: as measured in the workspace)")
    ap.add_argument("--test-limit", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    d = load(Workspace.open(a.workspace, create=False), a.dataset, a.test_limit)
    cpi = a.calls_per_item or d["calls_per_item"]
    rows = run(d, [int(x) for x in a.sizes.split(",")], a.draws, a.delta, a.budget, cpi, a.seed)
    print(f"model {d['version']}; teacher single call {100 * d['p_teacher']:.1f} % on {d['n_teacher']:,} val+calib "
          f"items (gold); {len(d['test']):,} gold test items; {a.draws} draws per size; delta {a.delta}; "
          f"{cpi:.2f} teacher calls per labelled calib item")
    print(f"{'n calib':>8} {'goal':>14} {'boot calls':>10} {'to teacher (p10-p90)':>24} {'cascade acc (p10-p90)':>26} "
          f"{'budget broken':>13} {'< teacher':>9} {'est.':>5}")
    for r in rows:
        tf, ca = r["teacher_fraction_p10_p90"], r["cascade_accuracy_p10_p90"]
        print(f"{r['n_calib_labels']:>8,} {r['goal']:>14} {r['bootstrap_calls']:>10,} "
              f"{100 * r['teacher_fraction_mean']:>6.1f} % ({100 * tf[0]:4.1f}-{100 * tf[1]:4.1f}) "
              f"{100 * r['cascade_accuracy_mean']:>9.2f} % ({100 * ca[0]:5.2f}-{100 * ca[1]:5.2f}) "
              + (f"{100 * r['budget_broken']:>11.0f} %" if r["budget_broken"] is not None else f"{'–':>13}")
              + f" {100 * r['below_teacher']:>7.0f} % {100 * r['estimated_share']:>4.1f}%")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
