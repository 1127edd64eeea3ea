"""The report's findings, targets and diagnostics, assembled from the computed verdicts and the numbers."""

from __future__ import annotations

from typing import Any, Mapping

from rlkd.statistics import verdict
from rlkd.report.numbers import COMPARISONS, RLKD_METHODS, SPLITS, STARTING_POINTS, TARGET_GSRM_STEP_ACCURACY, TARGET_SFT_PASS_AT_1, TARGET_ZERO_SPREAD_SHARE, _changes, _ci, _comparisons, _fmt, _label, _signed_ci, interval, summarize, training_summary


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
    intervals = (results.get("gsrm") or {}).get("step_accuracy_ci") or {}
    if isinstance(accuracy.get("id"), (int, float)):
        band = intervals.get("id")
        out.append(f"Target GSRM step accuracy ≥ {TARGET_GSRM_STEP_ACCURACY:.2f} in distribution (same quantity "
                   f"and answer as the rule decomposer): measured {accuracy['id']:.3f}"
                   + (f" [{band['ci_low']:.3f}, {band['ci_high']:.3f}]" if band else "") + ", "
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
    named = [f"{splits['id']['label']} {_fmt(splits['id']['goal_named']['mean'], 3)}"
             for splits in summary["methods"].values()
             if "id" in splits and splits["id"]["goal_named"]["n"]]
    if named:
        notes.append("Share of the in-distribution completions whose opening sentence (\"We want x.\") names the "
                     "problem's goal (its first sentence, \"Find x.\": a copy from a fixed place in the prompt, "
                     "the easiest in a trace): " + ", ".join(named) + ". The oracle's is 1.")
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
