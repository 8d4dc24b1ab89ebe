"""Would averaging the two few-label image students beat keeping one?  Measured on the label sweep's own models.

Before ``image-pair`` existed, the product trained ``image-cnn`` and ``efficientnet-lite0`` on the same labels with
few labelled images and val kept one.  Both were trained anyway, so their averaged probabilities cost no training --
only the small CNN's inference beside the pretrained network's.  This benchmark asked whether that average would be
worth serving, *with val deciding* as the product would: for each seed of a label sweep run with
``--recipe cnn:kind=image-cnn`` (so both networks of that seed are saved), it scores on val (teacher labels, what
the product can see) and on test (gold, 10,000 images) image-cnn alone, efficientnet-lite0 alone and their average
(equal weights, probabilities), and reports for each rule -- "keep efficientnet-lite0", "val keeps the best of the
three" (by val agreement, and by val log-loss) -- the paired difference against the teacher's single call per seed
and pooled over seeds.  Its answer (val log-loss's best of the three) is now ``image-pair``, the few-label default;
for a sweep whose default model is already an ``image-pair`` it says so and shows the pair's own choice.

Seeds where val kept image-cnn for the default recipe have no efficientnet-lite0 saved and are skipped (said so).
Nothing here trains: run the sweep first.

Run:  python benchmarks/bench_label_sweep.py --workspace W --counts 2500 --no-ceiling --seeds 3,4,5 \
          --recipe cnn:kind=image-cnn
      python benchmarks/bench_student_ensemble.py --workspace W --labels 2500 --seeds 3,4,5
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bench_accuracy import DATASET
from bench_label_sweep import pooled_diff
from llm_flywheel.core.stats import paired_diff_ci
from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.training import load_student
from llm_flywheel.store.workspace import Workspace

NAMES = ("image-cnn", "efficientnet-lite0", "average")


def _data(ws: Workspace) -> tuple[list, np.ndarray, np.ndarray, list, np.ndarray]:
    """Test items with gold, their gold indices, the teacher's single call right/wrong; val items with a teacher
    label and those labels' indices."""
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json(DATASET))
        test = [it for it in s.items(DATASET, split="test") if it.gold_label]
        val_labels = s.effective_labels(DATASET, split="val")
        val = [it for it in s.items(DATASET, split="val") if val_labels.get(it.id)]
        by_model = s.first_answers_by_hash([it.content_hash for it in test])
    answers = max(by_model.values(), key=len) if by_model else {}
    teacher = np.array([answers.get(it.content_hash) == it.gold_label for it in test])
    y = np.array([task.index(it.gold_label) for it in test])
    yv = np.array([task.index(val_labels[it.id]) for it in val])
    return test, y, teacher, val, yv


def _scores(ws: Workspace, versions: tuple[str, str], test: list, val: list) -> dict[str, tuple]:
    """(val probabilities, test probabilities) for each member and their average."""
    out = {}
    for name, version in zip(NAMES, versions):
        st = load_student(ws, version)
        out[name] = (st.predict_proba(val), st.predict_proba(test))
    out["average"] = tuple((a + b) / 2 for a, b in zip(out[NAMES[0]], out[NAMES[1]]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", required=True, help="a label sweep's workspace")
    ap.add_argument("--labels", type=int, default=2500, help="the sweep's label count")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tag", default="", help="the sweep's --tag, if it had one")
    a = ap.parse_args()
    ws = Workspace.open(a.workspace)
    test, y, teacher, val, yv = _data(ws)
    print(f"Fashion-MNIST, {a.labels:,} teacher labels; val n = {len(val)} (teacher labels), test n = {len(test)} "
          f"(gold); teacher single call {100 * teacher.mean():.1f} %; differences paired on the same test items")
    print("| seed | student | val agreement | val log-loss | test accuracy | student - teacher |")
    print("|---|---|---|---|---|---|")
    kept: dict[str, list[np.ndarray]] = {"efficientnet-lite0": [], "val's best of the three": [],
                                         "val log-loss's best of the three": []}
    for seed in (int(x) for x in a.seeds.split(",")):
        tag = f"-{a.tag}" if a.tag else ""
        default, cnn = f"sweep-default-{a.labels}-s{seed}{tag}", f"sweep-default-{a.labels}-s{seed}-cnn{tag}"
        with ws.store() as s:
            rows = {v: s.model(v) for v in (default, cnn)}
        if any(r is None for r in rows.values()):
            print(f"| {seed} | (no models {default} / {cnn}: run the sweep with --recipe cnn:kind=image-cnn) |||||")
            continue
        if rows[default]["kind"] == "image-pair":
            print(f"| {seed} | (the default is already image-pair, the val log-loss rule below, built in: "
                  f"{json.loads(rows[default]['metrics_json'])['student_choice']}) |||||")
            continue
        if rows[default]["kind"] != "efficientnet-lite0":
            print(f"| {seed} | (val kept {rows[default]['kind']} for the default: no efficientnet-lite0 saved) |||||")
            continue
        sc = _scores(ws, (cnn, default), test, val)
        val_acc, val_loss = {}, {}
        for name in NAMES:
            pv, pt = sc[name]
            val_acc[name] = float((pv.argmax(1) == yv).mean())
            logloss = val_loss[name] = float(-np.mean(np.log(np.clip(pv[np.arange(len(yv)), yv], 1e-12, None))))
            right = pt.argmax(1) == y
            d, lo, hi = paired_diff_ci(right, teacher)
            print(f"| {seed} | {name} | {100 * val_acc[name]:.1f} % | {logloss:.3f} | {100 * right.mean():.1f} % | "
                  f"{100 * d:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
        best = max(NAMES, key=lambda n: val_acc[n])  # max keeps the first of equals
        best_loss = min(NAMES, key=lambda n: val_loss[n])
        print(f"| {seed} | val's best of the three: **{best}**; by val log-loss: **{best_loss}** | | | | |")
        kept["efficientnet-lite0"].append(sc["efficientnet-lite0"][1].argmax(1) == y)
        kept["val's best of the three"].append(sc[best][1].argmax(1) == y)
        kept["val log-loss's best of the three"].append(sc[best_loss][1].argmax(1) == y)
    if not kept["efficientnet-lite0"]:
        print("no seed had both networks saved", file=sys.stderr)
        return 1
    print("\npooled over the seeds above: each rule's students averaged per test item minus the teacher's single "
          "call (95 % CI over the test items, then with the seed spread added)")
    for rule, got in kept.items():
        d, lo, hi, slo, shi, per = pooled_diff(got, teacher)
        print(f"- {rule}: {100 * d:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]; with the seed spread "
              f"[{100 * slo:+.1f}, {100 * shi:+.1f}]; per seed " + " / ".join(f"{100 * x:+.1f}" for x in per) + " pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
