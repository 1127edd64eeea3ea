"""``rlkd decompose``: rewrite reasoning traces into structure steps with a GSRM (resumable).

The options become a :class:`rlkd.gsrm.DecomposeJob` (whose defaults they show) and the work is
:func:`rlkd.gsrm.decompose_file`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rlkd.cli.options import CliError, add_backend_arguments, add_fields, backend_from_args
from rlkd.gsrm import DecomposeJob, check_decompose_job, decompose_file


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
    add_fields(p, DecomposeJob, [f.name for f in dataclasses.fields(DecomposeJob) if f.name != "retry_no_steps"])
    add_backend_arguments(p)
    add_fields(p, DecomposeJob, ["retry_no_steps"])
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the request cache (by default OUT.jsonl.cache.sqlite, or --cache DB)")
    p.set_defaults(func=cmd_decompose)
