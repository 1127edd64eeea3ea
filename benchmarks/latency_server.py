"""A local OpenAI-compatible chat server with a set latency, answering GSRM and judge prompts deterministically.

The reward-cost benchmark (``reward_cost.py``) and the GRPO profile (``grpo_profile.py``) need a server
that behaves like a GSRM / judge deployment in *time* (a fixed cost per request plus a cost per
generated token, set by flags) and whose answers are a known function of the prompt, so that two
schedulings of the same work can be checked for identical rewards. It reads rlkd's own prompt files to
recognise what it is asked:

1. a GSRM request (any ``rlkd/prompts/gsrm_<domain>.txt``): the reply is
   ``rlkd.testbed.rule_decompose`` of the reasoning in the prompt, rendered in the
   ``[Meta-reasoning N]`` format; exact on the testbed's teacher traces and on edits of them. Text with
   no computation in it (e.g. a tiny random model's output) gets, with ``--gsrm-fallback chunks``
   (default), a decomposition of its sentences (or 12-word pieces) into up to 8 steps, so that
   nonsense still costs a realistic amount of generated text;
2. a per-pair judge request (``judge_meta`` / ``judge_subproblem`` / ``judge_answer``): ``yes`` when the
   two texts are equal after ``rlkd.judges.normalize_text`` (lower case, punctuation and whitespace
   collapsed), else ``no``;
3. a batched judge request (``judge_batched``): the JSON list ``["yes", "no", ...]`` (pair order) with
   the same verdict for every pair;
4. anything else: ``ok``.

Timing: each request sleeps ``latency_ms + per_token_ms * generated tokens + per_prompt_token_ms *
prompt tokens`` before answering. A streamed request (``"stream": true``) sleeps ``latency_ms +
per_prompt_token_ms * prompt tokens`` before its first token and ``per_token_ms`` before each token,
sending one token per server-sent event (and the usage at the end when ``stream_options.include_usage``
asks for it). A client that closes the stream stops the generation at once: the server waits for
each token's time on the connection, so it sees the close as soon as it arrives (as vLLM aborts a
request when its client disconnects) and sends nothing more; only the tokens sent are counted
(``aborted`` counts such streams). ``--slots N`` serves at most N requests at once (the rest queue, as at
a server whose batch is full); 0 (default) serves all at once, like a batching server far below its
capacity. Tokens are counted as words and punctuation marks (regex ``\\w+|[^\\w\\s]``), plus 4 per chat
message for the template; replies are cut at the request's ``max_tokens``. ``GET /stats`` returns the
request and token counts per kind of request and the server's CPU seconds (``GET /stats?streams=1``
adds one record per streamed GSRM reply: a hash of the whole reply, its tokens, the tokens sent, and
whether the client closed it), so a benchmark can compare what each stream cost with what it needed;
``POST /stats/reset`` zeroes them.

Bounded by design: it binds 127.0.0.1 only, and stops by itself after ``--max-seconds`` (default 1800)
or ``--max-requests`` (if set), or when its parent closes its stdin (``--exit-on-stdin-eof``, used by
:func:`spawn`).

    python benchmarks/latency_server.py --latency-ms 50 --per-token-ms 5 --port 8123
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

_TOKEN = re.compile(r"\w+|[^\w\s]")
TOKENS_PER_MESSAGE = 4
KINDS = ("gsrm", "judge", "judge_batched", "other")


def count_tokens(text: str) -> int:
    """Approximate token count: words and punctuation marks."""
    return len(_TOKEN.findall(text or ""))


def cut_tokens(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """``text`` cut after its first ``max_tokens`` tokens; (text, was_cut)."""
    if not max_tokens or max_tokens <= 0:
        return text, False
    for i, m in enumerate(_TOKEN.finditer(text)):
        if i == max_tokens:
            return text[: m.start()].rstrip(), True
    return text, False


# --------------------------------------------------------------------------------------------------
# Deterministic answers


def _template_regex(template: str) -> re.Pattern[str]:
    """A full-match regex for a prompt turn: each ``{name}`` placeholder becomes a named lazy group."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = ""
    for i, part in enumerate(parts):
        pattern += re.escape(part) if i % 2 == 0 else f"(?P<{part}>.*?)"
    return re.compile(pattern, re.DOTALL)


_PAIR = re.compile(
    r"Pair (?P<n>\d+) \((?P<field>meta-reasoning|sub-problem|answer); [^)\n]*\)\nA: (?P<a>.*?)\nB: (?P<b>.*?)"
    r"(?=\n\nPair \d+ \((?:meta-reasoning|sub-problem|answer); |\n\nReply with a JSON list)",
    re.DOTALL,
)


def same_texts(a: str, b: str) -> bool:
    """The server's verdict: equal after :func:`rlkd.judges.normalize_text`."""
    from rlkd.judges import normalize_text

    return normalize_text(a) == normalize_text(b)


