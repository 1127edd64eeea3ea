"""Backends: where LLM text comes from (the GSRM, the LLM judge, data construction, evaluation).

One batch-first interface, :class:`Backend`: ``await backend.generate(requests)`` returns one
:class:`Completion` per :class:`GenerationRequest`, in order, and never raises for one bad request: a
request that failed for good comes back with ``error`` set (and is counted), so a caller can record the
failure for that sample and carry on. Callers that must not train on noise feed each completion to a
:class:`FailureBudget`, which raises :class:`TooManyFailures` once too large a share failed.

Backends:

- :class:`OpenAIBackend`: any OpenAI-compatible server (``vllm serve``, ``transformers serve``, a hosted
  provider) through the official ``openai.AsyncOpenAI`` client;
- :class:`TransformersBackend`: a local model through transformers ``generate``, for users without a
  server;
- :class:`ScriptedBackend`: a deterministic fake for unit tests of our own logic (never a stand-in for
  the real thing in an end-to-end test);
- ``rlkd.cache.CachedBackend`` wraps any of them with a persistent SQLite request cache.

:func:`add_backend_arguments` registers the command-line options every LLM-calling command shares, and
:func:`backend_from_args` / :func:`backend_from_config` build a backend from them (or from the same
field names in a YAML config).

How this departs from the authors' code (SPEC section 4):

1. No client, server address or tokenizer is created at import time; every address, model name and key
   variable comes from the command line or a config.
2. The API key is read from the environment variable *named* by ``api_key_env``; it never goes in a
   file, a cache key, a log line or a ``repr``. A key holding anything but printable ASCII (a carriage
   return from a Windows key file) is refused without being quoted, an ``api_key_env`` that looks like a
   key is warned about and masked, and every failure reason is scrubbed of the key.
3. An API failure is never retried forever: each request has a timeout and a bounded number of retries
   with exponential backoff and jitter, only on transient errors (timeouts, connection errors, HTTP 408,
   429 honouring ``Retry-After`` up to a cap, 5xx, unreadable bodies). Other 4xx fail at once. Every
   retry and every final failure is logged with its reason and counted in :attr:`Backend.stats`. The
   timeout, retries and concurrency are finite and bounded (:data:`BACKEND_LIMITS`), so no setting can
   switch the timeout off or make the retry loop endless.
4. Requests of one batch run concurrently, up to a concurrency limit, instead of one after another.
5. Streaming with early stop (:meth:`Backend.generate_stream`, :class:`StreamSink`): the text reaches
   the caller as it is generated, and the caller can end a generation once it has read enough (early
   exit of the structure reward, SPEC section 8). The OpenAI backend closes the stream (vLLM and
   ``transformers serve`` then abort the request), the local backend stops that sequence with a
   stopping criterion. Tokens are counted as generated; retries, timeouts and failure counting are
   those of whole requests; the request cache stores only streams that ran to their end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
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
    rlkd.backends.TooManyFailures: 2 of 5 decompositions failed (40.0% > 25.0% allowed); last reasons: timeout; HTTP 500

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
        self.seen += 1
        if not ok:
            self.failures += 1
            self.reasons.append(reason or "no reason given")
        if self.seen >= self.min_count:
            self._check()

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


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible servers


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds, if it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Permanent(Exception):
    """A failure that retrying will not fix (a 4xx other than 408/429, a bug in the request)."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _classify(exc: BaseException, timeout: float) -> Exception:
    """Map an exception from one HTTP attempt to :class:`_Transient` or :class:`_Permanent`."""
    import openai

    if isinstance(exc, (_Transient, _Permanent)):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return _Transient(f"timed out after {timeout:g}s")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
        return _Transient(f"connection error ({detail})")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _short(getattr(exc, "message", "") or str(exc))
        if status == 429:
            return _Transient(f"HTTP 429 rate limited: {message}", parse_retry_after(exc.response.headers.get("retry-after")))
        if status == 408 or status >= 500:
            return _Transient(f"HTTP {status}: {message}", parse_retry_after(exc.response.headers.get("retry-after")))
        return _Permanent(f"HTTP {status}: {message}")
    if isinstance(exc, openai.APIResponseValidationError):
        return _Transient(f"malformed response body: {_short(str(exc))}")
    if isinstance(exc, (ValueError, TypeError, AttributeError, KeyError)):
        # json.JSONDecodeError and pydantic's ValidationError are ValueErrors: an unreadable body.
        return _Transient(f"malformed response body ({type(exc).__name__}: {_short(str(exc))})")
    module = type(exc).__module__ or ""
    if module.startswith(("httpx", "httpcore", "h11")) or isinstance(exc, OSError):
        return _Transient(f"transport error ({type(exc).__name__}: {_short(str(exc))})")
    return _Permanent(f"unexpected {type(exc).__name__}: {_short(str(exc))}")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAIBackend(Backend):
    """An OpenAI-compatible chat-completions server, through ``openai.AsyncOpenAI``.

    ``api_key_env`` is the *name* of the environment variable holding the key, read once here; when it
    is unset a placeholder is sent (local servers ignore the key). At most ``concurrency`` requests are
    in flight; each HTTP attempt is bounded by ``timeout`` seconds; a transient failure is retried up to
    ``max_retries`` times with exponential backoff (``backoff_base * 2**attempt``, capped at
    ``backoff_max``, with jitter), or after the server's ``Retry-After`` (capped at ``retry_after_max``).

    ``n > 1`` is sent as the ``n`` parameter; a server that returns fewer choices is asked again with
    ``n=1`` for the rest (seed + i for the i-th extra sample when a seed is set), and from then on this
    backend asks for the samples one by one.

    The client (and the concurrency semaphore) belong to the event loop that first uses them; calling
    from a new loop (e.g. several ``asyncio.run``) makes fresh ones.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not base_url:
            raise ValueError("OpenAIBackend needs a base_url")
        if not model:
            raise ValueError("OpenAIBackend needs a model name")
        check_backend_numbers({"concurrency": concurrency, "timeout": timeout, "max_retries": max_retries})
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.extra_body = dict(extra_body or {})
        if api_key_env and looks_like_a_key(api_key_env):
            log.warning("api_key_env looks like an API key, not the name of a variable (it is not shown); give "
                        "the NAME of the environment variable that holds the key, e.g. OPENAI_API_KEY")
            self.api_key_env = "<not shown: looks like a key>"
        key = read_api_key(api_key_env) if api_key_env else None
        if api_key_env and not key:
            log.debug("environment variable %s is unset: sending a placeholder API key", self.api_key_env)
        self._api_key = key or PLACEHOLDER_API_KEY  # kept private; never logged, cached or shown in repr
        self._n_supported = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return (f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"concurrency={self.concurrency}, timeout={self.timeout}, max_retries={self.max_retries})")

    def _loop_state(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            import openai

            try:
                import httpx2 as httpx  # what openai >= 3 is built on
            except ImportError:  # pragma: no cover - older openai releases
                import httpx

            # A plain httpx client, not openai's wrapper: the wrapper's finaliser schedules a close on
            # whatever loop is running when it is collected, which fails for a client of a closed loop.
            http_client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=True,
                limits=httpx.Limits(max_connections=self.concurrency + 4, max_keepalive_connections=self.concurrency),
            )
            self._loop = loop
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.timeout,
                http_client=http_client,
            )
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._client, self._semaphore

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """All requests concurrently (up to the concurrency limit); one completion each, in order."""
        if not requests:
            return []
        self._loop_state()
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def aclose(self) -> None:
        """Close the HTTP client (when it belongs to the running loop)."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()
        self._loop = None

    async def _one(self, request: GenerationRequest) -> Completion:
        """One request: n samples (asked for at once if the server allows), counted once in ``calls``."""
        try:
            texts: list[str] = []
            prompt_tokens = completion_tokens = 0
            if request.n == 1 or self._n_supported:
                texts, prompt_tokens, completion_tokens = await self._attempts(request, request.n, request.seed)
                if len(texts) < request.n:
                    if self._n_supported:
                        log.info("server returned %d of n=%d choices; asking for samples one by one from now on",
                                 len(texts), request.n)
                    self._n_supported = False
            while len(texts) < request.n:
                seed = None if request.seed is None else request.seed + len(texts)
                more, p, c = await self._attempts(request, 1, seed)
                if not more:
                    raise _Permanent("server returned no choices")
                texts += more
                prompt_tokens += p
                completion_tokens += c
            completion = Completion(texts=texts[: request.n], prompt_tokens=prompt_tokens,
                                    completion_tokens=completion_tokens)
        except (_Transient, _Permanent) as exc:
            completion = Completion(error=self._scrub(str(exc)))
        self.stats.add(completion)
        return completion

    def _scrub(self, text: str) -> str:
        """``text`` with the API key (in any form a message may quote it) replaced by ``<key>``."""
        key = self._api_key
        if key and key != PLACEHOLDER_API_KEY:
            for form in {key, key.strip(), repr(key)[1:-1], repr(key.encode())[2:-1]}:
                if len(form) >= 4:
                    text = text.replace(form, "<key>")
        return text

    async def _attempts(self, request: GenerationRequest, n: int, seed: int | None) -> tuple[list[str], int, int]:
        """One API call with bounded retries; raises _Transient/_Permanent when it fails for good."""
        client, semaphore = self._loop_state()
        kwargs = self._request_kwargs(request, n, seed)
        attempt = 0
        while True:
            try:
                async with semaphore:
                    response = await asyncio.wait_for(client.chat.completions.create(**kwargs), self.timeout)
                return _read_response(response)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified, counted and logged
                failure = _classify(exc, self.timeout)
            if isinstance(failure, _Permanent) or attempt >= self.max_retries:
                tries = attempt + 1
                log.warning("request to %s failed for good after %d attempt%s: %s",
                            self.model, tries, "" if tries == 1 else "s", self._scrub(str(failure)))
                raise failure
            delay = self._backoff(attempt, getattr(failure, "retry_after", None))
            attempt += 1
            self.stats.retries += 1
            log.warning("request to %s: %s; retry %d of %d in %.2fs",
                        self.model, self._scrub(str(failure)), attempt, self.max_retries, delay)
            await asyncio.sleep(delay)

    def _request_kwargs(self, request: GenerationRequest, n: int, seed: int | None) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one request."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.as_openai_messages(),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if n != 1:
            kwargs["n"] = n
        if seed is not None:
            kwargs["seed"] = seed
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    async def generate_stream(self, requests: Sequence[GenerationRequest],
                              sinks: Sequence[StreamSink]) -> list[Completion]:
        """Stream every request (``stream=True``) into its sink, concurrently; a sink's stop request
        closes its stream, which makes vLLM and ``transformers serve`` abort the generation."""
        if not requests:
            return []
        self._loop_state()
        return list(await asyncio.gather(*(self._one_stream(r, s) for r, s in zip(requests, sinks))))

    async def _one_stream(self, request: GenerationRequest, sink: StreamSink) -> Completion:
        """One streamed request with the retries, timeout and counting of :meth:`_attempts`.

        ``completion_tokens`` is the server's count when it sends one (a stream read to its end, with
        ``stream_options.include_usage``); a stream closed early has no usage, so its tokens are the
        content pieces received (one per token on vLLM and ``transformers serve``)."""
        if request.n != 1:  # several samples do not stream: answer them whole
            [completion] = await Backend.generate_stream(self, [request], [sink])
            return completion
        client, semaphore = self._loop_state()
        kwargs = {**self._request_kwargs(request, 1, request.seed), "stream": True,
                  "stream_options": {"include_usage": True}}
        attempt = 0
        while True:
            pieces: list[str] = []
            usage = None
            stopped = finished = False
            try:
                async with semaphore, asyncio.timeout(self.timeout):
                    if sink.stop_requested:  # decided before the request was even sent
                        stopped = True
                    else:
                        # the raw event stream: the SDK's typed chunk objects cost about 1 ms of CPU per
                        # token, more than a batch of concurrent streams leaves a client per token
                        raw = client.chat.completions.with_streaming_response.create(**kwargs)
                        async with raw as response:  # leaving it closes the stream: the server aborts
                            async for line in response.iter_lines():
                                if not line.startswith("data:"):
                                    continue
                                data = line[5:].strip()
                                if data == "[DONE]":
                                    finished = True
                                    break
                                chunk = json.loads(data)
                                if not isinstance(chunk, dict) or chunk.get("error"):
                                    raise _Transient(f"error event in the stream: {_short(data)}")
                                usage = chunk.get("usage") or usage
                                for choice in chunk.get("choices") or []:
                                    finished = finished or bool(choice.get("finish_reason"))
                                    piece = (choice.get("delta") or {}).get("content")
                                    if piece:
                                        pieces.append(piece)
                                        sink.feed(piece)
                                # let the consumer run (a read from a full buffer never yields), then check
                                await asyncio.sleep(0)
                                if sink.stop_requested:
                                    stopped = True
                                    break
                        if not stopped and not finished:  # no [DONE] nor finish_reason: not a whole stream
                            raise _Transient("malformed response body: the stream ended before [DONE] "
                                             f"({len(pieces)} pieces received)")
                completion = Completion(texts=["".join(pieces)], stopped=stopped)
                if isinstance(usage, dict) and not stopped:
                    completion.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    completion.completion_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details")
                    completion.cached_prompt_tokens = int((details or {}).get("cached_tokens") or 0) \
                        if isinstance(details, dict) else 0
                else:
                    completion.completion_tokens = len(pieces)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified, counted and logged
                failure = _classify(exc, self.timeout)
            if isinstance(failure, _Permanent) or attempt >= self.max_retries:
                tries = attempt + 1
                log.warning("streamed request to %s failed for good after %d attempt%s: %s",
                            self.model, tries, "" if tries == 1 else "s", self._scrub(str(failure)))
                completion = Completion(error=self._scrub(str(failure)), completion_tokens=len(pieces))
                break
            delay = self._backoff(attempt, getattr(failure, "retry_after", None))
            attempt += 1
            self.stats.retries += 1
            log.warning("streamed request to %s: %s; retry %d of %d in %.2fs",
                        self.model, self._scrub(str(failure)), attempt, self.max_retries, delay)
            sink.restart()
            await asyncio.sleep(delay)
        self.stats.add(completion)
        sink.finish(completion)
        return completion

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: the server's Retry-After (capped) or
        exponential backoff with jitter (uniform between half and all of ``base * 2**attempt``)."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max) + random.uniform(0, 0.1 * self.backoff_base)
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return random.uniform(ceiling / 2, ceiling)


