"""Bootstrap intervals, paired differences and verdicts (rlkd.statistics) on literal and synthetic scores."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

import rlkd.statistics
from rlkd.statistics import (comparison, default_ks, paired_difference, ratio_interval, summarize_scores,
                             summarize_values, verdict)


def brute_force_pass_at_k(samples: list[bool], k: int) -> float:
    """Share of the k-subsets of the samples that hold at least one correct one."""
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def simulate(probabilities: np.ndarray, seeds: int, samples: int, rng: np.random.Generator) -> dict:
    """scores[seed][problem] with problem j correct with probability probabilities[j]."""
    return {str(s): {f"p{j}": list(rng.random(samples) < p) for j, p in enumerate(probabilities)}
            for s in range(seeds)}


def test_doctests():
    assert doctest.testmod(rlkd.statistics).failed == 0


class TestSummarizeScores:
    def test_literal_pass_at_k_and_counts(self):
        scores = {"0": {"a": [True, False, False, False], "b": [False, False, False, False]},
                  "1": {"a": [True, True, False, False], "b": [True, True, True, True]}}
        s = summarize_scores(scores, n_boot=300)
        assert (s["n"], s["problems"], s["seeds"], s["seed_names"]) == (4, 2, 2, ["0", "1"])
        assert s["pass_at_1"]["mean"] == pytest.approx((0.25 + 0 + 0.5 + 1) / 4)
        assert [r["k"] for r in s["pass_at_k"]] == [1, 2, 4]
        # pass@2: a/seed0 1 - C(3,2)/C(4,2) = 0.5; b/seed0 0; a/seed1 1 - C(2,2)/C(4,2) = 5/6; b/seed1 1
        assert s["pass_at_k"][1]["mean"] == pytest.approx((0.5 + 0 + 5 / 6 + 1) / 4)
        assert s["pass_at_k"][2]["mean"] == pytest.approx(0.75)
        for r in s["pass_at_k"]:
            assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0
        assert "bootstrap" in s["method"]

    def test_pass_at_k_equals_the_brute_force_estimator(self):
        rng = np.random.default_rng(3)
        for n in (1, 3, 5, 6):
            scores = {"0": {f"p{j}": [bool(x) for x in rng.random(n) < 0.4] for j in range(4)}}
            s = summarize_scores(scores, ks=range(1, n + 1), n_boot=10)
            for r in s["pass_at_k"]:
                expected = np.mean([brute_force_pass_at_k(v, r["k"]) for v in scores["0"].values()])
                assert r["mean"] == pytest.approx(expected), (n, r["k"])

    def test_default_ks_reach_n(self):
        assert default_ks(16) == [1, 2, 4, 8, 16]
        scores = {"0": {"a": [True] + [False] * 15}}
        assert [r["k"] for r in summarize_scores(scores, n_boot=10)["pass_at_k"]] == [1, 2, 4, 8, 16]
        assert summarize_scores(scores, n_boot=10)["pass_at_k"][-1]["mean"] == 1.0

    def test_one_seed_one_problem_has_a_point_interval(self):
        s = summarize_scores({"0": {"a": [True, False]}}, n_boot=50)
        assert s["pass_at_1"] == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5}

    def test_same_rng_seed_same_interval(self):
        scores = simulate(np.full(10, 0.5), 3, 4, np.random.default_rng(0))
        assert summarize_scores(scores, rng_seed=7) == summarize_scores(scores, rng_seed=7)

    def test_wider_level_gives_a_wider_interval(self):
        scores = simulate(np.full(20, 0.5), 3, 4, np.random.default_rng(1))
        narrow = summarize_scores(scores, level=0.5)["pass_at_1"]
        wide = summarize_scores(scores, level=0.99)["pass_at_1"]
        assert wide["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < wide["ci_high"]


class TestInputErrors:
    def test_mismatched_problems_name_the_seed_and_problem(self):
        with pytest.raises(ValueError, match=r"seed 1 has different problems from seed 0; missing b; extra c"):
            summarize_scores({"0": {"a": [True], "b": [False]}, "1": {"a": [True], "c": [False]}})

    def test_unequal_sample_counts_name_the_problem(self):
        with pytest.raises(ValueError, match=r"seed 1 problem b has 3 samples, expected n = 2"):
            summarize_scores({"0": {"a": [True, True], "b": [False, True]},
                              "1": {"a": [True, False], "b": [False, True, True]}})

    def test_empty_and_bad_arguments(self):
        with pytest.raises(ValueError, match="no seeds"):
            summarize_scores({})
        with pytest.raises(ValueError, match="seed 0 has no problems"):
            summarize_scores({"0": {}})
        with pytest.raises(ValueError, match="k = 3 is outside 1..n = 2"):
            summarize_scores({"0": {"a": [True, False]}}, ks=[1, 3])
        with pytest.raises(ValueError, match="level"):
            summarize_scores({"0": {"a": [True]}}, level=95)
        with pytest.raises(ValueError, match="n_boot"):
            summarize_scores({"0": {"a": [True]}}, n_boot=0)

    def test_paired_arms_must_share_problems_and_seeds(self):
        a = {"0": {"a": [True], "b": [False]}}
        with pytest.raises(ValueError, match="different problems; only in A: b; only in B: c"):
            paired_difference(a, {"0": {"a": [True], "c": [False]}})
        with pytest.raises(ValueError, match=r"different seeds \(A: 0; B: 1\)"):
            paired_difference(a, {"1": {"a": [True], "b": [False]}})
        with pytest.raises(ValueError, match="k = 2 is outside"):
            paired_difference(a, a, metric="pass_at_k", k=2)
        with pytest.raises(ValueError, match="metric must be"):
            paired_difference(a, a, metric="accuracy")


class TestPairedDifference:
    def test_literal_difference_and_order_independence(self):
        a = {"0": {"p": [True, True], "q": [True, False]}, "1": {"p": [True, True], "q": [True, True]}}
        b = {"1": {"q": [True, False], "p": [False, True]}, "0": {"q": [False, False], "p": [True, False]}}
        d = paired_difference(a, b, n_boot=500)
        assert d["diff"] == pytest.approx(0.875 - 0.375)
        assert d["n_boot"] == 500 and d["k"] == 1
        k2 = paired_difference(a, b, metric="pass_at_k", k=2, n_boot=50)
        assert k2["diff"] == pytest.approx(1.0 - 0.75) and k2["k"] == 2
        means = paired_difference({"0": {"p": [1.0, 0.0]}}, {"0": {"p": [0.25, 0.25]}}, metric="mean", n_boot=20)
        assert means["diff"] == pytest.approx(0.25)

    def test_a_minus_a_is_exactly_zero(self):
        a = simulate(np.full(10, 0.5), 3, 4, np.random.default_rng(2))
        assert paired_difference(a, a) == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_boot": 2000,
                                           "level": 0.95, "metric": "pass_at_1", "k": 1}

    def test_the_bootstrap_interval_covers_a_known_difference_on_synthetic_data(self):
        """Arms with success probabilities 0.7 and 0.5 plus a shared per-problem difficulty: 40 problems x
        3 seeds x 16 samples. The true pass@1 difference is 0.2 on every problem."""
        rng = np.random.default_rng(0)
        difficulty = rng.uniform(-0.2, 0.2, size=40)
        a = simulate(0.7 + difficulty, 3, 16, rng)
        b = simulate(0.5 + difficulty, 3, 16, rng)
        d = paired_difference(a, b)
        assert d["ci_low"] <= 0.2 <= d["ci_high"]
        assert d["ci_low"] > 0
        assert d["ci_high"] - d["ci_low"] < 0.15
        text = verdict("A", "B", "id", d["diff"], d["ci_low"], d["ci_high"])
        assert text.startswith("A beats B on the id split by +0.")

    def test_equal_arms_give_an_interval_that_includes_zero(self):
        rng = np.random.default_rng(1)
        difficulty = rng.uniform(-0.2, 0.2, size=40)
        a = simulate(0.6 + difficulty, 3, 16, rng)
        b = simulate(0.6 + difficulty, 3, 16, rng)
        d = paired_difference(a, b)
        assert d["ci_low"] < 0 < d["ci_high"]
        assert verdict("A", "B", "ood", d["diff"], d["ci_low"], d["ci_high"]).startswith(
            "no measurable difference between A and B on the ood split")

    def test_coverage_over_repeated_experiments(self):
        """Over 60 simulated experiments (20 problems x 3 seeds x 8 samples, true difference 0.15) the 95%
        interval covers the true difference in at least 85% of them (seed resampling makes it conservative)."""
        rng = np.random.default_rng(5)
        covered = 0
        for _ in range(60):
            difficulty = rng.uniform(-0.25, 0.25, size=20)
            d = paired_difference(simulate(0.6 + difficulty, 3, 8, rng), simulate(0.45 + difficulty, 3, 8, rng),
                                  n_boot=400, rng_seed=int(rng.integers(1 << 30)))
            covered += d["ci_low"] <= 0.15 <= d["ci_high"]
        assert covered >= 51

    def test_summarize_values_is_the_same_bootstrap_for_per_sample_numbers(self):
        values = {"0": {"a": [1.0, 0.0], "b": [1.0, 1.0]}, "1": {"a": [0.0, 0.0], "b": [1.0, 0.0]}}
        s = summarize_values(values, n_boot=300)
        assert s["mean"] == pytest.approx(0.5)
        assert 0.0 <= s["ci_low"] <= 0.5 <= s["ci_high"] <= 1.0
        scores = {seed: {p: [bool(x) for x in v] for p, v in per.items()} for seed, per in values.items()}
        assert summarize_scores(scores, n_boot=300, rng_seed=4)["pass_at_1"] == summarize_values(
            values, n_boot=300, rng_seed=4)


class TestRatioInterval:
    def test_pooled_share_and_its_interval(self):
        # per trace: steps right, steps; pooled, not a mean of per-trace shares (which would be 0.5)
        s = ratio_interval([3, 0], [3, 1], n_boot=500)
        assert s["mean"] == pytest.approx(0.75)
        assert 0.0 <= s["ci_low"] <= 0.75 <= s["ci_high"] <= 1.0
        assert ratio_interval([2, 2], [2, 2], n_boot=100) == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0}

    def test_coverage_over_repeated_experiments(self):
        """60 simulated GSRM checks of 24 traces with 2-3 steps each, steps right with probability 0.7:
        the 95% interval covers 0.7 in at least 85% of them."""
        rng = np.random.default_rng(11)
        covered = 0
        for _ in range(60):
            totals = rng.integers(2, 4, size=24)
            hits = rng.binomial(totals, 0.7)
            s = ratio_interval(hits, totals, n_boot=400, rng_seed=int(rng.integers(1 << 30)))
            covered += s["ci_low"] <= 0.7 <= s["ci_high"]
        assert covered >= 51

    def test_bad_input_is_named(self):
        with pytest.raises(ValueError, match="as many hits as totals"):
            ratio_interval([1], [1, 2])
        with pytest.raises(ValueError, match="sum to 0"):
            ratio_interval([0], [0])


class TestVerdict:
    def test_the_sentence_follows_the_interval(self):
        assert verdict("SFT+RLKD", "SFT+GRPO", "id", 0.123, 0.05, 0.2) == (
            "SFT+RLKD beats SFT+GRPO on the id split by +0.123 pass@1 (95% CI +0.050 to +0.200)")
        assert verdict("SFT+RLKD", "SFT+GRPO", "ood", -0.1, -0.15, -0.02) == (
            "SFT+GRPO beats SFT+RLKD on the ood split by +0.100 pass@1 (95% CI +0.020 to +0.150)")
        assert verdict("A", "B", "id", 0.05, 0.0, 0.1) == (
            "no measurable difference between A and B on the id split: +0.050 pass@1 (95% CI +0.000 to +0.100 "
            "includes 0)")
        assert verdict("A", "B", "id", 0.3, 0.1, 0.5, metric="pass@16", level=0.9).endswith(
            "by +0.300 pass@16 (90% CI +0.100 to +0.500)")
        assert verdict("A", "B", "id", float("nan"), 0.0, 0.0).startswith("no comparison between A and B")

    def test_comparison_entry_carries_the_verdict(self):
        a = {"0": {"p": [True, True], "q": [True, True]}}
        b = {"0": {"p": [False, False], "q": [False, False]}}
        c = comparison(a, b, key_a="sft_rlkd", key_b="sft_grpo", label_a="SFT+RLKD", label_b="SFT+GRPO",
                       split="id", n_boot=50)
        assert {k: c[k] for k in ("a", "b", "split", "metric", "diff", "ci_low", "ci_high")} == {
            "a": "sft_rlkd", "b": "sft_grpo", "split": "id", "metric": "pass_at_1", "diff": 1.0, "ci_low": 1.0,
            "ci_high": 1.0}
        assert c["verdict"] == "SFT+RLKD beats SFT+GRPO on the id split by +1.000 pass@1 (95% CI +1.000 to +1.000)"
        c2 = comparison(a, b, key_a="x", key_b="y", label_a="X", label_b="Y", split="ood", metric="pass_at_k", k=2,
                        n_boot=50)
        assert c2["k"] == 2 and "pass@2" in c2["verdict"]
