"""Early exit (SPEC section 8): the incremental parser is prefix-stable, and the gate-aware reward that
stops the GSRM once the reward is decided gives exactly the full computation's result."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlkd.structure import FIELDS, IncrementalParser, parse_decomposition

# --------------------------------------------------------------------------------------------------
# Prefix stability of the incremental parser

META = ["Meta-reasoning", "Meat-reasoning", "sub-think", "META-REASONING", "meta reasoning", "Sub-Think", "metareasoning"]
SUB = ["Sub-problem", "Query", "sub problem", "SUBPROBLEM", "sub_problem"]
ANSWER = ["Answer", "answer", "ANSWER"]
FINAL = ["Final answer", "final-answer", "FINAL ANSWER"]
SHAPES = ["[{w} {n}]: {t}", "[{w} {n}] - {t}", "[{w} {n}] {t}", "**[{w} {n}]:** {t}", "**[{w} {n}]**: {t}",
          "**{w} {n}:** {t}", "### {w} {n}: {t}", "- [{w} {n}]: {t}", "{w} {n}: {t}", "__[{w} {n}]__: {t}",
          "[{w}]: {t}", "[{w} {n}]:\n{t}", "({w} {n}): {t}",
          # near-labels whose start reads like a label: what follows decides (a begun line must not mislead)
          "{w} {n} -{t}", "{w} {n} - {t}", "**{w} {n}**{t}", "**{w} {n}** {t}", "*{w} {n}*: {t}", "{w} {n}.{t}",
          "{w} {n}. {t}", "[{w} {n}{t}", "### {w} {n}{t}", "_{w} {n}_ {t}", "**[{w} {n}]:**{t}",
          # a bracketed label settles at its closing bracket, whatever follows it
          "[{w} {n}]{t}", " ({w} {n}]-{t}", "[{w} {n}) {t}", "*[{w} {n}]*{t}", "[{w} {n}]\n{t}"]
WORDS = ["x", "y = 2", "Answer the question", "then", "we", "[Answer", "**", "3/4", "Meta-reasoning", "-", "é", ":"]


@st.composite
def gsrm_texts(draw) -> str:
    """Decompositions in every label family and drift the parser accepts: any shape, skipped or repeated
    numbers, missing or repeated fields, stray lines, a final-answer section, CRLF line ends."""
    lines = []
    number = 1
    for _ in range(draw(st.integers(0, 6))):
        kinds = draw(st.sampled_from([["meta", "sub", "answer"]] * 4 + [["meta", "answer"], ["sub", "answer"],
                                      ["meta", "sub", "sub", "answer"], ["meta"], ["answer", "meta"]]))
        for kind in kinds:
            word = draw(st.sampled_from({"meta": META, "sub": SUB, "answer": ANSWER}[kind]))
            text = " ".join(draw(st.lists(st.sampled_from(WORDS), max_size=4)))
            lines.append(draw(st.sampled_from(SHAPES)).format(w=word, n=number, t=text))
            for _ in range(draw(st.integers(0, 2))):
                lines.append(" ".join(draw(st.lists(st.sampled_from(WORDS), max_size=3))))
        number += draw(st.sampled_from([1, 1, 1, 0, 2]))
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(SHAPES)).format(w=draw(st.sampled_from(FINAL)), n="", t="42"))
        if draw(st.booleans()):
            lines.append("[Meta-reasoning 9]: after the end")
    end = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028"]))
    return end.join(lines) + draw(st.sampled_from(["", end, "\n\n"]))


def _check_every_cut(text: str, pieces: list[int]) -> None:
    """Feed ``text`` in pieces of the given sizes (repeated); after every piece, each field the parser
    calls complete must equal that field of the full parse. With pieces of size 1 that is every cut point."""
    full = parse_decomposition(text)
    parser = IncrementalParser()
    position = n = 0
    while position < len(text):
        size = pieces[n % len(pieces)]
        n += 1
        parser.feed(text[position: position + size])
        position += size
        for i, step in enumerate(parser.steps):
            for name in FIELDS:
                if parser.final(i, name):
                    assert i < len(full.steps), (text, position, i)
                    assert step.get(name) == full.steps[i].get(name), (text, position, i, name)
    assert parser.finish() == full
    assert [s.get(n) for s in parser.steps for n in FIELDS] == [s.get(n) for s in full.steps for n in FIELDS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gsrm_texts(), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_every_cut_point_agrees_with_the_full_parse(text, pieces):
    _check_every_cut(text, [1])  # every cut point
    _check_every_cut(text, pieces)  # and pieces of several characters, as a server streams them


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(list("[]*:-#_ .()\t\n\r1aq") + ["\r\n", "**", "Answer", "Query", "Meta-reasoning",
                                                                    "Final answer", "\u2028", "\uff1a", "\u2013"]),
                max_size=40).map("".join))
def test_prefix_stability_on_label_soup(text):
    _check_every_cut(text, [1])


class TestIncrementalParser:
    def test_a_field_is_complete_when_the_next_label_line_has_arrived(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]: start with x\n[Sub-prob")
        assert not p.final(0, "meta")  # the next line is not whole yet: it may not be a label
        p.feed("lem 1]: what is x?\n")
        assert p.final(0, "meta") and p.steps[0].meta_reasoning == "start with x"
        assert not p.final(0, "subproblem")
        p.feed("[Answer 1]: 2\n[Meta-reasoning 2]: then y\n")
        assert p.step_final(0) and (p.steps[0].subproblem, p.steps[0].answer) == ("what is x?", "2")
        assert not p.final(1, "meta")  # "then y" may go on below its label line
        p.feed("[Sub-problem 2]: y?\n")
        assert p.final(1, "meta") and not p.final(1, "answer")

    def test_a_bracketed_label_closes_the_field_before_at_its_closing_bracket(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]: start with x\n[Sub-problem 1")
        assert not p.final(0, "meta")  # "[Sub-problem 1" may still be plain text: "[Sub-problem 1 of 3..."
        p.feed("]")
        assert p.final(0, "meta") and p.steps[0].meta_reasoning == "start with x"
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]: start with x\n**[Sub-problem 1]")
        assert not p.final(0, "meta")  # markdown first: what follows still decides

    def test_text_below_a_label_stays_open_until_the_next_label(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]:\nwe need\n")
        assert not p.final(0, "meta")
        p.feed("both lines\n[Sub-problem 1]: q\n")
        assert p.steps[0].meta_reasoning == "we need\nboth lines"

    def test_finish_gives_the_full_parse(self):
        text = "[Meta-reasoning 1]: a\r\n[Sub-problem 1]: b\r\n[Answer 1]: c\r\n[Final answer]: c"
        p = IncrementalParser()
        for ch in text:
            p.feed(ch)
        assert p.finish() == parse_decomposition(text)

    def test_reset_starts_over(self):
        p = IncrementalParser()
        p.feed("[Meta-reasoning 1]: a\n[Sub-problem 1]: b\n")
        p.reset()
        p.feed("[Meta-reasoning 1]: z\n")
        assert p.text == "[Meta-reasoning 1]: z\n" and p.finish().steps[0].meta_reasoning == "z"


# --------------------------------------------------------------------------------------------------
# The gate-aware reward against the full computation

import asyncio  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

from rlkd.backends import GenerationRequest, ScriptedBackend  # noqa: E402
from rlkd.judges import (  # noqa: E402
    EarlyExitSink,
    Judge,
    JudgeRequest,
    make_judge,
    score_structure,
    score_structure_streaming,
)
from rlkd.llm_judge import LLMJudge  # noqa: E402
from rlkd.structure import MODES, Decomposition, Step, Verdict  # noqa: E402

VOCAB = ["x is 2", "x is 3", "find x", "find y", "1/2", "0.5", "2", "3", "", "why y next"]


class FlakyJudge(Judge):
    """Text equality, failing (verdict None) on a fixed share of pairs chosen by a hash of the pair."""

    name = "flaky"

    def judge_one(self, request: JudgeRequest) -> Verdict:
        digest = hashlib.sha256(f"{request.field}|{request.teacher}|{request.student}".encode()).digest()
        if digest[0] % 5 == 0:
            return Verdict(None, self.name, "flaky judge failed")
        return Verdict(request.teacher.strip() == request.student.strip(), self.name)


_PASSAGES = re.compile(r"A:\n(.*)\n\n\S+(?: \S+)? B:\n(.*)\n\n", re.DOTALL)  # a per-pair question


def _llm_reply(request: GenerationRequest) -> str:
    """A deterministic judge LLM: yes when the two passages are equal; unreadable on some pairs."""
    m = _PASSAGES.search(request.last_user_message)
    if m is None:
        return "???"
    a, b = m.group(1), m.group(2)
    if hashlib.sha256((a + "|" + b).encode()).digest()[0] % 7 == 0:
        return "maybe"  # a failed verdict
    return "yes" if a == b else "no"


_PAIR = re.compile(r"Pair (\d+) \([^)\n]*\)\nA: (.*?)\nB: (.*?)(?=\n\nPair \d+ \(|\n\nReply with a JSON list)", re.DOTALL)


def _batched_reply(request: GenerationRequest) -> str:
    """A batched judge LLM whose verdict on a pair does not depend on the other pairs in the request, nor
    on whether the pair comes alone, as a per-pair question (exactness needs that: early exit sends the
    pairs in other batches than the full computation, and a lone pair as a per-pair question)."""
    m = _PASSAGES.search(request.last_user_message)
    if m is not None:
        return "yes" if m.group(1) == m.group(2) else "no"
    return json.dumps(["yes" if a == b else "no" for _, a, b in _PAIR.findall(request.last_user_message)])


JUDGES = {
    "text": lambda: make_judge("text"),
    "overlap": lambda: make_judge("overlap"),
    "math": lambda: make_judge("math"),
    "hybrid": lambda: make_judge("hybrid"),
    "llm": lambda: LLMJudge(ScriptedBackend(_llm_reply)),
    "llm-batched": lambda: LLMJudge(ScriptedBackend(_batched_reply), batched=True),
    "flaky": lambda: FlakyJudge(),
}


def _random_case(rng: random.Random) -> tuple[Decomposition, str]:
    """A teacher decomposition and a GSRM text for the student that copies it for a while, then drifts."""
    k = rng.choice([0, 1, 2, 3, 4, 5, 6])
    teacher = Decomposition([Step(rng.choice(VOCAB[:4] + VOCAB[9:]), rng.choice(VOCAB), rng.choice(VOCAB[4:8]))
                             for _ in range(k)], reason=None if k else "no steps")
    n = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
    copy = rng.random()
    lines = []
    for i in range(n):
        fields = []
        for f in ("meta", "subproblem", "answer"):
            if i < k and rng.random() < copy:
                fields.append(teacher.steps[i].get(f))
            else:
                fields.append(rng.choice(VOCAB))
        shape = rng.choice(SHAPES)
        for kind, word, text in zip(("meta", "sub", "answer"), (rng.choice(META), rng.choice(SUB), "Answer"), fields):
            if rng.random() < 0.05:
                continue  # a missing field
            lines.append(shape.format(w=word, n=i + 1, t=text))
            if rng.random() < 0.1:
                lines.append(rng.choice(WORDS))  # a continuation line
    if rng.random() < 0.2:
        lines.append("[Final answer]: 2")
    text = rng.choice(["\n", "\r\n"]).join(lines) if lines else rng.choice(["", "no structure here"])
    return teacher, text


async def _full(teacher, text, judge, mode, lazy, fail_at):
    words = re.findall(r"\s+|\S+\s*", text)
    if fail_at is not None and fail_at < len(words):
        return None  # the full computation's GSRM call fails
    return await score_structure(teacher, parse_decomposition(text), judge, mode, lazy)


async def _early(teacher, text, judge, mode, fail_at):
    backend = ScriptedBackend(lambda request: text, stream_fail_after=lambda request: fail_at)
    sink = EarlyExitSink()
    request = GenerationRequest.chat([("user", "decompose")], max_tokens=4096)
    score = asyncio.create_task(score_structure_streaming(teacher, judge, sink, mode))
    [completion] = await backend.generate_stream([request], [sink])
    return await score, completion


@pytest.mark.parametrize("judge_name", sorted(JUDGES))
def test_early_exit_gives_the_full_computation_result(judge_name):
    """>= 1,000 random cases over all judges (7 x at least 160), every mode, GSRM failures mid-stream included.

    Cases are drawn in batches of 80 until each kind has been seen often enough (stops, failures the
    generation reached, failures it stopped before), so the coverage does not hang on how often one
    judge happens to say yes; at most 640 cases per judge.
    """
    rng = random.Random(f"early-exit:{judge_name}")
    judge = JUDGES[judge_name]()
    stats = {"cases": 0, "stopped": 0, "failed": 0, "scored past a failure point": 0, "saved": 0, "total": 0}

    def covered() -> bool:
        return stats["stopped"] > 20 and stats["failed"] > 10 and stats["scored past a failure point"] > 3

    while stats["cases"] < 160 or not covered() and stats["cases"] < 640:
        cases = []
        for _ in range(80):
            teacher, text = _random_case(rng)
            mode = rng.choice(MODES)
            fail_at = rng.choice([None, None, None, 0, 3, 12, 40, 60, 90])
            cases.append((teacher, text, mode, rng.random() < 0.5, fail_at))
        _check_batch(cases, judge, stats)
    # the cases exercise what they claim to: stops, failures seen and failures avoided
    assert covered(), stats


def _check_batch(cases, judge, stats) -> None:
    """Score each case fully, fully without failure, and early; assert the early result is the full one."""

    async def run():
        full = await asyncio.gather(*(_full(t, x, judge, m, lazy, f) for t, x, m, lazy, f in cases))
        clean = await asyncio.gather(*(_full(t, x, judge, m, lazy, None) for t, x, m, lazy, f in cases))
        early = await asyncio.gather(*(_early(t, x, judge, m, f) for t, x, m, lazy, f in cases))
        return full, clean, early

    full, clean, early = asyncio.run(run())
    stats["cases"] += len(cases)
    for (teacher, text, mode, _, fail_at), f, c, (e, completion) in zip(cases, full, clean, early):
        words = len(re.findall(r"\s+|\S+\s*", text))
        if completion.error is not None:  # a failure the generation reached: counted exactly as today
            assert e is None and f is None
            stats["failed"] += 1
            continue
        assert e is not None
        if f is None:
            stats["scored past a failure point"] += 1  # stopped before the GSRM reached its failure
        assert (e.reward, e.matched_prefix, e.teacher_steps, e.judge_failures, e.verdicts_used, e.parse_failure,
                e.mode) == (c.reward, c.matched_prefix, c.teacher_steps, c.judge_failures, c.verdicts_used,
                            c.parse_failure, c.mode), (teacher, text, mode)
        assert e.steps == c.steps[: len(e.steps)]
        assert all(s.gated or s.meta is False and mode.startswith("ungated") or s.score == 0 and not s.judges
                   for s in c.steps[len(e.steps):])
        if e.gsrm_stopped:
            stats["stopped"] += 1
            assert completion.completion_tokens < words
        else:
            assert e.student_steps == c.student_steps and completion.completion_tokens == words
        stats["saved"] += words - completion.completion_tokens
        stats["total"] += words


class RecordingJudge(Judge):
    """Text equality that records every pair it is asked about."""

    name = "recording"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def judge_one(self, request: JudgeRequest) -> Verdict:
        self.asked.append((request.field, request.student))
        return Verdict(request.teacher == request.student, self.name)


@pytest.mark.parametrize("text, reward, metas_asked", [
    # one line per field: each meta-reasoning is judged once, at its line break, and that verdict is used
    ("[Meta-reasoning 1]: plan a\n[Sub-problem 1]: q\n[Answer 1]: 1\n[Meta-reasoning 2]: plan c\n"
     "[Sub-problem 2]: r\n[Answer 2]: 2\n", 1.0, ["plan a", "plan c"]),
    # the first line alone would match, but the field goes on: that guess is judged, then never used
    ("[Meta-reasoning 1]: plan a\nand more\n[Sub-problem 1]: q\n[Answer 1]: 1\n", 0.0,
     ["plan a", "plan a\nand more"]),
])
def test_a_meta_reasoning_judged_ahead_counts_only_if_the_field_ends_there(text, reward, metas_asked):
    teacher = Decomposition([Step("plan a", "q", "1"), Step("plan b", "r", "2")])
    judge = RecordingJudge()
    result, completion = asyncio.run(_early(teacher, text, judge, "paper", None))
    full = asyncio.run(score_structure(teacher, parse_decomposition(text), RecordingJudge()))
    assert result.reward == full.reward == reward
    assert [student for field, student in judge.asked if field == "meta"] == metas_asked


# --------------------------------------------------------------------------------------------------
# rlkd score --completions: against a real HTTP server that streams (the benchmarks' latency server)


@pytest.fixture()
def streaming_server():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from latency_server import LatencyServer

    with LatencyServer(latency_ms=0, per_token_ms=1) as server:
        yield server


def _completions_file(path):
    from rlkd.testbed import generate_tasks, rule_decompose

    lines = []
    for n, task in enumerate(generate_tasks(3, split="ood", seed=5, depth=(4, 5))):
        full = rule_decompose(task.trace).to_dict()
        short = {**full, "steps": full["steps"][:2]}  # a teacher with 2 steps: nothing after step 2 counts
        other = {**full, "steps": [{**full["steps"][0], "meta_reasoning": "a plan the student never had"},
                                   *full["steps"][1:]]}  # the first meta-reasoning mismatches
        for g, teacher in enumerate([short, other]):
            lines.append({"id": f"{n}-{g}", "problem": task.problem, "teacher_structure": teacher,
                          "completion": task.trace})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def _score(*args):
    from rlkd.cli import main

    return main(["score", "--judge", "text", "--api-key-env", "RLKD_TEST_NO_KEY", *map(str, args)])


def test_score_completions_early_exit_matches_the_full_run_and_resumes(streaming_server, tmp_path, capsys):
    source = tmp_path / "completions.jsonl"
    _completions_file(source)
    server = ["--base-url", streaming_server.base_url, "--model", "latency-server"]
    early, full = tmp_path / "early.jsonl", tmp_path / "full.jsonl"
    assert _score("--completions", source, "--output", early, *server) == 0
    assert _score("--completions", source, "--output", full, "--no-early-exit", *server) == 0
    read = lambda path: [json.loads(line) for line in path.read_text().splitlines()]
    early_rows, full_rows = read(early), read(full)
    assert [r["id"] for r in early_rows] == [r["id"] for r in full_rows] == ["0-0", "0-1", "1-0", "1-1", "2-0", "2-1"]
    assert [r["reward"] for r in early_rows] == [r["reward"] for r in full_rows]
    assert [r["reward"] for r in full_rows] == [2.0, 0.0] * 3
    assert any(r["gsrm_stopped"] for r in early_rows) and not any(r["gsrm_stopped"] for r in full_rows)
    assert sum(r["gsrm_completion_tokens"] for r in early_rows) < sum(r["gsrm_completion_tokens"] for r in full_rows)
    assert "generations stopped early" in capsys.readouterr().err

    # resumable: a second run writes nothing new; a lost line is redone, alone
    assert _score("--completions", source, "--output", early, *server) == 0
    assert "6 already done" in capsys.readouterr().err and len(read(early)) == 6
    early.write_text("".join(line + "\n" for line in early.read_text().splitlines()[:-1]))
    assert _score("--completions", source, "--output", early, *server) == 0
    assert [r["id"] for r in read(early)][-1] == "2-1" and len(read(early)) == 6
    assert read(early)[-1]["reward"] == full_rows[-1]["reward"]


def test_score_completions_bad_line_is_named_and_nothing_is_lost(streaming_server, tmp_path, capsys):
    source = tmp_path / "completions.jsonl"
    lines = _completions_file(source)
    del lines[3]["completion"]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "out.jsonl"
    server = ["--base-url", streaming_server.base_url, "--model", "latency-server"]
    assert _score("--completions", source, "--output", output, "--batch-size", 2, *server) == 2
    assert f"{source}:4: missing column 'completion'" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["0-0", "0-1"]
    assert _score("--completions", source, "--pairs", source, "--output", output, *server) == 2


# --------------------------------------------------------------------------------------------------
# The cache and the training reward


class _StopAfterWords:
    def __init__(self, limit):
        self.limit, self.pieces, self.stop_requested, self.completion = limit, [], False, None

    def feed(self, piece):
        self.pieces.append(piece)
        self.stop_requested = self.limit is not None and len(self.pieces) >= self.limit

    def restart(self):
        self.pieces = []

    def finish(self, completion):
        self.completion = completion


@pytest.mark.server
def test_a_stop_requested_between_tokens_closes_the_stream_without_waiting_for_the_next():
    """A verdict that arrives while the backend waits for the next token (an LLM judge's) ends the stream
    there: with a token due only after 1.5 s, the stop 0.1 s after the first one leaves a single token."""
    import sys
    from pathlib import Path

    from rlkd.backends import OpenAIBackend

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from latency_server import LatencyServer

    class StopSoonSink(EarlyExitSink):
        def feed(self, piece: str) -> None:
            super().feed(piece)
            asyncio.get_running_loop().call_later(0.1, setattr, self, "stop_requested", True)

    with LatencyServer(latency_ms=0, per_token_ms=1500) as server:
        backend = OpenAIBackend(server.base_url, "m", api_key_env=None, max_retries=0, timeout=30)
        from rlkd.gsrm import Decomposer
        from rlkd.testbed import generate_tasks

        task = generate_tasks(1, split="ood", seed=0, depth=(4, 5))[0]
        request = Decomposer(backend).request(task.problem, task.trace)[0]  # a reply of many tokens

        async def go():
            sink = StopSoonSink()
            try:
                [completion] = await backend.generate_stream([request], [sink])
            finally:
                await backend.aclose()
            return completion

        completion = asyncio.run(go())
    assert completion.stopped and completion.text == "[" and completion.completion_tokens == 1
    assert server.counters.completion_tokens["gsrm"] == 1


def test_cache_stores_only_complete_streams(tmp_path):
    from rlkd.backends.cache import CachedBackend

    inner = ScriptedBackend(lambda request: "one two three four five")
    backend = CachedBackend(inner, tmp_path / "cache.sqlite")
    request = GenerationRequest.chat([("user", "count")])

    def stream(limit):
        sink = _StopAfterWords(limit)
        [completion] = asyncio.run(backend.generate_stream([request], [sink]))
        return completion, sink

    stopped, _ = stream(2)
    assert stopped.stopped and stopped.text == "one two " and len(backend.cache) == 0  # a prefix is never stored
    whole, _ = stream(None)
    assert not whole.stopped and whole.text == "one two three four five" and len(backend.cache) == 1
    again, sink = stream(None)
    assert again.cached and "".join(sink.pieces) == whole.text and sink.completion is again
    assert inner.stats.calls == 2 and inner.stats.cache_hits == 1 and inner.stats.stopped == 1


def _reward_inputs():
    teacher = {"steps": [{"meta_reasoning": "find x", "subproblem": "x?", "answer": "2"},
                         {"meta_reasoning": "find y", "subproblem": "y?", "answer": "3"},
                         {"meta_reasoning": "add", "subproblem": "x+y?", "answer": "5"}]}
    replies = {
        "copy": "[Meta-reasoning 1]: find x\n[Sub-problem 1]: x?\n[Answer 1]: 2\n[Meta-reasoning 2]: find y\n"
                "[Sub-problem 2]: y?\n[Answer 2]: 3\n[Meta-reasoning 3]: add\n[Sub-problem 3]: x+y?\n[Answer 3]: 5\n"
                "[Meta-reasoning 4]: check it\n[Sub-problem 4]: is 5 right?\n[Answer 4]: yes",
        "off": "[Meta-reasoning 1]: guess\n[Sub-problem 1]: z?\n[Answer 1]: 9\n[Meta-reasoning 2]: find x\n"
               "[Sub-problem 2]: x?\n[Answer 2]: 2",
        "second": "[Meta-reasoning 1]: find x\n[Sub-problem 1]: x?\n[Answer 1]: 3\n[Meta-reasoning 2]: find z\n"
                  "[Sub-problem 2]: z?\n[Answer 2]: 1\n[Meta-reasoning 3]: add\n[Sub-problem 3]: x+y?\n[Answer 3]: 5",
    }
    return teacher, replies


def test_structure_reward_early_exit_same_rewards_fewer_tokens_and_logged():
    from rlkd.gsrm import Decomposer
    from rlkd.judges import TextJudge
    from rlkd.rewards import StructureReward

    teacher, replies = _reward_inputs()
    names = list(replies)
    completions = [f"<think>case-{name}</think><answer>1</answer>" for name in names]

    def script(request):
        return next(replies[n] for n in names if f"case-{n}" in request.last_user_message)

    def run(early_exit):
        backend = ScriptedBackend(script)
        reward = StructureReward(Decomposer(backend), TextJudge(), early_exit=early_exit)
        logged = {}
        rewards = asyncio.run(reward(["p"] * 3, completions, teacher_structure=[teacher] * 3,
                                     log_metric=lambda name, value: logged.__setitem__(name, value)))
        return rewards, backend.stats, logged

    full, full_stats, _ = run(False)
    early, early_stats, logged = run(True)
    assert early == full == [3.0, 0.0, 0.5]
    assert early_stats.completion_tokens < full_stats.completion_tokens and early_stats.stopped == 3
    assert logged["structure/gsrm_tokens"] == early_stats.completion_tokens / 3
    assert logged["structure/gsrm_stopped"] == 1.0
    assert (logged["structure/first_mismatch_step_1"], logged["structure/first_mismatch_step_2"],
            logged["structure/first_mismatch_step_none"]) == (1 / 3, 1 / 3, 1 / 3)
