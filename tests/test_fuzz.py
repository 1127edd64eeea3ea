"""Fuzzing the parsers that read model output: they never raise, and hostile inputs finish in bounded time.

Model output reaches four parsers: the decomposition parser (:func:`rlkd.structure.parse_decomposition`),
the judge's verdict parsers (:func:`rlkd.llm_judge.parse_verdict`, :func:`parse_batched_verdicts`) and
the answer extraction (:func:`rlkd.answers.extract_answer`, ``extract_boxed``, ``extract_choice``).

1. Property tests (hypothesis): on any text, and on "soups" of the tokens these parsers look for, they
   return a value of the documented type and never raise.
2. Adversarial inputs of about 1 MB (deep brace nesting, thousands of unclosed ``\\boxed{``, long runs of
   label-like prefixes, one huge line, long runs of blanks after a label or a verdict word) must finish
   within :data:`BOUND_S` seconds of CPU time each (CPU time, so that other work on a shared machine
   does not make a linear case look slow). A regular expression that backtracks catastrophically takes
   minutes to hours on such input, so the bound separates linear from super-linear behaviour with a wide
   margin (the linear cases take milliseconds). The cases run in a child process with a memory limit and
   a per-case alarm, so a regression fails the test instead of hanging or exhausting the machine.

``KNOWN_SLOW`` keeps the inputs that were super-linear in ``rlkd/answers`` before it was fixed, as
regression cases.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd.answers import extract_answer, extract_boxed, extract_choice
from rlkd.llm_judge import parse_batched_verdicts, parse_verdict
from rlkd.structure import Decomposition, parse_decomposition

BOUND_S = 3.0  # CPU seconds allowed per adversarial input (extract_boxed on 1 MB of nested boxes, linear, takes 1.8-2.0 s)
MB = 1_000_000

# --------------------------------------------------------------------------------------------------
# Property tests

TOKENS = [
    "[", "]", "(", ")", "{", "}", "**", "__", "*", "_", "#", "##", "- ", ":", "：", ".", "-", "—", " ", "\t",
    "\n", "\r\n", "1", "2", "99", "Meta-reasoning", "Meat-reasoning", "sub-think", "Sub-problem", "Query",
    "Answer", "Final answer", "final answer is", "The answer is", "answer:", "\\boxed{", "\\boxed ",
    "\\fbox{", "\\{", "\\}", "\\\\", "\\frac{1}{2}", "$", "$$", "\\(", "\\)", "<think>", "</think>",
    "<answer>", "</answer>", "yes", "no", "Yes.", "NO", "verdict:", '{"1": "yes"}', '"2": false', ",",
    "A", "b", "(C)", "**D**", "option", "\u0000", "\ufffd", "é", "数",
]
soup = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=80).map("".join)
any_text = st.one_of(st.text(max_size=3000), soup)


class TestNeverRaises:
    @settings(max_examples=150, deadline=None)
    @given(any_text)
    def test_decomposition_parser(self, text):
        d = parse_decomposition(text)
        assert isinstance(d, Decomposition)
        assert (d.reason is None) == bool(d.steps)  # no steps always comes with a reason
        again = parse_decomposition(d.render())
        assert len(again.steps) == len(d.steps)  # what it read can be written and read back

    @settings(max_examples=150, deadline=None)
    @given(any_text)
    def test_verdict_parser(self, text):
        assert parse_verdict(text) in (True, False, None)

    @settings(max_examples=120, deadline=None)
    @given(any_text, st.integers(0, 6))
    def test_batched_verdict_parser(self, text, count):
        out = parse_batched_verdicts(text, count)
        assert len(out) == count
        assert all(v in (True, False, None) and isinstance(reason, str) for v, reason in out)

    @settings(max_examples=150, deadline=None)
    @given(any_text)
    def test_answer_extraction(self, text):
        answer = extract_answer(text)
        assert answer is None or (isinstance(answer, str) and answer.strip() == answer)
        assert all(isinstance(b, str) for b in extract_boxed(text))
        assert extract_choice(text) in (None, "A", "B", "C", "D")

    @settings(max_examples=100, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=200))
    def test_a_boxed_answer_is_read_back_exactly(self, inner):
        text = "so the result is \\boxed{" + inner + "} done"
        assert extract_boxed(text) == [inner.strip()]
        if inner.strip():
            assert extract_answer(text) == inner.strip()

    def test_an_empty_math_block_is_no_answer(self):
        assert extract_answer("<answer>$ $</answer>") is None

    def test_non_text_inputs_are_answered_not_raised(self):
        assert parse_decomposition(None).reason == "expected text, got NoneType"
        assert parse_decomposition(b"[Answer 1]: 2\xff").steps[0].answer == "2\ufffd"  # bytes decoded leniently
        assert parse_verdict(None) is None and parse_verdict(3) is None
        assert extract_answer(None) is None and extract_boxed(None) == [] and extract_choice(None) is None


# --------------------------------------------------------------------------------------------------
# Adversarial inputs, about 1 MB each

ADVERSARIAL = {
    # brace and \boxed nesting
    "open_braces": lambda: "{" * MB,
    "balanced_braces": lambda: "{" * (MB // 2) + "}" * (MB // 2),
    "unclosed_boxed": lambda: "\\boxed{" * (MB // 7),
    "unclosed_boxed_then_text": lambda: "\\boxed{x" * (MB // 8) + " the answer is 5",
    "bare_fbox_run": lambda: "\\fbox" * (MB // 5),
    "backslashes": lambda: "\\" * MB,
    "deep_json_object": lambda: '{"1": ' * (MB // 6) + '"yes"' + "}" * (MB // 6),
    "deep_json_array": lambda: "{" + "[" * (MB // 2) + "]" * (MB // 2) + "}",
    # label-like prefixes for the decomposition parser
    "label_prefix_run": lambda: "[Meta-reasoning" * (MB // 15),
    "label_line_run": lambda: "[Meta-reasoning 1]: x\n" * (MB // 22),
    "labels_on_one_line": lambda: "[Answer 1]: " * (MB // 12),
    "blank_line_then_word": lambda: " " * MB + "x",
    "blanks_before_think": lambda: " \t" * (MB // 2) + "<think>",
    "heading_then_blanks": lambda: "# " + " \t" * (MB // 2) + "x",
    "bullet_then_blanks": lambda: "- " + " " * MB + "(",
    "bold_then_blanks": lambda: "** " + " " * MB + "x",
    "bracket_then_blanks": lambda: "[ " + " " * MB + "x",
    "label_then_blanks": lambda: "[Answer" + " " * MB + "x",
    "bold_label_then_blanks": lambda: "**[Answer 1" + " " * MB,
    "markdown_stars": lambda: "*" * MB,
    "newlines": lambda: "\n" * MB,
    "huge_line": lambda: "x" * MB,
    # verdict-like text
    "yes_run": lambda: "yes " * (MB // 4),
    "unclosed_think_run": lambda: "<think>" * (MB // 7),
    "verdict_prefix_run": lambda: "Answer: " * (MB // 8),
    # answer phrases
    "answer_is_run": lambda: "the answer is " * (MB // 14),
    "answer_is_unclosed_dollar": lambda: "answer is $" + "x" * MB,
    "parentheses": lambda: "(" * MB,
    "bold_paren_run": lambda: "**(" * (MB // 3),
}

PARSERS = {
    "parse_decomposition": "rlkd.structure:parse_decomposition",
    "parse_verdict": "rlkd.llm_judge:parse_verdict",
    "parse_batched_verdicts": "rlkd.llm_judge:parse_batched_verdicts",
    "extract_answer": "rlkd.answers:extract_answer",
    "extract_boxed": "rlkd.answers:extract_boxed",
    "extract_choice": "rlkd.answers:extract_choice",
}

# Inputs that were super-linear in rlkd/answers before its fixes; kept as regression cases.
KNOWN_SLOW = {
    ("extract_boxed", "nested_boxed"): "every nested box's content was copied",
    ("extract_choice", "nested_boxed"): "the same copies, one per box, in _boxed_letter",
    ("extract_answer", "unclosed_answer_tags"): "a lazy <answer>(.*?)</answer> scan from every unclosed tag",
    ("extract_choice", "answer_colon_then_blanks"): "two adjacent blank runs in _DECISIVE backtracked",
}
KNOWN_SLOW_INPUTS = {
    "nested_boxed": lambda: "\\boxed{" * (MB // 7) + "}" * (MB // 7),
    "unclosed_answer_tags": lambda: "<answer>" * (MB // 8),
    "answer_colon_then_blanks": lambda: "answer:" + " " * MB + "!",
}

_CHILD = r"""
import importlib, json, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
sys.path.insert(0, sys.argv[1])
import test_fuzz

