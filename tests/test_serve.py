"""Backends against real models: a `transformers serve` subprocess through OpenAIBackend (the real
protocol, batching, timeouts, counters, the cache), and TransformersBackend in this process.

The tiny random model's weights are scaled up (``varied_model_dir``) so that greedy decoding writes
varied tokens instead of repeating one token; this makes "same text" checks able to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from rlkd.backends import Backend, Completion, GenerationRequest, OpenAIBackend, StreamSink, TransformersBackend
from rlkd.backends.cache import CachedBackend

QUESTIONS = ["hello", "What is 2+2?", "x", "Find the value of x if 3x = 12.", "Are these equal? yes or no", "abc"]


def ask(text: str, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_tokens", 10)
    return GenerationRequest.chat([("user", text)], **kwargs)


@pytest.fixture(scope="module")
def varied_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its layer weights redrawn larger, so greedy output is not one repeated token."""
    import torch

    from rlkd.models import load_model, load_tokenizer

    model = load_model(tiny_model_dir, device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers." in name and param.dim() == 2:
                param.normal_(0.0, 0.5, generator=generator)
    path = tmp_path_factory.mktemp("varied") / "model"
    model.save_pretrained(path)
    load_tokenizer(tiny_model_dir).save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _transformers_cli() -> str:
    beside_python = Path(sys.executable).with_name("transformers")
    found = str(beside_python) if beside_python.exists() else shutil.which("transformers")
    assert found, "the `transformers` command (transformers[serving]) is not installed"
    return found


@contextlib.contextmanager
def transformers_serve(model_dir: Path, log_path: Path) -> Iterator[str]:
    """``transformers serve`` on ``model_dir`` at 127.0.0.1 on a free port, until healthy (120 s at
    most); yields the base URL and stops the server afterwards. The request model name is ``model_dir``."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # one torch thread: on a shared 2-core machine two spinning threads can make each request an
           # order of magnitude slower (benchmarks/reward_cost.py measured it)
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [_transformers_cli(), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not healthy after 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


class RecordingBackend(Backend):
    """Passes every request to ``inner`` and keeps each (request, completion), so a test can hold what
    a judge or the GSRM concluded against the raw reply it was given. Shares ``inner``'s counters."""

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner = inner
        self.model = inner.model
        self.stats = inner.stats
        self.seen: list[tuple[GenerationRequest, Completion]] = []

    async def generate(self, requests):
        completions = await self.inner.generate(requests)
        self.seen += list(zip(requests, completions))
        return completions

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def served_model(varied_model_dir, tmp_path_factory):
    """``transformers serve`` on the varied tiny model; yields (base_url, model name). Killed afterwards."""
    with transformers_serve(varied_model_dir, tmp_path_factory.mktemp("serve") / "serve.log") as base_url:
        yield base_url, str(varied_model_dir)


@pytest.fixture(scope="module")
def local_backend(varied_model_dir) -> TransformersBackend:
    return TransformersBackend(str(varied_model_dir), batch_size=4, device="cpu")


@pytest.mark.slow
@pytest.mark.server
class TestTransformersServe:
    def test_batch_through_the_real_protocol_then_from_the_cache(self, served_model, local_backend, tmp_path):
        base_url, model = served_model
        requests = [ask(q) for q in QUESTIONS]
        backend = OpenAIBackend(base_url, model, concurrency=3, timeout=60, max_retries=1)
        cache_path = tmp_path / "cache.sqlite"
        completions = CachedBackend(backend, cache_path).generate_sync(requests)

        assert [c.error for c in completions] == [None] * len(requests)
        assert all(len(c.texts) == 1 and c.text and 0 < c.completion_tokens <= 10 for c in completions)
        stats = backend.stats
        assert (stats.calls, stats.cache_hits, stats.failures, stats.retries) == (len(requests), 0, 0, 0)
        assert stats.prompt_tokens > 0 and stats.completion_tokens > 0
        # the server's greedy text is what the same model writes in this process
        assert [c.text for c in completions] == [c.text for c in local_backend.generate_sync(requests)]
        assert len(set(c.text for c in completions)) > 1

        # a second identical run, with a fresh backend on the same cache file: no call reaches the server
        again = OpenAIBackend(base_url, model, concurrency=3, timeout=60, max_retries=1)
        cached = CachedBackend(again, cache_path).generate_sync(requests)
        assert [c.text for c in cached] == [c.text for c in completions]
        assert all(c.cached for c in cached)
        assert (again.stats.calls, again.stats.cache_hits, again.stats.completion_tokens) == (0, len(requests), 0)

    def test_gsrm_decomposition_and_llm_judge_through_the_server(self, served_model):
        """The GSRM decomposer and the LLM judge speak the real protocol: one request per trace, one per
        judged pair (or one for all pairs when batched), and what each concludes is what the strict
        parsers read in the server's raw reply. The random model writes nonsense, so most of its replies
        give no steps and no verdict; tests/test_real_model.py runs the same path on a pretrained model."""
        import asyncio

        from rlkd.gsrm import Decomposer
        from rlkd.judges import JudgeRequest
        from rlkd.llm_judge import LLMJudge, parse_batched_verdicts, parse_verdict
        from rlkd.structure import parse_decomposition

        base_url, model = served_model
        backend = RecordingBackend(OpenAIBackend(base_url, model, concurrency=4, timeout=60, max_retries=1))
        decomposer = Decomposer(backend, domain="math", max_tokens=12)
        items = [("What is 2+3?", "<think>2 plus 3 is 5.</think> 5"), ("Find x if 2x=4.", "x is 2")]
        results = asyncio.run(decomposer.decompose(items))
        raws = [completion.text for _, completion in backend.seen]
        assert (backend.stats.calls, backend.stats.failures) == (2, 0) and all(raws)
        assert [r.raw for r in results] == raws
        assert [r.decomposition for r in results] == [parse_decomposition(text) for text in raws]
        assert [r.status for r in results] == ["ok" if parse_decomposition(t).steps else "no_steps" for t in raws]
        assert decomposer.no_steps == sum(r.status == "no_steps" for r in results)

        requests = [JudgeRequest("meta", "find x first", "start with x"), JudgeRequest("answer", "2", "two"),
                    JudgeRequest("subproblem", "What is x?", "What is y?")]
        judge = LLMJudge(backend, batched=False, max_tokens=4)
        verdicts = judge.judge(requests)
        replies = [completion.text for _, completion in backend.seen[2:]]
        assert backend.stats.calls == 2 + 3 and len(replies) == 3
        assert [v.same for v in verdicts] == [parse_verdict(text) for text in replies]
        assert judge.failures == sum(v.same is None for v in verdicts)

        batched = LLMJudge(backend, batched=True, max_tokens=16)
        got = batched.judge(requests)
        [(_, reply)] = backend.seen[5:]
        assert backend.stats.calls == 2 + 3 + 1 and backend.stats.failures == 0  # all pairs in one request
        assert [(v.same, v.reason) for v in got] == parse_batched_verdicts(reply.text, 3)
        assert batched.failures == sum(v.same is None for v in got)

    def test_n_samples_from_a_server_that_returns_one_choice(self, served_model):
        base_url, model = served_model
        backend = OpenAIBackend(base_url, model, timeout=60, max_retries=1)
        [completion] = backend.generate_sync([ask("hello", n=2, temperature=0.7, seed=1)])
        assert completion.error is None and len(completion.texts) == 2
        assert backend.stats.calls == 1

    def test_per_request_timeout_against_the_real_server(self, served_model):
        base_url, model = served_model
        backend = OpenAIBackend(base_url, model, timeout=0.01, max_retries=1, backoff_base=0.01)
        start = time.monotonic()
        [completion] = backend.generate_sync([ask("hello", max_tokens=200)])
        assert completion.error == "timed out after 0.01s"
        assert (backend.stats.calls, backend.stats.retries, backend.stats.failures) == (1, 1, 1)
        assert time.monotonic() - start < 5

    def test_unknown_model_is_a_counted_failure_not_retried(self, served_model, tmp_path):
        base_url, _ = served_model
        backend = OpenAIBackend(base_url, str(tmp_path / "no-such-model"), timeout=60, max_retries=1,
                                backoff_base=0.01)
        [completion] = backend.generate_sync([ask("hello")])
        assert completion.error.startswith("HTTP 400") and completion.texts == []
        assert (backend.stats.calls, backend.stats.retries, backend.stats.failures) == (1, 0, 1)  # 4xx: no retry


@pytest.mark.slow
class TestTransformersBackend:
    def test_greedy_is_deterministic_and_independent_of_batching(self, local_backend):
        batched = local_backend.generate_sync([ask(q) for q in QUESTIONS])
        again = local_backend.generate_sync([ask(q) for q in reversed(QUESTIONS)])
        alone = [local_backend.generate_sync([ask(q)])[0] for q in QUESTIONS[:3]]
        texts = [c.text for c in batched]
        assert [c.text for c in reversed(again)] == texts
        assert [c.text for c in alone] == texts[:3]
        assert len(set(texts)) == len(texts)  # varied output: the check above could fail

    def test_token_counts_and_max_tokens(self, local_backend):
        [completion] = local_backend.generate_sync([ask("hello", max_tokens=5)])
        prompt = local_backend.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                                              add_generation_prompt=True)
        assert completion.prompt_tokens == len(local_backend.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 0 < completion.completion_tokens <= 5

    def test_n_samples_with_a_seed_are_reproducible(self, local_backend):
        request = ask("hello", n=3, temperature=1.0, top_p=0.95, seed=7)
        first = local_backend.generate_sync([request])[0]
        second = local_backend.generate_sync([request])[0]
        assert len(first.texts) == 3 and first.texts == second.texts
        assert len(set(first.texts)) > 1  # sampled, not greedy
        other = local_backend.generate_sync([ask("hello", n=3, temperature=1.0, top_p=0.95, seed=8)])[0]
        assert other.texts != first.texts

    def test_stop_strings_cut_the_text(self, local_backend):
        [full] = local_backend.generate_sync([ask("What is 2+2?")])
        stop = full.text[3:5]
        [cut] = local_backend.generate_sync([ask("What is 2+2?", stop=(stop,))])
        assert cut.text == full.text[: full.text.index(stop)]

    def test_a_prompt_too_long_fails_alone(self, local_backend):
        before = local_backend.stats.failures
        too_long, fine = local_backend.generate_sync([ask("w " * 3000), ask("hello", max_tokens=3)])
        assert too_long.error == "prompt of 6015 tokens does not fit the model's 2048-token context"
        assert fine.ok and fine.text
        assert local_backend.stats.failures == before + 1

    def test_local_model_option_builds_this_backend(self, varied_model_dir, tmp_path):
        from test_backends import parse

        from rlkd.cli.options import backend_from_args

        backend = backend_from_args(parse(["--local-model", str(varied_model_dir), "--local-batch-size", "2",
                                           "--cache", str(tmp_path / "c.sqlite")]))
        assert isinstance(backend, CachedBackend) and isinstance(backend.inner, TransformersBackend)
        assert (backend.model, backend.inner.batch_size) == (str(varied_model_dir), 2)
        first = backend.generate_sync([ask("hello", max_tokens=3)])
        second = backend.generate_sync([ask("hello", max_tokens=3)])
        assert first[0].text == second[0].text and second[0].cached
        assert (backend.stats.calls, backend.stats.cache_hits) == (1, 1)


class _StopAfter(StreamSink):
    """Collects the stream and asks to stop once ``pieces`` pieces have arrived (never when None)."""

    def __init__(self, pieces: int | None) -> None:
        super().__init__()
        self.limit = pieces

    def feed(self, piece: str) -> None:
        super().feed(piece)
        if self.limit is not None and len(self.pieces) >= self.limit:
            self.stop_requested = True


def _stream(backend, requests, limits):
    sinks = [_StopAfter(limit) for limit in limits]

    async def run():
        try:
            return await backend.generate_stream(requests, sinks)
        finally:
            await backend.aclose()

    return asyncio.run(run()), sinks


@pytest.mark.slow
@pytest.mark.server
class TestStreamingEarlyStop:
    """Early exit needs the real protocol to stream and to abort: `transformers serve` and the local model."""

    def test_server_stream_equals_the_whole_reply_and_stops_when_asked(self, served_model):
        base_url, model = served_model
        requests = [ask(q, max_tokens=24) for q in QUESTIONS[:3]]
        whole = OpenAIBackend(base_url, model, concurrency=3, timeout=60, max_retries=1).generate_sync(requests)
        backend = OpenAIBackend(base_url, model, concurrency=3, timeout=60, max_retries=1)
        streamed, sinks = _stream(backend, requests, [None, 3, 1])
        assert [c.error for c in streamed] == [None] * 3
        # the random model writes byte tokens that are no whole character: the server's stream decoder
        # drops a dangling one at the very end, where the whole reply shows it as U+FFFD
        assert streamed[0].text == whole[0].text.rstrip("\ufffd") and not streamed[0].stopped
        assert "".join(sinks[0].pieces) == streamed[0].text and sinks[0].completion is streamed[0]
        assert streamed[0].completion_tokens == whole[0].completion_tokens  # the server's usage
        for completion, full, limit in zip(streamed[1:], whole[1:], (3, 1)):
            assert completion.stopped and whole[0].completion_tokens > limit
            assert full.text.startswith(completion.text) and len(completion.text) < len(full.text)
            assert completion.completion_tokens == limit  # pieces received before the stream was closed
        assert backend.stats.stopped == 2 and backend.stats.failures == 0

    def test_local_stream_stops_one_row_and_the_batch_goes_on(self, local_backend):
        requests = [ask(q, max_tokens=16) for q in QUESTIONS[:4]]
        whole = local_backend.generate_sync(requests)
        streamed, sinks = _stream(local_backend, requests, [None, 2, None, 5])
        assert [c.text for c in streamed[::2]] == [c.text for c in whole[::2]]
        assert [c.completion_tokens for c in streamed[::2]] == [c.completion_tokens for c in whole[::2]]
        assert ["".join(s.pieces) for s in sinks[::2]] == [c.text for c in whole[::2]]
        for completion, full in zip(streamed[1::2], whole[1::2]):
            assert completion.stopped and full.text.startswith(completion.text)
            assert completion.completion_tokens < full.completion_tokens
