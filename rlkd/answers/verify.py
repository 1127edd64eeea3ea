"""math-verify with time bounded here: reusable grading subprocesses, one killed when it runs past
``timeout_s`` (a counted failure, not a hang), verdicts cached; :func:`math_equal` for the ``reward``
protocol and lighteval 0.9.0's math protocol (AIME24, MATH-500) on the same workers.
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import select
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from rlkd.answers.extract import _strip_math_delims, extract_boxed
from rlkd.answers.grades import DEFAULT_TIMEOUT_S, Grade, MAX_ANSWER_CHARS, _count, _stats_lock

log = logging.getLogger("rlkd.answers")


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
