"""Answer extraction and grading: the one module that decides whether a completion got the answer right.

The training ``accuracy`` reward and ``rlkd eval`` / ``rlkd grade`` all grade here, through the same
math-verify worker processes, time limits and cache. Two protocols, named by ``protocol=``:

- ``lighteval`` (the default of ``rlkd eval`` and ``rlkd grade``): lighteval 0.9.0's grading, as the
  authors and open-r1 report AIME24, MATH-500 and GPQA-Diamond. Math: math-verify ``parse`` reads the
  whole reply and the gold with the targets lighteval 0.9.0's ``math_pass@1`` gives both (LaTeX, boxed
  at priority 55 after the "final answer is" anchors at 0 and 50, then "answer:" anchors at 100 and
  200, then LaTeX or a number anywhere at 300; plain expressions and numbers likewise; right-most match
  first within a priority; "any_match" extraction; no string fallback), and ``verify`` compares them.
  GPQA: :func:`extract_choice_lighteval`, lighteval 0.9.0's letter rules (``IndicesExtractionConfig``).
- ``reward`` (the training ``accuracy`` reward, :func:`grade_math`'s default; ``--grading reward`` in
  ``rlkd eval``): :func:`extract_answer` takes, in order, the content of the right-most ``\\boxed{...}``
  (or ``\\fbox{...}``); else, inside the last ``<answer>...</answer>`` block, its right-most "final answer
  is X" / "answer: X" phrase, or the whole block; else the right-most such phrase anywhere; else nothing
  (graded wrong). math-verify then compares that string, wrapped in ``\\boxed{}``, with the gold's last
  ``\\boxed{}`` (or the whole gold). GPQA: :func:`extract_choice` (decisive cues, then weak ones).

Where the training grader (``reward``) and the evaluation grader (``lighteval``) differ, and why:

1. Anchors. ``lighteval`` reads a reply with no ``\\boxed{}`` and no anchor ("so we get 7" gives 7: the
   right-most number or LaTeX); ``reward`` finds no answer there. A reward must not pay a chain of
   thought for the last number it happened to write, and a benchmark must score as the published
   numbers were scored.
2. Priority. ``lighteval`` puts "The final answer is $X$. I hope" (and "final answer ... is X") before
   any box, and "Answer: ..." after it; ``reward`` takes the right-most box before any phrase. So
   ``\\boxed{255} ... The final answer is $10,455$. I hope it is correct.`` is 10455 in ``lighteval``,
   255 in ``reward``. The reward follows the training prompt, which asks for the answer in a box.
3. Several boxes. ``lighteval`` joins boxes written one after another with "and" or "," into one set
   (``\\boxed{1} and \\boxed{2}`` is {1, 2}), on the reply and on the gold; ``reward`` takes the last box.
4. The ``<answer>`` tag of the training format is read by ``reward``; ``lighteval`` ignores tags.
5. A gold that math-verify cannot read gives ``None`` ("cannot grade") under ``reward``, so TRL skips
   the sample; ``lighteval`` counts it wrong, as lighteval 0.9.0 does (a problem scored 0), with the
   reason, and counts it in :data:`STATS` (``gold_unparsable``).
6. GPQA letters: ``lighteval`` reads upper-case letters only and, failing every cue, takes the
   right-most A-D anywhere (``Answer: "C"`` is C, "therefore I think it's B" is B, and
   ``**Answer: (d)**`` is A, the A of "Answer"); ``reward`` needs a cue, and reads marked lower case.

Where ``reward`` departs from the authors' accuracy reward (open-r1's, in xsc1234/RLKD: the gold parsed
with math-verify's defaults, the completion with LaTeX only, boxed first, no anchorless extraction,
"first_match", malformed-operator and nits repairs off), and why:

1. A plain-text phrase is an answer ("The answer is 42."): theirs needs LaTeX delimiters
   ("The answer is $42$"). Small students write plain numbers, and a phrase is not a guess.
2. The ``<answer>`` block is read without a box: the training format asks for the tags.
3. Malformed LaTeX is repaired on the completion (``\\boxed{\\frac12}`` equals 1/2): theirs turns
   those repairs off, so such a box scores 0. A reward for notation, not for the answer, would be noise.
4. Several boxes: the right-most box alone is the answer; theirs joins adjacent boxes into a set.
5. The gold is its last ``\\boxed{}`` or the whole string read as LaTeX; theirs parses the gold with
   math-verify's defaults and "first_match", which reads a boxed solution the same way but a bare
   ``2\\sqrt{3}`` as its first number, 2 (their data carries boxed solutions).
6. Time is bounded (below), so a comparison that hangs is a counted 0, not a stalled step.

Where ``lighteval`` still departs from lighteval 0.9.0 itself, and why (``benchmarks/grading_agreement.py``
measures each case against lighteval 0.9.0's own code):

1. Extraction and comparison are math-verify 0.9's, the maintained form of the code lighteval 0.9.0
   carried inside itself (with latex2sympy2_extended 1.0.6). Later fixes differ: numbers such as
   ``0,111`` are read as a decimal, not a thousands-separated 111; equations, intervals and percentages
   compare more completely; some false matches of 0.9.0 (``n=1, 2, 3`` equal to ``n=2, 3, 4``) are gone.
2. Floats are compared to 6 decimals, the precision the metric declares. lighteval 0.9.0's ``PassAtK``
   calls its scoring function as (prediction, gold, doc), so the doc lands where the precision goes
   and every comparison that rounds a float fails: a plain decimal (``0.5``, ``1000.0``) never equals
   a fraction or an integer there. That is a crash caught as "not equal", not a rule, and it cannot be
   reproduced through math-verify without passing it an invalid argument.
3. A bare gold answer (no ``\\boxed{}``, no ``$``) is read inside ``\\boxed{}``, so ``2\\sqrt{3}`` is
   read whole (lighteval's number rule would take the 2). lighteval reads MATH-500's gold from the
   worked ``solution``, AIME24's from a bare integer: both read the same either way; ``rlkd eval``
   reads MATH-500's ``answer`` column, which is that solution's box.
4. ``equations=True`` of lighteval's normalisation is left off: latex2sympy2_extended 1.11 handles
   equations in its parser and only warns about the flag.
5. Time is bounded per completion (``timeout_s``, default 5 s, for extraction and comparison
   together) instead of per parse attempt (5 s) and per comparison (3 s).

Time is bounded by us, not by math-verify's signal-based timeouts (which only work in the main thread
and cannot interrupt a long C call either): math-verify runs in a few reusable grading subprocesses, and
one that takes longer than ``timeout_s`` is killed (the grade is then ``False`` with the reason, and the
event counted in :data:`STATS`). Extracted answers and gold answers of the ``reward`` protocol are cut
at ``MAX_ANSWER_CHARS``, and verdicts are cached, timeouts included. So every function here is safe in
threads and in TRL reward functions, and none of them raises on bad text; they block while math-verify
works, so async code calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import json
import logging
import os
import re
import select
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000  # extracted answers and gold answers are cut here before math-verify reads them
DEFAULT_TIMEOUT_S = 5.0

# Counters over the life of the process: timeouts and errors of math-verify, for logs and reports.
STATS: dict[str, int] = {"graded": 0, "timeouts": 0, "errors": 0, "gold_unparsable": 0}
_stats_lock = threading.Lock()


def _count(key: str) -> None:
    with _stats_lock:
        STATS[key] += 1


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one completion.

    ``correct`` is ``None`` when the completion cannot be graded (the gold answer is unreadable, under
    the ``reward`` protocol; ``lighteval`` counts that wrong); ``answer`` is what was extracted from the
    completion (``None`` when nothing was found); ``reason`` says why.
    """

    correct: bool | None
    answer: str | None
    reason: str


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


