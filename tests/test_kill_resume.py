"""Kill and resume: ``kill -9`` a real ``rlkd`` process mid-run, then run the same command again.

The GSRM is the fault server of tests/fault_server.py answering each request after a short delay, so the
job is slow enough for the kill to land mid-run deterministically: the test waits until the output file
has k lines, then sends SIGKILL to the process. The same command, run again, must end with every input
in the output exactly once (no duplicates, no gaps), asking the server only for what was not written
(or not in the request cache) before the kill.

Covered elsewhere, and not repeated here (see RELIABILITY.md):
``tests/test_data.py::test_data_gsrm_killed_mid_run_resumes_with_every_input_once`` (``rlkd data gsrm``)
and ``tests/test_train.py::test_killed_grpo_run_resumes_from_its_last_checkpoint`` (``rlkd train grpo``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_server import Action, FaultServer
from rlkd.cli import main

REPLY = "[Meta-reasoning 1]: begin\n[Sub-problem 1]: {problem}\n[Answer 1]: 7"


def slow_gsrm(delay: float):
    """A GSRM that answers every request after ``delay`` seconds with a one-step decomposition."""

    def reply(body: dict) -> Action:
        user = body["messages"][-1]["content"]
        problem = user.split("Problem:\n", 1)[-1].split("\n\nReasoning:", 1)[0]
        return Action("ok", delay=delay, text=REPLY.format(problem=problem))

    return reply


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_after_lines(command: list[str], watched: list[Path], k: int, timeout: float = 60.0) -> None:
    """Start ``command``; once the ``watched`` files hold ``k`` lines in all, SIGKILL it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while sum(lines_in(p) for p in watched) < k:
            if proc.poll() is not None:
                raise AssertionError(f"finished before the kill (status {proc.returncode}): "
                                     f"{proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, f"fewer than {k} lines after {timeout} s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlkd.cli", *args]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size, concurrency", [(1, 1), (4, 4)])
def test_decompose_killed_mid_run_resumes_with_every_input_exactly_once(tmp_path, batch_size, concurrency):
    inp, out = tmp_path / "traces.jsonl", tmp_path / "out.jsonl"
    n = 24
    inp.write_text("".join(json.dumps({"id": f"t{i}", "problem": f"problem {i}",
                                       "reasoning": f"<think>work {i}</think> 7"}) + "\n" for i in range(n)))
    with FaultServer(default=slow_gsrm(0.05)) as server:
        args = ["decompose", "--input", str(inp), "--output", str(out), "--base-url", server.base_url,
                "--model", "gsrm", "--batch-size", str(batch_size), "--concurrency", str(concurrency)]
        kill_after_lines(cli(*args), [out], k=8)  # with the default request cache next to the output
        written = [r["id"] for r in read_jsonl(out)]
        assert 8 <= len(written) < n and len(set(written)) == len(written)
        asked_before = server.count
        assert main(args) == 0  # the same command again, to the end
        asked_after = server.count - asked_before
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(f"t{i}" for i in range(n))  # every input exactly once
    assert ids[: len(written)] == written  # what the killed run wrote is kept as it was
    # only what was not written was asked again (less, if the cache already held some of it)
    assert asked_after <= n - len(written)
    assert all(r["status"] == "ok" and r["structure"]["steps"][0]["subproblem"] == f"problem {r['id'][1:]}"
               for r in read_jsonl(out))


@pytest.mark.slow
def test_data_rlkd_killed_mid_run_resumes_to_the_same_split_as_an_uninterrupted_run(tmp_path):
    inp = tmp_path / "openr1.jsonl"
    n = 24
    inp.write_text("".join(json.dumps({
        "uuid": f"u{i}", "problem": f"problem {i}", "answer": "7",
        "generations": [f"<think>wrong {i}</think> 8", f"<think>right {i}</think> 7"],
        "correctness_math_verify": [False, i % 6 != 5]}) + "\n" for i in range(n)))

    def args(base_url: str, out_dir: Path) -> list[str]:
        sets = [f"input={inp}", f"output_dir={out_dir}", "id_column=uuid", f"gsrm.base_url={base_url}",
                "gsrm.model=gsrm", "gsrm.concurrency=1", "batch_size=1", "test_size=0.25", "seed=3"]
        return ["data", "rlkd", *[x for s in sets for x in ("--set", s)]]

    def files(out_dir: Path) -> dict[str, list[str]]:
        return {name: [r["id"] for r in read_jsonl(out_dir / f"{name}.jsonl")] for name in ("train", "test", "skipped")}

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    with FaultServer(default=slow_gsrm(0.05)) as server:
        kill_after_lines(cli(*args(server.base_url, killed)),
                         [killed / "train.jsonl", killed / "test.jsonl", killed / "skipped.jsonl"], k=9)
        before = files(killed)
        assert main(args(server.base_url, killed)) == 0
        assert main(args(server.base_url, clean)) == 0
    after = files(killed)
    every = [i for ids in after.values() for i in ids]
    assert sorted(every) == sorted(f"u{i}" for i in range(n))  # each record in exactly one file, once
    for name in after:
        assert after[name][: len(before[name])] == before[name]  # the killed run's lines are kept
        assert sorted(after[name]) == sorted(files(clean)[name])  # same train/test/skipped as without a kill
