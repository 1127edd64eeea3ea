"""The experiment report: intervals, computed verdicts, targets, diagnostics and plots from a results
structure in the experiment's layout (built with rlkd.statistics on synthetic scores)."""

from __future__ import annotations

import base64
import copy
import re

import numpy as np
import pytest

from rlkd.report import (COMPARISONS, STARTING_POINTS, comparisons_text, console_table, findings, interval, kmax,
                         stat, summarize, training_summary, write_report)
from rlkd.statistics import comparison, summarize_scores, summarize_values

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS, PROBLEMS, N = 3, 12, 16
# success probability per method and split; equal values share the random draws, so those arms are equal
PROBABILITIES = {"sft": (0.7, 0.3), "sft_grpo": (0.72, 0.3), "sft_rlkd": (0.9, 0.5), "sft_rlkd_oracle": (0.92, 0.55),
                 "grpo_zero": (0.4, 0.1), "rlkd_zero": (0.4, 0.1), "prime": (0.2, 0.05)}
LABELS = {"sft": "SFT", "sft_grpo": "SFT+GRPO", "sft_rlkd": "SFT+RLKD", "sft_rlkd_oracle": "SFT+RLKD (oracle GSRM)",
          "grpo_zero": "GRPO-zero", "rlkd_zero": "RLKD-zero"}


def _scores(p: float, split: str) -> dict:
    """scores[seed][problem]: the same draws for the same probability (so equal arms are identical)."""
    rng = np.random.default_rng(int(p * 1000) + (0 if split == "id" else 7))
    return {str(s): {f"{split}-{j}": [bool(x) for x in rng.random(N) < p] for j in range(PROBLEMS)}
            for s in range(SEEDS)}


def _seed_metrics(scores: dict, seed: str) -> dict:
    """One seed's metrics.json split entry, as the experiment writes it."""
    rows = scores[seed]
    p1 = float(np.mean([np.mean(v) for v in rows.values()]))
    return {"problems": PROBLEMS, "n": N, "pass@1": p1, "pass@k": {"1": p1}, "format": 1.0,
            "alignment": {"meta_prefix_share": p1 / 2, "meta_match": p1 / 2, "answer_match": p1 / 3,
                          "answers_found": p1, "exact": 0.25, "student_steps": 3.0}}


def _training_rows(structure: bool) -> list[dict]:
    rows = []
    for step in (1, 2):
        row = {"step": step, "reward": 3.0 + step, "reward_std": 0.5, "rewards/accuracy/mean": 0.25,
               "rewards/format/mean": 1.0, "rewards/tag_count/mean": 1.0, "frac_reward_zero_std": 0.5}
        if structure:
            row.update({"rewards/structure/mean": 0.5 * (2 - step), "structure/meta_match": 0.5,
                        "structure/subproblem_match": 1.0, "structure/answer_match": 0.75,
                        "structure/zero_share": 0.25, "structure/prefix_length": 1.0, "structure/teacher_steps": 2.5})
        rows.append(row)
    return rows + [{"step": 2, "train_loss": 0.1}]  # the trainer's closing log line carries no reward


