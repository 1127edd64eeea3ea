"""Evaluation: pass@1 and pass@k on AIME24, MATH-500, GPQA-Diamond or any local benchmark file.

``rlkd eval --model PATH_OR_NAME --benchmark NAME`` samples ``n`` completions per problem, grades them
with :mod:`rlkd.answers` (the same functions the training ``accuracy`` reward calls), and writes, in the
output folder:

- ``generations.jsonl``: the cache, one line per (problem id, sample index), appended and flushed as
  samples are generated; a re-run generates only what is missing (a torn last line is cut off);
- ``samples.jsonl``: every sample graded (completion, extracted answer, correct, length in tokens);
- ``problems.jsonl``: per problem the prompt, the gold answer, the option order (GPQA) and c of n;
- ``summary.json`` and a printed table: pass@1 with n beside it, pass@k for k = 1, 2, 4, ... up to n
  (and n) with the unbiased estimator :func:`pass_at_k`, mean completion length;
- ``pass_at_k.png``: pass@k against k.

``rlkd eval --compare DIR1 DIR2 ...`` puts several such runs side by side in one markdown table and one
plot.

Protocol (SPEC section 6, lighteval 0.9.0 as open-r1 and the authors used it): the model's chat template,
no system prompt, temperature 0.6, top_p 0.95, up to 32768 new tokens, n = 64 (AIME24), 4 (MATH-500),
8 (GPQA-Diamond); every one of these is an option. How this departs from it:

1. The instruction put before each problem is our own wording; it asks for the same things (the final
   answer in ``\\boxed{}`` on the last line; for multiple choice a last line ``Answer: LETTER``).
   ``--prompt-template`` takes any other wording, e.g. lighteval's own.
2. Grading follows lighteval 0.9.0 (``--grading lighteval``, the default): math-verify reads the whole
   reply and the gold with the extraction targets, priorities and fallback lighteval gives AIME24 and
   MATH-500, and GPQA's letter is read with lighteval's letter rules (:mod:`rlkd.answers` lists what
   still differs, and why). ``--grading reward`` grades with the training ``accuracy`` reward's rules
   instead. ``rlkd grade`` regrades completions made by any harness with the same code.
3. GPQA options are shuffled per question with a seed derived from ``--shuffle-seed`` and the question
   id, and the permutation is recorded, so a run is reproducible and auditable.
4. Sampling is seeded per batch (transformers) or per sample (vLLM) from ``--seed``; with transformers
   a resumed run draws different batches than an uninterrupted one would, so its samples differ, but
   they come from the same distribution.

The package, bottom-up:

| module | what |
|---|---|
| ``problems`` | :class:`EvalJob`, built-in benchmarks, :func:`load_problems` (prompts, gold answers, GPQA shuffles) |
| ``generation`` | :func:`generate_missing`: sampling with transformers or vLLM into the generation cache |
| ``summary`` | :func:`pass_at_k`, grading, :func:`summarize`, the printed table, the plot, :func:`compare_runs` |
| ``run`` | :func:`run_eval`: one run end to end |

The command line's options (``rlkd.cli.evaluate``) map one to one onto :class:`EvalJob`'s fields.
"""

from __future__ import annotations

from rlkd.evaluate.problems import (
    BENCHMARKS,
    Benchmark,
    CHOICE_LETTERS,
    CHOICE_TEMPLATE,
    DEFAULT_CUSTOM_N,
    EvalJob,
    GPQA_COLUMNS,
    MATH_TEMPLATE,
    Problem,
    load_problems,
    resolve_benchmark,
)
from rlkd.evaluate.generation import (
    generate_missing,
)
from rlkd.evaluate.summary import (
    compare_runs,
    format_summary,
    grade_samples,
    ks_up_to,
    no_answer_line,
    pass_at_k,
    pass_at_k_lines,
    plot_pass_at_k,
    summarize,
)
from rlkd.evaluate.run import (
    default_output,
    run_eval,
)

__all__ = [
    "BENCHMARKS",
    "CHOICE_LETTERS",
    "MATH_TEMPLATE",
    "CHOICE_TEMPLATE",
    "GPQA_COLUMNS",
    "Benchmark",
    "DEFAULT_CUSTOM_N",
    "Problem",
    "EvalJob",
    "resolve_benchmark",
    "load_problems",
    "generate_missing",
    "pass_at_k",
    "ks_up_to",
    "grade_samples",
    "summarize",
    "pass_at_k_lines",
    "no_answer_line",
    "format_summary",
    "plot_pass_at_k",
    "compare_runs",
    "default_output",
    "run_eval",
]