class Overrun(Exception):
    pass

def alarm(*_):
    raise Overrun()

signal.signal(signal.SIGPROF, alarm)
for parser, case in json.loads(sys.argv[2]):
    module, name = {**test_fuzz.PARSERS, "old_label_pattern": "test_fuzz:old_label_pattern"}[parser].split(":")
    function = getattr(importlib.import_module(module), name)
    text = {**test_fuzz.ADVERSARIAL, **test_fuzz.KNOWN_SLOW_INPUTS}[case]()
    args = (text, 3) if parser == "parse_batched_verdicts" else (text,)
    signal.setitimer(signal.ITIMER_PROF, test_fuzz.BOUND_S)  # CPU time of this process
    start = time.process_time()
    try:
        function(*args)
        outcome = "ok"
    except Overrun:
        outcome = "overran"
    except BaseException as exc:
        outcome = f"raised {type(exc).__name__}: {str(exc)[:100]}"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    print(json.dumps({"parser": parser, "case": case, "seconds": time.process_time() - start,
                      "outcome": outcome}), flush=True)
"""


def run_adversarial(pairs: list[tuple[str, str]]) -> list[dict]:
    """Run each (parser, case) in one child process; one result per pair (seconds, outcome)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).parent), json.dumps(pairs)],
                          capture_output=True, text=True, timeout=60 + 4 * len(pairs))
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(pairs), f"child stopped early (status {proc.returncode}): {proc.stderr[-2000:]}"
    return results


