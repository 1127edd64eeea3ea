"""Grading and summaries of an evaluation: pass@k with the unbiased estimator, the printed table, the
pass@k plot, and ``rlkd eval --compare`` of finished runs.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from rlkd.answers import grade_all
from rlkd.errors import InputError
from rlkd.evaluate.problems import Problem

log = logging.getLogger("rlkd.evaluate")

# --------------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k).

    Computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which stays exact in floating point for any
    n (no huge binomials).

    >>> pass_at_k(4, 2, 1), round(pass_at_k(4, 2, 2), 6), pass_at_k(4, 0, 3), pass_at_k(4, 2, 3)
    (0.5, 0.833333, 0.0, 1.0)
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be at least 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be between 0 and n={n}, got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be between 1 and n={n}, got k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to ``n``, and ``n`` itself: the k at which pass@k is reported."""
    ks = [1 << e for e in range(max(n, 1).bit_length()) if 1 << e <= n]
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks



# --------------------------------------------------------------------------------------------------
# Grading and summaries


def grade_samples(problems: list[Problem], cache: dict[tuple[str, int], dict[str, Any]], n: int,
                  timeout_s: float, protocol: str = "lighteval") -> list[dict[str, Any]]:
    """One graded record per cached (problem, sample) of this run, by :func:`rlkd.answers.grade_all`
    under ``protocol`` (``lighteval``, the default, or ``reward``: see :mod:`rlkd.answers`)."""
    todo = [(p, s, cache[(p.id, s)]) for p in problems for s in range(n)
            if (p.id, s) in cache and cache[(p.id, s)].get("prompt_hash") == p.prompt_hash]
    if not todo:
        return []
    kind = problems[0].kind  # load_problems gives every problem of a run the same kind
    grades = grade_all([(gen["completion"], p.gold) for p, _, gen in todo], kind=kind, protocol=protocol,
                       timeout_s=timeout_s, progress="grading")
    return [{"id": p.id, "sample": s, "gold": p.gold, "answer": g.answer, "correct": g.correct, "reason": g.reason,
             "completion_tokens": gen.get("completion_tokens"), "truncated": gen.get("truncated"),
             "completion": gen["completion"]} for (p, s, gen), g in zip(todo, grades)]


def summarize(problems: list[Problem], records: list[dict[str, Any]]) -> dict[str, Any]:
    """pass@k for k = 1, 2, 4, ... n (and n), pass@1's standard error over problems, mean length.

    Problems whose gold answer cannot be read are left out of every metric and listed. When problems have
    different sample counts (failed generations), n is the smallest and pass@k uses each problem's own.
    """
    by_problem: dict[str, list[dict[str, Any]]] = {p.id: [] for p in problems}
    for r in records:
        by_problem[r["id"]].append(r)
    counts: dict[str, tuple[int, int]] = {}
    ungradable = []
    for pid, rs in by_problem.items():
        if not rs:
            continue
        if any(r["correct"] is None for r in rs):
            ungradable.append(pid)
            continue
        counts[pid] = (len(rs), sum(bool(r["correct"]) for r in rs))
    summary: dict[str, Any] = {"problems": len(problems), "graded_problems": len(counts),
                               "ungradable_problems": ungradable,
                               "missing_problems": [pid for pid, rs in by_problem.items() if not rs]}
    n = min((ni for ni, _ in counts.values()), default=0)
    summary["n"] = n
    summary["samples"] = sum(ni for ni, _ in counts.values())
    if counts:
        pass_k = {}
        for k in ks_up_to(n):
            pass_k[str(k)] = statistics.fmean(pass_at_k(ni, ci, k) for ni, ci in counts.values())
        summary["pass_at_k"] = pass_k
        per_problem = [ci / ni for ni, ci in counts.values()]
        summary["pass_at_1_stderr"] = (statistics.stdev(per_problem) / math.sqrt(len(per_problem))
                                       if len(per_problem) > 1 else None)
    else:
        summary["pass_at_k"] = {}
        summary["pass_at_1_stderr"] = None
    lengths = [r["completion_tokens"] for r in records if isinstance(r.get("completion_tokens"), int)]
    summary["mean_completion_tokens"] = statistics.fmean(lengths) if lengths else None
    summary["truncated_share"] = (statistics.fmean(bool(r.get("truncated")) for r in records) if records else None)
    summary["no_answer_share"] = (statistics.fmean(r["answer"] is None for r in records) if records else None)
    summary["per_problem"] = {pid: {"n": ni, "correct": ci} for pid, (ni, ci) in counts.items()}
    return summary


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def pass_at_k_lines(summary: dict[str, Any], header: bool = True) -> list[str]:
    """The rows ``rlkd eval`` and ``rlkd grade`` print alike: the problems left out, the column header (when
    ``header``), one pass@k row per k with n (and pass@1's standard error) beside it, and the share of
    samples with no answer last."""
    n = summary["n"]
    lines = []
    if summary.get("ungradable_problems"):
        lines.append(f"  left out (gold answer unreadable): {', '.join(summary['ungradable_problems'][:10])}")
    if header:
        lines.append(f"  {'metric':<12} {'value':>8}")
    stderr = summary.get("pass_at_1_stderr")
    for k, value in summary["pass_at_k"].items():
        extra = f"  (n={n}" + (f", stderr {stderr:.3f})" if k == "1" and stderr is not None else ")")
        lines.append(f"  pass@{k:<7} {value:>8.3f}{extra}")
    return lines


