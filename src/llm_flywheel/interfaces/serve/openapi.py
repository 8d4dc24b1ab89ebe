"""The request body of ``POST /v1/predict`` in OpenAPI, per modality: exactly what ``inputs.py`` accepts.

Why: a schema that offered ``text/plain`` to an image model sent schema-driven clients and fuzzers into 422s.
"""

from __future__ import annotations

from typing import Any

from llm_flywheel.interfaces.serve.inputs import ACCEPTED, IMAGE_TYPES, JSON_MODELS


def request_body(modality: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for ctype in ACCEPTED[modality]:
        if ctype == "application/json":
            content[ctype] = {"schema": JSON_MODELS[modality].model_json_schema()}
        elif ctype == "multipart/form-data":
            if modality == "image":
                schema = {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary", "description": "the image file"}}}
            else:
                schema = {"type": "object", "minProperties": 1, "properties": {
                    "text": {"type": "string", "minLength": 1},
                    "file": {"type": "string", "format": "binary", "description": "a document (.eml, .html, "
                             ".txt), read as `flywheel data add text FOLDER` reads it"}}}
            content[ctype] = {"schema": schema}
        elif ctype == "message/rfc822":
            content[ctype] = {"schema": {"type": "string", "format": "binary", "description": "a raw email"}}
        elif ctype in IMAGE_TYPES:
            content[ctype] = {"schema": {"type": "string", "format": "binary"}}
        elif ctype == "text/plain":
            content[ctype] = {"schema": {"type": "string", "minLength": 1, "pattern": r"\S"}}
    return {"requestBody": {"required": True, "content": content}}


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "undecodable input, bad JSON (also nested too deeply) or bad base64"},
    413: {"description": "body or image too large (bytes or pixels)"},
    415: {"description": "a Content-Type this model does not take"},
    422: {"description": "wrong fields for this model's modality, or an input the model cannot use"},
    503: {"description": "busy: the worker queue is full; retry after the Retry-After header's seconds"},
    504: {"description": "the teacher did not answer before the deadline (only with on_deadline='error')"},
}