def build_results() -> dict:
    scores = {m: {split: _scores(p, split) for split, p in zip(("id", "ood"), ps)} for m, ps in PROBABILITIES.items()}
    methods = {}
    for m in LABELS:
        methods[m] = {"label": LABELS[m], "description": f"the {m} arm",
                      "seeds": {s: {split: _seed_metrics(scores[m][split], s) for split in ("id", "ood")}
                                for s in scores[m]["id"]}}
        for split in ("id", "ood"):
            values = {s: {p: [1.0] * N for p in per} for s, per in scores[m][split].items()}
            methods[m][split] = {**summarize_scores(scores[m][split], n_boot=500),
                                 "format": summarize_values(values, n_boot=500),
                                 "meta_prefix_share": summarize_values(
                                     {s: {p: [x / 2 for x in v] for p, v in per.items()}
                                      for s, per in scores[m][split].items()}, n_boot=500)}
    comparisons = [comparison(scores[a][split], scores[b][split], key_a=a, key_b=b, label_a=LABELS[a],
                              label_b=LABELS[b], split=split, n_boot=500)
                   for a, b, _ in COMPARISONS for split in ("id", "ood")]
    diagnostics = {}
    for m, share, mean, structure_share, hist in (
            ("sft_grpo", 0.35, None, None, None),
            ("sft_rlkd", 0.22, 1.25, 0.31, {"1": 40, "2": 25, "3": 10, "none": 5}),
            ("sft_rlkd_oracle", 0.18, 1.5, 0.35, {"1": 20, "2": 30, "none": 30}),
            ("grpo_zero", 0.6, None, None, None),
            ("rlkd_zero", 0.41, 0.5, 0.12, {"1": 70, "none": 10})):
        start = STARTING_POINTS[m]
        change = {}
        if start in scores:
            for split in ("id", "ood"):
                c = comparison(scores[m][split], scores[start][split], key_a=m, key_b=start, label_a=LABELS[m],
                               label_b="format-primed base" if start == "prime" else LABELS[start], split=split,
                               n_boot=500)
                change[split] = {key: c[key] for key in ("diff", "ci_low", "ci_high", "verdict")}
        diagnostics[m] = {"zero_spread_share": share, "structure_mean": mean, "structure_share": structure_share,
                          "first_mismatch": hist, "change": change}
    return {
        "title": "Synthetic report",
        "config": {"output": "runs/x", "seeds": [0, 1, 2], "vocab_size": 512,
                   "student": {"hidden_size": 128, "num_layers": 4}, "gsrm": {"hidden_size": 128, "num_layers": 2},
                   "rl": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
                          "max_completion_length": 64, "learning_rate": 1e-4, "beta": 0.04, "loss_type": "bnpo"},
                   "eval": {"n": N, "temperature": 0.6}},
        "methods": methods,
        "comparisons": comparisons,
        "diagnostics": diagnostics,
        "training": {"sft_grpo": {"0": _training_rows(False)}, "sft_rlkd": {"0": _training_rows(True)},
                     "sft_rlkd_oracle": {"0": _training_rows(True)}, "grpo_zero": {"0": _training_rows(False)},
                     "rlkd_zero": {"0": _training_rows(True)}},
        "gsrm": {"step_accuracy": {"id": 0.934, "ood": 0.712},
                 "step_accuracy_ci": {"id": {"mean": 0.934, "ci_low": 0.881, "ci_high": 0.972}, "ood": None},
                 "heldout": {"id": {"gsrm": {"traces": 8, "meta_match": 0.625, "answer_match": 0.5, "exact": 0.375,
                                             "meta_text_exact": 0.25, "no_steps": 0.0},
                                    "rule": {"exact": 1.0}}},
                 "students": {"traces": 4, "meta_match": 0.125, "exact": 0.0, "no_steps": 0.5, "source": "SFT seed 0"}},
        "example": {"label": "SFT+RLKD", "seed": 0, "id": "id-1-0", "answer": "11", "problem": "v = g + z. What is v?",
                    "correct": True, "student_trace": "<think>\nv = 8 + 3 = 11.\n</think>",
                    "teacher_steps": [{"meta_reasoning": "The goal is v.", "subproblem": "What is v?", "answer": "11"}],
                    "student_steps": [{"meta_reasoning": "", "subproblem": "What is v?", "answer": "11"},
                                      {"meta_reasoning": "extra", "subproblem": "What is q?", "answer": "3"}]},
        "stages": {"data": {"seconds": 1.5, "skipped": False}, "GSRM": {"seconds": 0.0, "skipped": True}},
        "wall_time_s": 123.4,
        "machine": {"cpus": 2, "torch_threads": 2, "gpu": None, "load_average": [1.0, 2.0, 3.0]},
    }


RESULTS = build_results()


def _find(a: str, b: str, split: str) -> dict:
    return next(c for c in RESULTS["comparisons"] if (c["a"], c["b"], c["split"]) == (a, b, split))


def _ci(iv: dict) -> str:
    return f"{iv['mean']:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(RESULTS, out)


class TestSyntheticResultsAreWhatTheTestsAssume:
    def test_the_arms_differ_where_they_should(self):
        assert _find("sft_rlkd", "sft_grpo", "id")["verdict"].startswith("SFT+RLKD beats SFT+GRPO on the id split")
        assert _find("rlkd_zero", "grpo_zero", "id")["verdict"] == (
            "no measurable difference between RLKD-zero and GRPO-zero on the id split: +0.000 pass@1 "
            "(95% CI +0.000 to +0.000 includes 0)")
        assert RESULTS["methods"]["sft"]["id"]["pass_at_1"]["mean"] >= 0.6


