"""Pixels for the image students: any image input -> float32 NCHW at the student's size, one image at a time.

Why its own module: training, torch inference and ONNX Runtime inference must preprocess identically (the network
normalises inside, so this is all there is), and a batch of phone photos must never be held decoded at once --
each input is decoded, turned upright, resized and dropped before the next (``data.StoredImages`` reads them).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llm_flywheel.data.images import upright
from llm_flywheel.students.base import StudentError

CNN_MAX_SIDE = 64  # image-cnn's "native" resolution at most: a phone photo's 4,032 px would need ~24 GB to train


def _header(x: Any) -> tuple[tuple[int, int], str]:
    """(size, mode) of an image from its header alone (encoded bytes are not decoded)."""
    if isinstance(x, Image.Image):
        return x.size, x.mode
    if isinstance(x, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(x))) as im:
            return im.size, im.mode
    im = to_pil(x)
    return im.size, im.mode


def to_pil(x: Any) -> Image.Image:
    """Accept a PIL image, encoded bytes (PNG/JPEG/...) or an HxW[xC] uint8 array; a photo is turned upright by its
    EXIF orientation (``data.images``), as people and the teacher see it."""
    if isinstance(x, Image.Image):
        return upright(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        try:
            im = Image.open(io.BytesIO(bytes(x)))
            im.load()
            return upright(im)
        except Exception as e:  # PIL raises many types on corrupt input
            raise StudentError(f"cannot decode image bytes ({type(e).__name__}: {e})") from None
    if isinstance(x, np.ndarray):
        return Image.fromarray(x.astype(np.uint8))
    if isinstance(x, (str, Path)):
        im = Image.open(x)
        im.load()
        return upright(im)
    raise StudentError(f"unsupported image input of type {type(x).__name__}")


def preprocess_images(images: Sequence[Any], size: int, channels: int) -> np.ndarray:
    """Images -> float32 NCHW pixels in 0..255 at ``size`` x ``size`` (bilinear; no-op at native size)."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), channels, size, size), dtype=np.float32)
    for i, x in enumerate(images):
        im = to_pil(x)
        if im.mode != mode:
            im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32)
        out[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return out
