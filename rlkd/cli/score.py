"""``rlkd parse`` and ``rlkd score``: check decompositions and the structure reward by hand, JSON in and out.

``score --completions`` decomposes raw student completions with a GSRM and scores them on the path training
uses (:func:`rlkd.reward_config.build_structure_reward`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterator

from rlkd.backends import FailureBudget, TooManyFailures
from rlkd.cli.options import CliError, add_backend_arguments, add_fields, backend_from_args, backend_values
from rlkd.config import BackendConfig, ConfigError, StructureConfig
from rlkd.files import (
    JsonlWriter,
    OutputLock,
    atomic_write_text,
    check_output_path,
    id_key,
    iter_jsonl,
    read_done_ids,
    read_text,
    refuse_foreign_jsonl,
)
from rlkd.judges import decomposition_field, score_many, score_structure
from rlkd.llm_judge import LLMJudge
from rlkd.reward_config import build_judge, build_structure_reward, uses_llm_judge
from rlkd.structure import as_decomposition, parse_decomposition

log = logging.getLogger("rlkd")




def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# rlkd parse


def cmd_parse(args: argparse.Namespace) -> int:
    decomposition = parse_decomposition(read_text(args.file))
    print(json.dumps(decomposition.to_dict(), ensure_ascii=False, indent=2))
    if not decomposition.steps:
        print(f"no steps: {decomposition.reason}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------
# rlkd score


def judge_from_options(args: argparse.Namespace):
    """The judge named by ``--judge`` (and ``--meta-judge`` etc. for hybrid), by
    :func:`rlkd.reward_config.build_judge`; the LLM judge, if asked for, over the backend options."""
    return build_judge(args, backend_from_args(args) if uses_llm_judge(args) else None)


def _unjudged_reason(result) -> str | None:
    """Why a scored pair has no trustworthy reward: the first failed verdict it used (None if none failed)."""
    if not result.judge_failures:
        return None
    for step in result.steps:
        for name, why in step.failures.items():
            return f"{result.judge_failures} verdict{'s' if result.judge_failures > 1 else ''} failed, e.g. step " \
                   f"{step.index} {name}: {why}"
    return f"{result.judge_failures} verdicts failed"


def _llm_backend_stats(judge) -> Any:
    """The request counters of the LLM judge inside ``judge`` (None when no LLM is used)."""
    for candidate in [judge, *getattr(judge, "judges", {}).values()]:
        if isinstance(candidate, LLMJudge):
            return candidate.backend.stats
    return None


def _score_record(pair_id: Any, result, obj: dict[str, Any] | None = None) -> dict[str, Any]:
    """One output record: the result, with ``reward`` null and the reason under ``unjudged`` when a verdict
    it needed failed (never a silent 0)."""
    record = {"id": pair_id, **result.to_dict()} if pair_id is not None else result.to_dict()
    reason = _unjudged_reason(result)
    if reason is not None:
        record["reward"] = None
        record["unjudged"] = reason
    if obj is not None:
        record["teacher"], record["student"] = obj["teacher"], obj["student"]
    return record


def _failure_line(results, judge, what: str) -> str:
    """'N of M pairs could not be judged (K of L judge requests failed); last reasons: ...'."""
    unjudged = [r for r in results if _unjudged_reason(r) is not None]
    stats = _llm_backend_stats(judge)
    requests = f" ({stats.failures} of {stats.calls} judge requests failed)" if stats is not None and stats.calls else ""
    reasons = list(dict.fromkeys(_unjudged_reason(r).split(": ", 1)[-1] for r in unjudged))[-3:]
    return f"{len(unjudged)} of {len(results)} {what} could not be judged{requests}; last reasons: {'; '.join(reasons)}"


def cmd_score(args: argparse.Namespace) -> int:
    """``rlkd score``: exit status 0; 1 when some pairs could not be judged (marked ``unjudged``, reward
    null); 2 when more than ``--max-failure-share`` of them could not (or on bad input)."""
    import asyncio


    if args.completions:
        if args.pairs or args.teacher or args.student:
            raise CliError("give --completions alone, not with --pairs or --teacher/--student")
        return cmd_score_completions(args)
    if args.pairs and (args.teacher or args.student):
        raise CliError("give either --pairs or --teacher/--student, not both")
    if not math.isfinite(args.max_failure_share) or not 0.0 <= args.max_failure_share <= 1.0:
        raise CliError(f"--max-failure-share must be between 0 and 1, got {args.max_failure_share}")
    if not args.pairs:
        if not (args.teacher and args.student):
            raise CliError("give --teacher FILE and --student FILE, or --pairs PAIRS.jsonl")
        teacher = as_decomposition(read_text(args.teacher))
        student = as_decomposition(read_text(args.student))
        judge = judge_from_options(args)
        result = asyncio.run(score_structure(teacher, student, judge, args.mode, args.lazy))
        print(json.dumps(_score_record(None, result), ensure_ascii=False, indent=2))
        if _unjudged_reason(result) is not None:
            raise CliError(_failure_line([result], judge, "pairs"))
        return 0

    to_file = bool(args.output) and args.output != "-"
    lock = None
    if to_file:  # before any paid call: a path that cannot be written, or a file that is not ours
        check_output_path(args.output, "--output", same_as=[args.pairs])
        refuse_foreign_jsonl(args.output, ("reward", "steps"), "rlkd score")
        lock = OutputLock(args.output).acquire()
    try:
        rows = list(iter_jsonl(args.pairs))  # validate the whole file before scoring anything
        pairs, ids = [], []
        for number, obj in rows:
            where = f"{args.pairs}:{number}"
            pairs.append((decomposition_field(obj, "teacher", where), decomposition_field(obj, "student", where)))
            ids.append(obj.get("id", number))
        judge = judge_from_options(args)
        results = asyncio.run(score_many(pairs, judge, args.mode, args.lazy))
        records = [_score_record(pair_id, result, obj) for (_, obj), pair_id, result in zip(rows, ids, results)]
        judged = [r for r in results if _unjudged_reason(r) is None]
        if judged or not results:  # when nothing could be judged, an earlier output is left as it was
            text = "".join(_dump(record) + "\n" for record in records)
            if to_file:
                atomic_write_text(args.output, text)
            else:
                sys.stdout.write(text)
    finally:
        if lock is not None:
            lock.release()
    rewards = [r.reward for r in judged]
    print(f"scored {len(results)} pairs: {len(judged)} judged, mean reward {sum(rewards) / max(len(rewards), 1):.3f} "
          f"(over the judged pairs), parse failures {sum(r.parse_failure is not None for r in results)}, "
          f"unjudged {len(results) - len(judged)} (judge failures {sum(r.judge_failures for r in results)})",
          file=sys.stderr)
    unjudged = len(results) - len(judged)
    if unjudged and (not judged or unjudged / len(results) > args.max_failure_share):
        written = "nothing written" if not judged else f"unjudged pairs marked in {args.output or 'the output'}"
        raise CliError(f"{_failure_line(results, judge, 'pairs')} ({written})")
    return 1 if unjudged else 0


def _completion_items(args: argparse.Namespace, done: set[str], counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    """The lines of ``--completions`` still to score, checked: id, problem, teacher_structure, completion."""

    seen: set[str] = set()
    for number, obj in iter_jsonl(args.completions):
        where = f"{args.completions}:{number}"
        for column in ("id", "problem", "teacher_structure", "completion"):
            if column not in obj:
                raise CliError(f"{where}: missing column '{column}'")
        for column in ("problem", "completion"):
            if not isinstance(obj[column], str):
                raise CliError(f"{where}: column '{column}' is a {type(obj[column]).__name__}, not text")
        key = id_key(obj["id"])
        if key in seen:
            raise CliError(f"{where}: id {obj['id']!r} appears twice in the input")
        seen.add(key)
        teacher = decomposition_field(obj, "teacher_structure", where)
        if key in done:
            counts["skipped"] += 1
            continue
        yield {"id": obj["id"], "problem": obj["problem"], "completion": obj["completion"], "teacher": teacher,
               "teacher_structure": obj["teacher_structure"]}


def cmd_score_completions(args: argparse.Namespace) -> int:
    """``rlkd score --completions``: decompose each student completion with the GSRM and score it against
    its teacher structure on the path training uses (:meth:`rlkd.rewards.StructureReward.score`, built by
    :func:`rlkd.reward_config.build_structure_reward`); resumable like ``rlkd decompose``."""
    import asyncio


    if not args.output or args.output == "-":
        raise CliError("--completions needs --output OUT.jsonl (appended to, so a second run resumes)")
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    gsrm = BackendConfig(**backend_values(args))
    config = StructureConfig(gsrm=gsrm, judge_backend=gsrm, domain=args.domain, gsrm_max_tokens=args.gsrm_max_tokens,
                             gsrm_max_trace_chars=args.max_trace_chars, gsrm_few_shot=not args.zero_shot,
                             judge=args.judge, meta_judge=args.meta_judge, subproblem_judge=args.subproblem_judge,
                             answer_judge=args.answer_judge, overlap_threshold=args.overlap_threshold,
                             judge_batched=args.judge_batched, mode=args.mode, lazy=args.lazy,
                             early_exit=not args.no_early_exit, max_failure_share=1.0, sample_log=False)
    try:
        gsrm.check("GSRM backend options (--base-url/--model or --local-model)", "rlkd score --completions")
        reward = build_structure_reward(config)
    except (ConfigError, ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    output = Path(args.output)
    done = read_done_ids(output)
    counts = {"scored": 0, "error": 0, "skipped": 0, "stopped": 0, "gsrm_tokens": 0, "judge_failures": 0}
    rewards: list[float] = []
    budget = FailureBudget(args.max_failure_share, args.min_failures, what="GSRM calls")
    items = _completion_items(args, done, counts)

    async def run() -> None:
        try:
            with JsonlWriter(output=output) as out:
                while True:
                    batch = [item for _, item in zip(range(args.batch_size), items)]
                    if not batch:
                        break
                    students, results = await reward.score([b["problem"] for b in batch],
                                                           [b["completion"] for b in batch],
                                                           [b["teacher"] for b in batch])
                    for n, (item, student) in enumerate(zip(batch, students)):
                        counts["gsrm_tokens"] += student.completion_tokens
                        if student.error is not None:  # not written: the next run retries it
                            counts["error"] += 1
                            log.warning("id %s: GSRM call failed: %s", item["id"], student.error)
                            continue
                        result = results[n]
                        counts["scored"] += 1
                        counts["stopped"] += student.stopped
                        counts["judge_failures"] += result.judge_failures
                        rewards.append(result.reward)
                        out.write("output", {"id": item["id"], **result.to_dict(),
                                             "gsrm_completion_tokens": student.completion_tokens,
                                             "teacher": item["teacher_structure"],
                                             "student": student.decomposition.to_dict()})
                    for student in students:  # after writing, so a stop loses nothing already done
                        budget.record(student.error is None, student.error or "")
                budget.finish()
        finally:
            await reward.decomposer.backend.aclose()
            for judge in [reward.judge, *getattr(reward.judge, "judges", {}).values()]:
                if getattr(judge, "backend", None) is not None:  # the LLM judge's own client
                    await judge.backend.aclose()

    try:
        asyncio.run(run())
    except TooManyFailures as exc:
        raise CliError(f"stopped: {exc}. Everything written so far is kept in {output}; fix the cause and "
                       "run the same command again to resume") from None
    finally:
        reward.decomposer.backend.log_stats()
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    print(f"{output}: scored {counts['scored']} completions (mean reward {mean:.3f}), GSRM generated "
          f"{counts['gsrm_tokens']} tokens ({counts['stopped']} generations stopped early once the reward was "
          f"decided), judge failures {counts['judge_failures']}, {counts['skipped']} already done, "
          f"{counts['error']} GSRM failures (not written; run again to retry them)", file=sys.stderr)
    return 1 if counts["error"] else 0


def add_parser(sub) -> None:
    """Register ``rlkd parse`` and ``rlkd score``."""
    p = sub.add_parser("parse", help="parse GSRM output into steps (JSON)",
                       description="Parse a GSRM decomposition into steps and print them as JSON. Exit "
                       "status 1 (with the reason on stderr) when the text gives no steps.")
    p.add_argument("file", nargs="?", default="-", help="decomposition text file (default: stdin)")
    p.set_defaults(func=cmd_parse)
    p = sub.add_parser(
        "score",
        help="structure reward of a student decomposition against a teacher's",
        description="Score student decompositions against teacher decompositions with the structure "
        "reward (SPEC section 3). Inputs are GSRM text or decomposition JSON. Prints the result object "
        "as JSON: the total under 'reward', per-step verdicts under 'steps'.",
    )
    p.add_argument("--teacher", metavar="FILE", help="teacher decomposition (text or JSON; - for stdin)")
    p.add_argument("--student", metavar="FILE", help="student decomposition (text or JSON)")
    p.add_argument("--pairs", metavar="PAIRS.jsonl",
                   help="many pairs: each line has 'teacher', 'student' and optionally 'id'")
    p.add_argument("--completions", metavar="FILE.jsonl",
                   help="raw student completions to decompose with the GSRM (the backend options below) and "
                        "score, on the path training uses; columns: id, problem, teacher_structure (JSON or GSRM "
                        "text), completion (the text before </think> is decomposed). Needs --output; each output "
                        "line has the id, the result object (reward, steps, ...), gsrm_completion_tokens, teacher "
                        "and student. Ids already in the output are skipped, so a re-run resumes; GSRM failures "
                        "are not written and are retried by the next run. The LLM judge, if asked for, uses the "
                        "same server as the GSRM")
    p.add_argument("--output", metavar="OUT.jsonl",
                   help="where --pairs results go (default stdout); written at once when all are scored, and "
                        "an existing file that is not rlkd score output is refused; with --completions, "
                        "appended to (a re-run resumes)")
    p.add_argument("--no-early-exit", action="store_true",
                   help="--completions: let the GSRM write every decomposition to its end (by default its "
                        "generation is stopped once the reward is decided, which gives the same reward)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="--completions: lines scored together and written when all are back (default %(default)s)")
    p.add_argument("--min-failures", type=int, default=10,
                   help="--completions: GSRM calls made before the failure share is first checked (default %(default)s)")
    add_fields(p, StructureConfig, ["judge", "meta_judge", "subproblem_judge", "answer_judge", "overlap_threshold",
                                    "mode", "lazy", "judge_batched"])
    p.add_argument("--max-failure-share", type=float, default=0.2,
                   help="exit status 2 when more than this share of the pairs could not be judged (a judge "
                        "call or verdict failed; such pairs are written with reward null and the reason under "
                        "'unjudged'); below it, exit status 1; with --completions: stop when more than this share "
                        "of GSRM calls failed, checked once --min-failures calls were made and at the end "
                        "(default %(default)s)")
    g = p.add_argument_group("the GSRM's prompt and budget (--completions)")
    add_fields(g, StructureConfig, ["domain", "gsrm_max_tokens", "gsrm_max_trace_chars"],
               flags={"gsrm_max_trace_chars": "--max-trace-chars"}, dests={"gsrm_max_trace_chars": "max_trace_chars"})
    g.add_argument("--zero-shot", action="store_true",
                   help="drop the worked example from the GSRM prompt (a fine-tuned GSRM)")
    add_backend_arguments(p)
    p.set_defaults(func=cmd_score)
