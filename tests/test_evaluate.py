"""rlkd eval: the pass@k estimator, benchmark reading, grading of cached generations, an end-to-end run of a
tiny model that is interrupted and resumed, GPQA-style option shuffling, and the compare mode."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

from rlkd.cli import build_parser, main
from rlkd.evaluate import EvalJob, ks_up_to, load_problems, pass_at_k

DATA = Path(__file__).parent / "data"
MATH_FILE = DATA / "eval_math.jsonl"
GPQA_FILE = DATA / "eval_gpqa.jsonl"


def _args(*argv: str) -> EvalJob:
    args = build_parser().parse_args(["eval", *argv])
    return EvalJob(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalJob)})


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# pass@k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


class TestPassAtK:
    @pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (4, 1, 1), (4, 1, 2), (4, 2, 2), (4, 3, 2),
                                         (5, 2, 3), (6, 1, 4), (8, 3, 4), (8, 0, 8), (8, 8, 1), (10, 4, 6),
                                         (12, 5, 7)])
    def test_matches_brute_force(self, n, c, k):
        assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)

    def test_literal_values(self):
        assert pass_at_k(4, 2, 1) == 0.5
        assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
        assert pass_at_k(64, 0, 64) == 0.0
        assert pass_at_k(64, 1, 64) == 1.0

    def test_large_n_is_stable(self):
        # C(10000, 5000) overflows a float; the product form does not
        value = pass_at_k(10_000, 3, 100)
        assert value == pytest.approx(1 - math.comb(9997, 100) / math.comb(10_000, 100), rel=1e-12)
        assert 0 < value < 1

    @pytest.mark.parametrize("n, c, k, message", [(4, 1, 5, "k must be between 1 and n=4"),
                                                  (4, 5, 1, "c must be between 0 and n=4"),
                                                  (4, -1, 1, "c must be between"), (4, 1, 0, "k must be"),
                                                  (0, 0, 1, "n must be at least 1"), (4.0, 1, 1, "integer")])
    def test_bad_arguments(self, n, c, k, message):
        with pytest.raises(ValueError, match=message):
            pass_at_k(n, c, k)

    def test_ks(self):
        assert ks_up_to(1) == [1]
        assert ks_up_to(4) == [1, 2, 4]
        assert ks_up_to(6) == [1, 2, 4, 6]
        assert ks_up_to(64) == [1, 2, 4, 8, 16, 32, 64]


# --------------------------------------------------------------------------------------------------
# Reading benchmarks


class TestLoadProblems:
    def test_math_file(self):
        spec, problems = load_problems(_args("--benchmark", str(MATH_FILE)))
        assert spec.kind == "math" and spec.n == 4
        assert [p.id for p in problems] == ["add", "half", "sqrt", "angle"]
        assert problems[1].gold == r"\frac{1}{2}"
        assert problems[0].prompt.endswith("What is 3 + 4?") and r"\boxed{ANSWER}" in problems[0].prompt

    def test_gpqa_file_shuffled_reproducibly(self):
        spec, problems = load_problems(_args("--benchmark", str(GPQA_FILE)))
        assert spec.kind == "choice"
        assert [p.id for p in problems] == ["q1", "q2", "q3"]
        again = load_problems(_args("--benchmark", str(GPQA_FILE)))[1]
        assert [p.permutation for p in problems] == [p.permutation for p in again]
        for p in problems:
            assert sorted(p.permutation) == [0, 1, 2, 3]
            # the gold letter shows the correct option (original index 0)
            assert p.permutation["ABCD".index(p.gold)] == 0
        q1 = problems[0]
        assert q1.options[q1.permutation.index(0)] == "electron"
        for letter, option in zip("ABCD", q1.options):
            assert f"\n{letter}) {option}" in q1.prompt
        assert "Answer: LETTER" in q1.prompt
        # the order is fixed by the seed: these are the literal permutations for --shuffle-seed 0
        assert [p.permutation for p in problems] == PERMUTATIONS_SEED_0
        other = load_problems(_args("--benchmark", str(GPQA_FILE), "--shuffle-seed", "1"))[1]
        assert [p.permutation for p in other] != PERMUTATIONS_SEED_0

    def test_limit_and_columns(self, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_text('{"q": "1+1?", "a": 2}\n{"q": "2+2?", "a": 4}\n{"q": "3+3?", "a": 6}\n', encoding="utf-8")
        _, problems = load_problems(_args("--benchmark", str(path), "--problem-column", "q",
                                          "--answer-column", "a", "--limit", "2"))
        assert [(p.id, p.gold) for p in problems] == [("0", "2"), ("1", "4")]

    def test_errors_name_the_problem(self, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": ""}\n', encoding="utf-8")
        with pytest.raises(Exception, match=r"qa.jsonl:2: column 'answer'"):
            load_problems(_args("--benchmark", str(path)))
        with pytest.raises(Exception, match="no column 'text'"):
            load_problems(_args("--benchmark", str(path), "--problem-column", "text"))
        with pytest.raises(Exception, match="not a built-in benchmark"):
            load_problems(_args("--benchmark", str(tmp_path / "missing.jsonl")))

    def test_builtin_offline_suggests_a_local_file(self, capsys):
        assert main(["eval", "--model", "unused", "--benchmark", "aime24"]) == 2
        err = capsys.readouterr().err
        assert "HuggingFaceH4/aime_2024" in err and "--data" in err

    def test_builtin_with_local_copy(self, tmp_path):
        path = tmp_path / "aime.jsonl"
        path.write_text('{"id": 60, "problem": "Find x.", "answer": "204", "solution": "..."}\n', encoding="utf-8")
        spec, problems = load_problems(_args("--benchmark", "aime24", "--data", str(path)))
        assert spec.n == 64 and problems[0].id == "60" and problems[0].gold == "204"


PERMUTATIONS_SEED_0 = [[2, 3, 0, 1], [3, 2, 0, 1], [1, 2, 3, 0]]


# --------------------------------------------------------------------------------------------------
# Grading and summary, from cached generations (no model needed)


def _seed_cache(out: Path, benchmark: Path, completions: dict[tuple[str, int], str], *argv: str) -> None:
    """Write generations.jsonl as a previous run would have, so rlkd eval only grades."""
    _, problems = load_problems(_args("--benchmark", str(benchmark), *argv))
    out.mkdir(parents=True, exist_ok=True)
    by_id = {p.id: p for p in problems}
    with open(out / "generations.jsonl", "w", encoding="utf-8") as handle:
        for (pid, s), text in completions.items():
            handle.write(json.dumps({"id": pid, "sample": s, "prompt_hash": by_id[pid].prompt_hash,
                                     "completion": text, "completion_tokens": len(text.split()),
                                     "truncated": False}) + "\n")


def test_grading_and_summary_from_cache(tmp_path, capsys):
    out = tmp_path / "run"
    completions = {
        ("add", 0): r"3 + 4 = \boxed{7}", ("add", 1): "The answer is 7.",
        ("half", 0): r"\boxed{0.5}", ("half", 1): r"\boxed{\dfrac{1}{3}}",
        ("sqrt", 0): r"\boxed{\sqrt{12}}", ("sqrt", 1): "I don't know",
        ("angle", 0): r"\boxed{45^\circ}", ("angle", 1): r"\boxed{90}",
    }
    _seed_cache(out, MATH_FILE, completions)
    # the model is never loaded: every sample is in the cache
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--benchmark", str(MATH_FILE), "--n", "2",
                 "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"] == {"reused": 8, "generated": 0, "failed": 0, "stale": 0}
    assert summary["n"] == 2 and summary["graded_problems"] == 4
    # per problem c = 2, 1, 1, 0 of n = 2
    assert summary["per_problem"] == {"add": {"n": 2, "correct": 2}, "half": {"n": 2, "correct": 1},
                                      "sqrt": {"n": 2, "correct": 1}, "angle": {"n": 2, "correct": 0}}
    assert summary["pass_at_k"]["1"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert summary["pass_at_k"]["2"] == pytest.approx(3 / 4)
    assert summary["no_answer_share"] == pytest.approx(1 / 8)
    samples = _read_jsonl(out / "samples.jsonl")
    assert [(r["id"], r["sample"], r["answer"], r["correct"]) for r in samples[:4]] == [
        ("add", 0, "7", True), ("add", 1, "7", True), ("half", 0, r"\frac{1}{2}", True),
        ("half", 1, r"\frac{1}{3}", False)]  # lighteval grading shows math-verify's normalised LaTeX
    printed = capsys.readouterr().out
    assert "pass@1          0.500  (n=2" in printed and "pass@2          0.750  (n=2)" in printed
    assert (out / "pass_at_k.png").stat().st_size > 1000


def test_changed_settings_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _seed_cache(out, MATH_FILE, {("add", 0): r"\boxed{7}"})
    base = ["eval", "--model", "m", "--benchmark", str(MATH_FILE), "--n", "1", "--limit", "1", "--output", str(out)]
    assert main(base) == 0
    assert main(base + ["--temperature", "1.0"]) == 2
    assert "temperature: 0.6 then, 1.0 now" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# End to end with a tiny model


@pytest.mark.slow
def test_end_to_end_interrupted_and_resumed(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["eval", "--model", str(tiny_model_dir), "--benchmark", str(MATH_FILE), "--n", "2",
              "--max-new-tokens", "16", "--batch-size", "4", "--output", str(out), "--device", "cpu"]
    # an "interrupted" run: only the first two problems
    assert main(common + ["--limit", "2"]) == 0
    first = _read_jsonl(out / "generations.jsonl")
    assert [(r["id"], r["sample"]) for r in first] == [("add", 0), ("add", 1), ("half", 0), ("half", 1)]
    assert json.loads((out / "summary.json").read_text())["generation"]["generated"] == 4

    # a kill mid-write leaves a torn last line: it is cut off and that one sample is generated again
    text = (out / "generations.jsonl").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    (out / "generations.jsonl").write_text("".join(lines[:-1]) + lines[-1][:25], encoding="utf-8")

    assert main(common) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"] == {"reused": 3, "generated": 5, "failed": 0, "stale": 0}
    gens = _read_jsonl(out / "generations.jsonl")
    assert gens[:3] == first[:3]  # what was done is not regenerated
    assert sorted((r["id"], r["sample"]) for r in gens) == sorted(
        (pid, s) for pid in ("add", "half", "sqrt", "angle") for s in (0, 1))

    samples = _read_jsonl(out / "samples.jsonl")
    assert len(samples) == 8
    for r in samples:
        assert set(r) >= {"id", "sample", "completion", "answer", "correct", "completion_tokens"}
        assert 1 <= r["completion_tokens"] <= 16
        assert r["correct"] in (True, False)
    assert summary["n"] == 2 and set(summary["pass_at_k"]) == {"1", "2"}
    assert summary["problems"] == 4 and summary["graded_problems"] == 4
    assert 1 <= summary["mean_completion_tokens"] <= 16
    assert "n=2 samples per problem" in capsys.readouterr().out

    # a third run with nothing left to do generates nothing
    assert main(common) == 0
    assert json.loads((out / "summary.json").read_text())["generation"]["generated"] == 0


@pytest.mark.slow
def test_gpqa_style_end_to_end_and_compare(tiny_model_dir, tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"gpqa_seed{seed}"
        assert main(["eval", "--model", str(tiny_model_dir), "--benchmark", str(GPQA_FILE), "--n", "2",
                     "--max-new-tokens", "12", "--output", str(out), "--seed", str(seed), "--device", "cpu"]) == 0
        runs.append(out)
    problems = _read_jsonl(runs[0] / "problems.jsonl")
    assert [p["permutation"] for p in problems] == PERMUTATIONS_SEED_0  # same shuffle whatever the sampling seed
    assert [p["gold"] for p in problems] == ["ABCD"[perm.index(0)] for perm in PERMUTATIONS_SEED_0]
    samples = _read_jsonl(runs[0] / "samples.jsonl")
    assert len(samples) == 6 and all(r["gold"] in "ABCD" for r in samples)
    assert all(r["answer"] is None or r["answer"] in "ABCD" for r in samples)
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["kind"] == "choice" and summary["n"] == 2 and set(summary["pass_at_k"]) == {"1", "2"}
    capsys.readouterr()

    cmp_dir = tmp_path / "cmp"
    assert main(["eval", "--compare", *map(str, runs), "--output", str(cmp_dir)]) == 0
    table = capsys.readouterr().out
    assert "| run | benchmark | model | problems | n | pass@1 | pass@2 | mean tokens |" in table
    assert "| gpqa_seed0 | eval_gpqa |" in table and "| gpqa_seed1 | eval_gpqa |" in table
    assert (cmp_dir / "compare.md").read_text().startswith("| run |")
    assert (cmp_dir / "compare_pass_at_k.png").stat().st_size > 1000


def test_compare_needs_result_folders(tmp_path, capsys):
    assert main(["eval", "--compare", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_vllm_engine_missing_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    assert main(["eval", "--model", "m", "--benchmark", str(MATH_FILE), "--n", "1", "--limit", "1",
                 "--engine", "vllm", "--output", str(tmp_path / "v")]) == 2
    assert "needs vLLM, which is not installed" in capsys.readouterr().err
