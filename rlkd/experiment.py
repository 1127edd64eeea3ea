"""The RLKD experiment in miniature on the synthetic testbed, and ``rlkd demo`` that runs it end to end.

On tasks whose true reasoning structure is known (:mod:`rlkd.testbed`), the experiment compares the
paper's methods under one recipe (:class:`DemoJob`, a YAML file in ``configs/demo/``):

1. **Data**: training, in-distribution test and out-of-distribution test tasks (structurally disjoint),
   plus separate tasks whose teacher traces train the GSRM.
2. **Base student**: a small Llama pretrained once on the testbed's problem language (problems and their
   computations, :func:`rlkd.testbed.base_text`; no meta-reasoning, no tags) with a tokenizer that keeps
   every name and number one token. The project ships it (``assets/testbed-base``); ``rlkd demo
   --build-base`` rebuilds it deterministically from the recipe (:func:`build_base`, resumable) and
   records when copying forms (:func:`probe_lookups` on every checkpoint). Every student and the GSRM
   start from it, as the paper's start from pretrained LMs.
3. **GSRM**: fine-tuned from the base by ``rlkd train sft`` (:func:`rlkd.train.train_job`) on (flat
   teacher narrative -> ground-truth decomposition) pairs written in the exact prompt the structure
   reward's :class:`rlkd.gsrm.Decomposer` sends, then measured on held-out teacher traces of both splits
   against the exact rule-based decomposer (:func:`rlkd.testbed.rule_decompose`): ``step_accuracy``.
4. **Students** (each seed, one RL budget for every RL arm): ``sft`` (SFT on the teacher traces),
   ``sft_grpo`` (then GRPO with the outcome rewards), ``sft_rlkd`` (then GRPO with the RLKD rewards
   3/3/2/2, the structure reward computed by the trained GSRM), ``sft_rlkd_oracle`` (the same with the
   exact rule decomposer as an oracle GSRM, ``structure.decomposer: rule``: what the method does apart
   from GSRM errors), ``grpo_zero`` and ``rlkd_zero`` (outcome or RLKD rewards from a briefly
   format-primed base, on a small fraction of the training tasks). :data:`RL_PLAN` lists them.
5. **Evaluation**: every model (and the primed base, the zero arms' start) on both test splits, ``n``
   sampled completions per problem: pass@1 and pass@k (unbiased estimator), the share of
   well-formatted completions, and the structure alignment of each completion (rule-decomposed) with
   the oracle's decomposition (:func:`rlkd.testbed.alignment`).
6. **Statistics** (:mod:`rlkd.statistics`): every pass@1 and pass@k carries a 95% bootstrap interval over
   seeds and problems; every compared pair of arms (:data:`COMPARISONS`) and every RL arm against its
   starting point gets a paired bootstrap interval and a verdict sentence computed from it. Signal
   diagnostics per RL arm (:func:`rl_signal`): zero-spread GRPO groups, the structure reward's mean and
   share of the total, the first-mismatch step histogram.
7. **Report**: ``results.json`` and :mod:`rlkd.report`'s ``report.md`` / ``report.html`` with PNG plots.

Every stage writes into the run folder and records its time in ``stages.json``; a re-run skips the
stages whose outputs are there (``--fresh`` starts over), so an interrupted demo resumes.

How this departs from the paper (and why):

1. Teacher, student and GSRM are small and local; the teacher is the testbed's oracle program. The GSRM
   is trained on ground-truth decompositions instead of GPT-4o's, so its accuracy can be measured.
2. The zero arms start from a *format-primed* base: the base fine-tuned briefly (``prime`` section) on the
   teacher traces of the same small fraction of tasks they then train on with RL. The paper starts
   RLKD-zero from Qwen2.5-Math-7B, which already writes reasoning in some form; the base here never saw
   the ``<think>``/``<answer>`` layout, so without the prime no reward could be earned at all.
3. The prompts carry no system prompt (``system_prompt: null``), because the models have short contexts
   and the evaluation protocol (SPEC section 6) uses none either.
4. The structure reward's default judge here is ``hybrid`` with ``overlap`` (threshold 0.4) for the
   meta-reasoning, ``text`` for the sub-problem (on this testbed ``What is x?`` is an exact test of the
   chosen quantity) and ``math`` for answers; the paper asks an LLM judge.
5. The GSRM prompt is the testbed's short instruction (:func:`rlkd.testbed.gsrm_prompt`), written to the
   run folder as a prompt file that :class:`rlkd.gsrm.Decomposer` reads, in training and in the reward
   alike; the packaged ``math`` prompt is about 250 tokens longer. The GRPO jobs name that file in
   ``structure.gsrm_prompt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rlkd.errors import InputError
from rlkd.evaluate import EvalJob, run_eval
from rlkd.files import atomic_write_jsonl, atomic_write_text, iter_jsonl
from rlkd.config import (
    ConfigError,
    GRPOJob,
    GRPOTraining,
    SFTJob,
    SFTTraining,
    StructureConfig,
)
from rlkd.recipes import _positive, dump_yaml, merge_overrides, option, read_recipe, section
from rlkd.train import train_job

log = logging.getLogger("rlkd.experiment")

DEFAULT_CONFIG = Path("configs/demo/demo.yaml")
DEFAULT_OUTPUT = "runs/demo"
DEFAULT_BASE = "assets/testbed-base"

# method name -> (label shown in tables, what it is)
METHODS: dict[str, tuple[str, str]] = {
    "sft": ("SFT", "SFT of the base student on the teacher traces"),
    "sft_grpo": ("SFT+GRPO", "SFT, then GRPO with the outcome rewards (accuracy 3, format 2, tag_count 2)"),
    "sft_rlkd": ("SFT+RLKD", "SFT, then GRPO with the RLKD rewards (accuracy 3, structure 3, format 2, "
                 "tag_count 2), the structure reward from the trained GSRM"),
    "sft_rlkd_oracle": ("SFT+RLKD (oracle GSRM)", "SFT, then GRPO with the RLKD rewards, the structure reward "
                        "from the exact rule decomposer (structure.decomposer: rule)"),
    "grpo_zero": ("GRPO-zero", "GRPO with the outcome rewards from the format-primed base, on a small fraction "
                  "of the tasks"),
    "rlkd_zero": ("RLKD-zero", "GRPO with the RLKD rewards (trained GSRM) from the format-primed base, on the "
                  "same small fraction of the tasks"),
}
# RL method -> (the model it starts from, reward set, training data file, structure decomposer)
RL_PLAN: dict[str, tuple[str, str, str, str]] = {
    "sft_grpo": ("sft", "outcome", "train.jsonl", "gsrm"),
    "sft_rlkd": ("sft", "rlkd", "train.jsonl", "gsrm"),
    "sft_rlkd_oracle": ("sft", "rlkd", "train.jsonl", "rule"),
    "grpo_zero": ("prime", "outcome", "zero.jsonl", "gsrm"),
    "rlkd_zero": ("prime", "rlkd", "zero.jsonl", "gsrm"),
}
SPLITS = ("id", "ood")
# (a, b) pairs whose pass@1 difference gets a paired bootstrap interval, when both ran
COMPARISONS = (("sft_rlkd", "sft_grpo"), ("sft_rlkd_oracle", "sft_grpo"), ("sft_rlkd", "sft_rlkd_oracle"),
               ("rlkd_zero", "grpo_zero"), ("sft_grpo", "sft"), ("sft_rlkd", "sft"), ("sft_rlkd_oracle", "sft"),
               ("rlkd_zero", "sft"), ("grpo_zero", "sft"))
STAGES_FILE = "stages.json"
RESULTS_FILE = "results.json"
DONE_FILE = "rlkd_stage_done.json"


# --------------------------------------------------------------------------------------------------
# The recipe


@dataclass
class DataSection:
    """The testbed tasks of the experiment."""

    seed: int = option(0, "seed of the task generator (all splits derive from it)")
    train: int = option(200, "training tasks (SFT traces and RL prompts)")
    test_id: int = option(12, "in-distribution test tasks (same knobs as training, disjoint structures)")
    test_ood: int = option(8, "out-of-distribution test tasks (deeper chains, more distractors)")
    gsrm_train: int = option(300, "tasks whose teacher traces train the GSRM (disjoint from the test sets)")
    gsrm_test: int = option(24, "held-out teacher traces per split on which the GSRM's accuracy is measured")
    zero_fraction: float = option(0.1, "RLKD-zero: share of the training tasks it is primed and trained on")
    id_knobs: dict[str, Any] = option({"depth": [2, 3], "distractors": [1, 2]},
                                      "testbed knobs of the training and in-distribution test tasks "
                                      "(overrides of rlkd.testbed.SPLITS['id'])")
    ood_knobs: dict[str, Any] = option({"depth": [4, 5], "distractors": [2, 3]},
                                       "testbed knobs of the out-of-distribution tasks (overrides of "
                                       "rlkd.testbed.SPLITS['ood']; deeper than id_knobs, so disjoint)")


@dataclass
class BaseSection:
    """The base student: a small Llama pretrained once on the testbed's problem language (problem
    statements and computations, no meta-reasoning and no tags; :func:`rlkd.testbed.base_text`), which
    every student and the GSRM start from. The project ships it; ``rlkd demo --build-base`` rebuilds it."""

    path: str = option(DEFAULT_BASE, "the base checkpoint folder (model and tokenizer); --build-base writes it, "
                       "its build files go to <path>-build")
    tasks: int = option(40000, "pretraining tasks (one text each; drawn from their own generator stream)")
    seed: int = option(1000, "seed of the pretraining tasks, the tokenizer and the initial weights")
    knobs: dict[str, Any] = option({}, "testbed knobs of the pretraining tasks (overrides of "
                                   "rlkd.testbed.SPLITS['id']; never the ood split's)")
    vocab_size: int = option(1024, "BPE vocabulary (every testbed name and number stays one token)")
    hidden_size: int = option(64, "hidden size")
    num_layers: int = option(4, "transformer layers")
    num_heads: int = option(4, "attention heads")
    max_position_embeddings: int = option(1024, "context length")
    probe_tasks: int = option(64, "held-out tasks on which every checkpoint's look-ups are measured")


@dataclass
class EvalSection:
    """Sampling evaluation of every model on both test splits (SPEC section 6 settings by default)."""

    n: int = option(16, "completions sampled per problem (pass@1 is their mean correctness; pass@k is reported "
                    "for k = 1, 2, 4, ... n, as rlkd eval does)")
    temperature: float = option(0.6, "sampling temperature")
    top_p: float = option(0.95, "nucleus sampling")
    max_tokens_id: int = option(128, "most new tokens per completion on the in-distribution split")
    max_tokens_ood: int = option(192, "most new tokens per completion on the out-of-distribution split")
    batch_size: int = option(128, "sequences per generate batch (a batch stops when its longest completion "
                             "does)")
    gsrm_student_check: int = option(16, "student completions (SFT model, first seed, id split) decomposed by "
                                     "the GSRM and compared with the rule decomposer (0: skip)")
    bootstrap: int = option(2000, "bootstrap resamples (over seeds and problems) behind every 95% interval")


def _sft_defaults(**overrides: Any) -> SFTTraining:
    base = dict(learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0,
                num_train_epochs=1.0, max_steps=-1, per_device_train_batch_size=16, gradient_accumulation_steps=1,
                save_steps=100000, logging_steps=25, bf16=False, use_cpu=True, activation_checkpointing=False,
                max_length=1024)
    base.update(overrides)
    return SFTTraining(**base)


def _rl_defaults() -> GRPOTraining:
    return GRPOTraining(learning_rate=2e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=0.0,
                        max_steps=8, per_device_train_batch_size=16, num_generations=4, temperature=0.7,
                        max_completion_length=128, max_prompt_length=512, save_steps=100000, logging_steps=1,
                        bf16=False, use_cpu=True, activation_checkpointing=False)


def _structure_defaults() -> StructureConfig:
    return StructureConfig(judge="hybrid", meta_judge="overlap", subproblem_judge="text", answer_judge="math",
                           overlap_threshold=0.4, gsrm_max_tokens=160, gsrm_few_shot=False, mode="paper")


@dataclass
class DemoJob:
    """``rlkd demo``: the RLKD experiment in miniature (every section can be overridden with --set)."""

    output: str = option(DEFAULT_OUTPUT, "run folder: data, models, evaluations, results.json and the report")
    seeds: list[int] = option([0, 1, 2], "seeds: one student initialisation, SFT and RL run per seed per method")
    methods: list[str] = option(list(METHODS), f"methods to run, from {', '.join(METHODS)}")
    device: str = option("auto", "auto: train on the GPU when there is one (bf16 where supported), else on the "
                         "CPU in float32; cpu: always the CPU. Sets use_cpu and bf16 of every training section",
                         ("auto", "cpu"))
    system_prompt: str | None = option(None, "system message before each problem, in training and evaluation "
                                       "(null: none)")
    student_model: str | None = option(None, "the model every student starts from (hub name, folder or .gguf "
                                       "file); null: the base student, base.path")
    gsrm_model: str | None = option(None, "the model the GSRM is fine-tuned from (hub name, folder or .gguf "
                                    "file); null: the base student")
    gsrm_prompt: str = option("testbed", "the GSRM's prompt, in training and in the structure reward: testbed (the "
                              "testbed's short instruction, rlkd.testbed.gsrm_prompt, written to the run folder as a "
                              "prompt file), a packaged domain (math, code, science, puzzle; without the worked "
                              "example) or a prompt file")
    data: DataSection = section(DataSection, "testbed tasks")
    base: BaseSection = section(BaseSection, "the base student (pretrained once, shipped)")
    pretraining: SFTTraining = option(_sft_defaults(max_steps=3000, per_device_train_batch_size=32,
                                                    warmup_steps=0.02, save_steps=250, logging_steps=50),
                                      "the base student's pretraining (rlkd train sft on text, resumable)")
    gsrm_training: SFTTraining = option(_sft_defaults(max_steps=100), "GSRM fine-tuning (TRL SFTConfig fields, "
                                        "as in rlkd train sft)")
    sft: SFTTraining = option(_sft_defaults(max_steps=100), "the SFT baseline's training (also the start of "
                              "SFT+GRPO and SFT+RLKD)")
    prime: SFTTraining = option(_sft_defaults(max_steps=20, per_device_train_batch_size=8, logging_steps=10),
                                "RLKD-zero's brief format priming on its fraction of the teacher traces")
    rl: GRPOTraining = option(_rl_defaults(), "GRPO settings shared by every RL method (equal budgets)")
    structure: StructureConfig = option(_structure_defaults(), "the structure reward's judge and mode (the GSRM "
                                        "backend is the trained GSRM, filled in by the experiment)")
    eval: EvalSection = section(EvalSection, "evaluation")

    def validate(self) -> None:
        """Check the cross-field rules (types and choices are checked when the recipe is read)."""
        if not self.output:
            raise ConfigError("output: required")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: repeated seed in {self.seeds}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"methods: unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        if not self.methods:
            raise ConfigError("methods: give at least one method")
        _positive(self.data, "data", "train", "test_id", "test_ood", "gsrm_train")
        if not 0 < self.data.zero_fraction <= 1:
            raise ConfigError(f"data.zero_fraction: must be in (0, 1], got {self.data.zero_fraction}")
        if self.data.gsrm_test < 0:
            raise ConfigError(f"data.gsrm_test: must be >= 0, got {self.data.gsrm_test}")
        _positive(self.base, "base", "tasks", "hidden_size", "num_layers", "num_heads", "max_position_embeddings",
                  "probe_tasks")
        if not self.base.path:
            raise ConfigError("base.path: required")
        if self.base.vocab_size < 300:
            raise ConfigError(f"base.vocab_size: must be >= 300 (byte alphabet plus special tokens), got "
                              f"{self.base.vocab_size}")
        _positive(self.eval, "eval", "n", "max_tokens_id", "max_tokens_ood", "batch_size")
        if self.structure.decomposer != "gsrm":
            raise ConfigError("structure.decomposer: set per method by the experiment (the oracle arm uses rule); "
                              "leave it gsrm")
        if self.structure.gsrm_prompt is not None:
            raise ConfigError("structure.gsrm_prompt: set by the experiment from gsrm_prompt (the prompt the GSRM "
                              "is trained on); leave it null")
        if self.rl.num_generations < 2:
            raise ConfigError("rl.num_generations: GRPO needs at least 2 completions per prompt")
        if self.rl.per_device_train_batch_size % self.rl.num_generations:
            raise ConfigError(f"rl.per_device_train_batch_size ({self.rl.per_device_train_batch_size}) must be a "
                              f"multiple of rl.num_generations ({self.rl.num_generations})")


def load_demo_job(config: str | Path | None, overrides: Sequence[str] = ()) -> DemoJob:
    """Read a demo recipe (or the built-in defaults when ``config`` is None) with ``--set`` overrides.

    A section given in part keeps the demo's defaults for the fields it leaves out (not the paper
    defaults of the training dataclasses), so a recipe only spells out what it changes.
    """
    from rlkd.config import build_job

    data = read_recipe(config) if config else {}
    data = merge_overrides(data, overrides)
    return build_job(DemoJob, _deep_merge(dataclasses.asdict(DemoJob()), data))


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in _REPLACED_MAPPINGS:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# mappings a recipe gives whole (a recipe's knobs replace the default knobs instead of adding to them)
_REPLACED_MAPPINGS = ("id_knobs", "ood_knobs", "knobs", "extra", "weights")


# --------------------------------------------------------------------------------------------------
# Stages: timing, logging and skipping what is done


class Stages:
    """Times every stage, logs it, and records it in ``stages.json``; ``done(path)`` marks an output
    folder complete so that a re-run skips the stage."""

    def __init__(self, root: Path, total: int, fresh: bool = False) -> None:
        self.root = root
        self.path = root / STAGES_FILE
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists() and not fresh:
            try:
                self.records = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                log.warning("%s: unreadable, stage times start over", self.path)

    @staticmethod
    def is_done(folder: Path) -> bool:
        return (folder / DONE_FILE).is_file()

    @staticmethod
    def mark_done(folder: Path, **info: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DONE_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")

    @contextlib.contextmanager
    def stage(self, name: str, done_folder: Path | None = None, kind: str = "other") -> Iterator[bool]:
        """Run a stage (yields True) or skip it (yields False) when ``done_folder`` is marked done;
        ``kind`` groups stages in the printed time summary."""
        self.count += 1
        prefix = f"[{self.count}/{self.total}] {name}"
        if done_folder is not None and self.is_done(done_folder):
            log.info("%s: done before, skipped (%s)", prefix, done_folder)
            self.records.setdefault(name, {"seconds": 0.0})
            self.records[name].update(skipped=True, kind=kind)
            self._write()
            yield False
            return
        log.info("%s ...", prefix)
        t0 = time.monotonic()
        yield True
        seconds = time.monotonic() - t0
        if done_folder is not None:
            self.mark_done(done_folder, stage=name, seconds=round(seconds, 2))
        self.records[name] = {"seconds": round(seconds, 2), "skipped": False, "kind": kind}
        self._write()
        elapsed = time.monotonic() - self.started
        log.info("%s: %.1f s (run so far %s)", prefix, seconds, _clock(elapsed))

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.records, indent=2) + "\n")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------------
# Data


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    atomic_write_jsonl(path, rows)
    return path


def make_tasks(data: DataSection) -> dict[str, list[Any]]:
    """The experiment's task sets: ``train``, ``test_id``, ``test_ood`` and ``gsrm`` (GSRM training).

    Every set is structurally disjoint from the others (no two tasks share a structure key), so the
    test sets are held out from both the student's and the GSRM's training.
    """
    from rlkd.testbed import generate_tasks

    seed = data.seed
    train = generate_tasks(data.train, "id", seed=seed, **data.id_knobs)
    seen = {t.key for t in train}
    test_id = generate_tasks(data.test_id, "id", seed=seed + 1, exclude=seen, **data.id_knobs)
    seen |= {t.key for t in test_id}
    test_ood = generate_tasks(data.test_ood, "ood", seed=seed + 2, exclude=seen, **data.ood_knobs)
    seen |= {t.key for t in test_ood}
    gsrm = generate_tasks(data.gsrm_train, "id", seed=seed + 3, exclude=seen, **data.id_knobs)
    return {"train": train, "test_id": test_id, "test_ood": test_ood, "gsrm": gsrm}


def write_gsrm_prompt(path: Path) -> Path:
    """Write the testbed's GSRM prompt (:func:`rlkd.testbed.gsrm_prompt`) as a prompt file that
    :func:`rlkd.templates.load_prompt` reads, so that the Decomposer sends exactly what the testbed defines."""
    from rlkd.testbed import GSRM_INSTRUCTION, gsrm_prompt

    text = f"=== user ===\n{GSRM_INSTRUCTION}\n\nProblem: {{problem}}\n\nReasoning: {{reasoning}}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    from rlkd.templates import load_prompt

    load_prompt.cache_clear()
    check = load_prompt(str(path)).render("P", "R", few_shot=False)
    if check != [{"role": "user", "content": gsrm_prompt("P", "R")}]:  # pragma: no cover - a guard on drift
        raise RuntimeError(f"{path}: the prompt file does not reproduce rlkd.testbed.gsrm_prompt")
    return path


def gsrm_sft_rows(tasks: Sequence[Any], prompt: str = "math") -> list[dict[str, Any]]:
    """GSRM training rows (chat ``prompt``/``completion``) in exactly the prompt the structure reward's
    :class:`rlkd.gsrm.Decomposer` sends (``prompt``: a domain or a prompt file, without the worked
    example), so the GSRM is used the way it was trained. The targets are the ground-truth
    decompositions of the testbed's teacher traces."""
    from rlkd.gsrm import build_prompt

    return [{"id": task.id, "prompt": build_prompt(task.problem, task.trace, prompt, few_shot=False),
             "completion": [{"role": "assistant", "content": task.decomposition.render()}]} for task in tasks]


