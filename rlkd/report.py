"""The experiment's report: markdown and a self-contained HTML page, with PNG plots.

:func:`write_report` takes the results structure :class:`rlkd.experiment.Experiment` writes to
``results.json`` and produces, in one folder, ``report.md`` (PNG files beside it), ``report.html``
(the same content with the PNGs embedded, so the one file can be sent around) and the PNGs:

- ``training.png``: reward components during RL (weighted total, each reward's mean, the structure
  reward's meta-reasoning / sub-problem / answer match rates and the share of zero structure rewards),
  mean over seeds per logged step;
- ``accuracy.png``: pass@1 per method and split, mean ± std over seeds with each seed's value as a dot;
- ``pass_at_k.png``: pass@k curves per method and split;
- ``alignment.png``: structure alignment with the oracle per method and split.

Every number comes from the results; the spread is the sample standard deviation over seeds (0 with one
seed). The findings section compares SFT+RLKD with SFT+GRPO as measured and, when RLKD does not come
out ahead, lays out the diagnostics the run recorded: GSRM accuracy, the structure reward's mean and
components, how often it was zero, and the reward scale beside the other terms.

How this departs from the paper: the paper reports single runs on AIME24 / MATH-500 / GPQA; here every
number carries its spread over seeds and the structure alignment is measured exactly against the
testbed's ground truth.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

SPLIT_TITLES = {"id": "in-distribution", "ood": "out-of-distribution"}
_COLORS = {"sft": "#7f7f7f", "sft_grpo": "#1f77b4", "sft_rlkd": "#d62728", "rlkd_zero": "#2ca02c"}


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


def _bar_plot(summary: Mapping[str, Any], metric: str, title: str, path: Path, ylabel: str) -> Path:
    plt = _pyplot()
    methods = list(summary["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("id", "ood")):
        xs, labels = [], []
        for i, method in enumerate(methods):
            s = summary["methods"][method].get(split)
            if not s:
                continue
            st = s[metric]
            ax.bar(i, st["mean"], yerr=st["std"], capsize=4, color=_COLORS.get(method, "#999"), alpha=0.75)
            ax.scatter([i] * len(st["values"]), st["values"], color="black", s=12, zorder=3)
            xs.append(i)
            labels.append(s["label"])
        ax.set_xticks(xs, labels, rotation=15)
        ax.set_title(f"{SPLIT_TITLES[split]} ({split})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_pass_at_k(summary: Mapping[str, Any], path: Path) -> Path:
    """pass@k against k per method, one panel per split (error bars: std over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    ks = summary["ks"]
    for ax, split in zip(axes, ("id", "ood")):
        for method, splits in summary["methods"].items():
            s = splits.get(split)
            if not s:
                continue
            means = [s["pass@k"][k]["mean"] for k in ks]
            stds = [s["pass@k"][k]["std"] for k in ks]
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=s["label"], color=_COLORS.get(method))
        ax.set_xticks(ks)
        ax.set_xlabel("k")
        ax.set_title(f"{SPLIT_TITLES[split]} ({split})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pass@k")
    axes[0].legend(fontsize=8)
    fig.suptitle("pass@k (mean ± std over seeds)", fontsize=11)
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
# Findings


