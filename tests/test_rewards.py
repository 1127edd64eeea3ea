"""The TRL reward functions: accuracy, format, tag count, the structure reward and the reward sets."""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest

from rlkd.backends import ScriptedBackend, TooManyFailures
from rlkd.gsrm import Decomposer
from rlkd.judges import TextJudge
from rlkd.rewards import (
    REWARD_SETS,
    StructureReward,
    accuracy,
    build_rewards,
    completion_text,
    format_reward,
    prompt_text,
    tag_count,
)
from rlkd.structure import Decomposition, Step

GOOD = "<think>\nx = 2, so x + 3 = 5\n</think>\n<answer>\n\\boxed{5}\n</answer>"


class TestReadingInputs:
    def test_completion_text_accepts_strings_and_chat_messages(self):
        assert completion_text("abc") == "abc"
        assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
        assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "bc"}]}]) == "abc"

    def test_prompt_text_is_the_last_user_message(self):
        assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                            {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]) == "q2"
        assert prompt_text("plain") == "plain"


class TestAccuracy:
    def test_literal_cases(self):
        completions = [GOOD, "<think>x</think><answer>\\boxed{6}</answer>", "the answer is 5",
                       "no answer at all", [{"role": "assistant", "content": "\\boxed{\\frac{10}{2}}"}]]
        assert accuracy(completions, ["5"] * 5) == [1.0, 0.0, 1.0, 0.0, 1.0]

    def test_the_rightmost_boxed_answer_counts(self):
        assert accuracy(["first \\boxed{4}, finally \\boxed{5}", "\\boxed{5} then \\boxed{4}"], ["5", "5"]) == [1.0, 0.0]

    def test_an_unreadable_gold_answer_gives_none(self):
        assert accuracy([GOOD, GOOD], ["", "???"]) == [None, None]


class TestFormat:
    @pytest.mark.parametrize("text, expected", [
        (GOOD, 1.0),
        ("  <think>x</think><answer>5</answer>\n\n", 1.0),
        ("<think>x</think>\n\n<answer>5</answer>", 1.0),
        ("<think>x</think>", 0.0),
        ("<answer>5</answer>", 0.0),
        ("<think>x</think><answer>5</answer> trailing text", 0.0),
        ("preamble <think>x</think><answer>5</answer>", 0.0),
        ("<think>x</think><answer>5</answer><answer>6</answer>", 0.0),
        ("<think>a<think>b</think><answer>5</answer>", 0.0),
        ("<answer>5</answer><think>x</think>", 0.0),
        ("", 0.0),
    ])
    def test_literal_cases(self, text, expected):
        assert format_reward([text]) == [expected]

    def test_chat_completions_and_the_logged_name(self):
        assert format_reward([[{"role": "assistant", "content": GOOD}]]) == [1.0]
        assert format_reward.__name__ == "format"


class TestTagCount:
    @pytest.mark.parametrize("text, expected", [
        (GOOD, 1.0),
        ("<think>\nx\n</think>\n", 0.5),
        ("<think>x</think><answer>5</answer>", 0.0),
        ("<think>\n<think>\nx\n</think>\n<answer>\n5\n</answer>", 0.75),  # <think>\n twice earns nothing
        ("\n</answer>", 0.25),
        ("", 0.0),
    ])
    def test_literal_cases(self, text, expected):
        assert tag_count([text]) == [expected]


class TestRewardSets:
    def test_rlkd_set_in_the_papers_ratio(self):
        structure = StructureReward(Decomposer(ScriptedBackend(lambda r: "")), TextJudge())
        funcs, weights = build_rewards(REWARD_SETS["rlkd"], structure)
        assert [f.__name__ for f in funcs] == ["accuracy", "structure", "format", "tag_count"]
        assert weights == [3.0, 3.0, 2.0, 2.0]
        assert funcs[1] is structure
        assert build_rewards("outcome")[1] == [3.0, 2.0, 2.0]

    def test_errors_name_what_is_wrong(self):
        with pytest.raises(ValueError, match="unknown reward 'acuracy'; known rewards: accuracy, structure"):
            build_rewards({"acuracy": 1})
        with pytest.raises(ValueError, match="'structure' reward needs a StructureReward"):
            build_rewards("rlkd")
        with pytest.raises(ValueError, match="weight of reward 'format' must be a number"):
            build_rewards({"format": "2"})
        with pytest.raises(ValueError, match="unknown reward set 'rlkd-zero'"):
            build_rewards("rlkd-zero")


