"""TRL reward functions of RLKD: accuracy, format, tag count and the structure reward.

Each reward is a callable TRL's ``GRPOTrainer`` accepts in ``reward_funcs``: it gets the prompts, the
completions and every dataset column as keyword arguments, and returns one float per completion, or
``None`` for "no reward for this sample" (TRL skips it). The RLKD reward (SPEC section 1) is::

    3 * accuracy + 3 * structure + 2 * format + 2 * tag_count

:data:`REWARD_SETS` names it (``rlkd``) and the plain GRPO baseline without the structure term
(``outcome``); :func:`build_rewards` turns a set into TRL's ``reward_funcs`` and ``reward_weights``.

- :func:`accuracy`: the completion's final answer (right-most ``\\boxed{}`` first) against the dataset's
  ``answer`` column by math-verify, through :func:`rlkd.answers.grade_math`, the grading ``rlkd eval
  --grading reward`` reports (``rlkd eval`` grades as lighteval 0.9.0 by default; :mod:`rlkd.answers`
  lists where the two differ).
- :func:`format_reward` (named ``format``): the whole completion is ``<think>...</think>`` then
  ``<answer>...</answer>``.
- :func:`tag_count`: 0.25 for each of the four tags written once, on its own line.
- :class:`StructureReward` (named ``structure``, ``async``): decomposes each completion's reasoning with
  the GSRM, compares it with the teacher's structure from the ``teacher_structure`` column using a judge,
  and logs the reward's components (match rates, prefix length, failures) as training metrics.

How this departs from the authors' code:

1. The teacher structure is read from the data (precomputed once with ``rlkd decompose``). If only the
   raw ``teacher_reasoning`` is there, it is decomposed once per distinct prompt and kept in memory
   across steps (with a warning), not re-decomposed for each of the generations at every step.
2. A GSRM call that failed gives ``None`` (the sample is skipped), not a silent 0; GSRM and judge
   failures are counted and logged, and training stops with an error once too large a share fails.
3. Student decompositions and judge calls of a batch all run concurrently, and the reward is an
   ``async`` function, so TRL runs it beside the other rewards.
4. A batch whose structure rewards are all zero raises a loud warning (the authors' label mismatch made
   every reward zero without a sign).
5. A completion's accuracy is ``None`` when the gold answer cannot be read, instead of 0 or 1.
6. Early exit (``early_exit=True``, the default; SPEC section 8): the GSRM's reply is streamed and
   judged as it comes, and its generation is stopped once the reward is decided (the first
   meta-reasoning mismatch, or the teacher's step count), with the same rewards. The logs gain the
   GSRM's generated tokens per completion, the share stopped early, an estimate of the tokens saved
   and the histogram of the first mismatched step.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rlkd.answers import grade_math
from rlkd.backends import FailureBudget, TooManyFailures
from rlkd.judges import EarlyExitSink, score_many, score_structure_streaming
from rlkd.structure import Decomposition, MODES, StructureResult, as_decomposition

log = logging.getLogger("rlkd.rewards")


# --------------------------------------------------------------------------------------------------
# Reading TRL's inputs


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, or the contents of a list of chat messages joined.

    >>> completion_text([{"role": "assistant", "content": "<think>x</think>"}])
    '<think>x</think>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    parts = []
    for message in completion or []:
        content = message.get("content", "") if isinstance(message, Mapping) else message
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        parts.append(content if isinstance(content, str) else "")
    return "".join(parts)


def prompt_text(prompt: Any) -> str:
    """The problem statement of a prompt: a string as is, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt or [] if isinstance(m, Mapping) and m.get("role") == "user"]
    return completion_text(users[-1:]) if users else completion_text(prompt)


# --------------------------------------------------------------------------------------------------
# Outcome and format rewards


