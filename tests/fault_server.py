"""A purpose-built, scriptable OpenAI-compatible server on 127.0.0.1 for fault tests.

Each request takes the next action from ``script`` (then ``default``).  Actions are callables
``action(handler, body) -> None`` built with the helpers below: a status with headers, a slow answer (for client
timeouts), a dropped connection, or a normal completion.  Every request is recorded (path, headers, JSON body).

The refusal helpers reproduce what real servers send (bodies copied from their sources): OpenAI-style 400 / 422,
llama-cpp-python's HTTP 500 for ``json_schema`` (a pydantic error naming ``response_format``), a server that
silently ignores the format and answers in prose, llama.cpp's "Context size has been exceeded" 500 and
llama-cpp-python's ``context_length_exceeded`` 400, and replies cut off at ``max_tokens`` (``finish_reason:
"length"``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ports import free_port as free_port  # re-exported: tests that start a server import it from here


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


def completion(content: str | None, *, usage: dict | None = None, logprobs: list | None = None,
               finish_reason: str = "stop", model: str = "fault-model") -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "x", "object": "chat.completion", "model": model, "choices": [choice],
            "usage": usage or {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}}


def prompt_tokens(body: dict) -> int:
    """A prompt's tokens as a server would count them, roughly (4 characters a token, at least 300)."""
    n = sum(len(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m.get("content"), str))
    return max(300, n // 4)


def ok(content: str = '{"label": "bar", "confidence": 0.9, "reason": "r"}', **kw: Any) -> Action:
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        usage = kw.get("usage") or {"prompt_tokens": prompt_tokens(body), "completion_tokens": 20}
        _send(h, 200, completion(content, **{**kw, "usage": usage}))
    return act


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


def rf_type(body: dict) -> str | None:
    """The mode a request asks for: json_schema, json_object_schema (llama.cpp's native form), json_object, None."""
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object" and "schema" in rf:
        return "json_object_schema"
    return rf.get("type")


def user_text(body: dict) -> str:
    """The user message's text (text items are sent as a plain string)."""
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


# the exact message llama-cpp-python 0.3.36's server sends (HTTP 500) for response_format type json_schema
LLAMA_CPP_PYTHON_500 = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
                        "'ctx': {'expected': \"'text' or 'json_object'\"}}\n")


def refuse_modes(refused: dict[str, tuple[int, Any]], then: Action | None = None, *, prose_for: tuple[str, ...] = (),
                 latency: float = 0.0) -> Action:
    """A server that refuses some response_format modes (mode -> (status, body)), answers others in prose (the
    format silently ignored, ``prose_for``), and otherwise runs ``then``; ``latency`` keeps requests in flight."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        if latency:
            time.sleep(latency)
        mode = rf_type(body)
        if mode in refused:
            code, err = refused[mode]
            _send(h, code, err)
        elif mode in prose_for:
            _send(h, 200, completion("The image shows a bar, I think."))
        else:
            (then or ok())(h, body)
    return act


def llama_cpp_python(then: Action | None = None, latency: float = 0.0) -> Action:
    """llama-cpp-python's server: HTTP 500 for ``json_schema``; json_object with or without a schema works."""
    err = {"error": {"message": LLAMA_CPP_PYTHON_500, "type": "internal_server_error", "param": None, "code": None}}
    return refuse_modes({"json_schema": (500, err)}, then, latency=latency)


def context_exceeded_above(max_chars: int, then: Action | None = None, style: str = "llama.cpp") -> Action:
    """Refuse a user message longer than ``max_chars`` like llama.cpp's C++ server (HTTP 500 "Context size has been
    exceeded.") or llama-cpp-python (HTTP 400 ``context_length_exceeded`` with the token counts)."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        n = len(user_text(body))
        if n <= max_chars:
            (then or ok())(h, body)
        elif style == "llama.cpp":
            _send(h, 500, {"error": {"code": 500, "message": "Context size has been exceeded.", "type": "server_error"}})
        else:
            mt = body.get("max_tokens") or 0
            _send(h, 400, {"error": {"message": (
                f"This model's maximum context length is {max_chars // 4 + 200 + mt} tokens. However, you requested "
                f"{n // 4 + 200 + mt} tokens ({n // 4 + 200} in the messages, {mt} in the completion). Please reduce "
                f"the length of the messages or completion."), "type": "invalid_request_error", "param": "messages",
                "code": "context_length_exceeded"}})
    return act


def ollama_context(num_ctx: int = 4096, good: str = '{"label": "spam", "confidence": 0.9}',
                   guess: str = '{"label": "ham", "confidence": 0.9}') -> Action:
    """Ollama at its default context: a prompt longer than ``num_ctx`` tokens (4 characters a token here) is cut
    to half the context without an error -- its instructions lost, the answer a ``guess`` -- and ``usage``
    reports the tokens it kept; a prompt that fits gets the ``good`` answer."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        n = prompt_tokens(body)
        took = n if n <= num_ctx else num_ctx // 2 + 2
        _send(h, 200, completion(good if n <= num_ctx else guess,
                                 usage={"prompt_tokens": took, "completion_tokens": 12, "total_tokens": took + 12}))
    return act


