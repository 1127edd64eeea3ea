"""The SQLite request cache: keys, hits and misses, failures never stored, concurrent writers."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import threading

import pytest

from rlkd.backends import GenerationRequest, ScriptedBackend
from rlkd.backends.cache import CachedBackend, RequestCache, request_key


def ask(text: str, **kwargs) -> GenerationRequest:
    return GenerationRequest.chat([("system", "Be brief."), ("user", text)], **kwargs)


def echo(request: GenerationRequest) -> str:
    return f"answer to {request.last_user_message}"


class TestRequestKey:
    BASE = ask("2+2?", max_tokens=64, temperature=0.0, top_p=1.0, n=1, seed=None, stop=())

    def test_same_request_same_key(self):
        key = request_key("m", self.BASE)
        assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
        assert request_key("m", ask("2+2?", max_tokens=64)) == key
        assert request_key("m", dataclasses.replace(self.BASE, temperature=0)) == key  # 0 == 0.0

    @pytest.mark.parametrize("change", [
        {"max_tokens": 65}, {"temperature": 0.7}, {"top_p": 0.95}, {"n": 2}, {"seed": 0}, {"stop": ("\n",)},
        {"messages": (("system", "Be brief."), ("user", "2+3?"))},
        {"messages": (("system", "Be brief!"), ("user", "2+2?"))},
        {"messages": (("user", "Be brief."), ("user", "2+2?"))},
        {"messages": (("user", "2+2?"),)},
    ])
    def test_every_setting_changes_the_key(self, change):
        assert request_key("m", dataclasses.replace(self.BASE, **change)) != request_key("m", self.BASE)

    def test_model_changes_the_key(self):
        assert request_key("m1", self.BASE) != request_key("m2", self.BASE)


class TestCachedBackend:
    def test_second_run_makes_no_backend_calls(self, tmp_path):
        inner = ScriptedBackend(echo)
        backend = CachedBackend(inner, tmp_path / "cache.sqlite")
        requests = [ask("a"), ask("b", temperature=0.7, seed=1)]
        first = backend.generate_sync(requests)
        assert [c.text for c in first] == ["answer to a", "answer to b"]
        assert [c.cached for c in first] == [False, False]
        assert (inner.stats.calls, inner.stats.cache_hits) == (2, 0)

        second = backend.generate_sync(requests)
        assert [c.text for c in second] == ["answer to a", "answer to b"]
        assert [c.cached for c in second] == [True, True]
        assert (inner.stats.calls, inner.stats.cache_hits) == (2, 2)
        assert backend.stats is inner.stats
        assert second[0].prompt_tokens == first[0].prompt_tokens == 3
        assert inner.stats.prompt_tokens == 2 * 3  # cache hits spend no tokens

    def test_cache_persists_across_instances(self, tmp_path):
        path = tmp_path / "sub" / "cache.sqlite"  # the folder is created
        CachedBackend(ScriptedBackend(echo), path).generate_sync([ask("a", n=2, temperature=1.0)])
        fresh = ScriptedBackend(lambda r: "must not be called")
        [completion] = CachedBackend(fresh, path).generate_sync([ask("a", n=2, temperature=1.0)])
        assert completion.texts == ["answer to a", "answer to a"] and completion.cached
        assert fresh.stats.calls == 0 and fresh.stats.cache_hits == 1

    def test_a_changed_setting_is_a_miss(self, tmp_path):
        inner = ScriptedBackend(echo)
        backend = CachedBackend(inner, tmp_path / "c.sqlite")
        backend.generate_sync([ask("a")])
        backend.generate_sync([ask("a", max_tokens=10)])
        assert (inner.stats.calls, inner.stats.cache_hits) == (2, 0)

    def test_failures_are_not_cached(self, tmp_path):
        inner = ScriptedBackend(echo, fail_first=1)
        backend = CachedBackend(inner, tmp_path / "c.sqlite")
        first = backend.generate_sync([ask("a"), ask("b")])
        assert [c.error for c in first] == ["scripted failure (fail_first=1)", None]
        assert len(backend.cache) == 1
        second = backend.generate_sync([ask("a"), ask("b")])
        assert [c.text for c in second] == ["answer to a", "answer to b"]
        assert [c.cached for c in second] == [False, True]
        assert (inner.stats.calls, inner.stats.cache_hits, inner.stats.failures) == (3, 1, 1)
        assert len(backend.cache) == 2

    def test_duplicates_in_a_batch_are_sent_once(self, tmp_path):
        inner = ScriptedBackend(echo)
        backend = CachedBackend(inner, tmp_path / "c.sqlite")
        completions = backend.generate_sync([ask("a"), ask("b"), ask("a")])
        assert [c.text for c in completions] == ["answer to a", "answer to b", "answer to a"]
        assert [r.last_user_message for r in inner.requests] == ["a", "b"]
        assert (inner.stats.calls, inner.stats.cache_hits) == (2, 1)

    def test_unseeded_samples_are_cached_by_default_and_can_bypass(self, tmp_path):
        sampled = ask("a", temperature=0.8)
        inner = ScriptedBackend(echo)
        CachedBackend(inner, tmp_path / "c.sqlite").generate_sync([sampled])
        CachedBackend(inner, tmp_path / "c.sqlite").generate_sync([sampled])
        assert (inner.stats.calls, inner.stats.cache_hits) == (1, 1)

        bypass = CachedBackend(inner, tmp_path / "c.sqlite", sampled_without_seed=False)
        bypass.generate_sync([sampled, ask("a", temperature=0.8, seed=5), ask("a")])
        assert [r.temperature for r in inner.requests[1:]] == [0.8, 0.8, 0.0]
        bypass.generate_sync([sampled, ask("a", temperature=0.8, seed=5), ask("a")])
        assert (inner.stats.calls, inner.stats.cache_hits) == (5, 3)

    def test_not_a_database_is_a_clear_error(self, tmp_path):
        path = tmp_path / "notes.txt"
        path.write_text("these are not the droids you are looking for " * 50)
        with pytest.raises(OSError, match=r"notes.txt: not a request cache \(not an SQLite file\); refusing to touch it"):
            RequestCache(path)
        assert path.read_text() == "these are not the droids you are looking for " * 50  # left alone
        assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    def test_cache_option_wraps_the_backend(self, tmp_path):
        from rlkd.backends import OpenAIBackend, backend_from_config

        backend = backend_from_config({"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                       "cache": str(tmp_path / "c.sqlite")})
        assert isinstance(backend, CachedBackend) and isinstance(backend.inner, OpenAIBackend)
        assert backend.model == "m" and backend.stats is backend.inner.stats


# --------------------------------------------------------------------------------------------------
# Concurrent writers


def _write_range(path: str, start: int, stop: int) -> None:
    backend = CachedBackend(ScriptedBackend(echo), path)
    for low in range(start, stop, 2):  # many small transactions, to make the writers collide
        backend.generate_sync([ask(f"q{i}") for i in range(low, min(low + 2, stop))])


def _check_consistent(path, expected: range) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = RequestCache(path)
    assert len(cache) == len(expected)
    found = cache.get_many(request_key("scripted", ask(f"q{i}")) for i in expected)
    assert len(found) == len(expected)
    assert sorted(c.text for c in found.values()) == sorted(f"answer to q{i}" for i in expected)


def test_concurrent_writer_processes_leave_a_consistent_db(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    context = multiprocessing.get_context("fork")
    # four processes over overlapping ranges: q0-q59, q20-q79, q40-q99, q0-q99
    processes = [context.Process(target=_write_range, args=(path, a, b)) for a, b in [(0, 60), (20, 80), (40, 100),
                                                                                        (0, 100)]]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    _check_consistent(path, range(100))


def test_concurrent_writer_threads_leave_a_consistent_db(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    shared = RequestCache(path)
    errors: list[BaseException] = []

    def work(start: int, own_file: bool) -> None:
        try:
            cache = RequestCache(path) if own_file else shared
            backend = CachedBackend(ScriptedBackend(echo), cache)
            for low in range(start, start + 40, 8):
                backend.generate_sync([ask(f"q{i}") for i in range(low, low + 8)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(start, own)) for start, own in
               [(0, False), (20, False), (40, True), (60, True)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    _check_consistent(path, range(100))
