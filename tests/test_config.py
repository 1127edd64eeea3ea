"""Job configurations: YAML recipes, --set overrides, validation naming the field, and the dry run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rlkd.cli import main
from rlkd.config import (
    ConfigError,
    DataGsrmJob,
    DataRlkdJob,
    GRPOJob,
    SFTJob,
    build_job,
    check_trl_fields,
    load_job,
    trl_kwargs,
)
from rlkd.recipes import dump_yaml, merge_overrides

REPO = Path(__file__).resolve().parents[1]
MINIMAL_GRPO = {"model": "m", "output_dir": "out", "data": {"path": "train.jsonl"}, "rewards": {"set": "outcome"}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class TestLoad:
    def test_yaml_fills_fields_and_defaults(self, tmp_path):
        recipe = write(tmp_path, "model: org/student\noutput_dir: runs/x\ndata:\n  path: d.jsonl\n"
                                 "structure:\n  gsrm:\n    base_url: http://h:1/v1\n    model: gsrm\n"
                                 "training:\n  max_steps: 7\n  bf16: false\n")
        job = load_job(GRPOJob, recipe)
        assert job.model == "org/student"
        assert job.training.max_steps == 7
        assert job.structure.gsrm.base_url == "http://h:1/v1"
        # defaults are the authors' settings (SPEC section 5)
        assert (job.training.beta, job.training.loss_type, job.training.num_generations) == (0.04, "bnpo", 4)
        assert job.rewards.resolved() == {"accuracy": 3.0, "structure": 3.0, "format": 2.0, "tag_count": 2.0}

    def test_set_overrides_recipe_values(self, tmp_path):
        recipe = write(tmp_path, yaml.safe_dump(MINIMAL_GRPO))
        job = load_job(GRPOJob, recipe, ["training.beta=0.1", "training.report_to=[wandb]", "data.limit=5",
                                         "data.system_prompt=null"])
        assert job.training.beta == 0.1
        assert job.training.report_to == ["wandb"]
        assert job.data.limit == 5
        assert job.data.system_prompt is None

    def test_explicit_weights_replace_the_default_set(self):
        job = load_job(GRPOJob, None, ["model=m", "output_dir=o", "data.path=d.jsonl",
                                       "rewards.weights={accuracy: 1, format: 0.5}"])
        assert job.rewards.set is None
        assert job.rewards.resolved() == {"accuracy": 1.0, "format": 0.5}
        assert trl_kwargs(job)["reward_weights"] == [1.0, 0.5]

    def test_int_is_accepted_for_float_fields(self):
        job = build_job(GRPOJob, {**MINIMAL_GRPO, "training": {"learning_rate": 1, "warmup_steps": 0}})
        assert job.training.learning_rate == 1.0 and isinstance(job.training.learning_rate, float)

    def test_exponent_numbers_are_numbers_in_recipes_and_set(self, tmp_path):
        """1e-3 is a number (YAML 1.2), not the string PyYAML's YAML 1.1 rules would make it."""
        recipe = write(tmp_path, yaml.safe_dump(MINIMAL_GRPO).replace("output_dir:", "training:\n  beta: 4e-2\noutput_dir:"))
        job = load_job(GRPOJob, recipe, ["training.learning_rate=1e-6"])
        assert (job.training.learning_rate, job.training.beta) == (1e-6, 0.04)
        assert merge_overrides({}, ["a=1e", "b=e3", "c=3E4"]) == {"a": "1e", "b": "e3", "c": 30000.0}

    def test_dump_reads_back_to_an_equal_job(self):
        job = load_job(GRPOJob, REPO / "configs/paper/rlkd_grpo.yaml")
        assert build_job(GRPOJob, yaml.safe_load(dump_yaml(job))) == job

    def test_set_creates_missing_sections(self):
        assert merge_overrides({}, ["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


class TestValidation:
    @pytest.mark.parametrize("override, message", [
        ("training.bta=1", "training.bta: unknown field of GRPOTraining (did you mean training.beta?)"),
        ("modle=x", "modle: unknown field of GRPOJob (did you mean model?)"),
        ("training.num_generations=four", "training.num_generations: expected integer, got string 'four'"),
        ("training.max_steps=2.5", "training.max_steps: expected integer, got number 2.5"),
        ("training.bf16=yes please", "training.bf16: expected true/false, got string 'yes please'"),
        ("training.loss_type=ppo", "training.loss_type: 'ppo' is not one of grpo, bnpo, dr_grpo, dapo, cispo, sapo"),
        ("rewards.set=fancy", "rewards.set: 'fancy' is not one of rlkd, outcome"),
        ("training.num_generations=1", "training.num_generations: GRPO needs at least 2 completions per prompt"),
        ("training.temperature=0", "training.temperature: must be > 0"),
        ("training.extra={beta: 0.1}", "training.extra.beta: set it as training.beta, not under extra"),
        ("rewards={weights: {accuracy: 1, speed: 2}}", "rewards.weights.speed: unknown reward"),
        ("rewards.weights={accuracy: 1}", "rewards: give either rewards.set or rewards.weights, not both"),
        ("data.path=", "data.path: required"),
        ("resume=/no/such/checkpoint", "resume: expected auto, never or an existing checkpoint folder"),
    ])
    def test_errors_name_the_field(self, override, message):
        with pytest.raises(ConfigError) as info:
            build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, [override]))
        assert str(info.value).startswith(message), str(info.value)

    def test_structure_reward_needs_a_gsrm(self):
        with pytest.raises(ConfigError, match=r"^structure\.gsrm: the structure reward needs a backend"):
            build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, ["rewards.set=rlkd"]))

    def test_server_backend_needs_a_model_name(self):
        with pytest.raises(ConfigError, match=r"^structure\.gsrm\.model: required with structure\.gsrm\.base_url"):
            build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, ["rewards.set=rlkd", "structure.gsrm.base_url=http://h/v1"]))

    def test_gsrm_prompt_file_must_exist_and_parse(self, tmp_path):
        rlkd = ["rewards.set=rlkd", "structure.gsrm.local_model=g"]
        absent = tmp_path / "absent.txt"
        with pytest.raises(ConfigError, match=r"^structure\.gsrm_prompt: .*absent\.txt: no such file"):
            build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, [*rlkd, f"structure.gsrm_prompt={absent}"]))
        bad = tmp_path / "bad.txt"
        bad.write_text("=== user ===\nDecompose {problem}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"^structure\.gsrm_prompt: .*bad\.txt: the last section must be "
                                              r"'=== user ===' and contain \{reasoning\}"):
            build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, [*rlkd, f"structure.gsrm_prompt={bad}"]))
        good = tmp_path / "good.txt"
        good.write_text("=== user ===\nSplit up.\nProblem: {problem}\nReasoning: {reasoning}\n", encoding="utf-8")
        job = build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, [*rlkd, f"structure.gsrm_prompt={good}"]))
        assert job.structure.prompt_source() == str(good.resolve())
        assert build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, rlkd)).structure.prompt_source() == "math"

    def test_llm_judge_needs_its_backend(self):
        with pytest.raises(ConfigError, match=r"^structure\.judge_backend: the llm judge needs a backend"):
            build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, [
                "rewards.set=rlkd", "structure.gsrm.local_model=g", "structure.judge=hybrid",
                "structure.answer_judge=llm"]))

    def test_bf16_on_cpu_is_refused(self):
        with pytest.raises(ConfigError, match=r"^training\.bf16: bfloat16 mixed precision needs a GPU"):
            build_job(SFTJob, {"model": "m", "output_dir": "o", "data": {"path": "d.jsonl"},
                               "training": {"use_cpu": True, "bf16": True}})

    def test_a_section_must_be_a_mapping(self):
        with pytest.raises(ConfigError, match=r"^training: expected a mapping of GRPOTraining fields, got integer 3"):
            build_job(GRPOJob, {**MINIMAL_GRPO, "training": 3})

    def test_bad_set_syntax(self):
        with pytest.raises(ConfigError, match=r"--set training\.beta: expected KEY=VALUE"):
            merge_overrides({}, ["training.beta"])

    def test_recipe_must_be_a_mapping(self, tmp_path):
        with pytest.raises(ConfigError, match=r"recipe\.yaml: a recipe must be a mapping of fields, got list"):
            load_job(GRPOJob, write(tmp_path, "- a\n- b\n"))

    def test_extra_keys_are_checked_against_trl(self):
        job = build_job(GRPOJob, merge_overrides(MINIMAL_GRPO, ["training.extra={num_generatoins_eval: 2}"]))
        with pytest.raises(ConfigError, match=r"^training\.extra\.num_generatoins_eval: not a field of TRL's "
                                              r"GRPOConfig \(did you mean num_generations_eval\?\)"):
            check_trl_fields(job)

    def test_data_jobs_validate(self):
        with pytest.raises(ConfigError, match=r"^backend: rlkd data gsrm needs a backend"):
            build_job(DataGsrmJob, {"input": "i.jsonl", "output": "o.jsonl"})
        with pytest.raises(ConfigError, match=r"^test_size: a count must be a whole number, got 2.5"):
            build_job(DataRlkdJob, {"input": "i.jsonl", "output_dir": "o", "gsrm": {"local_model": "g"},
                                    "test_size": 2.5})


