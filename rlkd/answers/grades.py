"""What a grading gives (:class:`Grade`), the limits every grader shares, and the counters of math-verify's
timeouts, errors and unreadable gold answers (:data:`STATS`, reported by ``rlkd eval`` and ``rlkd grade``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("rlkd.answers")


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


PROTOCOLS = ("lighteval", "reward")
DEFAULT_EVAL_PROTOCOL = "lighteval"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown grading protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
