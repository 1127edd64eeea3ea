"""The GSRM decomposer: prompts, the </think> and truncation rules, parsing, and `rlkd decompose`."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from rlkd.backends import ScriptedBackend
from rlkd.cli import main
from rlkd.files import read_done_ids
from rlkd.gsrm import (
    Decomposer,
    build_prompt,
    split_reasoning,
    truncate_trace,
)
from rlkd.structure import parse_decomposition
from rlkd.templates import DOMAINS, PROMPTS_DIR, PromptTemplate, load_prompt

CANNED = (
    "[Meta-reasoning 1]: The sum needs both numbers, so find x first.\n"
    "[Sub-problem 1]: What is x?\n"
    "[Answer 1]: 2\n"
    "[Meta-reasoning 2]: With x known, add.\n"
    "[Sub-problem 2]: What is x + 3?\n"
    "[Answer 2]: 5\n"
)


class TestPrompts:
    def test_the_domains_are_the_packaged_gsrm_prompt_files(self):
        assert sorted(DOMAINS) == sorted(p.stem.removeprefix("gsrm_") for p in PROMPTS_DIR.glob("gsrm_*.txt"))

    @pytest.mark.parametrize("domain", DOMAINS)
    def test_every_domain_has_an_instruction_an_example_and_the_request(self, domain):
        messages = build_prompt("What is 1 + 1?", "<think>1 + 1 = 2</think> 2", domain)
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[-1]["content"] == "Problem:\nWhat is 1 + 1?\n\nReasoning:\n1 + 1 = 2"
        # the worked example is itself in the format the parser reads, with whole steps
        example = parse_decomposition(messages[2]["content"])
        assert len(example.steps) >= 3 and example.warnings == []

    def test_domains_differ_in_their_instruction_and_example(self):
        systems = {load_prompt(d).turns[0][1] for d in DOMAINS}
        examples = {load_prompt(d).turns[2][1] for d in DOMAINS}
        assert len(systems) == len(examples) == 4
        assert "In programming" in load_prompt("code").turns[0][1]

    def test_zero_shot_keeps_only_the_instruction_and_the_request(self):
        messages = build_prompt("p", "r", "science", few_shot=False)
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[1]["content"] == "Problem:\np\n\nReasoning:\nr"

    def test_placeholders_are_filled_once_and_latex_braces_survive(self):
        messages = build_prompt(r"Is \frac{1}{2} = {reasoning}?", "{problem} stays", "math")
        assert messages[-1]["content"] == "Problem:\nIs \\frac{1}{2} = {reasoning}?\n\nReasoning:\n{problem} stays"

    def test_unknown_domain_and_bad_prompt_files_are_named(self, tmp_path):
        with pytest.raises(ValueError, match="unknown GSRM domain 'poetry'"):
            load_prompt("poetry")
        bad = tmp_path / "p.txt"
        bad.write_text("=== system ===\nhi\n=== assistant ===\n{reasoning}\n")
        with pytest.raises(ValueError, match="p.txt: the last section must be '=== user ==='"):
            load_prompt(str(bad))
        with pytest.raises(ValueError, match="text before the first"):
            PromptTemplate.parse("hello\n=== user ===\n{reasoning}")

    def test_a_prompt_file_can_replace_the_packaged_prompt(self, tmp_path):
        path = tmp_path / "mine.txt"
        path.write_text("=== system ===\nDecompose.\n\n=== user ===\nQ: {problem}\nT: {reasoning}\n")
        assert build_prompt("p", "r", str(path)) == [
            {"role": "system", "content": "Decompose."},
            {"role": "user", "content": "Q: p\nT: r"},
        ]

    def test_a_prompt_file_may_leave_the_problem_out_but_not_the_reasoning(self, tmp_path):
        path = tmp_path / "trace-only.txt"
        path.write_text("=== user ===\nRewrite: {reasoning}\n")
        assert build_prompt("the problem", "r", str(path)) == [{"role": "user", "content": "Rewrite: r"}]
        bad = tmp_path / "problem-only.txt"
        bad.write_text("=== user ===\nSolve: {problem}\n")
        with pytest.raises(ValueError, match=r"problem-only.txt: .* contain \{reasoning\}"):
            load_prompt(str(bad))


class TestTraceRules:
    def test_reasoning_is_the_text_before_the_first_think_end(self):
        assert split_reasoning("<think>\nA.\n</think>\nB </think> C") == ("A.", True)
        assert split_reasoning("A. <THINK>B.</Think> C") == ("A. B.", True)

    def test_without_think_end_the_whole_text_is_used(self):
        assert split_reasoning("<think>\nstill thinking when cut") == ("still thinking when cut", False)

    def test_truncation_keeps_two_thirds_head_one_third_tail(self):
        trace = "".join(f"step {i:04d}\n" for i in range(100))  # 100 lines of 10 characters
        text, cut = truncate_trace(trace, 90)
        assert cut
        assert text == (
            "step 0000\nstep 0001\nstep 0002\nstep 0003\nstep 0004\nstep 0005\n"  # 60 characters
            "\n\n[... 910 characters of the reasoning omitted ...]\n\n"
            "step 0097\nstep 0098\nstep 0099\n"  # 30 characters
        )
        assert truncate_trace(trace, 1000) == (trace, False)
        assert truncate_trace(trace, 0) == (trace, False)

    def test_decomposer_notes_truncation_and_missing_think_end(self):
        backend = ScriptedBackend(lambda request: CANNED)
        gsrm = Decomposer(backend, max_trace_chars=12)
        long, short = asyncio.run(gsrm.decompose([("p", "<think>" + "x" * 30 + "</think> a"), ("p", "y" * 5)]))
        assert long.truncated and not short.truncated
        assert long.notes == ["reasoning cut to 12 characters (head and tail kept)"]
        assert short.notes == ["no </think> in the reasoning: the whole text was decomposed"]
        sent = backend.requests[0].last_user_message
        assert sent == "Problem:\np\n\nReasoning:\nxxxxxxxx\n\n[... 18 characters of the reasoning omitted ...]\n\nxxxx"


class TestDecomposer:
    def test_canned_reply_is_parsed_and_requests_are_greedy(self):
        backend = ScriptedBackend(lambda request: CANNED)
        gsrm = Decomposer(backend, domain="puzzle", max_tokens=321)
        [result] = asyncio.run(gsrm.decompose([("x + 3 = ?", "<think>x is 2, so 5</think> 5")]))
        assert result.status == "ok" and result.reason is None and result.error is None
        assert [(s.meta_reasoning, s.subproblem, s.answer) for s in result.decomposition.steps] == [
            ("The sum needs both numbers, so find x first.", "What is x?", "2"),
            ("With x known, add.", "What is x + 3?", "5"),
        ]
        assert result.raw == CANNED
        request = backend.requests[0]
        assert (request.temperature, request.max_tokens) == (0.0, 321)
        assert "In puzzles" in request.messages[0][1]

    def test_backend_failure_is_an_error_not_an_empty_success(self):
        backend = ScriptedBackend(lambda request: CANNED, fail_first=1)
        gsrm = Decomposer(backend)
        failed, ok = asyncio.run(gsrm.decompose([("p", "a"), ("p", "b")]))
        assert failed.status == "error" and failed.error == "scripted failure (fail_first=1)"
        assert failed.decomposition.steps == [] and failed.raw == ""
        assert failed.decomposition.reason == "GSRM call failed: scripted failure (fail_first=1)"
        assert ok.status == "ok"
        assert (gsrm.calls, gsrm.failures, gsrm.no_steps) == (2, 1, 0)

    def test_reply_without_steps_says_why(self):
        gsrm = Decomposer(ScriptedBackend(lambda request: "I cannot do that."))
        [result] = asyncio.run(gsrm.decompose([("p", "r")]))
        assert result.status == "no_steps" and result.reason.startswith("no step labels found")
        assert gsrm.no_steps == 1

    def test_per_item_domain(self):
        backend = ScriptedBackend(lambda request: CANNED)
        asyncio.run(Decomposer(backend).decompose([("p", "r", "code"), ("p", "r", None)]))
        assert "In programming" in backend.requests[0].messages[0][1]
        assert "In mathematics" in backend.requests[1].messages[0][1]


class TestReadDoneIds:
    def test_torn_last_line_is_cut_and_complete_lines_kept(self, tmp_path):
        out = tmp_path / "out.jsonl"
        out.write_text('{"id": "a"}\n{"id": 2}\n{"id": "c", "stru')
        assert read_done_ids(out) == {'"a"', "2"}
        assert out.read_text() == '{"id": "a"}\n{"id": 2}\n'

    def test_a_whole_last_record_without_newline_is_kept(self, tmp_path):
        out = tmp_path / "out.jsonl"
        out.write_text('{"id": "a"}')
        assert read_done_ids(out) == {'"a"'}
        assert out.read_text() == '{"id": "a"}\n'

    def test_a_bad_line_in_the_middle_is_an_error_and_changes_nothing(self, tmp_path):
        from rlkd.cli import CliError

        out = tmp_path / "out.jsonl"
        out.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
        with pytest.raises(CliError, match=r"out.jsonl:2: unreadable line"):
            read_done_ids(out)
        assert out.read_text() == '{"id": "a"}\nnot json\n{"id": "c"}\n'


# --------------------------------------------------------------------------------------------------
# rlkd decompose, end to end through the OpenAI backend against a local HTTP server


def _gsrm_server(fail=None):
    from fault_server import Action, FaultServer

    def reply(body):
        request = body["messages"][-1]["content"]
        problem = re.search(r"Problem:\n(.*?)\n\nReasoning:", request, re.S).group(1)
        if fail and fail in problem:
            return Action("400")
        if "garbage" in problem:
            return Action("ok", text="no structure here")
        return Action("ok", text=f"[Meta-reasoning 1]: m\n[Sub-problem 1]: {problem}\n[Answer 1]: a")

    return FaultServer(default=reply)


def _write_input(path, ids=True, n=5):
    with open(path, "w") as f:
        for i in range(n):
            row = {"problem": f"problem {i}", "reasoning": f"<think>think {i}</think> answer"}
            if ids:
                row["id"] = f"q{i}"
            f.write(json.dumps(row) + "\n")


def _decompose(server, inp, out, *extra):
    return main(["decompose", "--input", str(inp), "--output", str(out), "--base-url", server.base_url,
                 "--model", "gsrm", "--max-retries", "0", "--batch-size", "2", *extra])


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestDecomposeCommand:
    def test_writes_one_line_per_input_line_and_resumes_after_a_kill(self, tmp_path):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        _write_input(inp)
        with _gsrm_server() as server:
            assert _decompose(server, inp, out, "--no-cache") == 0
            records = _records(out)
            assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3", "q4"]
            assert records[3]["status"] == "ok" and records[3]["reason"] is None
            assert records[3]["structure"]["steps"] == [
                {"meta_reasoning": "m", "subproblem": "problem 3", "answer": "a", "number": 1}]
            assert records[3]["raw"] == "[Meta-reasoning 1]: m\n[Sub-problem 1]: problem 3\n[Answer 1]: a"
            assert records[3]["truncated"] is False
            assert server.count == 5
            # a kill -9 mid-write: two whole lines and half of the third
            lines = out.read_text().splitlines(keepends=True)
            out.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
            assert _decompose(server, inp, out, "--no-cache") == 0
            assert server.count == 8  # only q2, q3, q4 were asked again
        assert sorted(r["id"] for r in _records(out)) == ["q0", "q1", "q2", "q3", "q4"]

    def test_line_numbers_are_ids_when_there_is_no_id_column(self, tmp_path):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        _write_input(inp, ids=False, n=3)
        with _gsrm_server() as server:
            assert _decompose(server, inp, out, "--no-cache") == 0
        assert [r["id"] for r in _records(out)] == [1, 2, 3]

    def test_cache_next_to_the_output_makes_a_rerun_free(self, tmp_path):
        inp = tmp_path / "in.jsonl"
        _write_input(inp, n=3)
        with _gsrm_server() as server:
            assert _decompose(server, inp, tmp_path / "a.jsonl") == 0
            assert (tmp_path / "a.jsonl.cache.sqlite").exists()
            assert _decompose(server, inp, tmp_path / "a.jsonl") == 0  # resume: nothing to do
            assert _decompose(server, inp, tmp_path / "b.jsonl", "--cache", str(tmp_path / "a.jsonl.cache.sqlite")) == 0
            assert server.count == 3
        assert _records(tmp_path / "a.jsonl") == _records(tmp_path / "b.jsonl")

    def test_failed_lines_are_not_written_and_a_rerun_retries_them(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        _write_input(inp)
        with _gsrm_server(fail="problem 1") as server:
            assert _decompose(server, inp, out, "--no-cache", "--max-failure-share", "0.5") == 1
        assert [r["id"] for r in _records(out)] == ["q0", "q2", "q3", "q4"]
        assert "1 backend failures (not written; run again to retry them)" in capsys.readouterr().err
        with _gsrm_server() as server:
            assert _decompose(server, inp, out, "--no-cache") == 0
            assert server.count == 1
        assert sorted(r["id"] for r in _records(out)) == ["q0", "q1", "q2", "q3", "q4"]

    def test_too_many_failures_stop_with_a_clear_error_keeping_what_was_written(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        _write_input(inp)
        with _gsrm_server(fail="problem") as server:
            assert _decompose(server, inp, out, "--no-cache", "--min-failures", "2") == 2
            assert server.count == 2  # stopped after the first batch
        err = capsys.readouterr().err
        assert "rlkd decompose: error: stopped: 2 of 2 traces failed" in err
        assert "HTTP 400" in err or "400" in err
        assert not out.exists() or out.read_text() == ""

    def test_replies_without_steps_are_written_with_their_reason(self, tmp_path):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        inp.write_text(json.dumps({"id": 7, "problem": "garbage", "reasoning": "r"}) + "\n")
        with _gsrm_server() as server:
            assert _decompose(server, inp, out, "--no-cache", "--max-failure-share", "1") == 0
        [record] = _records(out)
        assert record["status"] == "no_steps" and record["raw"] == "no structure here"
        assert record["reason"].startswith("no step labels found")
        assert record["notes"] == ["no </think> in the reasoning: the whole text was decomposed"]

    def test_bad_input_lines_are_named(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        inp.write_text('{"id": 1, "problem": "p", "reasoning": "r"}\n{"id": 2, "problem": "p"}\n')
        with _gsrm_server() as server:
            assert _decompose(server, inp, out, "--no-cache", "--batch-size", "1") == 2
        assert "in.jsonl:2: column 'reasoning' is missing" in capsys.readouterr().err
        assert [r["id"] for r in _records(out)] == [1]  # the line before the bad one is kept

    def test_duplicate_ids_are_an_error(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        inp.write_text('{"id": 1, "problem": "p", "reasoning": "r"}\n{"id": 1, "problem": "q", "reasoning": "r"}\n')
        with _gsrm_server() as server:
            assert _decompose(server, inp, out, "--no-cache") == 2
        assert "in.jsonl:2: id 1 appears twice in the input" in capsys.readouterr().err


@pytest.mark.slow
def test_decompose_with_a_real_local_model(tiny_model_dir, tmp_path):
    """End to end with no fake: the tiny random model writes nonsense, which is recorded as no_steps."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(inp, n=2)
    args = ["decompose", "--input", str(inp), "--output", str(out), "--local-model", str(tiny_model_dir),
            "--max-tokens", "8", "--max-failure-share", "1", "--no-cache"]
    assert main(args) == 0
    records = _records(out)
    assert [r["id"] for r in records] == ["q0", "q1"]
    for record in records:
        assert record["status"] == "no_steps" and record["reason"] and record["structure"]["steps"] == []
        assert isinstance(record["raw"], str)
    assert main(args) == 0  # resumes: nothing left to do
    assert _records(out) == records


