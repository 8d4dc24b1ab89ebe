"""The simulated teacher's OpenAI-style Batch API: ``/v1/files`` and ``/v1/batches``.

Why: batch labelling (half price, hours of latency) must be tested end to end without a provider.  The lifecycle
follows OpenAI's: ``validating`` -> ``in_progress`` (``request_counts`` grow with time) -> ``finalizing`` ->
``completed``, with an output file (one line per answered request, keyed by ``custom_id``) and an error file
(lines the server failed, or that an ``expired`` batch never reached).  A batch can also fail validation
(``failed``, with ``errors``).  Time runs on the wall clock from creation and the state advances whenever the
batch is read, so a client that was killed and comes back later sees what a real provider would show it.
Every line is answered by the same :class:`~llm_flywheel.teachers.simulated.chat.ChatSim` as online requests,
at ``SimConfig.batch_price_ratio`` of the online price.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_flywheel.teachers.simulated.chat import ChatSim
from llm_flywheel.teachers.simulated.errors import SimConfig

_ENDED = ("completed", "failed", "expired", "cancelled")  # a batch in one of these never changes again

ENDPOINT = "/v1/chat/completions"


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any]
    ordinal: int  # 1 = the first batch this server created
    created_at: float
    status: str = "validating"
    lines: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    done: int = 0
    failed: int = 0
    stamps: dict[str, float] = field(default_factory=dict)


class BatchSim:
    """Files and batches kept in memory (the server's lifetime is the test's)."""

    def __init__(self, chat: ChatSim, cfg: SimConfig) -> None:
        self.chat, self.cfg = chat, cfg
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, _Batch] = {}
        self.lock = threading.RLock()

    # -- files ----------------------------------------------------------------------------------------------
    def add_file(self, data: bytes, purpose: str, filename: str) -> dict[str, Any]:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        with self.lock:
            self.files[fid] = {"data": data, "purpose": purpose, "filename": filename, "created_at": int(time.time())}
        return self.file_object(fid)

    def file_object(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {"id": fid, "object": "file", "bytes": len(f["data"]), "created_at": f["created_at"],
                "filename": f["filename"], "purpose": f["purpose"]}

    def file_content(self, fid: str) -> bytes | None:
        with self.lock:
            f = self.files.get(fid)
            return None if f is None else f["data"]

    # -- batches --------------------------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fid = body.get("input_file_id")
        with self.lock:
            if fid not in self.files:
                return 400, {"error": {"message": f"input_file_id {fid!r} not found", "type": "invalid_request_error"}}
            if body.get("endpoint") != ENDPOINT:
                return 400, {"error": {"message": f"endpoint must be {ENDPOINT}", "type": "invalid_request_error"}}
            meta = body.get("metadata") or {}
            b = _Batch(id=f"batch_{uuid.uuid4().hex[:24]}", input_file_id=fid, endpoint=ENDPOINT,
                       completion_window=str(body.get("completion_window") or "24h"),
                       metadata=meta if isinstance(meta, dict) else {}, ordinal=len(self.batches) + 1,
                       created_at=time.time())
            self.batches[b.id] = b
            self.chat.count("batches_created")
            return 200, self.batch_object(b.id)

    def list(self) -> dict[str, Any]:
        with self.lock:
            data = [self.batch_object(bid) for bid in reversed(list(self.batches))]
        return {"object": "list", "data": data, "has_more": False}

    def cancel(self, bid: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            b = self.batches.get(bid)
            if b is None:
                return 404, {"error": {"message": f"no batch {bid}"}}
            self._advance(b)
            if b.status in _ENDED:
                return 400, {"error": {"message": f"cannot cancel a batch that is {b.status}",
                                       "type": "invalid_request_error"}}
            if b.status != "cancelling":  # as OpenAI's: "cancelling", then "cancelled" with the lines answered so far
                b.status = "cancelling"
                b.stamps["cancelling_at"] = time.time()
            return 200, self.batch_object(bid)

    def get(self, bid: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if bid not in self.batches:
                return 404, {"error": {"message": f"no batch {bid}", "type": "invalid_request_error"}}
            return 200, self.batch_object(bid)

    def batch_object(self, bid: str) -> dict[str, Any]:
        b = self.batches[bid]
        self._advance(b)
        n = len(b.lines)
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": {"data": b.errors} if b.errors else None,
            "input_file_id": b.input_file_id, "completion_window": b.completion_window, "status": b.status,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "created_at": int(b.created_at),
            **{k: int(v) for k, v in b.stamps.items()}, "metadata": b.metadata,
            "request_counts": {"total": n, "completed": b.done, "failed": b.failed},
        }

    # -- the lifecycle --------------------------------------------------------------------------------------
    def _advance(self, b: _Batch) -> None:
        """Move the batch along the wall clock: validate at 10 % of ``batch_latency_s``, answer lines in order
        through 90 %, then write the output and error files."""
        if b.status in _ENDED:
            return
        if b.status == "cancelling":  # settles a moment later (OpenAI: up to 10 minutes)
            if time.time() - b.stamps["cancelling_at"] >= min(0.2, 0.1 * self.cfg.batch_latency_s):
                self._finish(b, "cancelled")
            return
        span = self.cfg.batch_latency_s
        frac = 1.0 if span <= 0 else (time.time() - b.created_at) / span
        if b.status == "validating":
            if frac < 0.1:
                return
            if not self._validate(b):
                return
        if b.status == "in_progress":
            expire = b.ordinal in self.cfg.expire_batches
            share = min(1.0, max(0.0, (frac - 0.1) / 0.8))
            target = int(len(b.lines) * (min(share, 0.5) if expire else share))
            while b.done + b.failed < target:
                self._run_line(b, b.lines[b.done + b.failed])
            if expire and frac >= 0.9:
                self._finish(b, "expired")
            elif share >= 1.0:
                b.status = "finalizing"
                b.stamps["finalizing_at"] = time.time()
        if b.status == "finalizing" and frac >= 1.0:
            self._finish(b, "completed")

    def _validate(self, b: _Batch) -> bool:
        raw = self.files[b.input_file_id]["data"].decode("utf-8", "replace")
        errors: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, text in enumerate(raw.splitlines(), start=1):
            if not text.strip():
                continue
            try:
                req = json.loads(text)
            except json.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "line": i, "message": "line is not JSON"})
                continue
            cid = req.get("custom_id") if isinstance(req, dict) else None
            if not cid or cid in seen or req.get("url") != ENDPOINT or not isinstance(req.get("body"), dict):
                errors.append({"code": "invalid_request", "line": i,
                               "message": "each line needs a unique custom_id, method POST, url "
                                          f"{ENDPOINT} and a body"})
                continue
            seen.add(cid)
            lines.append(req)
        if b.ordinal in self.cfg.fail_batches:
            errors.append({"code": "simulated_failure", "line": None, "message": "batch failed validation (simulated)"})
        b.stamps["in_progress_at"] = time.time()
        if errors or not lines:
            b.errors = errors or [{"code": "empty_file", "line": None, "message": "no request lines"}]
            b.status = "failed"
            b.stamps["failed_at"] = time.time()
            return False
        b.lines, b.status = lines, "in_progress"
        return True

    def _run_line(self, b: _Batch, req: dict[str, Any]) -> None:
        self.chat.count("batch_lines")
        r_fail, r_bad = self.chat.noise.random(), self.chat.noise.random()
        if r_fail < self.cfg.batch_line_failure_rate:
            req["_result"] = (500, {"error": {"message": "The server had an error processing this request (simulated)",
                                              "type": "server_error"}})
        else:
            req["_result"] = self.chat.complete(req["body"], r_bad, price_ratio=self.cfg.batch_price_ratio)
        if req["_result"][0] == 200:
            b.done += 1
        else:
            b.failed += 1

    def _finish(self, b: _Batch, status: str) -> None:
        out, err = [], []
        for req in b.lines:
            res = req.get("_result")
            rid = f"batch_req_{uuid.uuid4().hex[:16]}"
            if res is None and status == "cancelled":  # a cancelled batch never reached it
                err.append({"id": rid, "custom_id": req["custom_id"], "response": None,
                            "error": {"code": "batch_cancelled", "message": "This request was not executed because "
                                      "the batch was cancelled."}})
            elif res is None:  # an expired batch never reached it
                err.append({"id": rid, "custom_id": req["custom_id"], "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed before "
                                      "the completion window expired."}})
            elif res[0] == 200:
                out.append({"id": rid, "custom_id": req["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": res[1]}})
            else:
                err.append({"id": rid, "custom_id": req["custom_id"], "error": None,
                            "response": {"status_code": res[0], "request_id": rid, "body": res[1]}})
        if status in ("expired", "cancelled"):
            b.failed += sum(1 for r in b.lines if r.get("_result") is None)
        for rows, attr in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                setattr(b, attr, self.add_file(data, "batch_output", f"{b.id}_{attr[:-8]}.jsonl")["id"])
        b.status = status
        b.stamps[f"{status}_at"] = time.time()
