"""``rlkd train sft|grpo``: train with TRL from a YAML recipe (:class:`rlkd.config.SFTJob`,
:class:`rlkd.config.GRPOJob`, ``--set`` overrides); the work is :func:`rlkd.train.train_job`, and
``--dry-run`` prints the plan of :func:`rlkd.train.render_plan`.
"""

from __future__ import annotations

import argparse
import sys

from rlkd.cli.options import add_kinds, add_recipe_kind
from rlkd.config import GRPOJob, SFTJob, build_trl_config, check_trl_fields, load_job
from rlkd.train import preflight, render_plan, train_job


def cmd_train(args: argparse.Namespace) -> int:
    """``rlkd train sft|grpo``: validate, check inputs, print the plan (``--dry-run``) or train (:func:`train_job`)."""
    cls = GRPOJob if args.train_command == "grpo" else SFTJob
    job = load_job(cls, args.config, args.set)
    if not args.dry_run:
        train_job(job)
        return 0
    check_trl_fields(job)
    trl_config, notes = build_trl_config(job, preview=True)
    check = preflight(job)
    print(render_plan(job, trl_config, notes, check))
    problems = check.errors + (check.missing if args.strict else [])
    if problems:
        print(f"dry run: {len(problems)} problem(s):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    print(f"dry run: configuration valid ({len(check.missing)} input(s) not found here)", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Register ``rlkd train sft`` and ``rlkd train grpo``."""
    sub = add_kinds(subparsers, "train", "train a student or the GSRM (SFT, GRPO) from a YAML recipe",
                    "Train with TRL from a YAML recipe (see configs/).")
    for kind, cls, text in (
        ("sft", SFTJob, "supervised fine-tuning: the SFT-distillation baseline, or GSRM training on chat data"),
        ("grpo", GRPOJob, "GRPO with a reward set: rlkd (3/3/2/2, RLKD and RLKD-zero), outcome, or explicit weights"),
    ):
        q = add_recipe_kind(sub, kind, cls, text, f"{text[0].upper()}{text[1:]}. The recipe is validated and the "
                            "inputs checked before any weights load.", "configs/tiny/rlkd_grpo.yaml",
                            "training.max_steps=10", "print the resolved configuration, TRL values and reward "
                            "weights, check the inputs, and stop before loading weights")
        q.add_argument("--strict", action="store_true",
                       help="--dry-run: also fail when an input is not found here")
        q.set_defaults(func=cmd_train)
