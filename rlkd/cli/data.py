"""``rlkd data gsrm|rlkd|tiny``: build the datasets the training recipes read.

The options are a recipe (:class:`rlkd.config.DataGsrmJob`, :class:`rlkd.config.DataRlkdJob`, ``--set``
overrides) and the work is :func:`rlkd.data.run_data_gsrm`, :func:`rlkd.data.run_data_rlkd` or
:func:`rlkd.data.build_tiny`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rlkd.cli.options import CliError, add_kinds, add_recipe_kind
from rlkd.config import DataGsrmJob, DataRlkdJob, load_job
from rlkd.data import Records, build_tiny, run_data_gsrm, run_data_rlkd
from rlkd.recipes import dump_yaml



def add_parser(subparsers) -> None:
    """Register ``rlkd data gsrm``, ``rlkd data rlkd`` and ``rlkd data tiny``."""
    sub = add_kinds(subparsers, "data", "build datasets: GSRM SFT data, RLKD train/test sets, tiny CPU data",
                    "Build the datasets the training recipes read.")
    for kind, cls, text in (
        ("gsrm", DataGsrmJob, "teacher traces -> decompositions by a strong LLM -> chat SFT data for the GSRM"),
        ("rlkd", DataRlkdJob, "OpenR1-Math-style records -> train/test sets with the first correct teacher "
                              "generation and its GSRM decomposition"),
    ):
        q = add_recipe_kind(sub, kind, cls, text, f"{text}. Resumable: run the same command again.",
                            "configs/tiny/data_rlkd.yaml", "limit=100",
                            "print the resolved configuration and the input's columns, then stop")
        q.set_defaults(func=cmd_data)
    q = sub.add_parser("tiny", help="build the tiny models and testbed data the configs/tiny recipes run on (CPU)",
                       description="Build everything configs/tiny/ reads: testbed tasks as rlkd rows, teacher "
                       "traces, OpenR1-style records, GSRM SFT data, and tiny student and GSRM models.")
    q.add_argument("--output-dir", default="runs/tiny", help="where to write (default %(default)s)")
    q.add_argument("--train", type=int, default=64, help="training tasks (default %(default)s)")
    q.add_argument("--test", type=int, default=16, help="test tasks (default %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="testbed seed (default %(default)s)")
    q.set_defaults(func=cmd_tiny)


def cmd_tiny(args: argparse.Namespace) -> int:
    """``rlkd data tiny``."""
    if args.train < 1 or args.test < 0:
        raise CliError("--train must be >= 1 and --test >= 0")
    paths = build_tiny(args.output_dir, train=args.train, test=args.test, seed=args.seed)
    for name, path in paths.items():
        print(f"{name:12} {path}")
    return 0


def _check_columns(records: Records, wanted: Sequence[str | None]) -> None:
    found = records.columns()
    missing = [c for c in wanted if c and c not in found]
    if missing:
        raise CliError(f"{records.path}: missing column(s) {', '.join(missing)}; found {', '.join(found) or 'none'}")


def cmd_data(args: argparse.Namespace) -> int:
    """``rlkd data gsrm|rlkd``: exit status 0, or 1 when some requests failed (run again to retry them)."""
    gsrm = args.data_command == "gsrm"
    job = load_job(DataGsrmJob if gsrm else DataRlkdJob, args.config, args.set)
    records = Records(job.input, job.split, job.subset)
    if gsrm:
        _check_columns(records, [job.id_column, job.problem_column, job.reasoning_column, job.domain_column])
    else:
        _check_columns(records, [job.id_column, job.problem_column, job.answer_column, job.generations_column,
                                 job.correctness_column])
    if args.dry_run:
        print(dump_yaml(job).rstrip())
        print(f"input: {len(records)} records, columns {', '.join(records.columns())}")
        return 0
    if gsrm:
        counts = run_data_gsrm(job)
        print(f"{job.output}: {counts['ok']} examples written; {counts['no_steps']} unparsable (in "
              f"{job.failures_path()} with the reason); {counts['already_done']} already done; {counts['error']} "
              "requests failed (not written; run again to retry them)", file=sys.stderr)
    else:
        counts = run_data_rlkd(job)
        print(f"{job.output_dir}: {counts['train']} train and {counts['test']} test records written; skipped "
              f"{counts['no_correct']} without a correct generation and {counts['no_steps']} with an unparsable "
              f"decomposition (skipped.jsonl); {counts['already_done']} already done; {counts['error']} requests "
              f"failed (not written; run again to retry them); test split {counts['test_target']} of "
              f"{counts['usable']} usable records", file=sys.stderr)
    return 1 if counts["error"] else 0