def _read_response(response: Any) -> tuple[list[str], int, int]:
    """Texts and token counts from a chat-completions response; _Transient if the body is unusable."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Transient(f"malformed response body: no choices ({_short(repr(response), 120)})")
    ordered = sorted(choices, key=lambda c: getattr(c, "index", 0) or 0)
    texts = []
    for choice in ordered:
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None) if message is not None else None
        if content is None and message is None:
            raise _Transient("malformed response body: a choice without a message")
        texts.append(content if isinstance(content, str) else "")
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
    return texts, prompt_tokens, completion_tokens


# --------------------------------------------------------------------------------------------------
# Local transformers model


class TransformersBackend(Backend):
    """A local model through transformers ``generate``: chat template, left padding, batches.

    ``model`` is a hub name or a local folder, loaded by :func:`rlkd.models.load_model` /
    :func:`rlkd.models.load_tokenizer`. Requests are grouped by sampling settings (one ``generate``
    config per group) and run ``batch_size`` sequences at a time; a request with ``n > 1`` contributes
    ``n`` sequences. ``temperature == 0`` decodes greedily; otherwise it samples with ``top_p``, seeding
    torch with the request's ``seed`` (when set) before each batch of that group, so a seeded request is
    reproducible for a given batch composition. ``stop`` strings cut the decoded text after generation.
    ``prompt_tokens`` counts the prompt once per request (as OpenAI servers do); ``completion_tokens``
    counts every generated token up to and including the end-of-sequence token.

    Generation runs in a worker thread (``asyncio.to_thread``), one batch at a time, so the event loop
    keeps serving other work. A batch that raises (e.g. out of memory) fails only its own requests.
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str = "auto",
        model_obj: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        from rlkd.models import load_model, load_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = str(model)
        self.batch_size = batch_size
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = model_obj if model_obj is not None else load_model(self.model, device=device, dtype=dtype)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model!r}, batch_size={self.batch_size})"

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Generate in a worker thread; one completion per request, in order."""
        if not requests:
            return []
        completions = await asyncio.to_thread(self._generate_blocking, list(requests))
        for completion in completions:
            self.stats.add(completion)
            if completion.error:
                log.warning("local generation with %s failed: %s", self.model, completion.error)
        return completions

    async def generate_stream(self, requests: Sequence[GenerationRequest],
                              sinks: Sequence[StreamSink]) -> list[Completion]:
        """Generate in a worker thread, feeding each sequence's new text to its sink after every token;
        a stopping criterion ends a sequence whose sink asks to stop (the batch goes on for the others)."""
        if not requests:
            return []
        if any(r.n != 1 for r in requests):  # several samples per request do not stream
            return await super().generate_stream(requests, sinks)
        loop = asyncio.get_running_loop()
        fed = [StreamSink() for _ in sinks]  # what each sink was fed (the feeds run on this loop, in order)

        def tee(sink: StreamSink, record: StreamSink) -> Callable[[str], None]:
            def feed(piece: str) -> None:
                record.feed(piece)
                sink.feed(piece)
            return feed

        watched = [_Tee(sink, tee(sink, record)) for sink, record in zip(sinks, fed)]
        completions = await asyncio.to_thread(self._generate_blocking, list(requests), (watched, loop))
        for completion, sink, record in zip(completions, sinks, fed):
            self.stats.add(completion)
            if completion.error:
                log.warning("local generation with %s failed: %s", self.model, completion.error)
            sent = "".join(record.pieces)
            if completion.ok and len(completion.text) > len(sent) and completion.text.startswith(sent):
                sink.feed(completion.text[len(sent):])  # e.g. a last character held back as incomplete
            sink.finish(completion)
        return completions

    def _generate_blocking(self, requests: list[GenerationRequest],
                           stream: tuple[list[StreamSink], asyncio.AbstractEventLoop] | None = None) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        prompts: list[str | None] = []
        for i, request in enumerate(requests):
            try:
                prompts.append(self.tokenizer.apply_chat_template(
                    request.as_openai_messages(), tokenize=False, add_generation_prompt=True))
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                prompts.append(None)
                results[i] = Completion(error=f"chat template failed: {type(exc).__name__}: {_short(str(exc))}")
        limit = getattr(getattr(self.lm, "config", None), "max_position_embeddings", None)
        for i, prompt in enumerate(prompts):
            if prompt is not None and limit is not None:
                length = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                if length >= limit:
                    results[i] = Completion(error=f"prompt of {length} tokens does not fit the model's "
                                                  f"{limit}-token context")
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            if results[i] is None:
                settings = (request.max_tokens, request.temperature, request.top_p if request.temperature else 1.0,
                            request.seed if request.temperature else None)
                groups.setdefault(settings, []).append(i)
        samples: dict[int, list[str]] = {i: [] for i in range(len(requests))}
        tokens: dict[int, list[int]] = {i: [0, 0] for i in range(len(requests))}
        stopped: set[int] = set()
        with self._lock:
            for (max_tokens, temperature, top_p, seed), members in groups.items():
                sequences = [(i, prompts[i]) for i in members for _ in range(requests[i].n)]
                for start in range(0, len(sequences), self.batch_size):
                    batch = sequences[start: start + self.batch_size]
                    watch = None
                    if stream is not None:
                        watch = _StreamRows(self.tokenizer, [stream[0][i] for i, _ in batch], stream[1])
                    try:
                        outputs = self._run_batch([p for _, p in batch], max_tokens, temperature, top_p, seed, watch)
                        if watch is not None:
                            stopped.update(i for (i, _), cut in zip(batch, watch.stopped_at) if cut is not None)
                    except Exception as exc:  # noqa: BLE001 - the batch's requests fail, others go on
                        reason = f"generate failed: {type(exc).__name__}: {_short(str(exc))}"
                        for i, _ in batch:
                            results[i] = Completion(error=reason)
                        continue
                    for (i, _), (text, n_prompt, n_new) in zip(batch, outputs):
                        samples[i].append(text)
                        tokens[i][0] = n_prompt  # the same prompt for each of the n samples
                        tokens[i][1] += n_new
        for i, request in enumerate(requests):
            if results[i] is None:
                texts = [_cut_at_stop(t, request.stop) for t in samples[i]]
                results[i] = Completion(texts=texts, prompt_tokens=tokens[i][0], completion_tokens=tokens[i][1],
                                        stopped=i in stopped)
        return [r for r in results if r is not None]

    def _run_batch(self, prompts: list[str], max_tokens: int, temperature: float, top_p: float,
                   seed: int | None, watch: "_StreamRows | None" = None) -> list[tuple[str, int, int]]:
        """Generate for one batch of rendered prompts: (text, prompt tokens, new tokens) each."""
        import torch

        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = getattr(self.lm, "device", None) or next(self.lm.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        width = enc["input_ids"].shape[1]
        if limit is not None and width >= limit:
            raise ValueError(f"prompt of {width} tokens does not fit the model's {limit}-token context")
        if limit is not None:
            max_tokens = min(max_tokens, limit - width)
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id}
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if watch is not None:
            from transformers import StoppingCriteriaList

            watch.start(width, _as_id_set(self.lm.generation_config.eos_token_id) | _as_id_set(tok.eos_token_id))
            kwargs["stopping_criteria"] = StoppingCriteriaList([watch])
        with torch.no_grad():
            out = self.lm.generate(**enc, **kwargs)
        new = out[:, width:]
        eos_ids = _as_id_set(self.lm.generation_config.eos_token_id) | _as_id_set(tok.eos_token_id)
        results = []
        for r, (row, mask) in enumerate(zip(new.tolist(), enc["attention_mask"].tolist())):
            length = len(row)
            if watch is not None and watch.stopped_at[r] is not None:  # stopped on request: cut there
                row = row[: watch.stopped_at[r]]
                length = len(row)
            for j, token in enumerate(row):
                if token in eos_ids:
                    length = j + 1
                    break
            else:
                while length and row[length - 1] == tok.pad_token_id and tok.pad_token_id not in eos_ids:
                    length -= 1
            text = tok.decode(row[:length], skip_special_tokens=True)
            results.append((text, int(sum(mask)), length))
        return results


class _Tee:
    """A sink's stop flag, read from the generation thread, with its feeds going through ``feed``."""

    def __init__(self, sink: StreamSink, feed: Callable[[str], None]) -> None:
        self.sink = sink
        self.feed = feed

    @property
    def stop_requested(self) -> bool:
        return self.sink.stop_requested


