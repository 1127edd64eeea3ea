"""The experiment's report: markdown and a self-contained HTML page, with PNG plots, and the console summary.

:func:`write_report` takes the results structure :class:`rlkd.experiment.Experiment` writes to
``results.json`` and produces, in one folder, ``report.md`` (PNG files beside it), ``report.html``
(the same content with the PNGs embedded, so the one file can be sent around) and the PNGs:

- ``accuracy.png``: pass@1 per method and split with its 95 % interval, each seed's value as a dot;
- ``pass_at_k.png``: pass@k against k up to k = n per method, with interval bands, one panel per split;
- ``alignment.png``: structure alignment with the oracle (meta prefix share) per method and split;
- ``first_mismatch.png``: during RL, the step at which a student's decomposition first departs from the
  teacher's meta-reasoning, per RL method;
- ``training.png``: reward components during RL (weighted total, each reward's mean, the structure
  reward's meta-reasoning / sub-problem match rates and the share of zero structure rewards), mean over
  seeds per logged step.

What it reads from the results, and how the report is built:

1. ``methods.<m>.<split>``: :func:`rlkd.statistics.summarize_scores` output (pass@1 and pass@k with
   bootstrap intervals over seeds and problems) plus ``format`` and ``meta_prefix_share`` intervals;
   ``methods.<m>.seeds`` keeps each seed's metrics (the dots in the plots, the per-seed column).
2. ``comparisons``: paired differences with intervals and the verdict sentence that
   :func:`rlkd.statistics.verdict` computed from each interval. The findings are assembled from these
   verdicts and from the targets' numbers; no sentence in the report states a result that was not
   computed.
3. ``diagnostics.<m>``: the RL signal per RL method (share of GRPO groups with zero reward spread against
   the 30 % target for RLKD arms, the structure reward's mean and its share of the weighted total, the
   first-mismatch histogram, the change against the starting point); ``gsrm.step_accuracy`` against the
   90 % target; ``gsrm.heldout`` / ``gsrm.students`` as before.
4. Whatever is missing (a method not run, an older ``results.json`` without intervals) is left out or
   shown as ``n/a``; numbers without an interval fall back to the mean ± standard deviation over seeds.

:func:`console_table` and :func:`comparisons_text` are the summary ``rlkd demo`` prints.

How this departs from the paper: the paper reports single runs on AIME24 / MATH-500 / GPQA; here every
number carries a bootstrap interval over seeds and test problems, every comparison is a paired interval,
and the structure alignment is measured exactly against the testbed's ground truth.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.statistics import METHOD as BOOTSTRAP_METHOD
from rlkd.statistics import verdict

SPLITS = ("id", "ood")
SPLIT_TITLES = {"id": "in-distribution", "ood": "out-of-distribution"}
LABELS = {"sft": "SFT", "sft_grpo": "SFT+GRPO", "sft_rlkd": "SFT+RLKD", "sft_rlkd_oracle": "SFT+RLKD (oracle GSRM)",
          "grpo_zero": "GRPO-zero", "rlkd_zero": "RLKD-zero", "prime": "format-primed base"}
_COLORS = {"sft": "#7f7f7f", "sft_grpo": "#1f77b4", "sft_rlkd": "#d62728", "sft_rlkd_oracle": "#ff7f0e",
           "grpo_zero": "#9467bd", "rlkd_zero": "#2ca02c", "prime": "#bcbd22"}
# Where each RL method starts: its change against this model is "what RL did".
STARTING_POINTS = {"sft_grpo": "sft", "sft_rlkd": "sft", "sft_rlkd_oracle": "sft", "grpo_zero": "prime",
                   "rlkd_zero": "prime"}
RLKD_METHODS = ("sft_rlkd", "sft_rlkd_oracle", "rlkd_zero")
# The comparisons the experiment makes (A, B), each on both splits, and what each one asks.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("sft_rlkd", "sft_grpo", "The paper's question, RLKD against GRPO after SFT"),
    ("sft_rlkd_oracle", "sft_grpo", "RLKD with an exact (oracle) GSRM against GRPO after SFT"),
    ("sft_rlkd", "sft_rlkd_oracle", "What the trained GSRM's errors cost (trained against oracle GSRM)"),
    ("rlkd_zero", "grpo_zero", "From the base, RLKD against GRPO"),
    ("sft_grpo", "sft", "What GRPO adds to SFT"),
    ("sft_rlkd", "sft", "What RLKD adds to SFT"),
    ("rlkd_zero", "sft", "RL only on a fraction of the data against SFT on all of it"),
)
# The issue's learning and signal targets
TARGET_SFT_PASS_AT_1 = 0.6
TARGET_GSRM_STEP_ACCURACY = 0.9
TARGET_ZERO_SPREAD_SHARE = 0.3


# --------------------------------------------------------------------------------------------------
# Numbers


def stat(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for fewer than two values) and the values themselves.

    >>> stat([0.5, 0.25, 0.75])["std"]
    0.25
    """
    values = [float(v) for v in values]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "values": [], "n": 0}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values, "n": len(values)}


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per method and split: pass@1, pass@k (every k and the largest), format and alignment over seeds."""
    out: dict[str, Any] = {"methods": {}, "ks": [], "kmax": 1}
    ks: set[int] = set()
    for method in results.get("methods", {}).values():
        for metrics in method.get("seeds", {}).values():
            for split in metrics.values():
                ks |= {int(k) for k in split.get("pass@k", {})}
    out["ks"] = sorted(ks) or [1]
    out["kmax"] = out["ks"][-1]
    for name, method in results.get("methods", {}).items():
        seeds = method.get("seeds", {})
        splits: dict[str, Any] = {}
        for split in ("id", "ood"):
            rows = [m[split] for m in seeds.values() if split in m]
            if not rows:
                continue
            splits[split] = {
                "label": method.get("label", name),
                "seeds": len(rows),
                "seed_names": [s for s, m in seeds.items() if split in m],
                "n": rows[0].get("n"),
                "problems": rows[0].get("problems"),
                "pass@1": stat([r["pass@1"] for r in rows]),
                "pass@k": {k: stat([r["pass@k"][str(k)] for r in rows if str(k) in r["pass@k"]]) for k in out["ks"]},
                "pass@kmax": stat([r["pass@k"].get(str(out["kmax"]), float("nan")) for r in rows]),
                "format": stat([r["format"] for r in rows]),
                "meta_prefix_share": stat([r["alignment"]["meta_prefix_share"] for r in rows]),
                "meta_match": stat([r["alignment"]["meta_match"] for r in rows]),
                "answer_match": stat([r["alignment"]["answer_match"] for r in rows]),
                "exact": stat([r["alignment"]["exact"] for r in rows]),
                "grounded": stat([r["alignment"]["grounded"] for r in rows if "grounded" in r["alignment"]]),
            }
        out["methods"][name] = splits
    return out


def training_summary(rows_by_seed: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Means over every logged RL step of every seed: rewards, structure components, zero shares."""
    steps = [r for rows in rows_by_seed.values() for r in rows if "reward" in r]
    out: dict[str, Any] = {"logged_steps": len(steps), "seeds": len(rows_by_seed)}
    if not steps:
        return out
    keys = sorted({k for r in steps for k in r if k.startswith(("rewards/", "structure/"))
                   or k in ("reward", "reward_std", "frac_reward_zero_std", "kl", "completions/mean_length")})
    for key in keys:
        values = [float(r[key]) for r in steps if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = sum(values) / len(values)
    structure = [float(r["rewards/structure/mean"]) for r in steps
                 if isinstance(r.get("rewards/structure/mean"), (int, float))]
    if structure:
        out["structure_zero_step_share"] = sum(v == 0 for v in structure) / len(structure)
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(s: Mapping[str, Any], digits: int = 3) -> str:
    return f"{_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)}"


def _seeds(s: Mapping[str, Any], digits: int = 2) -> str:
    return ", ".join(_fmt(v, digits) for v in s["values"])


# --------------------------------------------------------------------------------------------------
# Reading the intervals (and falling back to the seeds' spread where there are none)


def _label(results: Mapping[str, Any], method: str) -> str:
    return ((results.get("methods") or {}).get(method) or {}).get("label") or LABELS.get(method, method)


def _split_summary(results: Mapping[str, Any], method: str, split: str) -> Mapping[str, Any] | None:
    s = ((results.get("methods") or {}).get(method) or {}).get(split)
    return s if isinstance(s, Mapping) and isinstance(s.get("pass_at_1"), Mapping) else None


def interval(results: Mapping[str, Any], method: str, split: str, key: str, k: int | None = None
             ) -> dict[str, float] | None:
    """``{mean, ci_low, ci_high}`` of ``key`` (``pass_at_1``, ``pass_at_k`` with ``k``, ``format``,
    ``meta_prefix_share``) for one method and split; None when the results carry no interval for it."""
    s = _split_summary(results, method, split)
    if s is None:
        return None
    if key == "pass_at_k":
        rows = [r for r in s.get("pass_at_k") or [] if isinstance(r, Mapping) and r.get("k") == k]
        value: Any = rows[0] if rows else None
    else:
        value = s.get(key)
    if not isinstance(value, Mapping) or not all(isinstance(value.get(x), (int, float)) for x in
                                                 ("mean", "ci_low", "ci_high")):
        return None
    return {x: float(value[x]) for x in ("mean", "ci_low", "ci_high")}


def kmax(results: Mapping[str, Any]) -> int:
    """The largest k of any pass@k curve with intervals (else of the seeds' metrics; 1 when there are none)."""
    ks = [int(r["k"]) for m in results.get("methods") or {} for split in SPLITS
          for r in ((_split_summary(results, m, split) or {}).get("pass_at_k") or []) if isinstance(r, Mapping)]
    return max(ks) if ks else summarize(results)["kmax"]


def _ci(iv: Mapping[str, float] | None, digits: int = 3) -> str:
    if iv is None:
        return "n/a"
    return f"{_fmt(iv['mean'], digits)} [{_fmt(iv['ci_low'], digits)}, {_fmt(iv['ci_high'], digits)}]"


def _signed_ci(d: Mapping[str, Any]) -> str:
    return f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


# summarize()'s names for the same numbers (mean ± std over seeds), the fallback
_SEED_KEYS = {"pass_at_1": "pass@1", "pass_at_kmax": "pass@kmax", "format": "format",
              "meta_prefix_share": "meta_prefix_share"}


def _value(results: Mapping[str, Any], summary: Mapping[str, Any], method: str, split: str, key: str,
           k: int) -> tuple[float, float, float, str] | None:
    """(mean, low, high, kind) for a plot or a cell: the bootstrap interval (kind ``ci``) or, without one,
    mean ± std over seeds (kind ``sd``); None when neither exists."""
    iv = interval(results, method, split, "pass_at_k", k) if key == "pass_at_kmax" else interval(
        results, method, split, key)
    if iv is not None:
        return iv["mean"], iv["ci_low"], iv["ci_high"], "ci"
    s = (summary["methods"].get(method) or {}).get(split)
    if not s:
        return None
    st = s[_SEED_KEYS[key]] if key != "pass_at_kmax" else s["pass@k"].get(k) or s["pass@kmax"]
    if not st["n"] or math.isnan(st["mean"]):
        return None
    return st["mean"], st["mean"] - st["std"], st["mean"] + st["std"], "sd"


def _cell(results: Mapping[str, Any], summary: Mapping[str, Any], method: str, split: str, key: str, k: int) -> str:
    v = _value(results, summary, method, split, key, k)
    if v is None:
        return "n/a"
    if v[3] == "ci":
        return f"{_fmt(v[0])} [{_fmt(v[1])}, {_fmt(v[2])}]"
    return f"{_fmt(v[0])} ± {_fmt(v[0] - v[1])} (sd over seeds)"


def _methods(results: Mapping[str, Any]) -> list[str]:
    return list(results.get("methods") or {})


def _seed_count(results: Mapping[str, Any], summary: Mapping[str, Any], method: str, split: str) -> str:
    s = _split_summary(results, method, split)
    if s is not None and "seeds" in s:
        return str(s["seeds"])
    seeds = (summary["methods"].get(method) or {}).get(split)
    return str(seeds["seeds"]) if seeds else "0"


def _comparisons(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The comparisons with numbers, each with its verdict (computed here from the interval when the
    entry has none)."""
    out = []
    for c in results.get("comparisons") or []:
        if not isinstance(c, Mapping) or not all(isinstance(c.get(x), (int, float)) for x in
                                                 ("diff", "ci_low", "ci_high")):
            continue
        c = dict(c)
        metric = str(c.get("metric", "pass_at_1"))
        shown = "pass@1" if metric == "pass_at_1" else f"pass@{c.get('k', 'k')}" if metric == "pass_at_k" else metric
        c["shown_metric"] = shown
        if not c.get("verdict"):
            c["verdict"] = verdict(_label(results, c.get("a", "A")), _label(results, c.get("b", "B")),
                                   c.get("split", "?"), c["diff"], c["ci_low"], c["ci_high"], metric=shown,
                                   level=float(c.get("level", 0.95)))
        out.append(c)
    return out


def _changes(results: Mapping[str, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """RL method -> split -> its change against its starting point (diagnostics, else the comparisons)."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for method, d in (results.get("diagnostics") or {}).items():
        for split, change in ((d or {}).get("change") or {}).items():
            if isinstance(change, Mapping) and isinstance(change.get("diff"), (int, float)):
                out.setdefault(method, {})[split] = change
    for c in _comparisons(results):
        if c.get("a") in STARTING_POINTS and STARTING_POINTS[c["a"]] == c.get("b") and c.get("metric", "pass_at_1") == "pass_at_1":
            out.setdefault(c["a"], {}).setdefault(c.get("split", "?"), c)
    return out


# --------------------------------------------------------------------------------------------------
# The console summary (printed by rlkd demo)


def console_table(results: Mapping[str, Any]) -> str:
    """Per method and split: seeds, pass@1 and pass@kmax with their 95 % intervals, format and meta
    prefix share (means), as an aligned text table."""
    summary = summarize(results)
    k = kmax(results)
    rows = [("method", "split", "seeds", "pass@1 [95% CI]", f"pass@{k} [95% CI]", "format", "meta prefix")]
    for method in _methods(results):
        for split in SPLITS:
            if _split_summary(results, method, split) is None and not (summary["methods"].get(method) or {}).get(split):
                continue
            fmt = _value(results, summary, method, split, "format", k)
            meta = _value(results, summary, method, split, "meta_prefix_share", k)
            rows.append((_label(results, method), split, _seed_count(results, summary, method, split),
                         _cell(results, summary, method, split, "pass_at_1", k),
                         _cell(results, summary, method, split, "pass_at_kmax", k),
                         _fmt(fmt[0]) if fmt else "n/a", _fmt(meta[0]) if meta else "n/a"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 5, 6}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
                               ).rstrip() for r in rows)


def comparisons_text(results: Mapping[str, Any]) -> str:
    """One verdict line per comparison (A minus B, paired 95 % interval), in the experiment's order."""
    lines = [f"- {c['verdict']}" for c in _comparisons(results)]
    return "\n".join(lines) if lines else "no comparisons (fewer than two methods ran with the same seeds)"


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(rows_by_seed: Mapping[str, Sequence[Mapping[str, Any]]], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for rows in rows_by_seed.values():
        for r in rows:
            if isinstance(r.get(key), (int, float)) and "step" in r and "reward" in r:
                by_step.setdefault(int(r["step"]), []).append(float(r[key]))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def plot_training(results: Mapping[str, Any], path: Path) -> Path | None:
    """Reward components during RL, mean over seeds per step; None when nothing was logged."""
    training = results.get("training", {})
    labels = {m: v.get("label", m) for m, v in results.get("methods", {}).items()}
    if not any(rows for seeds in training.values() for rows in seeds.values()):
        return None
    plt = _pyplot()
    panels = [("reward", "weighted total reward"), ("rewards/accuracy/mean", "accuracy"),
              ("rewards/format/mean", "format"), ("rewards/tag_count/mean", "tag_count"),
              ("rewards/structure/mean", "structure reward"),
              ("structure/meta_match", "structure: meta-reasoning match"),
              ("structure/subproblem_match", "structure: sub-problem match"),
              ("structure/zero_share", "structure: share of zero rewards")]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (key, title) in zip(axes.flat, panels):
        drawn = False
        for method, seeds in training.items():
            steps, values = _mean_curve(seeds, key)
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=labels.get(method, method),
                        color=_COLORS.get(method))
                drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888")
        ax.grid(alpha=0.3)
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.suptitle("RL training (mean over seeds)", y=0.99, fontsize=11)
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=max(1, len(names)))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _bar_plot(results: Mapping[str, Any], summary: Mapping[str, Any], key: str, seed_key: str, title: str,
              path: Path, ylabel: str) -> Path:
    """One bar per method and split: the mean with its interval (or ± std), each seed's value as a dot."""
    plt = _pyplot()
    methods = _methods(results)
    k = kmax(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, split in zip(axes, SPLITS):
        xs, labels = [], []
        for i, method in enumerate(methods):
            v = _value(results, summary, method, split, key, k)
            if v is None:
                continue
            mean, low, high, _ = v
            ax.bar(i, mean, yerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], capsize=4,
                   color=_COLORS.get(method, "#999"), alpha=0.75)
            seeds = (summary["methods"].get(method) or {}).get(split)
            if seeds:
                ax.scatter([i + 0.2] * len(seeds[seed_key]["values"]), seeds[seed_key]["values"], color="black",
                           s=12, zorder=3)  # beside the interval's bar, not over it
            xs.append(i)
            labels.append(_label(results, method))
        ax.set_xticks(xs, labels, rotation=20, fontsize=8)
        ax.set_title(f"{SPLIT_TITLES[split]} ({split})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_pass_at_k(results: Mapping[str, Any], path: Path) -> Path:
    """pass@k against k (log scale) per method, one panel per split; bands: the 95 % intervals (or ± std
    over seeds for results without intervals)."""
    plt = _pyplot()
    summary = summarize(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    all_ks: set[int] = set()
    for ax, split in zip(axes, SPLITS):
        for method in _methods(results):
            s = _split_summary(results, method, split)
            if s is not None and s.get("pass_at_k"):
                rows = sorted((r for r in s["pass_at_k"] if isinstance(r, Mapping)), key=lambda r: r["k"])
                ks = [int(r["k"]) for r in rows]
                means, lows, highs = ([float(r[x]) for r in rows] for x in ("mean", "ci_low", "ci_high"))
            else:
                seeds = (summary["methods"].get(method) or {}).get(split)
                if not seeds:
                    continue
                ks = [k for k in summary["ks"] if seeds["pass@k"][k]["n"]]
                means = [seeds["pass@k"][k]["mean"] for k in ks]
                lows = [seeds["pass@k"][k]["mean"] - seeds["pass@k"][k]["std"] for k in ks]
                highs = [seeds["pass@k"][k]["mean"] + seeds["pass@k"][k]["std"] for k in ks]
            if not ks:
                continue
            all_ks |= set(ks)
            color = _COLORS.get(method)
            ax.plot(ks, means, marker="o", markersize=3, label=_label(results, method), color=color)
            ax.fill_between(ks, lows, highs, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_title(f"{SPLIT_TITLES[split]} ({split})", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes:
        if all_ks:
            ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    axes[0].set_ylabel("pass@k")
    axes[0].legend(fontsize=8)
    fig.suptitle("pass@k (bands: 95% bootstrap interval over seeds and problems)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _mismatch_histograms(results: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    out = {}
    for method, d in (results.get("diagnostics") or {}).items():
        hist = (d or {}).get("first_mismatch")
        if isinstance(hist, Mapping) and any(isinstance(v, (int, float)) and v for v in hist.values()):
            out[method] = {str(k): int(v) for k, v in hist.items() if isinstance(v, (int, float))}
    return out


def _mismatch_bins(histograms: Mapping[str, Mapping[str, int]]) -> list[str]:
    steps = sorted({int(k) for h in histograms.values() for k in h if k.isdigit()})
    return [str(s) for s in range(1, (max(steps) if steps else 0) + 1)] + ["none"]


def plot_first_mismatch(results: Mapping[str, Any], path: Path) -> Path | None:
    """Share of scored RL completions whose decomposition first departs from the teacher's meta-reasoning
    at step 1, 2, ... (``none``: a full match), per RL method; None when nothing was recorded."""
    histograms = _mismatch_histograms(results)
    if not histograms:
        return None
    plt = _pyplot()
    bins = _mismatch_bins(histograms)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(bins) * len(histograms) + 3), 3.8))
    width = 0.8 / len(histograms)
    for i, (method, hist) in enumerate(histograms.items()):
        total = sum(hist.values())
        ax.bar([j + (i - (len(histograms) - 1) / 2) * width for j in range(len(bins))],
               [hist.get(b, 0) / total for b in bins], width=width, label=_label(results, method),
               color=_COLORS.get(method, "#999"), alpha=0.8)
    ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("step of the first meta-reasoning mismatch (none: all steps match)")
    ax.set_ylabel("share of completions")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("where students' decompositions first depart from the teacher's during RL", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# The document: one list of blocks rendered to markdown and to HTML


class Doc:
    """A tiny document model so that the markdown and the HTML carry exactly the same content."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(headers), [[str(c) for c in r] for r in rows])))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "p":
                out.append(value)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                headers, rows = value
                lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif kind == "img":
                out.append(f"![{value[1]}]({value[0].name})")
            elif kind == "pre":
                out.append("```\n" + value + "\n```")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{_inline(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                headers, rows = value
                head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
                cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(Path(value[0]).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(value[1])}</figcaption></figure>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(value)}</pre>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
                 "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
                 "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow-x:auto;"
                 "white-space:pre-wrap}code{background:#f3f3f3;padding:0 3px}figcaption{color:#666;font-size:13px}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` and **bold** markdown spans into tags."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


# --------------------------------------------------------------------------------------------------
# Findings: assembled from the computed verdicts and the targets' numbers


def findings(results: Mapping[str, Any]) -> list[str]:
    """The findings, one bullet per question: a fixed lead-in naming the question, then the verdict
    sentences computed from the intervals (nothing here decides a result by itself)."""
    comparisons = _comparisons(results)
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in comparisons:
        if c.get("metric", "pass_at_1") == "pass_at_1":
            by_pair.setdefault((c.get("a"), c.get("b")), []).append(c)
    out = []
    known = set()
    for a, b, question in COMPARISONS:
        known.add((a, b))
        rows = sorted(by_pair.get((a, b), []), key=lambda c: SPLITS.index(c.get("split")) if c.get("split") in SPLITS else 9)
        if rows:
            text = f"{question}: " + "; ".join(c["verdict"] for c in rows) + "."
            out.append(f"**{text}**" if (a, b) == ("sft_rlkd", "sft_grpo") else text)
    for c in comparisons:
        if (c.get("a"), c.get("b")) not in known or c.get("metric", "pass_at_1") != "pass_at_1":
            out.append(f"{c['verdict']}.")
    changes = _changes(results)
    described = {(a, b) for a, b, _ in COMPARISONS if by_pair.get((a, b))}
    for method, splits in changes.items():
        if (method, STARTING_POINTS.get(method)) in described:
            continue  # already stated above
        start = _label(results, STARTING_POINTS.get(method, "start"))
        text = "; ".join(
            change.get("verdict") or verdict(_label(results, method), start, split, change["diff"], change["ci_low"],
                                             change["ci_high"])
            for split, change in splits.items())
        out.append(f"What RL changed against its starting point ({_label(results, method)} against {start}): "
                   f"{text}.")
    return out + targets(results)


def targets(results: Mapping[str, Any]) -> list[str]:
    """The issue's targets, each with the measured number and whether it was met."""
    out = []
    sft = interval(results, "sft", "id", "pass_at_1")
    if sft is not None:
        ood = interval(results, "sft", "ood", "pass_at_1")
        out.append(f"Target SFT pass@1 ≥ {TARGET_SFT_PASS_AT_1:.2f} in distribution: measured {_ci(sft)} (mean "
                   f"over seeds, 95% CI), {'met' if sft['mean'] >= TARGET_SFT_PASS_AT_1 else 'not met'}"
                   + (f"; out of distribution {_ci(ood)}" if ood else "") + ".")
    accuracy = (results.get("gsrm") or {}).get("step_accuracy") or {}
    if isinstance(accuracy.get("id"), (int, float)):
        out.append(f"Target GSRM step accuracy ≥ {TARGET_GSRM_STEP_ACCURACY:.2f} in distribution (same quantity "
                   f"and answer as the rule decomposer): measured {accuracy['id']:.3f}, "
                   f"{'met' if accuracy['id'] >= TARGET_GSRM_STEP_ACCURACY else 'not met'}"
                   + (f"; out of distribution {accuracy['ood']:.3f}" if isinstance(accuracy.get("ood"), (int, float))
                      else "") + ".")
    shares = [(m, d["zero_spread_share"]) for m, d in (results.get("diagnostics") or {}).items()
              if m in RLKD_METHODS and isinstance((d or {}).get("zero_spread_share"), (int, float))]
    if shares:
        out.append(f"Target share of GRPO groups with zero reward spread ≤ {TARGET_ZERO_SPREAD_SHARE:.2f} for the "
                   "RLKD arms: " + ", ".join(f"{_label(results, m)} {v:.3f} "
                                        f"({'met' if v <= TARGET_ZERO_SPREAD_SHARE else 'not met'})"
                                        for m, v in shares) + ".")
    return out


def _diagnostics_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    diagnostics = results.get("diagnostics") or {}
    if not diagnostics:
        return None
    changes = _changes(results)
    rows = []
    for method, d in diagnostics.items():
        d = d or {}
        share = d.get("zero_spread_share")
        if isinstance(share, (int, float)) and method in RLKD_METHODS:
            spread = (f"{share:.3f} (target ≤ {TARGET_ZERO_SPREAD_SHARE:.2f}: "
                      f"{'met' if share <= TARGET_ZERO_SPREAD_SHARE else 'not met'})")
        else:
            spread = _fmt(share if isinstance(share, (int, float)) else None)
        change = [(_signed_ci(changes[method][split]) if split in changes.get(method, {}) else "n/a")
                  for split in SPLITS]
        rows.append([_label(results, method), _label(results, STARTING_POINTS.get(method, "?")), spread,
                     _fmt(d.get("structure_mean")), _fmt(d.get("structure_share")), *change])
    headers = ["method", "starts from", "zero-spread groups", "structure reward mean",
               "structure share of total", "pass@1 change id [95% CI]", "pass@1 change ood [95% CI]"]
    return headers, rows


def _interpretation(results: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    """Plain statements that follow from the numbers (each one names the numbers it rests on)."""
    notes = []
    best = max(((s["id"]["pass@1"]["mean"], s["id"]["label"]) for s in summary["methods"].values() if "id" in s),
               default=None)
    if best is not None and best[0] < 0.1:
        grounded = [s["id"]["grounded"]["mean"] for s in summary["methods"].values()
                    if "id" in s and s["id"]["grounded"]["n"]]
        text = (f"No method learned the task: the best in-distribution pass@1 is {best[0]:.3f} ({best[1]}), so "
                "differences between methods at this scale are differences of near-zero rates")
        if grounded:
            text += (f"; the students' steps name a quantity of their own problem in at most {max(grounded):.2f} of "
                     "cases, i.e. they write the teacher's kind of sentences without copying the problem's names "
                     "and numbers into them")
        notes.append(text + ".")
    g = (((results.get("gsrm") or {}).get("heldout") or {}).get("id") or {}).get("gsrm")
    if g and g.get("meta_match", 1.0) < 0.5:
        notes.append(f"The trained GSRM picks the right quantity in only {g['meta_match']:.2f} of the steps of "
                     "held-out teacher traces, so the structure reward compares the teacher's steps with a mostly wrong "
                     "reading of the student's trace: its sub-problem and answer verdicts carry little information, "
                     "and its meta-reasoning verdicts (token overlap) mostly reward the template wording.")
    return notes


def _diagnostics(results: Mapping[str, Any]) -> list[str]:
    """What the run recorded about why the structure reward did (not) help."""
    notes = []
    gsrm = (results.get("gsrm") or {}).get("heldout") or {}
    for split in ("id", "ood"):
        g = (gsrm.get(split) or {}).get("gsrm")
        if g:
            notes.append(
                f"GSRM on {g.get('traces', '?')} held-out teacher traces ({split}): same chosen quantity at "
                f"{_fmt(g['meta_match'])} of the oracle's steps, same quantity and answer at "
                f"{_fmt(g['answer_match'])}, whole step sequence exact on {_fmt(g['exact'])} of traces, "
                f"meta-reasoning text word for word at {_fmt(g.get('meta_text_exact'))}, quantities that occur in "
                f"the trace at all at {_fmt(g.get('grounded'))}, no steps at all on "
                f"{_fmt(g.get('no_steps'))} (the rule decomposer: exact on "
                f"{_fmt((gsrm[split].get('rule') or {}).get('exact'))}).")
    students = (results.get("gsrm") or {}).get("students")
    if students:
        notes.append(
            f"GSRM on {students.get('traces', '?')} student completions ({students.get('source', '')}), against the "
            f"rule decomposer of the same text: same chosen quantity at {_fmt(students['meta_match'])} of steps, "
            f"exact on {_fmt(students['exact'])}, no steps on {_fmt(students.get('no_steps'))}. This is what the "
            "structure reward sees during RL.")
    summary = summarize(results)
    grounded = [f"{splits['id']['label']} {_fmt(splits['id']['grounded']['mean'], 2)}"
                for splits in summary["methods"].values() if "id" in splits and splits["id"]["grounded"]["n"]]
    if grounded:
        notes.append("Share of the quantities a student computes (rule-decomposed, in-distribution) that the "
                     "problem defines at all, i.e. whether it copies names from its input: " + ", ".join(grounded)
                     + ". The oracle's is 1.")
    weights = {"accuracy": 3.0, "structure": 3.0, "format": 2.0, "tag_count": 2.0}
    for method in RLKD_METHODS:
        seeds = (results.get("training") or {}).get(method)
        if not seeds:
            continue
        t = training_summary(seeds)
        label = _label(results, method)
        if "rewards/structure/mean" not in t:
            notes.append(f"{label}: no structure reward was logged ({t['logged_steps']} logged steps).")
            continue
        scale = ", ".join(f"{name} {weights[name] * t[f'rewards/{name}/mean']:.2f}" for name in weights
                          if f"rewards/{name}/mean" in t)
        notes.append(
            f"{label} ({t['seeds']} seeds, {t['logged_steps']} logged steps): mean structure reward "
            f"{_fmt(t['rewards/structure/mean'])} (unnormalised, at most the teacher's step count, "
            f"{_fmt(t.get('structure/teacher_steps'), 2)} on average); the batch mean "
            f"was zero at {_fmt(t.get('structure_zero_step_share'))} of steps and "
            f"{_fmt(t.get('structure/zero_share'))} of scored completions got 0; meta-reasoning match "
            f"{_fmt(t.get('structure/meta_match'))}, sub-problem match {_fmt(t.get('structure/subproblem_match'))}, "
            f"answer match {_fmt(t.get('structure/answer_match'))}, matched prefix "
            f"{_fmt(t.get('structure/prefix_length'), 2)} steps of {_fmt(t.get('structure/teacher_steps'), 2)}; "
            f"student parse failures {_fmt(t.get('structure/student_parse_failures'), 2)} per call. Weighted reward "
            f"terms (weight × mean): {scale}. Share of groups whose rewards had zero spread (no advantage): "
            f"{_fmt(t.get('frac_reward_zero_std'))}.")
    return notes


# --------------------------------------------------------------------------------------------------
# The report


def _example_table(example: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    teacher, student = example.get("teacher_steps") or [], example.get("student_steps") or []
    rows = []
    for i in range(max(len(teacher), len(student))):
        t = teacher[i] if i < len(teacher) else {}
        s = student[i] if i < len(student) else {}
        rows.append([str(i + 1),
                     t.get("meta_reasoning", ""), f"{t.get('subproblem', '')} {t.get('answer', '')}".strip(),
                     s.get("meta_reasoning", ""), f"{s.get('subproblem', '')} {s.get('answer', '')}".strip()])
    headers = ["step", "teacher meta-reasoning", "teacher sub-problem / answer",
               f"student ({example.get('label', '')}) meta-reasoning", "student sub-problem / answer"]
    return headers, rows


def build_document(results: Mapping[str, Any], out_dir: Path) -> Doc:
    """The report as a :class:`Doc` (plots written into ``out_dir``)."""
    summary = summarize(results)
    methods = _methods(results)
    k = kmax(results)
    doc = Doc()
    config = results.get("config") or {}
    machine = results.get("machine") or {}
    doc.h(1, results.get("title", "RLKD experiment report"))
    wall = results.get("wall_time_s")
    where = f"{machine.get('cpus', '?')} CPUs" + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
    doc.p(f"Run folder `{config.get('output', '?')}`; wall time {_fmt(wall, 0)} s on {where} "
          f"(torch threads {machine.get('torch_threads', '?')}, load average at the end "
          f"{', '.join(f'{x:.1f}' for x in machine.get('load_average', [])) or 'n/a'}). Seeds: "
          f"{', '.join(map(str, config.get('seeds', [])))}. All numbers below are what this run measured. "
          f"[low, high] is a 95% interval by a {BOOTSTRAP_METHOD} over training seeds and test problems; "
          "differences between methods are paired (the same drawn seeds and problems for both).")
    data = results.get("data") or {}
    rl = config.get("rl") or {}
    base = config.get("base") or {}
    base_text = (f"the base student at {base.get('path')} (a Llama of hidden size {base.get('hidden_size')}, "
                 f"{base.get('num_layers')} layers, vocabulary {base.get('vocab_size')}, pretrained once on the "
                 f"testbed's problems and computations)")
    doc.bullets([
        f"Tasks: {data.get('train', '?')} training, {data.get('test_id', '?')} in-distribution test, "
        f"{data.get('test_ood', '?')} out-of-distribution test (deeper, more distractors), "
        f"{data.get('gsrm_train', '?')} for the GSRM; the zero-regime methods train on {data.get('zero', '?')}.",
        f"Every student starts from {config.get('student_model') or base_text}; the GSRM is fine-tuned from "
        f"{config.get('gsrm_model') or 'the same base'}.",
        f"Equal RL budget for every RL method: {rl.get('max_steps')} steps × {rl.get('per_device_train_batch_size')} "
        f"completions ({rl.get('num_generations')} per prompt), completions up to {rl.get('max_completion_length')} "
        f"tokens, learning rate {rl.get('learning_rate')}, beta {rl.get('beta')}, loss {rl.get('loss_type')}.",
        f"Evaluation: n = {(config.get('eval') or {}).get('n')} samples per problem at temperature "
        f"{(config.get('eval') or {}).get('temperature')}; pass@k by the unbiased estimator; structure alignment = "
        "rule-decomposed completion against the oracle's decomposition.",
    ])
    for name, method in (results.get("methods") or {}).items():
        start = STARTING_POINTS.get(name)
        doc.p(f"**{_label(results, name)}**: {method.get('description', '')}"
              + (f" (starts from {_label(results, start)})" if start else "") + ".")

    doc.h(2, "Results")
    for split in SPLITS:
        rows = []
        for method in methods:
            seeds = (summary["methods"].get(method) or {}).get(split)
            if _split_summary(results, method, split) is None and not seeds:
                continue
            s = _split_summary(results, method, split) or {}
            size = f"{s['problems']} × {s['n']}" if "problems" in s and "n" in s else (
                f"{seeds['problems']} × {seeds['n']}" if seeds else "n/a")
            rows.append([_label(results, method), _seed_count(results, summary, method, split), size,
                         _cell(results, summary, method, split, "pass_at_1", k),
                         _seeds(seeds["pass@1"]) if seeds else "n/a",
                         _cell(results, summary, method, split, "pass_at_kmax", k),
                         _cell(results, summary, method, split, "format", k),
                         _cell(results, summary, method, split, "meta_prefix_share", k)])
        if rows:
            doc.h(3, f"{SPLIT_TITLES[split]} ({split})")
            doc.table(["method", "seeds", "problems × samples", "pass@1 [95% CI]", "pass@1 per seed",
                       f"pass@{k} [95% CI]", "format [95% CI]", "meta prefix share [95% CI]"], rows)
    doc.p("pass@1: mean correctness over the n samples. Format: share of completions in the "
          "`<think>…</think><answer>…</answer>` layout. Meta prefix share: leading steps choosing the oracle's "
          "quantity, over the oracle's step count.")

    doc.h(2, "Comparisons")
    comparisons = _comparisons(results)
    if comparisons:
        doc.table(["A", "B", "split", "metric", "A − B [95% CI]", "verdict"],
                  [[_label(results, c.get("a", "?")), _label(results, c.get("b", "?")), c.get("split", "?"),
                    c["shown_metric"], _signed_ci(c), c["verdict"]] for c in comparisons])
    else:
        doc.p("No comparisons with intervals in these results.")

    doc.h(2, "Findings")
    doc.bullets(findings(results) or ["Not enough methods were run to compare."])
    notes = _interpretation(results, summary)
    if notes:
        doc.bullets(notes)

    doc.h(2, "Diagnostics: the RL signal")
    table = _diagnostics_table(results)
    if table:
        doc.table(*table)
        doc.p(f"Zero-spread groups: share of GRPO groups whose completions all got the same total reward (no "
              f"advantage, no gradient), mean over steps and seeds; the target for the RLKD arms is ≤ "
              f"{TARGET_ZERO_SPREAD_SHARE:.2f}. Structure share: the part of the weighted total reward that came "
              "from the structure term.")
    else:
        doc.p("No RL diagnostics in these results.")
    histograms = _mismatch_histograms(results)
    if histograms:
        bins = _mismatch_bins(histograms)
        doc.p("First meta-reasoning mismatch during RL (completions whose decomposition first departs from the "
              "teacher's at each step; none = all steps match):")
        doc.table(["method", *bins, "total"],
                  [[_label(results, m), *(str(h.get(b, 0)) for b in bins), str(sum(h.values()))]
                   for m, h in histograms.items()])

    doc.h(2, "The GSRM and the structure reward")
    accuracy = (results.get("gsrm") or {}).get("step_accuracy") or {}
    if any(isinstance(accuracy.get(s), (int, float)) for s in SPLITS):
        doc.p("Step accuracy (share of steps where the trained GSRM gives the same quantity and answer as the rule "
              "decomposer): " + "; ".join(
                  f"{SPLIT_TITLES[s]} {accuracy[s]:.3f}" + (
                      f" (target ≥ {TARGET_GSRM_STEP_ACCURACY:.2f}: "
                      f"{'met' if accuracy[s] >= TARGET_GSRM_STEP_ACCURACY else 'not met'})" if s == "id" else "")
                  for s in SPLITS if isinstance(accuracy.get(s), (int, float))) + ".")
    diagnostics = _diagnostics(results)
    if diagnostics:
        doc.bullets(diagnostics)
    elif not accuracy:
        doc.p("No GSRM measurements in these results.")

    doc.h(2, "Plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    if methods:
        doc.image(_bar_plot(results, summary, "pass_at_1", "pass@1", "pass@1 per method (bar: mean with 95% CI; "
                            "dots: seeds)", out_dir / "accuracy.png", "pass@1"),
                  "pass@1 per method and split, mean with 95% interval")
        doc.image(plot_pass_at_k(results, out_dir / "pass_at_k.png"),
                  f"pass@k curves up to k = {k} per method and split, with 95% interval bands")
        doc.image(_bar_plot(results, summary, "meta_prefix_share", "meta_prefix_share",
                            "structure alignment with the oracle (meta prefix share)", out_dir / "alignment.png",
                            "meta prefix share"), "structure alignment with the oracle per method and split")
    mismatch_png = plot_first_mismatch(results, out_dir / "first_mismatch.png")
    if mismatch_png:
        doc.image(mismatch_png, "step of the first meta-reasoning mismatch during RL, per RL method")
    training_png = plot_training(results, out_dir / "training.png")
    if training_png:
        doc.image(training_png, "reward components during RL training, mean over seeds")

    example = results.get("example")
    if example:
        doc.h(2, "One example: teacher and student steps")
        doc.p(f"Test problem `{example.get('id')}` (answer {example.get('answer')}); student: {example.get('label')} "
              f"seed {example.get('seed')}, first sample, {'correct' if example.get('correct') else 'wrong'}"
              + (f"; chosen as {example['chosen']}" if example.get("chosen") else "")
              + ". The student's steps are read from its trace by the rule decomposer.")
        doc.pre(example.get("problem", ""))
        headers, rows = _example_table(example)
        doc.table(headers, rows)
        doc.p("The student's raw completion:")
        doc.pre(example.get("student_trace", ""))

    stages = results.get("stages") or {}
    if stages:
        doc.h(2, "Stage times")
        doc.table(["stage", "seconds"],
                  [[name, "skipped (done before)" if rec.get("skipped") else _fmt(rec.get("seconds"), 1)]
                   for name, rec in stages.items()])
    return doc

def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = build_document(results, out)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    paths["markdown"].write_text(doc.markdown(), encoding="utf-8")
    paths["html"].write_text(doc.html(results.get("title", "RLKD experiment report")), encoding="utf-8")
    for png in sorted(out.glob("*.png")):
        paths[png.stem] = png
    return paths
