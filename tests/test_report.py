"""The experiment report: numbers, spread across seeds, findings and plots from a literal results structure."""

from __future__ import annotations

import base64
import re

import pytest

from rlkd.report import compare, stat, summarize, training_summary, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _split(pass1: float, pass2: float, meta: float, fmt: float = 1.0) -> dict:
    return {"problems": 4, "n": 2, "pass@1": pass1, "pass@k": {"1": pass1, "2": pass2}, "format": fmt,
            "alignment": {"meta_prefix_share": meta, "meta_match": meta, "answer_match": meta / 2,
                          "answers_found": meta, "exact": 0.25, "student_steps": 2.0}}


def _training_rows(structure: list[float] | None) -> list[dict]:
    rows = []
    for step, value in enumerate(structure or [0.5, 0.0], start=1):
        row = {"step": step, "reward": 3.0 + step, "reward_std": 0.5, "rewards/accuracy/mean": 0.25,
               "rewards/format/mean": 1.0, "rewards/tag_count/mean": 1.0, "frac_reward_zero_std": 0.5}
        if structure is not None:
            row.update({"rewards/structure/mean": value, "structure/meta_match": 0.5,
                        "structure/subproblem_match": 1.0, "structure/answer_match": 0.75,
                        "structure/zero_share": 0.25, "structure/prefix_length": 1.0, "structure/teacher_steps": 2.5})
        rows.append(row)
    rows.append({"step": len(rows), "train_loss": 0.1})  # the trainer's closing log line carries no reward
    return rows


