"""The experiment end to end: :class:`Experiment` runs the stages (data, models, GSRM, every seed's arms,
evaluation, the report) into one run folder, resumable."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from rlkd.config import GRPOJob, SFTJob, SFTTraining
from rlkd.errors import InputError
from rlkd.files import iter_jsonl
from rlkd.models import load_tokenizer, resolve_model
from rlkd.recipes import dump_yaml
from rlkd.templates import DOMAINS
from rlkd.testbed import alignment, rule_decompose, token_stats, whole_word_check, write_dataset
from rlkd.train import train_job

from rlkd.experiment.measurements import _alignment_summary, _flatten, _read_metrics, _training_for_device, evaluate_gsrm, evaluate_model, machine_info, rl_signal
from rlkd.experiment.recipe import COMPARISONS, DemoJob, METHODS, RESULTS_FILE, RL_PLAN, SPLITS, STAGES_FILE
from rlkd.experiment.stages import Stages, Work, run_plan
from rlkd.experiment.tasks import _write_jsonl, gsrm_sft_rows, make_tasks, write_gsrm_prompt

log = logging.getLogger("rlkd.experiment")

# --------------------------------------------------------------------------------------------------
# The experiment


def _worker_runner(job: DemoJob) -> Any:
    """A worker process's runner (:func:`rlkd.experiment.stages.run_plan`): an :class:`Experiment` of the
    same recipe, its task sets rebuilt (deterministic), that executes the stage actions it is sent."""
    experiment = Experiment(job)
    experiment.tasks = make_tasks(job.data)
    return experiment.do


class Experiment:
    """One run of the experiment in ``job.output``; :meth:`run` executes (or skips) every stage."""

    def __init__(self, job: DemoJob, fresh: bool = False) -> None:
        self.job = job
        self.root = Path(job.output)
        self.fresh = fresh
        if fresh and self.root.exists():
            if any(self.root.iterdir()) and not (self.root / STAGES_FILE).exists():
                raise InputError(f"--fresh: {self.root} is not empty and is not a demo run folder (no {STAGES_FILE}); "
                               "not deleting it")
            shutil.rmtree(self.root)
        self._check_same_recipe()
        self.root.mkdir(parents=True, exist_ok=True)
        self.stages = Stages(self.root, len(self.plan()) + 3, fresh)  # + data, models and the report
        self.tasks: dict[str, list[Any]] = {}

    def _check_same_recipe(self) -> None:
        """A resumed run must use the recipe it started with (seeds may be added, the output moved)."""
        saved = self.root / "config.yaml"
        if not saved.exists():
            return
        import yaml

        before = _flatten(yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
        now = _flatten(dataclasses.asdict(self.job))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)
                         and k not in ("output", "seeds", "workers", "threads"))
        if changed:
            raise InputError(f"{self.root} holds a run made with another recipe (changed: {', '.join(changed[:8])}"
                           f"{' ...' if len(changed) > 8 else ''}); use --fresh to start over or another --output")

    # ---- paths

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def model_dir(self, seed: int, name: str) -> Path:
        return self.path(f"seed{seed}", name)

    # ---- stages

    def run(self) -> dict[str, Any]:
        """Run every stage; return the results (also written to ``results.json``) and write the report."""
        started = time.monotonic()
        job = self.job
        (self.root / "config.yaml").write_text(dump_yaml(job), encoding="utf-8")
        self.stage_data()
        self.stage_models()
        workers, threads = self.parallelism()
        if workers > 1:
            log.info("the stages run on %d worker processes, %d torch thread(s) each (workers, threads)", workers,
                     threads)
        run_plan(self.stages, self.plan(), self.do, workers=workers, threads=threads,
                 worker_setup=_worker_runner, setup_args=(self.job,), logs=self.path("logs"))
        gsrm_eval = json.loads(self.path("gsrm_eval", "summary.json").read_text(encoding="utf-8"))
        check_path = self.path("gsrm_student_check", "summary.json")
        check = json.loads(check_path.read_text(encoding="utf-8")) if check_path.exists() else None
        results = self.collect(gsrm_eval, check, time.monotonic() - started, workers, threads)
        self.stage_report(results)
        return results

    def parallelism(self) -> tuple[int, int]:
        """(worker processes, torch threads each) from ``workers`` and ``threads``; ``workers: 0`` is one
        worker per usable core, at most 4, on the CPU, and one on a GPU; ``threads: 0`` shares the cores
        among the workers (one worker: torch's default)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = self.job.workers
        if workers == 0:
            import torch

            on_gpu = self.job.device == "auto" and torch.cuda.is_available()
            workers = 1 if on_gpu else max(1, min(4, cores))
        threads = self.job.threads
        if threads == 0 and workers > 1:  # one worker and threads 0: torch's default
            threads = max(1, cores // workers)
        return workers, threads

    def stage_data(self) -> None:
        with self.stages.stage("data: testbed tasks and training files", self.path("data"), "data and models") as todo:
            self.tasks = make_tasks(self.job.data)  # deterministic: rebuilt on a resumed run too
            if todo:
                self._write_data()

    def _write_data(self) -> None:
        d = self.path("data")
        t = self.tasks
        write_dataset(t["train"], d / "train.jsonl")
        write_dataset(t["test_id"], d / "test_id.jsonl")
        write_dataset(t["test_ood"], d / "test_ood.jsonl")
        write_dataset(self.zero_tasks(), d / "zero.jsonl")
        _write_jsonl(d / "gsrm_train.jsonl", gsrm_sft_rows(t["gsrm"], self.gsrm_prompt(), self.job.data.gsrm_prefixes))

    def gsrm_prompt(self) -> str:
        """The GSRM prompt as :class:`rlkd.gsrm.Decomposer` takes it: a domain name or a prompt file."""
        if self.job.gsrm_prompt == "testbed":
            path = self.path("data", "gsrm_prompt.txt")
            if not path.exists():
                write_gsrm_prompt(path)
            return str(path.resolve())
        if self.job.gsrm_prompt in DOMAINS:
            return self.job.gsrm_prompt
        if not Path(self.job.gsrm_prompt).is_file():
            raise InputError(f"gsrm_prompt: {self.job.gsrm_prompt}: no such prompt file (or use testbed or a domain)")
        return str(Path(self.job.gsrm_prompt).resolve())

    def zero_count(self) -> int:
        """How many of the training tasks the zero arms are primed and trained on."""
        return max(1, math.ceil(self.job.data.zero_fraction * self.job.data.train))

    def zero_tasks(self) -> list[Any]:
        return self.tasks["train"][: self.zero_count()]

    def stage_models(self) -> None:
        """Check the models every arm starts from: the base student (shipped, or rebuilt with
        ``rlkd demo --build-base``) unless the recipe names other models, and record token statistics."""

        with self.stages.stage("models: the base student and its tokenizer", self.path("models"),
                               "data and models") as todo:
            if not todo:
                return
            for field, name in (("student_model", self.student_model()), ("gsrm_model", self.gsrm_model())):
                if name == self.job.base.path and not (Path(name) / "config.json").is_file():
                    raise InputError(f"base.path: {name}: no base student there. Rebuild it with "
                                   f"`rlkd demo --build-base` (see docs/demo-results.md), or set student_model")
                try:
                    resolve_model(name)  # a .gguf file is converted once here, not in every stage
                except OSError as exc:
                    raise InputError(f"{field}: {exc}") from None
            tokenizer = load_tokenizer(self.student_model())
            stats: dict[str, Any] = {name: token_stats(self.tasks[name], tokenizer)
                                     for name in ("train", "test_id", "test_ood")}
            stats["split_words"] = whole_word_check(tokenizer)
            self.path("models").mkdir(parents=True, exist_ok=True)
            (self.path("models") / "token_stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")

    def student_model(self) -> str:
        """The model every student starts from: ``student_model``, else the base student."""
        return self.job.student_model or self.job.base.path

    def gsrm_model(self) -> str:
        """The model the GSRM is fine-tuned from: ``gsrm_model``, else the base student."""
        return self.job.gsrm_model or self.job.base.path

    # ---- the plan: every stage after the data and the models, with what each needs

    def plan(self) -> list[Work]:
        """The stages between the models and the report, each after the stages it needs: the GSRM and its
        check, then per seed SFT, the zero arms' priming, the RL arms and every evaluation, then the GSRM
        on student completions. A sequential run takes them in this order."""
        job = self.job
        methods, starts = job.methods, self.starting_points()
        plan = [Work("gsrm", "GSRM: rlkd train sft on (narrative, decomposition) pairs", self.path("gsrm"),
                     "GSRM training", ("gsrm",)),
                Work("gsrm_eval", "GSRM accuracy on held-out teacher traces", self.path("gsrm_eval"),
                     "GSRM checks", ("gsrm_eval",), ("gsrm",))]
        for seed in job.seeds:
            if "sft" in starts:
                plan.append(Work(f"seed{seed}/sft", f"seed {seed}: SFT on {job.data.train} teacher traces",
                                 self.model_dir(seed, "sft"), "SFT", ("sft", seed)))
            if "prime" in starts:
                plan.append(Work(f"seed{seed}/prime", f"seed {seed}: format priming for the zero arms "
                                 f"({self.zero_count()} traces)", self.model_dir(seed, "prime"),
                                 "zero-arm priming", ("prime", seed)))
            for method in methods:
                if method not in RL_PLAN:
                    continue
                start, reward_set, _, decomposer = RL_PLAN[method]
                needs = (f"seed{seed}/{start}",) + (("gsrm",) if reward_set == "rlkd" and decomposer == "gsrm"
                                                    else ())
                plan.append(Work(f"seed{seed}/{method}", f"seed {seed}: {METHODS[method][0]} (GRPO, reward set "
                                 f"'{reward_set}')", self.model_dir(seed, method), METHODS[method][0],
                                 ("grpo", seed, method), needs))
            for method in self.evaluated():
                label = METHODS[method][0] if method in METHODS else "the primed base (the zero arms' start)"
                plan.append(Work(f"eval/seed{seed}/{method}", f"seed {seed}: evaluate {label} on id and ood",
                                 self.path("eval", f"seed{seed}", method), "evaluation", ("evaluate", seed, method),
                                 (f"seed{seed}/{method}",)))
        count = job.eval.gsrm_student_check
        if count > 0:
            seed, method = job.seeds[0], self.student_check_source()
            plan.append(Work("gsrm_student_check", f"GSRM on {count} student completions vs the rule decomposer",
                             self.path("gsrm_student_check"), "GSRM checks", ("gsrm_student_check",),
                             ("gsrm", f"eval/seed{seed}/{method}")))
        return plan

    def do(self, action: tuple[Any, ...]) -> None:
        """Execute one stage of :meth:`plan` (its ``action``), in this process."""
        what, *args = action
        if what == "gsrm":
            self._sft("GSRM", self.gsrm_model(), self.path("gsrm"), self.path("data", "gsrm_train.jsonl"),
                      self.job.gsrm_training, self.job.data.seed, chat=True)
        elif what == "gsrm_eval":
            self._gsrm_eval(self.path("gsrm_eval"))
        elif what == "sft":
            (seed,) = args
            self._sft("SFT", self.student_model(), self.model_dir(seed, "sft"), self.path("data", "train.jsonl"),
                      self.job.sft, seed)
        elif what == "prime":
            (seed,) = args
            self._sft("prime", self.student_model(), self.model_dir(seed, "prime"), self.path("data", "zero.jsonl"),
                      self.job.prime, seed)
        elif what == "grpo":
            seed, method = args
            start, reward_set, data_file, decomposer = RL_PLAN[method]
            self._grpo(method, self.model_dir(seed, start), self.model_dir(seed, method),
                       self.path("data", data_file), reward_set, seed, decomposer)
        elif what == "evaluate":
            seed, method = args
            self._evaluate(seed, method, self.path("eval", f"seed{seed}", method))
        elif what == "gsrm_student_check":
            self._gsrm_student_check(self.path("gsrm_student_check"))
        else:
            raise ValueError(f"unknown stage action {action!r}")

    def evaluated(self) -> list[str]:
        """The models evaluated per seed: every method, and ``prime`` (the zero arms' starting point) when a
        zero arm runs, so each RL arm's change is measured against where it started."""
        return list(self.job.methods) + (["prime"] if "prime" in self.starting_points() else [])

    def starting_points(self) -> set[str]:
        """The models the recipe's methods need trained per seed: ``sft`` (a method itself, or the start of
        the SFT-then-RL arms) and ``prime`` (the zero arms' start)."""
        methods = self.job.methods
        return {"sft"} & set(methods) | {RL_PLAN[m][0] for m in methods if m in RL_PLAN}

    def student_check_source(self) -> str:
        """The method whose completions the GSRM student check reads (SFT when it runs)."""
        return "sft" if "sft" in self.job.methods else self.job.methods[0]

    # ---- what the stages do

    def _sft(self, name: str, model: Path | str, output: Path, data: Path, training: SFTTraining, seed: int,
             chat: bool = False) -> None:
        t = _training_for_device(training, self.job.device)
        t.seed = seed
        job = SFTJob(model=str(model), output_dir=str(output), resume="auto")
        job.data.path = str(data)
        job.data.system_prompt = self.job.system_prompt
        job.data.solution_column = None
        if chat:
            job.data.format = "chat"
        job.training = t
        log.info("%s: rlkd train sft (%s -> %s)", name, model, output)
        train_job(job, argv=["rlkd demo", "sft", job.output_dir])

    def _gsrm_eval(self, out: Path) -> None:
        summary: dict[str, Any] = {}
        for split in SPLITS:
            tasks = self.tasks[f"gsrm_test_{split}"]
            if not tasks:
                continue
            items = [(t.problem, t.trace, rule_decompose(t.trace)) for t in tasks]
            max_tokens = self.job.structure.gsrm_max_tokens * (2 if split == "ood" else 1)
            measured = evaluate_gsrm(self.path("gsrm"), items, max_tokens=max_tokens,
                                     batch_size=self.job.eval.batch_size, prompt=self.gsrm_prompt(),
                                     desc=f"GSRM {split}", n_boot=self.job.eval.bootstrap)
            rule = _alignment_summary([alignment(rule_decompose(t.trace), t.decomposition) for t in tasks])
            summary[split] = {"gsrm": measured["summary"], "rule": rule}
            _write_jsonl(out / f"{split}.jsonl", measured["records"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    def _grpo(self, method: str, model: Path, output: Path, data: Path, reward_set: str, seed: int,
              decomposer: str = "gsrm") -> None:
        t = _training_for_device(self.job.rl, self.job.device)
        t.seed = seed
        structure = dataclasses.replace(self.job.structure, decomposer=decomposer)
        structure.gsrm = dataclasses.replace(structure.gsrm, local_model=str(self.path("gsrm")), base_url=None,
                                             local_batch_size=max(structure.gsrm.local_batch_size,
                                                                  t.per_device_train_batch_size))
        # every scored completion goes to the sample log: the first-mismatch histogram is read from it
        structure.samples_per_step = t.per_device_train_batch_size

        prompt = self.gsrm_prompt()  # the prompt the GSRM was trained on: a packaged domain or a file
        if prompt in DOMAINS:
            structure.domain, structure.gsrm_prompt = prompt, None
        else:
            structure.gsrm_prompt = prompt
        job = GRPOJob(model=str(model), output_dir=str(output), resume="auto", structure=structure, training=t)
        job.data.path = str(data)
        job.data.system_prompt = self.job.system_prompt
        job.rewards.set = reward_set
        log.info("%s: rlkd train grpo with reward set '%s' (%s -> %s)", METHODS[method][0], reward_set, model, output)
        train_job(job, argv=["rlkd demo", "grpo", job.output_dir])

    def _evaluate(self, seed: int, method: str, out: Path) -> None:
        e = self.job.eval
        metrics = {}
        for split, name, max_tokens in (("id", "test_id", e.max_tokens_id), ("ood", "test_ood", e.max_tokens_ood)):
            log.info("%s seed %d: rlkd eval on the %s split", method, seed, split)
            metrics[split] = evaluate_model(
                self.model_dir(seed, method), self.tasks[name], self.path("data", f"{name}.jsonl"), out / split,
                n=e.n, max_tokens=max_tokens, temperature=e.temperature, top_p=e.top_p, seed=seed,
                batch_size=e.batch_size, system_prompt=self.job.system_prompt)
            m = metrics[split]
            log.info("%s seed %d %s: pass@1 %.3f, format %.2f, meta prefix %.2f", method, seed, split,
                     m["pass@1"], m["format"], m["alignment"]["meta_prefix_share"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")

    def _gsrm_student_check(self, out: Path) -> None:
        """The GSRM on student completions (what it sees during RL), against the rule decomposer."""
        count = self.job.eval.gsrm_student_check
        seed, method = self.job.seeds[0], self.student_check_source()
        source = self.path("eval", f"seed{seed}", method, "id", "samples.jsonl")
        by_id = {t.id: t for t in self.tasks["test_id"]}
        items = []
        for _, row in iter_jsonl(source):
            if row["sample"] == 0:  # the first completion of each problem
                items.append((by_id[row["id"]].problem, row["completion"], rule_decompose(row["completion"])))
            if len(items) >= count:
                break
        measured = evaluate_gsrm(self.path("gsrm"), items, max_tokens=self.job.structure.gsrm_max_tokens,
                                 batch_size=self.job.eval.batch_size, prompt=self.gsrm_prompt(),
                                 desc="GSRM on students", n_boot=self.job.eval.bootstrap)
        measured["summary"]["source"] = f"{METHODS[method][0]} seed {seed}, id split, first completion per problem"
        _write_jsonl(out / "records.jsonl", measured["records"])
        (out / "summary.json").write_text(json.dumps(measured["summary"], indent=2), encoding="utf-8")

    # ---- results

    def collect(self, gsrm_eval: Mapping[str, Any], gsrm_student: Mapping[str, Any] | None,
                wall_s: float, workers: int = 1, threads: int = 0) -> dict[str, Any]:
        """Gather everything the report needs into one JSON-ready structure (see :mod:`rlkd.report`);
        ``workers`` and ``threads``: how the stages ran (recorded with the machine)."""
        from rlkd.statistics import paired_difference, summarize_scores, summarize_values, verdict

        job = self.job
        methods: dict[str, Any] = {}
        scores: dict[str, dict[str, Any]] = {}
        for method in self.evaluated():
            seeds = {}
            for seed in job.seeds:
                path = self.path("eval", f"seed{seed}", method, "metrics.json")
                if path.exists():
                    seeds[str(seed)] = json.loads(path.read_text(encoding="utf-8"))
            label, description = METHODS.get(method, ("primed base", "the zero arms' starting point: the base "
                                                      "briefly fine-tuned on their teacher traces"))
            methods[method] = {"label": label, "description": description, "seeds": seeds}
            scores[method] = {}
            for split in SPLITS:
                correct, per_sample = self._split_scores(method, split)
                if not correct:
                    continue
                scores[method][split] = correct
                summary = summarize_scores(correct, n_boot=self.job.eval.bootstrap, rng_seed=0)
                for key in ("format", "meta_prefix_share"):
                    summary[key] = summarize_values({s: {p: [r[key] for r in rows] for p, rows in by_problem.items()}
                                            for s, by_problem in per_sample.items()},
                                           n_boot=self.job.eval.bootstrap, rng_seed=0)
                methods[method][split] = summary
        comparisons = []
        for a, b in COMPARISONS:
            for split in SPLITS:
                if split in scores.get(a, {}) and split in scores.get(b, {}):
                    d = paired_difference(scores[a][split], scores[b][split], n_boot=self.job.eval.bootstrap,
                                          rng_seed=0)
                    comparisons.append({"a": a, "b": b, "split": split, "metric": "pass_at_1", **d,
                                        "verdict": verdict(methods[a]["label"], methods[b]["label"], split,
                                                           d["diff"], d["ci_low"], d["ci_high"])})
        training: dict[str, Any] = {}
        diagnostics: dict[str, Any] = {}
        for method in job.methods:
            if method not in RL_PLAN:
                continue
            training[method] = {str(seed): _read_metrics(self.model_dir(seed, method) / "metrics.jsonl")
                                for seed in job.seeds}
            start = RL_PLAN[method][0]
            change = {}
            for split in SPLITS:
                if split in scores.get(method, {}) and split in scores.get(start, {}):
                    d = paired_difference(scores[method][split], scores[start][split],
                                          n_boot=self.job.eval.bootstrap, rng_seed=0)
                    change[split] = {**d, "verdict": verdict(methods[method]["label"], methods[start]["label"],
                                                             split, d["diff"], d["ci_low"], d["ci_high"])}
            diagnostics[method] = {**rl_signal(training[method], [self.model_dir(seed, method) for seed in job.seeds]),
                                   "start": start, "change": change}
        stats_path = self.path("models", "token_stats.json")
        results = {
            "title": "RLKD on the synthetic multi-branch testbed",
            "config": dataclasses.asdict(job),
            "methods": methods,
            "comparisons": comparisons,
            "diagnostics": diagnostics,
            "training": training,
            "gsrm": {"heldout": dict(gsrm_eval), "students": dict(gsrm_student) if gsrm_student else None,
                     "step_accuracy": {split: v["gsrm"].get("step_accuracy") for split, v in gsrm_eval.items()},
                     "step_accuracy_ci": {split: v["gsrm"].get("step_accuracy_ci") for split, v in gsrm_eval.items()}},
            "token_stats": json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else None,
            "example": self.example(),
            "data": {"train": len(self.tasks["train"]), "test_id": len(self.tasks["test_id"]),
                     "test_ood": len(self.tasks["test_ood"]), "gsrm_train": len(self.tasks["gsrm"]),
                     "gsrm_test": len(self.tasks["gsrm_test_id"]), "zero": len(self.zero_tasks())},
            "stages": dict(self.stages.records),
            "wall_time_s": round(wall_s, 1),
            "machine": {**machine_info(), "workers": workers, "threads_per_worker": threads or None},
        }
        (self.root / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return results

    def _split_scores(self, method: str, split: str) -> tuple[dict[str, dict[str, list[bool]]],
                                                              dict[str, dict[str, list[dict[str, Any]]]]]:
        """Per seed and test problem: the n samples' correctness, and their per-sample format and
        alignment rows (``alignment.jsonl``), read from the evaluation folders."""
        correct: dict[str, dict[str, list[bool]]] = {}
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for seed in self.job.seeds:
            folder = self.path("eval", f"seed{seed}", method, split)
            if not (folder / "samples.jsonl").exists():
                continue
            by_problem: dict[str, list[bool]] = {}
            for _, sample in iter_jsonl(folder / "samples.jsonl"):
                by_problem.setdefault(str(sample["id"]), []).append(bool(sample["correct"]))
            correct[str(seed)] = by_problem
            per: dict[str, list[dict[str, Any]]] = {}
            for _, row in iter_jsonl(folder / "alignment.jsonl"):
                per.setdefault(str(row["id"]), []).append(row)
            rows[str(seed)] = per
        return correct, rows

    def example(self) -> dict[str, Any] | None:
        """One test problem with the teacher's steps and a student's (rule-decomposed) steps."""
        preferred = [m for m in ("sft_rlkd", "rlkd_zero", "sft_grpo", "sft") if m in self.job.methods]
        seed = self.job.seeds[0]
        by_id = {t.id: t for t in self.tasks["test_id"]}
        for method in preferred:
            path = self.path("eval", f"seed{seed}", method, "id", "samples.jsonl")
            if not path.exists():
                continue
            samples = [s for _, s in iter_jsonl(path) if s["sample"] == 0 and s["id"] in by_id]
            if not samples:
                continue

            def closeness(sample: Mapping[str, Any]) -> tuple[float, bool]:
                a = alignment(rule_decompose(sample["completion"]), by_id[sample["id"]].decomposition)
                return a["meta_prefix_share"], bool(sample["correct"])

            # the problem whose first sample lines up best with the oracle (ties: the first such problem)
            best = max(samples, key=closeness)
            task, text = by_id[best["id"]], best["completion"]
            return {"method": method, "label": METHODS[method][0], "seed": seed, "id": task.id,
                    "problem": task.problem, "answer": str(task.answer), "teacher_trace": task.trace,
                    "teacher_steps": task.decomposition.to_dict()["steps"], "student_trace": text,
                    "student_steps": rule_decompose(text).to_dict()["steps"], "correct": bool(best["correct"]),
                    "alignment": alignment(rule_decompose(text), task.decomposition),
                    "chosen": "the test problem where this student's first sample lines up best with the oracle"}
        return None

    def stage_report(self, results: Mapping[str, Any]) -> None:
        from rlkd.report import write_report

        with self.stages.stage("report: markdown, HTML and plots", kind="report"):
            write_report(results, self.path("report"))