# --------------------------------------------------------------------------------------------------
# math-verify, with time bounded here


class _NoTimeoutWarning(logging.Filter):
    """math-verify warns when its signal timeouts are off; this module bounds time itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutWarning())


def _parse_boxed(answer: str) -> list[Any]:
    from math_verify import parse

    return parse("\\boxed{" + answer[:MAX_ANSWER_CHARS] + "}", parsing_timeout=None)


def _readable(parsed: list[Any]) -> bool:
    """math-verify read at least one mathematical object (not only its raw-string fallback)."""
    return any(not isinstance(x, str) for x in parsed)


def _compare(gold: str, answer: str) -> tuple[bool | None, str]:
    from math_verify import verify

    gold_parsed = _parse_boxed(gold)
    if not _readable(gold_parsed):
        return None, f"math-verify cannot read the gold answer {gold[:80]!r}"
    pred_parsed = _parse_boxed(answer)
    if not pred_parsed:
        return False, "math-verify cannot read the extracted answer"
    same = bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    return same, "math-verify: equal" if same else "math-verify: different"


class _Worker:
    """One grading subprocess: JSON lines in (gold, answer), JSON lines out (correct, reason)."""

    def __init__(self, startup_timeout_s: float):
        import subprocess
        import sys

        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rlkd.answers import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self._buffer = b""
        if self._readline(time.monotonic() + startup_timeout_s) != b"ready":
            self.kill()
            raise RuntimeError(f"the math-verify grading process did not start within {startup_timeout_s}s")

    def _readline(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the grading process exited (status {self.proc.poll()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def ask(self, request: dict[str, str], timeout_s: float) -> tuple[bool | None, str | None, str] | None:
        """The worker's (correct, extracted answer, reason), or None when it took longer than ``timeout_s``
        (then the caller kills the worker)."""
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        line = self._readline(time.monotonic() + timeout_s)
        if line is None:
            return None
        reply = json.loads(line)
        return reply["correct"], reply["answer"], reply["reason"]

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # already gone
            pass


class _WorkerPool:
    """Grading subprocesses, started on demand (up to ``size``), reused, killed when they overrun.

    A process, not a thread, because sympy can spend minutes inside one C call (``9^{9^{9}}``) that holds
    the GIL: no thread-based timeout can interrupt that, and killing a process always works.
    """

    def __init__(self, size: int, startup_timeout_s: float = 120.0):
        self.size = size
        self.startup_timeout_s = startup_timeout_s
        self._idle: list[_Worker] = []
        self._started = 0
        self._pid = os.getpid()
        self._cond = threading.Condition()

    def _acquire(self) -> _Worker:
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's workers are not ours to use
                self._idle, self._started, self._pid = [], 0, os.getpid()
            while not self._idle and self._started >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _Worker(self.startup_timeout_s)
        except BaseException:
            self._release(None)
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is None:
                self._started -= 1
            else:
                self._idle.append(worker)
            self._cond.notify()

    def compare(self, request: dict[str, str], timeout_s: float) -> tuple[bool | None, str | None, str] | None:
        worker = self._acquire()
        try:
            outcome = worker.ask(request, timeout_s)
        except BaseException:
            worker.kill()
            self._release(None)
            raise
        if outcome is None:
            worker.kill()
            self._release(None)
        else:
            self._release(worker)
        return outcome

    def close(self) -> None:
        with self._cond:
            for worker in self._idle:
                worker.kill()
            self._started -= len(self._idle)
            self._idle = []


_POOL = _WorkerPool(size=max(1, min(4, os.cpu_count() or 1)))
atexit.register(_POOL.close)

_CACHE: OrderedDict[tuple[str, ...], tuple[bool | None, str | None, str]] = OrderedDict()
_CACHE_SIZE = 8192


def _serve(request: dict[str, str]) -> tuple[bool | None, str | None, str]:
    """One grading request, as the worker answers it: ``pair`` compares an extracted answer with the gold
    (the ``reward`` protocol), ``lighteval`` reads the whole completion and the gold as lighteval does."""
    if request["op"] == "lighteval":
        return _grade_lighteval(request["gold"], request["completion"])
    same, reason = _compare(request["gold"], request["answer"])
    return same, request["answer"], reason


def _worker_main() -> None:
    """The grading subprocess: answer one JSON request per line until standard input closes."""
    logging.basicConfig(level=logging.ERROR)
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by sympy goes to stderr, never into the protocol
    import math_verify  # noqa: F401  (import before saying ready: startup is not part of any timeout)

    # sympy imports much of itself on the first symbolic comparison (over a second on a busy machine):
    # do that here too, so that it never counts against the first real request's time limit
    _compare("2\\sqrt{3}", "3\\sqrt{2}")
    _grade_lighteval("\\frac{1}{2}", "so $x = 0.5$")

    protocol.write(b"ready\n")
    protocol.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            same, answer, reason = _serve(request)
        except Exception as exc:  # math-verify / sympy raise on odd inputs: a failed grade, not a crash
            same, answer, reason = False, None, f"math-verify error: {type(exc).__name__}: {str(exc)[:200]}"
        protocol.write(json.dumps({"correct": same, "answer": answer, "reason": reason}).encode() + b"\n")
        protocol.flush()


def _compare_bounded(request: dict[str, str], timeout_s: float) -> tuple[bool | None, str | None, str] | None:
    """:func:`_serve` in a grading subprocess, cached; None if it took longer than ``timeout_s``."""
    key = tuple(request[k] for k in sorted(request))
    with _stats_lock:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    outcome = _POOL.compare(request, timeout_s)
    with _stats_lock:
        _CACHE[key] = outcome if outcome is not None else (False, None, f"math-verify took longer than {timeout_s}s")
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return outcome


def _bounded_grade(request: dict[str, str], timeout_s: float, shown: str | None) -> Grade:
    """Run ``request`` time-bounded and turn the outcome into a counted :class:`Grade`; never raises."""
    try:
        outcome = _compare_bounded(request, timeout_s)
    except Exception as exc:  # the grading process could not start or died: a counted, failed grade
        _count("errors")
        log.warning("grading failed: %s", exc)
        return Grade(False, shown, f"grading error: {type(exc).__name__}: {exc}")
    if outcome is None:
        _count("timeouts")
        log.warning("math-verify took longer than %.1fs (gold %r); graded wrong", timeout_s, request["gold"][:80])
        return Grade(False, shown, f"math-verify took longer than {timeout_s}s")
    same, answer, reason = outcome
    if reason.startswith("math-verify error"):
        _count("errors")
    if same is None or reason.startswith(_GOLD_UNREADABLE):
        _count("gold_unparsable")
    else:
        _count("graded")
    return Grade(same, answer if answer is not None else shown, reason)


def gold_answer(gold: Any) -> str:
    """The gold answer as a string: numbers stringified, a worked solution reduced to its last
    ``\\boxed{}``, surrounding ``$...$`` removed."""
    text = gold if isinstance(gold, str) else str(gold)
    boxed = extract_boxed(text)
    if boxed:
        return boxed[-1]
    return _strip_math_delims(text)


def math_equal(gold: Any, answer: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Compare an already extracted ``answer`` with ``gold`` by math-verify, time bounded, never raising.

    ``correct`` is None when the gold cannot be read; False (with the reason) on a timeout or an error.
    """
    gold_text = gold_answer(gold)
    if not gold_text.strip():
        _count("gold_unparsable")
        return Grade(None, answer, "the gold answer is empty")
    return _bounded_grade({"op": "pair", "gold": gold_text, "answer": answer}, timeout_s, answer)


