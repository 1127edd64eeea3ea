"""The HTTP side of ``rlkd serve``: :func:`build_app` (OpenRLHF's ``/get_reward``, ``/v1/score``,
``/health``), its options and counters, and :func:`is_loopback` for the bind check.
"""
from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from rlkd.serve.batching import Batcher
from rlkd.serve.items import (
    ServeOptions,
    Overloaded,
    RewardRequest,
    ScoredItem,
    UnscorableRequest,
    completion_from_query,
)
from rlkd.serve.scoring import RewardScorer

log = logging.getLogger("rlkd.serve")


# --------------------------------------------------------------------------------------------------
# The HTTP server


class ServerStats:
    """Request counters and recent latencies of the server."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)
        self.started = time.time()

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(ordered[min(int(p * len(ordered)), len(ordered) - 1)] * 1000, 1) if ordered else None

        return {"requests": dict(self.requests), "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
                "uptime_s": round(time.time() - self.started, 1)}


def build_app(scorer: RewardScorer, options: ServeOptions | None = None):
    """The Starlette application of ``rlkd serve`` around a :class:`RewardScorer`."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    options = options or ServeOptions()
    batcher = Batcher(scorer.score, max_batch=options.max_batch, max_wait=options.batch_wait,
                      concurrency=options.concurrency, max_pending=options.max_pending)
    stats = ServerStats()

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if not options.token:
            return True
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), options.token.encode())

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            raise UnscorableRequest(f"the body is not JSON ({exc})") from None

    def endpoint(name: str, handler: Callable[[Request], Awaitable[JSONResponse]]):
        async def run(request: Request) -> JSONResponse:
            started = time.monotonic()
            stats.requests[name] += 1
            if name != "health" and not authorized(request):
                response = error(401, "missing or wrong token (Authorization: Bearer TOKEN, or ?token=TOKEN)")
            else:
                try:
                    response = await handler(request)
                except UnscorableRequest as exc:
                    response = error(400, str(exc))
                except Overloaded as exc:
                    response = error(503, f"overloaded: {exc}")
                except Exception as exc:  # noqa: BLE001 - an answer, never a dropped connection
                    log.exception("%s failed", name)
                    response = error(500, f"{type(exc).__name__}: {exc}")
            stats.statuses[response.status_code] += 1
            if name != "health":
                stats.latencies.append(time.monotonic() - started)
            return response

        return run

    async def get_reward(request: Request) -> JSONResponse:
        body = await read_json(request)
        if not isinstance(body, Mapping) or not isinstance(body.get("query"), list):
            raise UnscorableRequest('expected {"query": [prompt + response, ...], "prompts": [...], "labels": [...]}')
        queries = body["query"]
        prompts, labels = body.get("prompts"), body.get("labels")
        for key, values in (("prompts", prompts), ("labels", labels)):
            if values is not None and (not isinstance(values, list) or len(values) != len(queries)):
                raise UnscorableRequest(f"'{key}' must be a list as long as 'query' ({len(queries)})")
        items: list[RewardRequest | ScoredItem] = []
        for i, query in enumerate(queries):
            prompt = prompts[i] if prompts is not None else None
            label = labels[i] if labels is not None else None
            if not isinstance(query, str) or not isinstance(prompt, (str, type(None))):
                raise UnscorableRequest(f"query {i}: query and prompt must be strings")
            try:
                completion = completion_from_query(query, prompt, options.end_markers)
            except UnscorableRequest as exc:
                items.append(scorer.record_unscored("no record", f"query {i}: {exc}", False))
                continue
            items.append(RewardRequest(completion, label=None if label is None else str(label),
                                       prompt=prompt if prompt is not None else query))
        to_score = [item for item in items if isinstance(item, RewardRequest)]
        scored = iter(await batcher.submit(to_score)) if to_score else iter(())
        results = [next(scored) if isinstance(item, RewardRequest) else item for item in items]
        failed = [r for r in results if r.reward is None]
        if failed:
            status = 503 if any(r.retryable for r in failed) else 422
            return error(status, f"{len(failed)} of {len(results)} completions could not be scored: "
                         + "; ".join(dict.fromkeys(r.error or "" for r in failed)),
                         results=[r.to_dict() for r in results])
        rewards = [r.reward for r in results]
        scores = [r.components.get("accuracy") for r in results] if options.scores == "accuracy" else rewards
        extra_logs = {name: [r.components[name] for r in results] for name in scorer.names}
        return JSONResponse({"rewards": rewards, "scores": scores, "extra_logs": extra_logs})

    async def score(request: Request) -> JSONResponse:
        body = await read_json(request)
        if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
            raise UnscorableRequest('expected {"items": [{"completion": ..., "id" | "problem" | "label": ...}]}')
        requests = [RewardRequest.from_dict(obj, f"items[{i}]") for i, obj in enumerate(body["items"])]
        results = await batcher.submit(requests) if requests else []
        return JSONResponse({"results": [r.to_dict() for r in results], "weights": scorer.weights})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "stopping" if batcher.closed else "ok", "records": len(scorer.records),
                             "weights": scorer.weights, "pending": batcher.pending, "batches": batcher.batches,
                             "largest_batch": batcher.largest_batch, "unscored": dict(scorer.unscored),
                             **stats.as_dict()})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()
        await scorer.aclose()
        log.info("rlkd serve: stopped after %s", json.dumps(stats.as_dict()))

    app = Starlette(routes=[Route("/get_reward", endpoint("get_reward", get_reward), methods=["POST"]),
                            Route("/v1/score", endpoint("score", score), methods=["POST"]),
                            Route("/health", endpoint("health", health), methods=["GET"])],
                    lifespan=lifespan)
    app.state.batcher, app.state.stats = batcher, stats
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, localhost).

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
