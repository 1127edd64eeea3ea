"""The backend interface every LLM caller uses, and the failure budget that stops a job on noise.

1. :class:`Backend`: ``await backend.generate(requests)`` returns one :class:`Completion` per
   :class:`GenerationRequest`, in order, and never raises for one bad request: a request that failed for
   good comes back with ``error`` set (and is counted in :class:`BackendStats`).
2. :meth:`Backend.generate_stream` with a :class:`StreamSink`: the text reaches the caller as it is
   generated, and the caller may end a generation once it has read enough (early exit, SPEC section 8).
3. :class:`FailureBudget` raises :class:`TooManyFailures` once too large a share of requests failed, so a
   job never trains on, or writes, noise.
4. :func:`check_backend_numbers` bounds timeouts, retries and concurrency (:data:`BACKEND_LIMITS`);
   :func:`read_api_key` reads the key from the variable *named* by ``api_key_env``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


log = logging.getLogger("rlkd.backends")

PLACEHOLDER_API_KEY = "EMPTY"  # sent when the key variable is unset (local servers ignore the key)


@dataclass(frozen=True)
class GenerationRequest:
    """One chat request. ``temperature == 0`` means greedy decoding."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), hashable so it can key a cache
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def chat(cls, messages: Sequence[dict[str, str]] | Sequence[tuple[str, str]], **kwargs: Any) -> "GenerationRequest":
        """Build from OpenAI-style ``[{"role": ..., "content": ...}]`` or ``[(role, content)]``."""
        pairs = tuple((m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in messages)
        if "stop" in kwargs:  # a list, one string or None are accepted; stored as a tuple
            stop = kwargs["stop"]
            kwargs["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return cls(messages=pairs, **kwargs)

    def as_openai_messages(self) -> list[dict[str, str]]:
        """The messages as the OpenAI chat API wants them."""
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def last_user_message(self) -> str:
        """Content of the last ``user`` message ('' if there is none)."""
        for role, content in reversed(self.messages):
            if role == "user":
                return content
        return ""


@dataclass
class Completion:
    """What came back for one request: ``n`` texts, token counts, or the error that ended it."""

    texts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False
    stopped: bool = False  # a stream the caller closed early: ``texts`` hold what was generated until then
    cached_prompt_tokens: int = 0  # prompt tokens the server reported served from its prefix cache

    @property
    def text(self) -> str:
        """The first text ('' when the request failed)."""
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None


@dataclass
class BackendStats:
    """Counters every backend keeps (read them after a job; they are also logged)."""

    calls: int = 0  # requests sent to the model (cache hits excluded; retries counted apart)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0  # requests that failed for good
    stopped: int = 0  # streams the caller closed early (their tokens are counted up to the stop)
    cached_prompt_tokens: int = 0  # prompt tokens the server said it served from its prefix cache

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and JSON)."""
        return dict(self.__dict__)

    def add(self, completion: Completion) -> None:
        """Count one finished request that reached the model."""
        self.calls += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cached_prompt_tokens += completion.cached_prompt_tokens
        self.stopped += completion.stopped
        if completion.error is not None:
            self.failures += 1


class Backend:
    """Interface: :meth:`generate` maps requests to completions, in order, never raising for one request.

    ``model`` names the model the backend talks to; the request cache keys on it.
    """

    name = "backend"
    model: str = ""

    def __init__(self) -> None:
        self.stats = BackendStats()

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order; failures come back with ``error`` set."""
        raise NotImplementedError

    async def generate_stream(self, requests: Sequence[GenerationRequest],
                              sinks: Sequence["StreamSink"]) -> list[Completion]:
        """Like :meth:`generate`, streaming each completion into its sink; a sink whose
        ``stop_requested`` turns true has its generation ended there (the completion comes back with
        ``stopped`` set and the text generated so far). Each sink's :meth:`StreamSink.finish` is called
        once with its completion. Only ``n == 1`` requests stream.

        This default streams nothing: it generates whole completions and feeds each in one piece.
        Backends that can stop a generation early override it.
        """
        completions = await self.generate(requests)
        for completion, sink in zip(completions, sinks):
            if completion.ok:
                sink.feed(completion.text)
            sink.finish(completion)
        return completions

    def generate_sync(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Blocking convenience wrapper around :meth:`generate` (not for use inside a running loop);
        connections opened for it are closed before it returns."""

        async def run() -> list[Completion]:
            try:
                return await self.generate(list(requests))
            finally:
                await self.aclose()

        return asyncio.run(run())

    async def aclose(self) -> None:
        """Release connections or models."""

    def log_stats(self, level: int = logging.INFO) -> None:
        """Log the counters on one line."""
        log.log(level, "%s backend (%s): %s", self.name, self.model,
                " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items()))


class StreamSink:
    """The receiving end of one streamed completion (:meth:`Backend.generate_stream`).

    The backend calls :meth:`feed` with each new piece of text, :meth:`restart` when a failed attempt
    is retried from the start (forget what was fed), and :meth:`finish` once at the end. The consumer
    sets :attr:`stop_requested` when it has read enough; the backend then closes the stream (a
    server such as vLLM or ``transformers serve`` aborts the request) or stops the local generation.
    A sink whose consumer decides while the backend waits for the next token may also have
    ``stop_event``, an ``asyncio.Event`` set with the request, to have a stream closed at once.
    This base class just collects the text.
    """

    def __init__(self) -> None:
        self.stop_requested = False
        self.pieces: list[str] = []
        self.completion: Completion | None = None

    def feed(self, piece: str) -> None:
        """A new piece of generated text."""
        self.pieces.append(piece)

    def restart(self) -> None:
        """The request is being sent again: what was fed so far no longer counts."""
        self.pieces.clear()

    def finish(self, completion: Completion) -> None:
        """The request is over: ``completion`` is what :meth:`Backend.generate` would have returned
        (``stopped`` when the stop request ended it)."""
        self.completion = completion


# --------------------------------------------------------------------------------------------------
# Failure budget


class TooManyFailures(RuntimeError):
    """Raised by :class:`FailureBudget` when too large a share of requests failed."""


class FailureBudget:
    """Stop a job once failures exceed ``max_share`` of what was seen (after ``min_count`` items).

    >>> budget = FailureBudget(max_share=0.25, min_count=4, what="decompositions")
    >>> for ok in (True, True, True, False): budget.record(ok, "timeout")
    >>> budget.record(False, "HTTP 500")  # 2 of 5 > 25%
    Traceback (most recent call last):
    ...
    rlkd.backends.base.TooManyFailures: 2 of 5 decompositions failed (40.0% > 25.0% allowed); last reasons: timeout; HTTP 500

    Call :meth:`finish` at the end of a job: it applies the same share to what was seen, however few,
    so a job of three requests that all failed does not end as a silent success.
    """

    def __init__(self, max_share: float = 0.1, min_count: int = 20, what: str = "requests", keep_reasons: int = 5):
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_share must be within [0, 1], got {max_share}")
        self.max_share = max_share
        self.min_count = max(int(min_count), 1)
        self.what = what
        self.seen = 0
        self.failures = 0
        self.reasons: collections.deque[str] = collections.deque(maxlen=keep_reasons)

    def record(self, ok: bool, reason: str = "") -> None:
        """Count one item; raise :class:`TooManyFailures` when over budget."""
        self.record_many([(ok, reason)])

    def record_many(self, outcomes: Sequence[tuple[bool, str]]) -> None:
        """Count a whole batch of ``(ok, reason)`` outcomes, then check once, so the error counts every
        item of the batch that was already done rather than stopping the count part-way."""
        for ok, reason in outcomes:
            self.seen += 1
            if not ok:
                self.failures += 1
                self.reasons.append(reason or "no reason given")
        if self.seen >= self.min_count:
            self._check()

    def record_completion(self, completion: Completion) -> None:
        """Count a :class:`Completion` (failed when its ``error`` is set)."""
        self.record(completion.ok, completion.error or "")

    def finish(self) -> None:
        """End-of-job check: raise if the failure share is over budget, whatever the count."""
        if self.seen:
            self._check()

    @property
    def share(self) -> float:
        """Failures / seen (0 when nothing was seen)."""
        return self.failures / self.seen if self.seen else 0.0

    def _check(self) -> None:
        if self.failures and self.share > self.max_share:
            raise TooManyFailures(
                f"{self.failures} of {self.seen} {self.what} failed ({self.share:.1%} > {self.max_share:.1%} "
                f"allowed); last reasons: {'; '.join(dict.fromkeys(self.reasons))}"
            )

    def __repr__(self) -> str:
        return f"FailureBudget({self.failures}/{self.seen} {self.what} failed, max_share={self.max_share})"


# --------------------------------------------------------------------------------------------------
# Checked settings: numbers in range, keys that can be sent

# field -> (lowest, highest, lowest excluded): every backend setting is finite and bounded, so no option
# can switch the timeout off or make a retry loop endless
BACKEND_LIMITS: dict[str, tuple[float, float, bool]] = {
    "concurrency": (1, 4096, False),
    "timeout": (0, 86_400, True),  # seconds per request, at most a day
    "max_retries": (0, 50, False),
    "local_batch_size": (1, 4096, False),
}


def check_backend_numbers(values: Mapping[str, Any], name: Callable[[str], str] = str) -> None:
    """Raise ValueError, naming the field as ``name(field)`` gives it, for a value outside BACKEND_LIMITS
    (NaN and infinities included). Fields that are absent or None are skipped.

    >>> check_backend_numbers({"timeout": float("inf")}, lambda f: "--" + f)
    Traceback (most recent call last):
    ...
    ValueError: --timeout: must be a finite number in (0, 86400], got inf
    """
    for field_name, value in values.items():
        if value is None or field_name not in BACKEND_LIMITS:
            continue
        low, high, open_low = BACKEND_LIMITS[field_name]
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value > high or (value <= low if open_low else value < low)
        if bad:
            kind = "a finite number" if field_name == "timeout" else "a whole number"
            raise ValueError(f"{name(field_name)}: must be {kind} in {'(' if open_low else '['}{low:g}, {high:g}], "
                             f"got {value!r}")


_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def looks_like_a_key(name: str) -> bool:
    """Whether an ``api_key_env`` value looks like a key pasted in place of a variable name.

    >>> [looks_like_a_key(n) for n in ["OPENAI_API_KEY", "HF_TOKEN", "sk-abc123", "gsk_8fJ2kLq9ZxT4mN7pR1sV3wY6"]]
    [False, False, True, True]
    """
    if not _VARIABLE_NAME.fullmatch(name):
        return True
    if name.startswith(("sk-", "sk_", "gsk_", "hf_", "xai-", "pk-", "rk-", "ghp_")):
        return True
    mixed = any(c.islower() for c in name) and any(c.isupper() for c in name) and any(c.isdigit() for c in name)
    return len(name) >= 20 and mixed


def read_api_key(variable: str) -> str | None:
    """The key in environment variable ``variable`` (None when unset or empty).

    Raises ValueError, without quoting the key, when it holds anything but printable ASCII: a carriage
    return or newline from a key file with Windows line endings would otherwise be echoed back in every
    HTTP error message.
    """
    key = os.environ.get(variable)
    if not key:
        return None
    for position, char in enumerate(key, start=1):
        if not " " < char <= "~":
            what = {"\r": "a carriage return", "\n": "a newline", "\t": "a tab", " ": "a space"}.get(
                char, "a control character" if ord(char) < 32 or ord(char) == 127 else "a non-ASCII character")
            shown = "the variable named by api_key_env" if looks_like_a_key(variable) else f"environment variable {variable}"
            raise ValueError(f"{shown}: the API key holds {what} at character {position} of {len(key)} (the key "
                             "is not shown); strip it, e.g. export VAR=\"$(tr -d '\\r\\n' < keyfile)\"")
    return key

def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