RECIPES = sorted((REPO / "configs").glob("*/*.yaml"))
JOB_OF = {"sft": SFTJob, "gsrm_sft": SFTJob, "data_gsrm": DataGsrmJob, "data_rlkd": DataRlkdJob}


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.parent.name != "accelerate"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_opens_with_its_command_and_loads(recipe):
    lines = recipe.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    run_lines = [h for h in header if h.startswith("# Run:")]
    assert run_lines
    if recipe.parent.name == "verl" and recipe.stem == "rlkd_grpo":  # verl's own trainer config
        assert "verl.trainer.main_ppo" in run_lines[0] and "--config-name=rlkd_grpo" in run_lines[0]
        assert yaml.safe_load(recipe.read_text(encoding="utf-8"))
        return
    assert f"--config configs/{recipe.parent.name}/{recipe.name}" in run_lines[0]
    if recipe.stem == "rlkd_reward":  # the reward served to verl or OpenRLHF (a GRPO recipe's reward)
        from rlkd.serve import load_serve_job

        assert "rlkd serve" in run_lines[0]
        load_serve_job(recipe)
        return
    if recipe.parent.name == "demo":  # rlkd demo recipes (rlkd.experiment.DemoJob)
        from rlkd.experiment import load_demo_job

        assert "rlkd demo" in run_lines[0]
        load_demo_job(recipe)
        return
    kind = JOB_OF.get(recipe.stem, GRPOJob)
    command = {SFTJob: "train sft", GRPOJob: "train grpo", DataGsrmJob: "rlkd data gsrm",
               DataRlkdJob: "rlkd data rlkd"}[kind]
    assert command in run_lines[0]
    load_job(kind, recipe)


