"""The problems of an evaluation: built-in benchmarks and local files, read into prompts and gold
answers (:func:`load_problems`), and :class:`EvalJob`, what one run of ``rlkd eval`` does.

1. GPQA options are shuffled per question with a seed derived from ``shuffle_seed`` and the question
   id, and the permutation is recorded, so a run is reproducible and auditable.
2. The instruction put before each problem is our own wording (``prompt_template`` takes any other).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlkd.answers import DEFAULT_EVAL_PROTOCOL, DEFAULT_TIMEOUT_S, PROTOCOLS
from rlkd.data import Records
from rlkd.errors import InputError
from rlkd.files import read_text
from rlkd.recipes import option

log = logging.getLogger("rlkd.evaluate")

CHOICE_LETTERS = "ABCD"

MATH_TEMPLATE = (
    "Solve the following problem. Think it through step by step, and finish with a last line of the form "
    "'The final answer is $\\boxed{ANSWER}$', where ANSWER is the final number or expression only.\n\n"
    "{problem}"
)
CHOICE_TEMPLATE = (
    "Answer the following multiple-choice question. Think it through step by step, and finish with a last "
    "line of the form 'Answer: LETTER', where LETTER is one of A, B, C or D.\n\n"
    "{problem}"
)

GPQA_COLUMNS = ("Question", "Correct Answer", ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"))



# --------------------------------------------------------------------------------------------------
# Benchmarks


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and how to read it. ``kind`` is ``math`` or ``choice`` (GPQA-style)."""

    name: str
    kind: str
    n: int
    hub_path: str | None = None
    subset: str | None = None
    split: str = "train"
    problem_column: str = "problem"
    answer_column: str = "answer"
    id_column: str | None = None
    incorrect_columns: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("aime24", "math", 64, "HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "id"),
    "math500": Benchmark("math500", "math", 4, "HuggingFaceH4/MATH-500", None, "test", "problem", "answer",
                         "unique_id"),
    "gpqa_diamond": Benchmark("gpqa_diamond", "choice", 8, "Idavidrein/gpqa", "gpqa_diamond", "train",
                              GPQA_COLUMNS[0], GPQA_COLUMNS[1], "Record ID", GPQA_COLUMNS[2]),
}
DEFAULT_CUSTOM_N = 4
_ID_COLUMNS = ("id", "unique_id", "problem_id", "Record ID")  # tried, in order, when no id column is named


@dataclass
class Problem:
    """One problem as the model sees it: ``prompt`` is the user message; ``gold`` the answer (a letter
    for multiple choice); ``options`` the shuffled option texts and ``permutation`` which original option
    (0 = the correct one) each letter shows."""

    id: str
    prompt: str
    gold: str
    kind: str
    options: list[str] = field(default_factory=list)
    permutation: list[int] = field(default_factory=list)

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha1(self.prompt.encode("utf-8")).hexdigest()[:16]


