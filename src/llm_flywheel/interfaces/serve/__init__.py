"""The HTTP service: the calibrated cascade behind ``POST /v1/predict``, with health, readiness, metrics and docs.

Why these choices:
- **Loopback by default**, no auth: the service is meant to sit behind your own gateway.
- **Every bad input is a 4xx** with a message naming the fix, counted in ``flywheel_request_errors_total``; the
  body is read in chunks and refused with 413 past ``max_bytes``; images over ``max_image_pixels`` are refused
  from their header, before decoding.
- **Nothing heavy on the event loop**: parsing, decoding and the student run on a bounded worker pool (503 with
  ``Retry-After`` when its queue is full); large images decode on their own pool, so a pixel bomb waits only
  behind other large images and ``/healthz`` always answers.
- **A deadline and a circuit breaker on the teacher**: a deferred request waits at most ``deadline_s`` and then
  gets the student's answer marked ``student_fallback`` (or a 504); a teacher that keeps failing is not called for
  a cool-down.  A teacher answer is stored before it is used, so the same content is never paid for twice.
- **Feedback**: answered requests are logged to ``cascade_log`` in batches (sampled by ``log_sample_rate``); inputs up
  to ``max_logged_payload_bytes`` are kept under ``exports/served/``; retention (off unless configured) deletes by
  age, rows and bytes the served traffic only, never the rows of store items (the wheel's feedback).
- **Replicas** (``replicas.py``, the optional ``[ray]`` extra): the same app on Ray Serve replicas behind Ray's HTTP
  proxy, each opening the workspace itself; they share the store's cache of teacher answers, and a claim in the
  store makes one of them pay for new content while the others wait for its stored answer.
- ``/healthz`` is liveness, ``/readyz`` readiness (model loaded, store writable, not draining; the teacher's breaker
  state is reported but does not fail readiness: every replica shares the teacher, and the fallback still answers).
"""

from __future__ import annotations

from llm_flywheel.interfaces.serve.app import PredictResponse, ServeState, create_app
from llm_flywheel.interfaces.serve.config import DEFAULT_MAX_BYTES, DEFAULT_MAX_LOGGED_PAYLOAD_BYTES, ServeConfig
from llm_flywheel.interfaces.serve.inputs import HTTPProblem, ImageJSON, TabularJSON, TextJSON
from llm_flywheel.interfaces.serve.metrics import Metrics, parse_prometheus
from llm_flywheel.interfaces.serve.retention import RetentionReport, apply_retention
from llm_flywheel.interfaces.serve.server import LOOPBACK, is_loopback, serve_forever

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_LOGGED_PAYLOAD_BYTES", "HTTPProblem", "ImageJSON", "LOOPBACK", "Metrics",
           "PredictResponse", "RetentionReport", "ServeConfig", "ServeState", "TabularJSON", "TextJSON",
           "apply_retention", "create_app", "is_loopback", "parse_prometheus", "serve_forever"]