class TestNumbers:
    def test_stat_is_mean_and_sample_std(self):
        assert stat([0.5, 0.25, 0.75]) == {"mean": 0.5, "std": 0.25, "values": [0.5, 0.25, 0.75], "n": 3}
        assert stat([0.4])["std"] == 0.0

    def test_interval_and_kmax_read_the_bootstrap_summaries(self):
        assert kmax(RESULTS) == 16
        assert interval(RESULTS, "sft", "id", "pass_at_1") == RESULTS["methods"]["sft"]["id"]["pass_at_1"]
        k16 = interval(RESULTS, "sft", "ood", "pass_at_k", 16)
        assert k16 == {x: RESULTS["methods"]["sft"]["ood"]["pass_at_k"][-1][x] for x in ("mean", "ci_low", "ci_high")}
        assert interval(RESULTS, "prime", "id", "pass_at_1") is None  # trained, not evaluated
        assert interval(RESULTS, "sft", "id", "pass_at_k", 3) is None

    def test_summarize_keeps_the_seed_values(self):
        s = summarize(RESULTS)
        assert s["methods"]["sft"]["id"]["seeds"] == 3
        assert s["methods"]["sft"]["id"]["pass@1"]["values"] == [
            RESULTS["methods"]["sft"]["seeds"][str(i)]["id"]["pass@1"] for i in range(3)]

    def test_training_summary_counts_zero_structure_steps(self):
        t = training_summary(RESULTS["training"]["sft_rlkd"])
        assert t["logged_steps"] == 2  # the closing train_loss line is not a step
        assert t["rewards/structure/mean"] == pytest.approx(0.25)
        assert t["structure_zero_step_share"] == pytest.approx(0.5)


class TestConsole:
    def test_console_table_has_intervals_per_method_and_split(self):
        table = console_table(RESULTS)
        lines = table.splitlines()
        assert lines[0].split() == ["method", "split", "seeds", "pass@1", "[95%", "CI]", "pass@16", "[95%", "CI]",
                                    "format", "meta", "prefix"]
        assert len(lines) == 1 + 2 * len(LABELS)
        row = next(line for line in lines if line.startswith("SFT+RLKD (oracle GSRM)  ood"))
        m = RESULTS["methods"]["sft_rlkd_oracle"]["ood"]
        assert _ci(m["pass_at_1"]) in row and _ci(m["pass_at_k"][-1]) in row
        assert row.split()[-2:] == ["1.000", f"{m['meta_prefix_share']['mean']:.3f}"]

    def test_comparisons_text_lists_every_verdict(self):
        text = comparisons_text(RESULTS)
        assert text.splitlines() == [f"- {c['verdict']}" for c in RESULTS["comparisons"]]
        assert comparisons_text({"methods": {}}) == "no comparisons (fewer than two methods ran with the same seeds)"


