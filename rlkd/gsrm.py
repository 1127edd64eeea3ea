"""The GSRM decomposer: rewrite a reasoning trace into meta-reasoning / sub-problem / answer steps.

The Generative Structure Reward Model (SPEC section 1) is any chat LLM behind a
:class:`~rlkd.backends.Backend`. :class:`Decomposer` builds its prompt from a problem and a reasoning
trace, decodes greedily, and parses the reply with :func:`rlkd.structure.parse_decomposition`.
``rlkd decompose`` runs it over a JSONL file (typically the teacher's traces, once, offline), resuming
where an interrupted run stopped; its loop, :func:`decompose_resumably` (batches, output appended and
flushed line by line, failure budget, progress bar), also runs ``rlkd data gsrm`` and ``rlkd data rlkd``.

The prompt. One file per domain in ``rlkd/prompts/gsrm_<domain>.txt`` (math, code, science, puzzle):
a short instruction and one worked example in the SPEC section 2 format, written for this project,
followed by the request. Sections start with a line ``=== system ===``, ``=== user ===`` or
``=== assistant ===``; ``{problem}`` and ``{reasoning}`` in the last section are filled in (nothing else
in the text is treated as a placeholder, so LaTeX braces are safe). ``few_shot=False`` drops the
example turns, for a GSRM fine-tuned on the bare instruction.

The input. Only the reasoning before the first ``</think>`` is decomposed, with ``<think>`` tags removed;
a trace with no ``</think>`` (e.g. cut off by the length limit) is used whole, and the result notes it.

The truncation rule. A trace longer than ``max_trace_chars`` characters (default 24,000, about 6-8k
tokens) keeps its first two thirds of the budget and its last third, with the line
``[... N characters of the reasoning omitted ...]`` between them, and the result is flagged
``truncated``. The head gets more because the structure reward only credits the matching prefix of
steps (the gate, SPEC section 3); the tail keeps the final answer. The marker is not counted in the
budget, and the problem statement is never cut.

How this departs from the authors' code:

1. Our own prompts, one per domain, whose labels are the ones the parser reads (theirs asked for
   ``[Meat-reasoning]`` but their reward looked for ``[sub-think]``, silently zeroing rewards).
2. Greedy decoding, so a trace always gets the same decomposition; the teacher's traces are decomposed
   once, offline, and carried in the data instead of once per generation at every step.
3. Long traces are cut by the documented rule above instead of failing at the server.
4. A backend failure is an ``error`` on that item (counted; the CLI stops when failures pass a share)
   instead of an endless retry or a silent empty structure.
5. :meth:`Decomposer.decompose_stream` streams the reply, so the structure reward can stop the GSRM
   once the reward is decided (early exit); the result then says ``stopped`` and holds the prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from rlkd.backends import Completion, FailureBudget, GenerationRequest, TooManyFailures
from rlkd.errors import InputError
from rlkd.files import JsonlWriter, OutputLock, atomic_write_text, check_output_path, id_key, iter_jsonl, read_done_ids
from rlkd.recipes import option
from rlkd.structure import Decomposition, parse_decomposition
from rlkd.templates import DOMAINS, load_prompt
from rlkd.testbed import rule_decompose


log = logging.getLogger("rlkd.gsrm")

DEFAULT_MAX_TRACE_CHARS = 24_000
DEFAULT_MAX_TOKENS = 2048
HEAD_SHARE = 2 / 3  # of the trace budget kept from the start; the rest comes from the end
OMISSION_MARKER = "\n\n[... {n} characters of the reasoning omitted ...]\n\n"

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# Preparing a trace


def split_reasoning(text: str) -> tuple[str, bool]:
    """The reasoning part of a completion: the text before the first ``</think>``, ``<think>`` removed.

    Returns ``(reasoning, found_end)``; without a ``</think>`` the whole text is the reasoning.

    >>> split_reasoning("<think>\\nx = 2\\n</think>\\n<answer>2</answer>")
    ('x = 2', True)
    """
    m = _THINK_CLOSE.search(text)
    reasoning = text[: m.start()] if m else text
    return _THINK_OPEN.sub("", reasoning).strip(), m is not None


def truncate_trace(text: str, max_chars: int) -> tuple[str, bool]:
    """Apply the truncation rule: keep the head (2/3 of the budget) and the tail, marker in between.

    >>> truncate_trace("abcdefghij" * 3, 9)
    ('abcdef\\n\\n[... 21 characters of the reasoning omitted ...]\\n\\nhij', True)
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    head = int(max_chars * HEAD_SHARE)
    tail = max_chars - head
    omitted = len(text) - head - tail
    return text[:head] + OMISSION_MARKER.format(n=omitted) + (text[-tail:] if tail else ""), True


