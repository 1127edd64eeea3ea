"""The benchmark scripts in benchmarks/: their pieces on literal inputs, and a smoke run of each at a tiny
size that must print its result lines. No timing is asserted (speed belongs in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlkd.backends import OpenAIBackend
from rlkd.gsrm import Decomposer
from rlkd.judges import JudgeRequest, TextJudge, score_structure
from rlkd.llm_judge import LLMJudge
from rlkd.structure import Decomposition, Step, structure_reward
from rlkd.testbed import generate_tasks, rule_decompose

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """Import a benchmark script as a module (once; scripts import each other by file name)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_script(*args: str, timeout: float = 120) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def task():
    return generate_tasks(1, split="ood", seed=0, depth=(8, 12))[0]


class TestLatencyServer:
    @pytest.mark.server
    def test_answers_gsrm_per_pair_and_batched_prompts_and_counts_what_it_served(self, task):
        server_module = load("latency_server")
        with server_module.LatencyServer(latency_ms=1) as server:
            backend = OpenAIBackend(server.base_url, "m", api_key_env=None, max_retries=0)
            pairs = [JudgeRequest("meta", "Start from x.", "start  from X"), JudgeRequest("answer", "4", "5"),
                     JudgeRequest("subproblem", "What is x?", "What is y?")]

            async def go():
                [decomposed] = await Decomposer(backend).decompose([(task.problem, task.trace)])
                each = await LLMJudge(backend).ajudge(pairs)
                batched = await LLMJudge(backend, batched=True).ajudge(pairs)
                await backend.aclose()
                return decomposed, each, batched

            import asyncio

            decomposed, each, batched = asyncio.run(go())
            counters = server.counters.as_dict()
        assert decomposed.decomposition.render() == task.decomposition.render()
        assert [v.same for v in each] == [True, False, False]
        assert [v.same for v in batched] == [True, False, False]
        assert counters["requests"] == {"gsrm": 1, "judge": 3, "judge_batched": 1, "other": 0}
        assert sum(counters["prompt_tokens"].values()) == backend.stats.prompt_tokens
        assert sum(counters["completion_tokens"].values()) == backend.stats.completion_tokens

    @pytest.mark.server
    def test_a_closed_stream_stops_the_generation_at_once_and_is_recorded(self, task):
        """vLLM aborts a request whose client disconnected: the server must not write on after a close."""
        import http.client
        import json
        import time

        server_module = load("latency_server")
        with server_module.LatencyServer(latency_ms=0, per_token_ms=200) as server:
            request = Decomposer(None).request(task.problem, task.trace)[0]
            body = json.dumps({"model": "m", "messages": request.as_openai_messages(), "stream": True})
            connection = http.client.HTTPConnection("127.0.0.1", server._server.server_address[1], timeout=10)
            connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            events = 0
            while events < 3:
                events += response.readline().startswith(b"data: ")
            response.close()  # after 3 tokens, 200 ms before the 4th is due
            connection.close()
            deadline = time.monotonic() + 5
            while not server.counters.streams and time.monotonic() < deadline:
                time.sleep(0.02)
            [record] = server.counters.as_dict(streams=True)["streams"]
        assert record["sent"] == 3 and record["aborted"] and record["tokens"] > 100
        assert record["reply"] == server_module.reply_key(task.decomposition.render())
        assert server.counters.completion_tokens["gsrm"] == 3

    def test_token_count_and_cut(self):
        server_module = load("latency_server")
        assert server_module.count_tokens('{"1": "yes"}') == 9  # { " 1 " : " yes " }
        assert server_module.cut_tokens("a b, c d", 3) == ("a b,", True)
        assert server_module.cut_tokens("a b", 5) == ("a b", False)

    def test_nonsense_gets_a_chunk_decomposition(self):
        from rlkd.structure import parse_decomposition

        server_module = load("latency_server")
        text = server_module.chunk_decomposition("no digits here. none at all. just words!")
        assert [s.answer for s in parse_decomposition(text).steps] == ["here.", "all.", "words!"]


