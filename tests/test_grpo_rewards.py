"""A short CPU run of TRL's GRPOTrainer with all four RLKD rewards; the structure components are logged."""

from __future__ import annotations

import json
import math

import pytest

from rlkd.backends import ScriptedBackend
from rlkd.gsrm import Decomposer
from rlkd.judges import TextJudge
from rlkd.rewards import StructureReward, build_rewards
from rlkd.structure import Decomposition, Step

TEACHER = Decomposition([Step("start from the sum", "what is 2 + 2?", "4"),
                         Step("then double it", "what is 2 * 4?", "8")])
# The scripted GSRM writes the same decomposition for every completion: the teacher's first step, then
# the teacher's second meta-reasoning and answer with a different sub-problem. So every completion earns
# 1 + 0.5 = 1.5 and every component is known exactly.
STUDENT_TEXT = ("[Meta-reasoning 1]: start from the sum\n[Sub-problem 1]: what is 2 + 2?\n[Answer 1]: 4\n"
                "[Meta-reasoning 2]: then double it\n[Sub-problem 2]: what is 4 + 4?\n[Answer 2]: 8")


@pytest.mark.slow
def test_grpo_trainer_runs_all_four_rewards_and_logs_structure_components(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    backend = ScriptedBackend(lambda request: STUDENT_TEXT)
    structure = StructureReward(Decomposer(backend), TextJudge(), sample_log=tmp_path / "samples.jsonl",
                                samples_per_step=1)
    reward_funcs, reward_weights = build_rewards("rlkd", structure)
    rows = [{"prompt": [{"role": "user", "content": question}], "answer": gold, "teacher_structure": TEACHER.to_json()}
            for question, gold in (("What is (2 + 2) * 2?", "8"), ("Double 2 + 2.", "8"))]
    config = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=24,
        learning_rate=1e-5,
        beta=0.04,
        temperature=0.7,
        reward_weights=reward_weights,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=reward_funcs, args=config,
                          train_dataset=Dataset.from_list(rows))
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "structure/meta_match" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert entry["rewards/structure/mean"] == pytest.approx(1.5)
        assert entry["structure/meta_match"] == pytest.approx(1.0)
        assert entry["structure/subproblem_match"] == pytest.approx(0.5)
        assert entry["structure/answer_match"] == pytest.approx(1.0)
        assert entry["structure/prefix_length"] == pytest.approx(2.0)
        assert entry["structure/student_parse_failures"] == 0.0
        assert entry["structure/gsrm_failures"] == 0.0
        assert entry["structure/judge_failures"] == 0.0
        for name in ("accuracy", "format", "tag_count"):
            assert not math.isnan(entry[f"rewards/{name}/mean"])
    assert len(backend.requests) == 16  # 8 completions per step, 2 steps
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["reward"]) for s in samples] == [(0, 1.5), (1, 1.5)]
