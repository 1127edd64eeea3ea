"""The demo's numbers as the report shows them: per-method summaries, intervals (with the seeds' spread
where there are none), the comparisons, and the console summary ``rlkd demo`` prints.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

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
                "goal_named": stat([r["alignment"]["goal_named"] for r in rows if "goal_named" in r["alignment"]]),
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
