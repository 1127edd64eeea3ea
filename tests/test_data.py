"""rlkd data gsrm / rlkd: outputs, failures left out with the reason, resuming after a torn write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkd.backends import ScriptedBackend
from rlkd.cli import CliError, main
from rlkd.config import DataGsrmJob, DataRlkdJob, GRPOData, SFTData, build_job
from rlkd.data import Records, grpo_rows, run_data_gsrm, run_data_rlkd, sft_rows, teacher_completion
from rlkd.gsrm import build_prompt

ONE_STEP = "[Meta-reasoning 1]: add first\n[Sub-problem 1]: What is 2+3?\n[Answer 1]: 5"
TWO_STEPS = ("[Meta-reasoning 1]: need x\n[Sub-problem 1]: What is x?\n[Answer 1]: 2\n"
             "[Meta-reasoning 2]: then y\n[Sub-problem 2]: What is y?\n[Answer 2]: 4")
NO_STEPS = "I cannot do this."
NO_STEPS_REASON = ("no step labels found (looked for [Meta-reasoning N], [Meat-reasoning N], [sub-think N], "
                   "[Sub-problem N], [Query N], [Answer N])")

TRACES = [
    {"id": "a", "problem": "What is 2+3?", "reasoning": "<think>Add 2 and 3: 5.</think> 5", "domain": "math"},
    {"id": "b", "problem": "Say hi.", "reasoning": "<think>hi</think> hi", "domain": "puzzle"},
    {"id": "c", "problem": "x=2, y=2x. y?", "reasoning": "<think>x is 2, so y is 4.</think> 4", "domain": "math"},
    {"id": "d", "problem": "Unlucky.", "reasoning": "<think>...</think>", "domain": "science"},
]
REPLIES = {"What is 2+3?": ONE_STEP, "Say hi.": NO_STEPS, "x=2, y=2x. y?": TWO_STEPS, "Unlucky.": ONE_STEP}


def script(request) -> str:
    """Answer by the problem named in the GSRM prompt."""
    message = request.last_user_message
    for problem, reply in REPLIES.items():
        if problem in message:
            return reply
    raise KeyError("unknown problem")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tear_last_line(path: Path) -> None:
    """Cut the file in the middle of its last record, as a kill during the write would."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + (len(data) - start) // 2])


def gsrm_job(tmp_path: Path, **fields) -> DataGsrmJob:
    inp = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    return build_job(DataGsrmJob, {"input": str(inp), "output": str(tmp_path / "out" / "sft.jsonl"),
                                   "id_column": "id", "domain_column": "domain", "backend": {"local_model": "unused"},
                                   "request_cache": False, "batch_size": 2, "max_failure_share": 1.0, **fields})