def test_accelerate_config_opens_with_its_command():
    text = (REPO / "configs/accelerate/zero3.yaml").read_text(encoding="utf-8")
    assert text.startswith("#") and "accelerate launch --config_file configs/accelerate/zero3.yaml" in text
    assert yaml.safe_load(text)["deepspeed_config"]["zero_stage"] == 3


class TestDryRun:
    @pytest.mark.parametrize("recipe, weights", [
        ("rlkd_grpo", "[3.0, 3.0, 2.0, 2.0]"),
        ("rlkd_zero", "[3.0, 3.0, 2.0, 2.0]"),
        ("sft_then_grpo", "[3.0, 2.0, 2.0]"),
    ])
    def test_paper_grpo_recipes(self, recipe, weights, capsys):
        assert main(["train", "grpo", "--config", f"{REPO}/configs/paper/{recipe}.yaml", "--dry-run"]) == 0
        out = capsys.readouterr().out
        for line in ("  beta = 0.04", "  loss_type = 'bnpo'", "  scale_rewards = 'group'", "  num_generations = 4",
                     "  temperature = 0.7", "  learning_rate = 5e-05", "  lr_scheduler_type = 'constant_with_warmup'",
                     "  warmup_steps = 0.1", "  max_grad_norm = 0.2", "  max_completion_length = 4096",
                     f"  reward_weights = {weights}"):
            assert line in out.splitlines(), line
        assert "max_prompt_length: 1024" in out
        assert "<think>" in out and "\\boxed{" in out  # the system prompt

    def test_rlkd_weights_are_printed_by_name(self, capsys):
        main(["train", "grpo", "--config", f"{REPO}/configs/paper/rlkd_grpo.yaml", "--dry-run"])
        out = capsys.readouterr().out
        table = re.findall(r"^  (\w+) +weight (\S+)$", out, re.MULTILINE)
        assert table == [("accuracy", "3"), ("structure", "3"), ("format", "2"), ("tag_count", "2")]

    @pytest.mark.parametrize("recipe", ["sft", "gsrm_sft"])
    def test_paper_sft_recipes(self, recipe, capsys):
        assert main(["train", "sft", "--config", f"{REPO}/configs/paper/{recipe}.yaml", "--dry-run"]) == 0
        assert "TRL SFTConfig (values the trainer will use):" in capsys.readouterr().out

    def test_strict_fails_on_missing_inputs(self, capsys):
        code = main(["train", "grpo", "--config", f"{REPO}/configs/paper/rlkd_grpo.yaml", "--dry-run", "--strict"])
        assert code == 2
        assert "data.path = data/rlkd/train.jsonl: no such file here" in capsys.readouterr().err

    def test_missing_column_in_a_local_file_is_an_error(self, tmp_path, capsys):
        data = tmp_path / "train.jsonl"
        data.write_text('{"problem": "1+1?", "solution": "2"}\n', encoding="utf-8")
        code = main(["train", "grpo", "--config", f"{REPO}/configs/paper/sft_then_grpo.yaml", "--dry-run",
                     "--set", f"data.path={data}"])
        assert code == 2
        assert f"data.path = {data}: needs columns (problem, answer); found problem, solution" in capsys.readouterr().err

    def test_config_errors_exit_2_naming_the_field(self, capsys):
        code = main(["train", "grpo", "--config", f"{REPO}/configs/paper/rlkd_grpo.yaml", "--dry-run",
                     "--set", "training.beta=high"])
        assert code == 2
        assert "training.beta: expected number, got string 'high'" in capsys.readouterr().err
