"""Judges: decide whether a teacher step and a student step say the same thing, field by field.

Every judge implements one batch-first interface, :class:`Judge`: ``await judge.ajudge(requests)``
returns one :class:`~rlkd.structure.Verdict` per :class:`JudgeRequest`. :func:`score_structure` gathers
the verdicts a pair of decompositions needs (all at once, or meta-reasoning in order until the first
mismatch) and hands them to the pure :func:`rlkd.structure.structure_reward`.

Judges here need no LLM, so the structure reward can run with none at all:

1. ``text``: equal after lower-casing and collapsing whitespace and punctuation.
2. ``overlap``: token F1 at or above a threshold (default 0.5).
3. ``math``: answers compared by math-verify (texts it cannot read fall back to ``text``); the
   meta-reasoning and sub-problem fields, which are prose, are compared as ``text``. It shares
   :func:`rlkd.answers.math_equal` with the accuracy reward and the evaluator: time-bounded in any
   thread, and a check that runs past ``timeout_s`` is a failed verdict, counted, not a crash.
4. ``hybrid``: one judge per field, e.g. ``overlap`` for meta-reasoning and sub-problems and ``math``
   for answers (the default).

The LLM judge (``rlkd.llm_judge``) implements the same interface. How this departs from the authors'
code: verdicts are collected concurrently and the gate is applied afterwards (or, with ``lazy=True``,
meta-reasoning is judged in order and judging stops at the first mismatch, to save calls); a failed
verdict is recorded with its reason, never silently read as "no".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from rlkd.structure import (
    FIELDS,
    Decomposition,
    Field,
    StructureResult,
    Verdict,
    needed_pairs,
    structure_reward,
)


@dataclass(frozen=True)
class JudgeRequest:
    """Compare the teacher's text and the student's text of one field of one step."""

    field: Field
    teacher: str
    student: str


class Judge:
    """Base class. Subclasses override :meth:`ajudge`, or :meth:`judge_one` for cheap local judges."""

    name = "judge"

    async def ajudge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order. Must not raise for a bad pair: return a failed verdict."""
        return [self.judge_one(r) for r in requests]

    def judge_one(self, request: JudgeRequest) -> Verdict:
        raise NotImplementedError

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """Synchronous convenience wrapper around :meth:`ajudge`."""
        return _run(self.ajudge(list(requests)))


