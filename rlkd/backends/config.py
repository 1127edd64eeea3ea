"""The backend section of a recipe: where LLM text comes from, with each field's default and help.

:class:`BackendConfig` is the one owner of the backend defaults: the recipes' ``backend:``, ``gsrm:`` and
``judge_backend:`` sections, the command line's backend options (``rlkd.cli.options``) and
:func:`rlkd.backends.build.backend_from_config` all take them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlkd.backends.base import check_backend_numbers
from rlkd.errors import ConfigError
from rlkd.recipes import _positive, option


@dataclass
class BackendConfig:
    """Where LLM text comes from: an OpenAI-compatible server (vLLM, ``transformers serve``, a provider)
    or a local model folder run in-process with transformers."""

    base_url: str | None = option(None, "server address, e.g. http://127.0.0.1:8000/v1 (or set local_model)",
                                  metavar="URL")
    model: str | None = option(None, "model name the server knows (for vLLM: the served model name; with "
                               "local_model: defaults to its path)", metavar="NAME")
    api_key_env: str = option("OPENAI_API_KEY", "name of the environment variable holding the API key; keys "
                              "never go in recipes or on the command line; unset variable means no key",
                              metavar="VAR")
    concurrency: int = option(16, "requests in flight at once", metavar="N")
    timeout: float = option(120.0, "seconds per request", metavar="SECONDS")
    max_retries: int = option(4, "retries of a transient failure, with exponential backoff", metavar="N")
    cache: str | None = option(None, "SQLite request cache file; a re-run answers from it", metavar="DB")
    local_model: str | None = option(None, "local model folder, .gguf file (converted once into a cache) or "
                                     "hub name run in-process with transformers instead of a server",
                                     metavar="PATH_OR_NAME")
    local_batch_size: int = option(8, "local_model: sequences per generate batch", metavar="N")

    def configured(self) -> bool:
        """Whether a server or a local model is given."""
        return bool(self.base_url or self.local_model)

    def check(self, where: str, needed_for: str) -> None:
        """Raise ConfigError unless exactly one of base_url / local_model is set (and model with a server)."""
        if not self.configured():
            raise ConfigError(f"{where}: {needed_for} needs a backend: set {where}.base_url (with {where}.model) "
                              f"or {where}.local_model")
        if self.base_url and self.local_model:
            raise ConfigError(f"{where}: give either {where}.base_url or {where}.local_model, not both")
        if self.base_url and not self.model:
            raise ConfigError(f"{where}.model: required with {where}.base_url (the model name the server knows)")
        _positive(self, where, "concurrency", "timeout", "local_batch_size")
        if self.max_retries < 0:
            raise ConfigError(f"{where}.max_retries: must be >= 0, got {self.max_retries}")
        try:  # the same limits as the command-line options: finite, bounded
            check_backend_numbers(dataclasses.asdict(self), lambda name: f"{where}.{name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def as_backend_config(self, cache: str | None = None) -> dict[str, Any]:
        """The mapping :func:`rlkd.backends.build.backend_from_config` takes (``cache`` overrides the field)."""
        config = dataclasses.asdict(self)
        if cache is not None:
            config["cache"] = cache
        if self.local_model:  # server-only settings do not apply in-process
            for name in ("api_key_env", "concurrency", "timeout", "max_retries"):
                config.pop(name)
        else:
            config.pop("local_batch_size")
        return {k: v for k, v in config.items() if v is not None}
