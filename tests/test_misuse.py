"""Reliability, second round: what a hostile or clumsy user can do, through the commands they run.

Each class is one promise (RELIABILITY.md section 7 names the test of each row):

1. secrets: an API key is never echoed in any form; a key variable holding a control character is
   refused with a message that does not contain the key; an ``--api-key-env`` that looks like a key warns;
2. files: no command truncates, replaces or appends to a file it did not write (checked before the
   first write and before any paid call); pages and JSON are written atomically; a second writer of one
   output is refused by a lock;
3. failure: a command whose calls all failed, or failed beyond its budget, exits non-zero with one line
   saying what failed and how often; a pair that could not be judged is marked ``unjudged`` with reward
   null, never a silent 0;
4. inputs: numeric options and recipe fields are finite and in range; YAML is safe, bounded and refuses
   duplicate keys; a wrong type names the field;
5. cache: a corrupt request cache is reported on one line, moved aside and rebuilt; an entry that
   cannot be read back whole is never served; a file that is not a cache is left alone;
6. resume: the message says what a rerun will do, and a rerun that has nothing to send does not end
   as a silent success;
7. one line, never a traceback: folders, bytes that are not UTF-8, very long values, Ctrl-C; and no
   third-party INFO logging unless ``-v``.

The backend faults come from the real local HTTP server of tests/fault_server.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_server import Action, FaultServer
from rlkd.cli import main
from test_reliability import GOOD_REPLY, Faults, free_port, problem_of, read_jsonl, traces, write_jsonl

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "examples" / "pairs.jsonl"
KEY = "sk-live-7f3a9c2e41d8b6"


def yes_judge(body: dict) -> Action:
    return Action("ok", text="Yes")


def score(base_url: str, out: Path | None, *extra: str, pairs: Path = PAIRS) -> int:
    args = ["score", "--pairs", str(pairs), "--judge", "llm", "--base-url", base_url, "--model", "judge",
            "--max-retries", "2", "--timeout", "2", *extra]
    return main(args + (["--output", str(out)] if out is not None else []))


def decompose(base_url: str, inp: Path, out: Path, *extra: str) -> int:
    return main(["decompose", "--input", str(inp), "--output", str(out), "--base-url", base_url, "--model", "gsrm",
                 "--batch-size", "4", "--max-retries", "0", "--timeout", "5", *extra])


def good_gsrm(body: dict) -> Action:
    return Action("ok", text=GOOD_REPLY.format(problem=problem_of(body)))


# --------------------------------------------------------------------------------------------------
# 1. Secrets


class TestSecrets:
    @pytest.mark.parametrize("value", [KEY + "\r\n", KEY + "\n", KEY[:6] + "\t" + KEY[6:], KEY + "\x7f", KEY + "é"])
    def test_a_key_with_a_control_character_is_refused_without_echoing_it(self, value, tmp_path, monkeypatch,
                                                                          capsys, caplog):
        monkeypatch.setenv("RLKD_TEST_KEY", value)
        out = tmp_path / "s.jsonl"
        with caplog.at_level(logging.DEBUG), FaultServer(default=yes_judge) as server:
            assert score(server.base_url, out, "--api-key-env", "RLKD_TEST_KEY") == 2
            assert server.count == 0  # refused before any request
        err = capsys.readouterr().err
        assert "rlkd score: error: environment variable RLKD_TEST_KEY: the API key holds" in err
        assert "(the key is not shown)" in err and len(err.strip().splitlines()) == 1
        for text in (err, caplog.text):
            assert KEY not in text and KEY[:6] not in text and KEY[6:] not in text
        assert not out.exists()

    def test_the_same_refusal_for_decompose_and_the_cache_never_sees_the_key(self, tmp_path, monkeypatch, capsys):
        monkeypatch.setenv("RLKD_TEST_KEY", KEY + "\r\n")
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(2))
        with FaultServer(default=good_gsrm) as server:
            assert decompose(server.base_url, inp, out, "--api-key-env", "RLKD_TEST_KEY") == 2
            assert server.count == 0
        assert KEY not in capsys.readouterr().err
        for path in tmp_path.iterdir():
            assert KEY.encode() not in path.read_bytes()

    def test_a_key_given_as_the_variable_name_warns_and_is_never_shown(self, tmp_path, capsys, caplog):
        out = tmp_path / "s.jsonl"
        with caplog.at_level(logging.DEBUG), FaultServer(default=yes_judge) as server:
            status = score(server.base_url, out, "--api-key-env", KEY)
            assert server.count > 0 and set(server.auth_headers) == {"Bearer EMPTY"}  # the variable is unset
        assert status == 0
        assert "api_key_env looks like an API key, not the name of a variable (it is not shown)" in caplog.text
        printed = capsys.readouterr()
        for text in (caplog.text, printed.out, printed.err, out.read_text()):
            assert KEY not in text

    @pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
    def test_a_server_that_echoes_the_key_never_gets_it_shown(self, streamed, monkeypatch, caplog):
        import asyncio

        from rlkd.backends import GenerationRequest, OpenAIBackend, StreamSink

        monkeypatch.setenv("RLKD_TEST_KEY", KEY)
        request = GenerationRequest.chat([("user", "hello")], max_tokens=8)
        with caplog.at_level(logging.DEBUG), FaultServer(default=Action("401_echo")) as server:
            backend = OpenAIBackend(server.base_url, "m", api_key_env="RLKD_TEST_KEY", max_retries=1,
                                    backoff_base=0.01)

            async def go():
                try:
                    if streamed:
                        return (await backend.generate_stream([request], [StreamSink()]))[0]
                    return (await backend.generate([request]))[0]
                finally:
                    await backend.aclose()

            completion = asyncio.run(go())
            assert server.auth_headers[0] == f"Bearer {KEY}"  # the server did get the key, and quoted it
        assert not completion.ok and "Incorrect API key provided" in completion.error
        assert KEY not in completion.error and KEY not in caplog.text

    def test_a_key_quoted_by_an_error_message_is_replaced(self, monkeypatch):
        from rlkd.backends import OpenAIBackend

        monkeypatch.setenv("RLKD_TEST_KEY", KEY)
        backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="RLKD_TEST_KEY")
        assert backend._scrub(f"Illegal header value b'Bearer {KEY}'") == "Illegal header value b'Bearer <key>'"
        assert KEY not in repr(backend)


# --------------------------------------------------------------------------------------------------
# 2. Files: never destroy a file rlkd did not write

FOREIGN = {  # what a user may already have at the output path
    "notes_without_newline": b"notes",
    "json_config": b'{\n  "learning_rate": 0.1\n}',
    "binary": bytes(range(256)),
    "other_jsonl": b'{"id": 1, "problem": "p", "reasoning": "r"}\n',
}


class TestFiles:
    @pytest.mark.parametrize("kind", FOREIGN)
    def test_decompose_refuses_a_file_it_did_not_write_and_leaves_it_byte_for_byte(self, kind, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "notes.txt"
        write_jsonl(inp, traces(3))
        out.write_bytes(FOREIGN[kind])
        with FaultServer(default=good_gsrm) as server:
            assert decompose(server.base_url, inp, out) == 2
            assert server.count == 0
        err = capsys.readouterr().err
        assert f"{out}: exists and is not an output of this command (line 1: " in err
        assert out.read_bytes() == FOREIGN[kind]

    def test_decompose_refuses_its_own_input_as_output(self, tmp_path, capsys):
        inp = tmp_path / "in.jsonl"
        write_jsonl(inp, traces(3))
        before = inp.read_bytes()
        assert decompose("http://127.0.0.1:9/v1", inp, inp) == 2
        assert "is also an input of this command" in capsys.readouterr().err
        assert inp.read_bytes() == before

    @pytest.mark.parametrize("command", ["gsrm", "rlkd"])
    def test_data_commands_refuse_a_foreign_output(self, command, tmp_path, capsys):
        inp = tmp_path / "in.jsonl"
        if command == "gsrm":
            write_jsonl(inp, traces(2))
            victim = tmp_path / "sft.jsonl"
            sets = [f"input={inp}", f"output={victim}"]
        else:
            write_jsonl(inp, [{"problem": "p", "answer": "1", "generations": ["g"], "correctness_math_verify": [True]}])
            victim = tmp_path / "out" / "skipped.jsonl"
            victim.parent.mkdir()
            sets = [f"input={inp}", f"output_dir={victim.parent}"]
        victim.write_bytes(b"my own notes")
        backend = "backend" if command == "gsrm" else "gsrm"
        with FaultServer(default=good_gsrm) as server:
            argv = ["data", command] + [a for s in sets + [f"{backend}.base_url={server.base_url}",
                                                           f"{backend}.model=m"] for a in ("--set", s)]
            assert main(argv) == 2
            assert server.count == 0
        assert "exists and is not an output of this command" in capsys.readouterr().err
        assert victim.read_bytes() == b"my own notes"

    def test_score_refuses_a_foreign_output_before_any_call(self, tmp_path, capsys):
        out = tmp_path / "results.jsonl"
        out.write_text('{"name": "my results"}\n')
        with FaultServer(default=yes_judge) as server:
            assert score(server.base_url, out) == 2
            assert server.count == 0
        assert "is not a file rlkd score writes (line 1: no field 'reward', 'steps')" in capsys.readouterr().err
        assert out.read_text() == '{"name": "my results"}\n'

    @pytest.mark.parametrize("where", ["missing/folder/o.jsonl", "afile/o.jsonl", "."])
    def test_score_checks_the_write_path_before_any_paid_call(self, where, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "afile").write_text("x")
        with FaultServer(default=yes_judge) as server:
            status = score(server.base_url, Path(where))
            if where.startswith("missing"):  # a folder that can be made is made, after the calls
                assert status == 0 and server.count > 0 and len(read_jsonl(tmp_path / where)) == 4
                return
            assert status == 2 and server.count == 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert ("afile is not a folder" in err) if where.startswith("afile") else ("is a folder" in err)

    def test_inspect_refuses_a_wrong_typed_field_before_touching_the_page(self, tmp_path, capsys):
        scored, page = tmp_path / "scored.jsonl", tmp_path / "page.html"
        assert main(["score", "--pairs", str(PAIRS), "--judge", "text", "--output", str(scored)]) == 0
        assert main(["inspect", "--pairs", str(scored), "--html", str(page)]) == 0
        before = page.read_bytes()
        rows = read_jsonl(scored)
        rows[1]["steps"][0]["failures"] = "x"
        write_jsonl(scored, rows)
        assert main(["inspect", "--pairs", str(scored), "--html", str(page)]) == 2
        assert (f"{scored}:2: not a scored record: field 'steps[0].failures' must be an object, got text"
                in capsys.readouterr().err)
        assert page.read_bytes() == before

    @pytest.mark.parametrize("field,value,message", [
        ("reward", "x", "field 'reward' must be a number or null, got text"),
        ("matched_prefix", 1.5, "field 'matched_prefix' must be a whole number, got a number"),
        ("steps", {"a": 1}, "field 'steps' must be a list, got an object"),
    ])
    def test_inspect_names_each_wrong_typed_field(self, field, value, message, tmp_path, capsys):
        scored = tmp_path / "scored.jsonl"
        assert main(["score", "--pairs", str(PAIRS), "--judge", "text", "--output", str(scored)]) == 0
        rows = read_jsonl(scored)
        rows[0][field] = value
        write_jsonl(scored, rows)
        assert main(["inspect", "--pairs", str(scored)]) == 2
        assert f"{scored}:1: not a scored record: {message}" in capsys.readouterr().err

    def test_inspect_refuses_to_replace_a_page_it_did_not_write(self, tmp_path, capsys):
        scored, page = tmp_path / "scored.jsonl", tmp_path / "index.html"
        assert main(["score", "--pairs", str(PAIRS), "--judge", "text", "--output", str(scored)]) == 0
        page.write_text("<html><body>my page</body></html>")
        assert main(["inspect", "--pairs", str(scored), "--html", str(page)]) == 2
        assert "is not a page rlkd inspect writes" in capsys.readouterr().err
        assert page.read_text() == "<html><body>my page</body></html>"

    def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(self, tmp_path, monkeypatch):
        from rlkd import files

        target = tmp_path / "page.html"
        target.write_text("old page")

        def broken_replace(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(files.os, "replace", broken_replace)
        with pytest.raises(OSError, match="No space left"):
            files.atomic_write_text(target, "new page")
        assert target.read_text() == "old page"
        assert [p.name for p in tmp_path.iterdir()] == ["page.html"]

    def test_two_processes_decomposing_into_one_output_are_refused_by_the_lock(self, tmp_path):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(40))

        def slow(body: dict) -> Action:
            return Action("ok", delay=0.1, text=GOOD_REPLY.format(problem=problem_of(body)))

        with FaultServer(default=slow) as server:
            command = [sys.executable, "-m", "rlkd", "decompose", "--input", str(inp), "--output", str(out),
                       "--base-url", server.base_url, "--model", "gsrm", "--batch-size", "4", "--no-cache"]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
            results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
            for p in procs:
                p.stderr.close()
        statuses = sorted(status for status, _ in results)
        assert statuses == [0, 2], results
        refused = next(err for status, err in results if status == 2)
        assert f"{out}: another rlkd process (pid " in refused and "is writing it" in refused
        assert sorted(r["id"] for r in read_jsonl(out)) == sorted(f"q{i}" for i in range(40))  # each once

    def test_the_lock_does_not_outlive_its_process(self, tmp_path):
        from rlkd.files import OutputLock

        out = tmp_path / "out.jsonl"
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rlkd.files import OutputLock; "
                                   f"lock = OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(Exception, match="another rlkd process"):
                OutputLock(out).acquire()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            holder.stdout.close()
        with OutputLock(out):  # kill -9 released it
            pass


# --------------------------------------------------------------------------------------------------
# 3. Total failure exits non-zero; unjudged pairs are not zeros

DEAD_JUDGES = {
    "nothing_listening": None,
    "http_500": Action("500"),
    "not_json": Action("malformed"),
    "hangs": Action("ok", text="Yes", delay=4.0),
}


class TestFailure:
    @pytest.mark.parametrize("kind", DEAD_JUDGES)
    def test_score_exits_2_with_one_line_when_every_judge_call_failed(self, kind, tmp_path, capsys):
        out = tmp_path / "s.jsonl"
        out.write_text('{"id": "earlier", "reward": 1.0, "steps": []}\n')  # a good earlier output
        if DEAD_JUDGES[kind] is None:
            status = score(f"http://127.0.0.1:{free_port()}/v1", out)
        else:
            with FaultServer(default=DEAD_JUDGES[kind]) as server:
                status = score(server.base_url, out, "--timeout", "1")
        assert status == 2
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if x.startswith("rlkd score: error:")]
        # 3 of the 4 shipped pairs need a judge (the fourth student does not parse: reward 0, documented)
        assert "rlkd score: error: 3 of 4 pairs could not be judged (24 of 24 judge requests failed); " in line
        records = read_jsonl(out)
        assert [r["id"] for r in records] == ["same", "drifted", "first-meta-wrong", "unparsable"]
        unjudged = [r for r in records if r.get("unjudged")]
        assert len(unjudged) == 3 and all(r["reward"] is None for r in unjudged)  # never a silent 0.0

    def test_some_unjudged_pairs_within_the_budget_exit_1_and_are_marked(self, tmp_path, capsys):
        out = tmp_path / "s.jsonl"
        calls = {"n": 0}

        def first_fails(body: dict) -> Action:
            calls["n"] += 1
            return Action("500") if calls["n"] == 1 else Action("ok", text="Yes")

        with FaultServer(default=first_fails) as server:
            assert score(server.base_url, out, "--max-failure-share", "0.5", "--lazy", "--max-retries", "0") == 1
        records = read_jsonl(out)
        assert sum(r.get("unjudged") is not None for r in records) == 1
        err = capsys.readouterr().err
        assert "4 pairs: 3 judged" in err and "unjudged 1" in err

    def test_the_stop_counts_every_failure_of_the_batch(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(12))
        assert decompose(f"http://127.0.0.1:{free_port()}/v1", inp, out, "--batch-size", "12",
                         "--min-failures", "2", "--no-cache") == 2
        err = capsys.readouterr().err
        assert "stopped: 12 of 12 traces failed" in err  # was "2 of 2": the count stopped part-way
        assert "12 traces whose call failed were not written: fix the cause, then the same command again " \
               "retries them" in err


# --------------------------------------------------------------------------------------------------
# 4. Inputs: numbers in range, safe bounded YAML, fields named


class TestInputs:
    @pytest.mark.parametrize("option,value,message", [
        ("--timeout", "inf", "--timeout: must be a finite number in (0, 86400], got inf"),
        ("--timeout", "nan", "--timeout: must be a finite number in (0, 86400], got nan"),
        ("--timeout", "0", "--timeout: must be a finite number in (0, 86400], got 0.0"),
        ("--max-retries", "1000000", "--max-retries: must be a whole number in [0, 50], got 1000000"),
        ("--concurrency", "0", "--concurrency: must be a whole number in [1, 4096], got 0"),
        ("--max-tokens", "-5", "--max-tokens must be at least 1, got -5"),
        ("--max-trace-chars", "-1", "--max-trace-chars must be 0 (never cut) or more, got -1"),
        ("--max-failure-share", "nan", "--max-failure-share must be between 0 and 1"),
    ])
    def test_decompose_refuses_numbers_out_of_range_before_any_call(self, option, value, message, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(1))
        with FaultServer(default=good_gsrm) as server:
            assert decompose(server.base_url, inp, out, option, value) == 2
            assert server.count == 0
        assert f"rlkd decompose: error: {message}" in capsys.readouterr().err

    @pytest.mark.parametrize("override,message", [
        ("training.learning_rate=.nan", "training.learning_rate: must be a finite number, got nan"),
        ("training.learning_rate=.inf", "training.learning_rate: must be a finite number, got inf"),
        ("training.beta=-0.1", "training.beta: must be within [0, inf], got -0.1"),
        ("structure.max_failure_share=2", "structure.max_failure_share: must be within [0, 1], got 2.0"),
        ("structure.max_batch_failure_share=-1", "structure.max_batch_failure_share: must be within [0, 1]"),
        ("training.top_p=0", "training.top_p: must be within (0, 1], got 0.0"),
        ("structure.gsrm.timeout=.inf", "structure.gsrm.timeout: must be a finite number, got inf"),
        ("structure.gsrm.max_retries=1000000", "structure.gsrm.max_retries: must be a whole number in [0, 50]"),
        ("training.max_grad_norm=0", "training.max_grad_norm: must be > 0, got 0.0"),
    ])
    def test_recipe_numbers_are_finite_and_in_range(self, override, message):
        from rlkd.config import ConfigError, GRPOJob, load_job

        with pytest.raises(ConfigError) as caught:
            load_job(GRPOJob, REPO / "configs" / "tiny" / "rlkd_grpo.yaml", [override])
        assert message in str(caught.value)

    @pytest.mark.parametrize("output_dir,message", [
        ("/", "output_dir = /: / is the filesystem root; choose a new or empty folder"),
        ("{home}", "is the home folder"),
        ("{notes}", "already holds 1 entries that are not an rlkd run (e.g. notes.txt)"),
    ])
    def test_training_refuses_an_output_dir_that_is_not_a_run(self, output_dir, message, tmp_path, capsys,
                                                              monkeypatch):
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        (tmp_path / "home").mkdir()
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        folder = output_dir.format(home=tmp_path / "home", notes=tmp_path / "mine")
        status = main(["train", "grpo", "--config", str(REPO / "configs" / "tiny" / "rlkd_grpo.yaml"), "--dry-run",
                       "--set", f"output_dir={folder}"])
        assert status == 2
        assert message in capsys.readouterr().err
        assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

    @pytest.mark.parametrize("text,message", [
        ("model: a\noutput_dir: o\nmodel: b\n", "line 3: key 'model' appears twice in one mapping (first on line 1)"),
        ("training:\n  beta: 0.1\n  beta: 0.2\n", "line 3: key 'beta' appears twice"),
        ("a: &x [1, 2]\nb: [*x, *x]\n", "line 2: YAML aliases (*x) are not accepted"),
        ("model: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
        ("[" * 20000 + "]" * 20000 + "\n", "nested too deeply to read"),
    ])
    def test_yaml_is_safe_bounded_and_refuses_duplicate_keys(self, text, message, tmp_path, capsys):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(text)
        assert main(["train", "grpo", "--config", str(recipe), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1

    def test_a_billion_laughs_recipe_is_refused_at_once(self, tmp_path, capsys):
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
        recipe = tmp_path / "laughs.yaml"
        recipe.write_text("\n".join(lines) + "\n")
        started = time.monotonic()
        assert main(["train", "grpo", "--config", str(recipe), "--dry-run"]) == 2
        assert time.monotonic() - started < 10
        assert "YAML aliases (*a0) are not accepted" in capsys.readouterr().err

    def test_a_huge_recipe_is_refused_by_size(self, tmp_path, capsys):
        recipe = tmp_path / "big.yaml"
        recipe.write_text("# " + "x" * (2 << 20) + "\n")
        assert main(["train", "grpo", "--config", str(recipe), "--dry-run"]) == 2
        assert "larger than 1048576 bytes" in capsys.readouterr().err

    @pytest.mark.parametrize("value,got", [("5", "a number"), ("null", "null"), ("[1]", "a list"),
                                           ("true", "true/false")])
    def test_a_decomposition_that_is_not_text_or_an_object_is_refused_naming_the_field(self, value, got, tmp_path,
                                                                                     capsys):
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text('{"id": 1, "teacher": "[Meta-reasoning 1]: a\\n[Sub-problem 1]: b\\n[Answer 1]: c", '
                         f'"student": {value}}}\n')
        for command in (["score", "--judge", "text"], ["inspect"]):
            assert main([command[0], "--pairs", str(pairs), *command[1:]]) == 2
            assert (f"{pairs}:1: field 'student' must be GSRM text or a decomposition object, got {got}"
                    in capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------
# 5. The request cache


def _build_cache(tmp_path: Path, n: int = 120) -> tuple[Path, Path]:
    """A decompose run's input and a filled request cache (a few hundred KB of pages)."""
    inp, cache = tmp_path / "in.jsonl", tmp_path / "c.sqlite"
    write_jsonl(inp, [{"id": f"q{i}", "problem": f"p{i} " + "x" * 300, "reasoning": f"r{i}</think>"} for i in range(n)])
    with FaultServer(default=good_gsrm) as server:
        assert decompose(server.base_url, inp, tmp_path / "first.jsonl", "--cache", str(cache),
                         "--batch-size", str(n)) == 0
    return inp, cache


