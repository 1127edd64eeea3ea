"""Command-line options several commands share, and the one user-facing error class.

0. :func:`add_fields`: options generated from a job dataclass's fields (:func:`rlkd.recipes.option`), so
   each option's default, choices and help have one owner, the library's dataclass.
1. :func:`add_recipe_kind`: a command that runs a job dataclass from a YAML recipe (``--config``, ``--set``,
   ``--dry-run``, the fields in the epilog).
2. :func:`add_backend_arguments`: the LLM backend's options (every command that calls an LLM); their
   values become a backend through :func:`backend_from_args` and :func:`rlkd.backends.backend_from_config`.
3. ``CliError`` is :class:`rlkd.errors.RlkdError` (the command line's historical name for it).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Mapping, Sequence

from rlkd.backends import Backend, backend_from_config, check_backend_numbers
from rlkd.backends.config import BackendConfig
from rlkd.errors import InputError, RlkdError
from rlkd.recipes import fields_help

CliError = RlkdError  # the command line's name for the user-facing error (rlkd.errors.RlkdError itself)


def _value_type(annotation: Any) -> type:
    """``int`` for ``int | None``, ``str`` for ``str``: the type an option's value is read as."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation not in (str, int, float, bool):
        raise TypeError(f"no command-line option for a field of type {annotation!r}")
    return annotation


def add_fields(parser, cls: type, names: Sequence[str] | None = None, *, flags: Mapping[str, str] | None = None,
               dests: Mapping[str, str] | None = None, required: bool = True) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` (the ``names`` given, in that order; default all).

    The flag is the field name with dashes (or ``flags[name]``), the value lands in ``args.<name>`` (or
    ``dests[name]``); type, default, choices, metavar and help come from the field (:func:`rlkd.recipes.option`),
    and the help shows the default. A boolean field that defaults to false is a switch. A field without a
    default is a required option unless ``required`` is false (a command that checks it itself).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names if names is not None else list(fields):
        f = fields[name]
        kind = _value_type(hints[name])
        text = f.metadata["help"].replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": (dests or {}).get(name, name)}
        if f.default is dataclasses.MISSING:
            kwargs["required"] = required
        else:
            kwargs["default"] = f.default
        if kind is bool:
            if f.default is not False:
                raise TypeError(f"{cls.__name__}.{name}: a switch must default to false")
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
            if kwargs.get("default") is not None:
                text += " (default %(default)s)"
        parser.add_argument((flags or {}).get(name, "--" + name.replace("_", "-")), help=text, **kwargs)


def add_kinds(subparsers, name: str, help: str, description: str):
    """Register ``rlkd <name> KIND ...`` and return the sub-parsers its kinds go in (``args.<name>_command``
    names the kind chosen); without a kind the command says which kinds there are."""
    p = subparsers.add_parser(name, help=help, description=description)
    kinds = p.add_subparsers(dest=f"{name}_command", metavar="KIND")

    def no_kind(args: argparse.Namespace) -> int:
        raise CliError(f"choose a kind: rlkd {name} {'|'.join(kinds.choices)} ...")

    p.set_defaults(func=no_kind)
    return kinds


def add_recipe_kind(sub, kind: str, cls: type, help: str, description: str, recipe: str, set_example: str,
                    dry_run: str) -> argparse.ArgumentParser:
    """Register ``kind`` under ``sub`` as a command that runs the job dataclass ``cls`` from a recipe:
    ``--config``, ``--set`` and ``--dry-run``, with every field of ``cls`` listed in the epilog."""
    q = sub.add_parser(kind, help=help, description=description, epilog=fields_help(cls),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--config", metavar="RECIPE.yaml", help=f"YAML recipe (e.g. {recipe})")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one field, e.g. --set {set_example} (repeatable; value read as YAML)")
    q.add_argument("--dry-run", action="store_true", help=dry_run)
    return q


# the BackendConfig fields every LLM command takes as options, in --help order; --model lands in
# args.backend_model
BACKEND_OPTIONS = ("base_url", "model", "local_model", "local_batch_size", "api_key_env", "concurrency", "timeout",
                   "max_retries", "cache")
BACKEND_DESTS = {"model": "backend_model"}


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the LLM backend, shared by every command that calls an LLM."""
    g = parser.add_argument_group(
        "LLM backend (an OpenAI-compatible server with --base-url: vLLM, transformers serve, a provider; "
        "or a local model with --local-model)")
    add_fields(g, BackendConfig, BACKEND_OPTIONS, dests=BACKEND_DESTS)


def backend_values(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`BackendConfig` fields the options of :func:`add_backend_arguments` set (None when absent)."""
    return {name: getattr(args, BACKEND_DESTS.get(name, name), None) for name in BACKEND_OPTIONS}


def backend_from_args(args: argparse.Namespace) -> Backend:
    """Build the backend named by the options of :func:`add_backend_arguments`; InputError on bad options."""
    config = backend_values(args)
    if bool(config["base_url"]) == bool(config["local_model"]):
        raise InputError("give exactly one of --base-url URL (an OpenAI-compatible server) or "
                       "--local-model PATH_OR_NAME (generate in this process)")
    if config["base_url"] and not config["model"]:
        raise InputError(f"--model NAME is required with --base-url (the model name the server at "
                       f"{config['base_url']} knows)")
    try:
        check_backend_numbers(config, lambda f: "--" + f.replace("_", "-"))
        return backend_from_config(config, where="backend options")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:  # a folder that is not there, a hub name that cannot be fetched
        raise InputError(f"--local-model {config['local_model']}: cannot load: {exc}") from None