def test_domain_column_picks_the_prompt_per_line(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": 1, "problem": "p", "reasoning": "r", "domain": "code"}) + "\n"
                   + json.dumps({"id": 2, "problem": "q", "reasoning": "r"}) + "\n"
                   + json.dumps({"id": 3, "problem": "s", "reasoning": "r", "domain": "poetry"}) + "\n")
    with _gsrm_server() as server:
        assert _decompose(server, inp, out, "--no-cache", "--domain-column", "domain", "--batch-size", "1") == 2
        systems = [body["messages"][0]["content"] for body in server.requests]
    assert "In programming" in systems[0] and "In mathematics" in systems[1] and len(systems) == 2
    assert "in.jsonl:3: column 'domain' is 'poetry'; expected one of math, code, science, puzzle" in capsys.readouterr().err


def test_empty_reasoning_needs_no_call():
    backend = ScriptedBackend(lambda request: CANNED)
    gsrm = Decomposer(backend)
    empty, full, blank = asyncio.run(gsrm.decompose([("p", "<think>\n</think> 4"), ("p", "r"), ("p", "  ")]))
    assert (empty.status, empty.reason) == ("no_steps", "empty reasoning: nothing to decompose")
    assert blank.status == "no_steps" and full.status == "ok"
    assert len(backend.requests) == 1 and (gsrm.calls, gsrm.no_steps) == (1, 2)


