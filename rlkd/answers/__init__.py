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

The package, bottom-up: ``grades`` (:class:`Grade`, :data:`STATS`, the protocols and limits), ``extract``
(the ``reward`` protocol's answer extraction), ``verify`` (math-verify in bounded worker processes,
:func:`math_equal`, lighteval's math protocol), ``choice`` (multiple-choice letters), ``grading``
(:func:`grade_math`, :func:`grade`, :func:`grade_all`).
"""

from __future__ import annotations

from rlkd.answers.grades import (
    DEFAULT_EVAL_PROTOCOL,
    DEFAULT_TIMEOUT_S,
    Grade,
    MAX_ANSWER_CHARS,
    PROTOCOLS,
    STATS,
)
from rlkd.answers.extract import (
    extract_answer,
    extract_boxed,
)
from rlkd.answers.verify import (
    _worker_main,
    gold_answer,
    math_equal,
)
from rlkd.answers.choice import (
    extract_choice,
    extract_choice_lighteval,
    grade_choice,
    grade_choice_detail,
)
from rlkd.answers.grading import (
    grade,
    grade_all,
    grade_math,
    grade_math_detail,
)

__all__ = [
    "MAX_ANSWER_CHARS",
    "DEFAULT_TIMEOUT_S",
    "STATS",
    "Grade",
    "PROTOCOLS",
    "DEFAULT_EVAL_PROTOCOL",
    "extract_boxed",
    "extract_answer",
    "gold_answer",
    "math_equal",
    "_worker_main",
    "extract_choice",
    "extract_choice_lighteval",
    "grade_choice_detail",
    "grade_choice",
    "grade_math_detail",
    "grade_math",
    "grade",
    "grade_all",
]
