"""The OpenAI-compatible backend: any server (``vllm serve``, ``transformers serve``, a hosted provider)
through the official ``openai.AsyncOpenAI`` client.

How it departs from the authors' code (SPEC section 4):

1. No client or address is created at import time; the key is read from the variable named by
   ``api_key_env`` and scrubbed from every failure reason.
2. Each request has a timeout and a bounded number of retries with exponential backoff and jitter, only on
   transient errors (timeouts, connection errors, HTTP 408, 429 honouring ``Retry-After`` up to a cap,
   5xx, unreadable bodies); other 4xx fail at once. The plain and the streamed request share one retry
   loop (:meth:`OpenAIBackend._with_retries`).
3. Requests of one batch run concurrently up to ``concurrency``; a streamed request is closed when the
   caller has read enough (vLLM and ``transformers serve`` then abort it).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

from rlkd.backends.config import BackendConfig
from rlkd.backends.base import (
    PLACEHOLDER_API_KEY,
    Backend,
    Completion,
    GenerationRequest,
    StreamSink,
    _short,
    check_backend_numbers,
    looks_like_a_key,
    read_api_key,
)


log = logging.getLogger("rlkd.backends")

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
        api_key_env: str | None = BackendConfig.api_key_env,
        concurrency: int = BackendConfig.concurrency,
        timeout: float = BackendConfig.timeout,
        max_retries: int = BackendConfig.max_retries,
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
        from openai.types.chat import ChatCompletion

        client, semaphore = self._loop_state()
        kwargs = self._request_kwargs(request, n, seed)
        body = {**{k: v for k, v in kwargs.items() if k != "extra_body"}, **kwargs.get("extra_body", {})}

        async def attempt() -> tuple[list[str], int, int]:
            async with semaphore:
                # the body as it is, posted by the client: the SDK's typed transform of the arguments costs
                # about 3 ms of CPU per request, which a burst of judge calls pays all at once
                response = await asyncio.wait_for(
                    client.post("/chat/completions", body=body, cast_to=ChatCompletion), self.timeout)
            return _read_response(response)

        return await self._with_retries(attempt, "request")

    async def _with_retries(self, attempt: Callable[[], Awaitable[Any]], what: str,
                            before_retry: Callable[[], None] | None = None) -> Any:
        """Run ``attempt()`` until it succeeds, at most ``1 + max_retries`` times: the one retry loop of the
        plain and the streamed requests. Every failure is classified (:func:`_classify`); a permanent one,
        or the last transient one, is logged and raised; a transient one is logged, counted in
        ``stats.retries`` and retried after :meth:`_backoff` (``before_retry`` runs first)."""
        tries = 0
        while True:
            try:
                return await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified, counted and logged
                failure = _classify(exc, self.timeout)
            if isinstance(failure, _Permanent) or tries >= self.max_retries:
                log.warning("%s to %s failed for good after %d attempt%s: %s",
                            what, self.model, tries + 1, "" if tries == 0 else "s", self._scrub(str(failure)))
                raise failure
            delay = self._backoff(tries, getattr(failure, "retry_after", None))
            tries += 1
            self.stats.retries += 1
            log.warning("%s to %s: %s; retry %d of %d in %.2fs",
                        what, self.model, self._scrub(str(failure)), tries, self.max_retries, delay)
            if before_retry is not None:
                before_retry()
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
        """One streamed request with the retries, timeout and counting of :meth:`_attempts` (:meth:`_with_retries`).

        ``completion_tokens`` is the server's count when it sends one (a stream read to its end, with
        ``stream_options.include_usage``); a stream closed early has no usage, so its tokens are the
        content pieces received (one per token on vLLM and ``transformers serve``)."""
        if request.n != 1:  # several samples do not stream: answer them whole
            [completion] = await Backend.generate_stream(self, [request], [sink])
            return completion
        client, semaphore = self._loop_state()
        kwargs = {**self._request_kwargs(request, 1, request.seed), "stream": True,
                  "stream_options": {"include_usage": True}}
        pieces: list[str] = []  # of the current attempt

        async def read(response: Any) -> tuple[bool, bool, Any]:
            """(finished, stopped, usage) of the event stream, fed to the sink as it comes."""
            finished, usage = False, None
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return True, False, usage
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
                    return finished, True, usage
            return finished, False, usage

        async def attempt() -> Completion:
            pieces.clear()
            usage = None
            stopped = finished = False
            async with semaphore, asyncio.timeout(self.timeout):
                if sink.stop_requested:  # decided before the request was even sent
                    stopped = True
                else:
                    # the raw event stream: the SDK's typed chunk objects cost about 1 ms of CPU per
                    # token, more than a batch of concurrent streams leaves a client per token
                    raw = client.chat.completions.with_streaming_response.create(**kwargs)
                    async with raw as response:  # leaving it closes the stream: the server aborts
                        finished, stopped, usage = await _until_stop(read(response), sink)
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
            return completion

        try:
            completion = await self._with_retries(attempt, "streamed request", before_retry=sink.restart)
        except (_Transient, _Permanent) as failure:
            completion = Completion(error=self._scrub(str(failure)), completion_tokens=len(pieces))
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


async def _until_stop(reading: Any, sink: Any) -> tuple[bool, bool, Any]:
    """Await ``reading`` (a stream reader returning (finished, stopped, usage)); a sink with a
    ``stop_event`` (an asyncio.Event set with its stop request) ends it the moment the request comes,
    instead of when the next token arrives, so the stream is closed without waiting for that token."""
    stop = getattr(sink, "stop_event", None)
    if stop is None:
        return await reading
    task = asyncio.ensure_future(reading)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False, True, None
    finally:
        task.cancel()
        waiter.cancel()


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
