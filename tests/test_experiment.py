"""The experiment runner and ``rlkd demo``: recipe loading, data, the GSRM prompt, and a micro run end to end."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from rlkd.cli import main
from rlkd.config import ConfigError
from rlkd.evaluate import pass_at_k
from rlkd.experiment import (
    DataSection,
    Experiment,
    gsrm_sft_rows,
    load_demo_job,
    make_tasks,
    write_gsrm_prompt,
)
from rlkd.recipes import dump_yaml

REPO = Path(__file__).resolve().parents[1]

# As small as the pipeline allows: one seed, a few tasks, one RL step, a 1-layer base pretrained 2 steps.
MICRO = """\
seeds: [0]
data: {{train: 8, test_id: 2, test_ood: 2, gsrm_train: 8, gsrm_test: 2, zero_fraction: 0.25}}
base: {{path: {base}, tasks: 40, probe_tasks: 2, hidden_size: 16, num_layers: 1, num_heads: 2, copying_steps: 2,
       copying_texts: 16, copying_max_loss: null, continued_steps: 2}}
pretraining: {{max_steps: 2, save_steps: 1, per_device_train_batch_size: 4, logging_steps: 1}}
gsrm_training: {{max_steps: 1, per_device_train_batch_size: 4}}
sft: {{max_steps: 1, per_device_train_batch_size: 4}}
prime: {{max_steps: 1, per_device_train_batch_size: 2}}
rl: {{max_steps: 1, per_device_train_batch_size: 4, num_generations: 2, max_completion_length: 16}}
structure: {{gsrm_max_tokens: 16}}
eval: {{n: 2, max_tokens_id: 16, max_tokens_ood: 16, batch_size: 8, gsrm_student_check: 2, bootstrap: 50}}
"""
METHODS = ["sft", "sft_grpo", "sft_rlkd", "sft_rlkd_oracle", "grpo_zero", "rlkd_zero"]


class TestRecipe:
    def test_shipped_recipes_load(self):
        for name in ("demo.yaml", "full.yaml"):
            path = REPO / "configs" / "demo" / name
            job = load_demo_job(path)
            assert len(job.seeds) >= 3
            assert job.methods == METHODS
            first = path.read_text(encoding="utf-8").splitlines()[0]
            assert first.startswith("#") and "rlkd demo" in first

    def test_a_partial_section_keeps_the_demo_defaults(self, tmp_path):
        recipe = tmp_path / "r.yaml"
        recipe.write_text("sft: {max_steps: 3}\nrl: {max_steps: 2}\n", encoding="utf-8")
        job = load_demo_job(recipe, ["rl.learning_rate=0.002"])
        defaults = load_demo_job(None)
        assert job.sft.max_steps == 3 and job.rl.max_steps == 2 and job.rl.learning_rate == 0.002
        assert job.sft.learning_rate == defaults.sft.learning_rate  # not the paper's SFT default 1e-5
        assert job.sft.bf16 is False and job.rl.num_generations == defaults.rl.num_generations

    @pytest.mark.parametrize("override, message", [
        ("methods=[sft, dpo]", "methods: unknown method(s) ['dpo']"),
        ("eval.n=0", "eval.n: must be > 0"),
        ("seeds=[1, 1]", "seeds: repeated seed"),
        ("data.zero_fraction=0", "data.zero_fraction: must be in (0, 1]"),
        ("rl.per_device_train_batch_size=6", "must be a multiple of rl.num_generations"),
        ("data.trian=3", "data.trian: unknown field of DataSection (did you mean data.train?)"),
        ("structure.gsrm_prompt=p.txt", "structure.gsrm_prompt: set by the experiment from gsrm_prompt"),
        ("structure.decomposer=rule", "structure.decomposer: set per method by the experiment"),
        ("base.path=", "base.path: required"),
        ("workers=-1", "workers: must be >= 0 (0: automatic)"),
        ("threads=-2", "threads: must be >= 0"),
    ])
    def test_bad_recipes_name_the_field(self, override, message):
        with pytest.raises(ConfigError) as info:
            load_demo_job(None, [override])
        assert message in str(info.value)


class TestData:
    def test_task_sets_are_disjoint_and_deterministic(self):
        data = DataSection(train=12, test_id=5, test_ood=4, gsrm_train=6, gsrm_test=3)
        tasks = make_tasks(data)
        keys = {name: {t.key for t in ts} for name, ts in tasks.items()}
        assert [len(keys[n]) for n in ("train", "test_id", "test_ood", "gsrm", "gsrm_test_id", "gsrm_test_ood")] == [
            12, 5, 4, 6, 3, 3]
        assert all(t.knobs["depth"] >= 4 for t in tasks["gsrm_test_ood"])
        # the GSRM's held-out sets come after the others: more of them changes none of the others
        more = make_tasks(DataSection(train=12, test_id=5, test_ood=4, gsrm_train=6, gsrm_test=9))
        assert all([t.id for t in more[n]] == [t.id for t in tasks[n]] for n in ("train", "test_id", "test_ood", "gsrm"))
        names = list(keys)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not keys[a] & keys[b], (a, b)
        assert all(t.knobs["depth"] <= 3 for t in tasks["train"])  # the demo's shallow id knobs
        assert all(t.knobs["depth"] >= 4 for t in tasks["test_ood"])  # the demo's ood knobs: depth 4-5
        assert [t.id for t in make_tasks(data)["test_id"]] == [t.id for t in tasks["test_id"]]

    def test_gsrm_rows_are_what_the_structure_reward_sends(self, tmp_path):
        from rlkd.backends import ScriptedBackend
        from rlkd.gsrm import Decomposer
        from rlkd.testbed import generate_tasks, gsrm_prompt, reasoning_text

        prompt = str(write_gsrm_prompt(tmp_path / "prompt.txt"))
        task = generate_tasks(1, "id", seed=4)[0]
        [row] = gsrm_sft_rows([task], prompt)
        request, _, _ = Decomposer(ScriptedBackend(lambda r: ""), domain=prompt, few_shot=False).request(
            task.problem, task.trace)
        assert row["prompt"] == request.as_openai_messages()
        assert row["prompt"] == [{"role": "user", "content": gsrm_prompt(task.problem, reasoning_text(task.trace))}]
        assert row["completion"] == [{"role": "assistant", "content": task.decomposition.render()}]
        whole, *cuts = gsrm_sft_rows([task], prompt, prefixes=True)  # the cut traces come after the whole one
        assert whole == {"id": task.id, **{k: row[k] for k in ("prompt", "completion")}}
        assert [c["id"] for c in cuts] == [f"{task.id}~{j}" for j in range(1, len(task.order))]
        assert all(row["prompt"][0]["content"].startswith(c["prompt"][0]["content"]) for c in cuts)

    def test_pass_at_k(self):
        assert pass_at_k(4, 0, 2) == 0.0
        assert pass_at_k(4, 1, 1) == 0.25
        assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
        assert pass_at_k(4, 3, 2) == 1.0


@pytest.mark.slow
def test_micro_run_end_to_end_and_resume(tmp_path, capsys):
    recipe = tmp_path / "micro.yaml"
    base = tmp_path / "base"
    recipe.write_text(MICRO.format(base=base), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["demo", "--config", str(recipe), "--output", str(out)]) == 2  # no base yet: a clear error
    assert "rlkd demo --build-base" in capsys.readouterr().err

    # the base student: pretrained with rlkd train sft on text, every checkpoint probed, a card written
    assert main(["demo", "--config", str(recipe), "--build-base"]) == 0
    assert "step     2" in capsys.readouterr().out
    card = json.loads((base / "base_card.json").read_text())
    # both stages probed, the continued one's steps counted on from the first stage's last
    assert [(p["stage"], p["step"]) for p in card["probes"]] == [("train", 1), ("train", 2), ("continued", 3),
                                                                  ("continued", 4)]
    assert [r["step"] for r in card["loss"]] == [1, 2, 3, 4] and 0 <= card["final_probe"]["lines_right"] <= 1
    continued = base.parent / f"{base.name}-build" / "continued"
    assert (base / "model.safetensors").read_bytes() == (continued / "model.safetensors").read_bytes()
    assert set(card["probes"][0]["teacher_forced"]) == {"choice", "copy_inputs", "copy_name", "copy_definition",
                                                         "copy_operator", "look_up_value", "arithmetic",
                                                         "value_fact", "value_result"}
    assert (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file()
    assert card["recipe"]["base"]["tasks"] == 40 and card["parameters"] > 0
    # the copying warm-up ran first, and the problem language started from its model
    assert [r["step"] for r in card["copying_loss"]] == [1, 2]
    build = tmp_path / "base-build"
    assert (build / "copying" / "config.json").is_file()
    assert f"model: {build / 'copying'}" in (build / "train" / "rlkd_config.yaml").read_text()

    # one after another in this process, one torch thread
    assert main(["demo", "--config", str(recipe), "--output", str(out), "--set", "workers=1",
                 "--set", "threads=1"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.md'}" in printed

    # every model was trained through rlkd train and saved, with its run record
    for name in ("gsrm", "seed0/sft", "seed0/prime", *(f"seed0/{m}" for m in METHODS[1:])):
        assert (out / name / "config.json").is_file(), name
        assert json.loads((out / name / "rlkd_run.json").read_text())["launches"]
    # the RLKD runs scored completions with the trained GSRM (structure metrics were logged)
    rlkd_log = [json.loads(line) for line in (out / "seed0/sft_rlkd/metrics.jsonl").read_text().splitlines()]
    assert any("rewards/structure/mean" in row and "structure/student_steps" in row for row in rlkd_log)
    grpo_log = [json.loads(line) for line in (out / "seed0/sft_grpo/metrics.jsonl").read_text().splitlines()]
    assert not any("rewards/structure/mean" in row for row in grpo_log)
    assert (out / "data/gsrm_prompt.txt").is_file()
    # the oracle arm's structure reward came from the rule decomposer, not the GSRM
    assert "decomposer: rule" in (out / "seed0/sft_rlkd_oracle/rlkd_config.yaml").read_text()
    assert "decomposer: gsrm" in (out / "seed0/sft_rlkd/rlkd_config.yaml").read_text()

    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {*METHODS, "prime"}
    for method in METHODS:
        for split in ("id", "ood"):
            p1 = results["methods"][method][split]["pass_at_1"]
            assert p1["ci_low"] <= p1["mean"] <= p1["ci_high"]
    assert {(c["a"], c["b"]) for c in results["comparisons"]} >= {("sft_rlkd", "sft_grpo"), ("rlkd_zero", "grpo_zero")}
    assert all(c["verdict"] for c in results["comparisons"])
    for method in METHODS[1:]:
        d = results["diagnostics"][method]
        assert 0.0 <= d["zero_spread_share"] <= 1.0 and set(d["change"]) == {"id", "ood"}
    assert sum(results["diagnostics"]["sft_rlkd_oracle"]["first_mismatch"].values()) == 4  # 1 step x 4 completions
    assert results["diagnostics"]["sft_grpo"]["first_mismatch"] is None
    assert 0.0 <= results["gsrm"]["step_accuracy"]["id"] <= 1.0
    for method in results["methods"].values():
        metrics = method["seeds"]["0"]
        for split in ("id", "ood"):
            assert 0.0 <= metrics[split]["pass@1"] <= metrics[split]["pass@k"]["2"] <= 1.0
            assert metrics[split]["problems"] == 2 and metrics[split]["n"] == 2
    # rlkd eval's own outputs, per method and split
    samples = [json.loads(line) for line in (out / "eval/seed0/sft/id/samples.jsonl").read_text().splitlines()]
    assert sorted((s["id"], s["sample"]) for s in samples) == [("id-1-0", 0), ("id-1-0", 1), ("id-1-1", 0),
                                                                ("id-1-1", 1)]
    assert json.loads((out / "eval/seed0/sft_rlkd/ood/summary.json").read_text())["n"] == 2
    assert results["gsrm"]["heldout"]["id"]["rule"]["exact"] == 1.0  # the rule decomposer is exact on the oracle
    assert results["gsrm"]["heldout"]["id"]["gsrm"]["traces"] == 2
    assert results["data"] == {"train": 8, "test_id": 2, "test_ood": 2, "gsrm_train": 8, "gsrm_test": 2, "zero": 2}
    band = results["gsrm"]["step_accuracy_ci"]["id"]
    assert band["ci_low"] <= results["gsrm"]["step_accuracy"]["id"] == band["mean"] <= band["ci_high"]
    assert results["gsrm"]["students"]["traces"] == 2
    assert results["example"]["teacher_steps"]
    for name in ("report.md", "report.html", "accuracy.png", "pass_at_k.png", "alignment.png", "training.png"):
        assert (out / "report" / name).stat().st_size > 0, name

    # the same recipe on two worker processes side by side, one thread each: the same models, so the
    # same completions and the same results; each stage's output went to its log file
    side = tmp_path / "side"
    assert main(["demo", "--config", str(recipe), "--output", str(side), "--set", "workers=2",
                 "--set", "threads=1"]) == 0
    for path in sorted((out / "eval").rglob("samples.jsonl")):
        assert (side / path.relative_to(out)).read_text() == path.read_text(), path
    twin = json.loads((side / "results.json").read_text())
    assert twin["methods"] == results["methods"] and twin["comparisons"] == results["comparisons"]
    assert twin["machine"]["workers"] == 2 and results["machine"]["workers"] == 1
    assert "rlkd train sft" in (side / "logs" / "seed0-sft.log").read_text()
    assert not (out / "logs").exists()

    # a second run resumes: every stage with outputs is skipped, the report is written again
    assert main(["demo", "--config", str(recipe), "--output", str(out)]) == 0
    stages = json.loads((out / "stages.json").read_text())
    skipped = [name for name, record in stages.items() if record.get("skipped")]
    assert len(skipped) == 19 and any(name.startswith("GSRM: rlkd train sft") for name in skipped)
    assert main(["demo", "--config", str(recipe), "--output", str(out), "--report-only"]) == 0


def test_report_only_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "nothing"), "--report-only"]) == 2
    assert "results.json: no results to report" in capsys.readouterr().err


def test_experiment_counts_its_stages(tmp_path):
    job = load_demo_job(None, [f"output={tmp_path / 'x'}", "seeds=[0, 1]"])
    # data, models, GSRM, GSRM eval; per seed: SFT, prime, 5 RL, 7 evals (6 methods and the prime);
    # GSRM student check, report
    assert Experiment(job).stages.total == 4 + 2 * 14 + 2


def test_the_plan_lists_each_stage_after_what_it_needs(tmp_path):
    experiment = Experiment(load_demo_job(None, [f"output={tmp_path / 'x'}", "seeds=[0, 1]"]))
    plan = experiment.plan()
    seen: set[str] = set()
    for work in plan:
        assert set(work.needs) <= seen, work.key
        seen.add(work.key)
    needs = {w.key: set(w.needs) for w in plan}
    assert needs["seed1/sft_rlkd"] == {"seed1/sft", "gsrm"} and needs["seed1/rlkd_zero"] == {"seed1/prime", "gsrm"}
    # the outcome and oracle arms do not wait for the GSRM
    assert needs["seed0/sft_grpo"] == {"seed0/sft"} and needs["seed0/sft_rlkd_oracle"] == {"seed0/sft"}
    assert needs["gsrm_student_check"] == {"gsrm", "eval/seed0/sft"}


@pytest.mark.parametrize("methods, trained, evaluated", [
    ("[grpo_zero]", {"prime", "grpo_zero"}, {"grpo_zero", "prime"}),
    ("[sft_rlkd_oracle]", {"sft", "sft_rlkd_oracle"}, {"sft_rlkd_oracle"}),
    ("[sft, rlkd_zero]", {"sft", "prime", "rlkd_zero"}, {"sft", "rlkd_zero", "prime"}),
])
def test_a_subset_of_methods_plans_only_the_models_it_needs(tmp_path, methods, trained, evaluated):
    experiment = Experiment(load_demo_job(None, [f"output={tmp_path / 'x'}", "seeds=[3]", f"methods={methods}"]))
    keys = {w.key for w in experiment.plan()}
    assert {k.split("/")[1] for k in keys if k.startswith("seed3/")} == trained
    assert {k.split("/")[2] for k in keys if k.startswith("eval/")} == evaluated


@pytest.mark.parametrize("workers, cores, gpu, expected", [(0, 2, False, (2, 1)), (0, 16, False, (4, 4)),
                                                           (0, 1, False, (1, 0)), (0, 8, True, (1, 0)),
                                                           (1, 8, False, (1, 0)), (3, 8, False, (3, 2))])
def test_parallelism_follows_the_cores(tmp_path, monkeypatch, workers, cores, gpu, expected):
    import os

    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    job = load_demo_job(None, [f"output={tmp_path / 'x'}", f"workers={workers}"])
    assert Experiment(job).parallelism() == expected


def _plan_runner(folder: str):
    """A worker's runner for the run_plan tests: records each action's start and end, fails on 'bad'."""
    import time as clock

    def run(action):
        (name,) = action
        with open(Path(folder) / "events.txt", "a") as f:
            f.write(f"start {name} {clock.monotonic()}\n")
        print(f"output of {name}")
        if name == "a":  # waits until c runs beside it, on the other worker
            waited = 0.0
            while "start c" not in (Path(folder) / "events.txt").read_text():
                assert waited < 60, "c never started beside a"
                clock.sleep(0.1)
                waited += 0.1
        clock.sleep(1.5 if name == "slow" else 0.3)
        if name == "bad":
            raise ValueError("bad stage")
        with open(Path(folder) / "events.txt", "a") as f:
            f.write(f"end {name} {clock.monotonic()}\n")

    return run


def test_a_resumed_stage_made_by_other_code_is_kept_with_a_warning(tmp_path, caplog, monkeypatch):
    import rlkd.experiment.stages as stages_module
    from rlkd.experiment.stages import Stages

    def run(stages):
        with stages.stage("train", tmp_path / "out") as todo:
            if todo:
                (tmp_path / "out").mkdir(exist_ok=True)
                (tmp_path / "out" / "model.txt").write_text("weights", encoding="utf-8")
        return todo

    assert run(Stages(tmp_path, 1))
    assert Stages.done_info(tmp_path / "out")["code"] == stages_module.code_fingerprint()

    def warnings():
        return [r for r in caplog.records if r.levelno >= logging.WARNING]

    with caplog.at_level(logging.INFO, logger="rlkd.experiment"):
        assert not run(Stages(tmp_path, 1))  # same code: skipped, no warning
        assert not warnings()
        monkeypatch.setattr(stages_module, "code_fingerprint", lambda: "0123abcd4567")
        assert not run(Stages(tmp_path, 1))  # other code: still skipped, the outputs kept, and said
    (warning,) = warnings()
    assert "[1/1] train: its outputs were made by other rlkd code" in warning.getMessage()
    assert "now 0123abcd4567" in warning.getMessage() and "--fresh" in warning.getMessage()
    assert (tmp_path / "out" / "model.txt").read_text(encoding="utf-8") == "weights"


def test_run_plan_side_by_side_keeps_the_order_and_the_work_of_a_failure(tmp_path, caplog):
    from rlkd.experiment.stages import Stages, Work, run_plan

    def work(key, *needs):
        return Work(key, f"stage {key}", tmp_path / key, "k", (key,), needs)

    plan = [work("a"), work("b", "a"), work("c"), work("d", "b", "c")]
    stages = Stages(tmp_path, len(plan))
    with caplog.at_level(logging.INFO, logger="rlkd.experiment"):
        run_plan(stages, plan, None, workers=2, worker_setup=_plan_runner, setup_args=(str(tmp_path),),
                 logs=tmp_path / "logs", heartbeat=0.1)
    # while the workers run, the log says which stages are running and how far the plan is
    beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("running: ")]
    assert beats and all(re.search(r"stage [abcd] \(0:0\d\)", b) for b in beats)
    assert re.search(r"; [0-3] of 4 stages finished \(run so far 0:\d\d\)$", beats[0])
    events = {}
    for line in (tmp_path / "events.txt").read_text().splitlines():
        what, name, when = line.split()
        events[what, name] = float(when)
    assert events["start", "b"] >= events["end", "a"] and events["start", "d"] >= max(events["end", "b"],
                                                                                      events["end", "c"])
    assert all(Stages.is_done(tmp_path / k) for k in "abcd")
    assert (tmp_path / "logs" / "b.log").read_text() == "output of b\n"
    # a second run skips what is done
    (tmp_path / "events.txt").unlink()
    run_plan(Stages(tmp_path, len(plan)), plan, None, workers=2, worker_setup=_plan_runner,
             setup_args=(str(tmp_path),), logs=tmp_path / "logs")
    assert not (tmp_path / "events.txt").exists()
    # a resumed run's heartbeat tells the stages it skipped from those it finished
    shutil.rmtree(tmp_path / "d")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlkd.experiment"):
        run_plan(Stages(tmp_path, len(plan)), plan, None, workers=2, worker_setup=_plan_runner,
                 setup_args=(str(tmp_path),), logs=tmp_path / "logs", heartbeat=0.1)
    beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("running: ")]
    assert beats and all(re.fullmatch(r"running: stage d \(0:0\d\); 3 of 4 stages finished, 3 of them by an "
                                      r"earlier run \(run so far 0:\d\d\)", b) for b in beats)
    assert (tmp_path / "events.txt").read_text().split()[:2] == ["start", "d"]

    # a failing stage: the one running beside it finishes and is kept, nothing after it starts
    other = tmp_path / "other"
    other.mkdir()
    plan = [Work("bad", "bad", other / "bad", "k", ("bad",)), Work("ok", "ok", other / "ok", "k", ("slow",)),
            Work("after", "after", other / "after", "k", ("after",), ("bad",)),
            Work("later", "later", other / "later", "k", ("later",))]
    with pytest.raises(ValueError, match="bad stage"):
        run_plan(Stages(other, 4), plan, None, workers=2, worker_setup=_plan_runner, setup_args=(str(other),),
                 logs=other / "logs")
    assert Stages.is_done(other / "ok") and not Stages.is_done(other / "bad")
    assert "end slow" in (other / "events.txt").read_text()
    assert "after" not in (other / "events.txt").read_text() and "later" not in (other / "events.txt").read_text()


_INTERRUPTED_RUNNER = """
import os, time
from pathlib import Path

