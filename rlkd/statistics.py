"""Confidence intervals for the experiment's numbers: pass@k over seeds and problems, paired differences
between arms, and verdict sentences computed from the intervals.

The experiment scores every test problem ``n`` times under every training seed, so one method on one split
is a table ``scores[seed][problem] = [correct, correct, ...]``. From it:

1. :func:`summarize_scores` gives pass@1 and pass@k for k = 1, 2, 4, ..., n (and n itself), each the
   unbiased estimator 1 - C(n-c, k) / C(n, k) (:func:`rlkd.evaluate.pass_at_k`) per problem and seed,
   averaged over problems and seeds, with a 95 % interval.
2. The interval is a **crossed two-level nonparametric bootstrap with percentile intervals**: each
   replicate draws the seeds with replacement and, independently, the problems with replacement, and
   averages the per-(seed, problem) values over the drawn rows and columns. Resampling seeds carries the
   spread that training seeds cause, resampling problems the spread that the choice of test problems
   causes; the ``n`` samples of one problem stay together (their spread is inside the per-problem value).
   With 3 seeds the seed level has only 10 distinct draws, so intervals from few seeds are coarse.
3. :func:`paired_difference` compares two arms (A minus B) with the *same* drawn seeds and problems in
   each replicate for both arms: the arms share the test problems and the seed numbers, so what one
   problem or seed does to both arms cancels out of the difference. The change that RL makes against its
   starting point (``sft_grpo`` against ``sft``, seed by seed) is the same paired comparison.
4. :func:`summarize_values` is the same bootstrap for any per-sample number (the share of well-formatted
   completions, structure alignment), averaged per problem first.
5. :func:`ratio_interval` is a one-level bootstrap over units for a pooled share (e.g. the GSRM's step
   accuracy: matched steps over all steps, traces resampled with replacement).
6. :func:`verdict` turns a difference and its interval into the sentence the report prints: A beats B
   when the interval lies above 0, B beats A when it lies below, and no measurable difference when it
   includes 0. Nothing else decides a verdict.

How this departs from the paper: the paper reports single training runs with no interval; here every
number of the demo carries a bootstrap interval over seeds and problems.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from rlkd.evaluate import pass_at_k

Scores = Mapping[str, Mapping[str, Sequence[bool]]]
Values = Mapping[str, Mapping[str, Sequence[float]]]

METHOD = "crossed two-level bootstrap (seeds and problems resampled with replacement), percentile interval"


# --------------------------------------------------------------------------------------------------
# Input checks


def _table(data: Mapping[str, Mapping[str, Sequence[Any]]], what: str
           ) -> tuple[list[str], list[str], list[list[list[Any]]], int]:
    """Seeds, problems (in the first seed's order), ``rows[seed][problem]`` samples and n; ValueError
    naming the seed and problem when seeds disagree on the problems or the number of samples."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{what}: no seeds (expected {{seed: {{problem_id: [sample, ...]}}}})")
    seeds = [str(s) for s in data]
    first_seed = next(iter(data))
    problems = [str(p) for p in data[first_seed]]
    if not problems:
        raise ValueError(f"{what}: seed {first_seed!s} has no problems")
    expected = set(problems)
    n: int | None = None
    rows: list[list[list[Any]]] = []
    for seed, per_problem in data.items():
        if not isinstance(per_problem, Mapping):
            raise ValueError(f"{what}: seed {seed!s}: expected {{problem_id: [sample, ...]}}, "
                             f"got {type(per_problem).__name__}")
        got = {str(p) for p in per_problem}
        if got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            raise ValueError(f"{what}: seed {seed!s} has different problems from seed {first_seed!s}"
                             + (f"; missing {', '.join(missing[:5])}" if missing else "")
                             + (f"; extra {', '.join(extra[:5])}" if extra else ""))
        by_id = {str(p): v for p, v in per_problem.items()}
        row = []
        for problem in problems:
            samples = list(by_id[problem])
            if n is None:
                n = len(samples)
                if n < 1:
                    raise ValueError(f"{what}: seed {seed!s} problem {problem}: no samples")
            elif len(samples) != n:
                raise ValueError(f"{what}: seed {seed!s} problem {problem} has {len(samples)} samples, "
                                 f"expected n = {n} as elsewhere")
            row.append(samples)
        rows.append(row)
    assert n is not None
    return seeds, problems, rows, n


