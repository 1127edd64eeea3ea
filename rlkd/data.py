"""Data: reading inputs and building the training sets (the work of ``rlkd data``; its options: :mod:`rlkd.cli.data`).

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
processes only the rest, so every input ends up in exactly one output file exactly once (the loop is
:func:`rlkd.gsrm.decompose_resumably`, the one ``rlkd decompose`` runs). Requests go through the
request cache by default, so a re-run does not pay twice.

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

import json
import random
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rlkd import testbed
from rlkd.backends import Backend, FailureBudget
from rlkd.backends.build import build_backend
from rlkd.backends.config import BackendConfig
from rlkd.config import SYSTEM_PROMPT
from rlkd.errors import ConfigError, InputError
from rlkd.files import JsonlWriter, OutputLock, check_output_path, id_key, iter_jsonl, read_done_ids
from rlkd.gsrm import DecomposeResult, Decomposer, WorkItem, decompose_resumably, sft_example, split_reasoning
from rlkd.models import build_tiny_model, build_tokenizer
from rlkd.templates import DOMAINS, load_prompt

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

    JSONL files are streamed (a bad line raises :class:`~rlkd.errors.InputError` naming it); JSON, parquet,
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
                raise InputError(f"{path}: no such file")
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

    def scan(self, columns: Sequence[str | None]) -> Iterator[tuple[int, dict[str, Any], str]]:
        """Like iterating, but a table reads only ``columns`` (a quick first pass over a large input)."""
        if self._table is None:
            yield from self
            return
        keep = [c for c in dict.fromkeys(columns) if c and c in self._table.column_names]
        for index, row in enumerate(self._table.select_columns(keep)):
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
                    raise InputError(f"{path}: no split {split!r} (has {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded
        if p.is_file():
            kind = {".json": "json", ".parquet": "parquet"}.get(p.suffix)
            if kind is None:
                raise InputError(f"{path}: unknown file type (expected .jsonl, .json or .parquet)")
            return datasets.load_dataset(kind, data_files=str(p), split="train")
        if is_local(path):
            raise InputError(f"{path}: no such file or folder")
        return datasets.load_dataset(path, subset, split=split)
    except InputError:
        raise
    except Exception as exc:  # datasets raises many types; name the input either way
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def first_columns(path: str, split: str = "train", subset: str | None = None) -> list[str] | None:
    """The columns of a local input (None for a hub dataset, which is not opened here)."""
    if not is_local(path):
        return None
    return Records(path, split, subset).columns()


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}, not text"
        raise InputError(f"{where}: column '{column}' is {got}")
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
            raise InputError(f"{where}: column '{data.answer_column}' is missing")
        row = {"prompt": chat_prompt(problem, data.system_prompt), "problem": problem, "answer": str(answer)}
        if need_structure:
            structure = obj.get(data.teacher_structure_column)
            if structure is None:
                raise InputError(f"{where}: column '{data.teacher_structure_column}' is missing (the structure "
                               "reward needs the teacher's decomposition: build the data with rlkd data rlkd)")
            row["teacher_structure"] = structure if isinstance(structure, str) else json.dumps(structure)
        rows.append(row)
    if not rows:
        raise InputError(f"{records.path}: no training rows")
    return rows


def teacher_completion(reasoning: str, solution: str | None, answer: str) -> str:
    """The student-format target ``<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`` for SFT.

    ``reasoning`` may be a whole generation (its text after ``</think>`` then serves as the solution
    when ``solution`` is empty); without any solution text the answer is given as ``\\boxed{answer}``.

    >>> teacher_completion("<think>2+2=4</think>\\n<answer>\\\\boxed{4}</answer>", None, "4")
    '<think>\\n2+2=4\\n</think>\\n<answer>\\n\\\\boxed{4}\\n</answer>'
    """
    thought, found_end = split_reasoning(reasoning)
    tail = reasoning[reasoning.lower().find("</think>") + len("</think>"):].strip() if found_end else ""
    final = (solution or "").strip() or tail or f"\\boxed{{{answer}}}"
    final = final.replace("<answer>", "").replace("</answer>", "").strip()
    return f"<think>\n{thought}\n</think>\n<answer>\n{final}\n</answer>"


def sft_rows(records: Records, data: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """SFT rows. ``format: text`` is plain language modelling on one text column (pretraining a base);
    ``format: chat`` keeps ``messages`` or ``prompt``/``completion`` as they are;
    ``format: traces`` builds a chat ``prompt`` from the problem and a ``completion`` from the teacher's
    reasoning. ``data`` is a :class:`rlkd.config.SFTData`."""
    rows = []
    for index, obj, where in records:
        if limit is not None and index >= limit:
            break
        if data.format == "text":
            text = _text(obj.get(data.text_column), data.text_column, where)
            if data.prompt_column:  # TRL's prompt-completion form: the loss is on the completion only
                rows.append({"prompt": _text(obj.get(data.prompt_column), data.prompt_column, where),
                             "completion": text})
            else:
                rows.append({"text": text})
            continue
        if data.format == "chat":
            if "messages" in obj:
                rows.append({"messages": _messages(obj["messages"], "messages", where)})
            elif "prompt" in obj and "completion" in obj:
                rows.append({"prompt": _messages(obj["prompt"], "prompt", where),
                             "completion": _messages(obj["completion"], "completion", where)})
            else:
                raise InputError(f"{where}: chat data needs a 'messages' column or 'prompt' and 'completion' columns")
            continue
        problem = _text(obj.get(data.problem_column), data.problem_column, where)
        reasoning = _text(obj.get(data.reasoning_column), data.reasoning_column, where)
        answer = obj.get(data.answer_column)
        if answer is None:
            raise InputError(f"{where}: column '{data.answer_column}' is missing")
        solution = obj.get(data.solution_column) if data.solution_column else None
        rows.append({"prompt": chat_prompt(problem, data.system_prompt),
                     "completion": [{"role": "assistant",
                                     "content": teacher_completion(reasoning, solution, str(answer))}]})
    if not rows:
        raise InputError(f"{records.path}: no training rows")
    return rows


def _messages(value: Any, column: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise InputError(f"{where}: column '{column}' must be a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


# --------------------------------------------------------------------------------------------------
# Shared by the data commands (the resumable loop itself is rlkd.gsrm.decompose_resumably)



def _record_id(obj: Mapping[str, Any], index: int, id_column: str | None, where: str,
               seen: set[str] | None = None) -> Any:
    """The record's id (its position without an id column); with ``seen``, a repeated id is an error."""
    if id_column is None:
        return index
    if id_column not in obj or obj[id_column] is None:
        raise InputError(f"{where}: id column '{id_column}' is missing")
    if seen is not None:
        key = id_key(obj[id_column])
        if key in seen:
            raise InputError(f"{where}: id {obj[id_column]!r} appears twice in the input (column '{id_column}')")
        seen.add(key)
    return obj[id_column]


