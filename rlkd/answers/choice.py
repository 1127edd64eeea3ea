"""Multiple choice (GPQA-Diamond): the answer letter read with our cues (:func:`extract_choice`) or with
lighteval 0.9.0's letter rules (:func:`extract_choice_lighteval`), and graded.
"""
from __future__ import annotations

import logging
import re

from rlkd.answers.extract import _boxed_spans
from rlkd.answers.grades import Grade, _check_protocol

log = logging.getLogger("rlkd.answers")


# --------------------------------------------------------------------------------------------------
# Multiple choice

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_DECISIVE = re.compile(
    # possessive runs (*+): each blank is consumed once, so a long run of blanks cannot backtrack
    r"\b(?i:answer|option|choice)\b[\s*_]*+(?:(?i:is)\b|:|=)[\s*_:]*+"
    r"(?:(?i:option|choice|letter)\s*+)?"
    r"(?P<open>[(\[])?\s*+(?:\*\*)?(?P<letter>[A-Za-z])(?![A-Za-z0-9])(?:\*\*)?(?:\s*+(?P<close>[)\]]))?"
)
_WEAK = re.compile(
    r"\*\*\s*\(?(?P<bold>[A-Za-z])\)?\s*\*\*"  # **C** or **(c)**
    r"|\((?P<paren>[A-Za-z])\)"  # (b)
    r"|^[ \t]*(?P<line>[A-Z])[.)]?[ \t]*$",  # a line holding only "C", "C." or "C)"
    re.MULTILINE,
)


def _boxed_letter(content: str, letters: str) -> str | None:
    inner = _WRAPPERS.sub(r"\1", content)
    inner = re.sub(r"(?i)^\s*(?:option|choice)\s*", "", inner)
    inner = inner.strip().strip("*(). :").strip()
    if len(inner) == 1 and inner.upper() in letters:
        return inner.upper()
    return None


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The multiple-choice letter a reply settles on (upper case), or None.

    Decisive forms, right-most wins: ``\\boxed{D}`` (also ``\\boxed{\\text{(D)}}``), "Answer: C",
    "The answer is (b)", "The correct option is A.". Without any, the right-most weak cue: ``**C**``,
    ``(b)``, or a line holding only the letter. Lower case counts only when marked (``(b)``, ``**b**``,
    boxed), since "a" is also a word.

    >>> extract_choice("Option (B) fails, so the correct option is A.")
    'A'
    """
    if not isinstance(text, str) or not text:
        return None
    letters = letters.upper()
    best: tuple[int, str] | None = None
    for s, e in _boxed_spans(text):
        letter = _boxed_letter(text[s:e], letters)
        if letter and (best is None or s > best[0]):
            best = (s, letter)
    for m in _DECISIVE.finditer(text):
        letter = m.group("letter")
        marked = bool(m.group("open") and m.group("close"))
        if letter.upper() in letters and (letter.isupper() or marked):
            if best is None or m.start("letter") > best[0]:
                best = (m.start("letter"), letter.upper())
    if best is not None:
        return best[1]
    weak = None
    for m in _WEAK.finditer(text):
        letter = m.group("bold") or m.group("paren") or m.group("line")
        if letter and letter.upper() in letters:
            weak = letter.upper()
    return weak


# lighteval 0.9.0's letter rules (GPQA-Diamond): tried in order of priority; within one rule the match
# that ends right-most wins. Upper-case letters only; "answer" in any case; the blank is a plain space.
def _lighteval_letter_rules(letters: str) -> list[re.Pattern[str]]:
    letter = "(?P<letter>[" + re.escape(letters) + "])"
    before, after = r"(?:^| )(?:\*\*)?", r"(?:\*\*)?(?:[.,: ]|$)"
    return [re.compile(p) for p in (
        rf"(?i:final answer is):?\s*{letter}\.?\s?I hope",  # 0: "The final answer is C. I hope it is correct"
        rf"(?i:final answer.{{0,100}}?)\s+is:?\s*{letter}",  # 50: "final answer to this is B"
        rf"(?i:answer):.{{0,50}}?{before}{letter}{after}",  # 100: "Answer: D", "answer: it is **B**."
        rf"(?i:answer).{{0,50}}?{before}{letter}{after}",  # 150: "The answer is for sure D, ..."
        rf"^(?:\*\*)?{letter}{after}",  # 200: the reply starts with the letter ("D. it can't be A")
        rf"{before}{letter}{after}",  # 250: a letter standing alone ("therefore I think it's B")
        letter,  # 300: any such letter at all ('Answer: "C"')
    )]


_LETTER_RULES: dict[str, list[re.Pattern[str]]] = {}


def extract_choice_lighteval(text: str, letters: str = "ABCD") -> str | None:
    """The letter lighteval 0.9.0's GPQA metric extracts from ``text`` (its ``IndicesExtractionConfig``
    with letters and extraction without an anchor, which is on), or None when ``text`` holds none of
    the letters. Since the last rule takes any upper-case letter of the set anywhere, a reply almost
    always yields one.

    >>> extract_choice_lighteval("The answer is for sure D, it can't be A or B")
    'D'
    >>> extract_choice_lighteval("Let's see. It's not A, therefore I think it's B")
    'B'
    """
    if not isinstance(text, str) or not text:
        return None
    rules = _LETTER_RULES.get(letters)
    if rules is None:
        rules = _LETTER_RULES.setdefault(letters, _lighteval_letter_rules(letters))
    for rule in rules:
        best = max(rule.finditer(text), key=lambda m: (m.end(), -m.start()), default=None)
        if best is not None:
            return best.group("letter")
    return None


def grade_choice_detail(completion_text: str, gold_letter: str, letters: str = "ABCD", *,
                        protocol: str = "reward") -> Grade:
    """Extract the letter (:func:`extract_choice_lighteval` under the ``lighteval`` protocol,
    :func:`extract_choice` under ``reward``) and compare it with ``gold_letter`` (case-insensitive).
    Never raises."""
    _check_protocol(protocol)
    try:
        gold = (gold_letter or "").strip().upper()
        if len(gold) != 1 or gold not in letters.upper():
            return Grade(None, None, f"the gold letter {gold_letter!r} is not one of {letters}")
        if protocol == "lighteval":
            letter = extract_choice_lighteval(completion_text, letters.upper())
        else:
            letter = extract_choice(completion_text, letters)
        if letter is None:
            return Grade(False, None, "no answer letter found")
        return Grade(letter == gold, letter, "letter matches" if letter == gold else "letter differs")
    except Exception as exc:
        return Grade(False, None, f"grading error: {type(exc).__name__}: {exc}")


def grade_choice(completion_text: str, gold_letter: str, letters: str = "ABCD", *, protocol: str = "reward") -> bool:
    """True if the letter the reply settles on is ``gold_letter`` (case-insensitive); never raises.

    >>> grade_choice("**Answer: (c)**", "C")
    True
    """
    return bool(grade_choice_detail(completion_text, gold_letter, letters, protocol=protocol).correct)
