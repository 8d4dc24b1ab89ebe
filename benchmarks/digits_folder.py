"""Write sklearn's bundled digits as a newcomer's image folder + task TOML: the README's small-dataset run.

1,797 8x8 digits, upscaled to 32x32 grey PNGs in one folder per label, and a task TOML that forbids mirrored
images (a mirrored 2 is not a 2).  Offline: the data ships with scikit-learn.

    python benchmarks/digits_folder.py /tmp/digits
    flywheel -w /tmp/digits/ws data add image-folder /tmp/digits/digits --task /tmp/digits/digits.toml
    flywheel -w /tmp/digits/ws run digits --rounds 2 --simulated
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write(out: Path) -> None:
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        folder = out / "digits" / NAMES[y]
        folder.mkdir(parents=True, exist_ok=True)
        grey = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(grey).resize((32, 32), Image.BILINEAR).save(folder / f"{i:04d}.png")
    labels = "\n".join(f'{n} = "the handwritten digit {k} ({n})"' for k, n in enumerate(NAMES))
    (out / "digits.toml").write_text(
        'name = "digits"\nmodality = "image"\ninstructions = "Which handwritten digit is this small grey image?"\n\n'
        f"[labels]\n{labels}\n\n[augment]  # a mirrored digit is not the same digit\nflip = false\nrotate = 5\n",
        encoding="utf-8")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "digits-demo")
    write(target)
    print(f"wrote {target / 'digits'} and {target / 'digits.toml'}")