class TestCache:
    def test_garbage_in_the_middle_pages_is_reported_moved_aside_and_rebuilt(self, tmp_path, caplog, capsys):
        inp, cache = _build_cache(tmp_path)
        with open(cache, "r+b") as handle:
            handle.seek(4096 * 3)
            handle.write(bytes([0xA5]) * 4096 * 5)
        out = tmp_path / "second.jsonl"
        with caplog.at_level(logging.WARNING), FaultServer(default=good_gsrm) as server:
            assert decompose(server.base_url, inp, out, "--cache", str(cache), "--batch-size", "120") == 0
            assert server.count == 120  # asked again
        [warning] = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
        assert f"{cache}: the request cache is corrupt (database disk image is malformed); moved it aside to " \
               "c.sqlite.corrupt-" in warning
        assert len(read_jsonl(out)) == 120 and all(r["status"] == "ok" for r in read_jsonl(out))
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("c.sqlite.corrupt-")]
        assert len(aside) == 1
        with sqlite3.connect(cache) as conn:  # rebuilt, and holds the fresh answers
            assert conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 120

    def test_a_file_that_is_not_a_cache_is_refused_and_left_alone(self, tmp_path, capsys):
        inp = tmp_path / "in.jsonl"
        write_jsonl(inp, traces(1))
        notes = tmp_path / "notes.txt"
        notes.write_bytes(b"garbage garbage! and more")
        assert decompose("http://127.0.0.1:9/v1", inp, tmp_path / "o.jsonl", "--cache", str(notes)) == 2
        err = capsys.readouterr().err
        assert "notes.txt: not a request cache (not an SQLite file); refusing to touch it" in err
        assert "--local-model" not in err  # was: "--local-model None: cannot load"
        assert notes.read_bytes() == b"garbage garbage! and more"

    def test_another_programs_database_is_left_alone(self, tmp_path):
        from rlkd.backends.cache import RequestCache

        db = tmp_path / "app.db"
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE users (name TEXT)")
        with pytest.raises(OSError, match="an SQLite database but not a request cache \\(tables users\\)"):
            RequestCache(db)
        with sqlite3.connect(db) as conn:
            assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]

    @pytest.mark.parametrize("texts,n", [("not json", 1), ('"one text"', 1), ("[1, 2]", 1), ("[]", 1), ('["a"]', 2)])
    def test_an_incomplete_entry_is_never_served(self, texts, n, tmp_path):
        from rlkd.backends import GenerationRequest, ScriptedBackend
        from rlkd.backends.cache import CachedBackend, RequestCache, request_key

        cache = RequestCache(tmp_path / "c.sqlite")
        request = GenerationRequest.chat([("user", "q")], n=n, temperature=0.5 if n > 1 else 0.0, seed=1)
        inner = ScriptedBackend(lambda r: "fresh")
        key = request_key(inner.model, request)
        with sqlite3.connect(cache.path) as conn:
            conn.execute("INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?, ?)", (key, inner.model, "{}", texts, 1, 1, 0))
        [completion] = CachedBackend(inner, cache).generate_sync([request])
        assert completion.texts == ["fresh"] * n and not completion.cached and inner.stats.calls == 1