# --------------------------------------------------------------------------------------------------
# The base student: pretrained once on the testbed's problem language

BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
BASE_CARD = "base_card.json"


def base_tasks(base: BaseSection) -> tuple[list[Any], list[Any]]:
    """The pretraining tasks and the held-out probe tasks of the base student (one generator stream)."""
    from rlkd.testbed import generate_tasks

    tasks = generate_tasks(base.tasks + base.probe_tasks, "id", seed=base.seed, **base.knobs)
    return tasks[: base.tasks], tasks[base.tasks:]


def probe_lookups(model_dir: str | Path, tasks: Sequence[Any], batch_size: int = 64) -> dict[str, float]:
    """How well a model writes the computations of held-out problems (greedy, after ``problem + "\\n"``,
    the layout of :func:`rlkd.testbed.base_text`). Each written sentence ``x = <definition> = <input
    values> = <result>`` is checked on its own against the task's graph, in any order (the problem does
    not say which definition to compute first): ``lines_right`` is the share of the task's definitions
    written exactly right (definition restated, input values looked up, result right), ``values_right``
    the share whose result alone is right, ``tasks_right`` the share of problems with every definition
    right. The look-ups are where copying shows: the definition and the values must be found in the
    input."""
    import torch

    from rlkd.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, device="cpu", dtype="float32")
    total = right = values = whole = 0
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start: start + batch_size]
        batch = tokenizer([t.problem + "\n" for t in chunk], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=200, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        for task, ids in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
            written = check_computations(task, tokenizer.decode(ids, skip_special_tokens=True).strip().split("\n")[0])
            defined = [q.name for q in task.quantities if q.inputs]
            total += len(defined)
            right += sum(written.get(n, (False, False))[0] for n in defined)
            values += sum(written.get(n, (False, False))[1] for n in defined)
            whole += all(written.get(n, (False, False))[0] for n in defined)
    return {"lines_right": right / total if total else 0.0, "values_right": values / total if total else 0.0,
            "tasks_right": whole / len(tasks) if tasks else 0.0, "tasks": float(len(tasks))}


# the roles of the 11 tokens of a computation sentence ``x = a + b = 1 + 3 = 4`` (the period aside)
_ROLES = ("choice", None, "copy_definition", "copy_operator", "copy_definition", None, "look_up_value",
          "copy_operator", "look_up_value", None, "arithmetic")


def probe_positions(model_dir: str | Path, tasks: Sequence[Any]) -> dict[str, float]:
    """Teacher-forced next-token accuracy on the computations of held-out problems, by the role of the
    token: ``choice`` (which quantity is computed next; the problem does not say, so this stays low),
    ``copy_definition`` (an input name of its definition, copied from the problem), ``copy_operator``,
    ``look_up_value`` (an input's value, found in the problem or an earlier computation) and
    ``arithmetic`` (the result, given the values). Copying has formed when ``copy_definition`` and
    ``look_up_value`` climb towards 1; greedy generation (:func:`probe_lookups`) needs all of them."""
    import torch

    from rlkd.models import load_model, load_tokenizer
    from rlkd.testbed import base_text

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, device="cpu", dtype="float32")
    hits: dict[str, list[int]] = {role: [0, 0] for role in _ROLES if role}
    for task in tasks:
        ids = tokenizer.encode(base_text(task), add_special_tokens=False)
        start = len(tokenizer.encode(task.problem + "\n", add_special_tokens=False))
        with torch.no_grad():
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        pieces = tokenizer.convert_ids_to_tokens(ids)
        i = start
        while i < len(ids):
            j = i
            while j < len(ids) and pieces[j] != ".":
                j += 1
            if j - i == len(_ROLES):
                for k, role in enumerate(_ROLES):
                    if role:
                        hits[role][1] += 1
                        hits[role][0] += int(predicted[i + k - 1] == ids[i + k])
            i = j + 1
    return {role: right / seen if seen else 0.0 for role, (right, seen) in hits.items()}


