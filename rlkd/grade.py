"""``rlkd grade``: regrade completions that any harness wrote (vLLM, lighteval, your own script).

``rlkd grade --input FILE.jsonl --benchmark {math500,aime24,gpqa_diamond} --output OUT.jsonl`` reads one
problem per line:

- ``id``: the problem's id (unique in the file);
- ``completion`` (one string) or ``completions`` (a list of strings: the n samples of the problem);
- ``answer``: the gold. For math, the answer or a worked solution (its ``\\boxed{}`` is read); for
  GPQA-Diamond, the correct letter (A to D).

and writes each line back with ``correct`` (a bool, or a list of bools for ``completions``), the
extracted answer(s) under ``extracted`` and the grader's reason(s) under ``reason``. It prints pass@1
with n beside it and pass@k for k = 1, 2, 4, ... n, exactly as ``rlkd eval`` does, because it grades
with the same code (:func:`rlkd.answers.grade_all`) and summarises with the same function.

How it departs from lighteval: nothing is generated, so it grades the completions it is given; pass@k
for problems with different sample counts uses each problem's own n and reports the smallest
(lighteval expects exactly n per problem).

The whole input is checked before anything is graded: a bad line stops the command with an error naming
the file and the line, and the output is written at the end in one step (a temporary file renamed), so
an earlier output at that path survives any failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rlkd.answers import DEFAULT_EVAL_PROTOCOL, DEFAULT_TIMEOUT_S, STATS, grade_all
from rlkd.errors import InputError
from rlkd.evaluate import Problem, no_answer_line, pass_at_k_lines, summarize
from rlkd.files import atomic_write_jsonl, iter_jsonl

log = logging.getLogger("rlkd.grade")

BENCHMARK_KINDS = {"math500": "math", "aime24": "math", "gpqa_diamond": "choice"}


def read_completions(path: str, kind: str) -> list[tuple[dict[str, Any], list[str]]]:
    """Every line of ``path`` with its completions as a list; InputError naming file and line if bad."""
    rows: list[tuple[dict[str, Any], list[str]]] = []
    seen: dict[str, int] = {}
    for number, obj in iter_jsonl(path):
        where = f"{path}:{number}"
        if "id" not in obj or obj["id"] is None or isinstance(obj["id"], (dict, list)):
            raise InputError(f"{where}: missing field 'id' (a string or a number)")
        pid = str(obj["id"])
        if pid in seen:
            raise InputError(f"{where}: id {pid!r} appears twice (first on line {seen[pid]})")
        seen[pid] = number
        if ("completion" in obj) == ("completions" in obj):
            raise InputError(f"{where}: give exactly one of 'completion' (a string) or 'completions' (a list of "
                           "strings)")
        if "completion" in obj:
            if not isinstance(obj["completion"], str):
                raise InputError(f"{where}: field 'completion' must be a string, got {type(obj['completion']).__name__}")
            texts = [obj["completion"]]
        else:
            texts = obj["completions"]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise InputError(f"{where}: field 'completions' must be a non-empty list of strings")
        gold = obj.get("answer")
        if gold is None or isinstance(gold, (dict, list, bool)) or str(gold).strip() == "":
            raise InputError(f"{where}: field 'answer' (the gold) is missing or empty")
        if kind == "choice" and (len(str(gold).strip()) != 1 or str(gold).strip().upper() not in "ABCD"):
            raise InputError(f"{where}: field 'answer' must be the correct letter (A, B, C or D) for gpqa_diamond, "
                           f"got {gold!r}")
        rows.append((obj, texts))
    if not rows:
        raise InputError(f"{path}: no problems (the file is empty)")
    return rows


def regrade(input_path: str, output_path: str, benchmark: str, grading: str = DEFAULT_EVAL_PROTOCOL,
            timeout: float = DEFAULT_TIMEOUT_S, progress: bool = False) -> dict[str, Any]:
    """Grade every completion of the JSONL ``input_path`` under the rules of ``benchmark`` (a key of
    :data:`BENCHMARK_KINDS`) and the ``grading`` protocol, and write ``output_path``; the summary. ``timeout``
    bounds math-verify on one completion; ``progress`` shows a progress bar."""

    kind = BENCHMARK_KINDS[benchmark]
    if timeout <= 0:
        raise InputError("--timeout must be positive")
    output_name, output = str(output_path), Path(output_path)
    if output.resolve() == Path(input_path).resolve():
        raise InputError(f"--output {output_name} is the input file: write the grades to another file")
    if not output.parent.is_dir():
        raise InputError(f"--output {output_name}: no such folder {output.parent}")
    rows = read_completions(input_path, kind)
    stats_before = dict(STATS)
    items = [(text, obj["answer"]) for obj, texts in rows for text in texts]
    grades = iter(grade_all(items, kind=kind, protocol=grading, timeout_s=timeout,
                            progress="grading" if progress else None))
    problems, records, out_rows = [], [], []
    for obj, texts in rows:
        pid = str(obj["id"])
        gs = [next(grades) for _ in texts]
        gold = str(obj["answer"]).strip().upper() if kind == "choice" else str(obj["answer"])
        problems.append(Problem(pid, "", gold, kind))
        records += [{"id": pid, "correct": g.correct, "answer": g.answer} for g in gs]
        single = "completion" in obj
        out_rows.append({**obj,
                         "correct": gs[0].correct if single else [g.correct for g in gs],
                         "extracted": gs[0].answer if single else [g.answer for g in gs],
                         "reason": gs[0].reason if single else [g.reason for g in gs]})
    atomic_write_jsonl(output, out_rows)
    summary = {"benchmark": benchmark, "model": f"graded from {input_path}", "grading_protocol": grading,
               **summarize(problems, records), "grading": {k: STATS[k] - stats_before.get(k, 0) for k in STATS}}
    return summary


def format_grade_summary(summary: dict[str, Any]) -> str:
    """The printed table: problems, n, pass@k rows with n beside each, and the share with no answer."""
    lines = [f"{summary['benchmark']} | {summary['model']} | grading {summary['grading_protocol']} | "
             f"{summary['graded_problems']} problems graded of {summary['problems']} | n={summary['n']} samples "
             "per problem", *pass_at_k_lines(summary, header=False), no_answer_line(summary)]
    grading = summary["grading"]
    if grading.get("timeouts") or grading.get("errors") or grading.get("gold_unparsable"):
        lines.append(f"  math-verify: {grading['timeouts']} timeouts, {grading['errors']} errors, "
                     f"{grading['gold_unparsable']} unreadable gold answers")
    return "\n".join(lines)
