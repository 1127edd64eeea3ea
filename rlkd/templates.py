"""Prompt templates: the chat prompts of the GSRM and of the LLM judge, read from prompt files.

A prompt file holds ``=== system ===``, ``=== user ===`` and ``=== assistant ===`` sections; the last one
is the user turn with the placeholders (``{reasoning}`` and, optionally, ``{problem}`` for the GSRM: a GSRM
trained to read the reasoning alone may leave the problem out; ``{teacher}`` and ``{student}`` or
``{pairs}`` for the judge). The packaged files live in ``rlkd/prompts/`` (package data):
``gsrm_<domain>.txt`` for each of :data:`DOMAINS`, and ``judge_<field>.txt``.

1. The GSRM prompts are our own wording of the authors' instruction, and their labels are exactly the
   ones the parser reads (the authors' prompt and parser disagreed, SPEC section 4).
2. The placeholders are filled in one pass, so a placeholder-like text inside a trace is left alone.

This module is a plain helper: it knows nothing of the method beyond the file format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"  # package data (pyproject: prompts/*.txt)
DOMAINS = ("math", "code", "science", "puzzle")  # each has its packaged prompt, prompts/gsrm_<domain>.txt

_SECTION = re.compile(r"^=== (system|user|assistant) ===[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt read from a prompt file: (role, text) turns, the last one holding the placeholders.

    The judge prompts of :mod:`rlkd.llm_judge` use the same file format with other placeholders.
    """

    turns: tuple[tuple[str, str], ...]
    source: str = ""
    placeholders: tuple[str, ...] = ("problem", "reasoning")

    @classmethod
    def parse(cls, text: str, source: str = "<string>",
              placeholders: Sequence[str] = ("problem", "reasoning"),
              required: Sequence[str] | None = None) -> "PromptTemplate":
        """Read the ``=== role ===`` sections of a prompt file: the last turn must hold every placeholder
        of ``required`` (default: all of ``placeholders``). Raises ValueError naming the file."""
        marks = list(_SECTION.finditer(text))
        if not marks:
            raise ValueError(f"{source}: no '=== system ===' / '=== user ===' section found")
        if text[: marks[0].start()].strip():
            raise ValueError(f"{source}: text before the first '=== role ===' line")
        turns = []
        for i, m in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            turns.append((m.group(1), text[m.end():end].strip("\n")))
        required = tuple(placeholders if required is None else required)
        missing = [name for name in required if "{" + name + "}" not in turns[-1][1]]
        if turns[-1][0] != "user" or missing:
            raise ValueError(f"{source}: the last section must be '=== user ===' and contain "
                             + " and ".join("{" + name + "}" for name in required))
        return cls(tuple(turns), source, tuple(placeholders))

    def fill(self, values: Mapping[str, str], few_shot: bool = True) -> list[dict[str, str]]:
        """The chat messages with the placeholders of the last turn filled in (in one pass, so a
        placeholder-like text inside a value is left alone); ``few_shot=False`` keeps only the system
        turns and the last one."""
        turns = list(self.turns)
        if not few_shot:
            turns = [t for t in turns[:-1] if t[0] == "system"] + [turns[-1]]
        messages = [{"role": role, "content": content} for role, content in turns[:-1]]
        last_role, last = turns[-1]
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.placeholders)) + r")\}")
        messages.append({"role": last_role, "content": pattern.sub(lambda m: values[m.group(1)], last)})
        return messages

    def render(self, problem: str, reasoning: str, few_shot: bool = True) -> list[dict[str, str]]:
        """The GSRM chat messages for one trace."""
        return self.fill({"problem": problem, "reasoning": reasoning}, few_shot)


@lru_cache(maxsize=None)
def load_prompt(domain_or_path: str = "math") -> PromptTemplate:
    """The packaged prompt of a domain (``math``, ``code``, ``science``, ``puzzle``) or a prompt file."""
    if domain_or_path in DOMAINS:
        text = (PROMPTS_DIR / f"gsrm_{domain_or_path}.txt").read_text(encoding="utf-8")
        return PromptTemplate.parse(text, f"rlkd/prompts/gsrm_{domain_or_path}.txt")
    path = Path(domain_or_path)
    if not path.is_file():
        raise ValueError(f"unknown GSRM domain {domain_or_path!r} (choose one of {', '.join(DOMAINS)}, "
                         "or give a prompt file)")
    return PromptTemplate.parse(path.read_text(encoding="utf-8"), str(path), required=("reasoning",))
