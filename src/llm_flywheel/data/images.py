"""Images the way people see them: a photo's EXIF orientation applied, once, everywhere.

Why: a phone stores its sensor's pixels and records how it was held in an EXIF tag.  Viewers, browsers and Label
Studio show the photo upright; PIL, llama.cpp's and Ollama's image loaders do not, so the student and a local teacher
would learn from a sideways photo that the person reviewing its label sees upright.  The import stores an image
upright, serving and the Python API turn an input upright before it is hashed, and the student's decoder turns any
image still carrying the tag (one stored before this rule) -- so a file has one content hash and one picture.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

ORIENTATION_TAG = 0x0112
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = as stored; 2..8 = mirrored and/or turned); 1 when there is none or it is unreadable."""
    try:
        value = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block is no reason to refuse the picture
        return 1
    return value if 1 <= value <= 8 else 1


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned the way its EXIF orientation says it is shown; ``im`` itself when nothing needs turning."""
    if orientation(im) == 1:
        return im
    return ImageOps.exif_transpose(im)


def upright_bytes(data: bytes) -> bytes:
    """``data`` itself unless its EXIF orientation turns it; then the upright picture encoded once (a JPEG as JPEG at
    quality 95, anything else as PNG) with its colour profile and without the EXIF block.  Deterministic: the same
    file always gives the same bytes, so its content hash (the item's identity and the answer cache's key) is
    stable.  Call it on bytes already checked to decode (and not to be a pixel bomb): it decodes the whole image.
    A picture that will not turn is returned as it is, never refused for that."""
    with Image.open(io.BytesIO(data)) as im:
        if orientation(im) == 1:
            return data
        fmt = (im.format or "").upper()
        icc = im.info.get("icc_profile")
        try:
            im.load()
            turned = ImageOps.exif_transpose(im)
            buf = io.BytesIO()
            extra = {"icc_profile": icc} if icc else {}
            if fmt == "JPEG" and turned.mode in ("L", "RGB", "CMYK"):
                turned.save(buf, format="JPEG", quality=95, **extra)
            else:
                if turned.mode not in PNG_MODES:
                    turned = turned.convert("RGBA" if "A" in turned.getbands() else "RGB")
                turned.save(buf, format="PNG", optimize=False, compress_level=6, **extra)
        except Exception:  # a picture that decodes but will not turn (an odd mode, a bad profile) is kept as sent
            return data
    return buf.getvalue()