def compare(summary: Mapping[str, Any], a: str, b: str, split: str, metric: str = "pass@1") -> dict[str, Any] | None:
    """Method ``a`` against ``b`` on one split: the difference of means and whether it exceeds the
    seeds' spread (the larger of the two standard deviations)."""
    sa, sb = summary["methods"].get(a, {}).get(split), summary["methods"].get(b, {}).get(split)
    if not sa or not sb:
        return None
    ma, mb = sa[metric], sb[metric]
    diff = ma["mean"] - mb["mean"]
    spread = max(ma["std"], mb["std"])
    if ma["n"] < 2 or mb["n"] < 2:
        verdict = "higher" if diff > 0 else "lower" if diff < 0 else "equal"
        verdict += " (one seed: no spread to compare with)"
    elif diff > spread:
        verdict = "higher, by more than the spread across seeds"
    elif diff < -spread:
        verdict = "lower, by more than the spread across seeds"
    else:
        verdict = "within the spread across seeds (no measurable difference)"
    return {"a": sa["label"], "b": sb["label"], "diff": diff, "spread": spread, "verdict": verdict,
            "beats": diff > spread and ma["n"] >= 2 and mb["n"] >= 2}


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
    for method in ("sft_rlkd", "rlkd_zero"):
        seeds = (results.get("training") or {}).get(method)
        if not seeds:
            continue
        t = training_summary(seeds)
        label = (results.get("methods", {}).get(method) or {}).get("label", method)
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
    doc = Doc()
    config = results.get("config") or {}
    machine = results.get("machine") or {}
    doc.h(1, results.get("title", "RLKD experiment report"))
    wall = results.get("wall_time_s")
    where = f"{machine.get('cpus', '?')} CPUs" + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
    doc.p(f"Run folder `{config.get('output', '?')}`; wall time {_fmt(wall, 0)} s on {where} "
          f"(torch threads {machine.get('torch_threads', '?')}, load average at the end "
          f"{', '.join(f'{x:.1f}' for x in machine.get('load_average', [])) or 'n/a'}). Seeds: "
          f"{', '.join(map(str, config.get('seeds', [])))}. All numbers below are what this run measured; ± is the "
          "sample standard deviation over seeds and the individual seeds are listed.")
    data = results.get("data") or {}
    rl = config.get("rl") or {}
    student, gsrm_model = config.get("student") or {}, config.get("gsrm") or {}
    doc.bullets([
        f"Tasks: {data.get('train', '?')} training, {data.get('test_id', '?')} in-distribution test, "
        f"{data.get('test_ood', '?')} out-of-distribution test (deeper, more distractors), "
        f"{data.get('gsrm_train', '?')} for the GSRM; RLKD-zero trains on {data.get('zero', '?')}.",
        f"Student: tiny Llama, hidden {student.get('hidden_size')}, {student.get('num_layers')} layers; GSRM: hidden "
        f"{gsrm_model.get('hidden_size')}, {gsrm_model.get('num_layers')} layers; vocabulary "
        f"{config.get('vocab_size')}.",
        f"Equal RL budget for every RL method: {rl.get('max_steps')} steps × {rl.get('per_device_train_batch_size')} "
        f"completions ({rl.get('num_generations')} per prompt), completions up to {rl.get('max_completion_length')} "
        f"tokens, learning rate {rl.get('learning_rate')}, beta {rl.get('beta')}, loss {rl.get('loss_type')}.",
        f"Evaluation: n = {(config.get('eval') or {}).get('n')} samples per problem at temperature "
        f"{(config.get('eval') or {}).get('temperature')}; pass@k by the unbiased estimator; structure alignment = "
        "rule-decomposed completion against the oracle's decomposition.",
    ])
    for name, method in (results.get("methods") or {}).items():
        doc.p(f"**{method.get('label', name)}**: {method.get('description', '')}.")

    doc.h(2, "Results")
    kmax = summary["kmax"]
    rows = []
    for method, splits in summary["methods"].items():
        for split in ("id", "ood"):
            s = splits.get(split)
            if s:
                rows.append([s["label"], split, str(s["seeds"]), _pm(s["pass@1"]), _seeds(s["pass@1"]),
                             _pm(s["pass@kmax"]), _pm(s["format"]), _pm(s["meta_prefix_share"]),
                             _pm(s["answer_match"])])
    doc.table(["method", "split", "seeds", "pass@1", "pass@1 per seed", f"pass@{kmax}", "format",
               "meta prefix share", "answer match"], rows)
    doc.p("pass@1: mean correctness over the n samples. Format: share of completions in the "
          "`<think>…</think><answer>…</answer>` layout. Meta prefix share: leading steps choosing the oracle's "
          "quantity, over the oracle's step count. Answer match: oracle positions with the same quantity and value.")

    doc.h(2, "Findings")
    findings = []
    beats = []
    for split in ("id", "ood"):
        c = compare(summary, "sft_rlkd", "sft_grpo", split)
        if c:
            beats.append(c["beats"])
            findings.append(f"{SPLIT_TITLES[split]}: {c['a']} pass@1 minus {c['b']} = {c['diff']:+.3f} "
                            f"(spread {c['spread']:.3f}): {c['verdict']}.")
        z = compare(summary, "rlkd_zero", "sft_grpo", split)
        if z:
            findings.append(f"{SPLIT_TITLES[split]}: {z['a']} pass@1 minus {z['b']} = {z['diff']:+.3f} "
                            f"(spread {z['spread']:.3f}): {z['verdict']}.")
        s = compare(summary, "sft_rlkd", "sft_grpo", split, "meta_prefix_share")
        if s:
            findings.append(f"{SPLIT_TITLES[split]}: structure alignment (meta prefix share) {s['a']} minus {s['b']} = "
                            f"{s['diff']:+.3f} (spread {s['spread']:.3f}): {s['verdict']}.")
    if beats:
        if all(beats):
            doc.p("**In this run SFT+RLKD beat SFT+GRPO on pass@1 on both splits by more than the spread across "
                  "seeds.**")
        else:
            doc.p("**In this run SFT+RLKD did not beat SFT+GRPO on pass@1 by more than the spread across seeds"
                  + (" on every split" if any(beats) else "") + ".** The diagnostics below are what the run recorded "
                  "about why.")
    doc.bullets(findings or ["Not enough methods were run to compare."])
    doc.bullets(_interpretation(results, summary))
    diagnostics = _diagnostics(results)
    if diagnostics:
        doc.h(3, "Diagnostics: the GSRM and the structure reward")
        doc.bullets(diagnostics)

    doc.h(2, "Plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    if summary["methods"]:
        doc.image(_bar_plot(summary, "pass@1", "pass@1 per method (bar: mean ± std over seeds; dots: seeds)",
                            out_dir / "accuracy.png", "pass@1"), "pass@1 per method and split, mean ± std over seeds")
        doc.image(plot_pass_at_k(summary, out_dir / "pass_at_k.png"), "pass@k curves per method and split")
        doc.image(_bar_plot(summary, "meta_prefix_share", "structure alignment with the oracle (meta prefix share)",
                            out_dir / "alignment.png", "meta prefix share"),
                  "structure alignment with the oracle per method and split")
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
