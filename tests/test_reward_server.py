"""``rlkd serve`` and the verl / OpenRLHF integrations, against real HTTP servers on 127.0.0.1.

The GSRM is the OpenAI-compatible fault server of tests/fault_server.py. It decomposes a trace by echoing
the ``[Meta-reasoning ...]`` blocks the trace itself carries, so rewards are known in advance, and it
injects faults: a trace containing ``FAIL`` always gets HTTP 500 (the GSRM call fails after the backend's
retry), one containing ``FLAKY`` gets HTTP 500 on its first request only (the backend's retry succeeds).
``rlkd serve`` runs as a subprocess (``python -m rlkd.cli serve``), as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from fault_server import Action, FaultServer

from rlkd.serve import (RecordIndex, RewardRequest, RewardScorer, UnscorableRequest, completion_from_query,
                        load_serve_job)

REPO = Path(__file__).resolve().parents[1]
RECORDS = 20
TEACHER = {"steps": [
    {"meta_reasoning": "first find the prime factors of the number", "subproblem": "what are the prime factors of 12",
     "answer": "2, 2, 3"},
    {"meta_reasoning": "then add the prime factors together", "subproblem": "what is 2 + 2 + 3", "answer": "7"},
]}
CHAT = ("<|im_start|>system\nThink, then answer.<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n"
        "<|im_start|>assistant\n")


def problem(i: int) -> str:
    return f"Problem {i}: add the prime factors of 12, counted with multiplicity."


def decomposition(steps) -> str:
    return "\n".join(f"[Meta-reasoning {k}]: {m}\n[Sub-problem {k}]: {q}\n[Answer {k}]: {a}"
                     for k, (m, q, a) in enumerate(steps, start=1))


TEACHER_STEPS = [(s["meta_reasoning"], s["subproblem"], s["answer"]) for s in TEACHER["steps"]]
# (completion kind, structure reward, accuracy, format, tag_count) of each kind of completion
KINDS = {
    "perfect": (2.0, 1.0, 1.0, 1.0),
    "wrong_answer": (2.0, 0.0, 1.0, 1.0),
    "other_plan": (0.0, 1.0, 1.0, 1.0),     # first meta-reasoning differs: the gate stops all credit
    "other_subproblem": (1.5, 1.0, 1.0, 1.0),  # step 2 asks something else: 1 + 0.5
    "untagged": (2.0, 1.0, 0.0, 0.0),
}


def completion(kind: str, marker: str = "") -> str:
    steps = list(TEACHER_STEPS)
    if kind == "other_plan":
        steps[0] = ("guess an answer and check it later on", steps[0][1], steps[0][2])
    if kind == "other_subproblem":
        steps[1] = (steps[1][0], "is the number prime or composite at all", steps[1][2])
    answer = "8" if kind == "wrong_answer" else "7"
    reasoning = (f"{marker}\n" if marker else "") + decomposition(steps)  # the GSRM drops text before the blocks
    if kind == "untagged":
        return f"{reasoning}\nSo the answer is \\boxed{{{answer}}}."
    return f"<think>\n{reasoning}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"


def expected_reward(kind: str) -> float:
    structure, accuracy, fmt, tags = KINDS[kind]
    return 3 * accuracy + 3 * structure + 2 * fmt + 2 * tags


class Gsrm:
    """The fault server's script: echo the trace's blocks; FAIL always fails, FLAKY fails once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.flaky_seen: set[str] = set()
        self.faults = 0
        self.delay = 0.0

    def __call__(self, body: dict) -> Action:
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        reasoning = user.rsplit("Reasoning:\n", 1)[-1]
        with self.lock:
            if "FAIL" in reasoning or ("FLAKY" in reasoning and reasoning not in self.flaky_seen):
                self.flaky_seen.add(reasoning)
                self.faults += 1
                return Action("500")
        start = reasoning.find("[Meta-reasoning")
        delay = self.delay if "SLOW" in reasoning else 0.0
        return Action(text=reasoning[start:] if start >= 0 else "no blocks here", delay=delay)


@pytest.fixture(scope="module")
def gsrm():
    script = Gsrm()
    with FaultServer(default=script) as server:
        script.base_url = server.base_url
        yield script