# --------------------------------------------------------------------------------------------------
# The structure reward with a scripted GSRM and the text judge

TEACHER = Decomposition([Step("find x first", "what is x?", "2"), Step("then add", "what is x + 3?", "5")])
GSRM_REPLIES = {
    # student reasoning -> what the scripted GSRM writes for it
    "full": TEACHER.render(),  # same steps as the teacher: 2.0
    "half": "[Meta-reasoning 1]: find x first\n[Sub-problem 1]: what is x?\n[Answer 1]: 3\n"
            "[Meta-reasoning 2]: guess\n[Sub-problem 2]: what is x + 3?\n[Answer 2]: 5",  # 0.5
    "none": "I could not find any structure.",  # student parse failure: 0
    "other": "[Meta-reasoning 1]: something else\n[Sub-problem 1]: what is y?\n[Answer 1]: 1",  # 0
    "teacher trace": TEACHER.render(),
}


def gsrm_script(request):
    reasoning = re.search(r"Reasoning:\n(.*)\Z", request.last_user_message, re.S).group(1)
    if reasoning == "fail":
        raise ConnectionError("GSRM down")
    return GSRM_REPLIES[reasoning]


def make_reward(**kwargs):
    backend = ScriptedBackend(gsrm_script)
    return StructureReward(Decomposer(backend), TextJudge(), **kwargs), backend


class MetricLog:
    """Collects what the reward logs through TRL's log_metric / log_extra hooks."""

    def __init__(self):
        self.metrics = defaultdict(list)
        self.extra = {}

    def log_metric(self, name, value):
        self.metrics[name].append(value)

    def log_extra(self, column, values):
        self.extra[column] = values


def completion(reasoning):
    return f"<think>{reasoning}</think>\n<answer>\\boxed{{5}}</answer>"


