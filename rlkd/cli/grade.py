"""``rlkd grade``: regrade completions that any harness wrote (:func:`rlkd.grade.regrade`) and print pass@k."""

from __future__ import annotations

import argparse

from rlkd.cli.options import add_fields
from rlkd.evaluate import EvalJob
from rlkd.grade import BENCHMARK_KINDS, format_grade_summary, regrade


def cmd_grade(args: argparse.Namespace) -> int:
    summary = regrade(args.input, args.output, args.benchmark, args.grading, args.timeout, args.progress)
    print(format_grade_summary(summary))
    print(f"  grades written to {args.output}")
    return 0


def add_parser(subparsers) -> None:
    """Register ``rlkd grade``."""
    p = subparsers.add_parser(
        "grade",
        help="regrade completions from any harness (vLLM, lighteval, your script) and print pass@1 / pass@k",
        description="Grade existing completions with the code rlkd eval grades with. Each input line has "
        "'id', 'completion' (a string) or 'completions' (a list: the n samples of the problem), and 'answer' "
        "(the gold: the answer or a worked solution for math, the correct letter for gpqa_diamond). Each "
        "output line is the input line plus 'correct' (a bool, or a list), 'extracted' (the answer(s) read "
        "from the completion(s)) and 'reason'. Prints pass@1 with n beside it and pass@k.",
    )
    p.add_argument("--input", required=True, metavar="FILE.jsonl", help="completions to grade (JSON lines)")
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARK_KINDS),
                   help="which benchmark's grading rules apply: math500 and aime24 are math (math-verify), "
                        "gpqa_diamond is four-choice (a letter A-D)")
    p.add_argument("--output", required=True, metavar="OUT.jsonl",
                   help="where the graded lines go (written in one step at the end; not the input file)")
    add_fields(p, EvalJob, ["grading", "grade_timeout"], flags={"grade_timeout": "--timeout"},
               dests={"grade_timeout": "timeout"})
    p.add_argument("--progress", action="store_true", help="show a progress bar while grading")
    p.set_defaults(func=cmd_grade)