def build_prompt(problem: str, reasoning: str, domain: str = "math", *,
                 max_trace_chars: int = DEFAULT_MAX_TRACE_CHARS, few_shot: bool = True) -> list[dict[str, str]]:
    """The GSRM chat messages for one problem and trace (``</think>`` handling and truncation applied)."""
    return _prepare(problem, reasoning, domain, max_trace_chars, few_shot)[0]


def sft_example(problem: str, reasoning: str, decomposition: Decomposition, domain: str = "math", *,
                max_trace_chars: int = DEFAULT_MAX_TRACE_CHARS, few_shot: bool = False) -> dict[str, Any]:
    """One chat SFT example for the GSRM: ``prompt``, the messages :func:`build_prompt` makes (without the
    worked example by default, as a fine-tuned GSRM is then prompted), and ``completion``, the assistant
    message holding ``decomposition`` written canonically. ``rlkd data gsrm``, ``rlkd data tiny`` and the
    demo build their GSRM training rows with it."""
    return {"prompt": build_prompt(problem, reasoning, domain, max_trace_chars=max_trace_chars, few_shot=few_shot),
            "completion": [{"role": "assistant", "content": decomposition.render()}]}


def _prepare(problem: str, reasoning: str, domain: str, max_trace_chars: int,
             few_shot: bool) -> tuple[list[dict[str, str]], bool, list[str]]:
    notes = []
    trace, found_end = split_reasoning(reasoning)
    if not found_end:
        notes.append("no </think> in the reasoning: the whole text was decomposed")
    trace, truncated = truncate_trace(trace, max_trace_chars)
    if truncated:
        notes.append(f"reasoning cut to {max_trace_chars} characters (head and tail kept)")
    return load_prompt(domain).render(problem.strip(), trace, few_shot), truncated, notes


# --------------------------------------------------------------------------------------------------
# The decomposer


@dataclass
class DecomposeResult:
    """One decomposed trace. ``error`` is set when the backend failed (then ``raw`` is empty)."""

    decomposition: Decomposition
    raw: str = ""
    truncated: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: bool = False  # the caller stopped the GSRM early (early exit): ``raw`` is a prefix

    @property
    def status(self) -> str:
        """``ok`` (steps found), ``no_steps`` (the GSRM's text gave none) or ``error`` (backend failure)."""
        if self.error is not None:
            return "error"
        return "ok" if self.decomposition.steps else "no_steps"

    @property
    def reason(self) -> str | None:
        """Why there is no structure: the backend error or the parser's reason (None when ok)."""
        return self.error if self.error is not None else self.decomposition.reason