class _StreamRows:
    """A transformers stopping criterion that streams: after each generated token it sends every row's
    new text to that row's sink (on the event loop's thread) and ends the rows whose sink asks to stop.
    ``stopped_at[r]`` is the number of tokens row ``r`` had generated when it was stopped (None: it was
    not stopped on request)."""

    def __init__(self, tokenizer: Any, sinks: list[StreamSink], loop: asyncio.AbstractEventLoop) -> None:
        self.tokenizer = tokenizer
        self.sinks = sinks
        self.loop = loop
        self.sent = [""] * len(sinks)
        self.stopped_at: list[int | None] = [None] * len(sinks)
        self.ended = [False] * len(sinks)
        self.width = 0
        self.eos: set[int] = set()

    def start(self, width: int, eos: set[int]) -> None:
        self.width, self.eos = width, eos

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for r, sink in enumerate(self.sinks):
            if self.ended[r]:
                done.append(True)
                continue
            row = input_ids[r, self.width:].tolist()
            ended = False
            for j, token in enumerate(row):
                if token in self.eos:
                    row, ended = row[: j + 1], True
                    break
            text = self.tokenizer.decode(row, skip_special_tokens=True).rstrip("\ufffd")  # a split character
            if len(text) > len(self.sent[r]) and text.startswith(self.sent[r]):
                self.loop.call_soon_threadsafe(sink.feed, text[len(self.sent[r]):])
                self.sent[r] = text
            if sink.stop_requested and not ended:
                self.stopped_at[r] = len(row)
                ended = True
            self.ended[r] = ended
            done.append(ended)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value}
    return {int(value)}


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut]


