"""Phone photos to a teacher: each image as stored vs scaled to 1,568 pixels on its long side (``teachers.images``).

Side by side in one run on one workspace: a folder of synthetic camera-sized photos (a gradient, a disc and sensor
grain, saved as JPEG at quality 95, as the import stores HEIC/AVIF photos) is labelled through the real client
against the simulated teacher on 127.0.0.1 (one pass an item), once with ``image_max_side=0`` (as stored, the
behaviour before) and once with the default.  Prints request body sizes (base64 included), how many requests are
over Anthropic's documented 5 MB per image and Gemini's 20 MB per inline request, wall time, and whether the
answers agree where both runs parsed one (the simulated teacher answers an item the same way; its malformed
replies are drawn in arrival order, so which items get one differs between runs).  On loopback the upload
is free: over a real uplink the bytes are the cost.

    python benchmarks/bench_teacher_images.py [--photos 24] [--megapixels 12 48]
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from llm_flywheel.core.task import Task
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.openai_compat import run_sync
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import model_id, run_simulated_teacher


def photo(megapixels: float, seed: int) -> bytes:
    w = int(math.sqrt(megapixels * 1e6 * 4 / 3))
    h = w * 3 // 4
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 60 + 10 * (seed % 10))], -1)
    a[(xx - w * rng.uniform(0.3, 0.7)) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2] = (230, 220, 40)
    a = np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_workspace(root: Path, n: int, megapixels: float) -> Workspace:
    folder = root / "photos"
    for i in range(n):
        label = ("left", "right")[i % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"IMG_{i:04d}.jpg").write_bytes(photo(megapixels, i))
    ws = Workspace.open(root / "ws")
    add_dataset(ws, "image-folder", path=folder, progress=False, val=2, calib=2, stream=0, test=2)
    return ws


async def label_all(teacher, task, ws, items) -> tuple[dict[int, str | None], float]:
    t0 = time.perf_counter()
    async with teacher.session(task, ws=ws) as s:
        import asyncio

        answers = await asyncio.gather(*(s.alabel(it, pass_index=0) for it in items))
    return {a.item_id: a.label for a in answers}, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--megapixels", type=float, nargs="+", default=[12.0, 48.0])
    a = ap.parse_args()
    print(f"{'photo':>8} {'limit':>8} {'stored MB':>10} {'request MB p50':>15} {'max':>6} {'>5 MB img':>10} "
          f"{'>20 MB req':>11} {'wall s':>7}  answers")
    for mp in a.megapixels:
        with tempfile.TemporaryDirectory() as tmp:
            ws = make_workspace(Path(tmp), a.photos, mp)
            with ws.store() as s:
                task = Task.from_json(s.dataset_task_json("photos"))
                items = s.items("photos")
            stored = statistics.median((ws.root / it.blob_path).stat().st_size for it in items) / 1e6
            runs = {}
            for side in (0, 1568):
                with run_simulated_teacher(ws, "photos") as url:
                    t = teacher_from_spec(f"{url}|{model_id('photos')}", task, api_key_env="", image_max_side=side)
                    labels, wall = run_sync(label_all(t, task, ws, items))
                sizes = sorted(t.sizes)
                runs[side] = labels
                img = [s * 3 / 4 for s in sizes]  # the base64 image is nearly all of a request
                both = [i for i in labels if labels[i] is not None and runs[0].get(i) is not None]
                same = sum(labels[i] == runs[0][i] for i in both)
                print(f"{mp:>6.0f}MP {side or 'stored':>8} {stored:>10.2f} {statistics.median(sizes) / 1e6:>15.2f} "
                      f"{sizes[-1] / 1e6:>6.2f} {sum(x > 5e6 for x in img):>10} {sum(x > 20e6 for x in sizes):>11} "
                      f"{wall:>7.1f}  {f'{same}/{len(both)} the same' if side else '-'}")


if __name__ == "__main__":
    main()
