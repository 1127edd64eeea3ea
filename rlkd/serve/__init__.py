"""``rlkd serve``: the whole RLKD reward over HTTP, for trainers other than TRL (OpenRLHF, verl).

``rlkd serve --config RECIPE.yaml --port 5000`` reads a GRPO recipe (``rlkd train grpo``'s format: the
``data``, ``rewards`` and ``structure`` sections; ``model`` and ``training`` are not used) and scores
completions with the same reward functions training uses (:func:`rlkd.rewards.build_rewards` with the
structure reward of :func:`rlkd.train.grpo_structure_reward`): accuracy, format, tag_count and structure,
with the recipe's weights, GSRM and judge backends and modes.

Endpoints:

- ``POST /get_reward``: OpenRLHF's remote reward protocol (the path of its reference server). The body
  is ``{"query": [prompt + response], "prompts": [prompt], "labels": [label]}``; the reply is
  ``{"rewards": [...], "scores": [...], "extra_logs": {component: [...]}}``. The response is the query
  after its prompt, with trailing end-of-sequence markers removed (OpenRLHF decodes with special tokens).
- ``POST /v1/score``: our own API. ``{"items": [{"completion": ..., "problem" | "prompt" | "id" |
  "label": ...}]}`` in; ``{"results": [{"reward", "components", "structure", "error", "retryable"}],
  "weights": {...}}`` out, one result per item, each with the structure reward's result object.
- ``GET /health``: status, records, weights and counters.

The teacher's structure is looked up in the recipe's RLKD dataset (``data.path``): by record id (an
item's ``id``, or a ``label`` that is a known id), else by problem (the exact problem text, or the
longest dataset problem contained in the prompt). A ``label`` that is not a record id is the reference
answer; without one, the record's ``answer`` is used.

Completions that arrive concurrently, across requests, are queued and scored in batches of up to
``--max-batch`` (waiting at most ``--batch-wait`` seconds for a batch to fill), with at most
``--concurrency`` batches in flight; once ``--max-pending`` completions are waiting, new requests get
HTTP 503 with ``Retry-After`` (back-pressure) instead of an ever longer queue. Every ``--log-every``
batches, one console line and one ``metrics.jsonl`` record in the recipe's ``output_dir`` give the
reward and its components in the format of training (:func:`rlkd.train.format_log_line`).

How this departs from training with ``rlkd train grpo`` (and from the authors' code):

1. A completion whose reward cannot be computed in full is never a silent 0 and never a partial sum:
   ``/get_reward`` answers the whole request with an error status (503 with ``Retry-After`` when a
   GSRM or judge call failed, so OpenRLHF's client tries again; 422 when the input cannot be scored,
   e.g. no record matches), and ``/v1/score`` gives that item ``reward: null`` with the reason. TRL
   instead sums the other components of such a sample (``nansum``).
2. The server does not stop on failures as training does (``structure.max_failure_share``): it keeps
   answering, counts every unscored completion by cause and reports the counts in ``/health`` and the
   logs; the trainer's client decides what to do with an error.
3. A structure reward with a failed judge verdict is unscored (an error) rather than counted as a
   mismatch.
4. It binds 127.0.0.1 unless told otherwise and refuses a non-loopback address without a token (read
   from the environment variable ``--token-env``, default ``RLKD_SERVE_TOKEN``); with a token, every
   request but ``/health`` must carry ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (OpenRLHF
   sends no headers, so its URL carries the token).

The package, bottom-up: ``items`` (requests, results, defaults), ``reward_log`` (the training-format log),
``scoring`` (the dataset index and :class:`RewardScorer`), ``batching`` (:class:`Batcher`), ``app``
(:func:`build_app`, :func:`is_loopback`). The command's options are ``rlkd.cli.serve``.
"""

from __future__ import annotations

from rlkd.serve.items import (
    DEFAULT_PORT,
    END_MARKERS,
    NO_STUDENT,
    Overloaded,
    RewardRequest,
    ScoredItem,
    ServeOptions,
    TOKEN_ENV,
    UnscorableRequest,
    completion_from_query,
)
from rlkd.serve.reward_log import (
    RewardLog,
)
from rlkd.serve.scoring import (
    RecordIndex,
    RewardScorer,
    load_serve_job,
)
from rlkd.serve.batching import (
    Batcher,
)
from rlkd.serve.app import (
    ServerStats,
    build_app,
    is_loopback,
)

__all__ = [
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "NO_STUDENT",
    "END_MARKERS",
    "UnscorableRequest",
    "Overloaded",
    "RewardRequest",
    "ScoredItem",
    "completion_from_query",
    "RewardLog",
    "RecordIndex",
    "RewardScorer",
    "load_serve_job",
    "Batcher",
    "ServeOptions",
    "ServerStats",
    "build_app",
    "is_loopback",
]