def _slow_cases(results: list[dict]) -> list[str]:
    return [f"{r['parser']} on {r['case']}: {r['outcome']} after {r['seconds']:.2f}s" for r in results
            if r["outcome"] != "ok" or r["seconds"] >= BOUND_S]


@pytest.mark.slow
def test_adversarial_inputs_finish_within_the_bound():
    """Every parser on every case (about 170 runs on 1 MB inputs, about 12 s in all on 2 cores)."""
    results = run_adversarial([(parser, case) for parser in PARSERS for case in ADVERSARIAL])
    assert _slow_cases(results) == []


def test_formerly_super_linear_answer_extraction_is_now_bounded():
    results = run_adversarial(list(KNOWN_SLOW))
    assert _slow_cases(results) == []


_OLD_LABEL = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*|[-*+][ \t]+)?[ \t]*(?P<open>[\[(])?[ \t]*(?P<label>answer)")


def old_label_pattern(text: str):
    """The label pattern as it was before the possessive fix (three adjacent blank runs)."""
    return _OLD_LABEL.match(text)


def test_the_runner_catches_a_catastrophic_regex():
    """The harness itself must be able to fail: the old label pattern on 1 MB of blanks (minutes to
    hours of backtracking) is stopped at the bound and reported as overrun."""
    [result] = run_adversarial([("old_label_pattern", "blank_line_then_word")])
    assert result["outcome"] == "overran" and 0.9 * BOUND_S <= result["seconds"] < 3 * BOUND_S
    assert _slow_cases([result]) != []


class TestRegressions:
    """Inputs that broke a parser once; each is small enough to run in-process."""

    def test_blank_runs_before_a_label_are_linear(self):
        import time

        start = time.process_time()
        for text in (" " * 200_000 + "x", "# " + " " * 200_000 + "x", "** " + " " * 200_000 + "x"):
            assert parse_decomposition(text).steps == []
        assert time.process_time() - start < BOUND_S  # was ~cubic: 71 s for 1,000 blanks

    def test_labels_still_read_with_blanks_around_them(self):
        text = "   ##   **  [ Meta-reasoning 1 ] ** :  m\n-   (Sub-problem 1):  q\n  [Answer 1]   -  a"
        [step] = parse_decomposition(text).steps
        assert (step.meta_reasoning, step.subproblem, step.answer) == ("m", "q", "a")

    def test_the_format_reward_is_linear_in_repeated_tags(self):
        import time

        from rlkd.rewards import format_reward

        text = "<think>" + "</think><answer></answer>x" * 40_000  # ~1 MB, every tag many times
        start = time.process_time()
        assert format_reward([text, "<think>\nx\n</think>\n<answer>\n4\n</answer>"]) == [0.0, 1.0]
        assert time.process_time() - start < BOUND_S  # the pattern ran first and was quadratic: minutes

    def test_deeply_nested_json_in_a_batched_reply_is_a_failed_verdict(self):
        text = '{"1": ' * 100_000 + '"yes"' + "}" * 100_000
        [(verdict, reason)] = parse_batched_verdicts(text, 1)
        assert verdict is None and reason.startswith("batched reply is neither a JSON list nor an object")