# --------------------------------------------------------------------------------------------------
# 6. Resume tells the truth


def no_steps_gsrm(body: dict) -> Action:
    return Action("ok", text="I cannot decompose this.")


class TestResume:
    def test_a_run_whose_replies_all_had_no_steps_says_a_rerun_will_not_retry_them(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(12))
        with FaultServer(default=no_steps_gsrm) as server:
            assert decompose(server.base_url, inp, out, "--batch-size", "12") == 2
        err = capsys.readouterr().err
        assert "stopped: 12 of 12 traces failed" in err
        assert "run the same command again to resume" not in err
        assert "12 whose GSRM reply had no steps were written with the reason and a rerun does not ask again " \
               "for them" in err and "run again with --retry-no-steps" in err

        with FaultServer(default=good_gsrm) as server:  # the rerun: nothing left to send, and it says so
            assert decompose(server.base_url, inp, out, "--batch-size", "12") == 2
            assert server.count == 0
        err = capsys.readouterr().err
        assert f"{out}: 12 of its 12 records have no steps (100.0% > 20.0% allowed" in err

        with FaultServer(default=good_gsrm) as server:  # asking again, once the GSRM is fixed
            assert decompose(server.base_url, inp, out, "--batch-size", "12", "--retry-no-steps", "--no-cache") == 0
            assert server.count == 12
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(12))
        assert {r["status"] for r in records} == {"ok"}

    def test_backend_failures_are_retried_by_the_rerun_as_the_message_says(self, tmp_path, capsys):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(4))
        faults = Faults({"p1": [Action("500")], "p2": [Action("500")]})
        with FaultServer(default=faults) as server:
            assert decompose(server.base_url, inp, out, "--min-failures", "2") == 2
        assert "2 traces whose call failed were not written: fix the cause, then the same command again " \
               "retries them" in capsys.readouterr().err
        faults.plan.clear()
        with FaultServer(default=faults) as server:
            assert decompose(server.base_url, inp, out) == 0
            assert server.count == 2
        assert sorted(r["id"] for r in read_jsonl(out)) == ["q0", "q1", "q2", "q3"]