def _run(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside an event loop (e.g. a notebook): run the coroutine on a private thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --------------------------------------------------------------------------------------------------
# Local judges

_PUNCT = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, and collapse every run of whitespace and ASCII punctuation to one space."""
    return _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


class TextJudge(Judge):
    """Same after :func:`normalize_text`."""

    name = "text"

    def judge_one(self, request: JudgeRequest) -> Verdict:
        a, b = normalize_text(request.teacher), normalize_text(request.student)
        return Verdict(a == b, self.name, "" if a == b else "normalised texts differ")


def token_f1(a: str, b: str) -> float:
    """Token-level F1 between two texts after :func:`normalize_text` (1.0 for two empty texts)."""
    ta, tb = normalize_text(a).split(), normalize_text(b).split()
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(tb), common / len(ta)
    return 2 * precision * recall / (precision + recall)


class OverlapJudge(Judge):
    """Token F1 at or above ``threshold``."""

    name = "overlap"

    def __init__(self, threshold: float = 0.5):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"overlap threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold

    def judge_one(self, request: JudgeRequest) -> Verdict:
        f1 = token_f1(request.teacher, request.student)
        return Verdict(f1 >= self.threshold, self.name, f"token F1 {f1:.2f} (threshold {self.threshold})")


class MathJudge(Judge):
    """Answer equivalence by math-verify through :func:`rlkd.answers.math_equal`, the same time-bounded
    path the accuracy reward and the evaluator use (math-verify runs in killable worker processes, since
    some inputs hold the GIL in one long sympy call that no thread or signal timeout can interrupt)."""

    name = "math"

    def __init__(self, timeout_s: float = 5.0):
        self.timeout_s = timeout_s
        self._text = TextJudge()

    def judge_one(self, request: JudgeRequest) -> Verdict:
        if request.field != "answer":  # math-verify would pull numbers out of prose: compare as text
            return self._text.judge_one(request)
        from rlkd.answers import math_equal

        grade = math_equal(request.teacher, request.student, timeout_s=self.timeout_s)
        if grade.reason.startswith(("math-verify took longer", "grading error")):
            return Verdict(None, self.name, grade.reason)
        if grade.correct is None:  # the teacher's answer is not mathematics: compare as text
            fallback = self._text.judge_one(request)
            return Verdict(fallback.same, f"{self.name}>text", grade.reason)
        if not grade.correct and self._text.judge_one(request).same:
            return Verdict(True, f"{self.name}>text", "math-verify said no but the texts are equal")
        return Verdict(grade.correct, self.name, grade.reason)

    async def ajudge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        return list(await asyncio.gather(*(asyncio.to_thread(self.judge_one, r) for r in requests)))


class HybridJudge(Judge):
    """One judge per field; requests are grouped per judge so each judge still sees one batch."""

    name = "hybrid"

    def __init__(self, judges: Mapping[Field, Judge]):
        missing = [f for f in FIELDS if f not in judges]
        if missing:
            raise ValueError(f"hybrid judge needs a judge for every field; missing {missing}")
        self.judges = dict(judges)

    async def ajudge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        groups: dict[int, tuple[Judge, list[int]]] = {}
        for i, r in enumerate(requests):
            judge = self.judges[r.field]
            groups.setdefault(id(judge), (judge, []))[1].append(i)
        out: list[Verdict | None] = [None] * len(requests)
        results = await asyncio.gather(*(j.ajudge([requests[i] for i in idx]) for j, idx in groups.values()))
        for (_, idx), verdicts in zip(groups.values(), results):
            for i, v in zip(idx, verdicts):
                out[i] = v
        return out  # type: ignore[return-value]


LOCAL_JUDGES = ("text", "overlap", "math", "hybrid")


def make_judge(name: str, *, overlap_threshold: float = 0.5, fields: Mapping[Field, str] | None = None,
               llm: Judge | None = None) -> Judge:
    """Build a judge by name. ``hybrid`` takes ``fields`` (field -> judge name, default overlap/overlap/
    math); the name ``llm`` refers to the ``llm`` judge object passed in."""
    def single(n: str) -> Judge:
        if n == "text":
            return TextJudge()
        if n == "overlap":
            return OverlapJudge(overlap_threshold)
        if n == "math":
            return MathJudge()
        if n == "llm":
            if llm is None:
                raise ValueError("the 'llm' judge needs a backend (--base-url and --model)")
            return llm
        raise ValueError(f"unknown judge {n!r}; choose one of text, overlap, math, llm, hybrid")

    if name == "hybrid":
        chosen = dict(fields or {"meta": "overlap", "subproblem": "overlap", "answer": "math"})
        built: dict[str, Judge] = {}
        return HybridJudge({f: built.setdefault(n, single(n)) for f, n in chosen.items()})  # type: ignore[misc]
    return single(name)


# --------------------------------------------------------------------------------------------------
# Scoring a pair


def _request(teacher: Decomposition, student: Decomposition, f: Field, i: int) -> JudgeRequest:
    return JudgeRequest(f, teacher.steps[i].get(f), student.steps[i].get(f))


async def score_structure(
    teacher: Decomposition,
    student: Decomposition,
    judge: Judge,
    mode: str = "paper",
    lazy: bool = False,
) -> StructureResult:
    """Judge what the reward needs, then apply :func:`structure_reward`.

    ``lazy=False`` sends every aligned pair in one concurrent batch (lowest latency); ``lazy=True`` judges
    meta-reasoning one step at a time until the first mismatch and then only the sub-problems and
    answers of the matched prefix (fewest calls). Both give the same reward for a deterministic judge.
    """
    verdicts: dict[tuple[Field, int], Verdict] = {}
    if teacher.steps and student.steps:
        if lazy and not mode.startswith("ungated"):
            matched = 0
            for i in range(min(len(teacher), len(student))):
                (v,) = await judge.ajudge([_request(teacher, student, "meta", i)])
                verdicts[("meta", i)] = v
                if not v.same:
                    break
                matched += 1
            pairs = [(f, i) for i in range(matched) for f in ("subproblem", "answer")]
        else:
            pairs = needed_pairs(teacher, student)
        got = await judge.ajudge([_request(teacher, student, f, i) for f, i in pairs])
        verdicts.update(zip(pairs, got))
    return structure_reward(teacher, student, lambda f, i: verdicts[(f, i)], mode)


async def score_many(
    pairs: Iterable[tuple[Decomposition, Decomposition]],
    judge: Judge,
    mode: str = "paper",
    lazy: bool = False,
) -> list[StructureResult]:
    """Score many pairs concurrently (the judge's own concurrency limit applies)."""
    return list(await asyncio.gather(*(score_structure(t, s, judge, mode, lazy) for t, s in pairs)))