def setup(folder):
    with open(Path(folder) / "pids.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")
    def run(action):
        (name,) = action
        with open(Path(folder) / "events.txt", "a") as f:
            f.write(f"start {name}\\n")
        time.sleep(0.2 if name == "quick" else 120)
    return run
"""

_INTERRUPTED_PLAN = """
import signal, sys
# a shell's background job (nohup, '&') starts with SIGINT ignored, and so does every process it starts:
# restore Ctrl-C's handler here, as a terminal has it; the workers keep ignoring it, so the run must stop them
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from rlkd.experiment.stages import Stages, Work, run_plan
from interrupted_runner import setup

if __name__ == "__main__":
    root = Path(sys.argv[1])
    plan = [Work(k, k, root / k, "k", (k,), needs) for k, needs in
            (("quick", ()), ("long", ()), ("next", ("quick",)), ("last", ("long",)))]
    run_plan(Stages(root, 4), plan, None, workers=2, worker_setup=setup, setup_args=(str(root),), logs=root / "logs")
"""


def test_ctrl_c_during_side_by_side_stages_keeps_what_finished_and_stops_the_workers(tmp_path):
    """Ctrl-C in a terminal interrupts the whole process group: the run stops at once, the finished stage
    stays marked done (a re-run skips it), the interrupted ones are not, and no worker is left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rlkd.experiment.stages import Stages

    (tmp_path / "interrupted_runner.py").write_text(_INTERRUPTED_RUNNER)
    (tmp_path / "plan.py").write_text(_INTERRUPTED_PLAN)
    events = tmp_path / "events.txt"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "plan.py"), str(tmp_path)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (events.exists() and {"start long", "start next"} <= set(events.read_text().split("\n"))):
            assert time.monotonic() < deadline and proc.poll() is None, "the stages never ran side by side"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)  # the stages would sleep for 120 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "KeyboardInterrupt" in output
    assert Stages.is_done(tmp_path / "quick")
    assert not any(Stages.is_done(tmp_path / k) for k in ("long", "next", "last"))
    assert "start last" not in events.read_text()
    pids = [int(p) for p in (tmp_path / "pids.txt").read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        while status.exists() and "State:\tZ" not in status.read_text():  # a zombie has exited
            assert time.monotonic() < deadline, f"worker {pid} outlived the interrupted run"
            time.sleep(0.1)


def test_resuming_with_another_recipe_is_refused(tmp_path):
    from rlkd.cli import CliError
    job = load_demo_job(None, [f"output={tmp_path}"])
    (tmp_path / "config.yaml").write_text(dump_yaml(job), encoding="utf-8")
    Experiment(load_demo_job(None, [f"output={tmp_path}", "seeds=[0, 1, 2, 3]"]))  # more seeds: resumable
    Experiment(load_demo_job(None, [f"output={tmp_path}", "workers=1", "threads=2"]))  # how it runs: resumable
    with pytest.raises(CliError, match=r"another recipe \(changed: rl.max_steps\)"):
        Experiment(load_demo_job(None, [f"output={tmp_path}", "rl.max_steps=9"]))


def test_fresh_refuses_to_delete_a_folder_that_is_not_a_run(tmp_path):
    from rlkd.cli import CliError

    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(CliError, match="not a demo run folder"):
        Experiment(load_demo_job(None, [f"output={tmp_path}"]), fresh=True)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_demo_recipe_spells_out_the_built_in_defaults():
    assert load_demo_job(REPO / "configs" / "demo" / "demo.yaml") == load_demo_job(None)


def test_training_sections_follow_the_device():
    import torch

    from rlkd.experiment.measurements import _training_for_device

    job = load_demo_job(None)
    on_cpu = _training_for_device(job.sft, "cpu")
    assert (on_cpu.use_cpu, on_cpu.bf16) == (True, False)
    auto = _training_for_device(job.rl, "auto")
    assert auto.use_cpu is (not torch.cuda.is_available())
    assert job.rl.use_cpu is True  # the recipe's section itself is not changed


def test_the_base_probe_checks_each_computation_in_any_order():
    from rlkd.experiment import check_computations
    from rlkd.testbed import base_text, generate_tasks

    task = generate_tasks(1, seed=0)[0]
    sentences = [s for s in re.split(r"(?<=\.) ", base_text(task).split(": ", 1)[1]) if " = " in s]
    assert len(sentences) == 4
    shuffled = " ".join(reversed(sentences))
    assert check_computations(task, shuffled) == {name: (True, True) for name in ("lev", "hov", "hub", "pot")}
    # a wrong look-up with the right result, a wrong result, a name the problem does not define
    assert check_computations(task, "lev = zor + cod, zor is 2, cod is 2, so lev is 4. hov = lev - dag, lev is 4, "
                                    "dag is 2, so hov is 3. cup = zor + cod, zor is 1, cod is 1, so cup is 2.") \
        == {"lev": (False, True), "hov": (False, False)}
    # the inputs sentences and the opening are not computations
    assert check_computations(task, "Every quantity: lev needs zor and cod.") == {}


def test_the_base_probe_splits_value_look_ups_by_where_the_value_is_found():
    from rlkd.experiment.base import count_values
    from rlkd.testbed import base_text, generate_tasks

    task = generate_tasks(1, seed=0)[0]  # facts zor 1, cod 3, dag 2, bim 7; results lev 4, hov 2
    problem, rest = base_text(task).split("\n")
    words = problem.replace(".", " .").replace(",", " ,").split() + ["\n"] + \
        rest.replace(".", " .").replace(",", " ,").replace(":", " :").split()
    pieces = ["\u0120" + w for w in words]  # a byte-level tokenizer's pieces: the space mark before a word
    ids = list(range(len(words)))
    start = words.index("\n") + 1
    predicted = [i + 1 for i in ids]  # every next token right...
    wrong = [i for i in range(start, len(words)) if words[i] == "2" and words[i - 2] == "dag"]
    for i in wrong:
        predicted[i - 1] = -1  # ...but dag's value, each time it is looked up
    hits: dict = {}
    count_values(task, pieces, ids, predicted, start, hits)
    # facts: zor, cod (lev), dag (hov), bim (hub), dag, zor (pot); results: lev (hov), hov (hub)
    assert hits == {"value_fact": [6 - len(wrong), 6], "value_result": [2, 2]} and len(wrong) == 2


def test_a_warm_up_whose_copy_did_not_form_stops_the_build(tmp_path):
    """The warm-up's last logged loss above base.copying_max_loss stops the build before the problem
    language, naming the stage and the field; at or below it, or with null, the build goes on."""
    from rlkd.errors import RlkdError
    from rlkd.experiment.base import _check_copying

    stage = tmp_path / "copying"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text('{"step": 50, "loss": 1.1}\n{"step": 4000, "loss": 4.26}\n'
                                         '{"step": 4000, "train_loss": 4.3}\n')
    with pytest.raises(RlkdError, match=r"copying: the copying warm-up ended at loss 4.26 > base.copying_max_loss 3"):
        _check_copying(stage, 3.0)
    _check_copying(stage, None)
    _check_copying(stage, 4.5)
    (stage / "metrics.jsonl").write_text('{"step": 4000, "loss": 1.09}\n')
    _check_copying(stage, 3.0)
