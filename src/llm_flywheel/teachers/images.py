"""What a teacher is sent for an image: the stored picture, at most :data:`IMAGE_MAX_SIDE` pixels on its long side.

Why: a phone photo is 12-48 megapixels, 4-20 MB as a JPEG and a third more in base64, and no teacher reads that
many pixels -- OpenAI fits an image into 2048 x 2048 and then 768 on its short side, Anthropic scales anything
beyond 1,568 pixels on the long side down (and refuses an image over 5 MB), Gemini refuses an inline request over
20 MB, and a local vision model in llama.cpp resizes to its encoder's few hundred pixels after decoding it all.
Sending the full file costs upload time on every pass, refusals on the strict providers, and decoding time on a
local server, for nothing the model sees.  A picture within the limit is sent byte for byte as stored.

The answer cache is keyed by the stored item (its content hash), not by these bytes: the same picture at another
size is the same question, so changing the limit (``$FLYWHEEL_TEACHER_IMAGE_MAX_SIDE``; 0 sends every image as
stored) re-buys nothing.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image

from llm_flywheel.teachers.errors import limit_from_env

IMAGE_MAX_SIDE = 1568  # Anthropic's documented long side; OpenAI's high detail reads 768 on the short side
IMAGE_MAX_SIDE_ENV = "FLYWHEEL_TEACHER_IMAGE_MAX_SIDE"
_CACHE_SIZE = 64  # views kept: an item's passes (k = 2-3 calls) reuse one resize
_views: OrderedDict[tuple[str, int], tuple[bytes, str]] = OrderedDict()
_lock = threading.Lock()


def image_max_side_from_env(environ: object = None) -> int:
    """The limit from ``$FLYWHEEL_TEACHER_IMAGE_MAX_SIDE`` (pixels; 0 = no limit), else :data:`IMAGE_MAX_SIDE`.
    Raises ``TeacherConfigError`` (exit 2) naming the variable for anything but 0 or a whole number >= 64."""
    return limit_from_env(environ, IMAGE_MAX_SIDE_ENV, IMAGE_MAX_SIDE, 64, "pixels", "send images as stored")


def mime_of(data: bytes) -> str:
    """The MIME type of a stored image: JPEG or PNG, the two formats the import stores (``data.images``)."""
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def teacher_image(data: bytes, max_side: int | None, key: str | None = None) -> tuple[bytes, str]:
    """(bytes, MIME type) to send for a stored image: itself when its long side is within ``max_side`` (or
    ``max_side`` is 0/None), else scaled down to it (Lanczos; a JPEG as a JPEG at quality 90, anything else as a
    PNG, unless that PNG is no smaller than the stored one).  Deterministic.  ``key`` (the item's content hash)
    lets an item's later passes reuse the first's resize."""
    mime = mime_of(data)
    if not max_side:
        return data, mime
    if key is not None:
        with _lock:
            hit = _views.get((key, max_side))
            if hit is not None:
                _views.move_to_end((key, max_side))
                return hit
    try:
        view = _scaled(data, max_side, mime)
    except Exception:  # an image that will not scale is sent as stored: the provider says what it thinks of it
        view = (data, mime)
    if key is not None:
        with _lock:
            _views[(key, max_side)] = view
            while len(_views) > _CACHE_SIZE:
                _views.popitem(last=False)
    return view


def _scaled(data: bytes, max_side: int, mime: str) -> tuple[bytes, str]:
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if max(w, h) <= max_side:
            return data, mime
        size = (max(1, round(w * max_side / max(w, h))), max(1, round(h * max_side / max(w, h))))
        if mime == "image/jpeg":
            im.draft("RGB" if im.mode != "L" else "L", size)  # JPEG decodes at 1/2, 1/4, 1/8 scale: 5-20x faster
        im.load()
        src = im if im.mode in ("L", "RGB", "RGBA") else im.convert("RGBA" if "A" in im.getbands()
                                                                     or "transparency" in im.info else "RGB")
        out = src.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if mime == "image/jpeg" and out.mode in ("L", "RGB"):
        out.save(buf, format="JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"
    out.save(buf, format="PNG", compress_level=6)
    if buf.tell() >= len(data):  # a palette or flat-colour PNG can grow when scaled: then the stored one is sent
        return data, mime
    return buf.getvalue(), "image/png"