def _backend(config: BackendConfig, cache: str | None, where: str) -> Backend:
    try:
        return build_backend(config, where, cache=cache)
    except ConfigError as exc:
        raise InputError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# rlkd data gsrm


def run_data_gsrm(job: Any, backend: Any = None) -> dict[str, int]:
    """Build the GSRM's SFT data (``job`` is a :class:`rlkd.config.DataGsrmJob`); return counts.

    Each record's ``problem`` and reasoning (the text before ``</think>``) go to the strong LLM with the
    GSRM prompt of its domain; a reply that parses into steps becomes one chat example, ``prompt`` (the
    GSRM prompt, without the worked example unless ``sft_few_shot``) and ``completion`` (the steps,
    written canonically); a reply with no steps goes to the failures file with the parser's reason and
    the raw text. A backend failure is not written, so the next run retries it. ``backend`` overrides
    ``job.backend`` (tests pass a scripted one).
    """
    records = Records(job.input, job.split, job.subset)
    output, failures = Path(job.output), job.failures_path()
    for path, what in ((output, "output"), (failures, "failures")):
        check_output_path(path, what, same_as=[job.input])
    with OutputLock(output):  # a second writer of this output is refused, not interleaved
        done = read_done_ids(output, failures, fields={str(output): ("prompt", "completion"),
                                                       str(failures): ("reason",)})
        return _data_gsrm_locked(job, backend, records, output, failures, done)


