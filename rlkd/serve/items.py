"""What ``rlkd serve`` takes and gives: :class:`RewardRequest` (one completion to score), :class:`ScoredItem`
(its result), the two refusals (:class:`UnscorableRequest`, :class:`Overloaded`), the server's defaults, and
:func:`completion_from_query` (OpenRLHF sends prompt and response as one text).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


log = logging.getLogger("rlkd.serve")


DEFAULT_PORT = 5000
TOKEN_ENV = "RLKD_SERVE_TOKEN"
NO_STUDENT = "(rlkd serve: no student model)"  # GRPOJob requires a model; the server never loads one
# end-of-sequence markers a decoded OpenRLHF query may end with (it decodes with special tokens kept)
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>",
               "<eos>", "<|end|>")


class UnscorableRequest(ValueError):
    """An item the server cannot score whatever it retries (no matching record, malformed input)."""


class Overloaded(RuntimeError):
    """Too many completions are waiting (or the server is stopping): try again later."""


# --------------------------------------------------------------------------------------------------
# Items and results


@dataclass
class RewardRequest:
    """One completion to score, and what identifies its record of the RLKD dataset.

    ``label`` is a record id when the dataset has that id, else the reference answer; ``problem`` is the
    problem text as in the dataset; ``prompt`` is any text containing it (e.g. the chat-templated prompt).
    """

    completion: str
    label: str | None = None
    problem: str | None = None
    prompt: str | None = None
    record_id: str | None = None

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> "RewardRequest":
        """Read one item of ``/v1/score``; a malformed item raises UnscorableRequest naming ``where``."""
        if not isinstance(obj, Mapping):
            raise UnscorableRequest(f"{where}: expected an object, got {type(obj).__name__}")
        if not isinstance(obj.get("completion"), str):
            raise UnscorableRequest(f"{where}: 'completion' must be a string")
        values = {}
        for name, key in (("label", "label"), ("problem", "problem"), ("prompt", "prompt"), ("record_id", "id")):
            value = obj.get(key)
            if value is not None and not isinstance(value, (str, int)):
                raise UnscorableRequest(f"{where}: '{key}' must be a string")
            values[name] = None if value is None else str(value)
        return cls(completion=obj["completion"], **values)


@dataclass
class ScoredItem:
    """The reward of one completion: the weighted total, each component, the structure reward's result.

    ``reward`` is None exactly when ``error`` says why (``retryable``: a backend failed, trying again may
    help). ``components`` maps each reward name to its value, None where it could not be computed; it is
    empty when the item could not even be matched to its record.
    """

    reward: float | None
    components: dict[str, float | None] = field(default_factory=dict)
    structure: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    record_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "components": self.components, "structure": self.structure,
                "error": self.error, "retryable": self.retryable, "id": self.record_id}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ScoredItem":
        return cls(reward=obj.get("reward"), components=dict(obj.get("components") or {}),
                   structure=obj.get("structure"), error=obj.get("error"), retryable=bool(obj.get("retryable")),
                   record_id=obj.get("id"))


def completion_from_query(query: str, prompt: str | None, markers: Sequence[str] = END_MARKERS) -> str:
    """The response of an OpenRLHF query (prompt + response, decoded with special tokens): the text after
    ``prompt``, with trailing end-of-sequence markers removed.

    >>> completion_from_query("<|im_start|>user\\n1+1?<|im_end|>\\n<think>2</think><|im_end|>",
    ...                       "<|im_start|>user\\n1+1?<|im_end|>\\n")
    '<think>2</think>'
    """
    if prompt:
        if not query.startswith(prompt):
            raise UnscorableRequest("the query does not start with its prompt (OpenRLHF sends prompt + response)")
        query = query[len(prompt):]
    stripped = True
    while stripped:
        stripped = False
        tail = query.rstrip()
        for marker in markers:
            if marker and tail.endswith(marker):
                query, stripped = tail[: -len(marker)], True
    return query


@dataclass
class ServeOptions:
    """Settings of :func:`build_app` (``rlkd serve``'s options)."""

    token: str | None = None
    max_batch: int = 64
    batch_wait: float = 0.05
    concurrency: int = 4
    max_pending: int = 4096
    scores: str = "reward"  # what OpenRLHF's "scores" carries: the reward, or accuracy (0/1, for filtering)
    end_markers: tuple[str, ...] = END_MARKERS