def _check(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself.

    >>> default_ks(16), default_ks(12), default_ks(1)
    ([1, 2, 4, 8, 16], [1, 2, 4, 8, 12], [1])
    """
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def _pass_matrix(rows: Sequence[Sequence[Sequence[Any]]], n: int, k: int) -> np.ndarray:
    """pass@k per (seed, problem) by the unbiased estimator."""
    return np.array([[pass_at_k(n, sum(bool(x) for x in samples), k) for samples in row] for row in rows])


def _mean_matrix(rows: Sequence[Sequence[Sequence[Any]]], what: str) -> np.ndarray:
    try:
        return np.array([[float(np.mean([float(x) for x in samples])) for samples in row] for row in rows])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: samples must be numbers ({exc})") from None


# --------------------------------------------------------------------------------------------------
# The bootstrap


def _weights(shape: tuple[int, int], n_boot: int, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each seed and each problem is drawn in each replicate: ``(n_boot, seeds)`` and
    ``(n_boot, problems)`` multinomial counts (drawing with replacement, as many as there are)."""
    rng = np.random.default_rng(rng_seed)
    seeds, problems = shape
    w_seeds = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=n_boot)
    w_problems = rng.multinomial(problems, np.full(problems, 1.0 / problems), size=n_boot)
    return w_seeds, w_problems


def _replicates(matrix: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The mean over drawn seeds and drawn problems, one value per replicate."""
    w_seeds, w_problems = weights
    seeds, problems = matrix.shape
    return np.einsum("bs,sp,bp->b", w_seeds, matrix, w_problems) / (seeds * problems)


def _interval(matrix: np.ndarray, replicates: np.ndarray, level: float) -> dict[str, float]:
    return _percentile_interval(float(matrix.mean()), replicates, level)


def _percentile_interval(mean: float, replicates: np.ndarray, level: float) -> dict[str, float]:
    """``{mean, ci_low, ci_high}``: the estimate and the replicates' central ``level`` percentiles."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high)}


def summarize_scores(scores: Scores, ks: Sequence[int] | None = None, n_boot: int = 2000, level: float = 0.95,
                     rng_seed: int = 0) -> dict[str, Any]:
    """pass@1 and pass@k of one method on one split with bootstrap intervals (see the module docstring).

    ``scores[seed][problem_id]`` is the list of the ``n`` sampled completions' correctness; every seed
    must have the same problems and every problem ``n`` samples (ValueError naming what differs).
    ``ks`` defaults to 1, 2, 4, ..., n (and n). Returns ``pass_at_1`` as ``{mean, ci_low, ci_high}``,
    ``pass_at_k`` as a list of ``{k, mean, ci_low, ci_high}``, and ``n``, ``problems``, ``seeds`` (counts),
    ``seed_names``, ``level``, ``n_boot``, ``method``.

    >>> s = summarize_scores({"0": {"a": [True, False], "b": [False, False]},
    ...                       "1": {"a": [True, True], "b": [True, False]}}, n_boot=200)
    >>> s["pass_at_1"]["mean"], [(r["k"], r["mean"]) for r in s["pass_at_k"]], s["n"], s["problems"], s["seeds"]
    (0.5, [(1, 0.5), (2, 0.75)], 2, 2, 2)
    >>> 0.0 <= s["pass_at_1"]["ci_low"] <= 0.5 <= s["pass_at_1"]["ci_high"] <= 1.0
    True
    """
    _check(n_boot, level)
    seeds, problems, rows, n = _table(scores, "scores")
    ks = default_ks(n) if ks is None else sorted({int(k) for k in ks})
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"ks: k = {k} is outside 1..n = {n}")
    weights = _weights((len(seeds), len(problems)), n_boot, rng_seed)
    curve = []
    for k in sorted(set(ks) | {1}):
        matrix = _pass_matrix(rows, n, k)
        curve.append({"k": k, **_interval(matrix, _replicates(matrix, weights), level)})
    first = next(c for c in curve if c["k"] == 1)
    return {"pass_at_1": {key: first[key] for key in ("mean", "ci_low", "ci_high")},
            "pass_at_k": [c for c in curve if c["k"] in ks],
            "n": n, "problems": len(problems), "seeds": len(seeds), "seed_names": seeds,
            "level": level, "n_boot": n_boot, "method": METHOD}


