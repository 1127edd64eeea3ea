"""The report's plots (matplotlib, Agg): training curves, pass@1 bars, pass@k, where the first mismatch falls."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.report.numbers import SPLITS, SPLIT_TITLES, _COLORS, _label, _methods, _split_summary, _value, kmax, summarize


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
