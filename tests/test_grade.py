"""``rlkd grade`` on the shipped completion files and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkd.cli import main

DATA = Path(__file__).parent / "data"


def _grade(tmp_path, capsys, name: str, benchmark: str, *extra: str) -> tuple[int, list[dict], str]:
    out = tmp_path / "graded.jsonl"
    rc = main(["grade", "--input", str(DATA / name), "--benchmark", benchmark, "--output", str(out), *extra])
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return rc, rows, printed


class TestShippedFiles:
    def test_math_under_lighteval(self, tmp_path, capsys):
        rc, rows, printed = _grade(tmp_path, capsys, "grade_math.jsonl", "math500")
        assert rc == 0
        assert {r["id"]: r["correct"] for r in rows} == {
            "add": [True, True, False, True],  # "gives 7." and "$7$." read without an anchor
            "half": [True, True, True, False],
            "sqrt": [True, True, True, False],  # "final answer is $..$. I hope" beats an earlier box
            "angle": [True, True, True, True],
        }
        assert rows[0]["extracted"] == ["7", "7", "8", "7"]
        assert rows[0]["completions"][0].startswith("3 + 4 = 7")  # the input line is kept
        assert "n=4 samples per problem" in printed
        assert "pass@1          0.812  (n=4, stderr 0.062)" in printed
        assert "pass@4          1.000  (n=4)" in printed

    def test_math_under_the_reward_rules(self, tmp_path, capsys):
        rc, rows, printed = _grade(tmp_path, capsys, "grade_math.jsonl", "math500", "--grading", "reward")
        assert rc == 0
        assert rows[0]["correct"] == [True, False, False, False]  # no box, tag or phrase: no answer
        assert rows[0]["extracted"] == ["7", None, "8", None]
        assert "grading reward" in printed and "pass@1          0.375" in printed

    def test_gpqa_under_lighteval(self, tmp_path, capsys):
        rc, rows, printed = _grade(tmp_path, capsys, "grade_gpqa.jsonl", "gpqa_diamond")
        assert rc == 0
        assert [r["extracted"] for r in rows] == [["B", "B", "B", "A"], ["D", "D", "A", "C"], ["A", "A", "A", "B"]]
        # "**Answer: (d)**": lighteval reads upper-case letters only, and its last rule takes any one: the A
        # of "Answer"
        assert rows[1]["correct"] == [True, True, False, False]
        assert "pass@1          0.667  (n=4" in printed


class TestInput:
    def _write(self, tmp_path, lines: list[str]) -> Path:
        path = tmp_path / "in.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path

    def test_one_completion_per_line_gives_one_bool(self, tmp_path, capsys):
        path = self._write(tmp_path, [json.dumps({"id": 7, "completion": "so it is \\boxed{4}", "answer": "4"})])
        out = tmp_path / "out.jsonl"
        assert main(["grade", "--input", str(path), "--benchmark", "aime24", "--output", str(out)]) == 0
        row = json.loads(out.read_text())
        assert row["id"] == 7 and row["correct"] is True and row["extracted"] == "4"
        assert "n=1 samples per problem" in capsys.readouterr().out

    @pytest.mark.parametrize("line, message", [
        ('{"completion": "x", "answer": "1"}', "in.jsonl:2: missing field 'id'"),
        ('{"id": "b", "answer": "1"}', "in.jsonl:2: give exactly one of 'completion'"),
        ('{"id": "b", "completions": [], "answer": "1"}', "in.jsonl:2: field 'completions' must be a non-empty list"),
        ('{"id": "b", "completion": "x"}', "in.jsonl:2: field 'answer' (the gold) is missing or empty"),
        ('{"id": "a", "completion": "x", "answer": "1"}', "in.jsonl:2: id 'a' appears twice (first on line 1)"),
        ('{"id": "b", "completion": "x", "answer": "1"', "in.jsonl:2: not valid JSON"),
    ])
    def test_a_bad_line_is_named_and_nothing_is_lost(self, tmp_path, capsys, line, message):
        path = self._write(tmp_path, ['{"id": "a", "completion": "\\\\boxed{1}", "answer": "1"}', line])
        out = tmp_path / "out.jsonl"
        out.write_text("earlier results\n")
        assert main(["grade", "--input", str(path), "--benchmark", "math500", "--output", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert out.read_text() == "earlier results\n"  # the earlier output survives

    def test_a_gpqa_gold_must_be_a_letter(self, tmp_path, capsys):
        path = self._write(tmp_path, ['{"id": "a", "completion": "Answer: B", "answer": "electron"}'])
        assert main(["grade", "--input", str(path), "--benchmark", "gpqa_diamond",
                     "--output", str(tmp_path / "o.jsonl")]) == 2
        assert "in.jsonl:1: field 'answer' must be the correct letter" in capsys.readouterr().err

    def test_the_input_is_never_overwritten(self, tmp_path, capsys):
        path = self._write(tmp_path, ['{"id": "a", "completion": "x", "answer": "1"}'])
        assert main(["grade", "--input", str(path), "--benchmark", "math500", "--output", str(path)]) == 2
        assert "is the input file" in capsys.readouterr().err