def check_computations(task: Any, text: str) -> dict[str, tuple[bool, bool]]:
    """For each defined quantity a text computes (``x = <definition> = <input values> = <result>.``
    sentences, the first one per quantity, in any order): (written exactly right, result right).

    >>> from rlkd.testbed import base_text, generate_tasks
    >>> task = generate_tasks(1, seed=0)[0]
    >>> all(exact for exact, _ in check_computations(task, base_text(task).split("\\n")[1]).values())
    True
    >>> check_computations(task, "lev = zor + cod = 1 + 3 = 5.")
    {'lev': (False, False)}
    """
    by_name = {q.name: q for q in task.quantities}
    written: dict[str, tuple[bool, bool]] = {}
    for sentence in text.split(". "):
        parts = [p.strip() for p in sentence.rstrip(".").split("=")]
        q = by_name.get(parts[0]) if len(parts) == 4 else None
        if q is None or not q.inputs or q.name in written:
            continue
        numbers = " ".join(str(by_name[t].value) if t in by_name else t for t in q.symbolic().split())
        written[q.name] = (parts[1:] == [q.symbolic(), numbers, str(q.value)], parts[3] == str(q.value))
    return written


def build_base(job: "DemoJob") -> dict[str, Any]:
    """Build the base student at ``job.base.path`` (``rlkd demo --build-base``), deterministically from
    the recipe, resuming after an interruption; return its card (also written as ``base_card.json``).

    1. Draw ``base.tasks`` tasks (their own seed, the id split's knobs) and write each one's
       :func:`rlkd.testbed.base_text` to ``<path>-build/pretrain.jsonl``: the problem, and the
       computations that follow it, on which alone the loss is taken (the problem's own tokens are
       random names and values; training on them only slows the look-ups down).
    2. Train a BPE tokenizer that keeps every name and number one token (refused otherwise) and a random
       Llama of the recipe's size (``<path>-build/init``).
    3. Pretrain it with ``rlkd train sft`` (``data.format: text``) into ``<path>-build/train``, saving a
       checkpoint every ``pretraining.save_steps``; a re-run resumes from the last one.
    4. Probe every checkpoint on held-out problems: greedy computations (:func:`probe_lookups`) and
       teacher-forced accuracy by token role (:func:`probe_positions`): when copying forms.
    5. Copy the final model and tokenizer to ``path`` with the card: recipe, loss curve, probes, times.
    """
    from rlkd.templates import load_prompt
    from rlkd.models import build_tiny_model, build_tokenizer
    from rlkd.testbed import base_text, corpus, whole_word_check

    b = job.base
    final, work = Path(b.path), Path(f"{b.path}-build")
    started = time.monotonic()
    train, probe = base_tasks(b)
    data = work / "pretrain.jsonl"
    if not data.exists():
        _write_jsonl(data, [{"id": t.id, "problem": t.problem + "\n", "text": base_text(t).split("\n", 1)[1]}
                            for t in train])
    init = work / "init"
    if not (init / "config.json").exists():
        texts = corpus(train[:2000]) + [c for _, c in load_prompt(str(write_gsrm_prompt(work / "gsrm_prompt.txt"))).turns]
        tokenizer = build_tokenizer(texts, b.vocab_size)
        split = whole_word_check(tokenizer)
        if split:
            raise InputError(f"base.vocab_size: {b.vocab_size} is too small to keep every name and number one token "
                           f"({len(split)} are split, e.g. {split[:5]}); raise it")
        build_tiny_model(init, tokenizer=tokenizer, hidden_size=b.hidden_size, num_layers=b.num_layers,
                         num_heads=b.num_heads, max_position_embeddings=b.max_position_embeddings, seed=b.seed)
    training = _training_for_device(job.pretraining, job.device)
    training.seed = b.seed
    sft = SFTJob(model=str(init), output_dir=str(work / "train"), resume="auto")
    sft.data.path, sft.data.format, sft.training = str(data), "text", training
    sft.data.prompt_column = "problem"  # the loss is on the computations: look-ups and arithmetic
    from rlkd.train import last_checkpoint

    last = last_checkpoint(sft.output_dir)
    if last is not None and int(last.name.split("-")[-1]) >= training.max_steps > 0:
        log.info("base student: pretraining finished before (%s); probing only", last)
        metrics = {"resumed_finished": str(last)}  # a finished run is not trained again (not even one step)
    else:
        log.info("base student: pretraining %s on %d texts -> %s", init, len(train), sft.output_dir)
        metrics = train_job(sft, argv=["rlkd demo", "--build-base"])
    points = sorted(((int(p.name.split("-")[1]), p) for p in (work / "train").glob("checkpoint-*")
                     if p.name.split("-")[1].isdigit()), key=lambda x: x[0])
    t0 = (init / "config.json").stat().st_mtime
    probes = []
    for step, folder in points:
        result = probe_lookups(folder, probe)
        probes.append({"step": step, "wall_s": round(folder.stat().st_mtime - t0, 1), **result,
                       "teacher_forced": probe_positions(folder, probe)})
        log.info("base student probe at step %d: %s", step, json.dumps(result))
    final.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        if (work / "train" / name).exists():
            shutil.copy2(work / "train" / name, final / name)
    losses = [{"step": r.get("step"), "loss": r.get("loss")} for r in _read_metrics(work / "train" / "metrics.jsonl")
              if "loss" in r]
    card = {"recipe": {"base": dataclasses.asdict(b), "pretraining": dataclasses.asdict(job.pretraining)},
            "parameters": _parameter_count(final), "train_metrics": metrics, "loss": losses, "probes": probes,
            "final_probe": probe_lookups(final, probe), "build_wall_s": round(time.monotonic() - started, 1),
            "machine": machine_info(), "command": "rlkd demo --build-base"}
    (final / BASE_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def _parameter_count(model_dir: Path) -> int:
    from rlkd.models import load_model

    return sum(p.numel() for p in load_model(model_dir, device="cpu", dtype="float32").parameters())


# --------------------------------------------------------------------------------------------------
# Training through rlkd.train (rlkd.train.train_job: the path rlkd train sft|grpo takes)


def _training_for_device(training: Any, device: str) -> Any:
    """A copy of a training section set for the machine: on a GPU (``device: auto`` and CUDA present)
    ``use_cpu=false`` and bf16 where the GPU supports it; otherwise CPU in float32."""
    import torch

    t = dataclasses.replace(training)
    if device == "auto" and torch.cuda.is_available():
        t.use_cpu, t.bf16 = False, bool(torch.cuda.is_bf16_supported())
    else:
        t.use_cpu, t.bf16 = True, False
    return t


# --------------------------------------------------------------------------------------------------
# Evaluation


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k) (SPEC section 6), as :mod:`rlkd.evaluate` computes it."""
    from rlkd.evaluate import pass_at_k as estimator

    return float(estimator(n, c, k))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def eval_job(model_dir: Path, benchmark: Path, output: Path, *, n: int, max_tokens: int, temperature: float,
             top_p: float, seed: int, batch_size: int, system_prompt: str | None) -> EvalJob:
    """The :class:`~rlkd.evaluate.EvalJob` of one model on one testbed split (what ``rlkd eval`` would run).

    The user message is the bare problem (the prompt template is ``{problem}``), as in training. Grading
    is the training ``accuracy`` reward's (``grading="reward"``: the answer in ``\\boxed{}`` of the answer
    block), so that a student is scored by the rule it was trained on; lighteval's whole-reply fallback
    would also credit a trace that only states the value in passing.
    """
    template = output / "prompt_template.txt"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text("{problem}", encoding="utf-8")
    return EvalJob(model=str(model_dir), benchmark=str(benchmark), output=str(output), id_column="id", kind="math",
                   n=n, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                   batch_size=batch_size, prompt_template=str(template), grading="reward",
                   system_prompt=system_prompt or None)


def evaluate_model(model_dir: Path, tasks: Sequence[Any], benchmark: Path, output: Path, *, n: int,
                   max_tokens: int, temperature: float, top_p: float, seed: int, batch_size: int,
                   system_prompt: str | None) -> dict[str, Any]:
    """Evaluate one model on one split with ``rlkd eval`` (:func:`rlkd.evaluate.run_eval`: sampling,
    grading by :mod:`rlkd.answers`, pass@k), then add what the testbed can measure exactly: the share of
    well-formatted completions and the structure alignment of each completion (rule-decomposed) with the
    task's oracle decomposition."""
    from rlkd.rewards import format_reward
    from rlkd.testbed import alignment, rule_decompose

    summary = run_eval(eval_job(model_dir, benchmark, output, n=n, max_tokens=max_tokens, temperature=temperature,
                                top_p=top_p, seed=seed, batch_size=batch_size, system_prompt=system_prompt))
    if summary["missing_problems"] or summary["generation"]["failed"]:
        raise InputError(f"{output}: {summary['generation']['failed']} generations failed; run again to resume")
    by_id = {t.id: t for t in tasks}
    keys = ("meta_prefix_share", "meta_match", "answer_match", "answers_found")
    rows = []
    for _, sample in iter_jsonl(output / "samples.jsonl"):
        text, task = sample["completion"], by_id[sample["id"]]
        steps = rule_decompose(text)
        a = alignment(steps, task.decomposition)
        rows.append({"id": sample["id"], "sample": sample["sample"], "format": format_reward([text])[0],
                     **{k: float(a[k]) for k in keys}, "exact": float(a["exact"]),
                     "student_steps": float(a["student_steps"]), "meta_prefix": a["meta_prefix"],
                     "teacher_steps": a["teacher_steps"],
                     "grounded": grounded_share(steps, {q.name.lower() for q in task.quantities})})
    _write_jsonl(output / "alignment.jsonl", rows)
    metrics: dict[str, Any] = {"problems": summary["graded_problems"], "n": summary["n"],
                               "pass@k": dict(summary["pass_at_k"]), "pass@1": summary["pass_at_k"].get("1", 0.0),
                               "pass@1_stderr": summary.get("pass_at_1_stderr"),
                               "mean_completion_tokens": summary.get("mean_completion_tokens"),
                               "truncated_share": summary.get("truncated_share"),
                               "no_answer_share": summary.get("no_answer_share"),
                               "format": _mean([r["format"] for r in rows])}
    metrics["alignment"] = {k: _mean([r[k] for r in rows]) for k in (*keys, "exact", "student_steps", "grounded")}
    return metrics