def summarize_values(values: Values, n_boot: int = 2000, level: float = 0.95, rng_seed: int = 0) -> dict[str, float]:
    """Mean of a per-sample number (e.g. 1.0 for a well-formatted completion) with the same bootstrap
    interval: ``values[seed][problem_id]`` lists one number per sample, averaged per problem first.

    >>> summarize_values({"0": {"a": [1.0, 0.0], "b": [1.0, 1.0]}}, n_boot=100)["mean"]
    0.75
    """
    _check(n_boot, level)
    seeds, problems, rows, _ = _table(values, "values")
    matrix = _mean_matrix(rows, "values")
    return _interval(matrix, _replicates(matrix, _weights(matrix.shape, n_boot, rng_seed)), level)


def ratio_interval(hits: Sequence[float], totals: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                   rng_seed: int = 0) -> dict[str, float]:
    """A pooled share ``sum(hits) / sum(totals)`` over units (e.g. per trace: steps right, steps) with a
    percentile interval from resampling the units with replacement. A replicate with no total is dropped.

    >>> ratio_interval([2, 0, 3], [2, 2, 4], n_boot=200)["mean"]
    0.625
    """
    _check(n_boot, level)
    if len(hits) != len(totals) or not len(hits):
        raise ValueError(f"ratio_interval: need as many hits as totals, at least one (got {len(hits)} and {len(totals)})")
    h, t = np.asarray(hits, dtype=float), np.asarray(totals, dtype=float)
    if t.sum() <= 0:
        raise ValueError("ratio_interval: the totals sum to 0")
    rng = np.random.default_rng(rng_seed)
    weights = rng.multinomial(len(h), np.full(len(h), 1.0 / len(h)), size=n_boot)
    num, den = weights @ h, weights @ t
    return _percentile_interval(float(h.sum() / t.sum()), num[den > 0] / den[den > 0], level)


def paired_difference(a: Scores | Values, b: Scores | Values, metric: str = "pass_at_1", k: int = 1,
                      n_boot: int = 2000, level: float = 0.95, rng_seed: int = 0) -> dict[str, Any]:
    """Arm A minus arm B with a paired bootstrap interval: every replicate draws one set of seeds and
    problems and averages both arms over it. The arms must have the same seeds and problems.

    ``metric``: ``pass_at_1``, ``pass_at_k`` (with ``k``; both arms need n >= k) or ``mean`` (the mean of
    per-sample numbers, as :func:`summarize_values`). Returns ``{diff, ci_low, ci_high, n_boot, level,
    metric, k}``.

    >>> a = {"0": {"p": [True, True], "q": [True, False]}, "1": {"p": [True, True], "q": [True, True]}}
    >>> b = {"0": {"p": [True, False], "q": [False, False]}, "1": {"p": [False, True], "q": [True, False]}}
    >>> d = paired_difference(a, b, n_boot=500)
    >>> d["diff"], d["ci_low"] > 0
    (0.5, True)
    """
    _check(n_boot, level)
    if metric not in ("pass_at_1", "pass_at_k", "mean"):
        raise ValueError(f"metric must be pass_at_1, pass_at_k or mean, got {metric!r}")
    seeds_a, problems_a, rows_a, n_a = _table(a, "arm A")
    seeds_b, problems_b, rows_b, n_b = _table(b, "arm B")
    if set(seeds_a) != set(seeds_b):
        raise ValueError(f"paired_difference: the arms have different seeds (A: {', '.join(seeds_a)}; "
                         f"B: {', '.join(seeds_b)})")
    if set(problems_a) != set(problems_b):
        only_a, only_b = sorted(set(problems_a) - set(problems_b)), sorted(set(problems_b) - set(problems_a))
        raise ValueError("paired_difference: the arms have different problems"
                         + (f"; only in A: {', '.join(only_a[:5])}" if only_a else "")
                         + (f"; only in B: {', '.join(only_b[:5])}" if only_b else ""))
    # B's rows in A's seed and problem order
    order_seed = [seeds_b.index(s) for s in seeds_a]
    order_problem = {p: i for i, p in enumerate(problems_b)}
    rows_b = [[rows_b[i][order_problem[p]] for p in problems_a] for i in order_seed]
    if metric == "mean":
        k_used = None
        matrix = _mean_matrix(rows_a, "arm A") - _mean_matrix(rows_b, "arm B")
    else:
        k_used = 1 if metric == "pass_at_1" else int(k)
        if not 1 <= k_used <= min(n_a, n_b):
            raise ValueError(f"paired_difference: k = {k_used} is outside 1..n (n = {n_a} for A, {n_b} for B)")
        matrix = _pass_matrix(rows_a, n_a, k_used) - _pass_matrix(rows_b, n_b, k_used)
    interval = _interval(matrix, _replicates(matrix, _weights(matrix.shape, n_boot, rng_seed)), level)
    return {"diff": interval["mean"], "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
            "n_boot": n_boot, "level": level, "metric": metric, "k": k_used}