class TestStructureReward:
    def test_rewards_metrics_and_skipped_samples(self):
        reward, _ = make_reward()
        logs = MetricLog()
        reasonings = ["full", "half", "none", "fail"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no all-zero warning for a batch with some reward
            rewards = asyncio.run(reward(["p"] * 4, [completion(r) for r in reasonings],
                                         teacher_structure=[TEACHER.to_json()] * 4,
                                         log_metric=logs.log_metric, log_extra=logs.log_extra))
        assert rewards == [2.0, 0.5, 0.0, None]
        # means over the three scored completions
        assert logs.metrics["structure/meta_match"] == [pytest.approx((1 + 0.5 + 0) / 3)]
        assert logs.metrics["structure/subproblem_match"] == [pytest.approx((1 + 1 + 0) / 3)]
        assert logs.metrics["structure/answer_match"] == [pytest.approx((1 + 0 + 0) / 3)]
        assert logs.metrics["structure/prefix_length"] == [pytest.approx((2 + 1 + 0) / 3)]
        assert logs.metrics["structure/zero_share"] == [pytest.approx(1 / 3)]
        assert logs.metrics["structure/student_parse_failures"] == [1.0]
        assert logs.metrics["structure/teacher_parse_failures"] == [0.0]
        assert logs.metrics["structure/judge_failures"] == [0.0]
        assert logs.metrics["structure/gsrm_failures"] == [1.0]
        assert logs.extra["structure_detail"][0] == "2: prefix 2, steps 2 vs teacher 2"
        assert logs.extra["structure_detail"][2].startswith("0: student: no step labels found")
        assert logs.extra["structure_detail"][3] == "skipped: GSRM call failed"

    def test_student_reasoning_and_problem_reach_the_gsrm(self):
        reward, backend = make_reward()
        prompt = [{"role": "system", "content": "Answer in tags."}, {"role": "user", "content": "What is x + 3?"}]
        asyncio.run(reward([prompt], [[{"role": "assistant", "content": completion("full")}]],
                           teacher_structure=[TEACHER.to_dict()]))
        assert backend.requests[0].last_user_message == "Problem:\nWhat is x + 3?\n\nReasoning:\nfull"
        asyncio.run(reward([prompt], [completion("full")], teacher_structure=[TEACHER.to_dict()],
                           problem=["From the column"]))
        assert backend.requests[1].last_user_message.startswith("Problem:\nFrom the column\n")

    def test_teacher_reasoning_is_decomposed_once_per_prompt_and_cached_across_steps(self, caplog):
        reward, backend = make_reward()
        prompts = ["p1"] * 4 + ["p2"] * 4
        completions = [completion("full")] * 8
        with pytest.warns(UserWarning, match="no 'teacher_structure' column"):
            first = asyncio.run(reward(prompts, completions, teacher_reasoning=["teacher trace"] * 8))
        assert first == [2.0] * 8
        teacher_requests = [r for r in backend.requests if r.last_user_message.endswith("teacher trace")]
        assert len(teacher_requests) == 2 and len(backend.requests) == 10
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            second = asyncio.run(reward(prompts, completions, teacher_reasoning=["teacher trace"] * 8))
        assert second == [2.0] * 8
        assert len(backend.requests) == 18  # 8 students, no teacher again
        assert sum("decomposed during training" in r.message for r in caplog.records) == 1

    def test_a_batch_of_zeros_warns_loudly(self, caplog):
        reward, _ = make_reward()
        with pytest.warns(RuntimeWarning, match=r"structure reward is 0 for all 2 scored completions"):
            rewards = asyncio.run(reward(["p", "p"], [completion("none"), completion("other")],
                                         teacher_structure=[TEACHER.to_json()] * 2))
        assert rewards == [0.0, 0.0]
        [record] = [r for r in caplog.records if "is 0 for all" in r.message]
        assert record.levelname == "WARNING"
        assert "student decompositions without steps: 1" in record.message
        assert "first meta-reasoning mismatched: 1" in record.message

    def test_too_many_gsrm_failures_stop_training(self):
        reward, _ = make_reward(max_failure_share=0.25, min_failures=4)
        with pytest.raises(TooManyFailures, match="GSRM calls of the structure reward failed"):
            asyncio.run(reward(["p"] * 4, [completion("fail")] * 2 + [completion("full")] * 2,
                               teacher_structure=[TEACHER.to_json()] * 4))

    def test_a_missing_teacher_column_is_a_clear_error(self):
        reward, _ = make_reward()
        with pytest.raises(ValueError, match="needs a 'teacher_structure' column"):
            asyncio.run(reward(["p"], [completion("full")], answer=["5"]))

    def test_an_unreadable_teacher_structure_scores_zero_with_the_reason(self):
        reward, _ = make_reward()
        logs = MetricLog()
        with pytest.warns(RuntimeWarning):
            rewards = asyncio.run(reward(["p"], [completion("full")], teacher_structure=[{"steps": "oops"}],
                                         log_metric=logs.log_metric))
        assert rewards == [0.0] and logs.metrics["structure/teacher_parse_failures"] == [1.0]

    def test_sample_log_is_readable_by_rlkd_inspect(self, tmp_path):
        from rlkd.inspector import load_pairs

        path = tmp_path / "samples.jsonl"
        reward, _ = make_reward(sample_log=path, samples_per_step=2)
        for step in (3, 4):
            asyncio.run(reward(["p"] * 3, [completion("full"), completion("half"), completion("none")],
                               teacher_structure=[TEACHER.to_json()] * 3,
                               trainer_state=SimpleNamespace(global_step=step)))
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(r["id"], r["step"], r["reward"]) for r in records] == [
            ("step3-0", 3, 2.0), ("step3-1", 3, 0.5), ("step4-0", 4, 2.0), ("step4-1", 4, 0.5)]
        assert records[1]["completion"] == completion("half") and records[1]["problem"] == "p"
        pairs = load_pairs(str(path))
        assert [p.result.reward for p in pairs] == [2.0, 0.5, 2.0, 0.5]
        assert pairs[1].student.steps[0].answer == "3" and pairs[1].teacher.steps[0].answer == "2"
