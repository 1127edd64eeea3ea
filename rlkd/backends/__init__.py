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
- :class:`~rlkd.backends.cache.CachedBackend` wraps any of them with a persistent SQLite request cache.

:func:`backend_from_config` builds a backend from the field names of a YAML config's backend section
(the command line's options, ``rlkd.cli.options.add_backend_arguments``, map onto the same fields).

The package, bottom-up (each module imports only those above it in this list):

| module | what |
|---|---|
| ``base`` | the interface (:class:`Backend`, requests, completions, stats, stream sinks), :class:`FailureBudget`, checked settings |
| ``openai_client`` | :class:`OpenAIBackend` |
| ``local`` | :class:`TransformersBackend` |
| ``scripted`` | :class:`ScriptedBackend` |
| ``cache`` | :class:`~rlkd.backends.cache.CachedBackend`, :class:`~rlkd.backends.cache.RequestCache` |
| ``config`` | :class:`BackendConfig`: a recipe's backend section, the one owner of the backend defaults |
| ``build`` | :func:`build_backend` and :func:`backend_from_config`: the one place a config becomes a backend |

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

from rlkd.backends.base import (
    BACKEND_LIMITS,
    Backend,
    BackendStats,
    check_backend_numbers,
    Completion,
    FailureBudget,
    GenerationRequest,
    looks_like_a_key,
    PLACEHOLDER_API_KEY,
    read_api_key,
    StreamSink,
    TooManyFailures,
)
from rlkd.backends.openai_client import (
    OpenAIBackend,
    parse_retry_after,
)
from rlkd.backends.config import BackendConfig
from rlkd.backends.local import (
    TransformersBackend,
)
from rlkd.backends.scripted import (
    ScriptedBackend,
)
from rlkd.backends.build import (
    build_backend,
    BACKEND_FIELDS,
    backend_from_config,
)

__all__ = [
    "BACKEND_LIMITS",
    "PLACEHOLDER_API_KEY",
    "GenerationRequest",
    "Completion",
    "BackendStats",
    "Backend",
    "StreamSink",
    "TooManyFailures",
    "FailureBudget",
    "check_backend_numbers",
    "looks_like_a_key",
    "read_api_key",
    "parse_retry_after",
    "OpenAIBackend",
    "TransformersBackend",
    "ScriptedBackend",
    "BACKEND_FIELDS",
    "backend_from_config",
    "build_backend",
    "BackendConfig",
]