class TestRewardCostPieces:
    def test_authors_loop_asks_in_their_order_and_matches_the_library_reward(self):
        bench = load("reward_cost")
        teacher = Decomposition([Step("a", "q", "1"), Step("b", "r", "2"), Step("c", "s", "3"), Step("d", "t", "4")])
        student = Decomposition([Step("a", "q", "9"), Step("b", "x", "2"), Step("z", "s", "3"), Step("d", "t", "4")])
        asked = []

        def same(field, a, b):
            asked.append((field, a))
            return a == b

        reward = bench.authors_structure_reward(teacher, student, same)
        lookup = lambda f, i: TextJudge().judge_one(JudgeRequest(f, teacher.steps[i].get(f), student.steps[i].get(f)))
        assert reward == structure_reward(teacher, student, lookup).reward == 1.0
        assert asked == [("meta", "a"), ("meta", "b"), ("meta", "c"), ("subproblem", "q"), ("subproblem", "r"),
                         ("answer", "1"), ("answer", "2")]

    @pytest.mark.parametrize("edit, step, expected", [("copy", 3, "k"), ("slip", 3, "k - 0.5"), ("stop", 3, "3"),
                                                      ("diverge", 3, "2"), ("diverge", 5, "4")])
    def test_edits_of_the_teacher_trace_earn_the_reward_they_are_built_for(self, task, edit, step, expected):
        import asyncio

        bench = load("reward_cost")
        k = len(task.decomposition)
        student = rule_decompose(bench.edit_trace(task, edit, step, wording_seed=task.trace_seed + 1))
        result = asyncio.run(score_structure(task.decomposition, student, TextJudge()))
        assert result.reward == eval(expected, {"k": k})

    def test_rl_batch_follows_the_first_mismatch_distribution_of_the_rl_runs(self):
        import asyncio

        bench = load("reward_cost")
        batch = bench.build_rl_batch(prompts=48, generations=4, min_steps=8, max_steps=12)
        teachers = [rule_decompose(t) for t in batch.teacher_traces]
        first = []
        for teacher, completion in zip(teachers, batch.completions):
            result = asyncio.run(score_structure(teacher, rule_decompose(completion), TextJudge()))
            first.append(next((s.index for s in result.steps if s.meta is False), None))
        assert len(first) == 192 and first.count(1) == 133 and first.count(1) + first.count(2) == 180
        assert first.count(None) == 6  # copies and slips: the GSRM must write these to the end

    def test_needed_tokens_stop_at_the_bracket_of_the_label_after_the_deciding_field(self):
        bench = load("reward_cost")
        count = load("latency_server").count_tokens
        teacher = Decomposition([Step("start from x.", "What is x?", "2"), Step("then y.", "What is y?", "3")])
        reply = ("[Meta-reasoning 1]: start from x.\n[Sub-problem 1]: What is x?\n[Answer 1]: 2\n"
                 "[Meta-reasoning 2]: then z.\n[Sub-problem 2]: What is z?\n[Answer 2]: 4")
        settled = count(reply[: reply.index("[Sub-problem 2]") + len("[Sub-problem 2]")])
        assert settled == 44
        assert bench.needed_tokens(reply, teacher) == (2, 44, 44)  # the parser reads no more than that
        matching = reply.replace("then z", "then y")  # all k steps match: the whole reply is needed
        assert bench.needed_tokens(matching, teacher) == (None, count(matching), count(matching))

    def test_student_batch_samples_each_demo_task_reproducibly(self):
        bench = load("reward_cost")
        base = str(Path(__file__).resolve().parents[1] / "assets" / "testbed-base")
        batch = bench.build_student_batch(base, prompts=2, generations=3, seed=4, max_tokens=48)
        again = bench.build_student_batch(base, prompts=2, generations=3, seed=4, max_tokens=48)
        assert batch.completions == again.completions and len(batch.completions) == 6
        assert batch.prompt_index == [0, 0, 0, 1, 1, 1] and len(batch.distinct_problems) == 2
        assert batch.problems[3] == batch.distinct_problems[1] and batch.teacher_traces[0] == batch.distinct_traces[0]
        tasks = generate_tasks(2, split="id", seed=4, depth=[2, 3], distractors=[1, 2])
        assert batch.distinct_problems == [t.problem for t in tasks]  # the demo recipe's id knobs
        assert set(batch.edits) <= {"right", "wrong"}

    def test_batch_has_every_edit_and_teacher_steps_in_range(self):
        bench = load("reward_cost")
        batch = bench.build_batch(prompts=5, generations=4, min_steps=8, max_steps=12)
        assert len(batch.completions) == 20 and len(set(batch.completions)) == 20
        assert {e: batch.edits.count(e) for e in bench.EDITS} == {e: 4 for e in bench.EDITS}
        assert all(8 <= len(rule_decompose(t).steps) <= 12 for t in batch.distinct_traces)