# --------------------------------------------------------------------------------------------------
# 7. One line, never a traceback; quiet third-party loggers


class TestOneLine:
    @pytest.mark.parametrize("argv", [
        ["parse", "{d}"], ["score", "--pairs", "{d}"], ["inspect", "--pairs", "{d}"],
        ["train", "grpo", "--config", "{d}"], ["train", "sft", "--config", "{d}", "--dry-run"],
        ["decompose", "--input", "{d}", "--output", "o.jsonl", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
        ["decompose", "--input", "{f}", "--output", "{d}", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
        ["inspect", "--pairs", str(PAIRS), "--html", "{d}"],
    ])
    def test_a_folder_where_a_file_belongs(self, argv, tmp_path, capsys):
        folder = tmp_path / "folder"
        folder.mkdir()
        inp = tmp_path / "in.jsonl"
        write_jsonl(inp, traces(1))
        assert main([a.format(d=folder, f=inp) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rlkd {argv[0]}: error: ") and "is a folder" in err and len(err.splitlines()) == 1

    def test_a_recipe_that_is_not_utf8(self, tmp_path, capsys):
        recipe = tmp_path / "r.yaml"
        recipe.write_bytes(b"model: \xff\xfe\n")
        assert main(["train", "grpo", "--config", str(recipe), "--dry-run"]) == 2
        assert capsys.readouterr().err.strip() == f"rlkd train: error: {recipe}: not UTF-8 text (byte 7); save the " \
                                                  "recipe as UTF-8"

    @pytest.mark.parametrize("field", ["model", "output_dir", "resume"])
    def test_a_very_long_set_value(self, field, capsys):
        status = main(["train", "grpo", "--config", str(REPO / "configs" / "tiny" / "rlkd_grpo.yaml"), "--dry-run",
                       "--set", f"{field}={'a' * 5000}"])
        assert status == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "a" * 200 not in err  # one short line, the value shortened
        assert [line for line in err.splitlines() if "error" in line]

    def test_ctrl_c_gives_one_line_and_status_130(self, tmp_path):
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_jsonl(inp, traces(8))
        with FaultServer(default=Action("ok", delay=30.0)) as server:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "from rlkd.cli import main; raise SystemExit(main())", "decompose", "--input", str(inp), "--output",
                 str(out), "--base-url", server.base_url, "--model", "gsrm", "--no-cache"],
                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True)
            deadline = time.monotonic() + 60
            while server.count == 0 and time.monotonic() < deadline:  # requests in flight
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert "Traceback" not in err
        assert err.rstrip().splitlines()[-1] == ("rlkd decompose: interrupted (Ctrl-C); what was written so far is "
                                                 "kept; run the same command again to resume")

    def test_third_party_loggers_stay_at_warning_unless_verbose(self, tmp_path, caplog):
        with caplog.at_level(logging.DEBUG), FaultServer(default=yes_judge) as server:
            assert score(server.base_url, tmp_path / "a.jsonl") == 0
            quiet = [r for r in caplog.records if not r.name.startswith("rlkd")]
            caplog.clear()
            assert main(["-v", "score", "--pairs", str(PAIRS), "--judge", "llm", "--base-url", server.base_url,
                         "--model", "judge", "--output", str(tmp_path / "b.jsonl")]) == 0
            loud = [r for r in caplog.records if r.name.startswith("httpx")]
        assert [r for r in quiet if r.levelno < logging.WARNING] == []
        assert len(loud) >= 24  # one INFO line per HTTP request with -v
