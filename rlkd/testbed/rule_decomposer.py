"""The exact rule-based decomposer of the testbed's traces (:func:`rule_decompose`) and the alignment of a
student's decomposition with the oracle's (:func:`alignment`): the reference the trained GSRM is measured
against, and an oracle GSRM for testbed data (``structure.decomposer: rule``)."""

from __future__ import annotations

import re
from typing import Any

from rlkd.structure import Decomposition, Step, as_decomposition
from rlkd.testbed.tasks import _OPENING

# --------------------------------------------------------------------------------------------------
# Rule-based decomposer

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"(?<![\w.])-?\d+")
_NAMED = re.compile(r"\b([A-Za-z]+)\s*(?:=|\bis\b|\bequals\b|\bcomes to\b)")
_NOT_NAMES = {"that", "this", "which", "it", "so", "then", "there", "answer", "value", "what", "result",
              "goal", "thus", "hence", "here", "now", "and", "the"}


def reasoning_text(trace: str) -> str:
    """The reasoning part of a trace: inside ``<think>``, else everything before ``</think>`` or
    ``<answer>``."""
    m = _THINK.search(trace)
    if m:
        return m.group(1).strip()
    return re.split(r"</think>|<answer>", trace, maxsplit=1)[0].strip()


def rule_decompose(trace: object) -> Decomposition:
    """Recover (meta-reasoning, sub-problem, answer) steps from a flat narrative. Never raises.

    A sentence with a number computes a quantity: the quantity is the first name written before
    ``=`` / ``is`` / ``equals`` and the answer is the last number. The sentences without numbers before
    it are that step's meta-reasoning. On the oracle's traces this gives the ground truth exactly; on
    other text a step may come out with an empty field (with a warning), and a text with no computation
    gives no steps and a ``reason``.

    >>> d = rule_decompose("<think>We want c. c needs b and d, both known, so compute c next. "
    ...                    "So c = 2 + 3 = 5.</think>")
    >>> [(s.subproblem, s.answer) for s in d.steps]
    [('What is c?', '5')]
    """
    try:
        return _rule_decompose(trace)
    except Exception as exc:  # a last guard: the decomposer runs inside reward functions
        return Decomposition(reason=f"rule decomposer failed: {type(exc).__name__}: {exc}")


def _rule_decompose(trace: object) -> Decomposition:
    if isinstance(trace, bytes):
        trace = trace.decode("utf-8", errors="replace")
    if not isinstance(trace, str):
        return Decomposition(reason=f"expected text, got {type(trace).__name__}")
    warnings: list[str] = []
    if "<think>" not in trace:
        warnings.append("no <think> tag: read the text before </think> or <answer>")
    text = reasoning_text(trace)
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    if not sentences:
        return Decomposition(reason="empty reasoning", warnings=warnings)
    steps: list[Step] = []
    meta: list[str] = []
    for sentence in sentences:
        numbers = _NUMBER.findall(sentence)
        if not numbers:
            meta.append(sentence)
            continue
        name = next((m.group(1) for m in _NAMED.finditer(sentence) if m.group(1).lower() not in _NOT_NAMES), None)
        if name is None:
            warnings.append(f"step {len(steps) + 1}: no quantity named in {sentence[:60]!r}")
        steps.append(Step(" ".join(meta), f"What is {name}?" if name else "", str(int(numbers[-1])),
                          len(steps) + 1))
        if not meta:
            warnings.append(f"step {len(steps)} has no meta-reasoning")
        meta = []
    if not steps:
        return Decomposition(reason="no computation found (no sentence with a number)", warnings=warnings)
    if meta:
        steps.append(Step(" ".join(meta), "", "", len(steps) + 1))
        warnings.append(f"step {len(steps)} has meta-reasoning but no computation")
    return Decomposition(steps=steps, warnings=warnings)


# --------------------------------------------------------------------------------------------------
# Alignment with the oracle

