"""The whole report: :func:`build_document` and :func:`write_report` (markdown, HTML, plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rlkd.statistics import METHOD as BOOTSTRAP_METHOD
from rlkd.report.document import Doc
from rlkd.report.findings import _diagnostics, _diagnostics_table, _interpretation, findings
from rlkd.report.numbers import SPLITS, SPLIT_TITLES, STARTING_POINTS, TARGET_GSRM_STEP_ACCURACY, TARGET_ZERO_SPREAD_SHARE, _cell, _comparisons, _fmt, _label, _methods, _seed_count, _seeds, _signed_ci, _split_summary, kmax, summarize
from rlkd.report.plots import _bar_plot, _mismatch_bins, _mismatch_histograms, plot_first_mismatch, plot_pass_at_k, plot_training


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
    workers = machine.get("workers") or 1
    threads = (f"{workers} worker processes side by side, {machine.get('threads_per_worker') or '?'} torch "
               "thread(s) each" if workers > 1 else f"torch threads {machine.get('torch_threads', '?')}")
    doc.p(f"Run folder `{config.get('output', '?')}`; wall time {_fmt(wall, 0)} s on {where} "
          f"({threads}, load average at the end "
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
    intervals = (results.get("gsrm") or {}).get("step_accuracy_ci") or {}
    if any(isinstance(accuracy.get(s), (int, float)) for s in SPLITS):
        doc.p("Step accuracy (share of steps where the trained GSRM gives the same quantity and answer as the rule "
              "decomposer, with a 95% interval from resampling the held-out traces): " + "; ".join(
                  f"{SPLIT_TITLES[s]} {accuracy[s]:.3f}"
                  + (f" [{intervals[s]['ci_low']:.3f}, {intervals[s]['ci_high']:.3f}]" if intervals.get(s) else "")
                  + (
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
        if workers > 1:
            doc.p(f"The stages ran on {workers} workers side by side, so their times add up to more than the "
                  "wall time.")
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
