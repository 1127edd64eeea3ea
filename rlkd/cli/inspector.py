"""``rlkd inspect``: teacher and student steps side by side with the judge's verdicts (:mod:`rlkd.inspector`),
as text pages or one HTML page."""

from __future__ import annotations

import argparse
import math
import shutil
import sys

from rlkd.cli.options import CliError
from rlkd.files import OutputLock, atomic_write_text, check_output_path, refuse_foreign_page
from rlkd.inspector import PAGE_MARKER, load_pairs, render_html, render_text, select
from rlkd.judges import LOCAL_JUDGES



def cmd_inspect(args: argparse.Namespace) -> int:
    for name in ("min_reward", "max_reward"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise CliError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.page < 1 or args.page_size < 1 or args.width < 0:
        raise CliError("--page and --page-size must be at least 1, --width 0 (detect) or more")
    if args.html:  # before reading: a page that is not ours, a folder, a path that cannot be written
        check_output_path(args.html, "--html", same_as=[args.pairs])
        refuse_foreign_page(args.html, (PAGE_MARKER, "<title>rlkd inspect"), "rlkd inspect")
    pairs = select(load_pairs(args.pairs, args.judge), args.id, args.min_reward, args.max_reward)
    if args.html:
        page = render_html(pairs, title=f"rlkd inspect: {args.pairs}")  # whole before the file is touched
        with OutputLock(args.html):
            atomic_write_text(args.html, page)
        print(f"wrote {len(pairs)} pairs to {args.html}", file=sys.stderr)
        return 0
    if not pairs:
        raise CliError("no pair matches the selection")
    start = (args.page - 1) * args.page_size
    page = pairs[start:start + args.page_size]
    if not page:
        raise CliError(f"page {args.page} is empty: {len(pairs)} pairs, {args.page_size} per page")
    width = args.width or shutil.get_terminal_size((110, 20)).columns
    print("\n\n".join(render_text(p, width) for p in page))
    pages = (len(pairs) + args.page_size - 1) // args.page_size
    print(f"\npage {args.page} of {pages} ({len(pairs)} pairs selected)", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    """Register ``rlkd inspect``."""
    p = sub.add_parser(
        "inspect",
        help="show teacher and student steps side by side with the judge's verdicts",
        description="Show scored pairs (the output of `rlkd score --pairs --output`, or the scored samples "
        "a training run logs) as teacher and student steps side by side, with each verdict, where the gate "
        "closed, and the reward; or write them all to one self-contained HTML page.",
    )
    p.add_argument("--pairs", required=True, metavar="SCORED.jsonl",
                   help="scored records; records with only 'teacher' and 'student' are scored with --judge")
    p.add_argument("--id", action="append", metavar="ID", help="show only this id (repeatable)")
    p.add_argument("--min-reward", type=float, help="show only pairs with reward >= this")
    p.add_argument("--max-reward", type=float, help="show only pairs with reward <= this")
    p.add_argument("--page", type=int, default=1, help="page of the selection to print (default %(default)s)")
    p.add_argument("--page-size", type=int, default=5, help="pairs per page (default %(default)s)")
    p.add_argument("--width", type=int, default=0, help="terminal width (default: detected)")
    p.add_argument("--judge", default="hybrid", choices=LOCAL_JUDGES,
                   help="judge for records that carry no verdicts (default %(default)s)")
    p.add_argument("--html", metavar="OUT.html", help="write every selected pair to one HTML page instead")
    p.set_defaults(func=cmd_inspect)
