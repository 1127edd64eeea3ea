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
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import inspect
import ipaddress
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from rlkd.config import GRPOJob, build_job
from rlkd.recipes import merge_overrides, read_recipe

log = logging.getLogger("rlkd.serve")

DEFAULT_PORT = 5000
TOKEN_ENV = "RLKD_SERVE_TOKEN"
NO_STUDENT = "(rlkd serve: no student model)"  # GRPOJob requires a model; the server never loads one
# end-of-sequence markers a decoded OpenRLHF query may end with (it decodes with special tokens kept)
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>",
               "<eos>", "<|end|>")


class UnscorableRequest(ValueError):
    """An item the server cannot score whatever it retries (no matching record, malformed input)."""


class Overloaded(RuntimeError):
    """Too many completions are waiting (or the server is stopping): try again later."""


# --------------------------------------------------------------------------------------------------
# Items and results


@dataclass
class RewardRequest:
    """One completion to score, and what identifies its record of the RLKD dataset.

    ``label`` is a record id when the dataset has that id, else the reference answer; ``problem`` is the
    problem text as in the dataset; ``prompt`` is any text containing it (e.g. the chat-templated prompt).
    """

    completion: str
    label: str | None = None
    problem: str | None = None
    prompt: str | None = None
    record_id: str | None = None

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> "RewardRequest":
        """Read one item of ``/v1/score``; a malformed item raises UnscorableRequest naming ``where``."""
        if not isinstance(obj, Mapping):
            raise UnscorableRequest(f"{where}: expected an object, got {type(obj).__name__}")
        if not isinstance(obj.get("completion"), str):
            raise UnscorableRequest(f"{where}: 'completion' must be a string")
        values = {}
        for name, key in (("label", "label"), ("problem", "problem"), ("prompt", "prompt"), ("record_id", "id")):
            value = obj.get(key)
            if value is not None and not isinstance(value, (str, int)):
                raise UnscorableRequest(f"{where}: '{key}' must be a string")
            values[name] = None if value is None else str(value)
        return cls(completion=obj["completion"], **values)


@dataclass
class ScoredItem:
    """The reward of one completion: the weighted total, each component, the structure reward's result.

    ``reward`` is None exactly when ``error`` says why (``retryable``: a backend failed, trying again may
    help). ``components`` maps each reward name to its value, None where it could not be computed; it is
    empty when the item could not even be matched to its record.
    """

    reward: float | None
    components: dict[str, float | None] = field(default_factory=dict)
    structure: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    record_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "components": self.components, "structure": self.structure,
                "error": self.error, "retryable": self.retryable, "id": self.record_id}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ScoredItem":
        return cls(reward=obj.get("reward"), components=dict(obj.get("components") or {}),
                   structure=obj.get("structure"), error=obj.get("error"), retryable=bool(obj.get("retryable")),
                   record_id=obj.get("id"))


def completion_from_query(query: str, prompt: str | None, markers: Sequence[str] = END_MARKERS) -> str:
    """The response of an OpenRLHF query (prompt + response, decoded with special tokens): the text after
    ``prompt``, with trailing end-of-sequence markers removed.

    >>> completion_from_query("<|im_start|>user\\n1+1?<|im_end|>\\n<think>2</think><|im_end|>",
    ...                       "<|im_start|>user\\n1+1?<|im_end|>\\n")
    '<think>2</think>'
    """
    if prompt:
        if not query.startswith(prompt):
            raise UnscorableRequest("the query does not start with its prompt (OpenRLHF sends prompt + response)")
        query = query[len(prompt):]
    stripped = True
    while stripped:
        stripped = False
        tail = query.rstrip()
        for marker in markers:
            if marker and tail.endswith(marker):
                query, stripped = tail[: -len(marker)], True
    return query


# --------------------------------------------------------------------------------------------------
# The RLKD dataset, by record id and by problem


