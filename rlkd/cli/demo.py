"""``rlkd demo``: the RLKD experiment in miniature on the synthetic testbed (:mod:`rlkd.experiment`), end
to end, or ``--report-only`` / ``--build-base``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from rlkd.cli.options import CliError
from rlkd.experiment import DEFAULT_CONFIG, DEFAULT_OUTPUT, RESULTS_FILE, Experiment, build_base, load_demo_job, stage_times
from rlkd.experiment.stages import clock

log = logging.getLogger("rlkd.experiment")


def cmd_demo(args: argparse.Namespace) -> int:
    """``rlkd demo``: run the experiment (or only re-render its report) and print the results table."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_DISABLED", "true")
    config = args.config
    if config is None and DEFAULT_CONFIG.is_file():
        config = str(DEFAULT_CONFIG)
    overrides = list(args.set)
    if args.output:
        overrides.append(f"output={args.output}")
    if args.seeds is not None:
        if args.seeds < 1:
            raise CliError(f"--seeds: must be >= 1, got {args.seeds}")
        overrides.append(f"seeds={list(range(args.seeds))}")
    job = load_demo_job(config, overrides)
    root = Path(job.output)
    if args.build_base:
        card = build_base(job)
        last = card["final_probe"]
        print(f"base student: {job.base.path} ({card['parameters']:,} parameters, built in "
              f"{clock(card['build_wall_s'])}); held-out look-ups: {last['lines_right']:.1%} of computation "
              f"sentences right, {last['tasks_right']:.1%} of problems all right")
        for row in card["probes"]:
            forced = "  ".join(f"{k} {v:.0%}" for k, v in row["teacher_forced"].items())
            print(f"  step {row['step']:>5}  wall {clock(row['wall_s']):>7}  sentences right "
                  f"{row['lines_right']:.1%}  problems right {row['tasks_right']:.1%}  teacher-forced: {forced}")
        return 0
    if args.report_only:
        path = root / RESULTS_FILE
        if not path.exists():
            raise CliError(f"{path}: no results to report (run rlkd demo first)")
        from rlkd.report import write_report

        results = json.loads(path.read_text(encoding="utf-8"))
        paths = write_report(results, root / "report")
    else:
        log.info("rlkd demo: %s -> %s (seeds %s, methods %s)", config or "built-in defaults", root, job.seeds,
                 ", ".join(job.methods))
        results = Experiment(job, fresh=args.fresh).run()
        paths = {"markdown": root / "report" / "report.md", "html": root / "report" / "report.html"}
    from rlkd.report import comparisons_text, console_table

    print()
    print(console_table(results))
    print()
    print(comparisons_text(results))
    print()
    print(stage_times(results.get("stages", {}), (results.get("machine") or {}).get("workers") or 1))
    print(f"wall time: {clock(results.get('wall_time_s', 0))}")
    print(f"report: {paths['markdown']}  (HTML: {paths['html']})")
    return 0


def add_parser(subparsers) -> None:
    """Register ``rlkd demo``."""
    p = subparsers.add_parser(
        "demo", help="the RLKD experiment in miniature on the synthetic testbed, end to end (CPU, minutes)",
        description="Generate testbed tasks, build tiny models, train a GSRM, train SFT / SFT+GRPO / SFT+RLKD / "
        "RLKD-zero students over several seeds, evaluate them on in- and out-of-distribution tests, and write "
        "a markdown + HTML report with plots. Re-running resumes: finished stages are skipped.",
    )
    p.add_argument("--config", metavar="RECIPE.yaml",
                   help=f"demo recipe (default {DEFAULT_CONFIG} when it exists, else the built-in defaults; "
                        "configs/demo/full.yaml is the larger run)")
    p.add_argument("--output", metavar="DIR", help=f"run folder (default: the recipe's output, {DEFAULT_OUTPUT})")
    p.add_argument("--seeds", type=int, metavar="N", help="number of seeds (0..N-1) instead of the recipe's list")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe field, e.g. --set rl.max_steps=20 (repeatable; value read as YAML)")
    p.add_argument("--fresh", action="store_true", help="delete the run folder first instead of resuming")
    p.add_argument("--build-base", action="store_true",
                   help="(re)build the base student at base.path instead of running the demo: pretrain it on the "
                        "testbed's problem language with rlkd train sft (resumes after an interruption), probe "
                        "every checkpoint's look-ups, write base_card.json")
    p.add_argument("--report-only", action="store_true",
                   help="only re-render the report from the run folder's results.json")
    p.set_defaults(func=cmd_demo)