# --------------------------------------------------------------------------------------------------
# lighteval 0.9.0's math protocol (AIME24, MATH-500), through math-verify

_GOLD_UNREADABLE = "the gold answer cannot be read"


@functools.lru_cache(maxsize=1)
def _lighteval_config() -> tuple[Any, ...]:
    """The extraction targets lighteval 0.9.0's ``math_pass@1`` metrics give to both reply and gold.

    LaTeX (boxed at priority 55, i.e. after the "final answer is" anchors at 0 and 50; plain LaTeX
    without any anchor at 300) before plain expressions and numbers. Normalisation as lighteval 0.9.0
    sets it, except ``equations``, which latex2sympy2_extended 1.11 handles in its parser (the flag only
    warns there).
    """
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    normalization = NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True,
                                        boxed="all", equations=False)
    return (LatexExtractionConfig(try_extract_without_anchor=True, boxed_match_priority=55,
                                  normalization_config=normalization),
            ExprExtractionConfig(try_extract_without_anchor=True))


def _lighteval_parse(text: str) -> tuple[list[Any], str | None]:
    """math-verify's parse with lighteval's targets and "any_match" extraction: the objects it read (no
    string fallback is graded, as lighteval's ``math_pass@1`` passes ``no_fallback``), and the normalised
    text of the first match it tried, to show as the extracted answer."""
    from math_verify import parse

    parsed = parse(text.strip(), _lighteval_config(), fallback_mode="first_match", extraction_mode="any_match",
                   parsing_timeout=None)
    objects = [x for x in parsed if not isinstance(x, str)]
    shown = next((x for x in parsed if isinstance(x, str)), None)
    return objects, shown