def _data_gsrm_locked(job: Any, backend: Any, records: "Records", output: Path, failures: Path,
                      done: set[str]) -> dict[str, int]:
    total = len(records) if job.limit is None else min(job.limit, len(records))
    backend = backend if backend is not None else _backend(job.backend, job.cache_path(), "backend")
    decomposer = Decomposer(backend, domain=job.default_domain, max_trace_chars=job.max_trace_chars,
                            max_tokens=job.max_tokens, few_shot=job.few_shot)
    counts = {"ok": 0, "no_steps": 0, "error": 0, "already_done": 0}

    def todo() -> Iterator[WorkItem]:
        seen: set[str] = set()
        for index, obj, where in records:
            if index >= total:
                break
            record_id = _record_id(obj, index, job.id_column, where, seen)
            problem = _text(obj.get(job.problem_column), job.problem_column, where)
            reasoning = _text(obj.get(job.reasoning_column), job.reasoning_column, where)
            domain = obj.get(job.domain_column) if job.domain_column else None
            if domain is not None and domain not in DOMAINS:
                raise InputError(f"{where}: column '{job.domain_column}' is {domain!r}; expected one of "
                               f"{', '.join(DOMAINS)}")
            if id_key(record_id) in done:
                counts["already_done"] += 1
                continue
            yield WorkItem(record_id, problem, reasoning, domain or job.default_domain)

    with JsonlWriter(output=output, failures=failures) as out:
        def write(item: WorkItem, result: DecomposeResult) -> None:
            counts[result.status] += 1
            if result.status == "no_steps":
                out.write("failures", {"id": item.id, "domain": item.domain, "reason": result.reason,
                                       "raw": result.raw})
            elif result.status == "ok":
                example = sft_example(item.problem, item.reasoning, result.decomposition, item.domain,
                                      max_trace_chars=job.max_trace_chars, few_shot=job.sft_few_shot)
                out.write("output", {"id": item.id, "domain": item.domain, **example,
                                     "steps": len(result.decomposition.steps), "truncated": result.truncated})

        decompose_resumably(decomposer, todo(), write, batch_size=job.batch_size,
                            budget=FailureBudget(job.max_failure_share, job.min_failures, what="traces"),
                            label="data gsrm", total=total, skipped=lambda: counts["already_done"],
                            kept_in=f"{output} and {failures}",
                            failure_log="decomposition request failed (retried by the next run)",
                            retry_no_steps=f"remove their lines from {failures} to ask again")
    return counts


# --------------------------------------------------------------------------------------------------
# rlkd data rlkd


def first_correct(generations: Any, flags: Any, where: str, job: Any) -> int | None:
    """Index of the first generation flagged correct (None if none is); errors name the record."""
    if not isinstance(generations, list) or not all(isinstance(g, str) for g in generations):
        raise InputError(f"{where}: column '{job.generations_column}' must be a list of texts")
    if not isinstance(flags, list):
        raise InputError(f"{where}: column '{job.correctness_column}' must be a list of true/false flags")
    if len(flags) != len(generations):
        raise InputError(f"{where}: {len(generations)} generations but {len(flags)} correctness flags")
    for i, flag in enumerate(flags):
        if flag is True:
            return i
    return None


def test_ids(usable: Sequence[Any], test_size: float, seed: int) -> set[str]:
    """The id keys of the test split: a seeded sample of the usable records (a fraction or a count).

    Depends only on the usable ids, their order and the seed, so a resumed run draws the same split.
    """
    count = round(test_size * len(usable)) if test_size < 1 else min(int(test_size), len(usable))
    chosen = random.Random(seed).sample(range(len(usable)), count)
    return {id_key(usable[i]) for i in chosen}