@pytest.mark.server
def test_reward_cost_smoke_run_prints_identical_rewards_and_ratio_lines():
    out = run_script(str(BENCH / "reward_cost.py"), "--prompts", "2", "--generations", "2", "--min-steps", "3",
                     "--max-steps", "4", "--latency", "0:0", "--variants", "per-pair,batched,per-pair-early")
    assert "rewards identical: yes (4 completions" in out
    assert "server counts match client counts: yes" in out
    ratio_lines = [line for line in out.splitlines() if line.startswith("ratio ")]
    assert [line.split(":")[0] for line in ratio_lines[:3]] == [
        "ratio ours per-pair / authors", "ratio ours batched / authors", "ratio ours per-pair-early / authors"]
    assert ratio_lines[3].split(":")[0].endswith(" + offline teacher pass / authors")  # the cheapest scheme
    assert "| authors (baseline) | " in out and "goal >= 10x fewer LLM tokens:" in out
    assert "early exit: goal >= 10x fewer generated tokens:" in out


@pytest.mark.server
def test_grpo_profile_smoke_run_prints_phase_shares_and_the_structure_share():
    out = run_script(str(BENCH / "grpo_profile.py"), "--steps", "1", "--warmup", "0", "--configs", "latency",
                     "--max-completion-length", "8", "--prompts", "1", "--generations", "2")
    assert "| configuration | step s | generate | rewards | of which structure | other scoring | update |" in out
    [row] = [line for line in out.splitlines() if line.startswith("| + structure, latency server 0 ms")]
    assert len(row.split("|")) == 9
    assert "structure share of a step [latency]: " in out
    # one GSRM call each, and a batched judge call for those whose first step completed before the GSRM
    # was stopped (early exit) or ended
    calls = float(re.search(r"per completion ([\d.]+) backend calls", out).group(1))
    assert 1.0 <= calls <= 2.0


