"""The decomposition parser, the renderer and the structure reward (SPEC sections 2 and 3)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rlkd.structure import (
    Decomposition,
    Step,
    StructureResult,
    Verdict,
    as_decomposition,
    is_label_line,
    parse_decomposition,
    structure_reward,
)

# --------------------------------------------------------------------------------------------------
# Parser


class TestParseLabels:
    def test_canonical_format(self):
        d = parse_decomposition(
            "[Meta-reasoning 1]: find x first\n[Sub-problem 1]: What is x?\n[Answer 1]: 2\n"
            "[Meta-reasoning 2]: then y\n[Sub-problem 2]: What is y?\n[Answer 2]: 3"
        )
        assert d.steps == [Step("find x first", "What is x?", "2", 1), Step("then y", "What is y?", "3", 2)]
        assert d.reason is None and d.warnings == []

    @pytest.mark.parametrize(
        "meta,sub",
        [("Meta-reasoning", "Sub-problem"), ("Meat-reasoning", "Sub-problem"), ("sub-think", "Query"),
         ("META-REASONING", "SUB-PROBLEM"), ("meta reasoning", "sub problem"), ("Sub-Think", "query")],
    )
    def test_label_families_and_case(self, meta, sub):
        d = parse_decomposition(f"[{meta} 1]: why\n[{sub} 1]: what\n[answer 1]: 7")
        assert d.steps == [Step("why", "what", "7", 1)]

    @pytest.mark.parametrize(
        "line",
        ["[Meta-reasoning 1]: why", "[Meta-reasoning 1] - why", "[Meta-reasoning 1] why",
         "**[Meta-reasoning 1]:** why", "**[Meta-reasoning 1]**: why", "**Meta-reasoning 1:** why",
         "### Meta-reasoning 1: why", "- [Meta-reasoning 1]: why", "Meta-reasoning 1: why",
         "__[Meta-reasoning 1]__: why", "[Meta-reasoning]: why"],
    )
    def test_bold_heading_and_separators(self, line):
        d = parse_decomposition(line + "\n[Sub-problem 1]: what\n[Answer 1]: 7")
        assert [s.meta_reasoning for s in d.steps] == ["why"]

    def test_label_on_its_own_line_text_below(self):
        d = parse_decomposition("[Meta-reasoning 1]:\nwe need\nboth lines\n[Sub-problem 1]:\nwhat\n[Answer 1]:\n7")
        assert d.steps == [Step("we need\nboth lines", "what", "7", 1)]

    def test_sentence_starting_with_a_label_word_is_not_a_label(self):
        d = parse_decomposition("[Meta-reasoning 1]: start\nAnswer the question carefully\n[Sub-problem 1]: q\n[Answer 1]: 1")
        assert d.steps[0].meta_reasoning == "start\nAnswer the question carefully"

    def test_skipped_and_repeated_numbers_keep_order(self):
        text = ("[Meta-reasoning 1]: a\n[Sub-problem 1]: qa\n[Answer 1]: 1\n"
                "[Meta-reasoning 3]: b\n[Sub-problem 3]: qb\n[Answer 3]: 2\n"
                "[Meta-reasoning 3]: c\n[Sub-problem 3]: qc\n[Answer 3]: 3")
        d = parse_decomposition(text)
        assert [s.meta_reasoning for s in d.steps] == ["a", "b", "c"]
        assert [s.number for s in d.steps] == [1, 3, 3]
        assert any("not consecutive" in w for w in d.warnings)

    def test_missing_fields_are_kept_empty_with_a_warning(self):
        d = parse_decomposition("[Meta-reasoning 1]: a\n[Answer 1]: 1\n[Meta-reasoning 2]: b\n[Sub-problem 2]: qb")
        assert d.steps == [Step("a", "", "1", 1), Step("b", "qb", "", 2)]
        assert d.warnings == ["step 1 has no sub-problem", "step 2 has no answer"]

    def test_two_subproblems_in_a_row_start_a_new_step(self):
        d = parse_decomposition("[Sub-problem 1]: q1\n[Answer 1]: 1\n[Sub-problem 2]: q2\n[Answer 2]: 2")
        assert d.steps == [Step("", "q1", "1", 1), Step("", "q2", "2", 2)]

    def test_trailing_final_answer_is_not_a_step(self):
        d = parse_decomposition("[Meta-reasoning 1]: a\n[Sub-problem 1]: q\n[Answer 1]: 1\n**Final Answer:** \\boxed{1}")
        assert len(d.steps) == 1 and d.final_answer == "\\boxed{1}"

    def test_preamble_is_ignored(self):
        d = parse_decomposition("Here is the decomposition:\n\n[Meta-reasoning 1]: a\n[Sub-problem 1]: q\n[Answer 1]: 1")
        assert d.steps == [Step("a", "q", "1", 1)]

    @pytest.mark.parametrize(
        "text,reason",
        [("", "empty text"), ("   \n ", "empty text"), ("I think the answer is 4.", "no step labels found"),
         ("[Final answer]: 4", "only a final-answer section"), (None, "expected text, got NoneType"),
         (42, "expected text, got int")],
    )
    def test_no_steps_comes_with_a_reason(self, text, reason):
        d = parse_decomposition(text)
        assert d.steps == [] and d.reason.startswith(reason)

    def test_bytes_are_decoded_not_rejected(self):
        d = parse_decomposition(b"[Meta-reasoning 1]: a\xff\n[Sub-problem 1]: q\n[Answer 1]: 1")
        assert d.steps[0].meta_reasoning == "a\ufffd"

    def test_adversarial_megabyte_is_linear(self):
        nasty = ("[" * 50_000 + "**Meta-reasoning " + "1" * 9 + " " * 1000 + "\n") * 20
        start = time.perf_counter()
        d = parse_decomposition(nasty[: 1_000_000])
        assert time.perf_counter() - start < 5.0
        assert isinstance(d, Decomposition)


class TestRenderAndJson:
    def test_render_is_canonical(self):
        d = Decomposition([Step("why", "what", "7")], final_answer="7")
        assert d.render() == "[Meta-reasoning 1]: why\n[Sub-problem 1]: what\n[Answer 1]: 7\n[Final answer]: 7"

    def test_json_round_trip(self):
        d = parse_decomposition("[Meta-reasoning 1]: a\n[Answer 1]: 1")
        back = Decomposition.from_json(d.to_json())
        assert back.steps == d.steps and back.warnings == d.warnings

    def test_from_dict_names_the_bad_field(self):
        with pytest.raises(ValueError, match=r"steps\[1\] has unknown field\(s\) \['meta'\]"):
            Decomposition.from_dict({"steps": [{"subproblem": "q"}, {"meta": "x"}]})
        with pytest.raises(ValueError, match="list under 'steps'"):
            Decomposition.from_dict({"step": []})

    def test_as_decomposition_accepts_every_stored_form(self):
        d = Decomposition([Step("a", "q", "1", 1)])
        for form in (d, d.to_dict(), d.to_json(), d.render()):
            assert as_decomposition(form).steps == d.steps


_line = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=40)
_field = st.lists(_line, min_size=1, max_size=3).map(lambda lines: "\n".join(lines).strip())


@st.composite
def _steps(draw):
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        texts = [draw(_field) for _ in range(3)]
        for t in texts:
            assume(t and not any(is_label_line(line) for line in t.split("\n")))
        steps.append(Step(*texts, number=draw(st.integers(1, 99))))
    return steps


class TestParserProperties:
    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=2000))
    def test_never_raises(self, text):
        d = parse_decomposition(text)
        assert (d.reason is None) == bool(d.steps)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(["[Meta-reasoning 1]:", "[Sub-problem 2]:", "[Answer 3]:", "**Query 4**",
                                     "[sub-think]", "Final answer:", "x", "\n", "- ", "###", "[", "]"]),
                    max_size=60).map("".join))
    def test_never_raises_on_label_soup(self, text):
        parse_decomposition(text)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(_steps())
    def test_render_then_parse_is_identity(self, steps):
        assert parse_decomposition(Decomposition(steps).render()).steps == steps


# --------------------------------------------------------------------------------------------------
# The structure reward


def _d(*triples: tuple[str, str, str]) -> Decomposition:
    return Decomposition([Step(*t) for t in triples])


def _exact(teacher: Decomposition, student: Decomposition):
    """A deterministic judge for tests: exact string equality of the two fields."""
    return lambda f, i: Verdict(teacher.steps[i].get(f) == student.steps[i].get(f), "exact")


TEACHER = _d(("m1", "q1", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3"))


class TestStructureReward:
    def score(self, student, mode="paper", teacher=TEACHER) -> StructureResult:
        return structure_reward(teacher, student, _exact(teacher, student), mode)

    def test_identical_steps_score_one_each(self):
        r = self.score(TEACHER)
        assert r.reward == 3.0 and r.matched_prefix == 3 and [s.score for s in r.steps] == [1, 1, 1]

    def test_subproblem_mismatch_halves(self):
        r = self.score(_d(("m1", "X", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3")))
        assert [s.score for s in r.steps] == [0.5, 1, 1] and r.reward == 2.5

    def test_answer_mismatch_halves(self):
        r = self.score(_d(("m1", "q1", "X"), ("m2", "q2", "a2"), ("m3", "q3", "a3")))
        assert [s.score for s in r.steps] == [0.5, 1, 1]

    def test_both_mismatches_quarter(self):
        r = self.score(_d(("m1", "X", "Y"), ("m2", "q2", "a2"), ("m3", "q3", "a3")))
        assert [s.score for s in r.steps] == [0.25, 1, 1] and r.reward == 2.25

    def test_gate_stops_credit_after_first_meta_mismatch(self):
        r = self.score(_d(("m1", "q1", "a1"), ("WRONG", "q2", "a2"), ("m3", "q3", "a3")))
        assert [s.score for s in r.steps] == [1, 0, 0] and r.reward == 1.0
        assert r.matched_prefix == 1
        assert r.steps[2].gated and r.steps[2].meta is None  # never judged
        assert r.steps[1].subproblem is None  # a zeroed step is not judged further

    def test_first_meta_mismatch_zeroes_everything(self):
        r = self.score(_d(("WRONG", "q1", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3")))
        assert r.reward == 0.0 and r.matched_prefix == 0

    def test_mismatched_subproblem_does_not_gate(self):
        # only the meta-reasoning verdict gates; halved steps keep credit flowing
        r = self.score(_d(("m1", "X", "Y"), ("m2", "X", "a2"), ("m3", "q3", "a3")))
        assert [s.score for s in r.steps] == [0.25, 0.5, 1]

    def test_student_shorter_scores_only_aligned_steps(self):
        r = self.score(_d(("m1", "q1", "a1"), ("m2", "q2", "a2")))
        assert r.reward == 2.0 and len(r.steps) == 2 and r.teacher_steps == 3 and r.student_steps == 2

    def test_student_longer_extra_steps_earn_nothing(self):
        r = self.score(_d(("m1", "q1", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3"), ("m4", "q4", "a4")))
        assert r.reward == 3.0 and len(r.steps) == 3

    def test_empty_student_scores_zero_and_says_why(self):
        r = self.score(parse_decomposition("no labels here"))
        assert r.reward == 0.0 and r.parse_failure.startswith("student: no step labels found")

    def test_empty_teacher_scores_zero_and_says_why(self):
        r = structure_reward(Decomposition(reason="empty text"), TEACHER, lambda f, i: Verdict(True))
        assert r.reward == 0.0 and r.parse_failure == "teacher: empty text"

    def test_normalized_mode_divides_by_teacher_steps(self):
        r = self.score(_d(("m1", "X", "a1"), ("m2", "q2", "a2")), mode="normalized")
        assert r.reward == pytest.approx(1.5 / 3)

    def test_ungated_mode_credits_later_matches(self):
        r = self.score(_d(("m1", "q1", "a1"), ("WRONG", "q2", "a2"), ("m3", "q3", "a3")), mode="ungated")
        assert [s.score for s in r.steps] == [1, 0, 1] and r.reward == 2.0 and r.matched_prefix == 1

    def test_failed_verdict_counts_as_mismatch_and_is_recorded(self):
        student = _d(("m1", "q1", "a1"), ("m2", "q2", "a2"))

        def flaky(f, i):
            return Verdict(None, "llm", "unreadable verdict") if (f, i) == ("answer", 0) else Verdict(True, "llm")

        r = structure_reward(TEACHER, student, flaky)
        assert [s.score for s in r.steps] == [0.5, 1.0]
        assert r.judge_failures == 1 and r.steps[0].failures == {"answer": "unreadable verdict"}

    def test_only_needed_verdicts_are_asked(self):
        asked = []
        student = _d(("WRONG", "q1", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3"))

        def judge(f, i):
            asked.append((f, i))
            return _exact(TEACHER, student)(f, i)

        structure_reward(TEACHER, student, judge)
        assert asked == [("meta", 0)]

    def test_unknown_mode_is_rejected(self):
        with pytest.raises(ValueError, match="unknown structure reward mode 'soft'"):
            self.score(TEACHER, mode="soft")

    def test_metrics_are_flat_components(self):
        r = self.score(_d(("m1", "X", "a1"), ("WRONG", "q2", "a2"), ("m3", "q3", "a3")))
        m = r.metrics()
        assert m["reward"] == 0.5 and m["prefix_length"] == 1.0
        assert m["meta_match"] == pytest.approx(1 / 3)
        assert m["subproblem_match"] == 0.0 and m["answer_match"] == 1.0

    def test_result_json_round_trip(self):
        r = self.score(_d(("m1", "X", "a1"), ("WRONG", "q2", "a2")))
        assert StructureResult.from_dict(r.to_dict()) == r