def run_data_rlkd(job: Any, backend: Any = None) -> dict[str, int]:
    """Build the RLKD train and test sets (``job`` is a :class:`rlkd.config.DataRlkdJob`); return counts.

    A first pass reads only ids and correctness flags to find the usable records (those with a
    generation flagged correct) and draw the test split; the second decomposes the first correct
    generation of each record not yet written with the GSRM and writes it to ``train.jsonl`` or
    ``test.jsonl`` with ``teacher_reasoning`` (the whole generation) and ``teacher_structure`` (the
    steps as GSRM text). Records without a correct generation, or whose decomposition has no steps, go
    to ``skipped.jsonl`` with the reason. A backend failure is not written (the next run retries it).
    """
    records = Records(job.input, job.split, job.subset)
    out = Path(job.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output_dir: {out} is a file, not a folder")
    paths = {"train": out / "train.jsonl", "test": out / "test.jsonl", "skipped": out / "skipped.jsonl"}
    for name, path in paths.items():
        check_output_path(path, f"output_dir's {name}.jsonl", same_as=[job.input])
    with OutputLock(paths["train"]):  # a second writer of this folder is refused, not interleaved
        done = read_done_ids(*paths.values(), fields={str(paths["train"]): ("teacher_structure",),
                                                      str(paths["test"]): ("teacher_structure",),
                                                      str(paths["skipped"]): ("reason",)})
        return _data_rlkd_locked(job, backend, records, out, paths, done)


def _data_rlkd_locked(job: Any, backend: Any, records: "Records", out: Path, paths: dict[str, Path],
                      done: set[str]) -> dict[str, int]:
    total = len(records) if job.limit is None else min(job.limit, len(records))

    usable: list[Any] = []
    seen: set[str] = set()
    for index, obj, where in records.scan([job.id_column, job.correctness_column, job.generations_column]):
        if index >= total:
            break
        record_id = _record_id(obj, index, job.id_column, where, seen)
        flags = obj.get(job.correctness_column)
        gens = obj.get(job.generations_column)
        if first_correct(gens, flags, where, job) is not None:
            usable.append(record_id)
    test = test_ids(usable, job.test_size, job.seed)

    backend = backend if backend is not None else _backend(job.gsrm, job.cache_path(), "gsrm")
    decomposer = Decomposer(backend, domain=job.domain, max_trace_chars=job.max_trace_chars,
                            max_tokens=job.max_tokens, few_shot=job.gsrm_few_shot)
    counts = {"train": 0, "test": 0, "no_correct": 0, "no_steps": 0, "error": 0, "already_done": 0}

    with JsonlWriter(**paths) as writer:
        def todo() -> Iterator[WorkItem]:
            """Records still to do, each with its first correct generation (``extra``: its index)."""
            for index, obj, where in records:
                if index >= total:
                    break
                record_id = _record_id(obj, index, job.id_column, where)
                if id_key(record_id) in done:
                    counts["already_done"] += 1
                    continue
                gens = obj.get(job.generations_column)
                chosen = first_correct(gens, obj.get(job.correctness_column), where, job)
                if chosen is None:
                    counts["no_correct"] += 1
                    writer.write("skipped", {"id": record_id, "reason": "no generation flagged correct in "
                                             f"'{job.correctness_column}'"})
                    continue
                problem = _text(obj.get(job.problem_column), job.problem_column, where)
                if obj.get(job.answer_column) is None:
                    raise InputError(f"{where}: column '{job.answer_column}' is missing")
                yield WorkItem(record_id, problem, gens[chosen], extra=(str(obj[job.answer_column]), chosen))

        def write(item: WorkItem, result: DecomposeResult) -> None:
            if result.status == "error":
                counts["error"] += 1
            elif result.status == "no_steps":
                counts["no_steps"] += 1
                writer.write("skipped", {"id": item.id, "reason": f"GSRM output has no steps: {result.reason}",
                                         "raw": result.raw})
            else:
                split = "test" if id_key(item.id) in test else "train"
                counts[split] += 1
                answer, generation = item.extra
                writer.write(split, {
                    "id": item.id, "problem": item.problem, "answer": answer, "teacher_reasoning": item.reasoning,
                    "teacher_structure": result.decomposition.render(), "teacher_generation": generation,
                    "truncated": result.truncated})

        decompose_resumably(decomposer, todo(), write, batch_size=job.batch_size,
                            budget=FailureBudget(job.max_failure_share, job.min_failures,
                                                 what="teacher decompositions"),
                            label="data rlkd", total=total,
                            skipped=lambda: counts["already_done"] + counts["no_correct"], kept_in=str(out),
                            failure_log="GSRM request failed (retried by the next run)",
                            retry_no_steps=f"remove their lines from {paths['skipped']} to ask again")
    counts["usable"] = len(usable)
    counts["test_target"] = len(test)
    return counts


# --------------------------------------------------------------------------------------------------
# rlkd data tiny


def wrong_generation(trace: str, answer: str) -> str:
    """A teacher generation with a wrong final answer (the tiny OpenR1-style records need some)."""
    return trace.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{int(answer) + 1}}}")