# --------------------------------------------------------------------------------------------------
# Deterministic fake for unit tests


class ScriptedBackend(Backend):
    """A deterministic fake for unit tests of our own logic (never for an end-to-end test).

    ``script`` is a function ``GenerationRequest -> str | list[str]`` or a dict from the last user
    message to the reply. A function returning one string gives that string for each of the ``n``
    samples; a list gives the samples. A function that raises, or a dict without the message (and no
    ``default``), gives a failed completion with the reason. ``fail_first=k`` fails the first ``k``
    requests; ``fail_when(request)`` fails the requests it selects. Token counts are whitespace-word
    counts. Every request is kept in ``self.requests``.

    >>> backend = ScriptedBackend({"2+2?": "4"}, fail_first=1)
    >>> [c.error or c.text for c in backend.generate_sync([GenerationRequest.chat([("user", "2+2?")])] * 2)]
    ['scripted failure (fail_first=1)', '4']
    """

    name = "scripted"

    def __init__(
        self,
        script: Callable[[GenerationRequest], str | list[str]] | Mapping[str, str],
        *,
        default: str | None = None,
        fail_first: int = 0,
        fail_when: Callable[[GenerationRequest], bool] | None = None,
        model: str = "scripted",
        stream_fail_after: Callable[[GenerationRequest], int | None] | None = None,
    ) -> None:
        super().__init__()
        self.script = script
        self.default = default
        self.fail_first = fail_first
        self.fail_when = fail_when
        self.stream_fail_after = stream_fail_after
        self.model = model
        self.requests: list[GenerationRequest] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Answer each request from the script, in order."""
        completions = []
        for request in requests:
            completion = self._answer(request)
            self.requests.append(request)
            self.stats.add(completion)
            completions.append(completion)
        return completions

    async def generate_stream(self, requests: Sequence[GenerationRequest],
                              sinks: Sequence[StreamSink]) -> list[Completion]:
        """Stream each scripted reply word by word (a word and the blanks after it count as one token),
        all requests interleaved, yielding to the event loop after every word; stop where a sink asks.
        ``stream_fail_after(request)`` (a number of words, or None) fails a stream part-way."""
        async def one(request: GenerationRequest, sink: StreamSink) -> Completion:
            completion = self._answer(request)
            self.requests.append(request)
            if completion.ok and request.n == 1:
                words = re.findall(r"\s+|\S+\s*", completion.text)
                fail_at = self.stream_fail_after(request) if self.stream_fail_after else None
                fed = 0
                for word in words:
                    if sink.stop_requested:
                        completion = Completion(texts=["".join(words[:fed])], prompt_tokens=completion.prompt_tokens,
                                                completion_tokens=fed, stopped=True)
                        break
                    if fail_at is not None and fed >= fail_at:
                        completion = Completion(error=f"scripted stream failure after {fed} tokens",
                                                completion_tokens=fed)
                        break
                    sink.feed(word)
                    fed += 1
                    await asyncio.sleep(0)
                else:
                    completion.completion_tokens = fed
            elif completion.ok:
                sink.feed(completion.text)
            self.stats.add(completion)
            sink.finish(completion)
            return completion

        return list(await asyncio.gather(*(one(r, s) for r, s in zip(requests, sinks))))

    def _answer(self, request: GenerationRequest) -> Completion:
        if self.stats.calls < self.fail_first:
            return Completion(error=f"scripted failure (fail_first={self.fail_first})")
        if self.fail_when is not None and self.fail_when(request):
            return Completion(error="scripted failure (fail_when)")
        try:
            if callable(self.script):
                reply = self.script(request)
            else:
                key = request.last_user_message
                if key in self.script:
                    reply = self.script[key]
                elif self.default is not None:
                    reply = self.default
                else:
                    return Completion(error=f"scripted: no reply for user message {_short(key, 80)!r}")
        except Exception as exc:  # noqa: BLE001 - a raising script is a failed request
            return Completion(error=f"scripted: {type(exc).__name__}: {exc}")
        texts = [reply] * request.n if isinstance(reply, str) else list(reply)
        if len(texts) != request.n:
            return Completion(error=f"scripted: {len(texts)} replies for n={request.n}")
        prompt_tokens = sum(len(content.split()) for _, content in request.messages)
        return Completion(texts=texts, prompt_tokens=prompt_tokens,
                          completion_tokens=sum(len(t.split()) for t in texts))


# --------------------------------------------------------------------------------------------------
# Building a backend from the command line or a config


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the LLM backend, shared by every command that calls an LLM."""
    g = parser.add_argument_group(
        "LLM backend (an OpenAI-compatible server with --base-url: vLLM, transformers serve, a provider; "
        "or a local model with --local-model)")
    g.add_argument("--base-url", metavar="URL", help="server address, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--model", dest="backend_model", metavar="NAME",
                   help="model name the server knows (with --local-model: defaults to its path)")
    g.add_argument("--local-model", metavar="PATH_OR_NAME",
                   help="generate in this process with transformers (hub name, folder or .gguf file, "
                        "converted once into a cache) instead of a server")
    g.add_argument("--local-batch-size", type=int, metavar="N", default=8,
                   help="--local-model: sequences per generate batch (default %(default)s)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="name of the environment variable holding the API key (keys never go in files); "
                        "default %(default)s, unset means no key")
    g.add_argument("--concurrency", type=int, metavar="N", default=16, help="requests in flight at once (default %(default)s)")
    g.add_argument("--timeout", type=float, metavar="SECONDS", default=120.0, help="seconds per request (default %(default)s)")
    g.add_argument("--max-retries", type=int, metavar="N", default=4,
                   help="retries of a transient failure, with exponential backoff (default %(default)s)")
    g.add_argument("--cache", default=None, metavar="DB",
                   help="SQLite request cache; a re-run answers from it (default: none for score)")


