"""Images the way people see them: a photo's EXIF orientation applied, once, everywhere; any camera's format in.

Why: a phone stores its sensor's pixels and records how it was held in an EXIF tag.  Viewers, browsers and Label
Studio show the photo upright; PIL, llama.cpp's and Ollama's image loaders do not, so the student and a local teacher
would learn from a sideways photo that the person reviewing its label sees upright.  The import stores an image
upright, serving and the Python API turn an input upright before it is hashed, and the student's decoder turns any
image still carrying the tag (one stored before this rule) -- so a file has one content hash and one picture.

Formats: an iPhone saves HEIC, many Android phones and browsers AVIF or WebP; teacher APIs (OpenAI, Anthropic,
Gemini) and llama.cpp's image loader read PNG and JPEG.  :func:`storable_bytes` is the one rule every entry point
(import, serving, ``flywheel predict``, the Python API) applies, so a WebP served today and the same file imported
tomorrow are one item with one cached answer.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

try:  # HEIC/HEIF, the iPhone camera's format, through libheif (pillow-heif); Pillow reads AVIF itself
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - a dependency; without it a .heic file is reported as undecodable
    pass

ORIENTATION_TAG = 0x0112
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}  # stored and sent to the teacher as they are
PHOTO_FORMATS = {"HEIF", "AVIF"}  # lossy camera formats: stored as JPEG (as PNG a 12-megapixel photo is ~20 MB)


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


def storable_bytes(data: bytes) -> tuple[bytes, str]:
    """(bytes, suffix) of an image as it is stored, hashed and sent to a teacher: upright (:func:`upright_bytes`);
    PNG and JPEG as they are; a HEIC or AVIF photo as a JPEG at quality 95; anything else (WebP, GIF's first frame,
    BMP, TIFF, PPM) as an RGB or grayscale PNG, as imports always stored them (so their hashes, and the answers
    cached on them, stay).  Deterministic: one file, one hash.  Its full decode is the check: bytes that do not
    decode raise here, so a caller need not decode them first (a 12 MP HEIC takes 0.3 s to decode)."""
    data = upright_bytes(data)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        fmt = (im.format or "").upper()
        if fmt in KEPT_FORMATS:
            return data, KEPT_FORMATS[fmt]
        out = im if im.mode in ("L", "RGB") else im.convert("RGB")
        buf = io.BytesIO()
        if fmt in PHOTO_FORMATS:
            icc = im.info.get("icc_profile")
            out.save(buf, format="JPEG", quality=95, **({"icc_profile": icc} if icc else {}))
            return buf.getvalue(), ".jpg"
        out.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), ".png"