def build_tiny(output_dir: str | Path, *, train: int = 64, test: int = 16, seed: int = 0) -> dict[str, Path]:
    """Build the inputs of ``configs/tiny/``: testbed data in every format the pipelines read, and tiny
    student and GSRM models. Returns the written paths by name.

    - ``tasks_train.jsonl`` / ``tasks_test.jsonl``: rlkd rows (``problem``, ``answer``,
      ``teacher_reasoning``, ``teacher_structure``) for ``train sft`` and ``train grpo``;
    - ``traces.jsonl``: teacher traces (``problem``, ``reasoning``, ``domain``) for ``data gsrm``;
    - ``openr1.jsonl``: OpenR1-Math-style records (``generations`` with ``correctness_math_verify``; the
      first generation is wrong, every eighth record has no correct one) for ``data rlkd``;
    - ``gsrm_sft.jsonl``: the GSRM's chat SFT data as ``data gsrm`` writes it, with the testbed's exact
      decompositions standing in for the strong LLM's;
    - ``student/`` and ``gsrm_base/``: tiny random Llama models sharing one tokenizer trained on all of it.
    """

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_tasks = testbed.generate_tasks(train, "id", seed)
    test_tasks = testbed.generate_tasks(test, "id", seed + 1, exclude=[t.key for t in train_tasks])
    paths = {
        "tasks_train": testbed.write_dataset(train_tasks, out / "tasks_train.jsonl"),
        "tasks_test": testbed.write_dataset(test_tasks, out / "tasks_test.jsonl"),
        "traces": out / "traces.jsonl", "openr1": out / "openr1.jsonl", "gsrm_sft": out / "gsrm_sft.jsonl",
    }
    with open(paths["traces"], "w", encoding="utf-8") as traces, \
            open(paths["openr1"], "w", encoding="utf-8") as openr1, \
            open(paths["gsrm_sft"], "w", encoding="utf-8") as sft:
        for n, task in enumerate(train_tasks):
            answer = str(task.answer)
            traces.write(json.dumps({"id": task.id, "problem": task.problem, "reasoning": task.trace,
                                     "domain": "math"}) + "\n")
            correct = n % 8 != 7
            openr1.write(json.dumps({"uuid": task.id, "problem": task.problem, "answer": answer,
                                     "generations": [wrong_generation(task.trace, answer), task.trace],
                                     "correctness_math_verify": [False, correct]}) + "\n")
            sft.write(json.dumps({"id": task.id, "domain": "math",
                                  **sft_example(task.problem, task.trace, task.decomposition, "math"),
                                  "steps": len(task.decomposition.steps), "truncated": False}) + "\n")
    texts = testbed.corpus(train_tasks) + [SYSTEM_PROMPT] + [text for _, text in load_prompt("math").turns]
    tokenizer = build_tokenizer(texts, vocab_size=1024)
    paths["student"] = build_tiny_model(out / "student", tokenizer=tokenizer, seed=seed)
    paths["gsrm_base"] = build_tiny_model(out / "gsrm_base", tokenizer=tokenizer, seed=seed + 1)
    return paths
