"""Reliability under backend faults and bad input, through the commands a user runs.

Every test drives a real command (``rlkd decompose``, ``rlkd data gsrm``, ``rlkd data rlkd``,
``rlkd score``, ``rlkd inspect``) or the structure reward as TRL calls it, against the scriptable local
server of tests/fault_server.py: a real HTTP server on 127.0.0.1 that delays, drops connections, answers
429 with Retry-After, 500, or a body that is not JSON or is cut short. What each test checks:

1. the job keeps going past a faulty sample; that sample's failure is counted and logged with its reason,
   and it is not written as if it had succeeded (a re-run retries it);
2. when failures pass the configured share, the run stops with a clear error and keeps what it wrote;
3. bad input stops with an error naming the file and line (or is handled as documented), and the output
   file's earlier lines are intact afterwards.

RELIABILITY.md lists each fault and bad input with the test that shows it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket

import pytest

from fault_server import Action, FaultServer
from rlkd.cli import main
from rlkd.inspector import PAGE_MARKER

GOOD_REPLY = "[Meta-reasoning 1]: start\n[Sub-problem 1]: {problem}\n[Answer 1]: 42"
_PROBLEM = re.compile(r"Problem:\n(.*?)\n\nReasoning:", re.S)


def problem_of(body: dict) -> str:
    """The problem a GSRM request is about ('' for other requests)."""
    last = next((m.get("content", "") for m in reversed(body.get("messages") or []) if m.get("role") == "user"), "")
    m = _PROBLEM.search(last)
    return m.group(1) if m else ""


class Faults:
    """A fault-server script keyed by problem text: ``{"p1": [Action("500"), ...]}`` gives p1's
    requests those actions in turn (the last one repeats); other problems get a good decomposition."""

    def __init__(self, plan: dict[str, list[Action]] | None = None):
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.seen: dict[str, int] = {}

    def __call__(self, body: dict) -> Action:
        problem = problem_of(body)
        self.seen[problem] = self.seen.get(problem, 0) + 1
        actions = self.plan.get(problem)
        if actions:
            action = actions[0] if len(actions) == 1 else actions.pop(0)
            if action.kind == "ok" and action.text is None:
                action = Action("ok", delay=action.delay, text=GOOD_REPLY.format(problem=problem))
            return action
        return Action("ok", text=GOOD_REPLY.format(problem=problem))


def free_port() -> int:
    """A port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def traces(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "problem": f"p{i}", "reasoning": f"<think>step {i}</think> {i}"} for i in range(start, start + n)]


def decompose(base_url: str, inp, out, *extra: str) -> int:
    return main(["decompose", "--input", str(inp), "--output", str(out), "--base-url", base_url, "--model", "gsrm",
                 "--batch-size", "4", "--max-retries", "0", "--timeout", "5", *extra])


# --------------------------------------------------------------------------------------------------
# 1. Backend faults: rlkd decompose

FAULTS = {  # problem -> (what the server does every time, the reason the log must give)
    "p1": (Action("500"), "HTTP 500"),
    "p2": (Action("malformed"), "malformed response body"),
    "p3": (Action("truncated"), "connection error (RemoteProtocolError: peer closed connection without sending "
                                "complete message body"),
    "p4": (Action("drop"), "connection error (RemoteProtocolError: Server disconnected without sending a response"),
    "p5": (Action("429", retry_after="0"), "HTTP 429 rate limited"),
    "p6": (Action("ok", delay=5.0), "timed out after 1.5s"),
    "p7": (Action("no_choices"), "no choices"),
}


