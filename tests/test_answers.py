"""Answer extraction and grading (rlkd.answers), on literal cases."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rlkd.answers import (
    STATS,
    Grade,
    extract_answer,
    extract_boxed,
    extract_choice,
    extract_choice_lighteval,
    grade,
    grade_all,
    grade_choice,
    grade_choice_detail,
    grade_math,
    grade_math_detail,
)


class TestExtractBoxed:
    @pytest.mark.parametrize(
        "text, expected",
        [
            (r"so \boxed{5}.", ["5"]),
            (r"\boxed{\frac{1}{2}}", [r"\frac{1}{2}"]),
            (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", [r"\left( 3, \frac{\pi}{2} \right)"]),
            (r"first \boxed{1} then \fbox{2} then \boxed{3}", ["1", "2", "3"]),
            (r"\boxed{\{1, 2\}}", [r"\{1, 2\}"]),  # escaped braces do not close the box
            (r"\boxed{a\}b}", [r"a\}b"]),
            (r"\boxed {7}", ["7"]),
            (r"$\boxed 9$", ["9"]),
            (r"\boxed{\boxed{4}}", ["4"]),  # counted once, the outer box unwrapped
            (r"\boxed{x + \boxed{4}}", [r"x + \boxed{4}"]),  # a nested box is part of the outer content
            (r"\boxed{\frac{1}{2}", []),  # never closed
            (r"\boxedx{3} \betax", []),  # not the command
            ("no box here", []),
            ("", []),
            (r"} } \boxed{2} {", ["2"]),  # stray braces around do not confuse the depth count
        ],
    )
    def test_cases(self, text, expected):
        assert extract_boxed(text) == expected

    def test_long_input_is_linear(self):
        # 200k unclosed boxes plus braces: a backtracking regex would never finish; this takes well under a second
        text = r"\boxed{" * 200_000 + "x"
        start = time.perf_counter()
        assert extract_boxed(text) == []
        text = "{" * 100_000 + r"\boxed{1}" + "}" * 100_000
        assert extract_boxed(text) == ["1"]
        assert time.perf_counter() - start < 5


class TestExtractAnswer:
    @pytest.mark.parametrize(
        "text, expected",
        [
            (r"Thus $x = \boxed{\dfrac{1}{2}}$.", r"\dfrac{1}{2}"),
            (r"Maybe \boxed{3}? No, wait: \boxed{4}.", "4"),  # right-most box wins
            (r"The final answer is $\frac{1}{2}$. I hope it is correct.", r"\frac{1}{2}"),
            ("So the answer is 42.", "42"),
            ("The answer is 3.5.", "3.5"),
            ("**Final Answer:** 17", "17"),
            ("The answer is 3. Hmm, check again... the final answer is 5.", "5"),  # right-most phrase
            ("Final answer:\n$$x^2 + 1$$", "x^2 + 1"),
            (r"The answer is 7 but boxed says \boxed{8}", "8"),  # a box beats a phrase
            ("<think>the answer is 3?</think>\n<answer>5</answer>", "5"),  # the tag beats a phrase
            ("<answer>so x = 2, and the final answer is 4</answer>", "4"),
            ("<answer>$\\frac{3}{4}$</answer>", r"\frac{3}{4}"),
            ("I computed 12 and then 15", None),  # bare numbers are not an answer
            ("The answer is", None),
            ("", None),
        ],
    )
    def test_cases(self, text, expected):
        assert extract_answer(text) == expected


class TestGradeMath:
    @pytest.mark.parametrize(
        "completion, gold",
        [
            (r"\boxed{\frac{1}{2}}", "1/2"),
            (r"\boxed{1/2}", r"\frac{1}{2}"),
            (r"\boxed{0.5}", r"\frac{1}{2}"),
            (r"\boxed{\dfrac{1}{2}}", "0.5"),
            (r"\boxed{\frac12}", "$\\frac{1}{2}$"),
            (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3, \frac{\pi}{2})"),
            (r"\boxed{30^\circ}", "30"),
            (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
            (r"\boxed{10080}", "10,080"),
            (r"\boxed{[2,5)}", r"[2,5)"),
            ("The final answer is $-\\frac{2}{3}$. I hope it is correct.", r"-\frac{2}{3}"),
            ("The answer is 42.", "42"),
            (r"\boxed{42}", 42),  # an integer gold (AIME files)
            (r"\boxed{14/3}", r"The solution ... so the ratio is $\boxed{\frac{14}{3}}$."),  # worked solution as gold
            ("<think>x = 2</think>\n<answer>\\boxed{4}</answer>", "4"),
        ],
    )
    def test_equal(self, completion, gold):
        assert grade_math(completion, gold) is True

    @pytest.mark.parametrize(
        "completion, gold",
        [
            (r"\boxed{\frac{1}{3}}", "0.5"),
            (r"\boxed{5} ... on reflection \boxed{6}", "5"),  # the right-most box is the answer
            ("The answer is 42.", "24"),
            ("I think it is 5", "5"),  # no boxed, no phrase: not graded as an answer
            ("", "5"),
        ],
    )
    def test_not_equal(self, completion, gold):
        assert grade_math(completion, gold) is False

    @pytest.mark.parametrize("gold", ["", "   ", r"\}", "}"])
    def test_unreadable_gold_is_none(self, gold):
        assert grade_math(r"\boxed{5}", gold) is None
        assert grade_math("no answer at all", gold) is None

    def test_detail_reports_what_was_extracted(self):
        grade = grade_math_detail(r"so \boxed{\dfrac{1}{2}}", "0.5")
        assert grade == Grade(True, r"\dfrac{1}{2}", "math-verify: equal")
        grade = grade_math_detail("nothing", "0.5")
        assert grade.correct is False and grade.answer is None and "no answer found" in grade.reason

    def test_never_raises_on_junk(self):
        for junk in [None, 123, r"\boxed{\frac{", r"\boxed{" + "(" * 50 + "}", "\x00\\boxed{\udcff}"]:
            assert grade_math(junk, "1") in (True, False)  # type: ignore[arg-type]

    def test_safe_in_threads_and_async(self):
        results: list[bool | None] = []

        def worker():
            results.append(grade_math(r"\boxed{\frac{2}{4}}", "0.5"))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [True] * 4

        async def main():
            return await asyncio.gather(*(asyncio.to_thread(grade_math, r"\boxed{3}", "3") for _ in range(3)))

        assert asyncio.run(main()) == [True, True, True]

    def test_timeout_is_bounded_and_counted(self):
        before = STATS["timeouts"]
        # sympy would spend minutes inside one C call computing 9^(9^9) (no thread timeout can stop that):
        # the grading process is killed after the time limit and the grade is False with the reason
        start = time.perf_counter()
        grade = grade_math_detail(r"\boxed{9^{9^{9}}}", "7", timeout_s=2.0)
        assert grade.correct is False and "longer than 2.0s" in grade.reason
        assert time.perf_counter() - start < 15
        assert STATS["timeouts"] == before + 1
        # the next comparison gets a fresh process and works
        assert grade_math(r"\boxed{\frac{4}{8}}", "0.5") is True


class TestExtractChoice:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("Answer: C", "C"),
            ("The answer is (b).", "B"),
            (r"Therefore \boxed{D}", "D"),
            (r"\boxed{\text{(A)}}", "A"),
            (r"\boxed{b}", "B"),
            ("The correct option is A.", "A"),
            ("**C**", "C"),
            ("I pick (d)", "D"),
            ("Final answer: **B**", "B"),
            ("The answer is option C", "C"),
            ("the best choice is D because ...", "D"),
            ("Reasoning...\nB\n", "B"),
            ("Answer: A. Wait, that is wrong. Answer: D", "D"),  # right-most decisive
            ("Answer: C. Option (B) was tempting.", "C"),  # a decisive cue beats a later weak one
            ("(A) is wrong and **B** is also wrong, so \\boxed{C}", "C"),
            ("The answer is a bit unclear", None),  # the article 'a' is not a choice
            ("The answer is E", None),  # not one of the letters
            ("no idea", None),
            ("", None),
        ],
    )
    def test_cases(self, text, expected):
        assert extract_choice(text) == expected

    def test_other_letter_sets(self):
        assert extract_choice("Answer: E", letters="ABCDE") == "E"


class TestGradeChoice:
    def test_cases(self):
        assert grade_choice("Answer: (c)", "C") is True
        assert grade_choice("Answer: (c)", "c") is True
        assert grade_choice(r"\boxed{A}", "B") is False
        assert grade_choice("no letter", "B") is False

    def test_bad_gold(self):
        assert grade_choice_detail("Answer: A", "Z").correct is None
        assert grade_choice("Answer: A", "") is False


class TestLightevalMath:
    """The ``lighteval`` protocol (lighteval 0.9.0's math_pass@1 on AIME24 and MATH-500): each case names
    the rule it follows."""

    @pytest.mark.parametrize(
        "rule, completion, gold, answer",
        [
            ("no anchor at all: the right-most LaTeX or number of the whole reply (priority 300)",
             "Adding them up gives 7.", "7", "7"),
            ("boxes joined by 'and' or ',' are read together, as a set (boxed, priority 55)",
             r"The roots are \boxed{2} and \boxed{1}", r"$\boxed{1}$ and $\boxed{2}$", "2,1"),
            ("'Answer:' then, within 50 characters, the first LaTeX (priority 100)",
             "Final Answer: The largest $n$ is 34.", "34", "34"),
            ("'final answer is $X$. I hope' (priority 0) beats an earlier box (priority 55)",
             r"First \boxed{255}. The final answer is $10,455$. I hope it is correct.", "10455", "10,455"),
            ("a space as thousands separator (expression rule)", "The total is 1 000", "1000", "1000"),
            ("a worked solution as gold is read to its box",
             "so it is $2\\sqrt{3}$", r"Thus $\sqrt{12} = \boxed{2\sqrt{3}}$.", r"2\sqrt{3}"),
        ],
    )
    def test_equal(self, rule, completion, gold, answer):
        assert grade_math_detail(completion, gold, protocol="lighteval") == Grade(True, answer, "math-verify: equal")

    def test_several_gold_boxes_need_all_parts(self):
        # rule: the gold's boxes are joined into one set, and a reply with one part of it is wrong
        assert grade_math(r"\boxed{2}", r"$\boxed{1}$ and $\boxed{2}$", protocol="lighteval") is False

    def test_nothing_readable_is_no_answer(self):
        grade = grade_math_detail("I could not finish", "3", protocol="lighteval")
        assert grade.correct is False and grade.answer is None and "no answer found" in grade.reason

    def test_an_unreadable_gold_counts_wrong_as_lighteval_scores_it(self):
        grade = grade_math_detail(r"\boxed{5}", "???", protocol="lighteval")
        assert grade.correct is False and grade.reason.startswith("the gold answer cannot be read")

    def test_the_reward_rules_stay_as_they_were(self):
        # rlkd's training grader (documented departure 3 from open-r1): \frac12 is repaired to \frac{1}{2}
        assert grade_math(r"\boxed{\frac12}", "0.5") is True
        # and a reply with no box, tag or phrase has no answer, while lighteval reads the 7 anyway
        assert grade_math("Adding them up gives 7.", "7") is False

    def test_unknown_protocol_is_an_error(self):
        with pytest.raises(ValueError, match="unknown grading protocol 'lightevel'"):
            grade_math_detail(r"\boxed{1}", "1", protocol="lightevel")


class TestLightevalLetters:
    """lighteval 0.9.0's GPQA letter rules: each case names the rule it follows."""

    @pytest.mark.parametrize(
        "rule, text, letter",
        [
            ("'final answer is X. I hope' (priority 0)", "B? The final answer is C. I hope it is correct. A", "C"),
            ("'Answer:' then a standalone letter within 50 characters (100)", "Answer: D, it can't be A or B", "D"),
            ("'answer' then a standalone letter within 50 characters (150)", "The answer is for sure D, not A or B", "D"),
            ("the reply starts with the letter (200)", "D. it can't be A or B", "D"),
            ("a standalone letter, right-most (250)", "It's not A because of X, therefore I think it's B", "B"),
            ("any letter of the set at all, right-most (300): a quoted letter", 'Answer: "C"', "C"),
            ("upper case only: '(d)' is not read, the A of 'Answer' is", "**Answer: (d)**", "A"),
            ("none of the letters anywhere", "no idea", None),
        ],
    )
    def test_cases(self, rule, text, letter):
        assert extract_choice_lighteval(text) == letter

    def test_grading_a_letter(self):
        assert grade_choice_detail("therefore I think it's B", "b", protocol="lighteval") == Grade(
            True, "B", "letter matches")
        assert grade_choice("therefore I think it's B", "B") is False  # the reward rules need a decisive cue


class TestGradeAll:
    def test_keeps_order_and_kind(self):
        grades = grade_all([(r"\boxed{3}", "3"), ("gives 4", "5"), ("so 2/4", r"\frac{1}{2}")], kind="math")
        assert [g.correct for g in grades] == [True, False, True]
        assert grade("Answer: C", "C", kind="choice").correct is True
        with pytest.raises(ValueError, match="unknown problem kind"):
            grade("x", "1", kind="essay")
