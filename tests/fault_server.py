"""A real local HTTP server speaking the OpenAI chat-completions protocol, scriptable per request.

Used by tests/test_backends.py to drive :class:`rlkd.backends.OpenAIBackend` through the failures a real
server produces: delays, dropped connections, 429 with Retry-After, 500, 400, malformed and truncated
bodies. Each incoming request takes the next :class:`Action` from the script (then ``default``). The
server records what it saw (request bodies, Authorization headers) and the largest number of requests
it had in flight at once. ``context_tokens=N`` makes it behave like a server with an N-token context:
a request whose messages hold more than N tokens (counted as characters / 4) gets HTTP 400 with the
message vLLM and OpenAI give ("This model's maximum context length is N tokens..."), before any action.

    with FaultServer([Action("500"), Action("ok")]) as server:
        backend = OpenAIBackend(server.base_url, "m", max_retries=2)
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

KINDS = ("ok", "drop", "429", "500", "400", "401_echo", "malformed", "truncated", "no_choices")


@dataclass
class Action:
    """What the server does with one request: wait ``delay`` seconds, then ``kind``.

    ok: a normal answer (``text``, default "reply to: <last user message>"), with ``n`` choices unless
    ``ignore_n``; drop: close the connection without a response; 429: rate limited, with ``retry_after``
    as the Retry-After header if given; 500 / 400: an error body; 401_echo: an authentication error whose
    message quotes the request's Authorization header, as some proxies do; malformed: status 200 with a body that
    is not JSON; truncated: status 200 announcing more bytes than it sends; no_choices: valid JSON
    without choices.
    """

    kind: str = "ok"
    delay: float = 0.0
    retry_after: str | None = None
    text: str | None = None
    ignore_n: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown action {self.kind!r}; known: {KINDS}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default listen backlog (5) resets connections of a burst of clients


class FaultServer:
    """Start with ``with FaultServer(script) as server`` (or :meth:`start` / :meth:`stop`)."""

    def __init__(self, script: Iterable[Action] = (), default: Action | Callable[[dict], Action] = Action("ok"),
                 context_tokens: int | None = None):
        self.script = list(script)
        self.default = default
        self.context_tokens = context_tokens
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # request bodies, in arrival order
        self.auth_headers: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> "FaultServer":
        handler = _make_handler(self)
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        """Requests received so far."""
        with self.lock:
            return len(self.requests)

    # ---- per request
    def _next_action(self, body: dict) -> Action:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        return self.default(body) if callable(self.default) else self.default


def _reply_body(body: dict, action: Action) -> dict[str, Any]:
    messages = body.get("messages") or []
    last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    text = action.text if action.text is not None else f"reply to: {last_user}"
    n = 1 if action.ignore_n else int(body.get("n") or 1)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text if n == 1 else f"{text} #{i}"},
             "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()) * n,
                  "total_tokens": prompt_tokens + len(text.split()) * n},
    }


def _make_handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # silence stderr
            pass

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

        def _stream(self, body: dict, action: Action) -> None:
            """A streamed answer (``"stream": true``): one word per server-sent event, then [DONE]."""
            reply = _reply_body(body, action)
            text = reply["choices"][0]["message"]["content"]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            head = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
                    "model": reply["model"]}
            pieces = re.findall(r"\S+\s*|\s+", text) or [""]
            for piece in pieces:
                chunk = {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            end = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                self.wfile.write(b"data: " + json.dumps({**head, "choices": [], "usage": reply["usage"]}).encode()
                                 + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, json.dumps({"object": "list", "data": []}).encode())
            else:
                self._send(200, b'{"status": "ok"}')

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {}
            with server.lock:
                server.requests.append(body)
                server.auth_headers.append(self.headers.get("Authorization"))
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if server.context_tokens is not None:
                    tokens = sum(len(str(m.get("content", ""))) for m in body.get("messages") or []) // 4
                    if tokens > server.context_tokens:
                        message = (f"This model's maximum context length is {server.context_tokens} tokens. However, "
                                   f"your messages resulted in {tokens} tokens. Please reduce the length of the messages.")
                        self._send(400, json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                              "code": "context_length_exceeded"}}).encode())
                        return
                action = server._next_action(body)
                if action.delay:
                    time.sleep(action.delay)
                self._act(action, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _act(self, action: Action, body: dict) -> None:
            kind = action.kind
            if kind == "ok" and body.get("stream"):
                self._stream(body, action)
            elif kind == "ok":
                self._send(200, json.dumps(_reply_body(body, action)).encode())
            elif kind == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            elif kind == "429":
                headers = {"Retry-After": action.retry_after} if action.retry_after is not None else {}
                self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', headers)
            elif kind == "500":
                self._send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
            elif kind == "401_echo":
                quoted = self.headers.get("Authorization") or ""
                self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {quoted}",
                                                      "type": "invalid_request_error"}}).encode())
            elif kind == "400":
                self._send(400, b'{"error": {"message": "bad request: max_tokens too large", "type": "invalid"}}')
            elif kind == "malformed":
                self._send(200, b'{"id": "x", "choices": [ this is not json')
            elif kind == "truncated":
                payload = json.dumps(_reply_body(body, action)).encode()
                self._send(200, payload[: len(payload) // 2], length=len(payload))
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            elif kind == "no_choices":
                self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                            "model": body.get("model", ""), "choices": []}).encode())

    return Handler
