"""Early exit (SPEC section 8): the incremental parser is prefix-stable, and the gate-aware reward that
stops the GSRM once the reward is decided gives exactly the full computation's result."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlkd.structure import FIELDS, IncrementalParser, parse_decomposition

# --------------------------------------------------------------------------------------------------
# Prefix stability of the incremental parser

META = ["Meta-reasoning", "Meat-reasoning", "sub-think", "META-REASONING", "meta reasoning", "Sub-Think", "metareasoning"]
SUB = ["Sub-problem", "Query", "sub problem", "SUBPROBLEM", "sub_problem"]
ANSWER = ["Answer", "answer", "ANSWER"]
FINAL = ["Final answer", "final-answer", "FINAL ANSWER"]
SHAPES = ["[{w} {n}]: {t}", "[{w} {n}] - {t}", "[{w} {n}] {t}", "**[{w} {n}]:** {t}", "**[{w} {n}]**: {t}",
          "**{w} {n}:** {t}", "### {w} {n}: {t}", "- [{w} {n}]: {t}", "{w} {n}: {t}", "__[{w} {n}]__: {t}",
          "[{w}]: {t}", "[{w} {n}]:\n{t}", "({w} {n}): {t}"]
WORDS = ["x", "y = 2", "Answer the question", "then", "we", "[Answer", "**", "3/4", "Meta-reasoning", "-", "é", ":"]


@st.composite
def gsrm_texts(draw) -> str:
    """Decompositions in every label family and drift the parser accepts: any shape, skipped or repeated
    numbers, missing or repeated fields, stray lines, a final-answer section, CRLF line ends."""
    lines = []
    number = 1
    for _ in range(draw(st.integers(0, 6))):
        kinds = draw(st.sampled_from([["meta", "sub", "answer"]] * 4 + [["meta", "answer"], ["sub", "answer"],
                                      ["meta", "sub", "sub", "answer"], ["meta"], ["answer", "meta"]]))
        for kind in kinds:
            word = draw(st.sampled_from({"meta": META, "sub": SUB, "answer": ANSWER}[kind]))
            text = " ".join(draw(st.lists(st.sampled_from(WORDS), max_size=4)))
            lines.append(draw(st.sampled_from(SHAPES)).format(w=word, n=number, t=text))
            for _ in range(draw(st.integers(0, 2))):
                lines.append(" ".join(draw(st.lists(st.sampled_from(WORDS), max_size=3))))
        number += draw(st.sampled_from([1, 1, 1, 0, 2]))
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(SHAPES)).format(w=draw(st.sampled_from(FINAL)), n="", t="42"))
        if draw(st.booleans()):
            lines.append("[Meta-reasoning 9]: after the end")
    end = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028"]))
    return end.join(lines) + draw(st.sampled_from(["", end, "\n\n"]))


def _check_every_cut(text: str, pieces: list[int]) -> None:
    """Feed ``text`` in pieces of the given sizes (repeated); after every piece, each field the parser
    calls complete must equal that field of the full parse. With pieces of size 1 that is every cut point."""
    full = parse_decomposition(text)
    parser = IncrementalParser()
    position = n = 0
    while position < len(text):
        size = pieces[n % len(pieces)]
        n += 1
        parser.feed(text[position: position + size])
        position += size
        for i, step in enumerate(parser.steps):
            for name in FIELDS:
                if parser.final(i, name):
                    assert i < len(full.steps), (text, position, i)
                    assert step.get(name) == full.steps[i].get(name), (text, position, i, name)
    assert parser.finish() == full
    assert [s.get(n) for s in parser.steps for n in FIELDS] == [s.get(n) for s in full.steps for n in FIELDS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gsrm_texts(), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_every_cut_point_agrees_with_the_full_parse(text, pieces):
    _check_every_cut(text, [1])  # every cut point
    _check_every_cut(text, pieces)  # and pieces of several characters, as a server streams them


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("[]*:-#_ \n\r1aq") + ["\r\n", "**", "Answer", "Query", "Meta-reasoning",
                                                             "Final answer", "\u2028"]), max_size=40).map("".join))
def test_prefix_stability_on_label_soup(text):
    _check_every_cut(text, [1])


class TestIncrementalParser:
    def test_a_field_is_complete_when_the_next_label_line_has_arrived(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]: start with x\n[Sub-prob")
        assert not p.final(0, "meta")  # the next line is not whole yet: it may not be a label
        p.feed("lem 1]: what is x?\n")
        assert p.final(0, "meta") and p.steps[0].meta_reasoning == "start with x"
        assert not p.final(0, "subproblem")
        p.feed("[Answer 1]: 2\n[Meta-reasoning 2]: then y\n")
        assert p.step_final(0) and (p.steps[0].subproblem, p.steps[0].answer) == ("what is x?", "2")
        assert not p.final(1, "meta")  # "then y" may go on below its label line
        p.feed("[Sub-problem 2]: y?\n")
        assert p.final(1, "meta") and not p.final(1, "answer")

    def test_text_below_a_label_stays_open_until_the_next_label(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]:\nwe need\n")
        assert not p.final(0, "meta")
        p.feed("both lines\n[Sub-problem 1]: q\n")
        assert p.steps[0].meta_reasoning == "we need\nboth lines"

    def test_finish_gives_the_full_parse(self):
        text = "[Meta-reasoning 1]: a\r\n[Sub-problem 1]: b\r\n[Answer 1]: c\r\n[Final answer]: c"
        p = IncrementalParser()
        for ch in text:
            p.feed(ch)
        assert p.finish() == parse_decomposition(text)

    def test_reset_starts_over(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]: a\n[Sub-problem 1]: b\n")
        p.reset()
        p.feed("[Meta-reasoning 1]: z\n")
        assert p.text == "[Meta-reasoning 1]: z\n" and p.finish().steps[0].meta_reasoning == "z"
