"""Local judges and scoring a pair through the judge interface."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rlkd.judges import (
    HybridJudge,
    Judge,
    JudgeRequest,
    MathJudge,
    OverlapJudge,
    TextJudge,
    make_judge,
    normalize_text,
    score_many,
    score_structure,
    token_f1,
)
from rlkd.structure import Decomposition, Step, Verdict


def verdicts(judge: Judge, field: str, pairs: list[tuple[str, str]]) -> list[bool | None]:
    return [v.same for v in judge.judge([JudgeRequest(field, a, b) for a, b in pairs])]


class TestTextJudge:
    def test_normalisation(self):
        assert normalize_text("  What IS  x?\n") == "what is x"
        assert normalize_text("a,b;c") == "a b c"

    def test_verdicts(self):
        assert verdicts(TextJudge(), "meta", [("Find x first.", "find X first"), ("find x", "find y")]) == [True, False]


class TestOverlapJudge:
    def test_token_f1(self):
        assert token_f1("a b c d", "a b c d") == 1.0
        assert token_f1("a b c d", "a b") == pytest.approx(2 / 3)
        assert token_f1("a", "b") == 0.0
        assert token_f1("", "") == 1.0

    def test_threshold(self):
        j = OverlapJudge(0.6)
        assert verdicts(j, "meta", [("a b c d", "a b c d"), ("a b c d", "a b")]) == [True, True]
        assert verdicts(OverlapJudge(0.7), "meta", [("a b c d", "a b")]) == [False]

    def test_bad_threshold(self):
        with pytest.raises(ValueError, match="threshold"):
            OverlapJudge(1.5)


class TestMathJudge:
    def test_equivalent_answers(self):
        got = verdicts(MathJudge(), "answer", [("1/2", "0.5"), ("\\frac{1}{4}", "0.25"), ("x = 2", "2"),
                                               ("3", "4"), ("\\sqrt{4}", "2")])
        assert got == [True, True, True, False, True]

    def test_prose_fields_compare_as_text(self):
        # math-verify would pull the number 2 out of both sentences; prose is compared as text instead
        assert verdicts(MathJudge(), "subproblem", [("What is 2 plus x?", "Is 2 prime?")]) == [False]

    def test_non_math_answers(self):
        assert verdicts(MathJudge(), "answer", [("yes", "Yes"), ("yes", "no")]) == [True, False]
        (v,) = MathJudge().judge([JudgeRequest("answer", "", "")])  # nothing to read: compared as text
        assert v.same is True and v.judge == "math>text"

    def test_safe_in_threads(self):
        results: list[bool | None] = []

        def work():
            results.extend(verdicts(MathJudge(), "answer", [("1/3", "\\frac{1}{3}")]))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [True] * 4

    def test_time_is_bounded(self):
        # sympy evaluates this tower in one C call holding the GIL; only a killable worker bounds it
        start = time.perf_counter()
        (v,) = MathJudge(timeout_s=1.0).judge([JudgeRequest("answer", "9^{9^{9}}", "7")])
        assert time.perf_counter() - start < 20
        assert v.same is None and v.reason == "math-verify took longer than 1.0s"
        assert verdicts(MathJudge(), "answer", [("2", "2.0")]) == [True]  # the next check still works


class TestHybridAndFactory:
    def test_routes_fields(self):
        j = make_judge("hybrid")
        assert isinstance(j, HybridJudge)
        got = verdicts(j, "answer", [("1/2", "0.5")]) + verdicts(j, "meta", [("find x first now", "find x first")])
        assert got == [True, True]

    def test_factory_errors(self):
        with pytest.raises(ValueError, match="unknown judge 'psychic'"):
            make_judge("psychic")
        with pytest.raises(ValueError, match="needs a backend"):
            make_judge("llm")
        with pytest.raises(ValueError, match="missing"):
            HybridJudge({"meta": TextJudge()})


class CountingJudge(Judge):
    """Deterministic fake to check how scoring batches its calls: exact equality, counted."""

    name = "counting"

    def __init__(self):
        self.batches: list[int] = []

    async def ajudge(self, requests):
        self.batches.append(len(requests))
        return [Verdict(r.teacher == r.student, self.name) for r in requests]


T = Decomposition([Step("m1", "q1", "a1"), Step("m2", "q2", "a2"), Step("m3", "q3", "a3"), Step("m4", "q4", "a4")])
S = Decomposition([Step("m1", "q1", "X"), Step("m2", "q2", "a2"), Step("WRONG", "q3", "a3"), Step("m4", "q4", "a4")])


class TestScoreStructure:
    def test_concurrent_mode_judges_everything_in_one_batch(self):
        j = CountingJudge()
        r = asyncio.run(score_structure(T, S, j))
        assert r.reward == 1.5 and j.batches == [12]

    def test_lazy_mode_stops_at_first_meta_mismatch_and_agrees(self):
        j = CountingJudge()
        r = asyncio.run(score_structure(T, S, j, lazy=True))
        assert r.reward == 1.5
        assert j.batches == [1, 1, 1, 4]  # meta 1, 2, 3 (mismatch), then sub-problem+answer of steps 1-2
        assert sum(j.batches) < 12

    def test_parse_failure_skips_the_judge(self):
        j = CountingJudge()
        r = asyncio.run(score_structure(T, Decomposition(reason="empty text"), j))
        assert r.reward == 0 and j.batches == [] and r.parse_failure == "student: empty text"

    def test_score_many(self):
        results = asyncio.run(score_many([(T, T), (T, S)], make_judge("text")))
        assert [r.reward for r in results] == [4.0, 1.5]