# --------------------------------------------------------------------------------------------------
# Verdicts


def verdict(label_a: str, label_b: str, split: str, diff: float, ci_low: float, ci_high: float,
            metric: str = "pass@1", level: float = 0.95) -> str:
    """The sentence for a difference A minus B and its interval: who beats whom only when the interval
    excludes 0 (the margin and interval are then given as the winner's lead).

    >>> verdict("SFT+RLKD", "SFT+GRPO", "id", 0.123, 0.05, 0.2)
    'SFT+RLKD beats SFT+GRPO on the id split by +0.123 pass@1 (95% CI +0.050 to +0.200)'
    >>> verdict("SFT+RLKD", "SFT+GRPO", "ood", -0.1, -0.15, -0.02)
    'SFT+GRPO beats SFT+RLKD on the ood split by +0.100 pass@1 (95% CI +0.020 to +0.150)'
    >>> verdict("A", "B", "id", 0.01, -0.03, 0.05)
    'no measurable difference between A and B on the id split: +0.010 pass@1 (95% CI -0.030 to +0.050 includes 0)'
    """
    pct = f"{100 * level:g}%"
    if any(not isinstance(x, (int, float)) or math.isnan(x) for x in (diff, ci_low, ci_high)):
        return f"no comparison between {label_a} and {label_b} on the {split} split (no numbers)"
    if ci_low > 0:
        return (f"{label_a} beats {label_b} on the {split} split by {diff:+.3f} {metric} "
                f"({pct} CI {ci_low:+.3f} to {ci_high:+.3f})")
    if ci_high < 0:
        return (f"{label_b} beats {label_a} on the {split} split by {-diff:+.3f} {metric} "
                f"({pct} CI {-ci_high:+.3f} to {-ci_low:+.3f})")
    return (f"no measurable difference between {label_a} and {label_b} on the {split} split: {diff:+.3f} {metric} "
            f"({pct} CI {ci_low:+.3f} to {ci_high:+.3f} includes 0)")


def comparison(a: Scores | Values, b: Scores | Values, *, key_a: str, key_b: str, label_a: str, label_b: str,
               split: str, metric: str = "pass_at_1", k: int = 1, n_boot: int = 2000, level: float = 0.95,
               rng_seed: int = 0) -> dict[str, Any]:
    """One entry of ``results["comparisons"]``: ``{a, b, split, metric, diff, ci_low, ci_high, verdict}``
    (plus ``k``, ``n_boot``, ``level``), the paired difference A minus B and its verdict sentence."""
    d = paired_difference(a, b, metric=metric, k=k, n_boot=n_boot, level=level, rng_seed=rng_seed)
    shown = {"pass_at_1": "pass@1", "pass_at_k": f"pass@{d['k']}", "mean": "mean"}[metric]
    return {"a": key_a, "b": key_b, "split": split, "metric": metric,
            "k": d["k"], "diff": d["diff"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n_boot": n_boot,
            "level": level,
            "verdict": verdict(label_a, label_b, split, d["diff"], d["ci_low"], d["ci_high"], metric=shown,
                               level=level)}
