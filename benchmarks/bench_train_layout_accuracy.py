"""Does channels-last training cost accuracy?  ``image-cnn`` trained to the end in both layouts on the same labels.

``bench_train_speed.py`` times a few epochs; this trains the full recipe (early stopping on val) on the label sweep's
labels -- ``bench_label_sweep.py``'s workspace and seeded label sequence, 2,500 labels = ``--train`` train + the
500-item val split, the SIMULATED teacher's answers (cached: running the sweep first costs nothing twice) -- once in
the NCHW layout the training loop used before and once channels-last (now), same seed, and scores both on every test
image against gold, paired.

Run:  python benchmarks/bench_train_layout_accuracy.py [--seeds 0,1] [--workspace /tmp/flywheel-bench-sweep]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench_label_sweep import DATASET, chosen_labels, correct_on_test, label
from llm_flywheel.pipeline.evaluation import paired_diff_ci
from llm_flywheel.pipeline.training import train_student
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students import torch_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=os.environ.get("BENCH_WS", "/tmp/flywheel-bench-sweep"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--train", type=int, default=2000, help="train labels (the val split's 500 come on top)")
    a = ap.parse_args()
    import torch

    ws = Workspace.open(a.workspace)
    with ws.store() as store:
        try:
            store.dataset_task_json(DATASET)
        except Exception:  # noqa: BLE001 - any reason, one fix
            raise SystemExit(f"no {DATASET} in {a.workspace}: run benchmarks/bench_label_sweep.py --counts 2500 "
                             "--workspace WS first") from None
    now = torch_fit._memory_format
    layouts = (("NCHW (before)", lambda _x: torch.contiguous_format), ("channels-last (now)", now))
    print("| seed | NCHW | channels-last | channels-last - NCHW (paired, 95 % CI) |")
    print("|---|---|---|---|")
    for seed in (int(s) for s in a.seeds.split(",")):
        chosen = chosen_labels(ws, label(ws, a.train, seed, 5.0), a.train)
        correct = []
        for name, fmt in layouts:
            version = f"layout-{'nchw' if fmt is not now else 'cl'}-{a.train}-s{seed}"
            with ws.store() as store:
                exists = store.model(version) is not None
            if not exists:
                torch_fit._memory_format = fmt
                try:
                    train_student(ws, DATASET, kind="image-cnn", labels=chosen, seed=seed, progress=False,
                                  version=version)
                finally:
                    torch_fit._memory_format = now
            correct.append(correct_on_test(ws, version))
        d, lo, hi = paired_diff_ci(correct[1], correct[0])
        print(f"| {seed} | {100 * np.mean(correct[0]):.1f} % | {100 * np.mean(correct[1]):.1f} % | "
              f"{100 * d:+.2f} pt [{100 * lo:+.2f}, {100 * hi:+.2f}] |", flush=True)


if __name__ == "__main__":
    main()
