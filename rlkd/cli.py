"""The ``rlkd`` command line.

``parse`` and ``score`` (this file) check decompositions and the structure reward by hand, JSON in and
out. The other commands live beside the code they drive: each of those modules has an ``add_parser``
that registers its sub-command, and keeps its heavy imports (torch, transformers) inside functions so
that ``rlkd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from rlkd.backends import add_backend_arguments  # noqa: F401 - commands import it from here too
from rlkd.structure import MODES, Decomposition, as_decomposition, parse_decomposition

# sub-command -> module with add_parser(subparsers); listed in the order --help shows them
MODULE_COMMANDS = [
    ("rlkd.gsrm", "decompose"),
    ("rlkd.data", "data"),
    ("rlkd.train", "train"),
    ("rlkd.evaluate", "eval"),
    ("rlkd.inspector", "inspect"),
    ("rlkd.experiment", "demo"),
    ("rlkd.convert", "model"),
]

log = logging.getLogger("rlkd")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def read_text(path: str) -> str:
    """Read a file as UTF-8 (``-`` is standard input); a clear error names the file on failure."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises CliError naming it."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CliError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CliError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:
                raise CliError(f"{path}:{number}: JSON nested too deeply to read") from None
            if not isinstance(obj, dict):
                raise CliError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# rlkd parse


def cmd_parse(args: argparse.Namespace) -> int:
    decomposition = parse_decomposition(read_text(args.file))
    print(json.dumps(decomposition.to_dict(), ensure_ascii=False, indent=2))
    if not decomposition.steps:
        print(f"no steps: {decomposition.reason}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------
# rlkd score


def _decomposition_field(obj: dict[str, Any], name: str, where: str) -> Decomposition:
    if name not in obj:
        raise CliError(f"{where}: missing field '{name}'")
    try:
        return as_decomposition(obj[name])
    except ValueError as exc:
        raise CliError(f"{where}: field '{name}': {exc}") from None


def build_judge(args: argparse.Namespace):
    """The judge named by ``--judge`` (and ``--meta-judge`` etc. for hybrid), with its backend if any."""
    from rlkd.judges import make_judge

    fields = {"meta": args.meta_judge, "subproblem": args.subproblem_judge, "answer": args.answer_judge}
    llm = None
    if args.judge == "llm" or (args.judge == "hybrid" and "llm" in fields.values()):
        try:
            from rlkd.llm_judge import judge_from_args
        except ImportError as exc:  # pragma: no cover - present once the backends are installed
            raise CliError(f"the LLM judge is not available: {exc}") from None
        llm = judge_from_args(args)
    try:
        return make_judge(args.judge, overlap_threshold=args.overlap_threshold, fields=fields, llm=llm)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def cmd_score(args: argparse.Namespace) -> int:
    import asyncio

    from rlkd.judges import score_many, score_structure

    if args.pairs and (args.teacher or args.student):
        raise CliError("give either --pairs or --teacher/--student, not both")
    judge = build_judge(args)
    if not args.pairs:
        if not (args.teacher and args.student):
            raise CliError("give --teacher FILE and --student FILE, or --pairs PAIRS.jsonl")
        teacher = as_decomposition(read_text(args.teacher))
        student = as_decomposition(read_text(args.student))
        result = asyncio.run(score_structure(teacher, student, judge, args.mode, args.lazy))
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return 0

    rows = list(iter_jsonl(args.pairs))  # validate the whole file before scoring anything
    pairs, ids = [], []
    for number, obj in rows:
        where = f"{args.pairs}:{number}"
        pairs.append((_decomposition_field(obj, "teacher", where), _decomposition_field(obj, "student", where)))
        ids.append(obj.get("id", number))
    results = asyncio.run(score_many(pairs, judge, args.mode, args.lazy))
    out = open(args.output, "w", encoding="utf-8") if args.output and args.output != "-" else sys.stdout
    try:
        for (number, obj), pair_id, result in zip(rows, ids, results):
            record = {"id": pair_id, **result.to_dict(), "teacher": obj["teacher"], "student": obj["student"]}
            out.write(_dump(record) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    rewards = [r.reward for r in results]
    print(f"scored {len(results)} pairs: mean reward {sum(rewards) / max(len(rewards), 1):.3f}, "
          f"parse failures {sum(r.parse_failure is not None for r in results)}, "
          f"judge failures {sum(r.judge_failures for r in results)}", file=sys.stderr)
    return 0


def _score_parser(sub) -> None:
    p = sub.add_parser(
        "score",
        help="structure reward of a student decomposition against a teacher's",
        description="Score student decompositions against teacher decompositions with the structure "
        "reward (SPEC section 3). Inputs are GSRM text or decomposition JSON. Prints the result object "
        "as JSON: the total under 'reward', per-step verdicts under 'steps'.",
    )
    p.add_argument("--teacher", metavar="FILE", help="teacher decomposition (text or JSON; - for stdin)")
    p.add_argument("--student", metavar="FILE", help="student decomposition (text or JSON)")
    p.add_argument("--pairs", metavar="PAIRS.jsonl",
                   help="many pairs: each line has 'teacher', 'student' and optionally 'id'")
    p.add_argument("--output", metavar="OUT.jsonl", help="where --pairs results go (default stdout)")
    p.add_argument("--judge", default="hybrid", choices=["text", "overlap", "math", "hybrid", "llm"],
                   help="how step fields are compared (default %(default)s)")
    p.add_argument("--meta-judge", default="overlap", choices=["text", "overlap", "math", "llm"],
                   help="hybrid: judge for meta-reasoning (default %(default)s)")
    p.add_argument("--subproblem-judge", default="overlap", choices=["text", "overlap", "math", "llm"],
                   help="hybrid: judge for sub-problems (default %(default)s)")
    p.add_argument("--answer-judge", default="math", choices=["text", "overlap", "math", "llm"],
                   help="hybrid: judge for answers (default %(default)s)")
    p.add_argument("--overlap-threshold", type=float, default=0.5,
                   help="token F1 at or above which the overlap judge says 'same' (default %(default)s)")
    p.add_argument("--mode", default="paper", choices=MODES,
                   help="paper: the authors' algorithm (default); normalized: divided by the teacher's "
                        "step count; ungated: no prefix gate")
    p.add_argument("--lazy", action="store_true",
                   help="judge meta-reasoning in order and stop at the first mismatch (fewer judge calls)")
    p.add_argument("--judge-batched", action="store_true",
                   help="llm judge: all step pairs of one student in one request with a JSON reply "
                        "(default: one yes/no request per pair)")
    add_backend_arguments(p)
    p.set_defaults(func=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlkd",
        description="Distil a teacher's multi-branch reasoning structure into a student with GRPO (RLKD).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("parse", help="parse GSRM output into steps (JSON)",
                       description="Parse a GSRM decomposition into steps and print them as JSON. Exit "
                       "status 1 (with the reason on stderr) when the text gives no steps.")
    p.add_argument("file", nargs="?", default="-", help="decomposition text file (default: stdin)")
    p.set_defaults(func=cmd_parse)
    _score_parser(sub)
    for module_name, _ in MODULE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # one INFO line per HTTP request drowns the reward logs
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"rlkd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