class TestWriteReport:
    def test_pngs_are_valid_images(self, written):
        from PIL import Image

        out, paths = written
        for name in ("accuracy", "pass_at_k", "alignment", "first_mismatch", "training"):
            data = (out / f"{name}.png").read_bytes()
            assert data.startswith(PNG_MAGIC), name
            with Image.open(out / f"{name}.png") as image:
                assert image.size[0] > 300 and image.size[1] > 200
            assert paths[name] == out / f"{name}.png"

    def test_results_tables_have_intervals_and_seeds(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        assert "### in-distribution (id)" in md and "### out-of-distribution (ood)" in md
        assert "| method | seeds | problems × samples | pass@1 [95% CI] | pass@1 per seed | pass@16 [95% CI] |" in md
        m = RESULTS["methods"]["sft_rlkd"]["id"]
        seeds = ", ".join(f"{RESULTS['methods']['sft_rlkd']['seeds'][str(i)]['id']['pass@1']:.2f}" for i in range(3))
        row = next(line for line in md.splitlines() if line.startswith("| SFT+RLKD | 3 | 12 × 16 |"))
        assert row.split(" | ")[3:6] == [_ci(m["pass_at_1"]), seeds, _ci(m["pass_at_k"][-1])]
        for png in ("accuracy.png", "pass_at_k.png", "alignment.png", "first_mismatch.png", "training.png"):
            assert f"]({png})" in md

    def test_comparisons_and_findings_are_the_computed_verdicts(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        for c in RESULTS["comparisons"]:
            assert f"| {c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['verdict']} |" in md
        main = [_find("sft_rlkd", "sft_grpo", s)["verdict"] for s in ("id", "ood")]
        assert f"- **The paper's question, RLKD against GRPO after SFT: {main[0]}; {main[1]}.**" in md
        oracle = _find("sft_rlkd", "sft_rlkd_oracle", "ood")["verdict"]
        assert oracle in md.split("## Findings")[1]

    def test_targets_are_stated_with_the_measured_numbers(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        sft = RESULTS["methods"]["sft"]
        assert (f"Target SFT pass@1 ≥ 0.60 in distribution: measured {_ci(sft['id']['pass_at_1'])} (mean over seeds, "
                f"95% CI), met; out of distribution {_ci(sft['ood']['pass_at_1'])}.") in md
        assert ("Target GSRM step accuracy ≥ 0.90 in distribution (same quantity and answer as the rule decomposer): "
                "measured 0.934 [0.881, 0.972], met; out of distribution 0.712.") in md
        assert ("Target share of GRPO groups with zero reward spread ≤ 0.30 for the RLKD arms: SFT+RLKD 0.220 (met), "
                "SFT+RLKD (oracle GSRM) 0.180 (met), RLKD-zero 0.410 (not met).") in md
        assert "in-distribution 0.934 [0.881, 0.972] (target ≥ 0.90: met); out-of-distribution 0.712." in md

    def test_diagnostics_table_and_mismatch_histogram(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        def cells(method: str) -> str:
            change = RESULTS["diagnostics"][method]["change"]
            return " | ".join(f"{change[s]['diff']:+.3f} [{change[s]['ci_low']:+.3f}, {change[s]['ci_high']:+.3f}]"
                              for s in ("id", "ood"))

        assert f"| SFT+RLKD | SFT | 0.220 (target ≤ 0.30: met) | 1.250 | 0.310 | {cells('sft_rlkd')} |" in md
        assert f"| SFT+GRPO | SFT | 0.350 | n/a | n/a | {cells('sft_grpo')} |" in md
        assert (f"| RLKD-zero | format-primed base | 0.410 (target ≤ 0.30: not met) | 0.500 | 0.120 | "
                f"{cells('rlkd_zero')} |") in md
        assert "| method | 1 | 2 | 3 | none | total |" in md
        assert "| SFT+RLKD | 40 | 25 | 10 | 5 | 80 |" in md and "| RLKD-zero | 70 | 0 | 0 | 10 | 80 |" in md
        # the RL change against the starting point is a finding of its own where no comparison covers it
        assert RESULTS["diagnostics"]["sft_rlkd_oracle"]["change"]["id"]["verdict"] in md

    def test_example_stage_times_and_gsrm_notes(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        assert "| 1 | The goal is v. | What is v? 11 |  | What is v? 11 |" in md
        assert "| data | 1.5 |" in md and "| GSRM | skipped (done before) |" in md
        assert "wall time 123 s on 2 CPUs, no GPU" in md
        assert "GSRM on 8 held-out teacher traces (id): same chosen quantity at 0.625" in md
        assert "SFT+RLKD (oracle GSRM) (1 seeds, 2 logged steps): mean structure reward 0.250" in md

    def test_a_run_on_workers_says_its_stage_times_overlap(self, tmp_path):
        from rlkd.experiment import stage_times

        results = copy.deepcopy(RESULTS)
        results["machine"].update(workers=2, threads_per_worker=1)
        md = (write_report(results, tmp_path)["markdown"]).read_text(encoding="utf-8")
        assert "(2 worker processes side by side, 1 torch thread(s) each," in md
        assert "ran on 2 workers side by side, so their times add up to more than the wall time" in md
        assert "add up to more" in stage_times(results["stages"], 2)
        assert "add up to more" not in stage_times(results["stages"], 1)

    def test_html_is_self_contained_with_the_same_numbers(self, written):
        out, _ = written
        page = (out / "report.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>")
        assert _ci(RESULTS["methods"]["sft"]["id"]["pass_at_1"]) in page
        assert "<b>The paper&#x27;s question, RLKD against GRPO after SFT: SFT+RLKD beats SFT+GRPO" in page
        images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        assert len(images) == 5
        assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
        assert "src=\"http" not in page and "<script" not in page


class TestDegradesGracefully:
    def test_missing_methods_and_keys(self, tmp_path):
        results = copy.deepcopy(RESULTS)
        for m in ("sft_rlkd_oracle", "grpo_zero", "rlkd_zero"):
            del results["methods"][m]
        results["comparisons"] = [c for c in results["comparisons"] if c["a"] in results["methods"]
                                  and c["b"] in results["methods"]]
        del results["comparisons"][0]["verdict"]  # computed from the interval when missing
        results["comparisons"] += ["not a comparison", {"a": "sft", "b": "sft_grpo", "diff": None},
                                   {"a": "sft", "b": "sft_grpo", "diff": 0.1, "ci_low": 0.05, "ci_high": 0.2}]
        for key in ("diagnostics", "training", "gsrm", "example", "stages"):
            del results[key]
        del results["methods"]["sft_grpo"]["ood"]  # no interval: mean ± std over seeds instead
        paths = write_report(results, tmp_path)
        md = paths["markdown"].read_text(encoding="utf-8")
        assert RESULTS["comparisons"][0]["verdict"] in md
        assert "- SFT beats SFT+GRPO on the ? split by +0.100 pass@1 (95% CI +0.050 to +0.200)." in md
        assert "RLKD-zero" not in md and "oracle GSRM" not in md
        assert "No RL diagnostics in these results." in md and "No GSRM measurements in these results." in md
        assert "training" not in paths and "first_mismatch" not in paths
        assert re.search(r"\| SFT\+GRPO \| 3 \| 12 × 16 \| 0\.\d{3} ± 0\.\d{3} \(sd over seeds\) \|", md)
        assert "SFT+GRPO  ood" in console_table(results) and "sd over seeds" in console_table(results)

    def test_results_without_any_interval_or_method(self, tmp_path):
        paths = write_report({"methods": {}}, tmp_path)
        md = paths["markdown"].read_text(encoding="utf-8")
        assert "No comparisons with intervals in these results." in md
        assert "- Not enough methods were run to compare." in md
        assert console_table({"methods": {}}).split() == ["method", "split", "seeds", "pass@1", "[95%", "CI]",
                                                          "pass@1", "[95%", "CI]", "format", "meta", "prefix"]
        assert findings({}) == []

    def test_findings_follow_the_verdicts_when_results_flip(self):
        results = copy.deepcopy(RESULTS)
        for c in results["comparisons"]:
            if (c["a"], c["b"]) == ("sft_rlkd", "sft_grpo"):
                c["diff"], c["ci_low"], c["ci_high"] = -c["diff"], -c["ci_high"], -c["ci_low"]
                del c["verdict"]
        main = findings(results)[0]
        assert main.startswith("**The paper's question, RLKD against GRPO after SFT: SFT+GRPO beats SFT+RLKD on the "
                               "id split by +")


def test_interpretation_follows_from_low_numbers(tmp_path, written):
    results = copy.deepcopy(RESULTS)
    for method in results["methods"].values():
        for seed in method["seeds"].values():
            seed["id"]["pass@1"] = 0.03
            seed["id"]["alignment"]["grounded"] = 0.2
            seed["id"]["alignment"]["goal_named"] = 0.007
    results["gsrm"]["heldout"]["id"]["gsrm"]["meta_match"] = 0.05
    md = write_report(results, tmp_path)["markdown"].read_text(encoding="utf-8")
    assert "whose opening sentence (\"We want x.\") names the problem's goal" in md and "SFT 0.007" in md
    assert "No method learned the task: the best in-distribution pass@1 is 0.030" in md
    assert "in at most 0.20 of cases" in md
    assert "The trained GSRM picks the right quantity in only 0.05 of the steps" in md
    assert "No method learned the task" not in (written[0] / "report.md").read_text(encoding="utf-8")