class RecordIndex:
    """The training rows of the RLKD dataset (``rlkd.data.grpo_rows``), found by id or by problem."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], ids: Sequence[str]) -> None:
        self.rows = list(rows)
        self.by_id: dict[str, int] = {}
        self.by_problem: dict[str, int] = {}
        for index, (row, record_id) in enumerate(zip(self.rows, ids, strict=True)):
            self.by_id.setdefault(str(record_id), index)
            self.by_problem.setdefault(row["problem"].strip(), index)
        self._longest_first = sorted(self.by_problem, key=len, reverse=True)
        self._ids = [str(i) for i in ids]
        self._in_prompt: collections.OrderedDict[str, int | None] = collections.OrderedDict()

    @classmethod
    def from_job(cls, job: GRPOJob) -> "RecordIndex":
        """Read ``job.data`` the way training does (same columns, same checks)."""
        from rlkd.data import Records, grpo_rows

        records = Records(job.data.path, job.data.split, job.data.subset)
        rows = grpo_rows(records, job.data, "structure" in job.reward_names(), job.data.limit)
        ids = [str(obj.get("id", index)) for index, obj, _ in records.scan(["id"])][: len(rows)]
        return cls(rows, ids)

    def __len__(self) -> int:
        return len(self.rows)

    def _find_in_prompt(self, prompt: str) -> int | None:
        if prompt.strip() in self.by_problem:
            return self.by_problem[prompt.strip()]
        if prompt not in self._in_prompt:
            found = next((self.by_problem[p] for p in self._longest_first if p and p in prompt), None)
            self._in_prompt[prompt] = found
            while len(self._in_prompt) > 100_000:
                self._in_prompt.popitem(last=False)
        return self._in_prompt[prompt]

    def resolve(self, request: RewardRequest, need_record: bool) -> tuple[dict[str, Any] | None, str | None, str]:
        """(row or None, reference answer or None, record id or '') for a request; UnscorableRequest when
        ``need_record`` and no record matches."""
        index = None
        label_is_id = False
        if request.record_id is not None:
            if request.record_id not in self.by_id:
                raise UnscorableRequest(f"no record with id {request.record_id!r} in the RLKD dataset")
            index = self.by_id[request.record_id]
        elif request.label is not None and request.label in self.by_id:
            index, label_is_id = self.by_id[request.label], True
        elif request.problem is not None:
            index = self.by_problem.get(request.problem.strip())
        elif request.prompt is not None:
            index = self._find_in_prompt(request.prompt)
        if index is None and need_record:
            given = ("problem" if request.problem is not None else "prompt" if request.prompt is not None
                     else "label" if request.label is not None else None)
            if given is None:
                raise UnscorableRequest("no record id, label, problem or prompt to find the teacher's structure by")
            raise UnscorableRequest(f"no record of the RLKD dataset matches the {given} (the structure reward "
                                    "needs the teacher's structure: send the record id as the label, or the problem)")
        row = self.rows[index] if index is not None else None
        answer = request.label if request.label is not None and not label_is_id else (row or {}).get("answer")
        return row, answer, self._ids[index] if index is not None else ""


# --------------------------------------------------------------------------------------------------
# Scoring a batch with the training reward functions


def _is_async(func: Any) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


class RewardScorer:
    """The RLKD reward of a recipe for batches of :class:`RewardRequest`: the functions and weights of
    :func:`rlkd.rewards.build_rewards`, each called the way TRL calls it (sync ones in a thread), and a
    :class:`RewardLog` of what was scored.

    ``stop_on_failures=False`` (the server) lets the structure reward keep going whatever share of GSRM
    calls fail; ``True`` (in process) keeps the recipe's job-wide budget (``structure.max_failure_share``
    after ``min_failures``), so too many failures raise :class:`rlkd.backends.TooManyFailures`. The
    per-batch share of training is not applied: these batches form by arrival (one completion, for a
    caller that scores one at a time), not by training step.
    """

    def __init__(self, weights: Mapping[str, float], structure: Any, records: RecordIndex,
                 reward_log: "RewardLog | None" = None, *, stop_on_failures: bool = False) -> None:
        from rlkd.rewards import build_rewards

        self.funcs, func_weights = build_rewards(dict(weights), structure)
        self.names = [getattr(f, "__name__", type(f).__name__) for f in self.funcs]
        self.weights = dict(zip(self.names, func_weights))
        self.structure = structure
        self.records = records
        self.stop_on_failures = stop_on_failures
        self.log = reward_log or RewardLog(self.names, func_weights)
        self.unscored: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_job(cls, job: GRPOJob, *, stop_on_failures: bool = False, log_every: int = 10) -> "RewardScorer":
        """The scorer of a validated GRPO job (see :func:`load_serve_job`)."""
        from rlkd.train import grpo_structure_reward

        weights = job.rewards.resolved()
        if "structure" in weights:
            # batches here form by arrival, not by training step: no per-batch stop; the server does not
            # stop at all (it counts failures and answers them with an error status)
            job.structure.max_batch_failure_share = 1.0
            if not stop_on_failures:
                job.structure.max_failure_share = 1.0
        structure = grpo_structure_reward(job) if "structure" in weights else None
        names = list(weights)
        out = Path(job.output_dir) if job.output_dir else None
        return cls(weights, structure, RecordIndex.from_job(job),
                   RewardLog(names, [weights[n] for n in names], out, every=log_every),
                   stop_on_failures=stop_on_failures)

    async def aclose(self) -> None:
        """Close the GSRM and judge backends and write the last log record."""
        self.log.flush()
        if self.structure is None:
            return
        judge = self.structure.judge
        judges = list(getattr(judge, "judges", {}).values()) or [judge]  # a hybrid judge holds one per field
        candidates = [self.structure.decomposer.backend] + [getattr(j, "backend", None) for j in judges]
        backends = {id(b): b for b in candidates if b is not None and hasattr(b, "aclose")}
        for backend in backends.values():
            await backend.aclose()

    def record_unscored(self, cause: str, reason: str, retryable: bool, record_id: str | None = None,
                        components: dict[str, float | None] | None = None,
                        structure: dict[str, Any] | None = None) -> ScoredItem:
        """Count an unscored completion under ``cause``; its :class:`ScoredItem` with ``reward=None``."""
        self.unscored[cause] += 1
        return ScoredItem(None, components or {}, structure, reason, retryable, record_id)

    async def score(self, requests: Sequence[RewardRequest]) -> list[ScoredItem]:
        """Score a batch; one :class:`ScoredItem` per request, in order. Never a silent 0: an item that
        could not be scored in full has ``reward=None`` and an ``error``."""
        from rlkd.backends import TooManyFailures

        started = time.monotonic()
        need_record = "structure" in self.weights
        out: list[ScoredItem | None] = [None] * len(requests)
        todo, problems, answers, teachers, ids = [], [], [], [], []
        for i, request in enumerate(requests):
            try:
                row, answer, record_id = self.records.resolve(request, need_record)
            except UnscorableRequest as exc:
                out[i] = self.record_unscored("no record", str(exc), False, request.record_id)
                continue
            if "accuracy" in self.weights and answer is None:
                out[i] = self.record_unscored("no answer", "no reference answer (send it as the label, or the "
                                              "record id)", False, record_id or None)
                continue
            todo.append(i)
            problems.append(row["problem"] if row else (request.problem or request.prompt or ""))
            answers.append("" if answer is None else str(answer))
            teachers.append(row.get("teacher_structure") if row else None)
            ids.append(record_id or None)
        metrics: dict[str, list[float]] = collections.defaultdict(list)
        if todo:
            columns: dict[str, Any] = {"prompts": problems, "completions": [requests[i].completion for i in todo],
                                       "problem": problems, "answer": answers}
            if need_record:
                columns["teacher_structure"] = teachers
            structure_results: list[Any] = []
            hooks = {"log_metric": lambda name, value: metrics[name].append(float(value)),
                     "log_extra": lambda *args, **kwargs: None, "keep_results": structure_results.extend}
            calls = [func(**columns, **hooks) if _is_async(func) else asyncio.to_thread(func, **columns, **hooks)
                     for func in self.funcs]
            values = await asyncio.gather(*calls, return_exceptions=True)
            for name, value in zip(self.names, values):
                if isinstance(value, TooManyFailures) and self.stop_on_failures:
                    raise value
            for k, i in enumerate(todo):
                out[i] = self._item(k, values, structure_results, ids[k], answers[k])
        items: list[ScoredItem] = out  # type: ignore[assignment]
        self.log.add(items, metrics, time.monotonic() - started, dict(self.unscored))
        return items

    def _item(self, k: int, values: Sequence[Any], structure_results: Sequence[Any], record_id: str | None,
              answer: str) -> ScoredItem:
        components: dict[str, float | None] = {}
        problems: list[tuple[str, str, bool]] = []  # (cause, reason, retryable)
        structure = None
        for name, value in zip(self.names, values):
            if isinstance(value, BaseException):
                components[name] = None
                problems.append((f"{name} error", f"{name}: {type(value).__name__}: {value}", True))
                continue
            components[name] = None if value[k] is None else float(value[k])
            if name == "structure" and k < len(structure_results):
                result = structure_results[k]
                if isinstance(result, str):
                    problems.append(("GSRM failure", f"structure: GSRM call failed ({result})", True))
                else:
                    structure = result.to_dict()
                    if result.judge_failures:
                        reasons = "; ".join(r for s in result.steps for r in s.failures.values())[:300]
                        problems.append(("judge failure", f"structure: {result.judge_failures} judge verdict(s) "
                                                          f"failed ({reasons})", True))
            elif components[name] is None:
                cause = "unreadable answer" if name == "accuracy" else f"no {name}"
                reason = (f"accuracy: the reference answer {answer!r} cannot be read" if name == "accuracy"
                          else f"{name}: no reward for this completion")
                problems.append((cause, reason, False))
        if problems:
            cause = problems[0][0]
            return self.record_unscored(cause, "; ".join(p[1] for p in problems), any(p[2] for p in problems),
                                        record_id, components, structure)
        total = sum(self.weights[name] * value for name, value in components.items())  # type: ignore[operator]
        return ScoredItem(total, components, structure, None, False, record_id)


# --------------------------------------------------------------------------------------------------
# Logging in the training format


class RewardLog:
    """Collects scored batches; every ``every`` batches writes one ``metrics.jsonl`` record to
    ``output_dir`` (if given) and logs one line, in the format of ``rlkd train grpo``."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], output_dir: Path | None = None,
                 every: int = 10) -> None:
        self.names = list(names)
        self.weights = list(weights)
        self.output_dir = output_dir
        self.every = max(int(every), 1)
        self.step = 0
        self._reset()

    def _reset(self) -> None:
        self.batches = 0
        self.items: list[ScoredItem] = []
        self.metrics: dict[str, list[float]] = collections.defaultdict(list)
        self.seconds: list[float] = []
        self.unscored_total: dict[str, int] = {}

    def add(self, items: Sequence[ScoredItem], metrics: Mapping[str, Sequence[float]], seconds: float,
            unscored_total: Mapping[str, int]) -> None:
        self.batches += 1
        self.items.extend(items)
        for name, values in metrics.items():
            self.metrics[name].extend(values)
        self.seconds.append(seconds)
        self.unscored_total = dict(unscored_total)
        if self.batches >= self.every:
            self.flush()

    def logs(self) -> dict[str, Any]:
        """The metrics of the batches since the last flush, named as in training."""

        def mean_std(values: Sequence[float]) -> tuple[float, float]:
            return (statistics.fmean(values), statistics.pstdev(values)) if values else (math.nan, math.nan)

        scored = [i.reward for i in self.items if i.reward is not None]
        logs: dict[str, Any] = {}
        if scored:
            logs["reward"], logs["reward_std"] = mean_std(scored)
        for name in self.names:
            values = [i.components[name] for i in self.items if i.components.get(name) is not None]
            if values:
                logs[f"rewards/{name}/mean"], logs[f"rewards/{name}/std"] = mean_std(values)  # type: ignore[arg-type]
        for name, values in self.metrics.items():
            logs[name] = statistics.fmean(values)
        logs["serve/completions"] = len(self.items)
        logs["serve/unscored"] = sum(i.reward is None for i in self.items)
        logs["serve/batches"] = self.batches
        logs["serve/mean_batch_size"] = len(self.items) / max(self.batches, 1)
        logs["serve/mean_batch_seconds"] = statistics.fmean(self.seconds) if self.seconds else 0.0
        for cause, count in sorted(self.unscored_total.items()):
            logs[f"serve/unscored_total/{cause}"] = count
        return logs

    def flush(self) -> None:
        """Write and log the collected batches (nothing when there are none)."""
        from rlkd.train import METRICS_FILE, format_log_line, order_metrics

        if not self.batches:
            return
        self.step += 1
        ordered = order_metrics(self.logs(), self.names)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.step, **ordered}) + "\n")
        line = format_log_line(self.step, None, ordered, self.names, self.weights)
        log.info("%s | %d completions in %d batches, %d unscored", line, ordered["serve/completions"],
                 ordered["serve/batches"], ordered["serve/unscored"])
        self._reset()


