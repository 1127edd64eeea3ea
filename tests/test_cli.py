"""`rlkd parse` and `rlkd score` on the examples shipped in the repository, through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples"
RLKD = [str(Path(sys.executable).with_name("rlkd"))]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(RLKD + list(args), input=stdin, capture_output=True, text=True, timeout=120, cwd=REPO)


class TestParseCommand:
    def test_parses_shipped_student(self):
        p = run("parse", str(EXAMPLES / "student.txt"))
        assert p.returncode == 0, p.stderr
        steps = json.loads(p.stdout)["steps"]
        assert [s["answer"] for s in steps] == ["0.5", "\\frac{1}{4}", "no"]
        assert steps[0]["meta_reasoning"].startswith("The area needs the side length")

    def test_reports_why_there_are_no_steps(self):
        p = run("parse", "-", stdin="just prose")
        assert p.returncode == 1
        assert json.loads(p.stdout)["steps"] == []
        assert "no steps: no step labels found" in p.stderr

    def test_missing_file_is_a_clear_error(self):
        p = run("parse", "nope.txt")
        assert p.returncode == 2 and "nope.txt: no such file" in p.stderr


class TestScoreCommand:
    # Worked out by hand from examples/teacher.txt and examples/student.txt:
    # step 1: same meta, same sub-problem, answer 0.5 vs 1/2 (equal for math, not for text)
    # step 2: same meta, different sub-problem (x0.5), answer \frac{1}{4} vs 1/4 (equal for math only)
    # step 3: different meta-reasoning -> 0
    @pytest.mark.parametrize("judge,reward,scores", [("math", 1.5, [1.0, 0.5, 0.0]),
                                                     ("text", 0.75, [0.5, 0.25, 0.0]),
                                                     ("hybrid", 1.5, [1.0, 0.5, 0.0])])
    def test_shipped_pair(self, judge, reward, scores):
        p = run("score", "--teacher", str(EXAMPLES / "teacher.txt"), "--student", str(EXAMPLES / "student.txt"),
                "--judge", judge)
        assert p.returncode == 0, p.stderr
        result = json.loads(p.stdout)
        assert result["reward"] == reward
        assert [s["score"] for s in result["steps"]] == scores
        assert [s["meta"] for s in result["steps"]] == [True, True, False]
        assert result["matched_prefix"] == 2

    def test_normalized_mode(self):
        p = run("score", "--teacher", str(EXAMPLES / "teacher.txt"), "--student", str(EXAMPLES / "student.txt"),
                "--judge", "math", "--mode", "normalized")
        assert json.loads(p.stdout)["reward"] == 0.5

    def test_pairs_file(self, tmp_path):
        out = tmp_path / "scored.jsonl"
        p = run("score", "--pairs", str(EXAMPLES / "pairs.jsonl"), "--output", str(out), "--judge", "math")
        assert p.returncode == 0, p.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(r["id"], r["reward"]) for r in rows] == [("same", 3.0), ("drifted", 1.5),
                                                          ("first-meta-wrong", 0.0), ("unparsable", 0.0)]
        assert rows[3]["parse_failure"].startswith("student: no step labels found")
        assert rows[2]["steps"][1]["gated"] is True
        assert "scored 4 pairs" in p.stderr

    def test_bad_pairs_line_names_file_and_line(self, tmp_path):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"teacher": "x", "student": "y"}\n{not json}\n')
        p = run("score", "--pairs", str(bad))
        assert p.returncode == 2 and f"{bad}:2: not valid JSON" in p.stderr

    def test_missing_field_names_it(self, tmp_path):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"teacher": "x"}\n')
        p = run("score", "--pairs", str(bad))
        assert p.returncode == 2 and f"{bad}:1: missing field 'student'" in p.stderr

    def test_help_explains_options(self):
        p = run("score", "--help")
        assert p.returncode == 0
        for option in ("--teacher", "--student", "--pairs", "--judge", "--mode", "--lazy", "--overlap-threshold"):
            assert option in p.stdout


class TestOptionsFromDataclasses:
    """Each job option's default, choices and help are written once, on the library's dataclass field."""

    @staticmethod
    def _actions(command: str) -> dict[str, object]:
        from rlkd.cli import build_parser

        sub = next(a for a in build_parser()._actions if isinstance(getattr(a, "choices", None), dict))
        return {a.dest: a for a in sub.choices[command]._actions}

    @pytest.mark.parametrize("command, job, renamed, names", [
        ("decompose", "rlkd.gsrm:DecomposeJob", {}, None),
        ("eval", "rlkd.evaluate:EvalJob", {}, None),
        ("decompose", "rlkd.backends.config:BackendConfig", {"model": "backend_model"}, None),
        # rlkd score's own failure budget (exit status over pairs) is not the training one
        ("score", "rlkd.reward_config:StructureConfig", {"gsrm_max_trace_chars": "max_trace_chars"},
         {"judge", "meta_judge", "subproblem_judge", "answer_judge", "overlap_threshold", "mode", "lazy",
          "judge_batched", "domain", "gsrm_max_tokens", "gsrm_max_trace_chars"}),
    ])
    def test_options_carry_the_fields_default_choices_and_help(self, command, job, renamed, names):
        import dataclasses
        import importlib

        module, name = job.split(":")
        cls = getattr(importlib.import_module(module), name)
        actions = self._actions(command)
        seen = 0
        for f in dataclasses.fields(cls):
            action = actions.get(renamed.get(f.name, f.name))
            if names is not None and f.name not in names:
                continue
            assert action is not None or names is None, f.name
            if action is None or not f.metadata.get("help"):
                continue  # a recipe-only field (a nested backend, the sample log, ...)
            seen += 1
            assert action.help.replace("%%", "%").startswith(f.metadata["help"]), f.name
            if f.default is not dataclasses.MISSING:
                assert action.default == f.default, f.name
            if f.metadata.get("choices"):
                assert tuple(action.choices) == tuple(f.metadata["choices"]), f.name
        assert seen >= 5

    def test_every_decompose_and_eval_field_is_an_option_and_the_defaults_rebuild_the_job(self):
        import dataclasses

        from rlkd.cli import build_parser
        from rlkd.evaluate import EvalJob
        from rlkd.gsrm import DecomposeJob

        assert {f.name for f in dataclasses.fields(DecomposeJob)} <= set(self._actions("decompose"))
        assert {f.name for f in dataclasses.fields(EvalJob)} <= set(self._actions("eval"))
        args = build_parser().parse_args(["decompose", "--input", "in.jsonl", "--output", "out.jsonl",
                                          "--local-model", "m"])
        job = DecomposeJob(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DecomposeJob)})
        assert job == DecomposeJob(input="in.jsonl", output="out.jsonl")

    def test_a_required_field_is_a_required_option(self):
        p = run("decompose", "--output", "out.jsonl", "--local-model", "m")
        assert p.returncode == 2 and "--input" in p.stderr


def test_every_option_of_every_command_has_help():
    """``--help`` explains every option of every command and kind (none left without a line)."""
    import argparse

    from rlkd.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    seen = list(walk(build_parser(), ["rlkd"]))
    assert len({tuple(p) for p, _ in seen}) >= 14 and len(seen) > 120
    unexplained = [(" ".join(p), a.option_strings or a.dest) for p, a in seen if not (a.help or "").strip()]
    assert unexplained == []