class Decomposer:
    """Decompose reasoning traces with a GSRM behind a backend (greedy decoding).

    >>> import asyncio
    >>> from rlkd.backends import ScriptedBackend
    >>> gsrm = Decomposer(ScriptedBackend(lambda request: "[Meta-reasoning 1]: a\\n[Sub-problem 1]: b\\n[Answer 1]: c"))
    >>> [r] = asyncio.run(gsrm.decompose([("What is b?", "<think>b is c</think> c")]))
    >>> r.status, r.decomposition.steps[0].answer
    ('ok', 'c')
    """

    def __init__(self, backend, domain: str = "math", max_trace_chars: int = DEFAULT_MAX_TRACE_CHARS,
                 max_tokens: int = DEFAULT_MAX_TOKENS, few_shot: bool = True):
        load_prompt(domain)  # fail now on an unknown domain or a bad prompt file
        self.backend = backend
        self.domain = domain
        self.max_trace_chars = max_trace_chars
        self.max_tokens = max_tokens
        self.few_shot = few_shot
        self.calls = 0  # traces sent to the backend
        self.failures = 0  # backend failures
        self.no_steps = 0  # replies that parsed to no steps

    def request(self, problem: str, reasoning: str, domain: str | None = None):
        """The backend request for one trace, with its truncation flag and notes."""
        messages, truncated, notes = _prepare(problem, reasoning, domain or self.domain,
                                              self.max_trace_chars, self.few_shot)
        return GenerationRequest.chat(messages, max_tokens=self.max_tokens, temperature=0.0), truncated, notes

    async def decompose(self, items: Sequence[tuple[str, str] | tuple[str, str, str | None]],
                        domain: str | None = None) -> list[DecomposeResult]:
        """Decompose ``(problem, reasoning)`` items (or ``(problem, reasoning, domain)``), concurrently.

        Returns one result per item, in order; never raises for one bad item. A trace whose reasoning is
        empty (e.g. a completion that starts with ``</think>``) gets ``no_steps`` without a call.
        """
        results: list[DecomposeResult | None] = [None] * len(items)
        prepared, positions = [], []
        for i, item in enumerate(items):
            if not split_reasoning(item[1])[0]:  # nothing to decompose: no call
                self.no_steps += 1
                results[i] = DecomposeResult(Decomposition(reason="empty reasoning: nothing to decompose"))
                continue
            item_domain = item[2] if len(item) > 2 and item[2] else domain  # type: ignore[misc]
            prepared.append(self.request(item[0], item[1], item_domain))
            positions.append(i)
        completions = await self.backend.generate([p[0] for p in prepared]) if prepared else []
        for i, (_, truncated, notes), completion in zip(positions, prepared, completions):
            self.calls += 1
            if completion.error is not None:
                self.failures += 1
                results[i] = DecomposeResult(Decomposition(reason=f"GSRM call failed: {completion.error}"),
                                             "", truncated, completion.error, notes)
                continue
            raw = completion.text
            decomposition = parse_decomposition(raw)
            if not decomposition.steps:
                self.no_steps += 1
            results[i] = DecomposeResult(decomposition, raw, truncated, None, notes,
                                         completion.prompt_tokens, completion.completion_tokens)
        return results  # type: ignore[return-value]


    async def decompose_stream(self, items: Sequence[tuple[str, str] | tuple[str, str, str | None]],
                               sinks: Sequence[Any], domain: str | None = None) -> list[DecomposeResult]:
        """:meth:`decompose`, streaming each GSRM reply into its sink (``rlkd.backends.StreamSink``) so a
        consumer can read the steps as they come and stop the generation once it has what it needs.

        A result whose generation was stopped has ``stopped`` set; its ``raw`` is the text generated
        until then and its ``decomposition`` the parse of that prefix. An item with nothing to decompose
        makes no call: its sink is finished at once with an empty completion (and, when the sink has a
        ``student`` attribute, the no-steps decomposition in it).
        """
        results: list[DecomposeResult | None] = [None] * len(items)
        prepared, positions = [], []
        for i, item in enumerate(items):
            if not split_reasoning(item[1])[0]:
                self.no_steps += 1
                results[i] = DecomposeResult(Decomposition(reason="empty reasoning: nothing to decompose"))
                if hasattr(sinks[i], "student"):
                    sinks[i].student = results[i].decomposition
                sinks[i].finish(Completion(texts=[""]))
                continue
            item_domain = item[2] if len(item) > 2 and item[2] else domain  # type: ignore[misc]
            prepared.append(self.request(item[0], item[1], item_domain))
            positions.append(i)
        completions = await self.backend.generate_stream([p[0] for p in prepared], [sinks[i] for i in positions]) \
            if prepared else []
        for i, (_, truncated, notes), completion in zip(positions, prepared, completions):
            self.calls += 1
            if completion.error is not None:
                self.failures += 1
                results[i] = DecomposeResult(Decomposition(reason=f"GSRM call failed: {completion.error}"),
                                             "", truncated, completion.error, notes,
                                             completion_tokens=completion.completion_tokens)
                continue
            decomposition = parse_decomposition(completion.text)
            if not decomposition.steps and not completion.stopped:
                self.no_steps += 1
            results[i] = DecomposeResult(decomposition, completion.text, truncated, None, notes,
                                         completion.prompt_tokens, completion.completion_tokens,
                                         stopped=completion.stopped)
        return results  # type: ignore[return-value]