class TestDataGsrm:
    def test_outputs_and_failures(self, tmp_path):
        job = gsrm_job(tmp_path)
        backend = ScriptedBackend(script, fail_when=lambda r: "Unlucky." in r.last_user_message)
        counts = run_data_gsrm(job, backend)
        assert counts == {"ok": 2, "no_steps": 1, "error": 1, "already_done": 0}
        out = read_jsonl(tmp_path / "out" / "sft.jsonl")
        assert [r["id"] for r in out] == ["a", "c"]
        assert list(out[0]) == ["id", "domain", "prompt", "completion", "steps", "truncated"]
        assert out[0]["prompt"] == build_prompt("What is 2+3?", TRACES[0]["reasoning"], "math", few_shot=False)
        assert out[0]["completion"] == [{"role": "assistant", "content": "[Meta-reasoning 1]: add first\n"
                                         "[Sub-problem 1]: What is 2+3?\n[Answer 1]: 5"}]
        assert out[1]["steps"] == 2
        # the unparsable reply is left out, recorded with the parser's reason and the raw text
        assert read_jsonl(tmp_path / "out" / "sft.jsonl.failures.jsonl") == [
            {"id": "b", "domain": "puzzle", "reason": NO_STEPS_REASON, "raw": NO_STEPS}]
        # the failed request (d) is not written anywhere: the next run retries it, and only it
        again = ScriptedBackend(script)
        assert run_data_gsrm(job, again)["ok"] == 1
        assert len(again.requests) == 1 and "Unlucky." in again.requests[0].last_user_message

    def test_the_strong_llm_gets_the_worked_example_and_the_domain_prompt(self, tmp_path):
        backend = ScriptedBackend(script)
        run_data_gsrm(gsrm_job(tmp_path), backend)
        first = backend.requests[0]
        assert first.as_openai_messages() == build_prompt("What is 2+3?", TRACES[0]["reasoning"], "math", few_shot=True)
        assert first.temperature == 0.0

    def test_resume_after_a_torn_write_gives_every_input_exactly_once(self, tmp_path):
        job = gsrm_job(tmp_path)
        run_data_gsrm(job, ScriptedBackend(script))
        output = tmp_path / "out" / "sft.jsonl"
        tear_last_line(output)
        again = ScriptedBackend(script)
        counts = run_data_gsrm(job, again)
        assert counts == {"ok": 1, "no_steps": 0, "error": 0, "already_done": 3}
        assert len(again.requests) == 1
        ids = [r["id"] for r in read_jsonl(output)] + [r["id"] for r in read_jsonl(Path(str(output) + ".failures.jsonl"))]
        assert sorted(ids) == ["a", "b", "c", "d"]

    def test_too_many_failures_stop_the_job_keeping_what_was_written(self, tmp_path):
        job = gsrm_job(tmp_path, max_failure_share=0.2, min_failures=1)
        with pytest.raises(CliError, match=r"stopped: 1 of 2 traces failed"):
            run_data_gsrm(job, ScriptedBackend(script))
        assert [r["id"] for r in read_jsonl(tmp_path / "out" / "sft.jsonl")] == ["a"]

    def test_missing_column_names_the_line(self, tmp_path):
        inp = write_jsonl(tmp_path / "traces.jsonl", [TRACES[0], {"id": "z", "problem": "p"}])
        job = build_job(DataGsrmJob, {"input": str(inp), "output": str(tmp_path / "o.jsonl"), "id_column": "id",
                                      "backend": {"local_model": "unused"}, "request_cache": False})
        with pytest.raises(CliError, match=r"traces\.jsonl:2: column 'reasoning' is missing"):
            run_data_gsrm(job, ScriptedBackend(script))

    def test_cli_over_http_with_the_request_cache(self, tmp_path, capsys):
        from fault_server import Action, FaultServer

        def reply(body: dict) -> Action:
            user = body["messages"][-1]["content"]
            return Action("ok", text=next((r for p, r in REPLIES.items() if p in user), NO_STEPS))

        inp = write_jsonl(tmp_path / "traces.jsonl", TRACES)
        output = tmp_path / "sft.jsonl"
        with FaultServer(default=reply) as server:
            args = ["data", "gsrm", "--set", f"input={inp}", "--set", f"output={output}", "--set", "id_column=id",
                    "--set", "domain_column=domain", "--set", f"backend.base_url={server.base_url}",
                    "--set", "backend.model=strong", "--set", "max_failure_share=1.0"]
            assert main(args) == 0
            assert len(server.requests) == 4
            assert [r["id"] for r in read_jsonl(output)] == ["a", "c", "d"]
            assert "3 examples written; 1 unparsable" in capsys.readouterr().err
            # a fresh output answered from the cache (on by default, next to the output): no new requests
            output.unlink()
            Path(str(output) + ".failures.jsonl").unlink()
            assert main(args) == 0
            assert len(server.requests) == 4
            assert [r["id"] for r in read_jsonl(output)] == ["a", "c", "d"]
        assert Path(str(output) + ".cache.sqlite").is_file()


# --------------------------------------------------------------------------------------------------