class TestDecomposeUnderFaults:
    def test_each_faulty_trace_is_a_logged_failure_the_rest_are_written_and_a_rerun_fills_the_gaps(
            self, tmp_path, caplog, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(10))
        faults = Faults({p: [action] for p, (action, _) in FAULTS.items()})
        with caplog.at_level(logging.WARNING), FaultServer(default=faults) as server:
            status = decompose(server.base_url, inp, out, "--timeout", "1.5", "--max-failure-share", "1")
        assert status == 1  # some lines failed: run again
        assert [r["id"] for r in read_jsonl(out)] == ["q0", "q8", "q9"]
        assert all(r["status"] == "ok" for r in read_jsonl(out))
        for problem, (_, reason) in FAULTS.items():
            line = next(r.getMessage() for r in caplog.records
                        if r.getMessage().startswith(f'id "q{problem[1:]}": GSRM call failed'))
            assert reason in line, line
        assert "7 backend failures (not written; run again to retry them)" in capsys.readouterr().err

        faults.plan.clear()  # the server recovers: the same command fills exactly the gaps
        with FaultServer(default=faults) as server:
            assert decompose(server.base_url, inp, out, "--timeout", "1.5") == 0
            assert server.count == 7
        assert sorted(r["id"] for r in read_jsonl(out)) == [f"q{i}" for i in range(10)]

    def test_transient_faults_are_retried_and_leave_no_trace_in_the_output(self, tmp_path, caplog):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(4))
        faults = Faults({"p0": [Action("500"), Action("ok")], "p1": [Action("429", retry_after="0.2"), Action("ok")],
                         "p2": [Action("malformed"), Action("ok")], "p3": [Action("drop"), Action("ok")]})
        with caplog.at_level(logging.WARNING), FaultServer(default=faults) as server:
            assert decompose(server.base_url, inp, out, "--max-retries", "2", "--no-cache") == 0
            assert server.count == 8
        assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "q3"]
        retries = [r.getMessage() for r in caplog.records if "retry 1 of 2" in r.getMessage()]
        assert len(retries) == 4 and any("HTTP 429" in m and "in 0.2" in m for m in retries)

    def test_a_refused_connection_stops_the_job_with_a_clear_error_and_keeps_earlier_lines(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(6))
        with FaultServer(default=Faults()) as server:  # a first run wrote q0 and q1, then the server died
            write_jsonl(tmp_path / "first.jsonl", traces(2))
            assert decompose(server.base_url, tmp_path / "first.jsonl", out, "--no-cache") == 0
        before = out.read_bytes()
        status = decompose(f"http://127.0.0.1:{free_port()}/v1", inp, out, "--no-cache", "--min-failures", "4")
        err = capsys.readouterr().err
        assert status == 2
        assert "rlkd decompose: error: stopped: 4 of 4 traces failed (100.0% > 20.0% allowed)" in err
        assert "connection error" in err
        assert "4 traces whose call failed were not written: fix the cause, then the same command again retries them" in err
        assert out.read_bytes() == before  # nothing already written is lost or changed

    def test_failures_past_the_share_stop_the_job_after_writing_what_came_back(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(12))
        # one trace in four fails: 25% > 20% once 8 traces have been seen (second batch)
        faults = Faults({p: [Action("500")] for p in ("p1", "p5", "p9")})
        with FaultServer(default=faults) as server:
            status = decompose(server.base_url, inp, out, "--no-cache", "--min-failures", "8")
            assert server.count == 8  # the third batch was never sent
        assert status == 2
        assert "stopped: 2 of 8 traces failed (25.0% > 20.0% allowed); last reasons: HTTP 500" in capsys.readouterr().err
        assert [r["id"] for r in read_jsonl(out)] == ["q0", "q2", "q3", "q4", "q6", "q7"]


# --------------------------------------------------------------------------------------------------
# 1. Backend faults: rlkd data gsrm and rlkd data rlkd


def data_gsrm(base_url: str, inp, out, *sets: str) -> int:
    args = ["data", "gsrm"]
    for s in (f"input={inp}", f"output={out}", f"backend.base_url={base_url}", "backend.model=strong",
              "backend.max_retries=0", "backend.timeout=1.5", "batch_size=4", "request_cache=false",
              "id_column=id", *sets):
        args += ["--set", s]
    return main(args)


def openr1(n: int) -> list[dict]:
    """OpenR1-style records: every fourth has no correct generation."""
    return [{"uuid": f"u{i}", "problem": f"p{i}", "answer": str(i),
             "generations": [f"<think>wrong {i}</think> no", f"<think>right {i}</think> {i}"],
             "correctness_math_verify": [False, i % 4 != 3]} for i in range(n)]


def data_rlkd(base_url: str, inp, out_dir, *sets: str) -> int:
    args = ["data", "rlkd"]
    for s in (f"input={inp}", f"output_dir={out_dir}", f"gsrm.base_url={base_url}", "gsrm.model=gsrm",
              "gsrm.max_retries=0", "gsrm.timeout=1.5", "batch_size=4", "request_cache=false", "id_column=uuid",
              "test_size=0.25", *sets):
        args += ["--set", s]
    return main(args)