RESULTS = {
    "title": "Synthetic report",
    "config": {"output": "runs/x", "seeds": [0, 1, 2], "vocab_size": 512,
               "student": {"hidden_size": 64, "num_layers": 2}, "gsrm": {"hidden_size": 128, "num_layers": 2},
               "rl": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
                      "max_completion_length": 64, "learning_rate": 1e-4, "beta": 0.04, "loss_type": "bnpo"},
               "eval": {"n": 2, "temperature": 0.6}},
    "methods": {
        "sft_grpo": {"label": "SFT+GRPO", "description": "outcome rewards",
                     "seeds": {"0": {"id": _split(0.5, 0.75, 0.5), "ood": _split(0.125, 0.25, 0.2)},
                               "1": {"id": _split(0.25, 0.5, 0.4), "ood": _split(0.125, 0.25, 0.2)},
                               "2": {"id": _split(0.75, 1.0, 0.6), "ood": _split(0.125, 0.25, 0.2)}}},
        "sft_rlkd": {"label": "SFT+RLKD", "description": "rlkd rewards",
                     "seeds": {"0": {"id": _split(0.5, 0.5, 0.9), "ood": _split(0.0, 0.0, 0.1)},
                               "1": {"id": _split(0.5, 0.5, 0.8), "ood": _split(0.0, 0.0, 0.1)},
                               "2": {"id": _split(0.5, 0.5, 0.7), "ood": _split(0.0, 0.0, 0.1)}}},
    },
    "training": {"sft_grpo": {"0": _training_rows(None), "1": _training_rows(None)},
                 "sft_rlkd": {"0": _training_rows([0.5, 0.0]), "1": _training_rows([1.5, 0.0])}},
    "gsrm": {"heldout": {"id": {"gsrm": {"traces": 8, "meta_match": 0.625, "answer_match": 0.5, "exact": 0.375,
                                         "meta_text_exact": 0.25, "no_steps": 0.0, "meta_prefix_share": 0.6,
                                         "answers_found": 0.5},
                                "rule": {"exact": 1.0, "meta_match": 1.0, "answer_match": 1.0}}},
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


class TestNumbers:
    def test_stat_is_mean_and_sample_std(self):
        assert stat([0.5, 0.25, 0.75]) == {"mean": 0.5, "std": 0.25, "values": [0.5, 0.25, 0.75], "n": 3}
        assert stat([0.4])["std"] == 0.0

    def test_summarize_gives_spread_per_method_and_split(self):
        s = summarize(RESULTS)
        assert s["ks"] == [1, 2] and s["kmax"] == 2
        grpo = s["methods"]["sft_grpo"]["id"]
        assert grpo["seeds"] == 3
        assert grpo["pass@1"]["mean"] == pytest.approx(0.5)
        assert grpo["pass@1"]["std"] == pytest.approx(0.25)
        assert grpo["pass@k"][2]["mean"] == pytest.approx(0.75)
        assert s["methods"]["sft_rlkd"]["id"]["meta_prefix_share"]["mean"] == pytest.approx(0.8)

    def test_compare_says_within_spread_or_beyond(self):
        s = summarize(RESULTS)
        same = compare(s, "sft_rlkd", "sft_grpo", "id")
        assert same["diff"] == pytest.approx(0.0) and not same["beats"]
        assert "within the spread" in same["verdict"]
        better = compare(s, "sft_rlkd", "sft_grpo", "id", "meta_prefix_share")
        assert better["diff"] == pytest.approx(0.3) and better["beats"]
        worse = compare(s, "sft_rlkd", "sft_grpo", "ood")
        assert worse["diff"] == pytest.approx(-0.125) and "lower" in worse["verdict"]

    def test_training_summary_counts_zero_structure_steps(self):
        t = training_summary(RESULTS["training"]["sft_rlkd"])
        assert t["logged_steps"] == 4  # the closing train_loss lines are not steps
        assert t["rewards/structure/mean"] == pytest.approx(0.5)
        assert t["structure_zero_step_share"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(RESULTS, out)


class TestWriteReport:
    def test_pngs_are_valid_images(self, written):
        from PIL import Image

        out, paths = written
        for name in ("accuracy", "pass_at_k", "alignment", "training"):
            data = (out / f"{name}.png").read_bytes()
            assert data.startswith(PNG_MAGIC), name
            with Image.open(out / f"{name}.png") as image:
                assert image.size[0] > 300 and image.size[1] > 200
            assert paths[name] == out / f"{name}.png"

    def test_markdown_has_numbers_spread_and_seeds(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        row = next(line for line in md.splitlines() if line.startswith("| SFT+GRPO | id |"))
        assert "0.500 ± 0.250" in row  # pass@1 mean ± std over seeds
        assert "0.50, 0.25, 0.75" in row  # each seed
        assert "0.750 ± 0.250" in row  # pass@2
        assert "| SFT+RLKD | ood | 3 | 0.000 ± 0.000 |" in md
        for png in ("accuracy.png", "pass_at_k.png", "alignment.png", "training.png"):
            assert f"]({png})" in md

    def test_findings_state_the_measured_comparison(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        assert "SFT+RLKD did not beat SFT+GRPO" in md
        assert "SFT+RLKD pass@1 minus SFT+GRPO = +0.000 (spread 0.250)" in md
        assert "SFT+RLKD pass@1 minus SFT+GRPO = -0.125" in md
        # diagnostics: GSRM accuracy and the structure reward's components with its zero share
        assert "GSRM on 8 held-out teacher traces (id): same chosen quantity at 0.625" in md
        assert "mean structure reward 0.500" in md
        assert "zero at 0.500 of steps" in md
        assert "structure 1.50" in md  # weighted term: 3 x 0.5

    def test_example_and_stage_times(self, written):
        out, _ = written
        md = (out / "report.md").read_text(encoding="utf-8")
        assert "| 1 | The goal is v. | What is v? 11 |  | What is v? 11 |" in md
        assert "| 2 |  |  | extra | What is q? 3 |" in md
        assert "| data | 1.5 |" in md and "| GSRM | skipped (done before) |" in md
        assert "wall time 123 s on 2 CPUs, no GPU" in md

    def test_html_is_self_contained_with_the_same_numbers(self, written):
        out, _ = written
        page = (out / "report.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>")
        assert "0.500 ± 0.250" in page and "<b>In this run SFT+RLKD did not beat" in page
        images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        assert len(images) == 4
        assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
        assert "src=\"http" not in page and "<script" not in page

    def test_beats_when_the_difference_exceeds_the_spread(self, tmp_path):
        import copy

        results = copy.deepcopy(RESULTS)
        for seed in results["methods"]["sft_rlkd"]["seeds"].values():
            seed["id"]["pass@1"] = 0.95
            seed["ood"]["pass@1"] = 0.5
        md = write_report(results, tmp_path)["markdown"].read_text(encoding="utf-8")
        assert "In this run SFT+RLKD beat SFT+GRPO on pass@1 on both splits" in md

    def test_missing_training_logs_give_no_training_plot(self, tmp_path):
        results = {**RESULTS, "training": {}}
        paths = write_report(results, tmp_path)
        assert "training" not in paths
        assert "training.png" not in paths["markdown"].read_text(encoding="utf-8")


def test_interpretation_follows_from_low_numbers(tmp_path):
    import copy

    results = copy.deepcopy(RESULTS)
    for method in results["methods"].values():
        for seed in method["seeds"].values():
            seed["id"]["pass@1"] = 0.03
            seed["id"]["alignment"]["grounded"] = 0.2
    results["gsrm"]["heldout"]["id"]["gsrm"]["meta_match"] = 0.05
    md = write_report(results, tmp_path)["markdown"].read_text(encoding="utf-8")
    assert "No method learned the task: the best in-distribution pass@1 is 0.030" in md
    assert "in at most 0.20 of cases" in md
    assert "The trained GSRM picks the right quantity in only 0.05 of the steps" in md
    assert "No method learned the task" not in write_report(RESULTS, tmp_path / "ok")["markdown"].read_text()
