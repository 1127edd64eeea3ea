"""The testbed as files and training data: task datasets (:func:`write_dataset`, :func:`read_tasks`), the
GSRM's chat-format SFT pairs (:func:`gsrm_pairs`) and the cut traces that add to them
(:func:`trace_prefixes`), the tokenizer corpus (:func:`corpus`) and token checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from rlkd.errors import InputError
from rlkd.files import iter_jsonl
from rlkd.structure import Decomposition
from rlkd.testbed.rule_decomposer import reasoning_text
from rlkd.testbed.tasks import NAMES, Task, base_text, computation, oracle_decomposition, teacher_trace

GSRM_INSTRUCTION = (
    "Rewrite the reasoning below as numbered steps. For each step write why this sub-problem is chosen "
    "next ([Meta-reasoning N]), the sub-problem ([Sub-problem N]) and its answer ([Answer N])."
)

# --------------------------------------------------------------------------------------------------
# Datasets, GSRM pairs, tokenizer corpus


def write_dataset(tasks: Iterable[Task], path: str | Path) -> Path:
    """Write tasks as JSONL (one :meth:`Task.to_dict` per line, flushed line by line); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(json.dumps(task.to_dict(), ensure_ascii=False) + "\n")
            handle.flush()
    return path


def read_tasks(path: str | Path) -> list[Task]:
    """Read a JSONL written by :func:`write_dataset`; a bad line raises ``rlkd.errors.InputError`` naming it."""
    tasks = []
    for number, obj in iter_jsonl(path):
        try:
            tasks.append(Task.from_dict(obj))
        except ValueError as exc:
            raise InputError(f"{path}:{number}: {exc}") from None
    return tasks


def gsrm_prompt(problem: str, reasoning: str) -> str:
    """The user message the testbed's GSRM sees: instruction, problem, and the flat reasoning."""
    return f"{GSRM_INSTRUCTION}\n\nProblem: {problem}\n\nReasoning: {reasoning}"


def gsrm_pairs(tasks: Iterable[Task], traces_per_task: int = 1) -> list[dict[str, Any]]:
    """Chat-format SFT examples (flat narrative -> canonical decomposition) for training a tiny GSRM.

    Each example is ``{"id", "messages": [user, assistant]}``: the user message is :func:`gsrm_prompt`
    over the reasoning inside ``<think>``, the assistant message ``Decomposition.render()`` of its ground
    truth. ``traces_per_task > 1`` adds traces under other wordings (seeds ``trace_seed + j``).
    """
    examples = []
    for task in tasks:
        for j in range(traces_per_task):
            seed = task.trace_seed + j
            trace, decomposition = teacher_trace(task, seed), oracle_decomposition(task, seed)
            examples.append({
                "id": f"{task.id}#{j}",
                "messages": [
                    {"role": "user", "content": gsrm_prompt(task.problem, reasoning_text(trace))},
                    {"role": "assistant", "content": decomposition.render()},
                ],
            })
    return examples


def trace_prefixes(task: Task) -> list[tuple[str, Decomposition]]:
    """The task's teacher trace cut after each of its computations but the last, each with the
    decomposition of exactly that text (the first ``j`` steps): ``(trace, decomposition)`` pairs, ``j``
    = 1, 2, ... A student's trace may stop anywhere, and in a whole trace only the last step's answer is
    read from the very end of the text; the cut traces give a GSRM more of those (the demo's
    ``data.gsrm_prefixes``, docs/demo-results.md). Each cut ends ``</think>`` and has no answer tag.

    >>> from rlkd.testbed import generate_tasks, rule_decompose
    >>> task = generate_tasks(1, depth=3, seed=0)[0]
    >>> [(len(d.steps), d == rule_decompose(t)) for t, d in trace_prefixes(task)]
    [(1, True), (2, True)]
    """
    body, decomposition = reasoning_text(teacher_trace(task)), oracle_decomposition(task)
    pairs, end = [], 0
    for j, name in enumerate(task.order[:-1], start=1):
        sentence = computation(task, name)
        end = body.index(sentence, end) + len(sentence)
        pairs.append((f"<think>\n{body[:end]}\n</think>", Decomposition(steps=list(decomposition.steps[:j]))))
    return pairs


def corpus(tasks: Iterable[Task]) -> list[str]:
    """Texts for :func:`rlkd.models.build_tokenizer`: problems, traces, decompositions, GSRM prompts, and
    every name and number (0-199) a task can use, with and without a leading space, so that a tokenizer
    with enough vocabulary keeps each of them one token (:func:`whole_word_check`)."""
    texts = [GSRM_INSTRUCTION]
    for task in tasks:
        texts += [task.problem, task.trace, task.decomposition.render(), base_text(task),
                  gsrm_prompt(task.problem, reasoning_text(task.trace))]
    words = list(NAMES) + [str(i) for i in range(200)]
    texts += [" ".join(words), "\n".join(words)] * 20
    return texts


def whole_word_check(tokenizer: Any) -> list[str]:
    """The names and numbers (0-199) that ``tokenizer`` splits into several tokens, with or without a
    leading space; empty when every one of them is a single token."""
    split = []
    for word in list(NAMES) + [str(i) for i in range(200)]:
        for form in (word, " " + word):
            if len(tokenizer.encode(form, add_special_tokens=False)) != 1:
                split.append(form)
    return split


def token_stats(tasks: Sequence[Task], tokenizer: Any) -> dict[str, float]:
    """Mean and max token counts of problems, teacher traces and rendered decompositions."""
    out: dict[str, float] = {"tasks": float(len(tasks))}
    for name, texts in (("problem", [t.problem for t in tasks]), ("trace", [t.trace for t in tasks]),
                        ("decomposition", [t.decomposition.render() for t in tasks])):
        counts = [len(tokenizer.encode(x, add_special_tokens=False)) for x in texts] or [0]
        out[f"{name}_tokens_mean"] = sum(counts) / len(counts)
        out[f"{name}_tokens_max"] = float(max(counts))
        words = [len(x.split()) for x in texts] or [0]
        out[f"{name}_words_mean"] = sum(words) / len(words)
    return out