def grounded_share(decomposition: Any, names: set[str]) -> float:
    """Share of a decomposition's steps whose quantity (``What is x?``) is one of ``names`` (the
    quantities the problem defines): whether a model copies names from its input at all. 0 without steps."""
    from rlkd.testbed import chosen_quantity

    chosen = [chosen_quantity(step) for step in decomposition.steps]
    return sum(c is not None and c in names for c in chosen) / len(chosen) if chosen else 0.0


def evaluate_gsrm(gsrm_dir: Path, items: Sequence[tuple[str, str, Any]], *, max_tokens: int,
                  batch_size: int, prompt: str = "math", desc: str = "GSRM") -> dict[str, Any]:
    """Decompose ``(problem, trace, reference decomposition)`` items with the trained GSRM (through the
    same :class:`rlkd.gsrm.Decomposer` the structure reward uses) and compare with the reference.

    Returns the means of :func:`rlkd.testbed.alignment` (choice and answer match, exact sequences) and
    the share of steps whose meta-reasoning text is the reference's word for word, plus the records.
    """
    import asyncio

    from tqdm.auto import tqdm

    from rlkd.backends import TransformersBackend
    from rlkd.gsrm import Decomposer
    from rlkd.judges import normalize_text
    from rlkd.structure import as_decomposition
    from rlkd.testbed import alignment, reasoning_text

    decomposer = Decomposer(TransformersBackend(str(gsrm_dir), batch_size=batch_size), domain=prompt,
                            max_tokens=max_tokens, few_shot=False)
    results = []
    with tqdm(total=len(items), desc=desc, unit="trace", leave=False) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start: start + batch_size]
            results += asyncio.run(decomposer.decompose([(p, t) for p, t, _ in chunk]))
            bar.update(len(chunk))
    records = []
    for (problem, trace, reference), result in zip(items, results):
        reference = as_decomposition(reference)
        a = alignment(result.decomposition, reference)
        meta_same = [normalize_text(s.meta_reasoning) == normalize_text(r.meta_reasoning)
                     for s, r in zip(result.decomposition.steps, reference.steps)]
        names = set(re.findall(r"[a-z]+", reasoning_text(trace).lower()))
        records.append({"alignment": a, "grounded": grounded_share(result.decomposition, names),
                        "meta_text_exact": sum(meta_same) / len(reference.steps) if reference.steps else 0.0,
                        "steps_equal": len(result.decomposition.steps) == len(reference.steps),
                        "error": result.error, "no_steps": not result.decomposition.steps,
                        "raw": result.raw})
    summary = _alignment_summary([r["alignment"] for r in records])
    steps = sum(r["alignment"]["teacher_steps"] for r in records)
    # pooled over steps: the share of reference steps with the same quantity and answer at their place
    summary["step_accuracy"] = (sum(r["alignment"]["answer_match"] * r["alignment"]["teacher_steps"]
                                    for r in records) / steps) if steps else 0.0
    summary["meta_text_exact"] = _mean([r["meta_text_exact"] for r in records])
    summary["grounded"] = _mean([r["grounded"] for r in records])
    summary["step_count_equal"] = _mean([float(r["steps_equal"]) for r in records])
    summary["no_steps"] = _mean([float(r["no_steps"]) for r in records])
    summary["errors"] = sum(r["error"] is not None for r in records)
    summary["traces"] = len(records)
    return {"summary": summary, "records": records}