class RuleDecomposer:
    """The synthetic testbed's exact rule-based decomposer (:func:`rlkd.testbed.rule_decompose`) behind
    the :class:`Decomposer` interface: an oracle GSRM for testbed data (``structure.decomposer: rule``).

    It reproduces the ground-truth decomposition of every oracle trace and reads a student's imitation
    as well as rules can, with no model call, so a structure reward computed with it separates what the
    method does from what a trained GSRM's errors do. Only meaningful on the testbed's traces.

    >>> import asyncio
    >>> [r] = asyncio.run(RuleDecomposer().decompose([("Find c.", "<think>We want c. c = 2 + 3 = 5.</think>")]))
    >>> r.status, [(s.subproblem, s.answer) for s in r.decomposition.steps]
    ('ok', [('What is c?', '5')])
    """

    def __init__(self) -> None:
        self.calls = 0  # traces decomposed
        self.failures = 0  # always 0: the rules never fail a call
        self.no_steps = 0  # traces with no steps

    async def decompose(self, items: Sequence[tuple[str, str] | tuple[str, str, str | None]],
                        domain: str | None = None) -> list[DecomposeResult]:
        """Decompose ``(problem, reasoning)`` items; one result per item, in order; never raises."""
        results = []
        for item in items:
            self.calls += 1
            decomposition = rule_decompose(item[1])
            if not decomposition.steps:
                self.no_steps += 1
            results.append(DecomposeResult(decomposition, decomposition.render(), False, None, []))
        return results

    async def decompose_stream(self, items: Sequence[tuple[str, str] | tuple[str, str, str | None]],
                               sinks: Sequence[Any], domain: str | None = None) -> list[DecomposeResult]:
        """:meth:`decompose`, each result fed whole to its sink (the rules cost nothing to run to the end)."""
        results = await self.decompose(items, domain)
        for result, sink in zip(results, sinks):
            if hasattr(sink, "student"):  # the rules' own parse, reason included
                sink.student = result.decomposition
            sink.feed(result.raw)
            sink.finish(Completion(texts=[result.raw]))
        return results


# --------------------------------------------------------------------------------------------------
# Resumable runs: the loop of rlkd decompose, rlkd data gsrm and rlkd data rlkd


class WorkItem(NamedTuple):
    """One trace for :func:`decompose_resumably`: its id, the problem, the reasoning, the domain (None:
    the decomposer's) and whatever else the caller's ``write`` needs (``extra``)."""

    id: Any
    problem: str
    reasoning: str
    domain: str | None = None
    extra: Any = None


def decompose_resumably(decomposer: Decomposer, items: Iterable[WorkItem],
                        write: Callable[[WorkItem, DecomposeResult], None], *, batch_size: int, budget: FailureBudget,
                        label: str, total: int, skipped: Callable[[], int], kept_in: str,
                        failure_log: str = "GSRM call failed",
                        retry_no_steps: str = "remove their lines to ask again") -> None:
    """Decompose ``items`` batch by batch, writing as they come back; the loop of every resumable job.

    ``items`` yields the traces still to do (the caller skips the ids :func:`read_done_ids` found, and
    may raise :class:`~rlkd.errors.InputError` at a bad input line: batches already written stay). For each
    result, in input order, ``write(item, result)`` writes the record or the failure line and counts it;
    for a backend failure (status ``error``) it writes nothing, so the next run retries the item, and the
    failure is logged here as ``id <id>: <failure_log>: <error>``. Every result is then recorded in
    ``budget``, after writing, so a stop loses nothing already done. At the end the budget is finished and
    the backend closed. The progress bar ``label`` counts ``total`` input records, the ``skipped()`` ones
    included. Raises InputError when failures pass the budget, saying that what was written is kept in
    ``kept_in`` and what a rerun will do (:func:`rerun_advice`; ``retry_no_steps`` says how to ask again
    for traces whose reply had no steps).
    """
    from tqdm.auto import tqdm

    backend = decomposer.backend
    tally = {"ok": 0, "no_steps": 0, "error": 0}
    bar = tqdm(total=total, desc=label, unit="rec", dynamic_ncols=True)

    def advance() -> None:
        stats = backend.stats
        bar.update(skipped() + sum(tally.values()) - bar.n)
        bar.set_postfix(tokens=stats.prompt_tokens + stats.completion_tokens, failed=tally["error"],
                        unparsable=tally["no_steps"], refresh=False)

    async def run() -> None:
        try:
            for batch in _batched(items, batch_size):
                results = await decomposer.decompose([(item.problem, item.reasoning, item.domain)
                                                      for item in batch])
                for item, result in zip(batch, results):
                    tally[result.status] += 1
                    if result.status == "error":
                        log.warning("id %s: %s: %s", id_key(item.id), failure_log, result.error)
                    write(item, result)
                advance()
                # after writing, so a stop loses nothing already done; the whole batch is counted
                budget.record_many([(result.status == "ok", result.reason or "") for result in results])
            advance()  # records skipped after the last batch
            budget.finish()
        finally:  # closed on the loop that used it
            await backend.aclose()

    try:
        asyncio.run(run())
    except TooManyFailures as exc:
        unsent = max(total - skipped() - sum(tally.values()), 0)
        raise InputError(f"stopped: {exc}. Everything written so far is kept in {kept_in}; "
                       f"{rerun_advice(tally['error'], tally['no_steps'], unsent, retry_no_steps)}") from None
    finally:
        bar.close()


