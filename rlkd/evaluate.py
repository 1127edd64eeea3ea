"""Evaluation: pass@1 and pass@k on AIME24, MATH-500, GPQA-Diamond or any local benchmark file.

``rlkd eval --model PATH_OR_NAME --benchmark NAME`` samples ``n`` completions per problem, grades them
with :mod:`rlkd.answers` (the same functions the training ``accuracy`` reward calls), and writes, in the
output folder:

- ``generations.jsonl``: the cache, one line per (problem id, sample index), appended and flushed as
  samples are generated; a re-run generates only what is missing (a torn last line is cut off);
- ``samples.jsonl``: every sample graded (completion, extracted answer, correct, length in tokens);
- ``problems.jsonl``: per problem the prompt, the gold answer, the option order (GPQA) and c of n;
- ``summary.json`` and a printed table: pass@1 with n beside it, pass@k for k = 1, 2, 4, ... up to n
  (and n) with the unbiased estimator :func:`pass_at_k`, mean completion length;
- ``pass_at_k.png``: pass@k against k.

``rlkd eval --compare DIR1 DIR2 ...`` puts several such runs side by side in one markdown table and one
plot.

Protocol (SPEC section 6, lighteval 0.9.0 as open-r1 and the authors used it): the model's chat template,
no system prompt, temperature 0.6, top_p 0.95, up to 32768 new tokens, n = 64 (AIME24), 4 (MATH-500),
8 (GPQA-Diamond); every one of these is an option. How this departs from it:

1. The instruction put before each problem is our own wording; it asks for the same things (the final
   answer in ``\\boxed{}`` on the last line; for multiple choice a last line ``Answer: LETTER``).
   ``--prompt-template`` takes any other wording, e.g. lighteval's own.
2. Grading follows lighteval 0.9.0 (``--grading lighteval``, the default): math-verify reads the whole
   reply and the gold with the extraction targets, priorities and fallback lighteval gives AIME24 and
   MATH-500, and GPQA's letter is read with lighteval's letter rules (:mod:`rlkd.answers` lists what
   still differs, and why). ``--grading reward`` grades with the training ``accuracy`` reward's rules
   instead. ``rlkd grade`` regrades completions made by any harness with the same code.
3. GPQA options are shuffled per question with a seed derived from ``--shuffle-seed`` and the question
   id, and the permutation is recorded, so a run is reproducible and auditable.
4. Sampling is seeded per batch (transformers) or per sample (vLLM) from ``--seed``; with transformers
   a resumed run draws different batches than an uninterrupted one would, so its samples differ, but
   they come from the same distribution.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import statistics
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from rlkd.errors import InputError
from rlkd.files import atomic_write_jsonl, atomic_write_text, iter_jsonl, read_done_ids, read_text

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
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k).

    Computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which stays exact in floating point for any
    n (no huge binomials).

    >>> pass_at_k(4, 2, 1), round(pass_at_k(4, 2, 2), 6), pass_at_k(4, 0, 3), pass_at_k(4, 2, 3)
    (0.5, 0.833333, 0.0, 1.0)
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be at least 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be between 0 and n={n}, got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be between 1 and n={n}, got k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to ``n``, and ``n`` itself: the k at which pass@k is reported."""
    ks = [1 << e for e in range(max(n, 1).bit_length()) if 1 << e <= n]
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


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

    model: str
    benchmark: str
    data: str | None = None
    output: str | None = None
    problem_column: str | None = None
    answer_column: str | None = None
    id_column: str | None = None
    incorrect_columns: str | None = None
    kind: str = "auto"
    split: str | None = None
    n: int | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    limit: int | None = None
    seed: int = 0
    shuffle_seed: int = 0
    system_prompt: str | None = None
    prompt_template: str | None = None
    engine: str = "transformers"
    batch_size: int | None = None
    device: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    grade_timeout: float = 5.0
    grading: str = "lighteval"


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
    from rlkd.data import Records

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


# --------------------------------------------------------------------------------------------------
# Generation, cached