class TestDataCommandsUnderFaults:
    def test_data_gsrm_logs_each_failed_record_writes_the_rest_and_a_rerun_completes(self, tmp_path, caplog, capsys):
        inp, out = tmp_path / "traces.jsonl", tmp_path / "sft.jsonl"
        write_jsonl(inp, traces(10))
        faults = Faults({p: [action] for p, (action, _) in FAULTS.items()})
        with caplog.at_level(logging.WARNING), FaultServer(default=faults) as server:
            assert data_gsrm(server.base_url, inp, out, "max_failure_share=1") == 1
        assert [r["id"] for r in read_jsonl(out)] == ["q0", "q8", "q9"]
        assert not (tmp_path / "sft.jsonl.failures.jsonl").read_text()  # backend failures are not "unparsable"
        for problem, (_, reason) in FAULTS.items():
            line = next(r.getMessage() for r in caplog.records
                        if r.getMessage().startswith(f'id "q{problem[1:]}": decomposition request failed'))
            assert reason in line, line
        assert "7 requests failed (not written; run again to retry them)" in capsys.readouterr().err

        faults.plan.clear()
        with FaultServer(default=faults) as server:
            assert data_gsrm(server.base_url, inp, out) == 0
            assert server.count == 7
        assert sorted(r["id"] for r in read_jsonl(out)) == [f"q{i}" for i in range(10)]

    def test_data_gsrm_stops_past_the_share_and_keeps_what_it_wrote(self, tmp_path, capsys):
        inp, out = tmp_path / "traces.jsonl", tmp_path / "sft.jsonl"
        write_jsonl(inp, traces(12))
        with FaultServer(default=Faults({p: [Action("500")] for p in ("p1", "p5", "p9")})) as server:
            status = data_gsrm(server.base_url, inp, out, "min_failures=8")
            assert server.count == 8
        assert status == 2
        err = capsys.readouterr().err
        assert "rlkd data: error: stopped: 2 of 8 traces failed (25.0% > 20.0% allowed); last reasons: HTTP 500" in err
        assert [r["id"] for r in read_jsonl(out)] == ["q0", "q2", "q3", "q4", "q6", "q7"]

    def test_data_rlkd_under_faults_then_rerun_puts_every_record_in_exactly_one_file(self, tmp_path, caplog):
        inp, out = tmp_path / "openr1.jsonl", tmp_path / "rlkd"
        write_jsonl(inp, openr1(12))
        plan = {"p0": [Action("500")], "p5": [Action("malformed")], "p6": [Action("ok", delay=5.0)],
                "p9": [Action("drop")]}
        faults = Faults(plan)
        with caplog.at_level(logging.WARNING), FaultServer(default=faults) as server:
            assert data_rlkd(server.base_url, inp, out, "max_failure_share=1") == 1
        failed = {r.getMessage().split('"')[1] for r in caplog.records if "GSRM request failed" in r.getMessage()}
        assert failed == {"u0", "u5", "u6", "u9"}

        def written():
            return {name: [r["id"] for r in read_jsonl(out / f"{name}.jsonl")] for name in ("train", "test", "skipped")}

        first = written()
        assert not {"u0", "u5", "u6", "u9"} & {i for ids in first.values() for i in ids}
        assert sorted(first["skipped"]) == ["u11", "u3", "u7"]  # no correct generation: recorded with the reason
        faults.plan.clear()
        with FaultServer(default=faults) as server:
            assert data_rlkd(server.base_url, inp, out) == 0
            assert server.count == 4
        ids = [i for name_ids in written().values() for i in name_ids]
        assert sorted(ids) == sorted(f"u{i}" for i in range(12))  # each record exactly once, no gaps
        assert len(written()["test"]) == 2  # 25% of the 9 usable records, drawn the same way on the re-run


# --------------------------------------------------------------------------------------------------
# 1. Backend faults: the structure reward, called as TRL calls it

TEACHER = {"steps": [{"meta_reasoning": "start", "subproblem": "PROBLEM", "answer": "42"}]}


def structure_reward(base_url: str, *, judge=None, timeout: float = 5.0, **kwargs):
    from rlkd.backends import OpenAIBackend
    from rlkd.gsrm import Decomposer
    from rlkd.judges import TextJudge
    from rlkd.rewards import StructureReward

    backend = OpenAIBackend(base_url, "gsrm", max_retries=0, timeout=timeout)
    return StructureReward(Decomposer(backend), judge or TextJudge(), **kwargs)


class Recorder:
    """Stands in for TRL's log_metric / log_extra callbacks (our own logic only)."""

    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name, value):
        self.metrics.setdefault(name, []).append(value)

    def log_extra(self, column, values):
        self.extra[column] = values


def call_as_trl(reward, problems: list[str], recorder: Recorder | None = None):
    """One call the way GRPOTrainer makes it: prompts, completions, the dataset columns, the log hooks."""
    recorder = recorder or Recorder()
    teachers = [json.dumps({"steps": [{**TEACHER["steps"][0], "subproblem": p}]}) for p in problems]
    return asyncio.run(reward(
        prompts=[[{"role": "user", "content": p}] for p in problems],
        completions=[[{"role": "assistant", "content": f"<think>about {p}</think>\n<answer>42</answer>"}]
                     for p in problems],
        problem=problems, teacher_structure=teachers, answer=["42"] * len(problems),
        log_metric=recorder.log_metric, log_extra=recorder.log_extra))


