"""Batching for ``rlkd serve``: :class:`Batcher` queues completions that arrive concurrently, across requests,
and scores them in batches of up to ``max_batch`` with at most ``concurrency`` in flight; past
``max_pending`` waiting completions a request is refused (:class:`~rlkd.serve.scoring.Overloaded`, HTTP 503).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

from rlkd.serve.items import Overloaded, RewardRequest, ScoredItem, ServeOptions

log = logging.getLogger("rlkd.serve")


# --------------------------------------------------------------------------------------------------
# Batching concurrent requests


class Batcher:
    """Queue completions from concurrent callers and score them in batches.

    ``score`` is an async function from a list of requests to a list of results. A batch closes at
    ``max_batch`` items or ``max_wait`` seconds after its first item; at most ``concurrency`` batches are
    scored at once (while all are busy, new items wait and form the next, larger batch). Once
    ``max_pending`` items are queued or being scored, :meth:`submit` raises :class:`Overloaded`.
    """

    def __init__(self, score: Callable[[list[RewardRequest]], Awaitable[list[ScoredItem]]], *,
                 max_batch: int = ServeOptions.max_batch, max_wait: float = ServeOptions.batch_wait,
                 concurrency: int = ServeOptions.concurrency, max_pending: int = ServeOptions.max_pending) -> None:
        if min(max_batch, concurrency, max_pending) < 1 or max_wait < 0:
            raise ValueError("max_batch, concurrency and max_pending must be >= 1 and max_wait >= 0")
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.concurrency = concurrency
        self.max_pending = max_pending
        self.pending = 0
        self.batches = 0
        self.largest_batch = 0
        self.closed = False
        self._queue: asyncio.Queue | None = None
        self._slots: asyncio.Semaphore | None = None
        self._runner: asyncio.Task | None = None
        self._scoring: set[asyncio.Task] = set()

    async def submit(self, requests: Sequence[RewardRequest]) -> list[ScoredItem]:
        """Score ``requests`` (in whatever batches form); results in order."""
        if self.closed:
            raise Overloaded("the server is shutting down")
        if self.pending + len(requests) > self.max_pending:
            raise Overloaded(f"{self.pending} completions already waiting (max_pending {self.max_pending})")
        if self._runner is None:
            self._queue, self._slots = asyncio.Queue(), asyncio.Semaphore(self.concurrency)
            self._runner = asyncio.get_running_loop().create_task(self._run())
        loop = asyncio.get_running_loop()
        futures = []
        for request in requests:
            future = loop.create_future()
            self._queue.put_nowait((request, future))  # type: ignore[union-attr]
            futures.append(future)
        self.pending += len(requests)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            task = loop.create_task(self._score(batch))
            self._scoring.add(task)
            task.add_done_callback(self._scoring.discard)

    async def _score(self, batch: list[tuple[RewardRequest, asyncio.Future]]) -> None:
        assert self._slots is not None
        try:
            results = await self.score([request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self.pending -= len(batch)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self._slots.release()

    async def close(self) -> None:
        """Refuse new work, finish what is queued or being scored, then stop."""
        self.closed = True
        while self.pending:
            await asyncio.sleep(0.01)
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
