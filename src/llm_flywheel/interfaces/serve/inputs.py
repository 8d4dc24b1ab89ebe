"""The request body as one input of the task's modality, or an :class:`HTTPProblem` that says what to send.

Why exactly these shapes: what is accepted here is what the OpenAPI schema (``openapi.py``) promises for the
modality -- an image model takes an image (multipart ``file``, JSON ``image_base64`` or raw image bytes), a text
model a text (JSON ``text``, ``text/plain`` or multipart ``text``), a tabular model JSON ``features``.  Everything
else is a 4xx naming the fix; nothing here may raise anything but :class:`HTTPProblem` (a deeply nested JSON body
used to escape as a ``RecursionError`` and a 500).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from llm_flywheel.data.base import row_json
from llm_flywheel.data.documents import NotTextError, document_text
from llm_flywheel.data.images import KEPT_FORMATS, orientation, storable_bytes
from llm_flywheel.data.tabular import feature_row
from llm_flywheel.data.text import join_text

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/heic", "image/heif",
               "image/avif", "application/octet-stream")
ACCEPTED: dict[str, tuple[str, ...]] = {
    "image": ("multipart/form-data", "application/json", *IMAGE_TYPES),
    "text": ("application/json", "text/plain", "multipart/form-data", "message/rfc822"),
    "tabular": ("application/json",),
}
HINT = {"image": "an image (multipart 'file', JSON image_base64, or raw image/png|jpeg|heic|avif|webp|gif|bmp bytes)",
        "text": 'JSON {"text": ...} (or {"fields": {"column": ...}}), text/plain, a multipart "text" field, or a '
                'document as a file (multipart "file", message/rfc822): read as `flywheel data add text` reads it',
        "tabular": 'JSON {"features": [...]} in column order, or {"features": {"column": value, ...}}'}


class HTTPProblem(Exception):
    """A request we refuse, with the status code and a message that says what to send instead."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class ImageJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_base64: str = Field(description="an image (PNG/JPEG/GIF/BMP/WebP) as base64, or a data: URL")


class TextJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, min_length=1, description="the text to classify")
    fields: dict[str, str | None] | None = Field(
        default=None, description="instead of text: the row's text columns by name, for a dataset imported from "
                                  "several (--text-column subject,body); joined as the import joined them")

    @model_validator(mode="after")
    def _one_of(self) -> "TextJSON":
        if (self.text is None) == (self.fields is None):
            raise ValueError('give "text" or "fields", one of them')
        return self


class TabularJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: list[float | str | None] | dict[str, float | str | None] = Field(
        min_length=1, description="the feature values in the dataset's column order, or by column name (null: "
                                  "missing; a categorical column's value as text)")


JSON_MODELS: dict[str, type[BaseModel]] = {"image": ImageJSON, "text": TextJSON, "tabular": TabularJSON}


@dataclass
class RawInput:
    """One input: ``content`` is what the student reads (bytes, then a decoded image; a str; a list of floats),
    ``raw`` the bytes that are hashed and kept as feedback."""

    kind: str
    content: Any
    raw: bytes
    ext: str

    def __post_init__(self) -> None:
        self.hash = hashlib.sha256(self.raw).hexdigest()
        self.unseen: dict[str, str] = {}  # a table's categories the model never saw (``serve.unseen``)


def content_type(request: Request, body: bytes) -> str:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "" and body.lstrip()[:1] in (b"{", b"["):
        return "application/json"
    return ctype