def chunk_decomposition(reasoning: str, max_steps: int = 8) -> str:
    """The fallback GSRM reply for text with no computation: its sentences (or 12-word pieces) grouped
    into up to ``max_steps`` steps."""
    from rlkd.structure import Decomposition, Step

    pieces = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", reasoning) if s.strip()]
    if len(pieces) < 2:
        words = reasoning.split()
        pieces = [" ".join(words[i: i + 12]) for i in range(0, len(words), 12)]
    if not pieces:
        return "[Meta-reasoning 1]: The reasoning is empty.\n[Sub-problem 1]: What is asked?\n[Answer 1]: nothing"
    count = min(max_steps, len(pieces))
    size = -(-len(pieces) // count)
    steps = []
    for i in range(0, len(pieces), size):
        text = " ".join(pieces[i: i + size])
        words = text.split()
        steps.append(Step(text, f"What does part {len(steps) + 1} of the reasoning settle?",
                          words[-1] if words else "nothing", len(steps) + 1))
    return Decomposition(steps).render()


class Responder:
    """Maps a chat request to (kind, reply text), deterministically, from rlkd's prompt files."""

    def __init__(self, gsrm_fallback: str = "chunks"):
        from rlkd.templates import DOMAINS, load_prompt
        from rlkd.llm_judge import load_judge_prompt

        if gsrm_fallback not in ("chunks", "none"):
            raise ValueError(f"gsrm_fallback must be 'chunks' or 'none', got {gsrm_fallback!r}")
        self.gsrm_fallback = gsrm_fallback
        self.gsrm = [_template_regex(load_prompt(d).turns[-1][1]) for d in DOMAINS]
        self.judge = {f: _template_regex(load_judge_prompt(f).turns[-1][1]) for f in ("meta", "subproblem", "answer")}
        batched = load_judge_prompt("batched")
        self.batched_system = next((t for r, t in batched.turns if r == "system"), None)

    def reply(self, messages: list[dict[str, Any]]) -> tuple[str, str]:
        """(kind, text) for the chat ``messages`` of one request."""
        contents = [(m.get("role"), str(m.get("content") or "")) for m in messages]
        last_user = next((c for r, c in reversed(contents) if r == "user"), "")
        system = next((c for r, c in contents if r == "system"), None)
        if system is not None and self.batched_system is not None and system.strip() == self.batched_system.strip():
            verdicts = {int(m.group("n")): "yes" if same_texts(m.group("a"), m.group("b")) else "no"
                        for m in _PAIR.finditer(last_user)}
            return "judge_batched", json.dumps([verdicts[n] for n in sorted(verdicts)])
        for regex in self.gsrm:
            m = regex.fullmatch(last_user)
            if m:
                return "gsrm", self._decompose(m.group("reasoning"))
        for regex in self.judge.values():
            m = regex.fullmatch(last_user)
            if m:
                return "judge", "yes" if same_texts(m.group("teacher"), m.group("student")) else "no"
        return "other", "ok"

    def _decompose(self, reasoning: str) -> str:
        from rlkd.testbed import rule_decompose

        decomposition = rule_decompose(reasoning)
        if decomposition.steps:
            return decomposition.render()
        if self.gsrm_fallback == "chunks":
            return chunk_decomposition(reasoning)
        return "The reasoning has no steps I can name."


# --------------------------------------------------------------------------------------------------
# The server


@dataclass
class Counters:
    """Requests and tokens per kind of request."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    prompt_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    completion_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    max_in_flight: int = 0
    aborted: int = 0  # streams the client closed before their end
    streams: list[dict[str, Any]] = field(default_factory=list)  # one record per streamed GSRM reply
    cpu_start: float = field(default_factory=time.process_time)

    def as_dict(self, streams: bool = False) -> dict[str, Any]:
        """The counters, and the CPU seconds this server process used since they were last reset; with
        ``streams``, the per-stream records of the GSRM replies too."""
        out = {"requests": dict(self.requests), "prompt_tokens": dict(self.prompt_tokens),
               "completion_tokens": dict(self.completion_tokens), "max_in_flight": self.max_in_flight,
               "aborted": self.aborted,
               "cpu_s": round(time.process_time() - self.cpu_start, 3)}
        if streams:
            out["streams"] = [dict(s) for s in self.streams]
        return out


def reply_key(text: str) -> str:
    """The key of a GSRM reply in the per-stream records (a short hash of its whole text)."""
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default listen backlog (5) drops connections of a burst of clients


class LatencyServer:
    """The server, in a thread of this process (:meth:`start` / :meth:`stop`, or ``with``).

    Benchmarks run it in a subprocess instead (:func:`spawn`) so that its threads do not compete with
    the client for this process's interpreter lock.
    """

    def __init__(self, latency_ms: float = 0.0, per_token_ms: float = 0.0, per_prompt_token_ms: float = 0.0,
                 slots: int = 0, port: int = 0, gsrm_fallback: str = "chunks", max_requests: int = 0):
        if min(latency_ms, per_token_ms, per_prompt_token_ms) < 0 or slots < 0:
            raise ValueError("latencies and slots must be >= 0")
        self.latency_ms = latency_ms
        self.per_token_ms = per_token_ms
        self.per_prompt_token_ms = per_prompt_token_ms
        self.slots = threading.Semaphore(slots) if slots else None
        self.port = port
        self.max_requests = max_requests
        self.responder = Responder(gsrm_fallback)
        self.counters = Counters()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.total_requests = 0
        self.done = threading.Event()  # set when max_requests is reached
        self._server: _Server | None = None

    def start(self) -> "LatencyServer":
        self._server = _Server(("127.0.0.1", self.port), _make_handler(self))
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LatencyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Build the response to one chat-completions body, sleeping for the set latency first."""
        messages = body.get("messages") or []
        kind, text = self.responder.reply(messages)
        text, was_cut = cut_tokens(text, body.get("max_tokens") or body.get("max_completion_tokens"))
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + TOKENS_PER_MESSAGE for m in messages)
        completion_tokens = max(count_tokens(text), 1)
        n = int(body.get("n") or 1)
        delay = (self.latency_ms + self.per_token_ms * completion_tokens
                 + self.per_prompt_token_ms * prompt_tokens) / 1000.0
        with (self.slots if self.slots is not None else contextlib.nullcontext()):
            if delay > 0:
                time.sleep(delay)
        with self.lock:
            self.counters.requests[kind] += 1
            self.counters.prompt_tokens[kind] += prompt_tokens
            self.counters.completion_tokens[kind] += completion_tokens * n
        return {
            "id": f"chatcmpl-latency-{self.total_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if was_cut else "stop"} for i in range(n)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * n,
                      "total_tokens": prompt_tokens + completion_tokens * n},
        }


