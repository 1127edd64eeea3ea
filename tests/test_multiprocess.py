"""The tiny RLKD recipe (structure reward through a local GSRM) in two processes under accelerate launch.

On a CPU, accelerate 1.15's ``--cpu`` launcher starts a single process (several only through mpirun), so
the two processes come from ``--multi_gpu --num_processes 2`` (torchrun underneath) with the recipe's
``use_cpu: true``: each process trains on the CPU over gloo and scores its own slice of every batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rlkd_grpo_in_two_processes(tiny_pipeline, tmp_path):
    tiny = tiny_pipeline
    out = tmp_path / "run"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "rlkd.cli", "train", "grpo", "--config", str(REPO / "configs/tiny/rlkd_grpo.yaml"),
               "--set", f"model={tiny['student']}", "--set", f"data.path={tiny['tasks_train']}",
               "--set", f"structure.gsrm.local_model={tiny['gsrm_base']}", "--set", "structure.gsrm_max_tokens=24",
               "--set", f"output_dir={out}", "--set", "training.max_steps=2", "--set", "training.max_completion_length=24"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]

    record = json.loads((out / "rlkd_run.json").read_text(encoding="utf-8"))
    assert [launch["world_size"] for launch in record["launches"]] == [2]  # one record, written by rank 0 only
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r for r in lines if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]  # gathered metrics, logged once per step, not once per process
    for name in ("rewards/structure/mean", "structure/meta_match", "structure/subproblem_match",
                 "structure/answer_match", "structure/prefix_length", "structure/gsrm_failures"):
        assert name in steps[0], name
    # 2 steps x 2 processes x 2 prompts = 8 of the 8 training prompts: one epoch; one process would do half
    assert lines[-1]["epoch"] == 1.0
    assert "rlkd train grpo: output in" in done.stderr and ", 2 processes" in done.stderr
