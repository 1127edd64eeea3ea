"""Data: reading inputs, building the training sets, and the ``rlkd data`` commands.

- :class:`Records` reads any input the pipelines take (JSONL, JSON, parquet, a ``datasets`` folder, or a
  hub dataset name when online) as numbered records, with errors naming the file and line.
- :func:`grpo_rows` and :func:`sft_rows` turn records into what TRL's trainers read (a chat ``prompt``,
  the reward columns; or chat ``prompt``/``completion`` pairs).
- ``rlkd data gsrm`` (:func:`run_data_gsrm`): teacher traces -> decompositions written by a strong LLM
  over any OpenAI-compatible backend -> a chat SFT dataset for the GSRM.
- ``rlkd data rlkd`` (:func:`run_data_rlkd`): OpenR1-Math-style records (problem, answer, several teacher
  generations with correctness flags) -> train and test sets holding the first correct generation and
  its decomposition, precomputed once by the GSRM.
- ``rlkd data tiny``: everything the CPU recipes in ``configs/tiny/`` need, built from the synthetic
  testbed (:mod:`rlkd.testbed`) and tiny models (:mod:`rlkd.models`).

Both data commands are resumable: output files are appended one whole JSON line per record and
flushed; a re-run reads the ids already written (cutting a torn last line left by ``kill -9``) and
processes only the rest, so every input ends up in exactly one output file exactly once. Requests go
through the request cache by default, so a re-run does not pay twice.

How this departs from the authors' code (SPEC section 4):

1. The teacher's decomposition is computed once, here, and carried in the data, instead of being
   recomputed by the GSRM at every training step for every generation.
2. An API failure is never retried forever: the backend retries a bounded number of times, a record
   whose call failed is not written (the next run retries it), and the job stops when the share of
   failures passes ``max_failure_share``.
3. A GSRM output that does not parse is recorded with the parser's reason and left out, never kept as
   an empty structure.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rlkd.cli import CliError, iter_jsonl

log = logging.getLogger("rlkd.data")

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


# --------------------------------------------------------------------------------------------------
# Reading inputs


def is_local(path: str) -> bool:
    """Whether ``path`` names a local file or folder rather than a hub dataset or model.

    Existing paths, absolute or ``./`` paths, paths with a data-file suffix and paths with more than one
    ``/`` are local; ``org/name`` that does not exist here is a hub name.
    """
    p = Path(path).expanduser()
    if p.exists() or path.startswith(("/", "./", "../", "~")) or path.endswith(LOCAL_SUFFIXES):
        return True
    return path.count("/") > 1


class Records:
    """The records of an input, numbered from 0, each with a location for error messages.

    JSONL files are streamed (a bad line raises :class:`~rlkd.cli.CliError` naming it); JSON, parquet,
    ``datasets`` folders and hub datasets are opened with ``datasets`` (memory-mapped).
    """

    def __init__(self, path: str, split: str = "train", subset: str | None = None) -> None:
        self.path = path
        self.split = split
        self.subset = subset
        self._table = None
        self._count: int | None = None
        if path.endswith(".jsonl"):
            if not Path(path).is_file():
                raise CliError(f"{path}: no such file")
        else:
            self._table = _open_table(path, split, subset)

    def __len__(self) -> int:
        if self._table is not None:
            return len(self._table)
        if self._count is None:
            with open(self.path, "rb") as handle:
                self._count = sum(1 for line in handle if line.strip())
        return self._count

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any], str]]:
        """Yield (index, record, location)."""
        if self._table is None:
            for index, (number, obj) in enumerate(iter_jsonl(self.path)):
                yield index, obj, f"{self.path}:{number}"
        else:
            for index, row in enumerate(self._table):
                yield index, dict(row), f"{self.path}[{index}]"

    def columns(self) -> list[str]:
        """Column names (of the first record, for JSONL)."""
        if self._table is not None:
            return list(self._table.column_names)
        for _, obj, _ in self:
            return list(obj)
        return []


def _open_table(path: str, split: str, subset: str | None):
    import datasets

    p = Path(path).expanduser()
    try:
        if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(p))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise CliError(f"{path}: no split {split!r} (has {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded
        if p.is_file():
            kind = {".json": "json", ".parquet": "parquet"}.get(p.suffix)
            if kind is None:
                raise CliError(f"{path}: unknown file type (expected .jsonl, .json or .parquet)")
            return datasets.load_dataset(kind, data_files=str(p), split="train")
        if is_local(path):
            raise CliError(f"{path}: no such file or folder")
        return datasets.load_dataset(path, subset, split=split)
    except CliError:
        raise
    except Exception as exc:  # datasets raises many types; name the input either way
        raise CliError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def first_columns(path: str, split: str = "train", subset: str | None = None) -> list[str] | None:
    """The columns of a local input (None for a hub dataset, which is not opened here)."""
    if not is_local(path):
        return None
    return Records(path, split, subset).columns()


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}, not text"
        raise CliError(f"{where}: column '{column}' is {got}")
    return value


# --------------------------------------------------------------------------------------------------
# Training sets


def chat_prompt(problem: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversational prompt a student sees: the system prompt (if any) and the problem."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": problem}]


def grpo_rows(records: Records, data: Any, need_structure: bool, limit: int | None = None) -> list[dict[str, Any]]:
    """GRPO training rows: ``prompt`` (chat), ``problem``, ``answer`` and, for the structure reward,
    ``teacher_structure`` (the reward functions read these column names). ``data`` is a
    :class:`rlkd.config.GRPOData`."""
    rows = []
    for index, obj, where in records:
        if limit is not None and index >= limit:
            break
        problem = _text(obj.get(data.problem_column), data.problem_column, where)
        answer = obj.get(data.answer_column)
        if answer is None:
            raise CliError(f"{where}: column '{data.answer_column}' is missing")
        row = {"prompt": chat_prompt(problem, data.system_prompt), "problem": problem, "answer": str(answer)}
        if need_structure:
            structure = obj.get(data.teacher_structure_column)
            if structure is None:
                raise CliError(f"{where}: column '{data.teacher_structure_column}' is missing (the structure "
                               "reward needs the teacher's decomposition: build the data with rlkd data rlkd)")
            row["teacher_structure"] = structure if isinstance(structure, str) else json.dumps(structure)
        rows.append(row)
    if not rows:
        raise CliError(f"{records.path}: no training rows")
    return rows


def teacher_completion(reasoning: str, solution: str | None, answer: str) -> str:
    """The student-format target ``<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`` for SFT.

    ``reasoning`` may be a whole generation (its text after ``</think>`` then serves as the solution
    when ``solution`` is empty); without any solution text the answer is given as ``\\boxed{answer}``.

    >>> teacher_completion("<think>2+2=4</think>\\n<answer>\\\\boxed{4}</answer>", None, "4")
    '<think>\\n2+2=4\\n</think>\\n<answer>\\n\\\\boxed{4}\\n</answer>'
    """
    from rlkd.gsrm import split_reasoning

    thought, found_end = split_reasoning(reasoning)
    tail = reasoning[reasoning.lower().find("</think>") + len("</think>"):].strip() if found_end else ""
    final = (solution or "").strip() or tail or f"\\boxed{{{answer}}}"
    final = final.replace("<answer>", "").replace("</answer>", "").strip()
    return f"<think>\n{thought}\n</think>\n<answer>\n{final}\n</answer>"


def sft_rows(records: Records, data: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """SFT rows. ``format: chat`` keeps ``messages`` or ``prompt``/``completion`` as they are;
    ``format: traces`` builds a chat ``prompt`` from the problem and a ``completion`` from the teacher's
    reasoning. ``data`` is a :class:`rlkd.config.SFTData`."""
    rows = []
    for index, obj, where in records:
        if limit is not None and index >= limit:
            break
        if data.format == "chat":
            if "messages" in obj:
                rows.append({"messages": _messages(obj["messages"], "messages", where)})
            elif "prompt" in obj and "completion" in obj:
                rows.append({"prompt": _messages(obj["prompt"], "prompt", where),
                             "completion": _messages(obj["completion"], "completion", where)})
            else:
                raise CliError(f"{where}: chat data needs a 'messages' column or 'prompt' and 'completion' columns")
            continue
        problem = _text(obj.get(data.problem_column), data.problem_column, where)
        reasoning = _text(obj.get(data.reasoning_column), data.reasoning_column, where)
        answer = obj.get(data.answer_column)
        if answer is None:
            raise CliError(f"{where}: column '{data.answer_column}' is missing")
        solution = obj.get(data.solution_column) if data.solution_column else None
        rows.append({"prompt": chat_prompt(problem, data.system_prompt),
                     "completion": [{"role": "assistant",
                                     "content": teacher_completion(reasoning, solution, str(answer))}]})
    if not rows:
        raise CliError(f"{records.path}: no training rows")
    return rows


def _messages(value: Any, column: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise CliError(f"{where}: column '{column}' must be a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


# --------------------------------------------------------------------------------------------------
# rlkd data


def add_parser(subparsers) -> None:
    """Register ``rlkd data gsrm``, ``rlkd data rlkd`` and ``rlkd data tiny``."""
    from rlkd.config import DataGsrmJob, DataRlkdJob, fields_help

    p = subparsers.add_parser("data", help="build datasets: GSRM SFT data, RLKD train/test sets, tiny CPU data",
                              description="Build the datasets the training recipes read.")
    sub = p.add_subparsers(dest="data_command", metavar="KIND")
    p.set_defaults(func=_no_kind)
    for kind, cls, text in (
        ("gsrm", DataGsrmJob, "teacher traces -> decompositions by a strong LLM -> chat SFT data for the GSRM"),
        ("rlkd", DataRlkdJob, "OpenR1-Math-style records -> train/test sets with the first correct teacher "
                              "generation and its GSRM decomposition"),
    ):
        q = sub.add_parser(kind, help=text, description=f"{text}. Resumable: run the same command again.",
                           epilog=fields_help(cls), formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--config", metavar="RECIPE.yaml", help="YAML recipe (e.g. configs/tiny/data_rlkd.yaml)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one field, e.g. --set limit=100 (repeatable; value read as YAML)")
        q.add_argument("--dry-run", action="store_true", help="print the resolved configuration, check the input, stop")
        q.set_defaults(func=cmd_data)


def _no_kind(args: argparse.Namespace) -> int:
    raise CliError("choose a kind: rlkd data gsrm|rlkd|tiny ...")


def cmd_data(args: argparse.Namespace) -> int:
    """``rlkd data gsrm|rlkd``."""
    from rlkd.config import DataGsrmJob, DataRlkdJob, dump_yaml, load_job

    cls = DataGsrmJob if args.data_command == "gsrm" else DataRlkdJob
    job = load_job(cls, args.config, args.set)
    if args.dry_run:
        print(dump_yaml(job).rstrip())
        return 0
    raise CliError("not implemented yet")