def token_pieces(text: str) -> list[str]:
    """``text`` cut into its tokens (as :func:`count_tokens` counts them), each with the blanks before it;
    joined, they give back ``text``."""
    pieces, start = [], 0
    for m in _TOKEN.finditer(text):
        pieces.append(text[start: m.end()])
        start = m.end()
    if pieces and start < len(text):
        pieces[-1] += text[start:]
    return pieces


def _sleep(seconds: float) -> bool:
    time.sleep(max(seconds, 0.0))
    return False


def stream_answer(server: "LatencyServer", body: dict[str, Any], write: Any, closed: Any = _sleep) -> None:
    """Answer one streamed chat-completions body: the first token after the fixed cost, then one token
    per ``per_token_ms``. ``closed(seconds)`` waits that long and says whether the client closed the
    stream meanwhile (returning as soon as it does); ``write(bytes)`` raises once the client has gone.
    Either ends the generation."""
    messages = body.get("messages") or []
    kind, text = server.responder.reply(messages)
    text, was_cut = cut_tokens(text, body.get("max_tokens") or body.get("max_completion_tokens"))
    prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + TOKENS_PER_MESSAGE for m in messages)
    with server.lock:
        server.counters.requests[kind] += 1
        server.counters.prompt_tokens[kind] += prompt_tokens
    head = {"id": f"chatcmpl-latency-{server.total_requests}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.get("model", "")}

    def event(payload: dict[str, Any]) -> None:
        write(b"data: " + json.dumps({**head, **payload}).encode() + b"\n\n")

    sent = 0
    pieces = token_pieces(text)
    try:
        with (server.slots if server.slots is not None else contextlib.nullcontext()):
            if closed((server.latency_ms + server.per_prompt_token_ms * prompt_tokens) / 1000.0):
                raise BrokenPipeError("the client closed the stream")
            for i, piece in enumerate(pieces):
                if i and closed(server.per_token_ms / 1000.0):
                    raise BrokenPipeError("the client closed the stream")
                event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                    "finish_reason": None}]})
                sent += 1
                with server.lock:
                    server.counters.completion_tokens[kind] += 1
        event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length" if was_cut else "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            event({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sent,
                                            "total_tokens": prompt_tokens + sent}})
        write(b"data: [DONE]\n\n")
        aborted = False
    except (BrokenPipeError, ConnectionResetError):
        aborted = True
        with server.lock:
            server.counters.aborted += 1
    if kind == "gsrm":
        with server.lock:
            server.counters.streams.append({"reply": reply_key(text), "tokens": len(pieces), "sent": sent,
                                            "aborted": aborted})