def _lighteval_gold_text(gold: str) -> str:
    """A worked solution or delimited LaTeX is read as it is (lighteval reads MATH-500's ``solution``);
    a bare answer (``2\\sqrt{3}``, ``204``) is read inside ``\\boxed{}``, so that it is read whole."""
    text = gold.strip()
    if any(mark in text for mark in ("\\boxed", "\\fbox", "$", "\\(", "\\[")):
        return text
    return "\\boxed{" + text + "}"


def _grade_lighteval(gold: str, completion: str) -> tuple[bool | None, str | None, str]:
    from math_verify import verify

    gold_parsed, _ = _lighteval_parse(_lighteval_gold_text(gold))
    if not gold_parsed:
        return False, None, f"{_GOLD_UNREADABLE} ({gold[:80]!r}); lighteval scores such a problem 0"
    pred_parsed, shown = _lighteval_parse(completion)
    if not pred_parsed:
        unread = f"; {shown[:80]!r} did not parse" if shown else ""
        return False, None, f"no answer found (lighteval rules: no anchor, LaTeX or number could be read{unread})"
    answer = (shown if shown is not None else str(pred_parsed[0]))[:MAX_ANSWER_CHARS]
    # lighteval 0.9.0's PassAtK calls its comparison as (prediction, gold): math-verify's asymmetric rules
    # (an assignment's right-hand side, an equation against a set) then apply with the roles it gives them
    same = bool(verify(pred_parsed, gold_parsed, float_rounding=6, timeout_seconds=None))
    return same, answer, "math-verify: equal" if same else "math-verify: different"


# --------------------------------------------------------------------------------------------------
# Grading one completion, by protocol

PROTOCOLS = ("lighteval", "reward")
DEFAULT_EVAL_PROTOCOL = "lighteval"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown grading protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


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