WRONG, RIGHT = "<think>x is 3.</think> \\boxed{3}", "<think>x is 2.</think> \\boxed{2}"
OPENR1 = [
    {"uuid": "r0", "problem": "x=2, y=2x. y?", "answer": "4", "generations": [WRONG, RIGHT],
     "correctness_math_verify": [False, True]},
    {"uuid": "r1", "problem": "What is 2+3?", "answer": "5", "generations": [RIGHT, WRONG],
     "correctness_math_verify": [True, True]},
    {"uuid": "r2", "problem": "Never right.", "answer": "1", "generations": [WRONG],
     "correctness_math_verify": [False]},
    {"uuid": "r3", "problem": "Say hi.", "answer": "hi", "generations": [WRONG, RIGHT],
     "correctness_math_verify": [None, True]},
    {"uuid": "r4", "problem": "Unlucky.", "answer": 7, "generations": [RIGHT], "correctness_math_verify": [True]},
]


def rlkd_job(tmp_path: Path, **fields) -> DataRlkdJob:
    inp = write_jsonl(tmp_path / "openr1.jsonl", OPENR1)
    return build_job(DataRlkdJob, {"input": str(inp), "output_dir": str(tmp_path / "rlkd"), "id_column": "uuid",
                                   "gsrm": {"local_model": "unused"}, "request_cache": False, "test_size": 0.25,
                                   "seed": 0, "batch_size": 2, "max_failure_share": 1.0, **fields})


def split_ids(folder: Path) -> dict[str, list]:
    return {name: [r["id"] for r in read_jsonl(folder / f"{name}.jsonl")] for name in ("train", "test", "skipped")}


class TestDataRlkd:
    def test_train_test_and_skipped(self, tmp_path):
        backend = ScriptedBackend(script)
        counts = run_data_rlkd(rlkd_job(tmp_path), backend)
        assert counts == {"train": 2, "test": 1, "no_correct": 1, "no_steps": 1, "error": 0, "already_done": 0,
                          "usable": 4, "test_target": 1}
        folder = tmp_path / "rlkd"
        # usable: r0, r1, r3, r4; the seed-0 sample of one of four is the fourth (r4)
        assert split_ids(folder) == {"train": ["r0", "r1"], "test": ["r4"], "skipped": ["r2", "r3"]}
        r0 = read_jsonl(folder / "train.jsonl")[0]
        assert r0 == {"id": "r0", "problem": "x=2, y=2x. y?", "answer": "4", "teacher_reasoning": RIGHT,
                      "teacher_structure": TWO_STEPS, "teacher_generation": 1, "truncated": False}
        assert read_jsonl(folder / "test.jsonl")[0]["answer"] == "7"
        skipped = read_jsonl(folder / "skipped.jsonl")
        assert skipped[0] == {"id": "r2", "reason": "no generation flagged correct in 'correctness_math_verify'"}
        assert skipped[1] == {"id": "r3", "reason": f"GSRM output has no steps: {NO_STEPS_REASON}", "raw": NO_STEPS}
        # the GSRM saw the first correct generation, once per usable record, without the worked example
        assert len(backend.requests) == 4
        assert "x is 2." in backend.requests[0].last_user_message
        assert [m["role"] for m in backend.requests[0].as_openai_messages()] == ["system", "user"]

    def test_output_is_grpo_training_data(self, tmp_path):
        run_data_rlkd(rlkd_job(tmp_path), ScriptedBackend(script))
        rows = grpo_rows(Records(str(tmp_path / "rlkd" / "train.jsonl")), GRPOData(system_prompt=None), True)
        assert rows[0] == {"prompt": [{"role": "user", "content": "x=2, y=2x. y?"}], "problem": "x=2, y=2x. y?",
                           "answer": "4", "teacher_structure": TWO_STEPS}

    def test_test_size_as_a_count(self, tmp_path):
        counts = run_data_rlkd(rlkd_job(tmp_path, test_size=2), ScriptedBackend(script))
        assert (counts["train"], counts["test"]) == (1, 2)
        assert split_ids(tmp_path / "rlkd")["test"] == ["r1", "r4"]

    def test_resume_after_a_torn_write_gives_every_input_exactly_once(self, tmp_path):
        job = rlkd_job(tmp_path)
        run_data_rlkd(job, ScriptedBackend(script))
        before = split_ids(tmp_path / "rlkd")
        tear_last_line(tmp_path / "rlkd" / "train.jsonl")  # r1's line is cut in half
        again = ScriptedBackend(script)
        counts = run_data_rlkd(job, again)
        assert (counts["train"], counts["already_done"]) == (1, 4)
        assert len(again.requests) == 1 and "What is 2+3?" in again.requests[0].last_user_message
        assert split_ids(tmp_path / "rlkd") == before

    def test_failed_requests_are_retried_by_the_next_run(self, tmp_path):
        job = rlkd_job(tmp_path)
        counts = run_data_rlkd(job, ScriptedBackend(script, fail_when=lambda r: "Unlucky." in r.last_user_message))
        assert counts["error"] == 1 and "r4" not in sum(split_ids(tmp_path / "rlkd").values(), [])
        counts = run_data_rlkd(job, ScriptedBackend(script))
        assert (counts["test"], counts["already_done"]) == (1, 4)

    def test_flags_must_match_generations(self, tmp_path):
        bad = dict(OPENR1[0], correctness_math_verify=[True])
        inp = write_jsonl(tmp_path / "openr1.jsonl", [OPENR1[1], bad])
        job = build_job(DataRlkdJob, {"input": str(inp), "output_dir": str(tmp_path / "o"),
                                      "gsrm": {"local_model": "unused"}, "request_cache": False})
        with pytest.raises(CliError, match=r"openr1\.jsonl:2: 2 generations but 1 correctness flags"):
            run_data_rlkd(job, ScriptedBackend(script))