def rerun_advice(failed: int, no_steps: int, unsent: int,
                 retry_no_steps: str = "remove their lines to ask again") -> str:
    """What running the same command again will do, truthfully: it retries the failed calls and sends what
    was not reached; it does not ask again for traces whose reply had no steps (they were written).

    >>> rerun_advice(2, 0, 5)
    '2 traces whose call failed were not written: fix the cause, then the same command again retries them; a rerun continues with the 5 input records not reached yet'
    """
    parts = []
    if failed:
        parts.append(f"{failed} trace{'s' if failed != 1 else ''} whose call failed {'were' if failed != 1 else 'was'} "
                     "not written: fix the cause, then the same command again retries them")
    if no_steps:
        parts.append(f"{no_steps} whose GSRM reply had no steps {'were' if no_steps != 1 else 'was'} written with the "
                     f"reason and a rerun does not ask again for them (see 'reason'; fix the prompt or the GSRM, then "
                     f"{retry_no_steps})")
    if unsent:
        parts.append(f"a rerun continues with the {unsent} input record{'s' if unsent != 1 else ''} not reached yet")
    return "; ".join(parts) or "nothing is left for a rerun to do"


def _batched(items: Iterable[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    batch: list[WorkItem] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------
# rlkd decompose (the job; its options: rlkd.cli.decompose)


@dataclass
class DecomposeJob:
    """What ``rlkd decompose`` does, as a library call (:func:`decompose_file`): decompose each line of the
    JSONL ``input`` into ``output`` (appended to; ids already there are skipped, so a rerun resumes).
    The command line's options have these names and defaults."""

    input: str = option(MISSING, "input JSONL file", metavar="IN.jsonl")
    output: str = option(MISSING, "output JSONL file (appended to)", metavar="OUT.jsonl")
    domain: str = option("math", "prompt domain", DOMAINS)
    domain_column: str | None = option(None, "take each line's domain from this column instead (lines without "
                                       "it use --domain)", metavar="COL")
    prompt_file: str | None = option(None, "use this prompt file instead of the packaged one for --domain "
                                     "(format: see rlkd/prompts/gsrm_math.txt)", metavar="FILE")
    zero_shot: bool = option(False, "drop the worked example from the prompt (for a GSRM fine-tuned on the "
                             "instruction)")
    problem_column: str = option("problem", "column holding the problem text", metavar="COL")
    reasoning_column: str = option("reasoning", "column holding the trace; only the text before </think> is used", metavar="COL")
    id_column: str | None = option("id", "id column; lines without it get their line number", metavar="COL")
    batch_size: int = option(64, "lines sent together and written when all are back; keep it a few times "
                             "--concurrency")
    max_trace_chars: int = option(DEFAULT_MAX_TRACE_CHARS, "longer traces keep their first 2/3 and last 1/3 of "
                                  "this many characters, with a marker between (0 = never cut)")
    max_tokens: int = option(DEFAULT_MAX_TOKENS, "most tokens the GSRM may write per trace")
    max_failure_share: float = option(0.2, "stop when more than this share of lines failed (backend error or no "
                                      "steps), checked once --min-failures lines were sent and again at the end")
    min_failures: int = option(10, "lines sent before the failure share is first checked (the name is "
                               "historical: it counts lines, failed or not)")
    retry_no_steps: bool = option(False, "first remove the output's records whose GSRM reply had no steps (the "
                                  "file is rewritten at once), so this run asks again for them, e.g. after "
                                  "fixing the prompt (an unchanged prompt and model answer again from the cache, "
                                  "the same way)")


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _work_items(args: DecomposeJob, done: set[str], counts: dict[str, int]) -> Iterator[WorkItem]:
    """Input lines still to do; checks columns and duplicate ids on the way."""
    seen: set[str] = set()
    for number, obj in iter_jsonl(args.input):
        where = f"{args.input}:{number}"
        item_id = obj.get(args.id_column, number) if args.id_column else number
        key = id_key(item_id)
        if key in seen:
            raise InputError(f"{where}: id {item_id!r} appears twice in the input")
        seen.add(key)
        for column in (args.problem_column, args.reasoning_column):
            if not isinstance(obj.get(column), str):
                got = "missing" if column not in obj else f"a {type(obj[column]).__name__}, not text"
                raise InputError(f"{where}: column '{column}' is {got}")
        if args.domain_column and obj.get(args.domain_column) not in (None, *DOMAINS):
            raise InputError(f"{where}: column '{args.domain_column}' is {obj[args.domain_column]!r}; "
                           f"expected one of {', '.join(DOMAINS)}")
        if key in done:
            counts["skipped"] += 1
            continue
        yield WorkItem(item_id, obj[args.problem_column], obj[args.reasoning_column],
                       obj.get(args.domain_column) if args.domain_column else None)


def check_decompose_job(args: DecomposeJob) -> str:
    """Validate a :class:`DecomposeJob` (an InputError names the option); returns the prompt (domain name or file)."""
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if not 0.0 <= args.max_failure_share <= 1.0:
        raise InputError("--max-failure-share must be between 0 and 1")
    if args.max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.max_trace_chars < 0:
        raise InputError(f"--max-trace-chars must be 0 (never cut) or more, got {args.max_trace_chars}")
    if args.min_failures < 1:
        raise InputError(f"--min-failures must be at least 1, got {args.min_failures}")
    if Path(args.input).is_dir():
        raise InputError(f"{args.input}: is a folder, not a JSONL file")
    if not Path(args.input).is_file():
        raise InputError(f"{args.input}: no such file")

    check_output_path(args.output, "--output", same_as=[args.input])
    if args.prompt_file and not Path(args.prompt_file).is_file():
        raise InputError(f"{args.prompt_file}: no such file")
    prompt = args.prompt_file or args.domain
    try:
        load_prompt(prompt)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return prompt


def decompose_file(args: DecomposeJob, backend) -> dict[str, int]:
    """The work of ``rlkd decompose`` with a given backend (closed at the end); returns counts by status.

    Input lines whose id is already in the output are skipped; each batch's records are appended and
    flushed before the next batch starts; lines whose backend call failed are not written (a re-run
    retries them). Raises InputError when failures pass ``--max-failure-share``, after writing what came
    back.
    """
    prompt = check_decompose_job(args)
    output = Path(args.output)
    with OutputLock(output):  # a second writer of this output is refused, not interleaved
        return _decompose_locked(args, backend, prompt, output)


def _drop_no_steps(output: Path) -> int:
    """Rewrite ``output`` (atomically) without its ``no_steps`` records; returns how many were dropped."""
    kept, dropped = [], 0
    for line in output.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.strip() and json.loads(line).get("status") == "no_steps":
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_text(output, "".join(kept))
    return dropped


def _decompose_locked(args: DecomposeJob, backend, prompt: str, output: Path) -> dict[str, int]:
    earlier: dict[str, int] = {}
    done = read_done_ids(output, fields={str(output): ("status", "structure")}, statuses=earlier)
    if args.retry_no_steps and earlier.get("no_steps"):
        dropped = _drop_no_steps(output)
        log.info("%s: asking again for the %d traces whose reply had no steps", output, dropped)
        earlier = {}
        done = read_done_ids(output, fields={str(output): ("status", "structure")}, statuses=earlier)
    decomposer = Decomposer(backend, domain=prompt, max_trace_chars=args.max_trace_chars,
                            max_tokens=args.max_tokens, few_shot=not args.zero_shot)
    counts = {"ok": 0, "no_steps": 0, "error": 0, "truncated": 0, "skipped": 0}

    with JsonlWriter(output=output) as out:
        def write(item: WorkItem, result: DecomposeResult) -> None:
            counts[result.status] += 1
            counts["truncated"] += result.truncated
            if result.status != "error":
                out.write("output", {"id": item.id, "status": result.status, "reason": result.reason,
                                     "structure": result.decomposition.to_dict(), "raw": result.raw,
                                     "truncated": result.truncated, "notes": result.notes})

        decompose_resumably(decomposer, _work_items(args, done, counts), write, batch_size=args.batch_size,
                            budget=FailureBudget(args.max_failure_share, args.min_failures, what="traces"),
                            label="decompose", total=_count_lines(args.input),
                            skipped=lambda: counts["skipped"], kept_in=str(output),
                            retry_no_steps="run again with --retry-no-steps")
    counts["ok_in_output"] = earlier.get("ok", 0) + counts["ok"]
    counts["records_in_output"] = sum(earlier.values()) + counts["ok"] + counts["no_steps"]
    return counts
