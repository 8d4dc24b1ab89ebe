"""Training speed of the image students: the NCHW layout the training loop used before, against channels-last
(what ``students/torch_fit.py`` uses now), side by side in one run.

Same network, same pixels, same seed, same number of epochs; the two layouts alternate (``--rounds`` each) so
machine load hits both alike, and the median seconds per epoch and their ratio are printed.  Both runs' final val
accuracy (gold labels, a sanity check that the layout changes speed, not learning) is printed too: the arithmetic is
the same, only the order of float additions differs.

Images: the first Fashion-MNIST train images with their gold labels (Debian ``dataset-fashion-mnist``), or random
pixels if the dataset is absent (speed does not depend on pixel values; the accuracies are then meaningless).

Run:  python benchmarks/bench_train_speed.py [--n 1500] [--epochs 3] [--rounds 2] \
          [--students image-cnn,efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from llm_flywheel.students import torch_fit
from llm_flywheel.students.augment import _augment
from llm_flywheel.students.base import set_torch_threads, targets_matrix, torch_threads
from llm_flywheel.students.image import ARCH_DEFAULTS, _build_net
from llm_flywheel.students.image_pixels import preprocess_images

FMNIST = Path("/usr/share/datasets/fashion-mnist")
LAYOUTS = ("NCHW (before)", "channels-last (now)")


def fashion_mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` train images (uint8, 28 x 28) and their gold labels; random pixels if the dataset is absent."""
    imgs, labels = FMNIST / "train-images-idx3-ubyte.gz", FMNIST / "train-labels-idx1-ubyte.gz"
    if imgs.exists() and labels.exists():
        from llm_flywheel.data.fashion_mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx

        return read_idx(imgs, IMAGES_MAGIC)[:n], read_idx(labels, LABELS_MAGIC)[:n].astype(int)
    print("Fashion-MNIST not found: random pixels (accuracies meaningless)")
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def train_once(kind: str, x, y: np.ndarray, xv, yv: np.ndarray, epochs: int,
               channels_last: bool) -> tuple[float, float]:
    """(seconds per epoch, val accuracy) of one fit through ``fit_torch`` in the given layout."""
    import torch

    hp = ARCH_DEFAULTS[kind]
    c, size = x.shape[1], x.shape[2]
    mean, std = ((0.5,) * 3, (0.5,) * 3) if kind != "image-cnn" else ((0.5,), (0.25,))
    torch.manual_seed(0)
    net, _ = _build_net(kind, 10, c, size, mean, std, bool(hp["pretrained"]), width=int(hp.get("width", 32)))
    before = torch_fit._memory_format
    if not channels_last:  # the loop as it was: every tensor in torch's default layout
        torch_fit._memory_format = lambda _x: torch.contiguous_format
    try:
        t0 = time.perf_counter()
        h = torch_fit.fit_torch(net, x, targets_matrix(y, 10, None, 0.05), None, xv, yv, epochs=epochs, patience=epochs,
                            augment=_augment(size, {}), batch_size=int(hp["batch_size"]), lr=float(hp["lr"]),
                            weight_decay=float(hp["weight_decay"]), seed=0, progress=False, desc=kind)
        per_epoch = (time.perf_counter() - t0) / epochs
    finally:
        torch_fit._memory_format = before
    return per_epoch, float(h["best_val_acc"])  # the kept epoch's (with patience = epochs: the best of them)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="training images (another 500 are val)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="fits per layout, alternating")
    ap.add_argument("--students", default="image-cnn,efficientnet-lite0")
    a = ap.parse_args()
    import torch

    set_torch_threads()
    imgs, labels = fashion_mnist(a.n + 500)
    print(f"torch {torch.__version__}, {torch_threads()} threads; {a.n} train + 500 val images, {a.epochs} epochs, "
          f"{a.rounds} fits per layout, alternating")
    print("| student | input | NCHW s/epoch | channels-last s/epoch | speed-up | val acc NCHW / channels-last |")
    print("|---|---|---|---|---|---|")
    for kind in a.students.split(","):
        size = ARCH_DEFAULTS[kind]["size"] or 28
        channels = 1 if kind == "image-cnn" else 3
        px = torch.from_numpy(preprocess_images(list(imgs), size, channels))
        x, xv, y, yv = px[: a.n], px[a.n:], labels[: a.n], labels[a.n:]
        times: dict[bool, list[float]] = {False: [], True: []}
        accs: dict[bool, float] = {}
        for r in range(a.rounds):
            for cl in ((False, True) if r % 2 == 0 else (True, False)):
                s, accs[cl] = train_once(kind, x, y, xv, yv, a.epochs, cl)
                times[cl].append(s)
        old, new = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {kind} | {channels} x {size} x {size} | {old:.2f} | {new:.2f} | **{old / new:.2f}x** | "
              f"{accs[False]:.3f} / {accs[True]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