def test_copy_formation_restates_the_problem_and_probes_every_role():
    import random

    from rlkd.testbed import base_text

    bench = load("copy_formation")
    task = generate_tasks(1, seed=0)[0]
    text, context = bench.make_text(task, "capital", True, random.Random(0))
    problem, restated, computations = text.split("\n")
    assert context == problem + "\n" and problem[0].isupper()
    # the restated sentences are the problem's, in another order, without the question
    assert sorted(s.rstrip(".") for s in restated.split(". ")) == sorted(
        s.rstrip(".") for s in problem.split(". ")[1:])
    # the testbed before its third redesign: every statement its own sentence, values in definition order
    assert sorted(problem.rstrip(".").split(". ")[1:]) == sorted(bench.sentence_case(bench._sentence(q)).rstrip(".")
                                                     for q in task.quantities)
    assert computations == bench.sentence_case(bench.in_definition_order(base_text(task).split("\n")[1], task))
    assert computations.startswith("Every quantity: Lev needs zor and cod. Lev = zor + cod, zor is 1, cod is 3")
    assert "Hov = lev - dag, lev is 4, dag is 2, so hov is 2." in computations
    # the default surface is the testbed's own text
    assert bench.make_text(task, "runs-facts-first", False, random.Random(0)) == (
        base_text(task), task.problem + "\n")
    # --text computations: the base text without the sentences that name the inputs
    alone = bench.make_text(task, "plain", False, random.Random(0), "computations")[0].split("\n")[1]
    assert alone.startswith("Every quantity: lev = zor + cod, zor is 1, cod is 3, so lev is 4. hov = lev - dag,")
    assert " needs " not in alone and alone.count(".") == 4
    # --surface grouped: the problem's definitions, each followed by the facts it uses; the same sentences
    grouped = bench.make_text(task, "grouped", False, random.Random(0))[0].split("\n")[0]
    assert grouped.startswith("Find hub. ")
    assert set(grouped.rstrip(".").split(". ")[1:]) == {bench._sentence(q).rstrip(".") for q in task.quantities}
    for q in task.quantities:
        if q.inputs:
            facts = [f"{i} is {next(p.value for p in task.quantities if p.name == i)}" for i in q.inputs
                     if not next(p for p in task.quantities if p.name == i).inputs]
            assert f"{q.name} = {q.symbolic()}. " + "".join(f + ". " for f in facts) in grouped + " "
    # --surface fused: every value right after its name, in the problem and after it
    fused = bench.make_text(task, "fused", False, random.Random(0))[0]
    assert " is " not in fused and "bim 7." in fused and "lev = zor + cod, zor 1, cod 3, so lev 4." in fused
    out = run_script(str(BENCH / "copy_formation.py"), "--steps", "2", "--tasks", "32", "--probe-tasks", "2",
                     "--probe-every", "1", "--hidden", "32", "--heads", "2", "--layers", "1", "--recall")
    header = next(line for line in out.splitlines() if line.split()[:2] == ["step", "wall_s"])
    assert header.split()[3:5] == ["copy_definition", "look_up_value"] and header.split()[-3] == "recall"
    assert "copy_inputs" in header.split() and "choice" in header.split()
    assert header.split()[-2:] == ["value_fact", "value_result"]
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"] and all(0.0 <= float(v) <= 1.0 for r in rows for v in r[3:])


def test_copy_formation_synthetic_texts_label_only_what_can_be_copied():
    import random

    from rlkd.models import load_tokenizer

    bench = load("copy_formation")
    tokenizer = load_tokenizer(Path(__file__).resolve().parents[1] / "assets" / "testbed-base")
    ids, labels = bench.mqar_example(tokenizer, 4, False, random.Random(0))
    text = tokenizer.decode(ids)
    context, asked = text.split("\n")
    assert len(context.split(".")) == 5 and len(asked.split(".")) == 3  # 4 pairs, then 2 of them asked
    for sentence in asked.split(".")[:-1]:
        assert sentence.strip() + "." in context  # each asked pair is one the context stated
    labelled = [tokenizer.decode([t]).strip() for t in labels if t != -100]
    assert labelled == [s.split("=")[1].strip() for s in asked.split(".")[:-1]]
    # --values names --fused: the values are names, distinct within the text and none of them a key
    ids, labels = bench.mqar_example(tokenizer, 4, True, random.Random(0), "names")
    context = tokenizer.decode(ids).split("\n")[0]
    pairs = [sentence.split() for sentence in context.split(".")[:-1]]
    assert len(pairs) == 4 and all(len(p) == 2 for p in pairs)
    keys, values = [p[0] for p in pairs], [p[1] for p in pairs]
    assert len(set(keys + values)) == 8 and not any(v.isdigit() for v in values)
    assert [tokenizer.decode([t]).strip() for t in labels if t != -100] == [
        dict(pairs)[k] for k in [s.split()[0] for s in tokenizer.decode(ids).split("\n")[1].split(".")[:-1]]]
    ids, labels = bench.induction_example(tokenizer, random.Random(1))
    marked = [i for i, t in enumerate(labels) if t != -100]
    assert len(ids) == 80 and len(marked) == 19 and marked == list(range(marked[0], marked[0] + 19))
    start = marked[0] - 1
    assert any(ids[j: j + 20] == ids[start: start + 20] for j in range(0, start - 19))  # the run came before