class TestStructureRewardUnderFaults:
    def test_failed_gsrm_calls_skip_their_samples_with_counted_logged_reasons(self, caplog):
        recorder = Recorder()
        faults = Faults({"p1": [Action("500")], "p4": [Action("malformed")], "p6": [Action("ok", delay=5.0)]})
        with caplog.at_level(logging.WARNING), FaultServer(default=faults) as server:
            reward = structure_reward(server.base_url, timeout=1.5, max_failure_share=0.5, min_failures=4)
            rewards = call_as_trl(reward, [f"p{i}" for i in range(8)], recorder)
        assert rewards == [1.0, None, 1.0, 1.0, None, 1.0, None, 1.0]  # None: TRL skips the sample, no zero
        assert recorder.metrics["structure/gsrm_failures"] == [3.0]
        assert recorder.extra["structure_detail"][1] == "skipped: GSRM call failed"
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("structure reward: 3 of 8")]
        assert "#1: student: HTTP 500" in line and "#4: student: malformed response body" in line
        assert "#6: student: timed out after 1.5s" in line
        assert (reward.gsrm_budget.seen, reward.gsrm_budget.failures) == (8, 3)

    def test_gsrm_failures_past_the_share_stop_training_with_the_reasons(self):
        from rlkd.backends import TooManyFailures

        faults = Faults({"p1": [Action("500")], "p2": [Action("truncated")], "p5": [Action("drop")]})
        with FaultServer(default=faults) as server:
            reward = structure_reward(server.base_url, max_failure_share=0.25, min_failures=8)
            with pytest.raises(TooManyFailures, match=r"3 of 8 GSRM calls of the structure reward failed "
                                                      r"\(37.5% > 25.0% allowed\); last reasons: student: HTTP 500"):
                call_as_trl(reward, [f"p{i}" for i in range(8)])

    def test_a_batch_mostly_without_structure_reward_stops_training_whatever_the_job_share(self):
        from rlkd.backends import TooManyFailures

        # a long healthy job: the job-wide share (1%) would take a hundred batches to notice a dead server
        faults = Faults({f"p{i}": [Action("500")] for i in (1, 3, 5, 7)})
        with FaultServer(default=faults) as server:
            reward = structure_reward(server.base_url, max_failure_share=0.01, min_failures=1000)
            assert call_as_trl(reward, [f"p{i}" for i in range(8)]).count(None) == 4  # 50%: not more than half
            faults.plan["p2"] = [Action("500")]
            with pytest.raises(TooManyFailures, match=r"5 of 8 completions lost their structure reward to a GSRM "
                                                      r"failure in one batch \(62.5% > 50.0% allowed per batch\); "
                                                      r"reasons: #1: student: HTTP 500"):
                call_as_trl(reward, [f"p{i}" for i in range(8)])
            tolerant = structure_reward(server.base_url, max_failure_share=1.0)  # never stops (benchmarks)
            faults.plan = {f"p{i}": [Action("500")] for i in range(8)}
            assert call_as_trl(tolerant, [f"p{i}" for i in range(8)]) == [None] * 8

    def test_a_dead_judge_stops_training_at_the_first_batch(self):
        from rlkd.backends import OpenAIBackend, TooManyFailures
        from rlkd.llm_judge import LLMJudge

        judge = LLMJudge(OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "judge", max_retries=0, timeout=5))
        with FaultServer(default=Faults()) as gsrm:
            reward = structure_reward(gsrm.base_url, judge=judge, max_failure_share=0.1, min_failures=1000)
            # the failed meta verdicts close the gate, so each pair used one verdict
            with pytest.raises(TooManyFailures, match=r"4 of 4 judge verdicts failed in one batch .* connection error"):
                call_as_trl(reward, [f"p{i}" for i in range(4)])

    def test_a_refused_gsrm_stops_at_the_first_batch(self):
        from rlkd.backends import TooManyFailures

        reward = structure_reward(f"http://127.0.0.1:{free_port()}/v1", max_failure_share=0.1, min_failures=8)
        with pytest.raises(TooManyFailures, match="8 of 8 GSRM calls .* connection error"):
            call_as_trl(reward, [f"p{i}" for i in range(8)])

    def test_llm_judge_faults_are_counted_verdict_failures_and_stop_past_the_share(self):
        from rlkd.backends import OpenAIBackend, TooManyFailures
        from rlkd.llm_judge import LLMJudge

        def judge_script(body: dict) -> Action:
            text = body["messages"][-1]["content"]
            return Action("500") if "p1" in text or "p2" in text else Action("ok", text="Yes.")

        with FaultServer(default=Faults()) as gsrm, FaultServer(default=judge_script) as judge_server:
            judge = LLMJudge(OpenAIBackend(judge_server.base_url, "judge", max_retries=0, timeout=5))
            recorder = Recorder()
            reward = structure_reward(gsrm.base_url, judge=judge, max_failure_share=0.5, min_failures=100)
            rewards = call_as_trl(reward, [f"p{i}" for i in range(4)], recorder)
            # p1 and p2: the sub-problem verdict failed (counted as a mismatch, recorded), meta and answer held
            assert rewards == [1.0, 0.5, 0.5, 1.0]
            assert recorder.metrics["structure/judge_failures"] == [2.0]
            assert judge.failures == 2 and reward.judge_budget.failures == 2
            strict = structure_reward(gsrm.base_url, judge=judge, max_failure_share=0.1, min_failures=4)
            with pytest.raises(TooManyFailures, match="judge verdicts of the structure reward failed .*HTTP 500"):
                call_as_trl(strict, [f"p{i}" for i in range(4)])