class TestRuleDecomposer:
    """``structure.decomposer: rule``: the testbed's exact decomposer as an oracle GSRM, through the same
    structure-reward builder training uses."""

    def _reward(self, tmp_path):
        from rlkd.config import GRPOJob
        from rlkd.train import grpo_structure_reward

        job = GRPOJob(model="unused", output_dir=str(tmp_path / "run"))
        job.structure.decomposer = "rule"
        job.structure.judge, job.structure.meta_judge = "hybrid", "overlap"
        job.structure.subproblem_judge, job.structure.answer_judge = "text", "math"
        job.structure.sample_log = False
        return grpo_structure_reward(job)

    def test_the_oracle_gets_the_reward_of_the_exact_structure(self, tmp_path):
        from rlkd.testbed import generate_tasks

        reward = self._reward(tmp_path)
        tasks = generate_tasks(3, "id", seed=5, depth=3)
        teacher = [t.decomposition.render() for t in tasks]
        # the teacher's own trace earns 1 per step; a student that computes the second link wrong loses
        # half of that step (its answer differs) and nothing else, exactly as SPEC section 3 says
        second = tasks[0].order[1]
        result = f"so {second} is {tasks[0].decomposition.steps[1].answer}."
        assert result in tasks[0].trace
        wrong = tasks[0].trace.replace(result, f"so {second} is 999.", 1)
        scores = asyncio.run(reward(prompts=[t.problem for t in tasks] + [tasks[0].problem],
                                    completions=[t.trace for t in tasks] + [wrong],
                                    teacher_structure=teacher + [teacher[0]],
                                    problem=[t.problem for t in tasks] + [tasks[0].problem]))
        assert scores == [3.0, 3.0, 3.0, 2.5]
        assert reward.decomposer.calls == 4 and reward.decomposer.failures == 0

    @pytest.mark.filterwarnings("ignore:structure reward is 0")
    def test_a_text_without_computation_scores_zero_and_says_why(self, tmp_path):
        reward = self._reward(tmp_path)
        [score] = asyncio.run(reward(prompts=["Find c."], completions=["<think>I do not know.</think>"],
                                     teacher_structure=["[Meta-reasoning 1]: m\n[Sub-problem 1]: What is c?\n"
                                                        "[Answer 1]: 5"], problem=["Find c."]))
        assert score == 0.0 and reward.decomposer.no_steps == 1
