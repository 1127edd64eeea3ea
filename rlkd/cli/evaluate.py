"""``rlkd eval``: pass@1 / pass@k of a model on a benchmark, and ``--compare`` of finished runs.

The options become an :class:`rlkd.evaluate.EvalJob` (whose defaults they show) and the work is
:func:`rlkd.evaluate.run_eval`; ``--compare`` is :func:`rlkd.evaluate.compare_runs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rlkd.cli.options import CliError, add_fields
from rlkd.evaluate import EvalJob, compare_runs, format_summary, run_eval


def cmd_eval(args: argparse.Namespace) -> int:
    if args.compare:
        if args.model or args.benchmark:
            raise CliError("--compare takes result folders; leave out --model and --benchmark")
        print(compare_runs(args.compare, Path(args.output) if args.output else Path("eval_results") / "compare"))
        return 0
    if not args.model or not args.benchmark:
        raise CliError("give --model and --benchmark (or --compare DIR ...)")
    summary = run_eval(EvalJob(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalJob)}))
    print(format_summary(summary))
    gen = summary["generation"]
    print(f"  generated {gen['generated']} samples, reused {gen['reused']} from the cache, failed {gen['failed']}; "
          f"results in {summary['output']}")
    if summary["missing_problems"] or gen["failed"]:
        print("  some samples are missing (failed generations): run the same command again to fill them in",
              file=sys.stderr)
        return 1
    return 0



def add_parser(subparsers) -> None:
    """Register ``rlkd eval``."""
    p = subparsers.add_parser(
        "eval",
        help="pass@1 / pass@k of a model on AIME24, MATH-500, GPQA-Diamond or a local benchmark file",
        description="Sample n completions per problem (chat template, no system prompt, temperature 0.6, "
        "top_p 0.95: SPEC section 6), grade them with the training reward's grader, and report pass@1 with n "
        "beside it, pass@k for k = 1, 2, 4, ... n, and the mean completion length. Generations are cached in "
        "the output folder: re-running the same command resumes where it stopped. With --compare, put "
        "several result folders side by side.",
    )
    add_fields(p, EvalJob, ["model", "benchmark", "data", "output"], required=False)  # not with --compare
    p.add_argument("--compare", nargs="+", metavar="DIR", help="compare finished result folders instead of evaluating")
    add_fields(p.add_argument_group("benchmark file columns (guessed when not given)"), EvalJob,
               ["problem_column", "answer_column", "id_column", "incorrect_columns", "kind", "split"])
    add_fields(p.add_argument_group("sampling (defaults: SPEC section 6)"), EvalJob,
               ["n", "temperature", "top_p", "max_new_tokens", "limit", "seed", "shuffle_seed", "system_prompt",
                "prompt_template"])
    add_fields(p.add_argument_group("engine"), EvalJob,
               ["engine", "batch_size", "device", "dtype", "tensor_parallel_size", "max_model_len", "grade_timeout",
                "grading"])
    p.set_defaults(func=cmd_eval)