def accuracy(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's final answer equals the ``answer`` column, 0.0 when not, ``None`` when
    the gold answer cannot be read (the sample is skipped). Uses :func:`rlkd.answers.grade_math`:
    the right-most ``\\boxed{}`` first, compared by math-verify.

    >>> accuracy(["<think>2+2</think>\\n<answer>\\\\boxed{4}</answer>", "\\\\boxed{5}", "4"], ["4", "4", "4"])
    [1.0, 0.0, 0.0]
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        correct = grade_math(completion_text(completion), gold)
        rewards.append(None if correct is None else float(correct))
    return rewards


_FORMAT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the completion is ``<think>...</think>`` followed by ``<answer>...</answer>`` and nothing
    else (whitespace around and between the blocks allowed; each tag exactly once), else 0.0.

    If the chat template already opens ``<think>`` in the prompt, the completion lacks it and scores 0:
    use a template that does not pre-fill it.

    >>> format_reward(["<think>\\nx\\n</think>\\n<answer>\\n4\\n</answer>", "<think>x</think> 4", "4"])
    [1.0, 0.0, 0.0]
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        # counts first: with each tag once the pattern cannot backtrack (with many, it is quadratic)
        ok = all(text.count(tag) == 1 for tag in _TAGS) and _FORMAT.fullmatch(text) is not None
        rewards.append(1.0 if ok else 0.0)
    return rewards


format_reward.__name__ = "format"  # the name TRL logs it under (rewards/format/mean)

_TAG_LINES = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")


def tag_count(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """0.25 for each of ``<think>\\n``, ``\\n</think>\\n``, ``\\n<answer>\\n`` and ``\\n</answer>`` that
    occurs exactly once: a dense signal that pushes towards the tagged format before it is complete.

    >>> tag_count(["<think>\\nx\\n</think>\\n<answer>\\n4\\n</answer>", "<think>\\nx</think>", ""])
    [1.0, 0.25, 0.0]
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        rewards.append(0.25 * sum(text.count(tag) == 1 for tag in _TAG_LINES))
    return rewards


# --------------------------------------------------------------------------------------------------
# The structure reward


class StructureReward:
    """The structure reward as an ``async`` TRL reward function (logged as ``structure``).

    ``decomposer`` (a :class:`rlkd.gsrm.Decomposer`) rewrites each completion's reasoning; ``judge`` (any
    :class:`rlkd.judges.Judge`) compares its steps with the teacher's; ``mode`` and ``lazy`` are those of
    :func:`rlkd.judges.score_structure`. The teacher structure comes from the ``teacher_structure``
    column (decomposition JSON or dict, or GSRM text); failing that, the ``teacher_reasoning`` column is
    decomposed once per distinct prompt and cached. The problem shown to the GSRM is the ``problem``
    column if there is one, else the prompt's last user message.

    ``early_exit`` (default on) streams each GSRM reply, judges each field as soon as it is complete and
    stops the generation once the reward is decided (:func:`rlkd.judges.score_structure_streaming`); the
    rewards are the full computation's (``lazy`` has no effect then: judging is in order anyway).
    A stopped result has ``gsrm_stopped`` set and counts in ``student_steps`` only the steps read. The
    exactness needs a judge whose verdict on a pair does not depend on the other pairs sent with it
    (true of every local judge and of the per-pair LLM judge; the batched LLM judge sees other batches).

    Returns the reward per completion, or ``None`` where the GSRM call failed (student or teacher).
    Training stops with :class:`rlkd.backends.TooManyFailures` once more than ``max_failure_share`` of
    the GSRM calls, or of the judge verdicts, failed over the job (after ``min_failures`` were seen), or
    once more than ``max_batch_failure_share`` of one call's completions lost their structure reward to
    a GSRM failure (or of its judge verdicts failed): a dead server stops the run at the next batch
    instead of after the job-wide share catches up. The default batch share is
    ``max(0.5, max_failure_share)``, so ``max_failure_share=1.0`` never stops.

    Metrics, through TRL's ``log_metric`` (each value per call, TRL averages them per logging step):
    ``structure/meta_match``, ``structure/subproblem_match``, ``structure/answer_match``,
    ``structure/prefix_length``, ``structure/student_steps``, ``structure/teacher_steps`` and
    ``structure/zero_share`` (means over the scored completions); ``structure/student_parse_failures``,
    ``structure/teacher_parse_failures``, ``structure/judge_failures``, ``structure/gsrm_failures``
    and ``structure/truncated`` (counts in the call); ``structure/gsrm_tokens`` (tokens the GSRM generated per
    completion), ``structure/gsrm_stopped`` (share stopped early), ``structure/gsrm_tokens_saved_est``
    and ``structure/first_mismatch_step_{1,2,3,4_plus,none}`` (shares of the scored completions whose
    first meta-reasoning mismatch is at that step).

    ``keep_results``, when given (a callable, like ``log_metric``), receives one entry per completion: its
    :class:`~rlkd.structure.StructureResult`, or a string saying why it has none (``rlkd serve`` returns
    them).

    ``sample_log=PATH`` appends ``samples_per_step`` scored completions per call to a JSONL file, in the
    shape ``rlkd score --pairs --output`` writes plus ``step``, ``problem`` and ``completion``, for
    ``rlkd inspect --pairs PATH`` (main process only when launched with several processes).

    Example (a scripted GSRM and the text judge, no model at all)::

        import asyncio
        from rlkd.backends import ScriptedBackend
        from rlkd.gsrm import Decomposer
        from rlkd.judges import TextJudge
        gsrm = Decomposer(ScriptedBackend(lambda r: "[Meta-reasoning 1]: a\\n[Sub-problem 1]: b\\n[Answer 1]: c"))
        reward = StructureReward(gsrm, TextJudge())
        teacher = {"steps": [{"meta_reasoning": "a", "subproblem": "b", "answer": "c"}]}
        asyncio.run(reward(["p"], ["<think>...</think>"], teacher_structure=[teacher]))  # [1.0]
    """

    def __init__(
        self,
        decomposer: Any,
        judge: Any,
        mode: str = "paper",
        lazy: bool = False,
        *,
        early_exit: bool = True,
        teacher_column: str = "teacher_structure",
        teacher_reasoning_column: str = "teacher_reasoning",
        problem_column: str = "problem",
        max_failure_share: float = 0.1,
        min_failures: int = 20,
        max_batch_failure_share: float | None = None,
        sample_log: str | os.PathLike | None = None,
        samples_per_step: int = 2,
        teacher_cache_size: int = 100_000,
    ) -> None:

        if mode not in MODES:
            raise ValueError(f"unknown structure reward mode {mode!r}; choose one of {', '.join(MODES)}")
        self.__name__ = "structure"
        self.decomposer = decomposer
        self.judge = judge
        self.mode = mode
        self.lazy = lazy
        self.early_exit = early_exit
        self._full_gsrm_tokens = [0, 0]  # generated tokens and count of decompositions that ran to the end
        self.teacher_column = teacher_column
        self.teacher_reasoning_column = teacher_reasoning_column
        self.problem_column = problem_column
        self.gsrm_budget = FailureBudget(max_failure_share, min_failures, what="GSRM calls of the structure reward")
        self.judge_budget = FailureBudget(max_failure_share, min_failures, what="judge verdicts of the structure reward")
        self.max_batch_failure_share = (max(0.5, max_failure_share) if max_batch_failure_share is None
                                        else max_batch_failure_share)
        if not 0.0 <= self.max_batch_failure_share <= 1.0:
            raise ValueError(f"max_batch_failure_share must be within [0, 1], got {max_batch_failure_share}")
        self.sample_log = Path(sample_log) if sample_log else None
        self.samples_per_step = samples_per_step
        self.teacher_cache: OrderedDict[str, Decomposition] = OrderedDict()
        self.teacher_cache_size = teacher_cache_size
        self.calls = 0
        self._warned_teacher_reasoning = False

    # ---- teacher structures

    def _teacher_from_column(self, values: Sequence[Any]) -> list[Decomposition]:
        parsed: dict[str, Decomposition] = {}
        out = []
        for value in values:
            key = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            if key not in parsed:
                try:
                    parsed[key] = as_decomposition(value)
                except ValueError as exc:
                    parsed[key] = Decomposition(reason=f"unreadable '{self.teacher_column}' value: {exc}")
            out.append(parsed[key])
        return out

    async def _teacher_from_reasoning(self, problems: Sequence[str], traces: Sequence[Any]) -> list[Decomposition | None]:
        if not self._warned_teacher_reasoning:
            self._warned_teacher_reasoning = True
            message = (f"structure reward: no '{self.teacher_column}' column, so the teacher's traces in "
                       f"'{self.teacher_reasoning_column}' are decomposed during training (once per prompt, "
                       "cached in memory). Precompute them with `rlkd decompose` to save GSRM calls.")
            log.warning(message)
            warnings.warn(message, stacklevel=3)
        keys = [hashlib.sha256(json.dumps([p, str(t)]).encode()).hexdigest() for p, t in zip(problems, traces)]
        todo = {k: (p, str(t)) for k, p, t in zip(keys, problems, traces) if k not in self.teacher_cache}
        if todo:
            results = await self.decomposer.decompose(list(todo.values()))
            for key, result in zip(todo, results):
                self.gsrm_budget.record(result.error is None, f"teacher: {result.error}")
                if result.error is None:  # a failed call is retried at the next step
                    self.teacher_cache[key] = result.decomposition
            while len(self.teacher_cache) > self.teacher_cache_size:
                self.teacher_cache.popitem(last=False)
        return [self.teacher_cache.get(k) for k in keys]

    # ---- the reward

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        self.calls += 1
        count = len(completions)
        texts = [completion_text(c) for c in completions]
        problems = [str(p) for p in kwargs[self.problem_column]] if self.problem_column in kwargs \
            else [prompt_text(p) for p in prompts]

        if self.teacher_column in kwargs:
            teachers: list[Decomposition | None] = self._teacher_from_column(kwargs[self.teacher_column])
        elif self.teacher_reasoning_column in kwargs:
            teachers = await self._teacher_from_reasoning(problems, kwargs[self.teacher_reasoning_column])
        else:
            raise ValueError(f"the structure reward needs a '{self.teacher_column}' column (teacher decompositions, "
                             f"from `rlkd decompose`) or a '{self.teacher_reasoning_column}' column (raw teacher "
                             f"traces); the dataset has {sorted(k for k in kwargs if not k.startswith('log_'))}")
        students, by_index = await self.score(problems, texts, teachers)

        for student in students:
            self.gsrm_budget.record(student.error is None, f"student: {student.error}")
        skipped = [f"#{i}: " + (f"student: {students[i].error}" if students[i].error is not None
                                else "teacher: GSRM call failed") for i in range(count)
                   if students[i].error is not None or teachers[i] is None]
        if skipped:
            log.warning("structure reward: %d of %d completions skipped (no structure reward) because a GSRM call "
                        "failed: %s", len(skipped), count, "; ".join(skipped))
            self._check_batch("completions lost their structure reward to a GSRM failure", len(skipped), count,
                              skipped)

        results = list(by_index.values())
        judge_reasons = []
        for result in results:
            for step in result.steps:
                for reason in step.failures.values():
                    judge_reasons.append(reason)
                    self.judge_budget.record(False, reason)
            for _ in range(result.verdicts_used - result.judge_failures):
                self.judge_budget.record(True)
        self._check_batch("judge verdicts failed", len(judge_reasons), sum(r.verdicts_used for r in results),
                          judge_reasons)

        rewards: list[float | None] = [by_index[i].reward if i in by_index else None for i in range(count)]
        keep_results = kwargs.get("keep_results")
        if callable(keep_results):  # rlkd serve: each completion's result object, or why it has none
            keep_results([by_index[i] if i in by_index else (f"student: {students[i].error}" if students[i].error
                          is not None else "teacher: GSRM call failed") for i in range(count)])
        self._log(kwargs, students, teachers, by_index, count)
        self._write_samples(kwargs, problems, texts, students, teachers, by_index)
        return rewards

    async def score(self, problems: Sequence[str], texts: Sequence[str], teachers: Sequence[Decomposition | None],
                    ) -> tuple[list[Any], dict[int, StructureResult]]:
        """Decompose each completion with the GSRM and score it against its teacher structure.

        Returns the decomposer's results (``rlkd.gsrm.DecomposeResult``, one per completion) and the
        structure results of the completions that could be scored (GSRM call ok, teacher known), by
        index. With ``early_exit`` each GSRM reply is streamed and judged as it comes, and the
        generation is stopped once the reward is decided (:func:`rlkd.judges.score_structure_streaming`):
        same rewards, fewer generated tokens. This is the one path training and ``rlkd score
        --completions`` share; it records no failures (the caller does).
        """
        count = len(texts)
        items = list(zip(problems, texts))
        if not self.early_exit:
            students = await self.decomposer.decompose(items)
            scorable = [i for i in range(count) if students[i].error is None and teachers[i] is not None]
            results = await score_many([(teachers[i], students[i].decomposition) for i in scorable],  # type: ignore[misc]
                                       self.judge, self.mode, self.lazy)
            return students, dict(zip(scorable, results))
        sinks = [EarlyExitSink() for _ in range(count)]
        with_teacher = [i for i in range(count) if teachers[i] is not None]
        students, *results = await asyncio.gather(
            self.decomposer.decompose_stream(items, sinks),
            *(score_structure_streaming(teachers[i], self.judge, sinks[i], self.mode) for i in with_teacher))  # type: ignore[arg-type]
        return students, {i: r for i, r in zip(with_teacher, results) if r is not None and students[i].error is None}

    def _check_batch(self, what: str, failed: int, total: int, reasons: Sequence[str]) -> None:
        """Raise TooManyFailures when more than ``max_batch_failure_share`` of this call's items failed."""
        if total and failed / total > self.max_batch_failure_share:
            raise TooManyFailures(f"{failed} of {total} {what} in one batch ({failed / total:.1%} > "
                                  f"{self.max_batch_failure_share:.1%} allowed per batch); reasons: "
                                  + "; ".join(list(reasons)[:5]))

    # ---- reporting

    def _log(self, kwargs: Mapping[str, Any], students, teachers, by_index: Mapping[int, StructureResult],
             count: int) -> None:
        results = list(by_index.values())
        metrics: dict[str, float] = {}
        if results:
            per_sample = [r.metrics() for r in results]
            for name in ("meta_match", "subproblem_match", "answer_match", "prefix_length", "student_steps",
                         "teacher_steps"):
                metrics[name] = sum(m[name] for m in per_sample) / len(per_sample)
            metrics["zero_share"] = sum(r.reward == 0 for r in results) / len(results)
        metrics["student_parse_failures"] = float(sum(r.student_steps == 0 for r in results))
        metrics["teacher_parse_failures"] = float(sum(r.teacher_steps == 0 for r in results))
        metrics["judge_failures"] = float(sum(r.judge_failures for r in results))
        metrics["gsrm_failures"] = float(sum(s.error is not None for s in students)
                                         + sum(t is None for t in teachers))
        metrics["truncated"] = float(sum(s.truncated for s in students))
        metrics.update(self._gsrm_metrics(students, results))

        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for name, value in metrics.items():
                log_metric(f"structure/{name}", value)
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            details = []
            for i in range(count):
                r = by_index.get(i)
                if r is None:
                    details.append("skipped: GSRM call failed")
                elif r.parse_failure:
                    details.append(f"0: {r.parse_failure}"[:200])
                else:
                    details.append(f"{r.reward:g}: prefix {r.matched_prefix}, steps {r.student_steps} vs "
                                   f"teacher {r.teacher_steps}")
            log_extra("structure_detail", details)

        if results and all(r.reward == 0 for r in results):
            message = (
                f"structure reward is 0 for all {len(results)} scored completions of this batch "
                f"(student decompositions without steps: {int(metrics['student_parse_failures'])}, teacher "
                f"structures without steps: {int(metrics['teacher_parse_failures'])}, judge failures: "
                f"{int(metrics['judge_failures'])}, first meta-reasoning mismatched: "
                f"{sum(1 for r in results if r.steps and not r.steps[0].meta)}). Check that the GSRM writes "
                f"[Meta-reasoning N]/[Sub-problem N]/[Answer N] blocks and that the judge answers."
            )
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _gsrm_metrics(self, students: Sequence[Any], results: Sequence[StructureResult]) -> dict[str, float]:
        """GSRM generated tokens per completion, early-exit savings and the first-mismatch histogram.

        ``gsrm_tokens_saved_est`` is an estimate: for each stopped generation, the mean length of the
        decompositions of this run that ran to their end, less what was generated (a stopped
        generation's full length is never seen; the decompositions that ran to the end are those with
        no mismatch or few steps, so the estimate leans whichever way those differ)."""
        called = [s for s in students if s.error is None and (s.raw or s.completion_tokens)]
        metrics: dict[str, float] = {}
        if called:
            metrics["gsrm_tokens"] = sum(s.completion_tokens for s in called) / len(called)
            metrics["gsrm_stopped"] = sum(s.stopped for s in called) / len(called)
        for s in called:
            if not s.stopped:
                self._full_gsrm_tokens[0] += s.completion_tokens
                self._full_gsrm_tokens[1] += 1
        stopped = [s for s in called if s.stopped]
        if stopped and self._full_gsrm_tokens[1]:
            mean_full = self._full_gsrm_tokens[0] / self._full_gsrm_tokens[1]
            metrics["gsrm_tokens_saved_est"] = sum(max(0.0, mean_full - s.completion_tokens)
                                                   for s in stopped) / len(called)
        with_steps = [r for r in results if r.steps]
        if with_steps:
            buckets = dict.fromkeys(("1", "2", "3", "4_plus", "none"), 0)
            for r in with_steps:
                first = next((s.index for s in r.steps if s.meta is False), None)
                buckets["none" if first is None else str(first) if first < 4 else "4_plus"] += 1
            for name, n in buckets.items():
                metrics[f"first_mismatch_step_{name}"] = n / len(with_steps)
        return metrics

    def _write_samples(self, kwargs: Mapping[str, Any], problems, texts, students, teachers,
                       by_index: Mapping[int, StructureResult]) -> None:
        if self.sample_log is None or self.samples_per_step <= 0 or os.environ.get("RANK", "0") != "0":
            return
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        step = self.calls if step is None else step
        self.sample_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.sample_log, "a", encoding="utf-8") as out:
            for n, i in enumerate(sorted(by_index)[: self.samples_per_step]):
                record = {"id": f"step{step}-{n}", **by_index[i].to_dict(),
                          "teacher": teachers[i].to_dict(), "student": students[i].decomposition.to_dict(),
                          "step": step, "problem": problems[i], "completion": texts[i]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()


# --------------------------------------------------------------------------------------------------
# Reward sets

REWARD_FUNCTIONS: dict[str, Callable[..., list[float | None]]] = {
    "accuracy": accuracy,
    "format": format_reward,
    "tag_count": tag_count,
}
REWARD_NAMES = ("accuracy", "structure", "format", "tag_count")

REWARD_SETS: dict[str, dict[str, float]] = {
    # RLKD: 3 accuracy + 3 structure + 2 format + 2 tag count (the authors ran 15/15/10/10, the same ratio)
    "rlkd": {"accuracy": 3.0, "structure": 3.0, "format": 2.0, "tag_count": 2.0},
    # the GRPO baseline: the same rewards without the structure term
    "outcome": {"accuracy": 3.0, "format": 2.0, "tag_count": 2.0},
}


def build_rewards(names_to_weights: Mapping[str, float] | str,
                  structure: StructureReward | None = None) -> tuple[list[Callable[..., Any]], list[float]]:
    """TRL's ``reward_funcs`` and ``reward_weights`` for ``{"accuracy": 3, "structure": 3, ...}`` (or the
    name of a set in :data:`REWARD_SETS`). ``structure`` is required when the set uses it.

    >>> funcs, weights = build_rewards("outcome")
    >>> [f.__name__ for f in funcs], weights
    (['accuracy', 'format', 'tag_count'], [3.0, 2.0, 2.0])
    """
    if isinstance(names_to_weights, str):
        if names_to_weights not in REWARD_SETS:
            raise ValueError(f"unknown reward set {names_to_weights!r}; choose one of {', '.join(REWARD_SETS)}")
        names_to_weights = REWARD_SETS[names_to_weights]
    if not names_to_weights:
        raise ValueError("no rewards given")
    funcs: list[Callable[..., Any]] = []
    weights: list[float] = []
    for name, weight in names_to_weights.items():
        if name == "structure":
            if structure is None:
                raise ValueError("the 'structure' reward needs a StructureReward (a GSRM backend and a judge)")
            funcs.append(structure)
        elif name in REWARD_FUNCTIONS:
            funcs.append(REWARD_FUNCTIONS[name])
        else:
            raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARD_NAMES)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"the weight of reward {name!r} must be a number, got {weight!r}")
        weights.append(float(weight))
    return funcs, weights
