"""``rlkd decompose``: rewrite reasoning traces into structure steps with a GSRM (resumable).

The options become a :class:`rlkd.gsrm.DecomposeJob` (whose defaults they show) and the work is
:func:`rlkd.gsrm.decompose_file`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rlkd.cli.options import CliError, add_backend_arguments, backend_from_args
from rlkd.gsrm import DecomposeJob, check_decompose_job, decompose_file
from rlkd.templates import DOMAINS


def cmd_decompose(args: argparse.Namespace) -> int:
    """``rlkd decompose``: exit status 0, or 1 when some backend calls failed (run again to retry); 2 when
    failures passed the share, or when the output holds records but none with steps."""
    job = DecomposeJob(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DecomposeJob)})
    check_decompose_job(job)
    if args.no_cache:
        args.cache = None
    elif not args.cache:
        args.cache = str(args.output) + ".cache.sqlite"
    backend = backend_from_args(args)
    try:
        counts = decompose_file(job, backend)
    finally:
        backend.log_stats()
    print(f"{args.output}: {counts['ok']} traces with steps, {counts['no_steps']} without (see 'reason'), "
          f"{counts['truncated']} truncated, {counts['skipped']} already done, {counts['error']} backend "
          "failures (not written; run again to retry them)", file=sys.stderr)
    records, without = counts["records_in_output"], counts["records_in_output"] - counts["ok_in_output"]
    if records and without / records > args.max_failure_share and not counts["error"]:
        # the budget over the whole output: a rerun that had nothing left to send must not look like success
        raise CliError(f"{args.output}: {without} of its {records} records have no steps ({without / records:.1%} > "
                       f"{args.max_failure_share:.1%} allowed; see their 'reason'); running the same command again "
                       "does not ask again for lines already written: fix the prompt or the GSRM, then run again "
                       "with --retry-no-steps")
    return 1 if counts["error"] else 0


def add_parser(subparsers) -> None:
    """Register ``rlkd decompose``."""
    p = subparsers.add_parser(
        "decompose",
        help="rewrite reasoning traces into structure steps with a GSRM (resumable)",
        description="Decompose each input line's problem + reasoning (the text before </think>) into "
        "meta-reasoning / sub-problem / answer steps with a GSRM served by an OpenAI-compatible server "
        "(or --local-model). Writes one line per input line: id, status (ok or no_steps), reason, "
        "structure, raw GSRM text, truncated. Lines whose id is already in the output are skipped, so "
        "running the same command again resumes an interrupted run; backend failures are not written "
        "and are retried by the next run.",
    )
    p.add_argument("--input", required=True, metavar="IN.jsonl", help="input JSONL file")
    p.add_argument("--output", required=True, metavar="OUT.jsonl", help="output JSONL file (appended to)")
    p.add_argument("--domain", default=DecomposeJob.domain, choices=DOMAINS, help="prompt domain (default %(default)s)")
    p.add_argument("--domain-column", default=DecomposeJob.domain_column, metavar="COL",
                   help="take each line's domain from this column instead (lines without it use --domain)")
    p.add_argument("--prompt-file", default=DecomposeJob.prompt_file, metavar="FILE",
                   help="use this prompt file instead of the packaged one for --domain "
                        "(format: see rlkd/prompts/gsrm_math.txt)")
    p.add_argument("--zero-shot", action="store_true",
                   help="drop the worked example from the prompt (for a GSRM fine-tuned on the instruction)")
    p.add_argument("--problem-column", default=DecomposeJob.problem_column, metavar="COL", help="default %(default)s")
    p.add_argument("--reasoning-column", default=DecomposeJob.reasoning_column, metavar="COL",
                   help="the trace; only the text before </think> is used (default %(default)s)")
    p.add_argument("--id-column", default=DecomposeJob.id_column, metavar="COL",
                   help="id column (default %(default)s); lines without it get their line number")
    p.add_argument("--batch-size", type=int, default=DecomposeJob.batch_size,
                   help="lines sent together and written when all are back; keep it a few times "
                        "--concurrency (default %(default)s)")
    p.add_argument("--max-trace-chars", type=int, default=DecomposeJob.max_trace_chars,
                   help="longer traces keep their first 2/3 and last 1/3 of this many characters, with "
                        "a marker between (default %(default)s; 0 = never cut)")
    p.add_argument("--max-tokens", type=int, default=DecomposeJob.max_tokens,
                   help="most tokens the GSRM may write per trace (default %(default)s)")
    p.add_argument("--max-failure-share", type=float, default=DecomposeJob.max_failure_share,
                   help="stop when more than this share of lines failed (backend error or no steps), checked "
                        "once --min-failures lines were sent and again at the end (default %(default)s)")
    p.add_argument("--min-failures", type=int, default=DecomposeJob.min_failures,
                   help="lines sent before the failure share is first checked (the name is historical: it "
                        "counts lines, failed or not; default %(default)s)")
    add_backend_arguments(p)
    p.add_argument("--retry-no-steps", action="store_true",
                   help="first remove the output's records whose GSRM reply had no steps (the file is rewritten "
                        "at once), so this run asks again for them, e.g. after fixing the prompt (an unchanged "
                        "prompt and model answer again from the cache, the same way)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the request cache (by default OUT.jsonl.cache.sqlite, or --cache DB)")
    p.set_defaults(func=cmd_decompose)