def test_copy_formation_pooled_copies_need_pairs_and_the_transfer_modes_run(tmp_path):
    import random

    from rlkd.models import load_tokenizer

    bench = load("copy_formation")
    tokenizer = load_tokenizer(Path(__file__).resolve().parents[1] / "assets" / "testbed-base")
    ids, labels = bench.induction_example(tokenizer, random.Random(3), pool=6)
    assert len(set(ids)) <= 6  # every name of the text comes from the pool
    marked = [i for i, t in enumerate(labels) if t != -100]
    assert len(marked) == 18  # the repeat's first two names cannot be known: the pair that finds it
    # a trace-trained model from scratch, with copying texts mixed in, saved; then started from
    out = run_script(str(BENCH / "copy_formation.py"), "--steps", "2", "--tasks", "32", "--probe-tasks", "2",
                     "--probe-every", "2", "--hidden", "32", "--heads", "2", "--layers", "1", "--text", "trace",
                     "--mix", "0.5", "--pool", "12", "--save", str(tmp_path / "m"))
    header = next(line for line in out.splitlines() if line.split()[:2] == ["step", "wall_s"])
    assert header.split()[3:] == ["solved", "copy_run"]
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer.json").exists()
    out = run_script(str(BENCH / "copy_formation.py"), "--steps", "1", "--tasks", "32", "--probe-tasks", "2",
                     "--probe-every", "1", "--init", str(tmp_path / "m"), "--constant")
    assert "# hidden 32, layers 1, heads 2" in out and f"from {tmp_path / 'm'}" in out



def test_lookup_attention_finds_definition_sentences_and_classifies_positions():
    bench = load("lookup_attention")
    problem = "Find web. zib = yor + gor, yor is 7. web = zib * sib, sib is 1. ulm is 4."
    pieces = [w for w in re.findall(r"[a-z]+|\d+|[^\s\w]", problem.lower())]
    spans = bench.definition_spans(pieces, len(pieces))
    assert list(spans) == ["zib", "web"]  # `ulm is 4` defines nothing; `Find web.` is the question
    zib_start, zib_period = spans["zib"]
    assert pieces[zib_start] == "zib" and pieces[zib_period] == "." and pieces[zib_period - 1] == "7"
    periods = {p for _, p in spans.values()}
    assert bench.classify(zib_period, spans["zib"], periods) == "own period"
    assert bench.classify(spans["web"][1], spans["zib"], periods) == "other period"
    assert bench.classify(zib_start + 2, spans["zib"], periods) == "own definition"  # yor
    assert bench.classify(0, spans["zib"], periods) == "elsewhere"


def test_lookup_attention_smoke_run_on_the_shipped_base_prints_every_head():
    out = run_script(str(BENCH / "lookup_attention.py"), "--problems", "3", "--layers", "3")
    total, right = map(int, re.search(r"`x needs a and b`: (\d+); right (\d+)", out).groups())
    assert 0 < total and 0 <= right <= total
    rows = [line for line in out.splitlines() if line.strip().startswith("layer 3 head")]
    assert {row.split()[3] for row in rows} == {"0", "1", "2", "3"}  # the shipped base's four heads
    for row in rows:
        shares = [float(v) for v in re.findall(r" (\d\.\d\d)(?:,|$)", row)]
        assert len(shares) == 4 and abs(sum(shares) - 1) < 0.02