@pytest.mark.slow
def test_grpo_trainer_stops_before_updating_on_a_batch_whose_gsrm_calls_failed(tiny_model_dir, tmp_path, caplog):
    """A real GRPOTrainer run (tiny model, CPU): step 1's GSRM calls succeed, then the GSRM server
    answers 500. Step 2 stops with TooManyFailures before its optimizer step: the weights are step 1's."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlkd.backends import TooManyFailures
    from rlkd.rewards import build_rewards

    calls = {"n": 0}

    def gsrm(body: dict) -> Action:
        calls["n"] += 1
        if calls["n"] > 8:
            return Action("500")
        # alternate a full match (1.0) and a wrong answer (0.5), so step 1 has advantages to learn from
        return Action("ok", text=GOOD_REPLY.format(problem="x").replace("42", "42" if calls["n"] % 2 else "41"))

    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    rows = [{"prompt": [{"role": "user", "content": q}], "problem": "x", "answer": "42",
             "teacher_structure": json.dumps({"steps": [{**TEACHER["steps"][0], "subproblem": "x"}]})}
            for q in ("What is 6 * 7?", "What is 40 + 2?")]
    with caplog.at_level(logging.WARNING), FaultServer(default=gsrm) as server:
        structure = structure_reward(server.base_url, max_failure_share=0.25, min_failures=8)
        funcs, weights = build_rewards("rlkd", structure)
        config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                            num_generations=4, max_completion_length=16, learning_rate=1e-3, beta=0.0,
                            reward_weights=weights, use_cpu=True, bf16=False, report_to=[], logging_steps=1,
                            save_strategy="no", seed=0)
        trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=funcs, args=config,
                              train_dataset=Dataset.from_list(rows), callbacks=[Snapshot()])
        initial = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        with pytest.raises(TooManyFailures, match=r"GSRM calls of the structure reward failed .* HTTP 500"):
            trainer.train()
    assert trainer.state.global_step == 1 and len(snapshots) == 1
    assert any(not initial[k].equal(v) for k, v in snapshots[0].items())  # step 1 did learn something
    for name, value in trainer.model.named_parameters():
        assert value.detach().equal(snapshots[0][name]), f"{name} changed after the failed batch"
    assert any("HTTP 500" in r.getMessage() for r in caplog.records if r.name == "rlkd.backends")


# --------------------------------------------------------------------------------------------------
# 2. Bad input

PAIR = {"teacher": "[Meta-reasoning 1]: m\n[Sub-problem 1]: q\n[Answer 1]: 1",
        "student": "[Meta-reasoning 1]: m\n[Sub-problem 1]: q\n[Answer 1]: 1"}
BAD_LINES = {  # what a bad line holds -> the error that must name the file and line
    "malformed": (b'{"id": "x", "teacher": "t",\n', "not valid JSON (Expecting property name enclosed in double quotes"),
    "not_utf8": (b'{"id": "x", "teacher": "t\xff\xfe", "student": "s"}\n', "not UTF-8 text"),
    "too_deep": (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"\n", "JSON nested too deeply to read"),
    "not_an_object": (b'["teacher", "student"]\n', "expected a JSON object, got list"),
}


def with_bad_line(path, good_rows: list[dict], bad: bytes, at: int) -> None:
    """Write ``good_rows`` as JSONL with the ``bad`` line inserted as line ``at`` (1-based)."""
    lines = [json.dumps(r).encode() + b"\n" for r in good_rows]
    lines.insert(at - 1, bad)
    path.write_bytes(b"".join(lines))


class TestBadInput:
    @pytest.mark.parametrize("kind", list(BAD_LINES))
    def test_score_pairs_names_the_line_and_leaves_an_existing_output_alone(self, kind, tmp_path, capsys):
        pairs, out = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
        bad, message = BAD_LINES[kind]
        with_bad_line(pairs, [{"id": i, **PAIR} for i in range(3)], bad, at=3)
        out.write_text('{"id": "earlier", "reward": 1.0, "steps": []}\n')  # an earlier run's result
        assert main(["score", "--pairs", str(pairs), "--judge", "text", "--output", str(out)]) == 2
        assert f"rlkd score: error: {pairs}:3: {message}" in capsys.readouterr().err
        assert out.read_text() == '{"id": "earlier", "reward": 1.0, "steps": []}\n'

    @pytest.mark.parametrize("kind", list(BAD_LINES))
    def test_inspect_names_the_line_and_writes_no_page(self, kind, tmp_path, capsys):
        pairs, page = tmp_path / "pairs.jsonl", tmp_path / "page.html"
        bad, message = BAD_LINES[kind]
        with_bad_line(pairs, [{"id": i, **PAIR} for i in range(3)], bad, at=2)
        earlier = f"<!doctype html><html><head><meta charset='utf-8'>{PAGE_MARKER}<title>earlier</title></head></html>"
        page.write_text(earlier)  # a page an earlier run wrote
        assert main(["inspect", "--pairs", str(pairs), "--judge", "text", "--html", str(page)]) == 2
        assert f"rlkd inspect: error: {pairs}:2: {message}" in capsys.readouterr().err
        assert page.read_text() == earlier

    def test_score_and_inspect_name_a_missing_field(self, tmp_path, capsys):
        pairs = tmp_path / "pairs.jsonl"
        write_jsonl(pairs, [{"id": 0, **PAIR}, {"id": 1, "teacher": PAIR["teacher"]}])
        assert main(["score", "--pairs", str(pairs), "--judge", "text"]) == 2
        assert main(["inspect", "--pairs", str(pairs), "--judge", "text"]) == 2
        err = capsys.readouterr().err
        assert f"rlkd score: error: {pairs}:2: missing field 'student'" in err
        assert f"rlkd inspect: error: {pairs}:2: missing field 'student'" in err

    def test_empty_decompositions_score_zero_with_the_reason(self, tmp_path):
        pairs, out = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
        write_jsonl(pairs, [{"id": 0, "teacher": PAIR["teacher"], "student": ""},
                            {"id": 1, "teacher": "{\"steps\": " + "[" * 50_000, "student": PAIR["student"]}])
        assert main(["score", "--pairs", str(pairs), "--judge", "text", "--output", str(out)]) == 0
        first, second = read_jsonl(out)
        assert (first["reward"], first["parse_failure"]) == (0.0, "student: empty text")
        assert second["reward"] == 0.0 and second["parse_failure"].startswith("teacher: no step labels found")

    @pytest.mark.parametrize("kind", ["malformed", "not_utf8", "too_deep"])
    def test_decompose_stops_at_a_bad_line_keeping_earlier_batches_and_resumes_once_fixed(
            self, kind, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        bad, message = BAD_LINES[kind]
        rows = traces(6)
        with_bad_line(inp, rows, bad, at=5)
        with FaultServer(default=Faults()) as server:
            assert decompose(server.base_url, inp, out, "--batch-size", "2", "--no-cache") == 2
            assert f"rlkd decompose: error: {inp}:5: {message}" in capsys.readouterr().err
            assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "q3"]  # batches before the bad line
            write_jsonl(inp, rows)  # the user fixes the file and runs the same command again
            assert decompose(server.base_url, inp, out, "--batch-size", "2", "--no-cache") == 0
            assert server.count == 6
        assert [r["id"] for r in read_jsonl(out)] == [f"q{i}" for i in range(6)]

    def test_decompose_handles_empty_and_unterminated_traces_as_documented(self, tmp_path):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, [{"id": "empty", "problem": "p0", "reasoning": ""},
                          {"id": "empty_think", "problem": "p1", "reasoning": "<think>  </think> 4"},
                          {"id": "no_end", "problem": "p2", "reasoning": "<think>cut off by the length limit"}])
        with FaultServer(default=Faults()) as server:
            assert decompose(server.base_url, inp, out, "--no-cache", "--max-failure-share", "1") == 0
            assert server.count == 1  # empty reasoning needs no call
        empty, empty_think, no_end = read_jsonl(out)
        for record in (empty, empty_think):
            assert (record["status"], record["reason"]) == ("no_steps", "empty reasoning: nothing to decompose")
        assert no_end["status"] == "ok"
        assert no_end["notes"] == ["no </think> in the reasoning: the whole text was decomposed"]

    def test_a_trace_far_longer_than_the_context_is_cut_by_the_rule_or_fails_alone(self, tmp_path, caplog, capsys):
        inp = tmp_path / "in.jsonl"
        huge = "<think>" + "step. " * 200_000 + "</think> 4"  # 1.2 MB, about 300k tokens
        write_jsonl(inp, [*traces(2), {"id": "huge", "problem": "p9", "reasoning": huge}])
        with FaultServer(default=Faults(), context_tokens=8_000) as server:
            # default: the documented cut (2/3 head, 1/3 tail, 24,000 characters) fits an 8k-token context
            assert decompose(server.base_url, inp, tmp_path / "cut.jsonl", "--no-cache") == 0
            record = read_jsonl(tmp_path / "cut.jsonl")[2]
            assert record["status"] == "ok" and record["truncated"] is True
            # the three lines go out concurrently: find the huge one's request by its problem text
            [sent] = [r["messages"][-1]["content"] for r in server.requests if "p9" in r["messages"][-1]["content"]]
            assert "characters of the reasoning omitted" in sent and len(sent) < 25_000
            # never cut: the server refuses it; only that line fails, with the server's reason
            with caplog.at_level(logging.WARNING):
                status = decompose(server.base_url, inp, tmp_path / "uncut.jsonl", "--no-cache",
                                   "--max-trace-chars", "0", "--max-failure-share", "1")
        assert status == 1
        assert [r["id"] for r in read_jsonl(tmp_path / "uncut.jsonl")] == ["q0", "q1"]
        assert any('id "huge": GSRM call failed: HTTP 400' in m and "maximum context length is 8000 tokens" in m
                   for m in caplog.messages)

    @pytest.mark.parametrize("kind", ["malformed", "not_utf8"])
    def test_data_gsrm_stops_at_a_bad_line_keeping_earlier_batches(self, kind, tmp_path, capsys):
        inp, out = tmp_path / "traces.jsonl", tmp_path / "sft.jsonl"
        bad, message = BAD_LINES[kind]
        rows = traces(6)
        with_bad_line(inp, rows, bad, at=6)
        with FaultServer(default=Faults()) as server:
            assert data_gsrm(server.base_url, inp, out) == 2
            assert f"rlkd data: error: {inp}:6: {message}" in capsys.readouterr().err
            assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "q3"]
            write_jsonl(inp, rows)
            assert data_gsrm(server.base_url, inp, out) == 0
            assert server.count == 6
        assert [r["id"] for r in read_jsonl(out)] == [f"q{i}" for i in range(6)]

    def test_data_gsrm_names_a_missing_column_and_records_an_empty_trace(self, tmp_path, capsys):
        inp, out = tmp_path / "traces.jsonl", tmp_path / "sft.jsonl"
        rows = traces(5)
        rows[1]["reasoning"] = ""
        del rows[4]["reasoning"]
        write_jsonl(inp, rows)
        with FaultServer(default=Faults()) as server:
            assert data_gsrm(server.base_url, inp, out, "max_failure_share=1") == 2
        assert f"{inp}:5: column 'reasoning' is missing" in capsys.readouterr().err
        assert [r["id"] for r in read_jsonl(out)] == ["q0", "q2", "q3"]
        [failure] = read_jsonl(tmp_path / "sft.jsonl.failures.jsonl")
        assert (failure["id"], failure["reason"]) == ("q1", "empty reasoning: nothing to decompose")

    @pytest.mark.parametrize("kind", ["malformed", "not_utf8"])
    def test_data_rlkd_reads_the_whole_input_before_writing(self, kind, tmp_path, capsys):
        inp, out = tmp_path / "openr1.jsonl", tmp_path / "rlkd"
        bad, message = BAD_LINES[kind]
        with_bad_line(inp, openr1(6), bad, at=4)
        with FaultServer(default=Faults()) as server:
            assert data_rlkd(server.base_url, inp, out) == 2
            assert server.count == 0
        assert f"rlkd data: error: {inp}:4: {message}" in capsys.readouterr().err

    def test_data_rlkd_names_a_bad_generations_column(self, tmp_path, capsys):
        inp, out = tmp_path / "openr1.jsonl", tmp_path / "rlkd"
        rows = openr1(4)
        rows[2]["generations"] = "one string, not a list"
        write_jsonl(inp, rows)
        with FaultServer(default=Faults()) as server:
            assert data_rlkd(server.base_url, inp, out) == 2
        assert f"{inp}:3: column 'generations' must be a list of texts" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# 5. Security: keys only from the environment and never written anywhere; servers bind to localhost

SECRET = "sk-rlkd-test-5ecret-0123456789"


class TestApiKeys:
    def test_the_key_reaches_the_server_but_no_log_output_or_cache_even_on_the_error_path(
            self, tmp_path, monkeypatch, caplog, capsys):
        monkeypatch.setenv("RLKD_TEST_KEY", SECRET)
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(6))
        faults = Faults({p: [Action("500"), Action("ok")] for p in ("p0", "p1", "p2")})
        with caplog.at_level(logging.DEBUG), FaultServer(default=faults) as server:
            # -v: DEBUG logging everywhere, httpx and openai included; first run: retries then success
            assert main(["-v", "decompose", "--input", str(inp), "--output", str(out), "--base-url", server.base_url,
                         "--model", "gsrm", "--api-key-env", "RLKD_TEST_KEY", "--max-retries", "1"]) == 0
            # error path: every request fails, the job stops with TooManyFailures
            write_jsonl(inp, traces(6, start=10))
            faults.plan = {f"p{i}": [Action("500")] for i in range(10, 16)}
            assert main(["-v", "decompose", "--input", str(inp), "--output", str(out), "--base-url",
                         server.base_url, "--model", "gsrm", "--api-key-env", "RLKD_TEST_KEY",
                         "--max-retries", "1", "--min-failures", "2"]) == 2
        assert set(server.auth_headers) == {f"Bearer {SECRET}"}  # read from the environment and sent
        printed = capsys.readouterr()
        assert "HTTP 500" in printed.err and "HTTP 500" in caplog.text  # the errors were reported...
        assert len(caplog.records) > 20 and any(r.name.startswith(("httpx", "httpcore", "openai"))
                                               for r in caplog.records)
        for text in (caplog.text, printed.out, printed.err, *(r.getMessage() for r in caplog.records)):
            assert SECRET not in text  # ...without the key
        for path in tmp_path.iterdir():  # output and the request cache (SQLite, WAL files too)
            assert SECRET.encode() not in path.read_bytes(), path.name

    def test_a_key_in_a_recipe_is_refused_without_echoing_it(self, tmp_path, capsys):
        recipe = tmp_path / "data_gsrm.yaml"
        recipe.write_text(f"input: {tmp_path / 'in.jsonl'}\noutput: {tmp_path / 'out.jsonl'}\n"
                          f"backend:\n  base_url: http://127.0.0.1:9/v1\n  model: m\n  api_key: {SECRET}\n")
        write_jsonl(tmp_path / "in.jsonl", traces(1))
        assert main(["data", "gsrm", "--config", str(recipe)]) == 2
        assert main(["data", "gsrm", "--config", str(recipe), "--set", "backend.api_key=null"]) == 2
        err = capsys.readouterr().err
        assert "api_key" in err and SECRET not in err
        assert not (tmp_path / "out.jsonl").exists()

    def test_no_command_takes_a_key_on_the_command_line(self):
        from rlkd.cli import build_parser

        def options(parser):
            for action in parser._actions:
                yield from action.option_strings
                choices = getattr(action, "choices", None)
                for sub in (choices.values() if isinstance(choices, dict) else ()):
                    if hasattr(sub, "_actions"):
                        yield from options(sub)

        names = set(options(build_parser()))
        assert {"--api-key-env", "--judge-batched", "--max-failure-share"} <= names  # every sub-command seen
        assert not [n for n in names if "key" in n and n != "--api-key-env"]


def test_everything_that_listens_binds_to_localhost():
    """The servers the tests and benchmarks start, and any bind or --host in the sources."""
    import importlib.util
    import sys
    from pathlib import Path

    with FaultServer() as server:
        assert server._server.server_address[0] == "127.0.0.1"
    root = Path(__file__).resolve().parents[1]
    latency = root / "benchmarks" / "latency_server.py"
    if latency.exists():
        spec = importlib.util.spec_from_file_location("latency_server_under_test", latency)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look themselves up there
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
        server = module.LatencyServer().start() if hasattr(module, "LatencyServer") else None
        if server is not None:
            try:
                assert server._server.server_address[0] == "127.0.0.1"
            finally:
                server.stop()
    listening = re.compile(r"Server\(\(|\.bind\(\(|\"--host\"|\.listen\(|0\.0\.0\.0|host=")
    found = []
    for folder in ("rlkd", "benchmarks", "tests", "scripts"):
        for path in sorted((root / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if listening.search(line) and "listening = re.compile" not in line:
                    found.append((f"{path.relative_to(root)}:{number}", line.strip()))
    assert found, "the scan found nothing: it is not looking at the sources"
    # rlkd serve binds --host (default 127.0.0.1) and refuses any non-loopback host without a token
    # (rlkd/cli/serve.py with rlkd.serve.is_loopback; tests/test_reward_server.py checks the refusal)
    guarded = {"rlkd/cli/serve.py", "tests/test_reward_server.py"}  # the second asserts that refusal
    assert [(where, line) for where, line in found if "127.0.0.1" not in line and "_server.server_address" not in line
            and where.split(":")[0] not in guarded] == []


def test_the_package_never_evaluates_or_executes_text():
    """No eval/exec/pickle/os.system/shell/unsafe YAML in rlkd/; the only subprocesses run fixed commands
    (the math-verify grading worker, git for the run record), never text from a model or a data file."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "rlkd"
    forbidden = re.compile(r"(?<![.\w])(?:eval|exec|compile)\(|pickle\.loads?\(|marshal\.loads\(|os\.system\(|"
                           r"os\.popen\(|shell=True|yaml\.load\(|yaml\.unsafe_load|torch\.load\(|__import__\(")
    hits, spawns = [], []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if forbidden.search(code):
                hits.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"subprocess\.(?:run|Popen|call|check_output|check_call)\(", code):
                spawns.append(f"{path.name}: {line.strip()}")
    assert hits == []
    assert spawns == [
        "verify.py: self.proc = subprocess.Popen(",  # rlkd/answers/verify.py: [sys.executable, "-c", <fixed import>], data on stdin as JSON
        'train.py: commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,',
        'train.py: status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,',
    ]