_CHOSEN = re.compile(r"^\s*(?:what\s+is\s+(?:the\s+value\s+of\s+)?)?([A-Za-z]+)\s*\??\s*$", re.IGNORECASE)


def chosen_quantity(step: Step) -> str | None:
    """The quantity a step works on, read from its sub-problem (``What is c?`` -> ``c``), or None."""
    m = _CHOSEN.match(step.subproblem)
    return m.group(1).lower() if m else None


def _int_or_text(answer: str) -> str:
    text = answer.strip().rstrip(".").strip()
    try:
        return str(int(text))
    except ValueError:
        return text


def alignment(student: Any, oracle: Any) -> dict[str, Any]:
    """Exact structure alignment of a student's decomposition with the oracle's (rule-based, no judge).

    Either side may be a :class:`Decomposition`, its dict, JSON or GSRM text. Returns:
    ``meta_prefix`` (leading steps choosing the same quantity as the oracle) and ``meta_prefix_share``
    (that over the oracle's step count), ``meta_match`` (share of oracle positions with the same choice),
    ``answer_match`` (share of oracle positions with the same choice and the same answer),
    ``answers_found`` (share of the oracle's (quantity, value) pairs found anywhere in the student's
    steps), ``extra_steps`` (student steps on a quantity the oracle never computes), ``exact`` (the same
    (quantity, answer) sequence) and ``parse_failure`` (why a side has no steps, else None).

    >>> from rlkd.structure import Step, Decomposition
    >>> o = Decomposition([Step("m", "What is c?", "5"), Step("m", "What is d?", "7")])
    >>> s = Decomposition([Step("x", "What is c?", "5"), Step("x", "What is e?", "1")])
    >>> a = alignment(s, o); (a["meta_prefix"], a["answer_match"], a["extra_steps"])
    (1, 0.5, 1)
    """
    s, o = as_decomposition(student), as_decomposition(oracle)
    k, n = len(o), len(s)
    so = [(chosen_quantity(st), _int_or_text(st.answer)) for st in s.steps]
    oo = [(chosen_quantity(st), _int_or_text(st.answer)) for st in o.steps]
    prefix = 0
    for (sq, _), (oq, _) in zip(so, oo):
        if sq is None or sq != oq:
            break
        prefix += 1
    same_choice = [sq is not None and sq == oq for (sq, _), (oq, _) in zip(so, oo)]
    same_answer = [c and sa == oa for c, (_, sa), (_, oa) in zip(same_choice, so, oo)]
    oracle_names = {q for q, _ in oo}
    failure = None
    if not o.steps or not s.steps:
        failure = "; ".join(f"{side}: {d.reason or 'no steps'}" for side, d in (("student", s), ("oracle", o))
                            if not d.steps)
    return {
        "teacher_steps": k,
        "student_steps": n,
        "meta_prefix": prefix,
        "meta_prefix_share": prefix / k if k else 0.0,
        "meta_match": sum(same_choice) / k if k else 0.0,
        "answer_match": sum(same_answer) / k if k else 0.0,
        "answers_found": len(set(oo) & set(so)) / len(set(oo)) if oo else 0.0,
        "extra_steps": sum(1 for q, _ in so if q not in oracle_names),
        "exact": bool(k) and so == oo,
        "parse_failure": failure,
    }


_OPENING_GOAL = re.compile(re.escape(_OPENING).replace(re.escape("{g}"), r"([A-Za-z]+)"))


def opening_goal(trace: str) -> str | None:
    """The quantity the trace's first opening sentence (``We want x.``) names, or None without one. It
    copies the problem's first sentence (``Find x.``), from a fixed place in the prompt: the easiest
    copy in a trace.

    >>> opening_goal("<think>\\nWe want cap. cap needs box.")
    'cap'
    >>> opening_goal("cap = 3.") is None
    True
    """
    m = _OPENING_GOAL.search(reasoning_text(trace) if isinstance(trace, str) else "")
    return m.group(1) if m else None