def _alignment_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    keys = ("meta_prefix_share", "meta_match", "answer_match", "answers_found")
    out = {k: _mean([float(r[k]) for r in rows]) for k in keys}
    out["exact"] = _mean([float(r["exact"]) for r in rows])
    return out


# --------------------------------------------------------------------------------------------------
# The experiment


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
        seeds, methods = len(job.seeds), len(job.methods)
        needs_prime = any(RL_PLAN.get(m, ("",))[0] == "prime" for m in job.methods)
        rl_methods = sum(m in RL_PLAN for m in job.methods)
        needs_sft = any(m == "sft" or RL_PLAN.get(m, ("",))[0] == "sft" for m in job.methods)
        total = 4 + seeds * (int(needs_sft) + int(needs_prime) * 2 + rl_methods + methods) + 2
        self.stages = Stages(self.root, total, fresh)
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
                         and k not in ("output", "seeds"))
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
        (self.root / "config.yaml").write_text(_dump_job(job), encoding="utf-8")
        self.stage_data()
        self.stage_models()
        self.stage_gsrm()
        gsrm_eval = self.stage_gsrm_eval()
        for seed in job.seeds:
            self.stage_seed(seed)
        check = self.stage_gsrm_student_check()
        results = self.collect(gsrm_eval, check, time.monotonic() - started)
        self.stage_report(results)
        return results

    def stage_data(self) -> None:
        with self.stages.stage("data: testbed tasks and training files", self.path("data"), "data and models") as todo:
            self.tasks = make_tasks(self.job.data)  # deterministic: rebuilt on a resumed run too
            if todo:
                self._write_data()

    def _write_data(self) -> None:
        from rlkd.testbed import write_dataset

        d = self.path("data")
        t = self.tasks
        write_dataset(t["train"], d / "train.jsonl")
        write_dataset(t["test_id"], d / "test_id.jsonl")
        write_dataset(t["test_ood"], d / "test_ood.jsonl")
        write_dataset(self.zero_tasks(), d / "zero.jsonl")
        _write_jsonl(d / "gsrm_train.jsonl", gsrm_sft_rows(t["gsrm"], self.gsrm_prompt()))

    def gsrm_prompt(self) -> str:
        """The GSRM prompt as :class:`rlkd.gsrm.Decomposer` takes it: a domain name or a prompt file."""
        from rlkd.templates import DOMAINS

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

    def zero_tasks(self) -> list[Any]:
        count = max(1, math.ceil(self.job.data.zero_fraction * len(self.tasks["train"])))
        return self.tasks["train"][:count]

    def stage_models(self) -> None:
        """Check the models every arm starts from: the base student (shipped, or rebuilt with
        ``rlkd demo --build-base``) unless the recipe names other models, and record token statistics."""
        from rlkd.models import load_tokenizer, resolve_model
        from rlkd.testbed import token_stats, whole_word_check

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

    def stage_gsrm(self) -> None:
        out = self.path("gsrm")
        with self.stages.stage("GSRM: rlkd train sft on (narrative, decomposition) pairs", out,
                               "GSRM training") as todo:
            if todo:
                self._sft("GSRM", self.gsrm_model(), out, self.path("data", "gsrm_train.jsonl"),
                          self.job.gsrm_training, self.job.data.seed, chat=True)

    def stage_gsrm_eval(self) -> dict[str, Any]:
        from rlkd.testbed import rule_decompose

        out = self.path("gsrm_eval")
        with self.stages.stage("GSRM accuracy on held-out teacher traces", out, "GSRM checks") as todo:
            if todo:
                summary: dict[str, Any] = {}
                for split, name in (("id", "test_id"), ("ood", "test_ood")):
                    tasks = self.tasks[name][: self.job.data.gsrm_test]
                    if not tasks:
                        continue
                    items = [(t.problem, t.trace, rule_decompose(t.trace)) for t in tasks]
                    max_tokens = self.job.structure.gsrm_max_tokens * (2 if split == "ood" else 1)
                    measured = evaluate_gsrm(self.path("gsrm"), items, max_tokens=max_tokens,
                                             batch_size=self.job.eval.batch_size, prompt=self.gsrm_prompt(),
                                             desc=f"GSRM {split}")
                    rule = _alignment_summary([_rule_alignment(rule_decompose(t.trace), t.decomposition)
                                               for t in tasks])
                    summary[split] = {"gsrm": measured["summary"], "rule": rule}
                    _write_jsonl(out / f"{split}.jsonl", measured["records"])
                out.mkdir(parents=True, exist_ok=True)
                (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))

    def stage_seed(self, seed: int) -> None:
        job = self.job
        methods = job.methods
        data = self.path("data")
        if any(m == "sft" or RL_PLAN.get(m, ("",))[0] == "sft" for m in methods):
            out = self.model_dir(seed, "sft")
            with self.stages.stage(f"seed {seed}: SFT on {len(self.tasks['train'])} teacher traces", out,
                                   "SFT") as todo:
                if todo:
                    self._sft("SFT", self.student_model(), out, data / "train.jsonl", job.sft, seed)
        if any(RL_PLAN.get(m, ("",))[0] == "prime" for m in methods):
            out = self.model_dir(seed, "prime")
            with self.stages.stage(f"seed {seed}: format priming for the zero arms ({len(self.zero_tasks())} "
                                   "traces)", out, "zero-arm priming") as todo:
                if todo:
                    self._sft("prime", self.student_model(), out, data / "zero.jsonl", job.prime, seed)
        for method in methods:
            if method not in RL_PLAN:
                continue
            start, reward_set, data_file, decomposer = RL_PLAN[method]
            out = self.model_dir(seed, method)
            with self.stages.stage(f"seed {seed}: {METHODS[method][0]} (GRPO, reward set '{reward_set}')", out,
                                   METHODS[method][0]) as todo:
                if todo:
                    self._grpo(method, self.model_dir(seed, start), out, data / data_file, reward_set, seed,
                               decomposer)
        for method in self.evaluated():
            out = self.path("eval", f"seed{seed}", method)
            label = METHODS[method][0] if method in METHODS else "the primed base (the zero arms' start)"
            with self.stages.stage(f"seed {seed}: evaluate {label} on id and ood", out, "evaluation") as todo:
                if todo:
                    self._evaluate(seed, method, out)

    def evaluated(self) -> list[str]:
        """The models evaluated per seed: every method, and ``prime`` (the zero arms' starting point) when a
        zero arm runs, so each RL arm's change is measured against where it started."""
        methods = list(self.job.methods)
        if any(RL_PLAN.get(m, ("",))[0] == "prime" for m in methods):
            methods.append("prime")
        return methods

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
        from rlkd.templates import DOMAINS

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

    def stage_gsrm_student_check(self) -> dict[str, Any] | None:
        """The GSRM on student completions (what it sees during RL), against the rule decomposer."""
        from rlkd.testbed import rule_decompose

        count = self.job.eval.gsrm_student_check
        seed = self.job.seeds[0]
        method = "sft" if "sft" in self.job.methods else self.job.methods[0]
        source = self.path("eval", f"seed{seed}", method, "id", "samples.jsonl")
        out = self.path("gsrm_student_check")
        if count <= 0 or not source.exists():
            return None
        with self.stages.stage(f"GSRM on {count} student completions vs the rule decomposer", out,
                                   "GSRM checks") as todo:
            if todo:
                by_id = {t.id: t for t in self.tasks["test_id"]}
                items = []
                for _, row in iter_jsonl(source):
                    if row["sample"] == 0:  # the first completion of each problem
                        items.append((by_id[row["id"]].problem, row["completion"], rule_decompose(row["completion"])))
                    if len(items) >= count:
                        break
                measured = evaluate_gsrm(self.path("gsrm"), items, max_tokens=self.job.structure.gsrm_max_tokens,
                                         batch_size=self.job.eval.batch_size, prompt=self.gsrm_prompt(),
                                         desc="GSRM on students")
                measured["summary"]["source"] = (f"{METHODS[method][0]} seed {seed}, id split, first completion "
                                                 "per problem")
                _write_jsonl(out / "records.jsonl", measured["records"])
                (out / "summary.json").write_text(json.dumps(measured["summary"], indent=2), encoding="utf-8")
        path = out / "summary.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    # ---- results

    def collect(self, gsrm_eval: Mapping[str, Any], gsrm_student: Mapping[str, Any] | None,
                wall_s: float) -> dict[str, Any]:
        """Gather everything the report needs into one JSON-ready structure (see :mod:`rlkd.report`)."""
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
                     "step_accuracy": {split: v["gsrm"].get("step_accuracy") for split, v in gsrm_eval.items()}},
            "token_stats": json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else None,
            "example": self.example(),
            "data": {"train": len(self.tasks["train"]), "test_id": len(self.tasks["test_id"]),
                     "test_ood": len(self.tasks["test_ood"]), "gsrm_train": len(self.tasks["gsrm"]),
                     "zero": len(self.zero_tasks())},
            "stages": dict(self.stages.records),
            "wall_time_s": round(wall_s, 1),
            "machine": machine_info(),
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
        from rlkd.testbed import alignment, rule_decompose

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