def cut_off(content: str, **kw: Any) -> Action:
    """A reply that ran into ``max_tokens``: ``finish_reason: "length"`` and ``completion_tokens`` = max_tokens."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        mt = int(body.get("max_tokens") or 300)
        _send(h, 200, completion(content, finish_reason="length",
                                 usage={"prompt_tokens": 300, "completion_tokens": mt, "total_tokens": 300 + mt}, **kw))
    return act


def openai_reasoning_model(thought: int = 100, content: str = '{"label": "bar", "confidence": 0.9}') -> Action:
    """What OpenAI's reasoning models (gpt-5.x, o-series) answer on Chat Completions, bodies as the API sends them:
    HTTP 400 to ``max_tokens`` (they take ``max_completion_tokens``) and to any temperature but 1, and ``thought``
    hidden reasoning tokens that count against ``max_completion_tokens`` -- a limit the thinking uses up is an
    empty reply with ``finish_reason: "length"``."""
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        if "max_tokens" in body:
            return _send(h, 400, {"error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                           "'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens",
                "code": "unsupported_parameter"}})
        t = body.get("temperature")
        if t is not None and t != 1:
            return _send(h, 400, {"error": {
                "message": f"Unsupported value: 'temperature' does not support {t} with this model. Only the default "
                           "(1) value is supported.", "type": "invalid_request_error", "param": "temperature",
                "code": "unsupported_value"}})
        room, answer = int(body.get("max_completion_tokens") or 1_000_000), 20
        used = min(room, thought + answer)
        usage = {"prompt_tokens": 300, "completion_tokens": used, "total_tokens": 300 + used,
                 "completion_tokens_details": {"reasoning_tokens": min(room, thought)}}
        _send(h, 200, completion(content if room >= thought + answer else "",
                                 finish_reason="stop" if room >= thought + answer else "length", usage=usage))
    return act


def inline_thinker(thought: int = 100, content: str = '{"label": "bar", "confidence": 0.9}',
                   draft: str = '{"label": "foo"}') -> Action:
    """A reasoning model served without a reasoning parser (Qwen3 or DeepSeek-R1 through Ollama, vLLM or
    llama.cpp): ``thought`` tokens of thinking inside ``<think>`` in the reply itself, a draft label among them, then
    the answer; ``usage`` itemises nothing.  A ``max_tokens`` the thinking uses up cuts the reply off mid-thought."""
    words = (f"Let me think. A draft answer would be {draft} but let me check. " + "hmm " * thought).split(" ")
    words = words[:thought]
    def act(h: BaseHTTPRequestHandler, body: dict) -> None:
        room = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1_000_000)
        if room < thought + 20:
            text, used, finish = "<think>" + " ".join(words[:room]), room, "length"
        else:
            text, used, finish = "<think>" + " ".join(words) + "</think>\n" + content, thought + 20, "stop"
        _send(h, 200, completion(text, finish_reason=finish,
                                 usage={"prompt_tokens": 300, "completion_tokens": used, "total_tokens": 300 + used}))
    return act


class FaultServer:
    def __init__(self, script: list[Action] | None = None, default: Action | None = None, *,
                 props: dict | None = None, slots: Callable[[], list] | None = None,
                 models: list[dict] | None = None) -> None:
        """``props``: what ``GET /props`` answers (llama.cpp's server describes its slots and context there);
        ``None``: 404, like servers that have no such route.  ``models``: the ``GET /v1/models`` list (default one
        model, ``fault-model``).  ``slots``: called for each ``GET /slots`` (llama.cpp's
        work in progress), ``None``: 404.  GET paths are recorded in ``gets``."""
        self.props = props
        self.slots = slots
        self.models = models
        self.gets: list[str] = []
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
                with outer.lock:
                    outer.gets.append(self.path)
                if self.path == "/props":
                    _send(self, *((200, outer.props) if outer.props is not None else (404, {"error": "not found"})))
                    return
                if self.path == "/slots":
                    _send(self, *((200, outer.slots()) if outer.slots is not None else (404, {"error": "not found"})))
                    return
                _send(self, 200, {"object": "list", "data": outer.models or [{"id": "fault-model"}]})

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
