"""The LLM judge: strict verdicts, per-pair and batched modes, failures, and the reward built on it."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from rlkd.backends import ScriptedBackend
from rlkd.cli import main
from rlkd.judges import JudgeRequest, TextJudge, normalize_text, score_structure
from rlkd.llm_judge import LLMJudge, parse_batched_verdicts, parse_verdict
from rlkd.structure import Decomposition, Step

_PAIR = re.compile(r"(?:Passage|Sub-problem|Answer) A:\n(.*?)\n\n(?:Passage|Sub-problem|Answer) B:\n(.*?)\n\nAre these",
                   re.S)
_BATCH = re.compile(r"^Pair (\d+) \([^)]*\)\nA: (.*?)\nB: (.*?)$", re.M)


def text_judge_script(request):
    """A deterministic stand-in for a judge model: 'same' means equal after normalisation."""
    prompt = request.last_user_message
    if prompt.startswith("Pair 1"):
        return json.dumps(["yes" if normalize_text(a) == normalize_text(b) else "no"
                           for _, a, b in _BATCH.findall(prompt)])
    a, b = _PAIR.search(prompt).groups()
    return "Yes." if normalize_text(a) == normalize_text(b) else "No"


TEACHER = Decomposition([Step("find x first", "what is x?", "2"), Step("then add", "x + 3?", "5"),
                         Step("check", "is 5 right?", "yes")])
STUDENT = Decomposition([Step("Find x first.", "What is x?", "3"), Step("then add", "what is x + 4?", "7"),
                         Step("guess", "is 7 right?", "yes")])


class TestParseVerdict:
    @pytest.mark.parametrize("text, expected", [
        ("yes", True), ("Yes.", True), ("NO", False), ("no", False), ("**yes**", True), ("`No`", False),
        ("Yes, they ask for the same quantity.", True), ("No: the first asks for x, the second for y.", False),
        ('"yes"', True), ("Answer: yes", True), ("Verdict - No.", False), ("  \n Yes!\n", True),
        ("<think>They both ask for x.</think>\nyes", True), ("YES, yes.", True),
        ("Yes, but not exactly the same wording.", True),
    ])
    def test_clear_verdicts(self, text, expected):
        assert parse_verdict(text) is expected

    @pytest.mark.parametrize("text", [
        "yes and no", "", "   ", "I think so", "Yes/No", "Nope", "yesterday", "The answer is yes.",
        "Maybe.", "No... actually yes", "<think>comparing the two", "Y", None, 1,
    ])
    def test_anything_unclear_is_none_not_no(self, text):
        assert parse_verdict(text) is None


class TestParseBatched:
    def test_reads_the_requested_list_in_pair_order(self):
        reply = 'Here you go:\n```json\n["Yes", "no.", true, false]\n```'
        assert [v for v, _ in parse_batched_verdicts(reply, 4)] == [True, False, True, False]

    def test_an_unreadable_list_entry_fails_alone(self):
        got = parse_batched_verdicts('["yes", "maybe", 7]', 3)
        assert got == [(True, "batched reply"), (None, "unreadable entry 2: 'maybe'"), (None, "unreadable entry 3: '7'")]

    @pytest.mark.parametrize("reply", ['["yes"]', '["yes", "no", "yes"]'])
    def test_a_list_of_the_wrong_length_fails_every_pair(self, reply):
        # which entry belongs to which pair is unknown, so none is taken
        got = parse_batched_verdicts(reply, 2)
        assert [v for v, _ in got] == [None, None]
        assert "verdicts for 2 pairs" in got[0][1]

    def test_reads_an_object_keyed_by_pair_number_too(self):
        reply = '```json\n{"1": "Yes", "2": "no.", "3": true, "4": false}\n```'
        assert [v for v, _ in parse_batched_verdicts(reply, 4)] == [True, False, True, False]

    def test_missing_and_invalid_object_entries_fail_alone(self):
        got = parse_batched_verdicts('{"1": "yes", "3": "maybe", "4": 7}', 4)
        assert got == [(True, "batched reply"), (None, 'no entry "2" in the batched reply'),
                       (None, "unreadable entry \"3\": 'maybe'"), (None, "unreadable entry \"4\": '7'")]

    def test_the_outermost_value_decides_the_form(self):
        # a list inside an object is an entry of the object, not the reply's list
        got = parse_batched_verdicts('{"1": ["yes"], "2": "no"}', 2)
        assert [v for v, _ in got] == [None, False]

    @pytest.mark.parametrize("reply", ["yes, yes", '{"1": "yes", "2": ', '["yes", "no"', ""])
    def test_an_unreadable_reply_fails_every_pair(self, reply):
        got = parse_batched_verdicts(reply, 2)
        assert [v for v, _ in got] == [None, None]
        assert got[0][1].startswith("batched reply is neither a JSON list nor an object")


def _judge(batched=False, **kwargs):
    backend = ScriptedBackend(kwargs.pop("script", text_judge_script), **kwargs)
    return LLMJudge(backend, batched=batched), backend


class TestLLMJudge:
    def test_per_pair_and_batched_give_the_same_verdicts(self):
        requests = [JudgeRequest(f, t.get(f), s.get(f))
                    for t, s in zip(TEACHER.steps, STUDENT.steps) for f in ("meta", "subproblem", "answer")]
        expected = [True, True, False, True, False, False, False, False, True]
        each, each_backend = _judge()
        batched, batched_backend = _judge(batched=True)
        assert [v.same for v in asyncio.run(each.ajudge(requests))] == expected
        assert [v.same for v in asyncio.run(batched.ajudge(requests))] == expected
        assert [v.same for v in TextJudge().judge(requests)] == expected
        assert (each.calls, batched.calls) == (9, 1)
        assert len(each_backend.requests) == 9 and len(batched_backend.requests) == 1
        assert all(r.temperature == 0.0 for r in each_backend.requests + batched_backend.requests)
        assert each_backend.requests[0].max_tokens == 16
        first = each_backend.requests[0].last_user_message
        assert first.startswith("Below are two passages of meta-reasoning.")
        assert "Passage A:\nfind x first\n\nPassage B:\nFind x first." in first
        assert each_backend.requests[2].last_user_message.endswith("Are these two equal? Reply with one word: yes or no.")
        assert "Pair 9 (answer; are these two equal?)\nA: yes\nB: yes" in batched_backend.requests[0].last_user_message

    def test_unreadable_replies_and_backend_errors_are_counted_failures(self):
        replies = iter(["maybe", "yes and no", "No."])
        judge, _ = _judge(script=lambda request: next(replies), fail_first=1)
        requests = [JudgeRequest("answer", str(i), str(i)) for i in range(4)]
        verdicts = asyncio.run(judge.ajudge(requests))
        assert [v.same for v in verdicts] == [None, None, None, False]
        assert verdicts[0].reason == "judge call failed: scripted failure (fail_first=1)"
        assert verdicts[1].reason == "unreadable verdict: reply 'maybe'"
        assert (judge.calls, judge.verdicts, judge.failures) == (4, 4, 3)

    def test_a_batched_call_with_one_pair_asks_the_per_pair_question(self):
        # early exit judges one field at a time: a one-word reply, not a one-entry list
        judge, backend = _judge(batched=True)
        [verdict] = asyncio.run(judge.ajudge([JudgeRequest("answer", "7", "7")]))
        assert verdict.same is True and judge.calls == 1
        assert backend.requests[0].last_user_message.endswith("Are these two equal? Reply with one word: yes or no.")
        assert backend.requests[0].max_tokens == 16

    def test_a_failed_batched_call_fails_each_pair(self):
        judge, _ = _judge(batched=True, fail_first=1)
        verdicts = asyncio.run(judge.ajudge([JudgeRequest("meta", "a", "a"), JudgeRequest("answer", "1", "1")]))
        assert [v.same for v in verdicts] == [None, None] and judge.failures == 2

    def test_empty_fields_are_decided_without_a_call(self):
        judge, backend = _judge()
        verdicts = asyncio.run(judge.ajudge([JudgeRequest("answer", "", ""), JudgeRequest("subproblem", "q", " "),
                                             JudgeRequest("answer", "1", "1")]))
        assert [(v.same, v.reason) for v in verdicts][:2] == [(True, "both fields are empty"),
                                                            (False, "one field is empty")]
        assert verdicts[2].same is True and len(backend.requests) == 1


class TestScoring:
    def test_reward_with_the_llm_judge_equals_the_text_judge_and_failures_reach_the_result(self):
        judge, _ = _judge()
        result = asyncio.run(score_structure(TEACHER, STUDENT, judge))
        reference = asyncio.run(score_structure(TEACHER, STUDENT, TextJudge()))
        # step 1: meta and sub-problem match, answer differs: 0.5; step 2: meta matches, both differ: 0.25;
        # step 3: meta differs, and the gate has nothing more to take
        assert result.reward == reference.reward == 0.75
        assert [s.score for s in result.steps] == [0.5, 0.25, 0.0]
        assert result.judge_failures == 0

        flaky, _ = _judge(script=lambda request: "perhaps")
        failed = asyncio.run(score_structure(TEACHER, STUDENT, flaky))
        assert failed.reward == 0.0 and failed.judge_failures == 1  # only step 1's meta was needed
        assert failed.steps[0].failures == {"meta": "unreadable verdict: reply 'perhaps'"}

    def test_gate_is_applied_after_concurrent_judging_and_lazy_mode_uses_fewer_calls(self):
        student = Decomposition([Step("something else", "what is x?", "2")] + STUDENT.steps[1:])
        eager, eager_backend = _judge()
        lazy, lazy_backend = _judge()
        eager_result = asyncio.run(score_structure(TEACHER, student, eager))
        lazy_result = asyncio.run(score_structure(TEACHER, student, lazy, lazy=True))
        assert eager_result.reward == lazy_result.reward == 0.0
        assert [s.gated for s in eager_result.steps] == [False, True, True]
        assert eager.calls == 9 and len(eager_backend.requests) == 9  # every pair, then the gate
        assert lazy.calls == 1 and len(lazy_backend.requests) == 1  # stopped at the first meta mismatch

    def test_batched_scoring_makes_one_call_per_pair_of_decompositions(self):
        judge, backend = _judge(batched=True)
        result = asyncio.run(score_structure(TEACHER, STUDENT, judge))
        assert result.reward == 0.75 and judge.calls == 1 and len(backend.requests) == 1


class TestScoreCommand:
    def test_rlkd_score_with_the_llm_judge_over_http_sends_requests_concurrently(self, tmp_path, capsys):
        from fault_server import Action, FaultServer

        teacher, student = tmp_path / "t.txt", tmp_path / "s.txt"
        teacher.write_text(TEACHER.render())
        student.write_text(STUDENT.render())
        with FaultServer(default=Action("ok", text="Yes", delay=0.2)) as server:
            status = main(["score", "--teacher", str(teacher), "--student", str(student), "--judge", "llm",
                           "--base-url", server.base_url, "--model", "judge", "--max-retries", "0"])
            assert status == 0
            assert server.count == 9 and server.max_in_flight > 1  # one after another would give 1
            assert {body["temperature"] for body in server.requests} == {0.0}
        result = json.loads(capsys.readouterr().out)
        assert result["reward"] == 3.0 and result["judge_failures"] == 0
        assert result["steps"][0]["judges"] == {"meta": "llm", "subproblem": "llm", "answer": "llm"}

    def test_hybrid_with_an_llm_field(self, tmp_path, capsys):
        from fault_server import Action, FaultServer

        teacher, student = tmp_path / "t.txt", tmp_path / "s.txt"
        teacher.write_text(TEACHER.render())
        student.write_text(STUDENT.render())
        with FaultServer(default=Action("ok", text="no")) as server:
            status = main(["score", "--teacher", str(teacher), "--student", str(student), "--judge", "hybrid",
                           "--meta-judge", "text", "--subproblem-judge", "llm", "--answer-judge", "math",
                           "--base-url", server.base_url, "--model", "judge", "--max-retries", "0"])
            assert status == 0 and server.count == 3  # one sub-problem per aligned step (the gate comes after)
        result = json.loads(capsys.readouterr().out)
        assert result["reward"] == 0.25 + 0.25  # step 1: sub-problem "no", answer 2 vs 3; step 2 likewise


@pytest.mark.slow
def test_llm_judge_over_a_real_local_model(tiny_model_dir):
    """No fake: a tiny random model's replies are read strictly, and whatever it says is counted."""
    from rlkd.backends import TransformersBackend

    backend = TransformersBackend(str(tiny_model_dir))
    judge = LLMJudge(backend)
    requests = [JudgeRequest("meta", "find x first", "find x"), JudgeRequest("answer", "2", "3")]
    verdicts = asyncio.run(judge.ajudge(requests))
    assert len(verdicts) == 2 and backend.stats.calls == 2
    assert judge.failures == sum(v.same is None for v in verdicts)
    for verdict in verdicts:
        assert verdict.reason.startswith(("reply ", "unreadable verdict: reply "))
    batched = LLMJudge(TransformersBackend(str(tiny_model_dir)), batched=True)
    assert len(asyncio.run(batched.ajudge(requests))) == 2 and batched.calls == 1
