"""Backends: OpenAIBackend against a real local HTTP server that misbehaves on purpose (tests/fault_server.py),
the scripted fake, the failure budget, and building a backend from options or a config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import pytest

from fault_server import Action, FaultServer
from rlkd.backends import (
    Completion,
    FailureBudget,
    GenerationRequest,
    OpenAIBackend,
    ScriptedBackend,
    TooManyFailures,
    backend_from_config,
    parse_retry_after,
)
from rlkd.cli import CliError
from rlkd.cli.options import add_backend_arguments, backend_from_args


def ask(text: str, **kwargs) -> GenerationRequest:
    return GenerationRequest.chat([{"role": "user", "content": text}], **kwargs)


def fast_backend(server: FaultServer, **kwargs) -> OpenAIBackend:
    options = dict(max_retries=3, timeout=5.0, backoff_base=0.01, backoff_max=0.05)
    options.update(kwargs)
    return OpenAIBackend(server.base_url, "test-model", **options)


# --------------------------------------------------------------------------------------------------
# OpenAIBackend against the fault server


class TestOpenAIBackendRetries:
    def test_every_transient_failure_is_retried_then_the_answer_comes_back(self, caplog):
        script = [Action("drop"), Action("429", retry_after="0"), Action("500"), Action("malformed"),
                  Action("truncated"), Action("no_choices")]
        with FaultServer(script) as server, caplog.at_level(logging.WARNING, logger="rlkd.backends"):
            backend = fast_backend(server, max_retries=6)
            [completion] = backend.generate_sync([ask("2+2?")])
        assert completion.error is None
        assert completion.texts == ["reply to: 2+2?"]
        assert server.count == 7
        assert backend.stats.as_dict() == {"calls": 1, "cache_hits": 0, "prompt_tokens": 1, "completion_tokens": 3,
                                           "retries": 6, "failures": 0, "stopped": 0, "cached_prompt_tokens": 0}
        retry_lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        assert len(retry_lines) == 6
        for reason in ("connection error", "HTTP 429", "HTTP 500", "malformed response body", "no choices"):
            assert any(reason in line for line in retry_lines), reason

    def test_retries_are_bounded_and_every_completion_of_a_dead_server_fails(self, caplog):
        with FaultServer(default=Action("500")) as server, caplog.at_level(logging.WARNING, logger="rlkd.backends"):
            backend = fast_backend(server, max_retries=2)
            start = time.monotonic()
            completions = backend.generate_sync([ask(f"q{i}") for i in range(4)])
            elapsed = time.monotonic() - start
        assert elapsed < 5
        assert [c.ok for c in completions] == [False] * 4
        assert all(c.error.startswith("HTTP 500") and c.texts == [] for c in completions)
        assert server.count == 4 * 3
        assert backend.stats.as_dict() == {"calls": 4, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                           "retries": 8, "failures": 4, "stopped": 0, "cached_prompt_tokens": 0}
        final = [r.getMessage() for r in caplog.records if "failed for good" in r.getMessage()]
        assert len(final) == 4 and all("after 3 attempts: HTTP 500" in line for line in final)

    def test_a_dead_server_exhausts_the_failure_budget(self):
        budget = FailureBudget(max_share=0.5, min_count=3, what="requests")
        with FaultServer(default=Action("500")) as server:
            backend = fast_backend(server, max_retries=1)
            completions = backend.generate_sync([ask(f"q{i}") for i in range(3)])
        with pytest.raises(TooManyFailures, match=r"3 of 3 requests failed \(100.0% > 50.0% allowed\); "
                                                  r"last reasons: HTTP 500"):
            for completion in completions:
                budget.record_completion(completion)

    def test_a_client_error_is_not_retried(self, caplog):
        with FaultServer([Action("400")]) as server, caplog.at_level(logging.WARNING, logger="rlkd.backends"):
            backend = fast_backend(server, max_retries=3)
            [completion] = backend.generate_sync([ask("too long")])
        assert server.count == 1
        assert completion.error.startswith("HTTP 400") and "max_tokens too large" in completion.error
        assert backend.stats.retries == 0 and backend.stats.failures == 1
        assert "failed for good after 1 attempt: HTTP 400" in caplog.text

    def test_retry_after_is_honoured(self):
        with FaultServer([Action("429", retry_after="0.4")]) as server:
            backend = fast_backend(server)
            start = time.monotonic()
            [completion] = backend.generate_sync([ask("x")])
            elapsed = time.monotonic() - start
        assert completion.ok and server.count == 2
        assert elapsed >= 0.4

    def test_retry_after_is_capped(self):
        with FaultServer([Action("429", retry_after="3600")]) as server:
            backend = fast_backend(server, retry_after_max=0.2)
            start = time.monotonic()
            [completion] = backend.generate_sync([ask("x")])
            elapsed = time.monotonic() - start
        assert completion.ok and server.count == 2
        assert 0.2 <= elapsed < 3

    def test_a_slow_server_hits_the_per_request_timeout(self):
        with FaultServer(default=Action("ok", delay=3.0)) as server:
            backend = fast_backend(server, timeout=0.3, max_retries=1)
            start = time.monotonic()
            [completion] = backend.generate_sync([ask("slow")])
            elapsed = time.monotonic() - start
        assert completion.error == "timed out after 0.3s"
        assert server.count == 2 and backend.stats.retries == 1 and backend.stats.failures == 1
        assert elapsed < 2.0


class TestOpenAIBackendProtocol:
    def test_concurrency_limit_is_respected_and_order_kept(self):
        with FaultServer(default=Action("ok", delay=0.15)) as server:
            backend = fast_backend(server, concurrency=3)
            completions = backend.generate_sync([ask(f"q{i}") for i in range(9)])
        assert [c.text for c in completions] == [f"reply to: q{i}" for i in range(9)]
        assert server.max_in_flight == 3
        assert backend.stats.calls == 9

    def test_sampling_settings_reach_the_server(self):
        with FaultServer() as server:
            backend = fast_backend(server)
            backend.generate_sync([ask("x", max_tokens=7, temperature=0.6, top_p=0.9, seed=3, stop=("\n\n",))])
        body = server.requests[0]
        assert body["model"] == "test-model"
        assert body["messages"] == [{"role": "user", "content": "x"}]
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["stop"]) == \
            (7, 0.6, 0.9, 3, ["\n\n"])
        assert "n" not in body

    def test_n_samples_in_one_request(self):
        with FaultServer() as server:
            backend = fast_backend(server)
            [completion] = backend.generate_sync([ask("x", n=3, temperature=1.0)])
        assert completion.texts == ["reply to: x #0", "reply to: x #1", "reply to: x #2"]
        assert server.count == 1 and server.requests[0]["n"] == 3
        assert backend.stats.calls == 1

    def test_server_without_n_gets_separate_requests(self, caplog):
        with FaultServer(default=Action("ok", ignore_n=True)) as server, caplog.at_level(logging.INFO):
            backend = fast_backend(server)
            completions = backend.generate_sync([ask("x", n=3, temperature=1.0, seed=7), ask("y", n=2)])
        assert [len(c.texts) for c in completions] == [3, 2]
        # first request: n=3 (one choice back), then seeds 8 and 9; afterwards one request per sample
        assert server.count == 3 + 2
        assert sorted(b.get("seed") for b in server.requests if "x" in b["messages"][0]["content"]) == [7, 8, 9]
        assert "asking for samples one by one" in caplog.text
        assert backend.stats.calls == 2

    def test_api_key_read_from_named_variable_and_never_logged(self, monkeypatch, caplog):
        secret = "sk-test-5ecret-value"
        monkeypatch.setenv("RLKD_TEST_API_KEY", secret)
        with FaultServer([Action("500")]) as server, caplog.at_level(logging.DEBUG):
            backend = fast_backend(server, api_key_env="RLKD_TEST_API_KEY")
            monkeypatch.delenv("RLKD_TEST_API_KEY")  # read at construction
            [completion] = backend.generate_sync([ask("x")])
            backend.log_stats()
        assert completion.ok
        assert server.auth_headers == [f"Bearer {secret}"] * 2
        assert "retry 1 of 3" in caplog.text  # something was logged
        assert secret not in caplog.text
        assert secret not in repr(backend) and secret not in str(vars(backend.stats))

    def test_unset_key_variable_sends_a_placeholder(self, monkeypatch):
        monkeypatch.delenv("RLKD_TEST_NO_SUCH_KEY", raising=False)
        with FaultServer() as server:
            fast_backend(server, api_key_env="RLKD_TEST_NO_SUCH_KEY").generate_sync([ask("x")])
        assert server.auth_headers == ["Bearer EMPTY"]

    def test_backend_survives_several_event_loops(self):
        with FaultServer() as server:
            backend = fast_backend(server)
            first = asyncio.run(backend.generate([ask("a")]))
            second = asyncio.run(backend.generate([ask("b")]))
        assert [first[0].text, second[0].text] == ["reply to: a", "reply to: b"]

    def test_empty_batch(self):
        backend = OpenAIBackend("http://127.0.0.1:9/v1", "m")
        assert backend.generate_sync([]) == []
        assert backend.stats.calls == 0


@pytest.mark.parametrize("value, expected", [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("soon", None), (None, None),
                                             ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


# --------------------------------------------------------------------------------------------------
# ScriptedBackend


class TestScriptedBackend:
    def test_dict_script_answers_by_last_user_message(self):
        backend = ScriptedBackend({"2+2?": "4", "3+3?": "6"})
        completions = backend.generate_sync([ask("3+3?"), ask("2+2?", n=2), ask("5+5?")])
        assert [c.texts for c in completions] == [["6"], ["4", "4"], []]
        assert completions[2].error == "scripted: no reply for user message '5+5?'"
        assert backend.stats.calls == 3 and backend.stats.failures == 1
        assert [r.last_user_message for r in backend.requests] == ["3+3?", "2+2?", "5+5?"]

    def test_function_script_and_failure_injection(self):
        backend = ScriptedBackend(lambda r: r.last_user_message.upper(), fail_first=2,
                                  fail_when=lambda r: "bad" in r.last_user_message)
        completions = backend.generate_sync([ask("a"), ask("b"), ask("c"), ask("bad d"), ask("e words here")])
        assert [c.error or c.text for c in completions] == [
            "scripted failure (fail_first=2)", "scripted failure (fail_first=2)", "C", "scripted failure (fail_when)",
            "E WORDS HERE"]
        assert completions[4].prompt_tokens == 3 and completions[4].completion_tokens == 3
        assert backend.stats.failures == 3

    def test_list_replies_give_the_samples_and_a_raising_script_fails_the_request(self):
        def script(request: GenerationRequest):
            if request.last_user_message == "boom":
                raise RuntimeError("exploded")
            return [f"s{i}" for i in range(request.n)]

        backend = ScriptedBackend(script)
        completions = backend.generate_sync([ask("x", n=3), ask("boom")])
        assert completions[0].texts == ["s0", "s1", "s2"]
        assert completions[1].error == "scripted: RuntimeError: exploded"


# --------------------------------------------------------------------------------------------------
# FailureBudget


class TestFailureBudget:
    def test_raises_once_share_exceeded_after_min_count(self):
        budget = FailureBudget(max_share=0.25, min_count=4, what="decompositions")
        budget.record(False, "timeout")  # 1 of 1, but below min_count
        for _ in range(3):
            budget.record(True)  # 1 of 4 = 25%, not more than allowed
        with pytest.raises(TooManyFailures) as info:
            budget.record(False, "HTTP 500")
        assert str(info.value) == ("2 of 5 decompositions failed (40.0% > 25.0% allowed); "
                                   "last reasons: timeout; HTTP 500")

    def test_finish_checks_a_short_job(self):
        budget = FailureBudget(max_share=0.1, min_count=20)
        budget.record_completion(Completion(error="connection error"))
        budget.record_completion(Completion(texts=["ok"]))
        with pytest.raises(TooManyFailures, match=r"1 of 2 requests failed"):
            budget.finish()

    def test_within_budget_passes(self):
        budget = FailureBudget(max_share=0.5, min_count=2)
        for ok in (True, False, True, False):
            budget.record(ok, "x")
        budget.finish()
        assert (budget.seen, budget.failures, budget.share) == (4, 2, 0.5)
        FailureBudget().finish()  # nothing seen: nothing to say

    def test_keeps_only_the_last_reasons(self):
        budget = FailureBudget(max_share=1.0, min_count=1, keep_reasons=2)
        for i in range(4):
            budget.record(False, f"r{i}")
        assert list(budget.reasons) == ["r2", "r3"]

    def test_rejects_a_share_outside_0_1(self):
        with pytest.raises(ValueError, match="max_share"):
            FailureBudget(max_share=1.5)


# --------------------------------------------------------------------------------------------------
# Building backends


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    return parser.parse_args(argv)


class TestBackendFromArgs:
    def test_openai_backend_from_options(self):
        backend = backend_from_args(parse(["--base-url", "http://127.0.0.1:8000/v1", "--model", "judge",
                                           "--concurrency", "4", "--timeout", "9", "--max-retries", "1",
                                           "--api-key-env", "MY_KEY"]))
        assert isinstance(backend, OpenAIBackend)
        assert (backend.base_url, backend.model, backend.concurrency, backend.timeout, backend.max_retries,
                backend.api_key_env) == ("http://127.0.0.1:8000/v1", "judge", 4, 9.0, 1, "MY_KEY")

    @pytest.mark.parametrize("argv", [[], ["--base-url", "http://x/v1", "--local-model", "some/model"]])
    def test_exactly_one_of_base_url_and_local_model(self, argv):
        with pytest.raises(CliError, match="exactly one of --base-url URL .* or --local-model"):
            backend_from_args(parse(argv))

    def test_base_url_needs_a_model(self):
        with pytest.raises(CliError, match="--model NAME is required with --base-url"):
            backend_from_args(parse(["--base-url", "http://x/v1"]))

    def test_bad_value_is_a_cli_error(self):
        with pytest.raises(CliError, match=r"--concurrency: must be a whole number in \[1, 4096\], got 0"):
            backend_from_args(parse(["--base-url", "http://x/v1", "--model", "m", "--concurrency", "0"]))

    def test_missing_local_model_is_a_cli_error(self, tmp_path):
        with pytest.raises(CliError, match="--local-model .*no-such-model: cannot load"):
            backend_from_args(parse(["--local-model", str(tmp_path / "no-such-model")]))


class TestBackendFromConfig:
    def test_full_config(self):
        backend = backend_from_config({"base_url": "http://h/v1", "model": "m", "api_key_env": "K",
                                       "concurrency": 2, "timeout": 5, "max_retries": 0})
        assert isinstance(backend, OpenAIBackend)
        assert (backend.model, backend.concurrency, backend.timeout, backend.max_retries) == ("m", 2, 5.0, 0)

    def test_unknown_field_is_named(self):
        with pytest.raises(ValueError, match=r"gsrm.backend: unknown field 'temprature'"):
            backend_from_config({"base_url": "http://h/v1", "model": "m", "temprature": 0}, where="gsrm.backend")

    def test_missing_model_is_named(self):
        with pytest.raises(ValueError, match=r"backend: missing field 'model'"):
            backend_from_config({"base_url": "http://h/v1"})

    def test_wrong_type_is_named(self):
        with pytest.raises(ValueError, match=r"backend: field 'concurrency' must be int, got '8'"):
            backend_from_config({"base_url": "http://h/v1", "model": "m", "concurrency": "8"})

    def test_neither_server_nor_local_model(self):
        with pytest.raises(ValueError, match=r"exactly one of 'base_url' .* or 'local_model'"):
            backend_from_config({"model": "m"})
