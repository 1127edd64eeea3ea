"""Backends: where LLM text comes from (the GSRM, the LLM judge, data construction, evaluation).

One batch-first interface, :class:`Backend`: ``await backend.generate(requests)`` returns one
:class:`Completion` per :class:`GenerationRequest`, in order, and never raises for one bad request: a
request that failed for good comes back with ``error`` set (and is counted), so a caller can record the
failure for that sample and carry on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class GenerationRequest:
    """One chat request. ``temperature == 0`` means greedy decoding."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), hashable so it can key a cache
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def chat(cls, messages: Sequence[dict[str, str]] | Sequence[tuple[str, str]], **kwargs: Any) -> "GenerationRequest":
        """Build from OpenAI-style ``[{"role": ..., "content": ...}]`` or ``[(role, content)]``."""
        pairs = tuple((m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in messages)
        return cls(messages=pairs, **kwargs)

    def as_openai_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class Completion:
    """What came back for one request: ``n`` texts, token counts, or the error that ended it."""

    texts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False

    @property
    def text(self) -> str:
        """The first text ('' when the request failed)."""
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BackendStats:
    """Counters every backend keeps (read them after a job; they are also logged)."""

    calls: int = 0  # requests sent to the model (cache hits excluded)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0  # requests that failed for good

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Backend:
    """Interface. Subclasses implement :meth:`_generate`; the cache and the counters wrap it."""

    name = "backend"

    def __init__(self) -> None:
        self.stats = BackendStats()

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order; failures come back with ``error`` set."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections or models."""