def rl_signal(rows_by_seed: Mapping[str, Sequence[Mapping[str, Any]]], run_dirs: Sequence[Path]) -> dict[str, Any]:
    """Whether an RL arm had a learning signal, from its logs: ``zero_spread_share`` (share of GRPO groups
    whose completions all got the same total reward: TRL's ``frac_reward_zero_std``, mean over logged
    steps and seeds), ``structure_mean`` and ``structure_share`` (the structure term's share of the
    weighted total reward, weights 3/3/2/2 as logged), and ``first_mismatch``: over every completion
    the structure reward scored (its sample log), the step whose meta-reasoning the judge first
    rejected (``none``: no step rejected; ``no steps``: a side had no steps)."""
    zero = [float(r["frac_reward_zero_std"]) for rows in rows_by_seed.values() for r in rows
            if isinstance(r.get("frac_reward_zero_std"), (int, float))]
    structure = [float(r["rewards/structure/mean"]) for rows in rows_by_seed.values() for r in rows
                 if isinstance(r.get("rewards/structure/mean"), (int, float))]
    totals = [float(r["reward"]) for rows in rows_by_seed.values() for r in rows
              if isinstance(r.get("reward"), (int, float)) and "rewards/structure/mean" in r]
    histogram: dict[str, int] = {}
    for folder in run_dirs:
        path = folder / "structure_samples.jsonl"
        if not path.exists():
            continue
        for _, record in iter_jsonl(path):
            steps = record.get("steps") or []
            if not steps:
                key = "no steps"
            else:
                key = next((str(i) for i, s in enumerate(steps, start=1) if s.get("meta") is False), "none")
            histogram[key] = histogram.get(key, 0) + 1
    mean_structure = _mean(structure) if structure else None
    share = None
    if structure and totals and _mean(totals) > 0:
        share = 3.0 * _mean(structure) / _mean(totals)  # the structure weight of the rlkd reward set
    return {"zero_spread_share": _mean(zero) if zero else None, "structure_mean": mean_structure,
            "structure_share": share, "first_mismatch": histogram or None}


def _rule_alignment(decomposition: Any, reference: Any) -> dict[str, Any]:
    from rlkd.testbed import alignment

    return alignment(decomposition, reference)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value and key not in _REPLACED_MAPPINGS:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a killed run
    return rows


def _dump_job(job: DemoJob) -> str:
    return dump_yaml(job)


def machine_info() -> dict[str, Any]:
    """Where the run ran: CPU count, torch threads, GPU (if any), platform."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        pass
    return info


# --------------------------------------------------------------------------------------------------
# rlkd demo


def stage_times(stages: Mapping[str, Mapping[str, Any]]) -> str:
    """Measured seconds per kind of stage (summed over seeds), in the order the stages ran."""
    totals: dict[str, float] = {}
    skipped = 0
    for record in stages.values():
        if record.get("skipped"):
            skipped += 1
            continue
        kind = record.get("kind", "other")
        totals[kind] = totals.get(kind, 0.0) + float(record.get("seconds", 0.0))
    text = "stage times: " + ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in totals.items())
    return text + (f" ({skipped} stages done before, skipped)" if skipped else "")
