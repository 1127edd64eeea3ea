"""Building a backend: :func:`build_backend` from a :class:`~rlkd.backends.config.BackendConfig` (a recipe's
backend section), :func:`backend_from_config` from the same fields as a mapping (the command line's backend
options map onto them): the one place that knows which class each setting selects.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from rlkd.backends.base import Backend, check_backend_numbers
from rlkd.backends.cache import CachedBackend
from rlkd.backends.config import BackendConfig
from rlkd.backends.local import TransformersBackend
from rlkd.backends.openai_client import OpenAIBackend
from rlkd.errors import ConfigError
from rlkd.models import is_gguf


log = logging.getLogger("rlkd.backends")

# --------------------------------------------------------------------------------------------------
# Building a backend from a config


BACKEND_FIELDS = {
    "base_url": str,
    "model": str,
    "local_model": str,
    "local_batch_size": int,
    "api_key_env": str,
    "concurrency": int,
    "timeout": (int, float),
    "max_retries": int,
    "cache": str,
}


def backend_from_config(config: Mapping[str, Any], where: str = "backend") -> Backend:
    """Build a backend from a config mapping (e.g. the ``backend:`` section of a YAML recipe).

    Fields, as on the command line: ``base_url`` or ``local_model`` (exactly one), ``model``,
    ``api_key_env``, ``concurrency``, ``timeout``, ``max_retries``, ``cache``, ``local_batch_size``.
    Raises ValueError naming ``where`` and the field for an unknown, missing or mistyped field.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{where}: expected a mapping of backend fields, got {type(config).__name__}")
    unknown = sorted(set(config) - set(BACKEND_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(BACKEND_FIELDS)})")
    for name, value in config.items():
        expected = BACKEND_FIELDS[name]
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            shown = "<not shown>" if name == "api_key_env" else repr(value)
            raise ValueError(f"{where}: field '{name}' must be "
                             f"{'a number' if expected == (int, float) else expected.__name__}, got {shown}")
    check_backend_numbers(config, lambda f: f"{where}: field '{f}'")
    base_url, local_model = config.get("base_url"), config.get("local_model")
    if bool(base_url) == bool(local_model):
        raise ValueError(f"{where}: give exactly one of 'base_url' (a server) or 'local_model' (in-process)"
                         + ("" if base_url else ", none was given"))
    if local_model:
        if local_model.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(local_model)) \
                and not is_gguf(local_model):
            raise OSError(f"no such folder: {local_model}")
        for name in ("api_key_env", "concurrency", "timeout", "max_retries"):
            if config.get(name) is not None:
                log.info("%s: field '%s' does not apply to a local model; ignored", where, name)
        backend: Backend = TransformersBackend(local_model, batch_size=config.get("local_batch_size") or BackendConfig.local_batch_size)
        if config.get("model") and config["model"] != local_model:
            backend.model = config["model"]
    else:
        if not config.get("model"):
            raise ValueError(f"{where}: missing field 'model' (the model name the server at {base_url} knows)")
        defaults = {name: getattr(BackendConfig, name) for name in ("api_key_env", "concurrency", "timeout", "max_retries")}
        options = {k: config[k] if config.get(k) is not None else d for k, d in defaults.items()}
        backend = OpenAIBackend(base_url, config["model"], **options)
    if config.get("cache"):
        try:
            backend = CachedBackend(backend, config["cache"])
        except OSError as exc:  # not the model's fault: name the cache
            raise ValueError(f"{where}: field 'cache': {exc}") from None
    return backend


def build_backend(config: BackendConfig, where: str = "backend", cache: str | None = None) -> Backend:
    """The backend ``config`` describes (``cache``, when given, overrides its cache file): the one way from a
    recipe's backend section to a backend. A bad or unloadable setting is a ConfigError naming ``where``."""
    try:
        return backend_from_config(config.as_backend_config(cache=cache), where=where)
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
