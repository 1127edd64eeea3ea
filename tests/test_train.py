"""rlkd train sft / grpo: the tiny recipes end to end on CPU, run records, reward-first logs, kill and resume."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlkd.cli import main
from rlkd.train import format_log_line, last_checkpoint, order_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tiny_pipeline) -> dict[str, Path]:
    """What ``rlkd data tiny`` writes, small (tests/conftest.py)."""
    return tiny_pipeline


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def grpo_args(recipe: str, tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    args = ["train", "grpo", "--config", str(REPO / "configs/tiny" / recipe), "--set", f"model={tiny['student']}",
            "--set", f"data.path={tiny['tasks_train']}", "--set", f"output_dir={out}",
            "--set", "training.max_steps=2", "--set", "training.save_steps=2", "--set", "training.max_completion_length=24"]
    if recipe.startswith("rlkd"):
        args += ["--set", f"structure.gsrm.local_model={tiny['gsrm_base']}", "--set", "structure.gsrm_max_tokens=24"]
    return args + list(extra)


def check_run_record(out: Path, launches: int = 1) -> dict:
    import torch
    import transformers
    import trl

    record = json.loads((out / "rlkd_run.json").read_text(encoding="utf-8"))
    assert len(record["launches"]) == launches
    launch = record["launches"][-1]
    assert launch["versions"]["torch"] == torch.__version__
    assert launch["versions"]["trl"] == trl.__version__
    assert launch["versions"]["transformers"] == transformers.__version__
    assert re.fullmatch(r"[0-9a-f]{40}", launch["git"]["commit"]) and isinstance(launch["git"]["dirty"], bool)
    return record


@pytest.mark.slow
@pytest.mark.parametrize("recipe, data, model", [("sft.yaml", "tasks_train", "student"),
                                                 ("gsrm_sft.yaml", "gsrm_sft", "gsrm_base")])
def test_sft_tiny_recipe(recipe, data, model, tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rlkd.train")
    out = tmp_path / "run"
    assert main(["train", "sft", "--config", str(REPO / "configs/tiny" / recipe), "--set", f"model={tiny[model]}",
                 "--set", f"data.path={tiny[data]}", "--set", f"output_dir={out}", "--set", "training.max_steps=2",
                 "--set", "training.save_steps=2", "--set", "training.logging_steps=1",
                 "--set", "training.per_device_train_batch_size=2"]) == 0
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 2
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    config = yaml.safe_load((out / "rlkd_config.yaml").read_text(encoding="utf-8"))
    assert (config["model"], config["training"]["max_steps"]) == (str(tiny[model]), 2)
    check_run_record(out)
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2]
    assert any(m.startswith("step 2/2 | loss ") for m in caplog.messages)


@pytest.mark.slow
def test_grpo_rlkd_tiny_recipe_with_a_local_gsrm(tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rlkd.train")
    out = tmp_path / "rlkd"
    assert main(grpo_args("rlkd_grpo.yaml", tiny, out)) == 0
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in logged] == [1, 2]
    assert list(logged[0])[1:5] == ["reward", "reward_std", "rewards/accuracy/mean", "rewards/accuracy/std"]
    assert list(logged[0])[5:7] == ["rewards/structure/mean", "rewards/structure/std"]
    for name in ("structure/meta_match", "structure/subproblem_match", "structure/answer_match",
                 "structure/prefix_length", "structure/gsrm_failures"):
        assert name in logged[0], name
    assert logged[0]["structure/gsrm_failures"] == 0.0  # the GSRM (a real local model) answered every call
    samples = read_jsonl(out / "structure_samples.jsonl")
    assert samples and {"reward", "teacher", "student", "completion"} <= set(samples[0])
    assert any(m.startswith("step 1/2 | reward ") and "structure: meta_match " in m for m in caplog.messages)
    assert yaml.safe_load((out / "rlkd_config.yaml").read_text(encoding="utf-8"))["rewards"]["set"] == "rlkd"


@pytest.mark.slow
def test_killed_grpo_run_resumes_from_its_last_checkpoint(tiny, tmp_path, caplog):
    """The outcome recipe (SFT+RL baseline) end to end: ``rlkd train grpo`` in a subprocess is killed
    with SIGKILL after a checkpoint, and the same command resumes it (here in-process, to save a start)."""
    caplog.set_level(logging.INFO, logger="rlkd.train")
    out = tmp_path / "killed"
    args = grpo_args("sft_then_grpo.yaml", tiny, out, "--set", "training.max_steps=6")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.Popen([sys.executable, "-m", "rlkd.cli", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # killed before the end
    checkpoint = last_checkpoint(out)
    step = int(checkpoint.name.split("-")[1])
    assert 2 <= step < 6
    assert len(read_jsonl(out / "metrics.jsonl")) >= step

    assert main(args) == 0
    assert any(m.endswith(f", resuming from {checkpoint}") for m in caplog.messages)
    record = check_run_record(out, launches=2)
    assert record["launches"][0]["resumed_from"] is None
    assert record["launches"][1]["resumed_from"] == str(checkpoint)
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in logged] == list(range(1, 7))  # steps replayed after the kill are logged once
    resumed = [r for r in logged if r["step"] > step]
    # the reward and its components lead every logged line
    assert list(resumed[0])[:9] == ["step", "reward", "reward_std", "rewards/accuracy/mean", "rewards/accuracy/std",
                                    "rewards/format/mean", "rewards/format/std", "rewards/tag_count/mean",
                                    "rewards/tag_count/std"]
    line = next(m for m in caplog.messages if m.startswith(f"step {step + 1}/6 | reward "))
    assert re.search(r"\| accuracy [\d.]+×3 format [\d.]+×2 tag_count [\d.]+×2 \|", line), line
    final = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text(encoding="utf-8"))
    assert final["global_step"] == 6
    assert (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------


def test_last_checkpoint_skips_an_incomplete_one(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text('{"global_step": %d}' % step, encoding="utf-8")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert last_checkpoint(tmp_path / "absent") is None


def test_metrics_are_ordered_reward_first():
    logs = {"loss": 0.1, "kl": 0.0, "structure/judge_failures": 0.0, "rewards/format/mean": 1.0, "reward": 2.5,
            "rewards/accuracy/mean": 0.5, "structure/meta_match": 0.25, "reward_std": 0.5}
    ordered = order_metrics(logs, ["accuracy", "format"])
    assert list(ordered) == ["reward", "reward_std", "rewards/accuracy/mean", "rewards/format/mean",
                             "structure/judge_failures", "structure/meta_match", "loss", "kl"]
    assert format_log_line(3, 10, ordered, ["accuracy", "format"], [3.0, 2.0]) == (
        "step 3/10 | reward 2.500 ± 0.500 | accuracy 0.500×3 format 1.000×2 | "
        "structure: meta_match 0.250 judge_failures 0.000 | loss 0.1 kl 0")


def test_dry_run_reports_the_checkpoint_it_would_resume(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}', encoding="utf-8")
    assert main(grpo_args("rlkd_zero.yaml", tiny, out, "--dry-run", "--strict")) == 0
    printed = capsys.readouterr().out
    assert f"[ok] resume from {out / 'checkpoint-3'}" in printed
    assert f"[ok] model = {tiny['student']}: model folder found" in printed
    assert f"[ok] data.path = {tiny['tasks_train']}: columns problem, answer, teacher_structure present" in printed


def test_a_dead_gsrm_stops_training_with_a_clear_error(tiny, tmp_path, capsys):
    """Every GSRM call refused (nothing listens on the port): the run stops before any update, with a
    one-line error saying how to resume, not a traceback."""
    import socket

    with socket.socket() as sock:  # a free port, closed again: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "dead"
    args = grpo_args("rlkd_grpo.yaml", tiny, out, "--set", "structure.gsrm.local_model=null",
                     "--set", f"structure.gsrm.base_url=http://127.0.0.1:{port}/v1", "--set", "structure.gsrm.model=m",
                     "--set", "structure.gsrm.max_retries=0", "--set", "structure.min_failures=1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rlkd train: error: stopped before training on noise:" in err
    assert "run the same command again to resume from the start" in err
    assert not list(out.glob("checkpoint-*"))


def test_train_job_refuses_missing_inputs_before_writing_anything(tmp_path):
    from rlkd.cli import CliError
    from rlkd.config import SFTJob
    from rlkd.train import train_job

    job = SFTJob(model=str(tmp_path / "no_model"), output_dir=str(tmp_path / "out"))
    job.data.path = str(tmp_path / "no_data.jsonl")
    job.training.bf16, job.training.use_cpu = False, True
    with pytest.raises(CliError, match="inputs not ready") as caught:
        train_job(job)
    assert f"model = {tmp_path / 'no_model'}: no such folder here" in str(caught.value)
    assert f"data.path = {tmp_path / 'no_data.jsonl'}: no such file here" in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_job_runs_a_job_built_in_python(tiny, tmp_path):
    """What rlkd demo does: build the job in Python, train through train_job, get TRL's metrics back."""
    from rlkd.config import SFTJob
    from rlkd.train import train_job

    out = tmp_path / "gsrm"
    job = SFTJob(model=str(tiny["gsrm_base"]), output_dir=str(out))
    job.data.path, job.data.format = str(tiny["gsrm_sft"]), "chat"
    job.training.max_steps, job.training.per_device_train_batch_size = 1, 2
    job.training.bf16, job.training.use_cpu = False, True
    metrics = train_job(job, argv=["rlkd demo", "sft", str(out)])
    assert metrics["train_loss"] > 0
    assert (out / "model.safetensors").is_file()
    record = check_run_record(out)
    assert record["launches"][0]["command"] == ["rlkd demo", "sft", str(out)]
    assert yaml.safe_load((out / "rlkd_config.yaml").read_text(encoding="utf-8"))["data"]["format"] == "chat"


def test_structure_reward_sends_the_gsrm_prompt_file(tiny, tmp_path):
    """structure.gsrm_prompt replaces the packaged prompt of structure.domain in every GSRM request."""
    from rlkd.config import GRPOJob, build_job
    from rlkd.train import grpo_structure_reward

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("=== user ===\nSplit up.\nProblem: {problem}\nReasoning: {reasoning}\n", encoding="utf-8")
    job = build_job(GRPOJob, {"model": str(tiny["student"]), "output_dir": str(tmp_path / "out"),
                              "data": {"path": str(tiny["tasks_train"])}, "rewards": {"set": "rlkd"},
                              "structure": {"gsrm": {"local_model": str(tiny["gsrm_base"])},
                                            "gsrm_prompt": str(prompt)}})
    reward = grpo_structure_reward(job)
    request = reward.decomposer.request("What is 2+2?", "<think>2+2=4</think> 4")[0]
    assert request.messages == (("user", "Split up.\nProblem: What is 2+2?\nReasoning: 2+2=4"),)
