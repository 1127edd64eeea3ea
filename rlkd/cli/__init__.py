"""The ``rlkd`` command line: the top layer, the only part of rlkd that imports argparse.

1. Each command has a module here that registers its options (``add_parser``) and turns them into the
   library's job dataclasses or plain arguments; the work itself is a library call (``rlkd eval`` is
   :func:`rlkd.evaluate.run_eval` on an :class:`~rlkd.evaluate.EvalJob`, ``rlkd decompose`` is
   :func:`rlkd.gsrm.decompose_file` on a :class:`~rlkd.gsrm.DecomposeJob`, ...). Nothing in the library
   imports this package (``tests/test_layers.py`` checks it).
2. Every user-facing error is an :class:`rlkd.errors.RlkdError` (``CliError`` here is that class): printed
   on one line without a traceback, exit status 2.
3. The command modules keep their heavy imports (torch, transformers) inside functions, so that
   ``rlkd --help`` stays fast.

| module | commands |
|---|---|
| ``score`` | ``rlkd parse``, ``rlkd score`` |
| ``decompose`` | ``rlkd decompose`` |
| ``data`` | ``rlkd data gsrm|rlkd|tiny`` |
| ``train`` | ``rlkd train sft|grpo`` |
| ``evaluate`` | ``rlkd eval`` |
| ``grade`` | ``rlkd grade`` |
| ``inspector`` | ``rlkd inspect`` |
| ``demo`` | ``rlkd demo`` |
| ``serve`` | ``rlkd serve`` |
| ``model`` | ``rlkd model convert`` |
| ``options`` | the options several commands share (the LLM backend's) |
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from rlkd.cli.options import CliError
from rlkd.errors import RlkdError

__all__ = ["CliError", "build_parser", "main"]

# the modules of this package with an add_parser(subparsers), in the order --help shows their commands
COMMAND_MODULES = ("score", "decompose", "data", "train", "evaluate", "grade", "inspector", "demo", "serve", "model")


def build_parser() -> argparse.ArgumentParser:
    """The ``rlkd`` parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="rlkd",
        description="Distil a teacher's multi-branch reasoning structure into a student with GRPO (RLKD).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"rlkd.cli.{name}").add_parser(sub)
    return parser


RESUMABLE = ("decompose", "data", "train", "eval", "demo")  # commands whose rerun continues a killed run


def configure_logging(verbose: bool) -> None:
    """rlkd's own loggers at INFO (DEBUG with ``-v``); every other logger (httpx, openai, datasets, ...) at
    WARNING unless ``-v``, so one INFO line per HTTP request does not bury the warnings that matter."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("rlkd").setLevel(logging.DEBUG if verbose else logging.INFO)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path (shortened) and what the system said."""
    name = exc.filename if exc.filename is not None else ""
    name = str(name)
    if len(name) > 120:
        name = name[:60] + f"...({len(name)} characters)..." + name[-40:]
    detail = exc.strerror or " ".join(str(exc).split())
    if len(detail) > 400:
        detail = detail[:397] + "..."
    return f"{name}: {detail}" if name else detail


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RlkdError as exc:  # ConfigError, InputError, OutputRefused, ...
        print(f"rlkd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder where a file belongs, a name too long, a permission denied
        print(f"rlkd {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "; run the same command again to resume" if args.command in RESUMABLE else ""
        print(f"rlkd {args.command}: interrupted (Ctrl-C); what was written so far is kept{again}", file=sys.stderr)
        return 130

