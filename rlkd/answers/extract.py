"""Reading the answer out of a completion for the ``reward`` protocol: the right-most ``\\boxed{...}``, the
last ``<answer>`` block, or a "final answer is X" / "answer: X" phrase (:func:`extract_answer`).
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger("rlkd.answers")


# --------------------------------------------------------------------------------------------------
# \boxed{...}

# One token of interest at a time: a \boxed / \fbox command, an escaped character (\{ \} \\ ...), a brace.
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*|\\.|[{}]", re.DOTALL)
_BARE_BOX_ARG = re.compile(r"[^\s${}\\]+")  # "\boxed 5": one token, no braces


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every closed ``\\boxed{}`` / ``\\fbox{}``, ordered by start.

    One left-to-right pass over the interesting tokens, keeping a stack of open boxes: linear time,
    nested boxes and nested braces handled, escaped braces ignored, an unclosed box dropped.
    """
    spans: list[tuple[int, int]] = []
    open_boxes: list[tuple[int, int]] = []  # (brace depth at which the box opened, content start)
    depth = 0
    resume = 0
    for m in _BOX_TOKENS.finditer(text):
        if m.start() < resume:  # inside a "\boxed 5" argument already consumed
            continue
        token = m.group()
        if token[0] == "\\" and token[1:3] in ("bo", "fb") and m.end() - m.start() > 2:
            end = m.end()
            if end < len(text) and text[end] == "{":
                depth += 1
                open_boxes.append((depth, end + 1))
                resume = end + 1
            else:
                bare = _BARE_BOX_ARG.match(text, end)
                if bare:
                    spans.append((bare.start(), bare.end()))
                    resume = bare.end()
        elif token == "{":
            depth += 1
        elif token == "}":
            if open_boxes and open_boxes[-1][0] == depth:
                start = open_boxes.pop()[1]
                if not open_boxes:  # only outermost boxes: nested ones would copy the text once per level
                    spans.append((start, m.start()))
            depth = max(depth - 1, 0)
    spans.sort()
    return spans


_ONE_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _unwrap(content: str, levels: int = 3) -> str:
    """``\\boxed{\\boxed{5}}`` -> ``5``: strip a box that is the whole content, a few levels at most."""
    for _ in range(levels):
        m = _ONE_BOX.match(content)
        if not m or _boxed_spans(content) != [(m.end(), len(content) - 1)]:
            break
        content = content[m.end():-1].strip()
    return content


def extract_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` and ``\\fbox{...}`` in ``text``, in order of appearance.

    Braces are balanced (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``), escaped braces ``\\{ \\}`` do
    not count, a box inside a box counts once (the outer one; a box that is the whole content of another
    is unwrapped), an unclosed box gives nothing, and the bare form ``\\boxed 5`` gives ``5``. Linear time
    and memory on any input.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} or \\fbox{3}")
    ['\\\\frac{1}{2}', '3']
    """
    if not isinstance(text, str):
        return []
    return [_unwrap(text[s:e].strip()) for s, e in _boxed_spans(text)]


# --------------------------------------------------------------------------------------------------
# "The final answer is X"

# "final answer is", "The answer is", "Answer:", "**Final Answer:**", "final answer = ". Simple, linear.
_PHRASE = re.compile(r"\b(?i:final\s+answer|answer)\b[\s*_]*(?:(?i:is)\b|:|=)[\s*_:]*")
_MATH_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_PHRASE_WINDOW = 500


def _phrase_value(text: str, start: int) -> str | None:
    """The answer written right after a phrase that ends at ``start``, or None if there is none."""
    window = text[start:start + _PHRASE_WINDOW]
    for left, right in _MATH_DELIMS:
        if window.startswith(left):
            close = window.find(right, len(left))
            if close > len(left):
                value = window[len(left):close].strip()
                return value or None
            return None
    cut = _SENTENCE_END.search(window)
    value = window[: cut.start()] if cut else window
    value = value.strip().strip("*_").strip().rstrip(".").strip()
    return value or None


def _last_phrase_answer(text: str) -> str | None:
    value = None
    for m in _PHRASE.finditer(text):
        found = _phrase_value(text, m.end())
        if found is not None:
            value = found
    return value


def _strip_math_delims(text: str) -> str:
    text = text.strip()
    for left, right in _MATH_DELIMS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left):-len(right)].strip()
    return text


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: right-most ``\\boxed{}``, else the ``<answer>`` block (its
    right-most answer phrase, or all of it), else the right-most "final answer is X" / "The answer is X" /
    "Answer: X" phrase; ``None`` when there is none. Surrounding ``$...$`` are removed.

    >>> extract_answer(r"First \\boxed{1}, then \\boxed{2}.")
    '2'
    >>> extract_answer("So the final answer is $\\\\frac{1}{2}$. I hope it is correct.")
    '\\\\frac{1}{2}'
    """
    if not isinstance(text, str) or not text:
        return None
    spans = _boxed_spans(text)
    for s, e in reversed(spans):
        if text[s:e].strip():
            return _unwrap(text[s:e].strip())
    block = _last_answer_block(text)
    if block is not None and block.strip():
        return _last_phrase_answer(block) or _strip_math_delims(block) or None
    return _last_phrase_answer(text)


def _last_answer_block(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (case-insensitive), found from the right: linear."""
    lower = text.lower()
    close = lower.rfind("</answer>")
    if close < 0:
        return None
    open_ = lower.rfind("<answer>", 0, close)
    return None if open_ < 0 else text[open_ + len("<answer>"):close]
