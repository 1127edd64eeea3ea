"""Grading by protocol: one completion (:func:`grade_math`, :func:`grade`) or many at once (:func:`grade_all`),
under ``lighteval`` (the default of ``rlkd eval`` and ``rlkd grade``) or ``reward`` (the training reward's).
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Sequence

from rlkd.answers.choice import grade_choice_detail
from rlkd.answers.extract import extract_answer
from rlkd.answers.grades import DEFAULT_EVAL_PROTOCOL, DEFAULT_TIMEOUT_S, Grade, _check_protocol, _count
from rlkd.answers.verify import _GOLD_UNREADABLE, _POOL, _bounded_grade, math_equal

log = logging.getLogger("rlkd.answers")


# --------------------------------------------------------------------------------------------------
# Grading one completion, by protocol

def grade_math_detail(completion_text: str, gold: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                      protocol: str = "reward") -> Grade:
    """Grade ``completion_text`` against ``gold`` by math-verify, under ``protocol`` (see the module
    docstring): ``reward`` extracts the answer with :func:`extract_answer` and compares it with the gold;
    ``lighteval`` reads the whole completion and the gold as lighteval 0.9.0 does. Never raises.

    >>> grade_math_detail(r"... so $x = \\boxed{\\dfrac{1}{2}}$", "0.5").correct
    True
    >>> grade_math_detail("so the result is 7", "7", protocol="lighteval").correct
    True
    """
    _check_protocol(protocol)
    try:
        if protocol == "lighteval":
            gold_text = gold if isinstance(gold, str) else str(gold)
            if not gold_text.strip():
                _count("gold_unparsable")
                return Grade(False, None, f"{_GOLD_UNREADABLE} (empty); lighteval scores such a problem 0")
            text = completion_text if isinstance(completion_text, str) else ""
            return _bounded_grade({"op": "lighteval", "gold": gold_text, "completion": text}, timeout_s, None)
        answer = extract_answer(completion_text)
        grade = math_equal(gold, answer or "", timeout_s=timeout_s)  # reads the gold even with no answer
        if answer is None and grade.correct is not None:
            return Grade(False, None, "no answer found (no \\boxed{}, <answer> block or 'answer is' phrase)")
        return Grade(grade.correct, answer, grade.reason)
    except Exception as exc:  # never raise into a reward function or an evaluation loop
        _count("errors")
        return Grade(False, None, f"grading error: {type(exc).__name__}: {exc}")


def grade_math(completion_text: str, gold: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S,
               protocol: str = "reward") -> bool | None:
    """True if the completion's final answer equals ``gold`` by math-verify, False if not (or if no
    answer was found, or the check timed out), None if the gold answer cannot be read (``reward``
    protocol; ``lighteval`` counts such a gold wrong, as lighteval does). Never raises; safe in threads
    and async code.

    >>> grade_math(r"The answer is \\boxed{1/2}", r"\\frac{1}{2}")
    True
    """
    return grade_math_detail(completion_text, gold, timeout_s=timeout_s, protocol=protocol).correct




# --------------------------------------------------------------------------------------------------
# Many completions


def grade(completion_text: str, gold: Any, *, kind: str, protocol: str = DEFAULT_EVAL_PROTOCOL,
          timeout_s: float = DEFAULT_TIMEOUT_S, letters: str = "ABCD") -> Grade:
    """Grade one completion of a ``math`` or ``choice`` (four-option, GPQA-style) problem."""
    if kind == "choice":
        return grade_choice_detail(completion_text, str(gold), letters, protocol=protocol)
    if kind != "math":
        raise ValueError(f"unknown problem kind {kind!r}; expected math or choice")
    return grade_math_detail(completion_text, gold, timeout_s=timeout_s, protocol=protocol)


def grade_all(items: Sequence[tuple[str, Any]], *, kind: str, protocol: str = DEFAULT_EVAL_PROTOCOL,
              timeout_s: float = DEFAULT_TIMEOUT_S, progress: str | None = None) -> list[Grade]:
    """:func:`grade` for each (completion, gold) in ``items``, in order, a few at a time (math-verify
    runs in the grading processes, so a few threads keep several of them busy). ``progress`` names a
    progress bar (none when None)."""
    _check_protocol(protocol)
    with concurrent.futures.ThreadPoolExecutor(_POOL.size) as pool:
        results = pool.map(lambda item: grade(item[0], item[1], kind=kind, protocol=protocol, timeout_s=timeout_s),
                           items)
        if progress is not None:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(items), desc=progress, unit="sample", dynamic_ncols=True)
        return list(results)