# --------------------------------------------------------------------------------------------------


class TestInputs:
    def test_parquet_reads_like_jsonl(self, tmp_path):
        from datasets import Dataset

        Dataset.from_list(TRACES).to_parquet(str(tmp_path / "traces.parquet"))
        jsonl = list(Records(str(write_jsonl(tmp_path / "t.jsonl", TRACES))))
        parquet = list(Records(str(tmp_path / "traces.parquet")))
        assert [r for _, r, _ in parquet] == [r for _, r, _ in jsonl]
        assert parquet[1][2].endswith("traces.parquet[1]") and jsonl[1][2].endswith("t.jsonl:2")

    def test_missing_local_file(self, tmp_path):
        with pytest.raises(CliError, match=r"nope\.parquet: no such file or folder"):
            Records(str(tmp_path / "nope.parquet"))

    def test_teacher_completion(self):
        assert teacher_completion("<think>\nx = 2\n</think>\n<answer>\\boxed{2}</answer>", None, "2") == \
            "<think>\nx = 2\n</think>\n<answer>\n\\boxed{2}\n</answer>"
        assert teacher_completion("x = 2", None, "2") == "<think>\nx = 2\n</think>\n<answer>\n\\boxed{2}\n</answer>"
        assert teacher_completion("<think>a</think>", "So 3.", "3") == "<think>\na\n</think>\n<answer>\nSo 3.\n</answer>"

    def test_sft_rows_from_traces_and_chat(self, tmp_path):
        traces = write_jsonl(tmp_path / "t.jsonl", [{"problem": "1+1?", "teacher_reasoning": "<think>2</think>",
                                                      "answer": 2}])
        rows = sft_rows(Records(str(traces)), SFTData(system_prompt="S"))
        assert rows == [{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1?"}],
                         "completion": [{"role": "assistant",
                                         "content": "<think>\n2\n</think>\n<answer>\n\\boxed{2}\n</answer>"}]}]
        chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "q"}]}, {"x": 1}])
        with pytest.raises(CliError, match=r"c\.jsonl:2: chat data needs a 'messages' column"):
            sft_rows(Records(str(chat)), SFTData(format="chat"))

    def test_grpo_rows_need_the_teacher_structure_for_the_structure_reward(self, tmp_path):
        data = write_jsonl(tmp_path / "d.jsonl", [{"problem": "p", "answer": "1"}])
        with pytest.raises(CliError, match=r"d\.jsonl:1: column 'teacher_structure' is missing"):
            grpo_rows(Records(str(data)), GRPOData(), True)


