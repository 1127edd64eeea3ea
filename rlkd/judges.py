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

Early exit (SPEC section 8): :func:`score_structure_streaming` judges a student decomposition while the
GSRM is still writing it, fed through an :class:`EarlyExitSink`. Each field is judged as soon as the
incremental parser calls it complete, and the sink asks the backend to stop the generation once the
reward is decided: at the first meta-reasoning mismatch (``paper`` and ``normalized``), or when the
student's step k (the teacher's step count) is complete. The reward is then computed by the same pure
:func:`rlkd.structure.structure_reward` from the prefix, so it equals the full computation's. The
meta-reasoning the gate waits for is judged ahead at each line break, as it would read if the line ended
the field, so its verdict travels while the next label line arrives; a verdict is keyed by the exact text
it judged and used only if the field completes with that text (a field that goes on costs one more call,
never a different reward).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from rlkd.answers import math_equal
from rlkd.errors import InputError
from rlkd.files import json_type
from rlkd.structure import (
    Decomposition,
    FIELDS,
    Field,
    IncrementalParser,
    MODES,
    Step,
    StructureResult,
    Verdict,
    as_decomposition,
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


JUDGES = ("text", "overlap", "math", "hybrid", "llm")  # what a recipe or --judge may name
FIELD_JUDGES = ("text", "overlap", "math", "llm")  # what one field of the hybrid judge may use
LOCAL_JUDGES = ("text", "overlap", "math", "hybrid")  # the judges that need no backend


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


def decomposition_field(obj: dict[str, Any], name: str, where: str) -> Decomposition:
    """Field ``name`` of a JSONL record as a Decomposition; InputError naming ``where`` and the field when it is
    missing or is neither GSRM text nor a decomposition object (a number or null is a broken record)."""
    if name not in obj:
        raise InputError(f"{where}: missing field '{name}'")
    value = obj[name]
    if not isinstance(value, (str, dict)):  # a number or null is a broken record, not an empty decomposition
        raise InputError(f"{where}: field '{name}' must be GSRM text or a decomposition object, got "
                       f"{json_type(value)}")
    try:
        return as_decomposition(value)
    except ValueError as exc:
        raise InputError(f"{where}: field '{name}': {exc}") from None


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


# --------------------------------------------------------------------------------------------------
# Scoring while the GSRM writes (early exit)


class EarlyExitSink:
    """The stream sink (see :class:`rlkd.backends.StreamSink`) of one student decomposition: it feeds
    the streamed text to an :class:`~rlkd.structure.IncrementalParser`, wakes
    :func:`score_structure_streaming` whenever a field completes, and carries its stop request.

    ``student`` may be set by the producer before :meth:`finish` to give the decomposition to score
    when no text was generated (e.g. an empty trace the decomposer did not send)."""

    def __init__(self) -> None:
        self.parser = IncrementalParser()
        self.stop_event = asyncio.Event()  # set with the stop request: a streaming backend closes at once
        self.completion = None  # the backend's Completion, once the request is over
        self.student: Decomposition | None = None
        self.changed = asyncio.Event()
        self._closed = 0

    @property
    def stop_requested(self) -> bool:
        """Whether the reward is decided and the generation should stop."""
        return self.stop_event.is_set()

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        if value:
            self.stop_event.set()
        else:
            self.stop_event.clear()

    def feed(self, piece: str) -> None:
        self.parser.feed(piece)
        state = self.parser.blocks_closed + self.parser.lines_read
        if state != self._closed:  # a field completed, or a line ended (the open field may be judged ahead)
            self._closed = state
            self.changed.set()

    def restart(self) -> None:
        self.parser.reset()
        self._closed = 0
        self.changed.set()

    def finish(self, completion) -> None:
        self.completion = completion
        if completion.error is None:
            text = completion.text
            if text != self.parser.text:  # a backend that fed less than it returned (or other text)
                if not text.startswith(self.parser.text):
                    self.parser.reset()
                self.parser.feed(text[len(self.parser.text):])
            if not completion.stopped:
                self.parser.finish()
        self.changed.set()


def _judge_ahead(teacher: Decomposition, parser: IncrementalParser, want: Sequence[tuple[Field, int]],
                 verdicts: Mapping[tuple[Field, int, str], Verdict]) -> tuple[Field, int, str] | None:
    """The next meta-reasoning the gate waits for, as it stands at the last line break, when every
    meta-reasoning before it matched: judged ahead, its verdict is ready about when the next label line
    confirms the field (a line break usually ends a field). Keyed by its text, the verdict is used only if
    the field completes with exactly that text; otherwise the call was one extra (never a different reward)."""
    guess = parser.tentative()
    if guess is None or guess[1] != "meta" or guess[0] >= len(teacher) or not guess[2]:
        return None
    index, _, text = guess
    metas = [i for f, i in want if f == "meta"]
    if metas != list(range(index)):
        return None
    steps = parser.steps
    if not all(getattr(verdicts.get(("meta", i, steps[i].meta_reasoning)), "same", False) for i in metas):
        return None
    return "meta", index, text


def early_exit_plan(teacher: Decomposition, parser: IncrementalParser, gate: bool,
                    verdicts: Mapping[tuple[Field, int, str], Verdict]) -> tuple[list[tuple[Field, int]], int | None]:
    """What to judge now, and whether the text read so far decides the reward.

    Returns ``(fields, cut)``: the complete (field, step) pairs whose verdict the reward needs (those
    not yet judged among them are to be sent), and ``cut``, the number of student steps the reward
    depends on once that is known (None: more text is needed). With the gate, step i's sub-problem and
    answer are needed only once its meta-reasoning matched, and nothing after the first mismatch is.
    """
    steps = parser.steps
    k = len(teacher)
    want: list[tuple[Field, int]] = []
    for i in range(min(k, len(steps))):
        if not parser.final(i, "meta"):
            break
        verdict = verdicts.get(("meta", i, steps[i].meta_reasoning))
        want.append(("meta", i))
        if verdict is None or not verdict.same:
            if gate:  # pending: wait for it; a mismatch: nothing after step i can earn credit
                return want, (None if verdict is None else i + 1)
            continue
        want.extend((name, i) for name in ("subproblem", "answer") if parser.final(i, name))
    if parser.finished:
        return want, len(steps)
    if k and len(steps) >= k and parser.step_final(k - 1):
        return want, k
    return want, None


async def score_structure_streaming(teacher: Decomposition, judge: Judge, sink: EarlyExitSink,
                                    mode: str = "paper") -> StructureResult | None:
    """The structure reward of a student decomposition that a GSRM is streaming into ``sink``.

    Run it beside the generation (e.g. :meth:`rlkd.gsrm.Decomposer.decompose_stream`). Fields are
    judged as they complete; the sink's ``stop_requested`` is set once the reward is decided, and the
    reward is computed when the request is over. Returns None when the GSRM call failed (as the full
    computation does), else exactly the result of :func:`score_structure` on the whole decomposition,
    except that a stopped generation's ``student_steps`` counts the steps read (``gsrm_stopped``).
    A teacher without steps gets no early exit (the student's parse is reported, as in the full path).
    """
    if mode not in MODES:
        raise ValueError(f"unknown structure reward mode {mode!r}; choose one of {', '.join(MODES)}")
    gate = not mode.startswith("ungated")
    verdicts: dict[tuple[Field, int, str], Verdict] = {}
    in_flight: set[tuple[Field, int, str]] = set()
    tasks: set[asyncio.Task] = set()
    errors: list[BaseException] = []

    async def ask(keys: list[tuple[Field, int, str]], ahead: bool = False) -> None:
        try:
            got = await judge.ajudge([JudgeRequest(f, teacher.steps[i].get(f), text) for f, i, text in keys])
            verdicts.update(zip(keys, got))
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller's task, as score_structure would
            if not ahead:  # a call made ahead is made again once its field is complete, and raises then
                errors.append(exc)
        finally:
            in_flight.difference_update(keys)
            sink.changed.set()

    try:
        while True:
            sink.changed.clear()
            if errors:
                raise errors[0]
            completion = sink.completion
            if completion is not None and completion.error is not None:
                return None
            parser = sink.parser
            want, cut = early_exit_plan(teacher, parser, gate, verdicts)
            keys = [(f, i, parser.steps[i].get(f)) for f, i in want]
            fresh = [key for key in keys if key not in verdicts and key not in in_flight]
            ahead = _judge_ahead(teacher, parser, want, verdicts) if gate and cut is None else None
            if ahead is not None and (ahead in verdicts or ahead in in_flight or ahead in fresh):
                ahead = None
            for batch, is_ahead in ((fresh, False), ([ahead] if ahead else [], True)):
                if batch:
                    in_flight.update(batch)
                    task = asyncio.create_task(ask(batch, is_ahead))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if cut is not None:
                sink.stop_requested = True
                if completion is not None and all(key in verdicts for key in keys):
                    break
            await sink.changed.wait()
    finally:
        for task in tasks:
            task.cancel()

    stopped = not sink.parser.finished
    if stopped:  # the steps the reward depends on; a field still open was never needed
        student = Decomposition([Step(*(s.get(f) if parser.final(i, f) else "" for f in FIELDS), s.number)
                                 for i, s in enumerate(parser.steps[:cut])])
    else:
        student = sink.student if sink.student is not None else parser.finish()
    result = structure_reward(teacher, student, lambda f, i: verdicts[(f, i, student.steps[i].get(f))], mode)
    result.gsrm_stopped = stopped
    return result
