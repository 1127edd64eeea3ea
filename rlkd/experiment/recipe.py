"""The demo's recipe: :class:`DemoJob` and its sections, read from YAML with ``--set`` overrides
(:func:`load_demo_job`), the methods and the RL plan, and the run folder's file names."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.config import ConfigError, GRPOTraining, SFTTraining, StructureConfig, build_job
from rlkd.recipes import _positive, merge_overrides, option, read_recipe, section

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
    train: int = option(2000, "training tasks (SFT traces and RL prompts)")
    test_id: int = option(10, "in-distribution test tasks (same knobs as training, disjoint structures)")
    test_ood: int = option(5, "out-of-distribution test tasks (deeper chains, more distractors)")
    gsrm_train: int = option(300, "tasks whose teacher traces train the GSRM (disjoint from the test sets)")
    gsrm_prefixes: bool = option(True, "also train the GSRM on each of its traces cut after every computation but "
                                 "the last (rlkd.testbed.trace_prefixes): more steps whose answer is read from "
                                 "the end of the text, the answers a GSRM gets wrong most (docs/demo-results.md)")
    gsrm_test: int = option(64, "held-out teacher traces per split on which the GSRM's accuracy is measured (tasks "
                            "of their own, disjoint from every other set)")
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
    tasks: int = option(80000, "pretraining tasks (one text each; drawn from their own generator stream)")
    seed: int = option(1000, "seed of the pretraining tasks, the tokenizer and the initial weights")
    knobs: dict[str, Any] = option({}, "testbed knobs of the pretraining tasks (overrides of "
                                   "rlkd.testbed.SPLITS['id']; never the ood split's)")
    vocab_size: int = option(1024, "BPE vocabulary (every testbed name and number stays one token)")
    hidden_size: int = option(128, "hidden size")
    num_layers: int = option(4, "transformer layers")
    num_heads: int = option(4, "attention heads")
    max_position_embeddings: int = option(1024, "context length")
    probe_tasks: int = option(64, "held-out tasks on which every checkpoint's look-ups are measured")
    copying_steps: int = option(0, "steps of a copying warm-up before the problem language "
                                "(rlkd.testbed.copying_texts: a run of names repeated at a random offset; "
                                "0: none; with TRL's default Adam beta2 0.999 the copy formed in one build and not in "
                                "another, with pretraining.extra {adam_beta2: 0.98} (the default) by 2,500 steps: see "
                                "docs/demo-results.md)")
    continued_steps: int = option(4000, "steps of continued pretraining after the first stage: the first stage's "
                                  "model on base.tasks fresh problems (seed continued_seed), a new cosine schedule "
                                  "from continued_learning_rate; 0: none (4,000 took SFT's id pass@1 from 0.28 to "
                                  "0.39: docs/demo-results.md)")
    continued_seed: int = option(2000, "seed of the continued stage's problems and its data order")
    continued_learning_rate: float = option(0.0015, "peak learning rate of the continued stage (the first stage's "
                                            "schedule ended at 0; warm-up and the other fields are pretraining's)")
    copying_texts: int = option(128000, "copying warm-up texts (their own seed stream)")
    copying_max_loss: float | None = option(3.0, "the warm-up's last logged loss must be at most this, else the "
                                            "build stops before the problem language: the copy did not form "
                                            "(a uniform guess over the names is 4.38). Raise copying_steps and "
                                            "run again (it resumes), and keep pretraining.extra {adam_beta2: "
                                            "0.98}; null: no check")


@dataclass
class EvalSection:
    """Sampling evaluation of every model on both test splits (SPEC section 6 settings by default)."""

    n: int = option(16, "completions sampled per problem (pass@1 is their mean correctness; pass@k is reported "
                    "for k = 1, 2, 4, ... n, as rlkd eval does)")
    temperature: float = option(0.6, "sampling temperature")
    top_p: float = option(0.95, "nucleus sampling")
    max_tokens_id: int = option(144, "most new tokens per completion on the in-distribution split")
    max_tokens_ood: int = option(224, "most new tokens per completion on the out-of-distribution split")
    batch_size: int = option(160, "sequences per generate batch (a batch stops when its longest completion "
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
                        max_completion_length=144, max_prompt_length=512, save_steps=100000, logging_steps=1,
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
    workers: int = option(0, "stages run side by side in this many worker processes, each as soon as the stages it "
                          "needs are done (1: one after another in this process; 0: one per usable CPU core, at "
                          "most 4, on the CPU, and 1 on a GPU). Each worker's output goes to <output>/logs/")
    threads: int = option(0, "torch threads per worker (0: the usable cores shared among the workers; with one "
                          "worker, torch's default)")
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
    pretraining: SFTTraining = option(_sft_defaults(max_steps=5000, per_device_train_batch_size=32,
                                                    warmup_steps=0.02, save_steps=500, logging_steps=50,
                                                    extra={"adam_beta2": 0.98}),
                                      "the base student's pretraining (rlkd train sft on text, resumable)")
    gsrm_training: SFTTraining = option(_sft_defaults(max_steps=1800, per_device_train_batch_size=4),
                                        "GSRM fine-tuning (TRL SFTConfig fields, as in rlkd train sft)")
    sft: SFTTraining = option(_sft_defaults(max_steps=400), "the SFT baseline's training (also the start of "
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
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0 (0: automatic), got {self.workers}")
        if self.threads < 0:
            raise ConfigError(f"threads: must be >= 0 (0: automatic), got {self.threads}")
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