def connection_closed(sock: socket.socket, seconds: float) -> bool:
    """Wait up to ``seconds`` on ``sock`` and return True as soon as its peer has closed it (the request
    body was read whole, so the only thing that can arrive is the end of the connection)."""
    deadline = time.monotonic() + max(seconds, 0.0)
    while True:
        left = deadline - time.monotonic()
        try:
            ready, _, _ = select.select([sock], [], [], max(left, 0.0))
            if ready:
                try:
                    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        return True
                except BlockingIOError:
                    pass
                time.sleep(max(deadline - time.monotonic(), 0.0))  # bytes, not a close: wait the time out
                return False
        except OSError:  # reset by the peer, or the socket is gone
            return True
        if left <= 0:
            return False


def _make_handler(server: LatencyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.rstrip("/")
            path, _, query = path.partition("?")
            if path.rstrip("/").endswith("/stats"):
                with server.lock:
                    self._send(200, server.counters.as_dict(streams="streams=1" in query))
            elif path.endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "latency-server", "object": "model"}]})
            else:
                self._send(200, {"status": "ok"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.rstrip("/")
            if path.endswith("/stats/reset"):
                with server.lock:
                    server.counters = Counters()
                self._send(200, {"status": "reset"})
                return
            if not path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as exc:
                self._send(400, {"error": {"message": f"body is not JSON: {exc}", "type": "invalid"}})
                return
            with server.lock:
                server.in_flight += 1
                server.total_requests += 1
                server.counters.max_in_flight = max(server.counters.max_in_flight, server.in_flight)
                last = server.max_requests and server.total_requests >= server.max_requests
            try:
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")  # the body ends when the connection does
                    self.end_headers()
                    self.close_connection = True

                    def write(data: bytes) -> None:
                        self.wfile.write(data)
                        self.wfile.flush()

                    stream_answer(server, body, write, lambda seconds: connection_closed(self.connection, seconds))
                else:
                    self._send(200, server.answer(body))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up
            except Exception as exc:  # noqa: BLE001 - a bug here must show up at the client, not hang it
                self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}})
            finally:
                with server.lock:
                    server.in_flight -= 1
                if last:
                    server.done.set()

    return Handler


# --------------------------------------------------------------------------------------------------
# Running it in a subprocess


@contextlib.contextmanager
def spawn(latency_ms: float = 0.0, per_token_ms: float = 0.0, per_prompt_token_ms: float = 0.0, slots: int = 0,
          gsrm_fallback: str = "chunks", max_seconds: float = 1800.0) -> Iterator[str]:
    """Run the server in a subprocess for the duration of the ``with`` block; yields its base URL.

    The subprocess exits when the block ends (its stdin is closed), and in any case after
    ``max_seconds``.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--port", "0", "--latency-ms", str(latency_ms),
               "--per-token-ms", str(per_token_ms), "--per-prompt-token-ms", str(per_prompt_token_ms),
               "--slots", str(slots), "--gsrm-fallback", gsrm_fallback, "--max-seconds", str(max_seconds),
               "--exit-on-stdin-eof"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if not m:
            raise RuntimeError(f"latency server did not start (exit code {process.poll()}): {line!r}")
        yield m.group(1)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def fetch_stats(base_url: str, reset: bool = False, streams: bool = False) -> dict[str, Any]:
    """The server's counters (``GET /stats``); with ``reset``, zero them afterwards; with ``streams``,
    include the per-stream records of the GSRM replies."""
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/stats" + ("?streams=1" if streams else ""), timeout=10) as response:
        stats = json.loads(response.read())
    if reset:
        request = urllib.request.Request(f"{base_url}/stats/reset", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: serve until ``--max-seconds``, ``--max-requests`` or stdin EOF."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one, printed)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed cost of every request, ms")
    p.add_argument("--per-token-ms", type=float, default=0.0, help="cost of every generated token, ms")
    p.add_argument("--per-prompt-token-ms", type=float, default=0.0, help="cost of every prompt token, ms")
    p.add_argument("--slots", type=int, default=0, help="requests served at once; 0 = all (default)")
    p.add_argument("--gsrm-fallback", choices=("chunks", "none"), default="chunks",
                   help="GSRM reply for text with no computation: a sentence-chunk decomposition, or none")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long (default %(default)s)")
    p.add_argument("--max-requests", type=int, default=0, help="stop after this many requests (0 = no limit)")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin is closed (for a parent)")
    args = p.parse_args(argv)
    server = LatencyServer(args.latency_ms, args.per_token_ms, args.per_prompt_token_ms, args.slots, args.port,
                           args.gsrm_fallback, args.max_requests).start()
    print(f"latency server listening on {server.base_url} (latency {args.latency_ms} ms + {args.per_token_ms} "
          f"ms/token, slots {args.slots or 'unlimited'})", flush=True)
    if args.exit_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.read(), server.done.set()), daemon=True).start()
    try:
        server.done.wait(timeout=args.max_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