# --------------------------------------------------------------------------------------------------
# Batching concurrent requests


class Batcher:
    """Queue completions from concurrent callers and score them in batches.

    ``score`` is an async function from a list of requests to a list of results. A batch closes at
    ``max_batch`` items or ``max_wait`` seconds after its first item; at most ``concurrency`` batches are
    scored at once (while all are busy, new items wait and form the next, larger batch). Once
    ``max_pending`` items are queued or being scored, :meth:`submit` raises :class:`Overloaded`.
    """

    def __init__(self, score: Callable[[list[RewardRequest]], Awaitable[list[ScoredItem]]], *, max_batch: int = 64,
                 max_wait: float = 0.05, concurrency: int = 4, max_pending: int = 4096) -> None:
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


# --------------------------------------------------------------------------------------------------
# The HTTP server


@dataclass
class ServeOptions:
    """Settings of :func:`build_app` (``rlkd serve``'s options)."""

    token: str | None = None
    max_batch: int = 64
    batch_wait: float = 0.05
    concurrency: int = 4
    max_pending: int = 4096
    scores: str = "reward"  # what OpenRLHF's "scores" carries: the reward, or accuracy (0/1, for filtering)
    end_markers: tuple[str, ...] = END_MARKERS


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


# --------------------------------------------------------------------------------------------------
# rlkd serve (its options: rlkd.cli.serve)


def load_serve_job(config: str | Path | None, overrides: Sequence[str] = ()) -> GRPOJob:
    """A GRPO recipe read for serving: validated as training validates it, without requiring a student
    ``model`` (the server loads none)."""
    data = merge_overrides(read_recipe(config) if config else {}, overrides)
    data.setdefault("model", NO_STUDENT)
    return build_job(GRPOJob, data)


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