def no_answer_line(summary: dict[str, Any]) -> str:
    """The table row of the share of samples with no extractable answer."""
    return f"  {'no answer':<12} {_fmt(summary.get('no_answer_share')):>8}  share with no extractable answer"


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table of one run: pass@k rows with n beside each number, then lengths."""
    lines = [f"{summary['benchmark']} | model {summary['model']} | {summary['graded_problems']} problems graded "
             f"of {summary['problems']} | n={summary['n']} samples per problem", *pass_at_k_lines(summary)]
    lines.append(f"  {'mean length':<12} {_fmt(summary['mean_completion_tokens'], 1):>8}  tokens per completion")
    lines.append(f"  {'truncated':<12} {_fmt(summary['truncated_share']):>8}  share that hit --max-new-tokens")
    lines.append(no_answer_line(summary))
    return "\n".join(lines)


def plot_pass_at_k(runs: Sequence[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    """pass@k against k (log2 axis), one line per run, labelled with n."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, summary in runs:
        points = sorted((int(k), v) for k, v in summary["pass_at_k"].items())
        if points:
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{label} (n={summary['n']})")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for _, summary in runs for k in summary["pass_at_k"]})
    if ticks:
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)



# --------------------------------------------------------------------------------------------------
# rlkd eval --compare


def compare_runs(dirs: Sequence[str], out_dir: Path) -> str:
    """One markdown table and one pass@k plot for several result folders; returns the table."""
    runs: list[tuple[str, dict[str, Any]]] = []
    for d in dirs:
        path = Path(d) / "summary.json"
        if not path.exists():
            raise InputError(f"{d}: no summary.json (not an rlkd eval output folder, or the run has not finished)")
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        runs.append((Path(d).name, summary))
    ks = sorted({int(k) for _, s in runs for k in s.get("pass_at_k", {})})
    header = ["run", "benchmark", "model", "problems", "n"] + [f"pass@{k}" for k in ks] + ["mean tokens"]
    rows = [header, ["---"] * len(header)]
    for label, s in runs:
        pk = s.get("pass_at_k", {})
        rows.append([label, s.get("benchmark", "?"), str(s.get("model", "?")), str(s.get("graded_problems", "?")),
                     str(s.get("n", "?"))] + [_fmt(pk.get(str(k))) for k in ks]
                    + [_fmt(s.get("mean_completion_tokens"), 1)])
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    table += "\n\nEach pass@k is the unbiased estimate from n samples per problem (n in its row; '-' where k > n)."
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(table + "\n", encoding="utf-8")
    benchmarks = sorted({s.get("benchmark", "?") for _, s in runs})
    plot_pass_at_k(runs, out_dir / "compare_pass_at_k.png", f"{', '.join(benchmarks)}: pass@k")
    return table + f"\n\nwritten: {out_dir / 'compare.md'}, {out_dir / 'compare_pass_at_k.png'}"
