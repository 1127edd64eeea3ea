"""``rlkd eval``: pass@1 / pass@k of a model on a benchmark, and ``--compare`` of finished runs.

The options become an :class:`rlkd.evaluate.EvalJob` (whose defaults they show) and the work is
:func:`rlkd.evaluate.run_eval`; ``--compare`` is :func:`rlkd.evaluate.compare_runs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rlkd.answers import PROTOCOLS
from rlkd.cli.options import CliError
from rlkd.evaluate import BENCHMARKS, DEFAULT_CUSTOM_N, EvalJob, compare_runs, format_summary, run_eval


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



def add_grading_argument(parser) -> None:
    """``--grading``, shared by ``rlkd eval`` and ``rlkd grade``."""
    parser.add_argument("--grading", choices=PROTOCOLS, default=EvalJob.grading,
                        help="how answers are extracted and compared. lighteval (default): lighteval 0.9.0's "
                             "protocol, as the authors and open-r1 evaluated (math: math-verify reads the whole "
                             "reply and the gold with lighteval's extraction rules; GPQA: lighteval's letter "
                             "rules). reward: the training accuracy reward's grader (right-most \\boxed{}, then "
                             "an <answer> block, then an 'answer is' phrase; GPQA: a letter cue, decisive ones "
                             "first). See the docstring of rlkd/answers/__init__.py for every difference")


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
    p.add_argument("--model", help="model to evaluate: a hub name, a local folder or a .gguf file")
    p.add_argument("--benchmark",
                   help=f"built-in benchmark ({', '.join(BENCHMARKS)}; read from the hub, or from --data) or "
                        "a local .jsonl/.json/.parquet file with problem and answer columns (GPQA-style files: "
                        "question, correct answer and three incorrect answers)")
    p.add_argument("--data", metavar="FILE", help="local copy of a built-in benchmark (same columns as on the hub)")
    p.add_argument("--output", metavar="DIR",
                   help="output folder (default eval_results/<benchmark>__<model>; with --compare, "
                        "eval_results/compare)")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="compare finished result folders instead of evaluating")
    g = p.add_argument_group("benchmark file columns (guessed when not given)")
    g.add_argument("--problem-column", help="column holding the problem text (e.g. problem, question, Question)")
    g.add_argument("--answer-column", help="column holding the answer (for multiple choice: the correct option's text)")
    g.add_argument("--id-column", help="column holding a unique problem id (default: the benchmark's, else the row number)")
    g.add_argument("--incorrect-columns", metavar="A,B,C",
                   help="multiple choice: the three columns holding the wrong options "
                        "(default 'Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3')")
    g.add_argument("--kind", choices=["auto", "math", "choice"], default=EvalJob.kind,
                   help="math (math-verify) or choice (four options, letter extracted); auto: choice when the "
                        "incorrect-answer columns exist (default %(default)s)")
    g.add_argument("--split", help="split to read (default: the benchmark's; train for files)")
    s = p.add_argument_group("sampling (defaults: SPEC section 6)")
    s.add_argument("--n", type=int, help="samples per problem (default 64 aime24, 4 math500, 8 gpqa_diamond, "
                                         f"{DEFAULT_CUSTOM_N} for files)")
    s.add_argument("--temperature", type=float, default=EvalJob.temperature, help="sampling temperature (default %(default)s)")
    s.add_argument("--top-p", type=float, default=EvalJob.top_p, help="nucleus sampling top_p (default %(default)s)")
    s.add_argument("--max-new-tokens", type=int, default=EvalJob.max_new_tokens, help="tokens per completion at most (default %(default)s)")
    s.add_argument("--limit", type=int, help="evaluate only the first N problems")
    s.add_argument("--seed", type=int, default=EvalJob.seed, help="sampling seed (default %(default)s)")
    s.add_argument("--shuffle-seed", type=int, default=EvalJob.shuffle_seed,
                   help="seed of the per-question option shuffle for multiple choice (default %(default)s)")
    s.add_argument("--system-prompt", help="system message (default: none, as the protocol says)")
    s.add_argument("--prompt-template", metavar="FILE",
                   help="user message template containing {problem} (default: our instruction asking for a "
                        "\\boxed{} final answer, or 'Answer: LETTER' for multiple choice)")
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=["transformers", "vllm"], default=EvalJob.engine,
                   help="transformers generate (CPU or GPU) or vLLM's offline engine if installed (default %(default)s)")
    e.add_argument("--batch-size", type=int,
                   help="sequences per generate call (default 8 for transformers, 512 for vLLM); the cache "
                        "is written after each batch")
    e.add_argument("--device", help="transformers: cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument("--dtype", default=EvalJob.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default %(default)s)")
    e.add_argument("--tensor-parallel-size", type=int, default=EvalJob.tensor_parallel_size, help="vLLM: GPUs per model (default %(default)s)")
    e.add_argument("--max-model-len", type=int, help="vLLM: context length (default: the model's)")
    e.add_argument("--grade-timeout", type=float, default=EvalJob.grade_timeout,
                   help="seconds math-verify may spend on one answer before it counts as wrong (default %(default)s)")
    add_grading_argument(e)
    p.set_defaults(func=cmd_eval)