@dataclass
class EvalJob:
    """One evaluation run, what ``rlkd eval`` does (:func:`run_eval`); the command line's options have these
    names and defaults (SPEC section 6), and ``rlkd demo`` builds one directly."""

    model: str = option(MISSING, "model to evaluate: a hub name, a local folder or a .gguf file")
    benchmark: str = option(MISSING, f"built-in benchmark ({', '.join(BENCHMARKS)}; read from the hub, or from "
                            "--data) or a local .jsonl/.json/.parquet file with problem and answer columns "
                            "(GPQA-style files: question, correct answer and three incorrect answers)")
    data: str | None = option(None, "local copy of a built-in benchmark (same columns as on the hub)", metavar="FILE")
    output: str | None = option(None, "output folder (default eval_results/<benchmark>__<model>; with --compare, "
                                "eval_results/compare)", metavar="DIR")
    problem_column: str | None = option(None, "column holding the problem text (e.g. problem, question, Question)")
    answer_column: str | None = option(None, "column holding the answer (for multiple choice: the correct "
                                       "option's text)")
    id_column: str | None = option(None, "column holding a unique problem id (default: the benchmark's, else the "
                                   "row number)")
    incorrect_columns: str | None = option(None, "multiple choice: the three columns holding the wrong options "
                                           "(default 'Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3')",
                                           metavar="A,B,C")
    kind: str = option("auto", "math (math-verify) or choice (four options, letter extracted); auto: choice when "
                       "the incorrect-answer columns exist", ("auto", "math", "choice"))
    split: str | None = option(None, "split to read (default: the benchmark's; train for files)")
    n: int | None = option(None, "samples per problem (default " + ", ".join(f"{b.n} {b.name}" for b in
                           BENCHMARKS.values()) + f", {DEFAULT_CUSTOM_N} for files)")
    temperature: float = option(0.6, "sampling temperature")
    top_p: float = option(0.95, "nucleus sampling top_p")
    max_new_tokens: int = option(32768, "tokens per completion at most")
    limit: int | None = option(None, "evaluate only the first N problems")
    seed: int = option(0, "sampling seed")
    shuffle_seed: int = option(0, "seed of the per-question option shuffle for multiple choice")
    system_prompt: str | None = option(None, "system message (default: none, as the protocol says)")
    prompt_template: str | None = option(None, "user message template containing {problem} (default: our "
                                         "instruction asking for a \\boxed{} final answer, or 'Answer: LETTER' "
                                         "for multiple choice)", metavar="FILE")
    engine: str = option("transformers", "transformers generate (CPU or GPU) or vLLM's offline engine if "
                         "installed", ("transformers", "vllm"))
    batch_size: int | None = option(None, "sequences per generate call (default 8 for transformers, 512 for vLLM); "
                                    "the cache is written after each batch")
    device: str | None = option(None, "transformers: cpu, cuda, cuda:1 ... (default: cuda if available)")
    dtype: str = option("auto", "weights dtype", ("auto", "float32", "bfloat16", "float16"))
    tensor_parallel_size: int = option(1, "vLLM: GPUs per model")
    max_model_len: int | None = option(None, "vLLM: context length (default: the model's)")
    grade_timeout: float = option(DEFAULT_TIMEOUT_S, "seconds math-verify may spend on one answer before it counts "
                                  "as wrong")
    grading: str = option(DEFAULT_EVAL_PROTOCOL, "how answers are extracted and compared. lighteval: lighteval "
                          "0.9.0's protocol, as the authors and open-r1 evaluated (math: math-verify reads the "
                          "whole reply and the gold with lighteval's extraction rules; GPQA: lighteval's letter "
                          "rules). reward: the training accuracy reward's grader (right-most \\boxed{}, then an "
                          "<answer> block, then an 'answer is' phrase; GPQA: a letter cue, decisive ones first). "
                          "See the docstring of rlkd/answers/__init__.py for every difference", PROTOCOLS)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def resolve_benchmark(job: EvalJob) -> tuple[Benchmark, str, str | None, str]:
    """The benchmark spec, the source to read (hub name or local path), its subset and split."""
    name = job.benchmark
    if name in BENCHMARKS:
        spec = BENCHMARKS[name]
        if job.data:
            return spec, job.data, None, job.split or "train"
        if _offline():
            raise InputError(
                f"benchmark {name!r} lives on the Hugging Face hub ({spec.hub_path}"
                f"{', config ' + spec.subset if spec.subset else ''}) and the hub is offline here "
                "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set). Download it where you have access and pass "
                f"the local file: rlkd eval --benchmark {name} --data path/to/{name}.jsonl (or .parquet)")
        return spec, spec.hub_path or name, spec.subset, job.split or spec.split
    path = Path(name).expanduser()
    if not path.exists():
        raise InputError(f"--benchmark {name!r}: not a built-in benchmark ({', '.join(BENCHMARKS)}) and no such file")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "custom"
    return Benchmark(stem, "auto", DEFAULT_CUSTOM_N), str(path), None, job.split or "train"


def _pick_column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    if given:
        if given not in columns:
            raise InputError(f"{where}: no column {given!r} ({what}); columns are {', '.join(columns)}")
        return given
    for c in candidates:
        if c in columns:
            return c
    raise InputError(f"{where}: cannot tell which column holds the {what}; columns are {', '.join(columns)}. "
                   f"Name it with --{what.split()[0]}-column")


def _option_text(value: Any, column: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}: column '{column}' is empty")
    return str(value).strip()


