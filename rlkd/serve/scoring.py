"""Scoring completions for ``rlkd serve``: the RLKD dataset index (teacher structure by record id or by
problem) and :class:`RewardScorer`, the training reward functions run on a batch.

1. A completion whose reward cannot be computed in full is an error (retryable when a GSRM or judge call
   failed), never a silent 0 or a partial sum.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.backends import TooManyFailures
from rlkd.config import GRPOJob, build_job
from rlkd.data import Records, grpo_rows
from rlkd.recipes import merge_overrides, read_recipe
from rlkd.rewards import build_rewards
from rlkd.train import grpo_structure_reward
from rlkd.serve.items import NO_STUDENT, RewardRequest, ScoredItem, UnscorableRequest
from rlkd.serve.reward_log import RewardLog

log = logging.getLogger("rlkd.serve")


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


def load_serve_job(config: str | Path | None, overrides: Sequence[str] = ()) -> GRPOJob:
    """A GRPO recipe read for serving: validated as training validates it, without requiring a student
    ``model`` (the server loads none)."""
    data = merge_overrides(read_recipe(config) if config else {}, overrides)
    data.setdefault("model", NO_STUDENT)
    return build_job(GRPOJob, data)
