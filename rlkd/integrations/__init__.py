"""The RLKD reward for other trainers: verl (:mod:`rlkd.integrations.verl`) and OpenRLHF
(:mod:`rlkd.integrations.openrlhf`).

Both score through a *scorer* with one interface, ``score(requests)`` (sync) and ``await
ascore(requests)`` (async), lists of :class:`rlkd.serve.RewardRequest` in and of
:class:`rlkd.serve.ScoredItem` out:

- :class:`LocalScorer` scores in this process: the recipe's :class:`rlkd.serve.RewardScorer` behind a
  :class:`rlkd.serve.Batcher` on an event loop of its own, in a background thread, so that calls from
  any thread or event loop (verl's reward workers, OpenRLHF's thread pool) are batched together before
  the GSRM sees them. It keeps the recipe's failure budget, as training does: too many GSRM failures
  raise :class:`rlkd.backends.TooManyFailures` in the caller.
- :class:`RemoteScorer` posts to a running ``rlkd serve`` (``POST /v1/score``), with a timeout and
  bounded retries with backoff on connection errors and 5xx replies; the server batches.

:func:`scorer_for` returns one shared scorer per configuration: ``config`` (a recipe path) for in
process, ``url`` for a server, or, when neither is given, the environment variables ``RLKD_CONFIG`` /
``RLKD_SERVE_URL`` (and ``RLKD_SERVE_TOKEN`` for a server's token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from rlkd.serve import Batcher, RewardRequest, RewardScorer, ScoredItem, TOKEN_ENV, load_serve_job

log = logging.getLogger("rlkd.integrations")

CONFIG_ENV = "RLKD_CONFIG"
URL_ENV = "RLKD_SERVE_URL"


class LocalScorer:
    """The reward of a recipe, scored in this process on a background event loop (see the module text)."""

    def __init__(self, config: str, overrides: Sequence[str] = (), *, max_batch: int = 64,
                 batch_wait: float = 0.05, concurrency: int = 4, max_pending: int = 1_000_000) -> None:
        job = load_serve_job(config, overrides)
        self.scorer = RewardScorer.from_job(job, stop_on_failures=True)
        self.batcher = Batcher(self.scorer.score, max_batch=max_batch, max_wait=batch_wait,
                               concurrency=concurrency, max_pending=max_pending)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rlkd-scorer", daemon=True)
        self._thread.start()

    @property
    def weights(self) -> dict[str, float]:
        return self.scorer.weights

    def _submit(self, requests: Sequence[RewardRequest]):
        return asyncio.run_coroutine_threadsafe(self.batcher.submit(list(requests)), self._loop)

    def score(self, requests: Sequence[RewardRequest], timeout: float | None = None) -> list[ScoredItem]:
        """Score from synchronous code (any thread but the scorer's own)."""
        return self._submit(requests).result(timeout)

    async def ascore(self, requests: Sequence[RewardRequest]) -> list[ScoredItem]:
        """Score from a coroutine on any event loop."""
        return await asyncio.wrap_future(self._submit(requests))

    def close(self) -> None:
        """Finish what is queued, close the backends and stop the background loop."""
        async def stop() -> None:
            await self.batcher.close()
            await self.scorer.aclose()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(120)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class RemoteScorer:
    """A client of ``rlkd serve``'s ``POST /v1/score``.

    ``url`` is the server's address (``http://127.0.0.1:5000``); ``token`` its access token, if any.
    Each call tries ``tries`` times (connection errors, timeouts and 5xx replies; waiting ``backoff``,
    then twice as long, ...) and then raises ``RuntimeError`` with the last reason; a 4xx reply raises
    ``ValueError`` with the server's message at once.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 180.0, tries: int = 5,
                 backoff: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.tries = max(int(tries), 1)
        self.backoff = backoff
        self.failures = 0  # attempts that failed, over the client's life
        self.weights: dict[str, float] | None = None

    def score(self, requests: Sequence[RewardRequest], timeout: float | None = None) -> list[ScoredItem]:
        """Score from synchronous code."""
        items = [{"completion": r.completion, "label": r.label, "problem": r.problem, "prompt": r.prompt,
                  "id": r.record_id} for r in requests]
        body = json.dumps({"items": [{k: v for k, v in item.items() if v is not None} for item in items]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        reason = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(f"{self.url}/v1/score", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                    reply = json.loads(response.read())
                self.weights = reply.get("weights")
                results = [ScoredItem.from_dict(obj) for obj in reply["results"]]
                if len(results) != len(requests):
                    raise ValueError(f"{len(results)} results for {len(requests)} items")
                return results
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")
                try:
                    text = json.loads(text).get("error", text)
                except (ValueError, AttributeError):
                    pass
                if exc.code < 500:
                    raise ValueError(f"rlkd serve at {self.url}: HTTP {exc.code}: {text}") from None
                reason = f"HTTP {exc.code}: {text}"
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self.failures += 1
            log.warning("rlkd serve at %s: attempt %d of %d failed: %s", self.url, attempt + 1, self.tries, reason)
        raise RuntimeError(f"rlkd serve at {self.url}: no answer after {self.tries} tries; last: {reason}")

    async def ascore(self, requests: Sequence[RewardRequest]) -> list[ScoredItem]:
        """Score from a coroutine (the blocking call runs in a thread; the server batches)."""
        return await asyncio.to_thread(self.score, requests)


_SCORERS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def scorer_for(config: str | None = None, url: str | None = None, token: str | None = None) -> Any:
    """The shared :class:`LocalScorer` (``config``) or :class:`RemoteScorer` (``url``) of this process;
    with neither, read ``RLKD_CONFIG`` / ``RLKD_SERVE_URL`` from the environment."""
    if config is None and url is None:
        config, url = os.environ.get(CONFIG_ENV) or None, os.environ.get(URL_ENV) or None
    if (config is None) == (url is None):
        raise ValueError(f"give the RLKD reward either a recipe (config / {CONFIG_ENV}) to score in process or "
                         f"the address of a running `rlkd serve` (url / {URL_ENV}), not both or neither")
    key = ("config", str(config)) if config is not None else ("url", str(url))
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = (LocalScorer(str(config)) if config is not None
                             else RemoteScorer(str(url), token or os.environ.get(TOKEN_ENV) or None))
        return _SCORERS[key]


def close_scorers() -> None:
    """Close every shared scorer of this process (in-process ones finish their queue first)."""
    with _LOCK:
        scorers = list(_SCORERS.values())
        _SCORERS.clear()
    for scorer in scorers:
        if hasattr(scorer, "close"):
            scorer.close()
