"""Command-line options several commands share, and the one user-facing error class.

1. :func:`add_recipe_kind`: a command that runs a job dataclass from a YAML recipe (``--config``, ``--set``,
   ``--dry-run``, the fields in the epilog).
2. :func:`add_backend_arguments`: the LLM backend's options (every command that calls an LLM); their
   values become a backend through :func:`backend_from_args` and :func:`rlkd.backends.backend_from_config`.
3. ``CliError`` is :class:`rlkd.errors.RlkdError` (the command line's historical name for it).
"""

from __future__ import annotations

import argparse

from rlkd.backends import Backend, backend_from_config, check_backend_numbers
from rlkd.backends.config import BackendConfig
from rlkd.errors import InputError, RlkdError
from rlkd.recipes import fields_help

CliError = RlkdError  # the command line's name for the user-facing error (rlkd.errors.RlkdError itself)


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


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the LLM backend, shared by every command that calls an LLM."""
    g = parser.add_argument_group(
        "LLM backend (an OpenAI-compatible server with --base-url: vLLM, transformers serve, a provider; "
        "or a local model with --local-model)")
    g.add_argument("--base-url", metavar="URL", help="server address, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--model", dest="backend_model", metavar="NAME",
                   help="model name the server knows (with --local-model: defaults to its path)")
    g.add_argument("--local-model", metavar="PATH_OR_NAME",
                   help="generate in this process with transformers (hub name, folder or .gguf file, "
                        "converted once into a cache) instead of a server")
    g.add_argument("--local-batch-size", type=int, metavar="N", default=BackendConfig.local_batch_size,
                   help="--local-model: sequences per generate batch (default %(default)s)")
    g.add_argument("--api-key-env", default=BackendConfig.api_key_env, metavar="VAR",
                   help="name of the environment variable holding the API key (keys never go in files); "
                        "default %(default)s, unset means no key")
    g.add_argument("--concurrency", type=int, metavar="N", default=BackendConfig.concurrency, help="requests in flight at once (default %(default)s)")
    g.add_argument("--timeout", type=float, metavar="SECONDS", default=BackendConfig.timeout, help="seconds per request (default %(default)s)")
    g.add_argument("--max-retries", type=int, metavar="N", default=BackendConfig.max_retries,
                   help="retries of a transient failure, with exponential backoff (default %(default)s)")
    g.add_argument("--cache", default=None, metavar="DB",
                   help="SQLite request cache; a re-run answers from it (default: none for score)")


def backend_from_args(args: argparse.Namespace) -> Backend:
    """Build the backend named by the options of :func:`add_backend_arguments`; InputError on bad options."""
    config = {
        "base_url": getattr(args, "base_url", None),
        "local_model": getattr(args, "local_model", None),
        "model": getattr(args, "backend_model", None),
        "local_batch_size": getattr(args, "local_batch_size", None),
        "api_key_env": getattr(args, "api_key_env", None),
        "concurrency": getattr(args, "concurrency", None),
        "timeout": getattr(args, "timeout", None),
        "max_retries": getattr(args, "max_retries", None),
        "cache": getattr(args, "cache", None),
    }
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