@pytest.fixture(scope="module")
def recipe(gsrm, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reward_server")
    with open(folder / "rlkd_train.jsonl", "w", encoding="utf-8") as handle:
        for i in range(RECORDS):
            handle.write(json.dumps({"id": f"r{i}", "problem": problem(i), "answer": "7",
                                     "teacher_structure": TEACHER}) + "\n")
    recipe = {"output_dir": str(folder / "serve"), "data": {"path": str(folder / "rlkd_train.jsonl")},
              "rewards": {"set": "rlkd"},
              "structure": {"gsrm": {"base_url": gsrm.base_url, "model": "gsrm", "max_retries": 1, "timeout": 60,
                                     "concurrency": 16},
                            "judge": "hybrid", "meta_judge": "overlap", "subproblem_judge": "overlap",
                            "answer_judge": "math", "mode": "paper"}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """``rlkd serve`` in a subprocess on a free port; :meth:`stop` or the fixture ends it."""

    def __init__(self, recipe: Path, port: int | None = None, token: str | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = recipe.parent / f"serve-{self.port}-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        env.pop("RLKD_SERVE_TOKEN", None)
        if token:
            env["RLKD_SERVE_TOKEN"] = token
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rlkd.cli", "serve", "--config", str(recipe), "--port", str(self.port),
                 "--log-every", "5", *extra], stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, f"rlkd serve exited early:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if json.loads(response.read())["status"] == "ok":
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"rlkd serve did not start in 180 s:\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=10) as response:
            return json.loads(response.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def post(url: str, body, timeout: float = 180) -> tuple[int, dict, float]:
    """One POST the way OpenRLHF's client sends it (JSON, no other headers); (status, reply, seconds)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), time.monotonic() - started


def rollout(n: int) -> tuple[dict, str, str]:
    """The n-th rollout of the load test: OpenRLHF's request body, the completion kind and the fault."""
    record = n % RECORDS
    kind = list(KINDS)[n % len(KINDS)]
    fault = "FAIL" if n % 25 == 7 else "FLAKY" if n % 25 == 13 else ""
    prompt = CHAT.format(problem=problem(record))
    label = f"r{record}" if n % 2 == 0 else "7"  # the record id, or the answer (then found by prompt)
    marker = f"{fault} {n}" if fault else ""
    body = {"query": [prompt + completion(kind, marker) + "<|im_end|>"], "prompts": [prompt], "labels": [label]}
    return body, kind, fault


@pytest.fixture(scope="module")
def server(recipe):
    served = Served(recipe)
    yield served
    served.stop()


# --------------------------------------------------------------------------------------------------
# Pieces, in process


class TestPieces:
    def test_completion_from_query_strips_the_prompt_and_end_markers(self):
        assert completion_from_query("P:<think>x</think><|im_end|>\n", "P:") == "<think>x</think>"
        assert completion_from_query("P:<answer>4</answer></s><|endoftext|>", "P:") == "<answer>4</answer>"
        with pytest.raises(UnscorableRequest, match="does not start with its prompt"):
            completion_from_query("other text", "P:")

    def test_records_are_found_by_id_by_problem_and_inside_a_prompt(self, recipe):
        index = RecordIndex.from_job(load_serve_job(recipe))
        row, answer, record_id = index.resolve(RewardRequest("c", label="r3"), True)
        assert (row["problem"], answer, record_id) == (problem(3), "7", "r3")
        chat = CHAT.format(problem=problem(5))
        row, answer, record_id = index.resolve(RewardRequest("c", label="12", prompt=chat), True)
        assert (record_id, answer) == ("r5", "12")  # a label that is no id is the answer
        row, _, record_id = index.resolve(RewardRequest("c", problem=problem(11)), True)
        assert record_id == "r11"
        with pytest.raises(UnscorableRequest, match="no record of the RLKD dataset matches the prompt"):
            index.resolve(RewardRequest("c", label="7", prompt="an unrelated prompt"), True)
        with pytest.raises(UnscorableRequest, match="no record with id 'r99'"):
            index.resolve(RewardRequest("c", record_id="r99"), True)

    def test_scorer_gives_the_weighted_components_and_never_a_silent_zero(self, recipe):
        scorer = RewardScorer.from_job(load_serve_job(recipe))
        requests = [RewardRequest(completion(kind), label="r0") for kind in KINDS]
        requests.append(RewardRequest(completion("perfect", "FAIL scorer"), label="r1"))
        requests.append(RewardRequest(completion("perfect"), label="7", prompt="no such problem"))
        results = asyncio.run(scorer.score(requests))
        assert [r.reward for r in results[:5]] == [expected_reward(k) for k in KINDS]
        assert results[0].components == {"accuracy": 1.0, "structure": 2.0, "format": 1.0, "tag_count": 1.0}
        assert results[0].structure["matched_prefix"] == 2 and results[0].record_id == "r0"
        failed, unmatched = results[5], results[6]
        assert failed.reward is None and failed.retryable and "GSRM call failed" in failed.error
        assert failed.components["structure"] is None and failed.components["accuracy"] == 1.0
        assert unmatched.reward is None and not unmatched.retryable and unmatched.components == {}
        assert scorer.unscored == {"GSRM failure": 1, "no record": 1}


class TestBatcher:
    """The batching logic on its own, with a scoring function that records its batches (a fake, to test
    our own queueing; the server tests above and below use the real scorer)."""

    def test_concurrent_callers_share_batches_in_bounded_concurrency_and_overload_is_refused(self):
        from rlkd.serve import Batcher, Overloaded, ScoredItem

        batches, running, most_running = [], [0], [0]

        async def score(requests):
            running[0] += 1
            most_running[0] = max(most_running[0], running[0])
            await asyncio.sleep(0.2)
            running[0] -= 1
            batches.append([r.completion for r in requests])
            return [ScoredItem(float(len(r.completion))) for r in requests]

        async def main():
            batcher = Batcher(score, max_batch=4, max_wait=0.05, concurrency=2, max_pending=10)
            calls = [batcher.submit([RewardRequest("x" * n)]) for n in range(1, 11)]
            tasks = [asyncio.ensure_future(c) for c in calls]
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded, match="10 completions already waiting"):
                await batcher.submit([RewardRequest("one too many")])
            results = await asyncio.gather(*tasks)
            await batcher.close()
            with pytest.raises(Overloaded, match="shutting down"):
                await batcher.submit([RewardRequest("late")])
            return results, batcher

        results, batcher = asyncio.run(main())
        assert [[item.reward for item in r] for r in results] == [[float(n)] for n in range(1, 11)]
        assert sorted(len(b) for b in batches) == [2, 4, 4] and most_running[0] == 2
        assert batcher.pending == 0 and batcher.largest_batch == 4


# --------------------------------------------------------------------------------------------------
# The server under load, speaking OpenRLHF's protocol


@pytest.mark.server
@pytest.mark.slow
def test_openrlhf_protocol_under_concurrent_load_matches_in_process_scoring(server, recipe, gsrm, capsys):
    total, concurrency = 200, 32
    bodies = [rollout(n) for n in range(total)]
    warm_up = post(f"{server.url}/get_reward", rollout(0)[0])  # the first batch pays for imports (math-verify)
    assert warm_up[0] == 200
    faults_before = gsrm.faults
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda b: post(f"{server.url}/get_reward", b[0]), bodies))
    wall = time.monotonic() - started
    injected = gsrm.faults - faults_before

    # the same rollouts scored in this process, through the same GSRM
    scorer = RewardScorer.from_job(load_serve_job(recipe))
    requests = [RewardRequest(completion_from_query(b["query"][0], b["prompts"][0]), label=b["labels"][0],
                              prompt=b["prompts"][0]) for b, _, _ in bodies]
    async def local_scoring():
        await scorer.score(requests[:1])  # warm up as the server was
        started = time.monotonic()
        return await scorer.score(requests), started

    local, local_started = asyncio.run(local_scoring())
    local_seconds = time.monotonic() - local_started

    equal = errors = 0
    for n, ((status, reply, _), (body, kind, fault), mine) in enumerate(zip(replies, bodies, local)):
        if fault == "FAIL":
            assert status == 503, (n, status, reply)
            assert "GSRM call failed" in reply["error"] and reply["results"][0]["reward"] is None
            assert mine.reward is None
            errors += 1
            continue
        assert status == 200, (n, status, reply)
        assert set(reply) == {"rewards", "scores", "extra_logs"}
        assert reply["rewards"] == [expected_reward(kind)] == [mine.reward], (n, kind, reply)
        assert reply["scores"] == reply["rewards"]
        assert {k: v[0] for k, v in reply["extra_logs"].items()} == mine.components
        equal += 1
    health = server.health()
    assert errors == sum(1 for _, _, f in bodies if f == "FAIL") == 8
    assert equal == total - errors
    assert health["unscored"].get("GSRM failure") == errors  # counted, and the server kept answering
    assert health["largest_batch"] > 1  # concurrent requests were scored together
    latencies = sorted(r[2] for r in replies)

    def pct(p: float) -> float:
        return latencies[min(int(p * len(latencies)), len(latencies) - 1)] * 1000

    with capsys.disabled():
        print(f"\nload test: {total} requests, {concurrency} at a time, {wall:.2f} s; GSRM faults injected "
              f"{injected} ({errors} requests with a persistent fault -> 503, the rest retried by the backend); "
              f"answers equal to in-process {equal} of {total - errors}; batches {health['batches']}, largest "
              f"{health['largest_batch']}; latency ms p50 {pct(0.5):.0f} p90 {pct(0.9):.0f} p99 {pct(0.99):.0f} "
              f"max {latencies[-1] * 1000:.0f}; mean {statistics.fmean(latencies) * 1000:.0f} (after one warm-up "
              f"request of {warm_up[2]:.2f} s); the same 200 scored in process in one batch: {local_seconds:.2f} s")

    # bad input: a clear error status, never a reward of 0
    status, reply, _ = post(f"{server.url}/get_reward", {"query": ["unknown prompt: <think>x</think>"],
                                                         "prompts": ["unknown prompt: "], "labels": ["r404-or-answer"]})
    assert status == 422 and "no record of the RLKD dataset matches the prompt" in reply["error"]
    assert reply["results"][0]["reward"] is None
    status, reply, _ = post(f"{server.url}/get_reward", {"query": ["a completion"], "prompts": ["a prompt"]})
    assert status == 422 and "does not start with its prompt" in reply["error"]
    status, reply, _ = post(f"{server.url}/get_reward", b"{not json")
    assert status == 400 and "not JSON" in reply["error"]
    status, reply, _ = post(f"{server.url}/get_reward", {"query": ["q"], "prompts": ["p", "extra"]})
    assert status == 400 and "as long as 'query'" in reply["error"]

    # the log: training's reward-component line, and metrics.jsonl records with the components
    metrics = [json.loads(line) for line in
               (Path(load_serve_job(recipe).output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert metrics and {"reward", "rewards/accuracy/mean", "rewards/structure/mean", "structure/meta_match",
                        "serve/unscored"} <= set(metrics[0])
    assert "rewards/structure/mean" in json.dumps(metrics[0]) and "accuracy" in server.log()
    assert "structure: meta_match" in server.log()


@pytest.mark.server
@pytest.mark.slow
def test_own_api_returns_components_and_result_objects(server):
    items = [{"completion": completion("other_subproblem"), "id": "r2"},
             {"completion": completion("perfect"), "problem": problem(4), "label": "7"},
             {"completion": completion("perfect", "FAIL own-api"), "id": "r3"},
             {"completion": "x", "id": "missing"}]
    status, reply, _ = post(f"{server.url}/v1/score", {"items": items})
    assert status == 200
    first, second, failed, missing = reply["results"]
    assert first["reward"] == expected_reward("other_subproblem") and first["id"] == "r2"
    assert [s["subproblem"] for s in first["structure"]["steps"]] == [True, False]
    assert second["reward"] == expected_reward("perfect") and second["id"] == "r4"
    assert failed["reward"] is None and failed["retryable"] and "GSRM" in failed["error"]
    assert missing["reward"] is None and "no record with id 'missing'" in missing["error"]
    assert reply["weights"] == {"accuracy": 3.0, "structure": 3.0, "format": 2.0, "tag_count": 2.0}
    status, reply, _ = post(f"{server.url}/v1/score", {"items": [{"id": "r1"}]})
    assert status == 400 and "'completion' must be a string" in reply["error"]


@pytest.mark.server
@pytest.mark.slow
def test_graceful_shutdown_kill_and_restart(recipe, gsrm):
    bodies = [rollout(n)[0] for n in range(10) if rollout(n)[2] != "FAIL"]
    first = Served(recipe)
    answers = [post(f"{first.url}/get_reward", b)[:2] for b in bodies]
    assert all(status == 200 for status, _ in answers)

    # SIGTERM while a request is in flight: it is answered, then the server exits cleanly
    gsrm.delay = 2.0
    slow = {"query": [CHAT.format(problem=problem(0)) + completion("perfect", "SLOW 1")], "prompts":
            [CHAT.format(problem=problem(0))], "labels": ["r0"]}
    in_flight: list = []
    thread = threading.Thread(target=lambda: in_flight.append(post(f"{first.url}/get_reward", slow)))
    thread.start()
    time.sleep(0.8)
    assert first.stop(signal.SIGTERM) == -signal.SIGTERM  # uvicorn re-raises the signal once it has stopped
    thread.join(30)
    gsrm.delay = 0.0
    assert in_flight and in_flight[0][0] == 200 and in_flight[0][1]["rewards"] == [expected_reward("perfect")]
    assert "rlkd serve: stopped after" in first.log()

    # restart on the same port, now with a token: same answers; requests without the token are refused
    second = Served(recipe, first.port, "s3cret")
    try:
        status, reply, _ = post(f"{second.url}/get_reward", bodies[0])
        assert status == 401 and "token" in reply["error"]
        again = [post(f"{second.url}/get_reward?token=s3cret", b)[:2] for b in bodies]
        assert again == answers
        # SIGKILL: nothing answers; a restart answers the same again
        assert second.stop(signal.SIGKILL) == -signal.SIGKILL
        with pytest.raises(urllib.error.URLError):
            post(f"{second.url}/get_reward", bodies[0], timeout=5)
    finally:
        second.stop(signal.SIGKILL)
    third = Served(recipe, first.port)
    try:
        assert [post(f"{third.url}/get_reward", b)[:2] for b in bodies] == answers
    finally:
        third.stop()


def test_refuses_a_public_bind_without_a_token(recipe, monkeypatch, capsys):
    from rlkd.cli import main

    monkeypatch.delenv("RLKD_SERVE_TOKEN", raising=False)
    assert main(["serve", "--config", str(recipe), "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without a token" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# verl and OpenRLHF


def _verl_kwargs(kind: str, record: int, marker: str = "") -> dict:
    """The keyword arguments verl's naive reward manager passes (ground truth = the record id)."""
    return {"data_source": "rlkd", "solution_str": completion(kind, marker), "ground_truth": f"r{record}",
            "extra_info": {"index": record, "problem": problem(record)}}


class TestVerl:
    @pytest.fixture
    def in_process(self, recipe):
        from rlkd.integrations import close_scorers

        yield {"rlkd_config": str(recipe)}
        close_scorers()

    def check(self, result: dict, kind: str) -> None:
        structure, accuracy, fmt, tags = KINDS[kind]
        assert result == {"score": expected_reward(kind), "accuracy": accuracy, "structure": structure,
                          "format": fmt, "tag_count": tags, "structure_prefix": 2.0 if structure >= 1.5 else
                          (1.0 if structure else 0.0), "unscored": 0.0}

    def test_sync_the_way_the_naive_manager_calls_it(self, in_process):
        from rlkd.integrations.verl import compute_score_sync

        for n, kind in enumerate(KINDS):
            self.check(compute_score_sync(**_verl_kwargs(kind, n), **in_process), kind)
        failed = compute_score_sync(**_verl_kwargs("perfect", 1, "FAIL verl sync"), **in_process)
        assert failed["unscored"] == 1.0 and math.isnan(failed["structure"])
        assert failed["score"] == 3 * 1.0 + 2 * 1.0 + 2 * 1.0  # TRL's sum of the other components
        with pytest.raises(ValueError, match="no record"):
            compute_score_sync(data_source="rlkd", solution_str="x", ground_truth="7",
                               extra_info={"problem": "unknown problem"}, **in_process)

    def test_async_concurrently_on_the_reward_loop_and_sync_in_its_executor(self, in_process):
        from rlkd.integrations.verl import compute_score, compute_score_sync

        async def reward_loop():
            loop = asyncio.get_running_loop()
            extra = {"reward_router_address": None, "reward_model_tokenizer": None}
            awaited = [compute_score(**_verl_kwargs(kind, n), **extra, **in_process) for n, kind in enumerate(KINDS)]
            threaded = [loop.run_in_executor(None, lambda k=kind, n=n: compute_score_sync(**_verl_kwargs(k, n),
                                                                                           **in_process))
                        for n, kind in enumerate(KINDS)]
            return await asyncio.gather(*awaited, *threaded)

        results = asyncio.run(reward_loop())
        for result, kind in zip(results, list(KINDS) * 2):
            self.check(result, kind)

    @pytest.mark.server
    @pytest.mark.slow
    def test_against_a_running_server(self, server):
        from rlkd.integrations import close_scorers
        from rlkd.integrations.verl import compute_score

        try:
            async def calls():
                return await asyncio.gather(*[compute_score(**_verl_kwargs(kind, n), rlkd_url=server.url)
                                              for n, kind in enumerate(KINDS)])

            for result, kind in zip(asyncio.run(calls()), KINDS):
                self.check(result, kind)
        finally:
            close_scorers()

    def test_dataset_in_verl_format_scores_by_record_id(self, recipe, in_process, tmp_path):
        import pandas as pd

        from rlkd.integrations.verl import compute_score_sync, main

        assert main(["--config", str(recipe), "--output", str(tmp_path / "train.parquet")]) == 0
        rows = pd.read_parquet(tmp_path / "train.parquet")
        assert len(rows) == RECORDS and list(rows["data_source"].unique()) == ["rlkd"]
        row = rows.iloc[6]
        assert row["reward_model"]["ground_truth"] == "r6" and row["prompt"][-1]["content"] == problem(6)
        result = compute_score_sync(data_source=row["data_source"], solution_str=completion("wrong_answer"),
                                    ground_truth=row["reward_model"]["ground_truth"], extra_info=row["extra_info"],
                                    **in_process)
        self.check(result, "wrong_answer")


@pytest.mark.server
@pytest.mark.slow
def test_openrlhf_reward_func_against_the_server(server, monkeypatch):
    from rlkd.integrations import close_scorers
    from rlkd.integrations.openrlhf import reward_func

    monkeypatch.delenv("RLKD_CONFIG", raising=False)
    monkeypatch.setenv("RLKD_SERVE_URL", server.url)
    body, kind, _ = rollout(3)
    try:
        out = reward_func(body["query"], body["prompts"], body["labels"])
        assert out["rewards"].tolist() == [expected_reward(kind)] == out["scores"].tolist()
        assert {k: v.tolist() for k, v in out["extra_logs"].items()} == \
            {"accuracy": [KINDS[kind][1]], "structure": [KINDS[kind][0]], "format": [KINDS[kind][2]],
             "tag_count": [KINDS[kind][3]]}
        failing = rollout(7)[0]
        with pytest.raises(RuntimeError, match="could not be scored: structure: GSRM call failed"):
            reward_func(failing["query"], failing["prompts"], failing["labels"])
    finally:
        close_scorers()


# --------------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("path", ["configs/openrlhf/rlkd_reward.yaml", "configs/verl/rlkd_reward.yaml"])
def test_serve_recipes_open_with_their_command_and_validate(path):
    text = (REPO / path).read_text(encoding="utf-8")
    assert f"rlkd serve --config {path}" in "\n".join(text.splitlines()[:4])
    job = load_serve_job(REPO / path)
    assert job.rewards.resolved() == {"accuracy": 3.0, "structure": 3.0, "format": 2.0, "tag_count": 2.0}


def test_verl_recipe_names_our_compute_score():
    import importlib

    text = (REPO / "configs/verl/rlkd_grpo.yaml").read_text(encoding="utf-8")
    assert "verl.trainer.main_ppo" in "\n".join(text.splitlines()[:6])
    config = yaml.safe_load(text)
    custom = config["reward"]["custom_reward_function"]
    assert (REPO / custom["path"]).is_file()
    assert callable(getattr(importlib.import_module("rlkd.integrations.verl"), custom["name"]))
    assert config["algorithm"]["adv_estimator"] == "grpo"


def test_openrlhf_launch_script_posts_to_get_reward():
    text = (REPO / "configs/openrlhf/rlkd_grpo.sh").read_text(encoding="utf-8")
    assert "rlkd serve --config configs/openrlhf/rlkd_reward.yaml" in "\n".join(text.splitlines()[:8])
    assert "--reward.remote_url" in text and "/get_reward" in text
    assert subprocess.run(["bash", "-n", str(REPO / "configs/openrlhf/rlkd_grpo.sh")]).returncode == 0