def check_content_type(ctype: str, modality: str) -> None:
    if ctype not in ACCEPTED[modality]:
        raise HTTPProblem(415, f"unsupported Content-Type {ctype or '(none)'!r} for this {modality} model; "
                               f"send {', '.join(ACCEPTED[modality])}: {HINT[modality]}")


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 once it passes ``max_bytes`` (before it is all in memory)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise HTTPProblem(400, "Content-Length is not a number") from None
        if n > max_bytes:
            raise HTTPProblem(413, f"request body is {n:,} bytes; the limit is {max_bytes:,} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise HTTPProblem(413, f"request body exceeds the limit of {max_bytes:,} bytes")
    return bytes(buf)


def extract(body: bytes, ctype: str, modality: str, max_bytes: int, columns: Sequence[str] = (),
            categorical: Sequence[str] = ()) -> RawInput:
    """A non-multipart body as an input (CPU work: JSON, base64; runs in the worker pool).  ``columns``: a tabular
    model's feature names, for features sent by name; ``categorical``: those whose values are categories."""
    if ctype == "application/json":
        return _parse_json(body, modality, max_bytes, columns, categorical)
    if ctype == "text/plain":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPProblem(400, "text/plain body is not valid UTF-8") from None
        return _text(text)
    if ctype == "message/rfc822":
        return _document(body, "message.eml")
    return RawInput("image", body, body, _image_ext(body))


def _text(text: str) -> RawInput:
    if not text.strip():
        raise HTTPProblem(422, "text is empty")
    return RawInput("text", text, text.encode("utf-8", "surrogatepass"), ".txt")


def _document(data: bytes, name: str) -> RawInput:
    """A document file (an email, an HTML page, a text file) reduced to its text by the rule the folder import and
    ``flywheel predict`` use (:func:`~llm_flywheel.data.documents.document_text`): a raw email posted here is the
    same input, with the same hash and cached answer, as its imported copy."""
    try:
        text = document_text(data, name)[0]
    except NotTextError as e:
        raise HTTPProblem(422, f"{name}: {e}; this text model takes a text document (an email, HTML, plain "
                               "text)") from None
    return _text(text)


def load_json(body: bytes) -> Any:
    """The body as JSON, or a 400 that says why (a deeply nested body included: it used to escape as a 500)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPProblem(400, f"body is not valid JSON ({e})") from None
    except RecursionError:
        raise HTTPProblem(400, "JSON body is nested too deeply; send a flat object") from None


def _parse_json(body: bytes, modality: str, max_bytes: int, columns: Sequence[str] = (),
                categorical: Sequence[str] = ()) -> RawInput:
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise HTTPProblem(422, f"JSON body must be an object; this {modality} model takes {HINT[modality]}")
    return from_json_object(obj, modality, max_bytes, columns, categorical)


def from_json_object(obj: dict[str, Any], modality: str, max_bytes: int, columns: Sequence[str] = (),
                     categorical: Sequence[str] = ()) -> RawInput:
    """One input from its JSON object (a request body, or one element of a batch's ``inputs``)."""
    try:
        req = JSON_MODELS[modality].model_validate(obj)
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(str(x) for x in er.get('loc', ())) or 'body'}: {er.get('msg')}"
                           for er in e.errors())
        raise HTTPProblem(422, f"invalid request: {detail} (this {modality} model takes {HINT[modality]})") from None
    if isinstance(req, ImageJSON):
        data = _b64(req.image_base64, max_bytes)
        return RawInput("image", data, data, _image_ext(data))
    if isinstance(req, TextJSON):
        return _text(req.text if req.fields is None else _joined(req.fields, columns))
    assert isinstance(req, TabularJSON)
    try:
        feats = feature_row(_in_column_order(req.features, columns), tuple(columns), tuple(categorical))
    except ValueError as e:
        raise HTTPProblem(422, str(e)) from None
    return RawInput("tabular", feats, row_json(feats).encode(), ".json")  # hashed as `data add` stores the row


def _joined(fields: dict[str, str | None], columns: Sequence[str]) -> str:
    """A row's text columns as the import joined them (:func:`llm_flywheel.data.text.join_text`): the same row,
    the same hash, the same cached answer."""
    cols = tuple(columns) or ("text",)
    unknown = sorted(set(fields) - set(cols))
    if unknown:
        raise HTTPProblem(422, f"fields {unknown} are not this dataset's text columns ({', '.join(cols)})")
    return join_text(fields, cols) or ""


