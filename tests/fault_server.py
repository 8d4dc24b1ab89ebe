"""A purpose-built, scriptable OpenAI-compatible server on 127.0.0.1 for fault tests.

Each request takes the next action from ``script`` (then ``default``).  Actions are callables
``action(handler, body) -> None`` built with the helpers below: a status with headers, a slow answer (for client
timeouts), a dropped connection, or a normal completion.  Every request is recorded (path, headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = Callable[[BaseHTTPRequestHandler, dict], None]


def _send(h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    try:
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def completion(content: str | None, *, usage: dict | None = None, logprobs: list | None = None) -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "x", "object": "chat.completion", "model": "fault-model", "choices": [choice],
            "usage": usage or {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}}


def ok(content: str = '{"label": "bar", "confidence": 0.9, "reason": "r"}', **kw: Any) -> Action:
    return lambda h, body: _send(h, 200, completion(content, **kw))


def status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    return lambda h, b: _send(h, code, body if body is not None else {"error": {"message": f"status {code}"}}, headers)


def slow(seconds: float, then: Action | None = None) -> Action:
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        time.sleep(seconds)
        (then or ok())(h, body)
    return act


def drop() -> Action:
    """Close the connection without any response (the client sees a protocol/connection error)."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        h.close_connection = True
        try:
            h.connection.shutdown(2)
        except OSError:
            pass
    return act


def refuse_structured(then: Action | None = None) -> Action:
    """400 for any ``response_format`` (like an older server), otherwise ``then``."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        rf = body.get("response_format")
        if rf:
            _send(h, 400, {"error": {"message": f"response_format type {rf.get('type')} is not supported"}})
        else:
            (then or ok())(h, body)
    return act


class FaultServer:
    def __init__(self, script: list[Action] | None = None, default: Action | None = None) -> None:
        self.script: deque[Action] = deque(script or [])
        self.default = default or ok()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {}
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = outer.script.popleft() if outer.script else outer.default
                action(self, body)

            def do_GET(self) -> None:
                _send(self, 200, {"object": "list", "data": [{"id": "fault-model"}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
