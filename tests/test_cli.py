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