@pytest.mark.slow
def test_data_gsrm_killed_mid_run_resumes_with_every_input_once(tmp_path):
    """``rlkd data gsrm`` in a subprocess, SIGKILLed while writing, then run again to the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fault_server import Action, FaultServer

    traces = [{"id": f"t{i}", "problem": f"Problem {i}: what is {i}+1?", "reasoning": f"<think>{i}+1={i + 1}</think>"}
              for i in range(30)]
    inp = write_jsonl(tmp_path / "traces.jsonl", traces)
    output = tmp_path / "sft.jsonl"

    def reply(body: dict) -> Action:
        user = body["messages"][-1]["content"]
        number = int(user.split("Problem ")[1].split(":")[0])
        text = NO_STEPS if number % 5 == 0 else f"[Meta-reasoning 1]: add\n[Sub-problem 1]: {number}+1?\n[Answer 1]: {number + 1}"
        return Action("ok", text=text, delay=0.05)

    with FaultServer(default=reply) as server:
        command = [sys.executable, "-m", "rlkd.cli", "data", "gsrm", "--set", f"input={inp}", "--set", f"output={output}",
                   "--set", "id_column=id", "--set", f"backend.base_url={server.base_url}", "--set", "backend.model=m",
                   "--set", "backend.concurrency=1", "--set", "batch_size=1", "--set", "max_failure_share=1.0"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (output.exists() and len(output.read_bytes().splitlines()) >= 5):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert first.returncode == -signal.SIGKILL
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr[-2000:]
    ids = [r["id"] for r in read_jsonl(output)]
    failed = [r["id"] for r in read_jsonl(Path(str(output) + ".failures.jsonl"))]
    assert sorted(ids + failed) == sorted(t["id"] for t in traces)  # every input exactly once
    assert failed == [f"t{i}" for i in range(0, 30, 5)]
    import re

    done_before = int(re.search(r"; (\d+) already done;", second.stderr).group(1))
    assert 5 <= done_before < 30  # the second run skipped what the killed one wrote, and only that


@pytest.mark.slow
def test_tiny_data_rlkd_recipe_with_a_local_gsrm(tiny_pipeline, tmp_path, capsys):
    """configs/tiny/data_rlkd.yaml through the CLI with a real (tiny, untrained) local GSRM."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "rlkd"
    args = ["data", "rlkd", "--config", str(repo / "configs/tiny/data_rlkd.yaml"),
            "--set", f"input={tiny_pipeline['openr1']}", "--set", f"gsrm.local_model={tiny_pipeline['gsrm_base']}",
            "--set", f"output_dir={out}", "--set", "max_tokens=32", "--set", "limit=8"]
    assert main(args) == 0
    found = split_ids(out)
    assert sorted(sum(found.values(), [])) == sorted(f"id-0-{i}" for i in range(8))
    skipped = {r["id"]: r["reason"] for r in read_jsonl(out / "skipped.jsonl")}
    assert skipped["id-0-7"] == "no generation flagged correct in 'correctness_math_verify'"
    assert all(reason.startswith("GSRM output has no steps: ") for i, reason in skipped.items() if i != "id-0-7")
    for name in ("train", "test"):
        for record in read_jsonl(out / f"{name}.jsonl"):
            assert record["teacher_generation"] == 1 and record["teacher_structure"].startswith("[Meta-reasoning 1]")
    assert "test split 2 of 7 usable records" in capsys.readouterr().err
    assert (out / "gsrm.cache.sqlite").is_file()
    # run again: nothing left to do
    assert main(args) == 0
    assert "; 8 already done;" in capsys.readouterr().err


def test_a_repeated_id_is_an_error_naming_the_line(tmp_path):
    inp = write_jsonl(tmp_path / "traces.jsonl", [TRACES[0], TRACES[1], dict(TRACES[2], id="a")])
    job = build_job(DataGsrmJob, {"input": str(inp), "output": str(tmp_path / "o.jsonl"), "id_column": "id",
                                  "backend": {"local_model": "unused"}, "request_cache": False, "max_failure_share": 1.0})
    with pytest.raises(CliError, match=r"traces\.jsonl:3: id 'a' appears twice in the input \(column 'id'\)"):
        run_data_gsrm(job, ScriptedBackend(script))
