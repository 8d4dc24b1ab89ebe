"""Speed benchmark: end-to-end images/s for each image student, PyTorch eager vs ONNX Runtime, in the same run.

End to end = read the PNG from disk + decode + resize + normalise + inference + softmax, through the product's own
serving paths (``ImageStudent.predict_proba_raw`` for eager, ``OnnxStudent.predict_proba_raw`` for ONNX Runtime;
both use the same preprocessing function).  Eager and ORT are measured alternately, several rounds each, and the
median is reported, so machine load affects both alike; the ratio is what to compare, not the absolute numbers.
Both runtimes use the same thread count ($FLYWHEEL_THREADS, default min(cores, 4)).

Images: the first Fashion-MNIST test images written as PNG files (or random 28x28 images if the dataset is absent).
Weights: speed does not depend on weight values, so untrained networks of each architecture are used unless
``--workspace`` and ``--version`` name trained models.

Run:  python benchmarks/bench_speed.py [--seconds 2] [--rounds 3] [--students image-cnn,efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from llm_flywheel.students.base import torch_threads
from llm_flywheel.students.image import ImageStudent
from llm_flywheel.students.onnx_runtime import OnnxStudent
from llm_flywheel.students.registry import STUDENT_KINDS

FMNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LABELS = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def write_pngs(folder: Path, n: int) -> list[Path]:
    if FMNIST_TEST.exists():
        from llm_flywheel.data.fashion_mnist import IMAGES_MAGIC, read_idx

        imgs = read_idx(FMNIST_TEST, IMAGES_MAGIC)[:n]
    else:
        imgs = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    paths = []
    for i, a in enumerate(imgs):
        p = folder / f"{i:05d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def untrained(kind: str, folder: Path) -> Path:
    """A saved student folder (weights + meta + model.onnx) of ``kind`` with random (or ImageNet) weights."""
    s = ImageStudent(kind, LABELS, None, pretrained=False)
    s.size = s.size or 28
    s.channels = 1 if kind == "image-cnn" else 3
    s._make_net(pretrained=False)
    s.net.eval()
    out = folder / kind
    s.save(out)
    s.export_onnx(out / "model.onnx")
    return out


def throughput(fn, paths: list[Path], batch: int, seconds: float) -> float:
    """Images/s of ``fn(list_of_paths)`` over consecutive batches, for at least ``seconds`` (after one warm-up)."""
    fn(paths[:batch])
    n, i, t0 = 0, 0, time.perf_counter()
    while True:
        chunk = paths[i : i + batch]
        if len(chunk) < batch:
            i, chunk = 0, paths[:batch]
        fn(chunk)
        n += len(chunk)
        i += batch
        el = time.perf_counter() - t0
        if el >= seconds and n >= batch * 3:
            return n / el


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", default=",".join(k for k, v in STUDENT_KINDS.items() if v.modality == "image" and v.available()))
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating eager/ORT rounds; the median is reported")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workspace", default=None, help="with --version: benchmark trained models from this workspace")
    ap.add_argument("--version", action="append", default=[], help="model version(s) to benchmark instead of untrained nets")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-speed-"))
    (tmp / "png").mkdir()
    paths = write_pngs(tmp / "png", a.images)
    folders: list[tuple[str, Path]] = []
    if a.version:
        from llm_flywheel.training import model_row
        from llm_flywheel.workspace import Workspace

        ws = Workspace.open(a.workspace, create=False)
        with ws.store() as store:
            for v in a.version:
                folders.append((v, ws.abspath(model_row(store, v)["path"])))
    else:
        for kind in [k for k in a.students.split(",") if k]:
            folders.append((kind, untrained(kind, tmp / "models")))
    batches = [int(b) for b in a.batches.split(",")]
    print(f"threads: {torch_threads()} (torch and ONNX Runtime); images: {len(paths)} PNG files "
          f"({'Fashion-MNIST test' if FMNIST_TEST.exists() else 'random'}), 28x28 grayscale; "
          f"median of {a.rounds} alternating rounds x {a.seconds:g} s")
    rows = []
    for name, folder in folders:
        eager = ImageStudent.load(folder)
        ort = OnnxStudent(folder)
        x = [Image.open(p) for p in paths[:8]]
        # logits, not probabilities: an untrained net's softmax is near uniform and would hide a broken export
        le, lo = eager.predict_logits_raw(x), ort.predict_logits_raw(x)
        diff = float(np.abs(le - lo).max())
        print(f"  {name}: logits spread {float(le.std()):.2e}, max abs eager-ORT logit difference {diff:.1e}", flush=True)
        onnx_mb = (folder / "model.onnx").stat().st_size / 1e6
        pt_mb = (folder / "weights.pt").stat().st_size / 1e6
        for b in batches:
            e_runs, o_runs = [], []
            for _ in range(a.rounds):
                e_runs.append(throughput(eager.predict_proba_raw, paths, b, a.seconds))
                o_runs.append(throughput(ort.predict_proba_raw, paths, b, a.seconds))
            e, o = statistics.median(e_runs), statistics.median(o_runs)
            rows.append((name, eager.size, b, e, o, o / e, onnx_mb, pt_mb, diff))
            print(f"  {name:<20} batch {b:>3}: eager {e:8.0f} img/s   ORT {o:8.0f} img/s   ratio {o / e:5.2f}x", flush=True)
    print()
    print("| student | input px | batch | PyTorch eager img/s | ONNX Runtime img/s | ORT / eager | ONNX MB | weights.pt MB | max abs logit diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, b, e, o, r, omb, pmb, diff in rows:
        print(f"| {name} | {size} | {b} | {e:,.0f} | {o:,.0f} | **{r:.2f}x** | {omb:.2f} | {pmb:.2f} | {diff:.1e} |")
    for name, size, b, e, o, r, *_ in rows:
        if b == 1:
            print(f"{name}: ONNX Runtime / PyTorch eager at batch 1, end to end = {r:.2f}x "
                  f"({'meets' if r >= 3 else 'BELOW'} the 3x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