def _in_column_order(features: list[float | str | None] | dict[str, float | str | None],
                     columns: Sequence[str]) -> list[float | str | None]:
    """Features sent by name, put in the model's column order; a list as it came."""
    if isinstance(features, list):
        if columns and len(features) != len(columns):
            raise HTTPProblem(422, f"this model reads {len(columns)} features in the order {', '.join(columns)}; got "
                                   f"{len(features)} (send null for a missing value, or the features by name)")
        return features
    if not columns:
        raise HTTPProblem(422, "this model was trained without column names: send features as a list in column order")
    missing, unknown = [c for c in columns if c not in features], sorted(set(features) - set(columns))
    if missing or unknown:
        raise HTTPProblem(422, "features by name must name every column the model reads: "
                               + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                              f"unknown {', '.join(unknown)}" if unknown else "") if part)
                               + f" (columns: {', '.join(columns)})")
    return [features[c] for c in columns]


def _b64(s: str, max_bytes: int) -> bytes:
    if s.startswith("data:"):
        head, sep, s = s.partition(",")
        if not sep or ";base64" not in head:
            raise HTTPProblem(400, "image_base64 data: URL must be of the form data:image/png;base64,...")
    if len(s) * 3 // 4 > max_bytes:
        raise HTTPProblem(413, f"decoded image would exceed the limit of {max_bytes:,} bytes")
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPProblem(400, "image_base64 is not valid base64") from None


IMAGE_FORMATS = "PNG, JPEG, HEIC, AVIF, WebP, GIF or BMP"


def _image_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    return ".img"


def open_image(data: bytes, max_pixels: int) -> Any:
    """The image with only its header read (no decoding yet): 400 for bytes that are no image, 413 for more than
    ``max_pixels`` pixels -- a pixel bomb is refused before any of it is decoded."""
    if not data:
        raise HTTPProblem(400, "the image is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise HTTPProblem(400, f"cannot decode the image ({type(e).__name__}); send a {IMAGE_FORMATS} file") \
            from None
    w, h = im.size
    if w * h > max_pixels:
        raise HTTPProblem(413, f"image is {w}x{h} pixels; the limit is {max_pixels:,} pixels (scale it down, or "
                               "start the service with a larger `flywheel serve --max-image-pixels`)")
    return im


def decode_image(inp: RawInput, im: Any) -> None:
    """Decode ``inp``'s opened image (first frame) into ``inp.content``; 400 for bytes that do not decode.  A photo
    that needs turning (EXIF orientation) or is not PNG or JPEG (HEIC, AVIF, WebP, ...) becomes what the import
    stores (``data.images.storable_bytes``), raw bytes and hash included: the teacher gets a picture it reads,
    upright, and its cached answer and the served log name the item ``data add-served`` will make of it.  Such a
    picture is decoded by ``storable_bytes`` only (a 12 MP HEIC was decoded here first: 0.3 s more a request)."""
    if orientation(im) != 1 or (im.format or "").upper() not in KEPT_FORMATS:
        try:
            raw, ext = storable_bytes(inp.raw)
        except Exception:  # does not decode (a 400 below), or decodes but will not re-encode: kept as sent
            pass
        else:
            inp.raw, inp.ext, inp.hash = raw, ext, hashlib.sha256(raw).hexdigest()
            im = Image.open(io.BytesIO(raw))  # the student reads the stored picture (JPEG is lossy)
    try:
        im.load()
    except Exception as e:
        raise HTTPProblem(400, f"cannot decode the image ({type(e).__name__}); send a {IMAGE_FORMATS} file") from None
    inp.content = im


async def parse_multipart(request: Request, body: bytes, modality: str) -> RawInput:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form()
    except Exception as e:
        raise HTTPProblem(400, f"cannot parse the multipart form ({type(e).__name__})") from None
    try:
        if modality == "image":
            for key in ("file", "image"):
                f = form.get(key)
                if f is not None and not isinstance(f, str):
                    data = await f.read()
                    return RawInput("image", data, data, _image_ext(data))
        else:
            v, f = form.get("text"), form.get("file")
            if isinstance(v, str):
                return _text(v)
            if f is not None and not isinstance(f, str):
                return _document(await f.read(), f.filename or "document")
    finally:
        await form.close()
    field = "'file' field (an image)" if modality == "image" else "'text' field or a 'file' (a document)"
    raise HTTPProblem(422, f"multipart form needs a {field} for this {modality} model")