def load_problems(job: EvalJob) -> tuple[Benchmark, list[Problem]]:
    """Read the benchmark and build the prompts (``--limit`` keeps the first problems)."""
    spec, source, subset, split = resolve_benchmark(job)
    try:
        records = Records(source, split=split, subset=subset)
    except InputError as exc:
        if spec.hub_path and source == spec.hub_path:
            raise InputError(f"{exc}. Without hub access, download the benchmark elsewhere and pass it with "
                           f"--data FILE") from None
        raise
    columns = records.columns()
    where = source
    kind = job.kind if job.kind != "auto" else spec.kind
    incorrect = tuple(job.incorrect_columns.split(",")) if job.incorrect_columns else spec.incorrect_columns
    if kind == "auto":
        kind = "choice" if all(c in columns for c in GPQA_COLUMNS[2]) or (incorrect and all(
            c in columns for c in incorrect)) else "math"
    if kind == "choice" and not incorrect:
        incorrect = GPQA_COLUMNS[2]
    if kind == "choice":
        missing = [c for c in incorrect if c not in columns]
        if len(incorrect) != 3 or missing:
            raise InputError(f"{where}: a multiple-choice benchmark needs three incorrect-answer columns "
                           f"(--incorrect-columns A,B,C); missing {missing or incorrect}")
        problem_col = _pick_column(columns, job.problem_column or (spec.problem_column if spec.kind == "choice" else None),
                                   ["Question", "question", "problem"], "problem column", where)
        answer_col = _pick_column(columns, job.answer_column or (spec.answer_column if spec.kind == "choice" else None),
                                  ["Correct Answer", "correct_answer", "answer"], "answer column", where)
    else:
        problem_col = _pick_column(columns, job.problem_column or (spec.problem_column if spec.kind == "math" else None),
                                   ["problem", "question", "Question", "prompt"], "problem column", where)
        answer_col = _pick_column(columns, job.answer_column or (spec.answer_column if spec.kind == "math" else None),
                                  ["answer", "Answer", "solution", "gold"], "answer column", where)
    id_col = job.id_column or next((c for c in (spec.id_column, *_ID_COLUMNS) if c and c in columns), None)
    if id_col and id_col not in columns:
        raise InputError(f"{where}: no id column {id_col!r}; columns are {', '.join(columns)}")
    template = _template(job, kind)
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, row, location in records:
        if job.limit is not None and len(problems) >= job.limit:
            break
        pid = str(row.get(id_col)) if id_col and row.get(id_col) is not None else str(index)
        if pid in seen:
            raise InputError(f"{location}: id {pid!r} appears twice (ids must be unique; name another --id-column)")
        seen.add(pid)
        text = row.get(problem_col)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{location}: column '{problem_col}' is empty or not text")
        gold = row.get(answer_col)
        if gold is None or str(gold).strip() == "":
            raise InputError(f"{location}: column '{answer_col}' (the answer) is empty")
        if kind == "choice":
            texts = [_option_text(gold, answer_col, location)] + [
                _option_text(row.get(c), c, location) for c in incorrect]
            permutation = list(range(4))
            random.Random(f"{job.shuffle_seed}:{pid}").shuffle(permutation)
            options = [texts[j] for j in permutation]
            letter = CHOICE_LETTERS[permutation.index(0)]
            body = text.strip() + "\n\n" + "\n".join(f"{L}) {o}" for L, o in zip(CHOICE_LETTERS, options))
            problems.append(Problem(pid, template.replace("{problem}", body), letter, kind, options, permutation))
        else:
            problems.append(Problem(pid, template.replace("{problem}", text.strip()), str(gold).strip(), kind))
    if not problems:
        raise InputError(f"{where}: no problems to evaluate")
    return BENCHMARKS.get(spec.name, Benchmark(spec.name, kind, spec.n)), problems


def _template(job: EvalJob, kind: str) -> str:
    if job.prompt_template:

        text = read_text(job.prompt_template)
        if "{problem}" not in text:
            raise InputError(f"{job.prompt_template}: the prompt template must contain {{problem}}")
        return text
    return CHOICE_TEMPLATE if kind == "choice" else MATH_TEMPLATE