def _read_cache(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Cached generations by (problem id, sample index); a torn last line is cut off the file."""
    if not path.exists():
        return {}
    read_done_ids(path)  # repairs a torn last line left by a kill (and checks every other line)
    cache: dict[tuple[str, int], dict[str, Any]] = {}
    for number, obj in iter_jsonl(path):
        if "sample" not in obj or "completion" not in obj:
            raise InputError(f"{path}:{number}: not a generation record (needs id, sample, completion)")
        cache[(str(obj["id"]), int(obj["sample"]))] = obj
    return cache


def _seed_for(seed: int, *parts: Any) -> int:
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode("utf-8")) & 0x7FFFFFFF


class _TransformersEngine:
    """Generation with transformers through :class:`rlkd.backends.TransformersBackend` (chat template,
    left padding, batches); one request per sample so each sample has its own token count."""

    def __init__(self, job: EvalJob):
        from rlkd.backends import TransformersBackend

        try:
            self.backend = TransformersBackend(job.model, batch_size=job.batch_size or 8,
                                               device=job.device, dtype=job.dtype)
        except OSError as exc:
            raise InputError(f"cannot load model {job.model!r}: {exc}") from None
        self.batch_size = self.backend.batch_size
        self.args = job

    def generate(self, batch: list[tuple[Problem, int]]) -> list[dict[str, Any]]:
        from rlkd.backends import GenerationRequest

        a = self.args
        seed = _seed_for(a.seed, batch[0][0].id, batch[0][1])  # one seed for the batch: one generate call
        requests = [GenerationRequest.chat(_messages(a, p), max_tokens=a.max_new_tokens, temperature=a.temperature,
                                           top_p=a.top_p, n=1, seed=seed) for p, _ in batch]
        out = []
        for completion in self.backend.generate_sync(requests):
            if completion.error:
                out.append({"error": completion.error})
            else:
                out.append({"completion": completion.text, "completion_tokens": completion.completion_tokens,
                            "truncated": completion.completion_tokens >= a.max_new_tokens})
        return out


class _VllmEngine:
    """Generation with vLLM's offline ``LLM`` (imported only when chosen), seeded per sample."""

    def __init__(self, job: EvalJob):
        try:
            import vllm
        except ImportError:
            raise InputError("--engine vllm needs vLLM, which is not installed here: pip install vllm "
                           "(on a CUDA machine), or use --engine transformers") from None
        from rlkd.models import ModelFileError, resolve_model

        self.vllm = vllm
        try:
            model = resolve_model(job.model)  # a .gguf file: its converted folder
        except ModelFileError as exc:
            raise InputError(f"cannot load model {job.model!r}: {exc}") from None
        kwargs: dict[str, Any] = {"model": model, "seed": job.seed, "dtype": job.dtype,
                                  "tensor_parallel_size": job.tensor_parallel_size}
        if job.max_model_len:
            kwargs["max_model_len"] = job.max_model_len
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.batch_size = job.batch_size or 512
        self.args = job

    def generate(self, batch: list[tuple[Problem, int]]) -> list[dict[str, Any]]:
        a = self.args
        # token ids, rendered exactly as the transformers engine does (no second BOS added by vLLM)
        prompts = [{"prompt_token_ids": self.tokenizer(
            self.tokenizer.apply_chat_template(_messages(a, p), tokenize=False, add_generation_prompt=True),
            add_special_tokens=False)["input_ids"]} for p, _ in batch]
        params = [self.vllm.SamplingParams(temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_new_tokens,
                                           n=1, seed=_seed_for(a.seed, p.id, s)) for p, s in batch]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        out = []
        for result in outputs:
            sample = result.outputs[0]
            out.append({"completion": sample.text, "completion_tokens": len(sample.token_ids),
                        "truncated": sample.finish_reason == "length"})
        return out


def _messages(job: EvalJob, problem: Problem) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": job.system_prompt}] if job.system_prompt else []
    return messages + [{"role": "user", "content": problem.prompt}]


def generate_missing(job: EvalJob, problems: list[Problem], n: int, out_dir: Path) -> dict[str, int]:
    """Generate every (problem, sample) not yet in ``generations.jsonl``, appending as batches finish."""
    from tqdm.auto import tqdm

    path = out_dir / "generations.jsonl"
    cache = _read_cache(path)
    todo, stale = [], 0
    for p in problems:
        for s in range(n):
            cached = cache.get((p.id, s))
            if cached is not None and cached.get("prompt_hash") == p.prompt_hash:
                continue
            stale += cached is not None
            todo.append((p, s))
    counts = {"reused": len(problems) * n - len(todo), "generated": 0, "failed": 0, "stale": stale}
    if stale:
        log.warning("%d cached generations were made for a different prompt; generating them again", stale)
    if not todo:
        return counts
    engine = _VllmEngine(job) if job.engine == "vllm" else _TransformersEngine(job)
    failures: list[str] = []
    with open(path, "a", encoding="utf-8") as handle, \
            tqdm(total=len(todo), desc=f"generating ({job.engine})", unit="sample", dynamic_ncols=True) as bar:
        for start in range(0, len(todo), engine.batch_size):
            batch = todo[start:start + engine.batch_size]
            for (p, s), result in zip(batch, engine.generate(batch)):
                if "error" in result:
                    counts["failed"] += 1
                    failures.append(result["error"])
                    continue
                record = {"id": p.id, "sample": s, "prompt_hash": p.prompt_hash, **result}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["generated"] += 1
            handle.flush()
            bar.update(len(batch))
            bar.set_postfix(failed=counts["failed"], refresh=False)
    if failures:
        log.warning("%d samples failed to generate (first reason: %s); a re-run retries them",
                    len(failures), failures[0])
    return counts


# --------------------------------------------------------------------------------------------------
# Grading and summaries


def grade_samples(problems: list[Problem], cache: dict[tuple[str, int], dict[str, Any]], n: int,
                  timeout_s: float, protocol: str = "lighteval") -> list[dict[str, Any]]:
    """One graded record per cached (problem, sample) of this run, by :func:`rlkd.answers.grade_all`
    under ``protocol`` (``lighteval``, the default, or ``reward``: see :mod:`rlkd.answers`)."""
    from rlkd.answers import grade_all

    todo = [(p, s, cache[(p.id, s)]) for p in problems for s in range(n)
            if (p.id, s) in cache and cache[(p.id, s)].get("prompt_hash") == p.prompt_hash]
    if not todo:
        return []
    kind = problems[0].kind  # load_problems gives every problem of a run the same kind
    grades = grade_all([(gen["completion"], p.gold) for p, _, gen in todo], kind=kind, protocol=protocol,
                       timeout_s=timeout_s, progress="grading")
    return [{"id": p.id, "sample": s, "gold": p.gold, "answer": g.answer, "correct": g.correct, "reason": g.reason,
             "completion_tokens": gen.get("completion_tokens"), "truncated": gen.get("truncated"),
             "completion": gen["completion"]} for (p, s, gen), g in zip(todo, grades)]


def summarize(problems: list[Problem], records: list[dict[str, Any]]) -> dict[str, Any]:
    """pass@k for k = 1, 2, 4, ... n (and n), pass@1's standard error over problems, mean length.

    Problems whose gold answer cannot be read are left out of every metric and listed. When problems have
    different sample counts (failed generations), n is the smallest and pass@k uses each problem's own.
    """
    by_problem: dict[str, list[dict[str, Any]]] = {p.id: [] for p in problems}
    for r in records:
        by_problem[r["id"]].append(r)
    counts: dict[str, tuple[int, int]] = {}
    ungradable = []
    for pid, rs in by_problem.items():
        if not rs:
            continue
        if any(r["correct"] is None for r in rs):
            ungradable.append(pid)
            continue
        counts[pid] = (len(rs), sum(bool(r["correct"]) for r in rs))
    summary: dict[str, Any] = {"problems": len(problems), "graded_problems": len(counts),
                               "ungradable_problems": ungradable,
                               "missing_problems": [pid for pid, rs in by_problem.items() if not rs]}
    n = min((ni for ni, _ in counts.values()), default=0)
    summary["n"] = n
    summary["samples"] = sum(ni for ni, _ in counts.values())
    if counts:
        pass_k = {}
        for k in ks_up_to(n):
            pass_k[str(k)] = statistics.fmean(pass_at_k(ni, ci, k) for ni, ci in counts.values())
        summary["pass_at_k"] = pass_k
        per_problem = [ci / ni for ni, ci in counts.values()]
        summary["pass_at_1_stderr"] = (statistics.stdev(per_problem) / math.sqrt(len(per_problem))
                                       if len(per_problem) > 1 else None)
    else:
        summary["pass_at_k"] = {}
        summary["pass_at_1_stderr"] = None
    lengths = [r["completion_tokens"] for r in records if isinstance(r.get("completion_tokens"), int)]
    summary["mean_completion_tokens"] = statistics.fmean(lengths) if lengths else None
    summary["truncated_share"] = (statistics.fmean(bool(r.get("truncated")) for r in records) if records else None)
    summary["no_answer_share"] = (statistics.fmean(r["answer"] is None for r in records) if records else None)
    summary["per_problem"] = {pid: {"n": ni, "correct": ci} for pid, (ni, ci) in counts.items()}
    return summary


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table of one run: pass@k rows with n beside each number, then lengths."""
    n = summary["n"]
    lines = [f"{summary['benchmark']} | model {summary['model']} | {summary['graded_problems']} problems graded "
             f"of {summary['problems']} | n={n} samples per problem"]
    if summary.get("ungradable_problems"):
        lines.append(f"  left out (gold answer unreadable): {', '.join(summary['ungradable_problems'][:10])}")
    lines.append(f"  {'metric':<12} {'value':>8}")
    stderr = summary.get("pass_at_1_stderr")
    for k, value in summary["pass_at_k"].items():
        extra = f"  (n={n}" + (f", stderr {stderr:.3f})" if k == "1" and stderr is not None else ")")
        lines.append(f"  pass@{k:<7} {value:>8.3f}{extra}")
    lines.append(f"  {'mean length':<12} {_fmt(summary['mean_completion_tokens'], 1):>8}  tokens per completion")
    lines.append(f"  {'truncated':<12} {_fmt(summary['truncated_share']):>8}  share that hit --max-new-tokens")
    lines.append(f"  {'no answer':<12} {_fmt(summary['no_answer_share']):>8}  share with no extractable answer")
    return "\n".join(lines)


def plot_pass_at_k(runs: Sequence[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    """pass@k against k (log2 axis), one line per run, labelled with n."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, summary in runs:
        points = sorted((int(k), v) for k, v in summary["pass_at_k"].items())
        if points:
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{label} (n={summary['n']})")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for _, summary in runs for k in summary["pass_at_k"]})
    if ticks:
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole file atomically (temp file then rename), so a kill never leaves half of it."""
    atomic_write_jsonl(path, records)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# rlkd eval


# Settings that change what a cached generation means: a resumed run must use the same ones.
_CACHE_SETTINGS = ("model", "benchmark", "data", "temperature", "top_p", "max_new_tokens", "system_prompt", "seed")


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / "settings.json"
    if path.exists() and (out_dir / "generations.jsonl").exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable ({exc}); remove it to start over") from None
        diff = [k for k in _CACHE_SETTINGS if old.get(k) != settings.get(k)]
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
            raise InputError(f"{out_dir} holds generations made with other settings ({shown}). Use another "
                           "--output, or delete the folder to start over")
    _write_json(path, settings)


def default_output(model: str, benchmark: str) -> Path:
    """``eval_results/<benchmark>__<model name>``."""
    model_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model.rstrip("/")).name or model)
    bench = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(benchmark).stem if benchmark not in BENCHMARKS else benchmark)
    return Path("eval_results") / f"{bench}__{model_name}"


def run_eval(job: EvalJob) -> dict[str, Any]:
    """Generate what is missing, grade, and write samples, problems, summary and plot; the summary."""
    from rlkd.answers import STATS

    if job.temperature < 0 or not 0 < job.top_p <= 1:
        raise InputError("--temperature must be >= 0 and --top-p in (0, 1]")
    if job.max_new_tokens < 1 or (job.n is not None and job.n < 1) or (job.limit is not None and job.limit < 1):
        raise InputError("--max-new-tokens, --n and --limit must be at least 1")
    spec, problems = load_problems(job)
    n = job.n or spec.n
    if job.temperature == 0 and n > 1:
        log.warning("temperature 0 is greedy: the %d samples per problem will be identical", n)
    out_dir = Path(job.output) if job.output else default_output(job.model, job.benchmark)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(job, k) for k in
                ("model", "benchmark", "data", "temperature", "top_p", "max_new_tokens", "system_prompt", "seed",
                 "shuffle_seed", "engine", "batch_size", "limit", "prompt_template", "grading")}
    settings["n"] = n
    _check_settings(out_dir, settings)
    counts = generate_missing(job, problems, n, out_dir)
    stats_before = dict(STATS)
    cache = _read_cache(out_dir / "generations.jsonl")
    records = grade_samples(problems, cache, n, job.grade_timeout, job.grading)
    _write_jsonl(out_dir / "samples.jsonl", records)
    correct: dict[str, list[bool | None]] = {}
    for r in records:
        correct.setdefault(r["id"], []).append(r["correct"])
    _write_jsonl(out_dir / "problems.jsonl", (
        {**asdict(p), "n": len(correct.get(p.id, [])), "correct": sum(bool(c) for c in correct.get(p.id, []))}
        for p in problems))
    summary = {"benchmark": spec.name, "model": job.model, "kind": problems[0].kind, **summarize(problems, records),
               "generation": counts, "grading": {k: STATS[k] - stats_before.get(k, 0) for k in STATS},
               "settings": settings}
    _write_json(out_dir / "summary.json", summary)
    plot_pass_at_k([(Path(job.model.rstrip("/")).name or job.model, summary)], out_dir / "pass_at_k.png",
                   f"{spec.name}: pass@k")
    return summary | {"output": str(out_dir)}


# --------------------------------------------------------------------------------------------------
# rlkd eval --compare


def compare_runs(dirs: Sequence[str], out_dir: Path) -> str:
    """One markdown table and one pass@k plot for several result folders; returns the table."""
    runs: list[tuple[str, dict[str, Any]]] = []
    for d in dirs:
        path = Path(d) / "summary.json"
        if not path.exists():
            raise InputError(f"{d}: no summary.json (not an rlkd eval output folder, or the run has not finished)")
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        runs.append((Path(d).name, summary))
    ks = sorted({int(k) for _, s in runs for k in s.get("pass_at_k", {})})
    header = ["run", "benchmark", "model", "problems", "n"] + [f"pass@{k}" for k in ks] + ["mean tokens"]
    rows = [header, ["---"] * len(header)]
    for label, s in runs:
        pk = s.get("pass_at_k", {})
        rows.append([label, s.get("benchmark", "?"), str(s.get("model", "?")), str(s.get("graded_problems", "?")),
                     str(s.get("n", "?"))] + [_fmt(pk.get(str(k))) for k in ks]
                    + [_fmt(s.get("mean_completion_tokens"), 1)])
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    table += "\n\nEach pass@k is the unbiased estimate from n samples per problem (n in its row; '-' where k > n)."
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(table + "\n", encoding="utf-8")
    benchmarks = sorted({s.get("benchmark", "?") for _, s in runs})
    plot_pass_at_k(runs, out_dir / "compare_pass_at_k.png", f"{', '.join(benchmarks)}: pass@k")
    return table + f"\n\nwritten: {out_dir / 'compare.md'}, {out_dir / 'compare_pass_at_k.png'}"