BACKEND_FIELDS = {
    "base_url": str,
    "model": str,
    "local_model": str,
    "local_batch_size": int,
    "api_key_env": str,
    "concurrency": int,
    "timeout": (int, float),
    "max_retries": int,
    "cache": str,
}


def backend_from_config(config: Mapping[str, Any], where: str = "backend") -> Backend:
    """Build a backend from a config mapping (e.g. the ``backend:`` section of a YAML recipe).

    Fields, as on the command line: ``base_url`` or ``local_model`` (exactly one), ``model``,
    ``api_key_env``, ``concurrency``, ``timeout``, ``max_retries``, ``cache``, ``local_batch_size``.
    Raises ValueError naming ``where`` and the field for an unknown, missing or mistyped field.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{where}: expected a mapping of backend fields, got {type(config).__name__}")
    unknown = sorted(set(config) - set(BACKEND_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(BACKEND_FIELDS)})")
    for name, value in config.items():
        expected = BACKEND_FIELDS[name]
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            shown = "<not shown>" if name == "api_key_env" else repr(value)
            raise ValueError(f"{where}: field '{name}' must be "
                             f"{'a number' if expected == (int, float) else expected.__name__}, got {shown}")
    check_backend_numbers(config, lambda f: f"{where}: field '{f}'")
    base_url, local_model = config.get("base_url"), config.get("local_model")
    if bool(base_url) == bool(local_model):
        raise ValueError(f"{where}: give exactly one of 'base_url' (a server) or 'local_model' (in-process)"
                         + ("" if base_url else ", none was given"))
    if local_model:
        from rlkd.models import is_gguf  # a .gguf file is checked, and converted once, by models.resolve_model

        if local_model.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(local_model)) \
                and not is_gguf(local_model):
            raise OSError(f"no such folder: {local_model}")
        for name in ("api_key_env", "concurrency", "timeout", "max_retries"):
            if config.get(name) is not None:
                log.info("%s: field '%s' does not apply to a local model; ignored", where, name)
        backend: Backend = TransformersBackend(local_model, batch_size=config.get("local_batch_size") or 8)
        if config.get("model") and config["model"] != local_model:
            backend.model = config["model"]
    else:
        if not config.get("model"):
            raise ValueError(f"{where}: missing field 'model' (the model name the server at {base_url} knows)")
        defaults = {"api_key_env": "OPENAI_API_KEY", "concurrency": 16, "timeout": 120.0, "max_retries": 4}
        options = {k: config[k] if config.get(k) is not None else d for k, d in defaults.items()}
        backend = OpenAIBackend(base_url, config["model"], **options)
    if config.get("cache"):
        from rlkd.cache import CachedBackend

        try:
            backend = CachedBackend(backend, config["cache"])
        except OSError as exc:  # not the model's fault: name the cache
            raise ValueError(f"{where}: field 'cache': {exc}") from None
    return backend


def backend_from_args(args: argparse.Namespace) -> Backend:
    """Build the backend named by the options of :func:`add_backend_arguments`; InputError on bad options."""
    from rlkd.errors import InputError

    config = {
        "base_url": getattr(args, "base_url", None),
        "local_model": getattr(args, "local_model", None),
        "model": getattr(args, "backend_model", None),
        "local_batch_size": getattr(args, "local_batch_size", None),
        "api_key_env": getattr(args, "api_key_env", None),
        "concurrency": getattr(args, "concurrency", None),
        "timeout": getattr(args, "timeout", None),
        "max_retries": getattr(args, "max_retries", None),
        "cache": getattr(args, "cache", None),
    }
    if bool(config["base_url"]) == bool(config["local_model"]):
        raise InputError("give exactly one of --base-url URL (an OpenAI-compatible server) or "
                       "--local-model PATH_OR_NAME (generate in this process)")
    if config["base_url"] and not config["model"]:
        raise InputError(f"--model NAME is required with --base-url (the model name the server at "
                       f"{config['base_url']} knows)")
    try:
        check_backend_numbers(config, lambda f: "--" + f.replace("_", "-"))
        return backend_from_config(config, where="backend options")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:  # a folder that is not there, a hub name that cannot be fetched
        raise InputError(f"--local-model {config['local_model']}: cannot load: {exc}") from None
