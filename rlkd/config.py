"""Configuration of the rlkd jobs: one dataclass per job, filled from a YAML recipe and ``--set``.

The four jobs are :class:`SFTJob` (``rlkd train sft``: the SFT-distillation baseline and GSRM
training), :class:`GRPOJob` (``rlkd train grpo``: RLKD, RLKD-zero and the outcome-reward baseline),
:class:`DataGsrmJob` (``rlkd data gsrm``) and :class:`DataRlkdJob` (``rlkd data rlkd``). Every field
carries its help text in ``metadata["help"]``; ``rlkd train grpo --help`` lists them all.

A recipe is a YAML mapping whose keys are the job's fields (sections nest); the command line then
overrides single fields with ``--set section.field=value`` (the value is read as YAML, so
``--set training.beta=0.1`` gives a float and ``--set rewards.weights="{accuracy: 1}"`` a mapping).
:func:`load_job` checks everything before any heavy work: unknown keys (with a suggestion), wrong
types, values outside their choices and cross-field rules, each error naming the field as a dotted path.

The sections shared with lower layers live there and are used here: :class:`~rlkd.backends.config.BackendConfig`
(every backend section) and :class:`~rlkd.reward_config.StructureConfig` (``structure:``); the recipe
machinery (YAML, ``--set``, field help) is :mod:`rlkd.recipes`. This module adds the jobs, their
cross-field checks and their mapping onto TRL's configuration classes.

How this departs from the authors' code (SPEC section 4):

1. No setting is hard-coded at import time: model paths, server addresses and ports all come from the
   recipe, and the authors' GRPO settings (SPEC section 5) are written out explicitly in
   ``configs/paper/`` and are also the defaults here, because current TRL's defaults differ.
2. ``max_prompt_length`` no longer exists in TRL 1.16's ``GRPOConfig``; rlkd keeps the field and drops
   (and counts) training prompts longer than it, instead of TRL 0.16's silent left truncation.
3. Relative paths in a recipe are relative to the directory the command runs in (the repository root
   in every recipe's opening comment), not to the recipe file.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.backends.config import BackendConfig
from rlkd.errors import ConfigError
from rlkd.recipes import _positive, _require, _within, build_dataclass, merge_overrides, option, read_recipe, section
from rlkd.reward_config import StructureConfig
from rlkd.rewards import REWARD_NAMES, REWARD_SETS
from rlkd.templates import DOMAINS


# The system prompt of the authors' GRPO runs, in our words: think inside <think>, answer inside
# <answer> with the final result in \boxed{}.
SYSTEM_PROMPT = (
    "You are a careful problem solver. First reason about the problem step by step inside "
    "<think> </think> tags, then state the final answer inside <answer> </answer> tags, with the final "
    "result written as \\boxed{...}. Use exactly this layout:\n"
    "<think>\nyour reasoning\n</think>\n<answer>\nyour answer with \\boxed{...}\n</answer>"
)


# --------------------------------------------------------------------------------------------------
# Sections shared by several jobs


@dataclass
class RewardsConfig:
    """Which reward functions GRPO optimises and their weights."""

    set: str | None = option("rlkd", "named reward set: " + "; ".join(
                             f"{name} ({', '.join(f'{k} {v:g}' for k, v in weights.items())})"
                             for name, weights in REWARD_SETS.items())
                             + " (outcome is the SFT+RL baseline); null when weights are given", tuple(REWARD_SETS))
    weights: dict[str, float] | None = option(None, "explicit {reward name: weight} used instead of a set; "
                                              f"names: {', '.join(REWARD_NAMES)}")

    def resolved(self) -> dict[str, float]:
        """The {name: weight} mapping the trainer will use."""
        if self.weights is not None:
            return {k: float(v) for k, v in self.weights.items()}
        return {k: float(v) for k, v in dict(REWARD_SETS[self.set]).items()}


# --------------------------------------------------------------------------------------------------
# Training jobs


@dataclass
class TrainingCommon:
    """Trainer settings shared by SFT and GRPO (they map one to one onto transformers' TrainingArguments)."""

    learning_rate: float = option(5e-5, "peak learning rate (AdamW)")
    lr_scheduler_type: str = option("constant_with_warmup", "learning-rate schedule (transformers name)")
    warmup_steps: float = option(0.1, "warm-up: a fraction of all steps if below 1, else a step count")
    max_grad_norm: float = option(0.2, "gradient clipping norm")
    num_train_epochs: float = option(1.0, "passes over the training set (max_steps wins when set)")
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: run num_train_epochs)")
    per_device_train_batch_size: int = option(8, "completions (GRPO) or examples (SFT) per device per step")
    gradient_accumulation_steps: int = option(1, "micro-batches accumulated per optimiser step")
    save_steps: float = option(100, "write a checkpoint every this many steps (a fraction: of all steps)")
    save_total_limit: int | None = option(None, "keep at most this many checkpoints (null: all)")
    logging_steps: float = option(1, "log metrics every this many steps")
    bf16: bool = option(True, "train in bfloat16 mixed precision (GPU); false on CPU")
    use_cpu: bool = option(False, "train on the CPU even if a GPU is present (CPU recipes)")
    activation_checkpointing: bool = option(True, "recompute activations in the backward pass to save memory "
                                            "(formerly gradient_checkpointing)")
    seed: int = option(42, "random seed of the trainer")
    report_to: list[str] = option(["none"], "experiment trackers (e.g. [wandb]); none: only the local "
                                  "metrics.jsonl and console log")
    extra: dict[str, Any] = option({}, "any other field of TRL's config class, passed through as is (checked "
                                   "against the class's fields)")


@dataclass
class GRPOTraining(TrainingCommon):
    """GRPO settings. The defaults are the authors' TRL 0.16 run expressed in TRL 1.16 (SPEC section 5)."""

    beta: float = option(0.04, "KL coefficient to the reference model (TRL 1.16 default is 0.0; the "
                         "authors' run used 0.04)")
    loss_type: str = option("bnpo", "loss aggregation (TRL 1.16 default dapo; the authors' TRL 0.16 loss "
                            "is bnpo)", ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"))
    scale_rewards: str = option("group", "advantage scaling: group (divide by the group's std, the "
                                "authors' run), batch or none", ("group", "batch", "none"))
    num_generations: int = option(4, "completions sampled per prompt (the group size)")
    temperature: float = option(0.7, "sampling temperature of the student's completions")
    top_p: float = option(1.0, "nucleus sampling of the student's completions")
    max_completion_length: int = option(4096, "most tokens per completion")
    max_prompt_length: int = option(1024, "prompts longer than this many tokens are dropped from the "
                                    "training set (counted and logged)")
    num_iterations: int = option(1, "optimisation passes per generation batch (mu)")
    epsilon: float = option(0.2, "clipping range of the policy ratio")
    use_vllm: bool = option(False, "generate with vLLM (GPU only)")
    vllm_mode: str = option("colocate", "vLLM mode: colocate (same GPUs) or server (trl vllm-serve)",
                            ("colocate", "server"))
    log_completions: bool = option(False, "print a table of sampled completions at each logging step")


@dataclass
class GRPOData:
    """The prompts GRPO trains on: one row per problem, with the reference answer and, for the
    structure reward, the teacher's decomposition precomputed by ``rlkd data rlkd``."""

    path: str = option("", "training set: a .jsonl/.json/.parquet file, a datasets folder, or a hub name")
    split: str = option("train", "split to read from a hub dataset or datasets folder")
    subset: str | None = option(None, "configuration (subset) name of a hub dataset, e.g. metadata")
    problem_column: str = option("problem", "column holding the problem text")
    answer_column: str = option("answer", "column holding the reference answer")
    teacher_structure_column: str = option("teacher_structure", "column holding the teacher's decomposition "
                                           "(GSRM text or JSON); needed by the structure reward")
    system_prompt: str | None = option(SYSTEM_PROMPT, "system message put before each problem (null: none)")
    limit: int | None = option(None, "use only the first N rows (null: all)")


@dataclass
class GRPOJob:
    """``rlkd train grpo``: GRPO on a student with a reward set (RLKD, RLKD-zero, the outcome baseline)."""

    model: str = option("", "student model: hub name, local folder or .gguf file (an SFT output for "
                        "RLKD, a base model for RLKD-zero)")
    output_dir: str = option("", "where checkpoints, the final model, metrics.jsonl and the resolved "
                             "configuration go")
    resume: str = option("auto", "auto: continue from the last checkpoint in output_dir if there is one; "
                         "never: start over; or a checkpoint folder")
    data: GRPOData = section(GRPOData, "training data")
    rewards: RewardsConfig = section(RewardsConfig, "reward functions and weights")
    structure: StructureConfig = section(StructureConfig, "structure reward (GSRM and judge); used when the "
                                         "rewards include 'structure'")
    training: GRPOTraining = section(GRPOTraining, "trainer settings (TRL GRPOConfig)")

    def validate(self) -> None:
        _require(self, "model", "output_dir", "data.path")
        _check_resume(self.resume)
        names = self.reward_names()
        if self.rewards.weights is not None and self.rewards.set is not None:
            raise ConfigError("rewards: give either rewards.set or rewards.weights, not both "
                              "(set rewards.set: null to use explicit weights)")
        if self.rewards.weights is None and self.rewards.set is None:
            raise ConfigError("rewards: give rewards.set or rewards.weights")
        for name, weight in (self.rewards.weights or {}).items():
            if name not in REWARD_NAMES:
                raise ConfigError(f"rewards.weights.{name}: unknown reward; known: {', '.join(REWARD_NAMES)}")
            if weight < 0:
                raise ConfigError(f"rewards.weights.{name}: weight must be >= 0, got {weight}")
        if "structure" in names:
            self.structure.gsrm.check("structure.gsrm", "the structure reward")
            if self.structure.uses_llm_judge():
                self.structure.judge_backend.check("structure.judge_backend", "the llm judge")
            _positive(self.structure, "structure", "gsrm_max_tokens")
            self.structure.check_prompt("structure")
        _within(self.structure, "structure", "max_failure_share", 0.0, 1.0)
        _within(self.structure, "structure", "max_batch_failure_share", 0.0, 1.0)
        _within(self.structure, "structure", "overlap_threshold", 0.0, 1.0)
        _within(self.structure, "structure", "min_failures", 1, None)
        _within(self.structure, "structure", "gsrm_max_trace_chars", 0, None)
        _within(self.structure, "structure", "samples_per_step", 0, None)
        t = self.training
        _within(t, "training", "beta", 0.0, None)
        _within(t, "training", "top_p", 0.0, 1.0, low_open=True)
        _within(t, "training", "epsilon", 0.0, None)
        _positive(t, "training", "num_generations", "max_completion_length", "max_prompt_length",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations")
        if t.num_generations < 2:
            raise ConfigError("training.num_generations: GRPO needs at least 2 completions per prompt")
        if t.temperature <= 0:
            raise ConfigError("training.temperature: must be > 0 (GRPO samples its completions)")
        _validate_common(t)

    def reward_names(self) -> list[str]:
        """Names of the reward functions in use."""
        return list(self.rewards.resolved())


@dataclass
class SFTTraining(TrainingCommon):
    """SFT settings (TRL SFTConfig). The paper does not report its SFT hyperparameters; these defaults
    are common choices for distilling long reasoning traces into a 7B model."""

    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    lr_scheduler_type: str = option("cosine", "learning-rate schedule (transformers name)")
    warmup_steps: float = option(0.03, "warm-up: a fraction of all steps if below 1, else a step count")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    num_train_epochs: float = option(3.0, "passes over the training set (max_steps wins when set)")
    per_device_train_batch_size: int = option(1, "examples per device per step")
    gradient_accumulation_steps: int = option(8, "micro-batches accumulated per optimiser step")
    max_length: int = option(16384, "examples are truncated to this many tokens")
    packing: bool = option(False, "pack several short examples into one sequence")


@dataclass
class SFTData:
    """What SFT trains on: chat data as is, or teacher traces turned into chat data."""

    path: str = option("", "training set: a .jsonl/.json/.parquet file, a datasets folder, or a hub name")
    split: str = option("train", "split to read from a hub dataset or datasets folder")
    subset: str | None = option(None, "configuration (subset) name of a hub dataset, e.g. metadata")
    format: str = option("traces", "traces: build chat examples from problem/teacher_reasoning/answer "
                         "columns (the SFT-distillation baseline); chat: the rows already have 'messages' "
                         "or 'prompt' and 'completion' message lists (GSRM training data from rlkd data "
                         "gsrm); text: plain language modelling on text_column (pretraining a base model)",
                         ("traces", "chat", "text"))
    text_column: str = option("text", "text: column holding each training text")
    prompt_column: str | None = option(None, "text: column holding a text that comes before each training text "
                                       "and is not trained on (the loss is on text_column only); null: none")
    problem_column: str = option("problem", "traces: column holding the problem text")
    reasoning_column: str = option("teacher_reasoning", "traces: column holding the teacher's reasoning "
                                   "(the text before </think>)")
    solution_column: str | None = option("teacher_solution", "traces: column holding the teacher's text after "
                                         "</think> (optional; when missing or empty, the answer in \\boxed{})")
    answer_column: str = option("answer", "traces: column holding the reference answer")
    system_prompt: str | None = option(SYSTEM_PROMPT, "traces: system message before each problem (null: none)")
    limit: int | None = option(None, "use only the first N rows (null: all)")


@dataclass
class SFTJob:
    """``rlkd train sft``: supervised fine-tuning (the SFT-distillation baseline, or the GSRM)."""

    model: str = option("", "model to fine-tune: hub name, local folder or .gguf file")
    output_dir: str = option("", "where checkpoints, the final model, metrics.jsonl and the resolved "
                             "configuration go")
    resume: str = option("auto", "auto: continue from the last checkpoint in output_dir if there is one; "
                         "never: start over; or a checkpoint folder")
    data: SFTData = section(SFTData, "training data")
    training: SFTTraining = section(SFTTraining, "trainer settings (TRL SFTConfig)")

    def validate(self) -> None:
        _require(self, "model", "output_dir", "data.path")
        _check_resume(self.resume)
        _positive(self.training, "training", "max_length", "per_device_train_batch_size",
                  "gradient_accumulation_steps")
        _validate_common(self.training)


# --------------------------------------------------------------------------------------------------
# Data jobs


# the run settings both data jobs share: (default, help)
_DATA_OPTIONS: dict[str, tuple[Any, str]] = {
    "batch_size": (64, "records sent per batch (and written per flush)"),
    "limit": (None, "process only the first N records (null: all)"),
    "max_failure_share": (0.2, "stop when more than this share of records failed (backend error or unparsable "
                               "output), checked once min_failures records were sent"),
    "min_failures": (10, "records sent before max_failure_share is first checked"),
}


def _data_option(name: str) -> Any:
    """The field ``name`` of :data:`_DATA_OPTIONS`, as :func:`rlkd.recipes.option` declares it."""
    return option(*_DATA_OPTIONS[name])


def _check_data_options(job: Any) -> None:
    """The checks of the settings both data jobs share (:data:`_DATA_OPTIONS`, ``max_tokens``,
    ``max_trace_chars``); ConfigError naming the field."""
    _positive(job, "", "max_tokens", "batch_size")
    _within(job, "", "max_failure_share", 0.0, 1.0)
    _within(job, "", "min_failures", 1, None)
    _within(job, "", "max_trace_chars", 0, None)


@dataclass
class DataGsrmJob:
    """``rlkd data gsrm``: teacher traces -> decompositions by a strong LLM -> chat SFT data for the GSRM."""

    input: str = option("", "teacher traces: a .jsonl/.json/.parquet file, a datasets folder, or a hub name")
    split: str = option("train", "split to read from a hub dataset or datasets folder")
    subset: str | None = option(None, "configuration (subset) name of a hub dataset, e.g. metadata")
    id_column: str | None = option(None, "column holding a unique record id (null: the record's position)")
    problem_column: str = option("problem", "column holding the problem text")
    reasoning_column: str = option("reasoning", "column holding the teacher's trace (text after </think> "
                                   "is cut off)")
    domain_column: str | None = option(None, "column holding each record's domain (math, code, science, "
                                       "puzzle); null: every record is default_domain")
    default_domain: str = option("math", "domain of records without a domain column", DOMAINS)
    output: str = option("", "chat-format SFT dataset (JSONL, appended; a re-run resumes it)")
    failures: str | None = option(None, "JSONL of records left out, with the reason (null: <output>.failures.jsonl)")
    backend: BackendConfig = section(BackendConfig, "the strong LLM that writes the decompositions")
    request_cache: bool = option(True, "cache requests in <output>.cache.sqlite unless backend.cache names a file")
    max_tokens: int = option(4096, "most tokens per decomposition (the LLM decodes greedily)")
    max_trace_chars: int = option(24000, "longer traces keep their first 2/3 and last 1/3 of this many "
                                  "characters (the same cut the GSRM sees in training)")
    few_shot: bool = option(True, "show the strong LLM the prompt's worked example")
    sft_few_shot: bool = option(False, "keep the worked example in the prompts written to the SFT data (false: "
                                "the GSRM learns the bare instruction; then use structure.gsrm_few_shot=false)")
    batch_size: int = _data_option("batch_size")
    limit: int | None = _data_option("limit")
    max_failure_share: float = _data_option("max_failure_share")
    min_failures: int = _data_option("min_failures")

    def validate(self) -> None:
        _require(self, "input", "output")
        self.backend.check("backend", "rlkd data gsrm")
        _check_data_options(self)

    def failures_path(self) -> Path:
        return Path(self.failures) if self.failures else Path(self.output + ".failures.jsonl")

    def cache_path(self) -> str | None:
        if self.backend.cache:
            return self.backend.cache
        return self.output + ".cache.sqlite" if self.request_cache else None


@dataclass
class DataRlkdJob:
    """``rlkd data rlkd``: OpenR1-Math-style records -> train/test sets with the first correct teacher
    generation and its decomposition precomputed by the GSRM."""

    input: str = option("", "records: a .jsonl/.json/.parquet file, a datasets folder, or a hub name "
                        "(e.g. open-r1/OpenR1-Math-220k)")
    split: str = option("train", "split to read from a hub dataset or datasets folder")
    subset: str | None = option(None, "configuration (subset) name of a hub dataset, e.g. metadata")
    id_column: str | None = option(None, "column holding a unique record id (null: the record's position)")
    problem_column: str = option("problem", "column holding the problem text")
    answer_column: str = option("answer", "column holding the reference answer")
    generations_column: str = option("generations", "column holding the list of teacher generations")
    correctness_column: str = option("correctness_math_verify", "column holding one correctness flag per "
                                     "generation; the first generation flagged true is used")
    output_dir: str = option("", "gets train.jsonl, test.jsonl and skipped.jsonl (appended; a re-run resumes)")
    test_size: float = option(0.05, "test split: a fraction of the usable records if below 1, else a count")
    seed: int = option(0, "seed of the train/test split")
    domain: str = option("math", "domain named in the GSRM prompt", DOMAINS)
    gsrm: BackendConfig = section(BackendConfig, "the GSRM that decomposes the teacher's reasoning")
    request_cache: bool = option(True, "cache requests in <output_dir>/gsrm.cache.sqlite unless gsrm.cache names a file")
    max_tokens: int = option(2048, "most tokens per decomposition")
    max_trace_chars: int = option(24000, "longer traces keep their first 2/3 and last 1/3 of this many characters")
    gsrm_few_shot: bool = option(False, "include the prompt's worked example (false for a GSRM fine-tuned on "
                                 "rlkd data gsrm output; must match structure.gsrm_few_shot in training)")
    batch_size: int = _data_option("batch_size")
    limit: int | None = _data_option("limit")
    max_failure_share: float = _data_option("max_failure_share")
    min_failures: int = _data_option("min_failures")

    def validate(self) -> None:
        _require(self, "input", "output_dir")
        self.gsrm.check("gsrm", "rlkd data rlkd")
        if self.test_size < 0:
            raise ConfigError(f"test_size: must be >= 0, got {self.test_size}")
        if self.test_size >= 1 and self.test_size != int(self.test_size):
            raise ConfigError(f"test_size: a count must be a whole number, got {self.test_size}")
        _check_data_options(self)

    def cache_path(self) -> str | None:
        if self.gsrm.cache:
            return self.gsrm.cache
        return str(Path(self.output_dir) / "gsrm.cache.sqlite") if self.request_cache else None


# --------------------------------------------------------------------------------------------------
# Cross-field checks


def _check_resume(value: str) -> None:
    if value not in ("auto", "never") and not Path(value).is_dir():
        raise ConfigError(f"resume: expected auto, never or an existing checkpoint folder, got {value!r}")


def _validate_common(t: TrainingCommon) -> None:
    _positive(t, "training", "max_grad_norm", "num_train_epochs", "logging_steps")
    if t.learning_rate <= 0:
        raise ConfigError(f"training.learning_rate: must be > 0, got {t.learning_rate}")
    if t.warmup_steps < 0:
        raise ConfigError(f"training.warmup_steps: must be >= 0, got {t.warmup_steps}")
    if t.max_steps == 0 or t.max_steps < -1:
        raise ConfigError(f"training.max_steps: must be -1 or > 0, got {t.max_steps}")
    if t.save_steps <= 0:
        raise ConfigError(f"training.save_steps: must be > 0, got {t.save_steps}")
    if t.bf16 and t.use_cpu:
        raise ConfigError("training.bf16: bfloat16 mixed precision needs a GPU; set training.bf16=false with "
                          "training.use_cpu=true")
    declared = {f.name for f in dataclasses.fields(t)}
    for key in t.extra:
        if key in declared:
            raise ConfigError(f"training.extra.{key}: set it as training.{key}, not under extra")


# --------------------------------------------------------------------------------------------------
# Building a job from YAML and overrides


def build_job(cls: type, data: Mapping[str, Any]) -> Any:
    """Build and validate a job from a mapping (what a recipe plus overrides give)."""
    rewards = data.get("rewards")
    if isinstance(rewards, Mapping) and rewards.get("weights") is not None and "set" not in rewards:
        data = {**data, "rewards": {**rewards, "set": None}}  # explicit weights replace the default set
    job = build_dataclass(cls, data)
    job.validate()
    return job


def load_job(cls: type, config: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """Read the recipe (if any), apply ``--set`` overrides, then build and validate the job."""
    data = read_recipe(config) if config else {}
    return build_job(cls, merge_overrides(data, overrides))


# --------------------------------------------------------------------------------------------------
# Mapping onto TRL's configuration classes

# fields rlkd handles itself instead of passing them to TRL
RLKD_ONLY_TRAINING_FIELDS = ("max_prompt_length", "extra")


def trl_kwargs(job: GRPOJob | SFTJob) -> dict[str, Any]:
    """Keyword arguments for TRL's ``GRPOConfig`` / ``SFTConfig``: the declared training fields, the
    ``extra`` pass-through, the output folder and, for GRPO, the reward weights in reward order."""
    t = job.training
    kwargs = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in RLKD_ONLY_TRAINING_FIELDS}
    kwargs.update(t.extra)
    kwargs["output_dir"] = job.output_dir
    kwargs["save_strategy"] = "steps"
    if isinstance(job, GRPOJob):
        kwargs["reward_weights"] = list(job.rewards.resolved().values())
    return kwargs


def trl_config_class(job: GRPOJob | SFTJob) -> type:
    """TRL's configuration class for the job (imports trl)."""
    if isinstance(job, GRPOJob):
        from trl import GRPOConfig

        return GRPOConfig
    from trl import SFTConfig

    return SFTConfig


def check_trl_fields(job: GRPOJob | SFTJob) -> None:
    """Every ``training.extra`` key must be a field of the TRL configuration class (imports trl)."""
    cls = trl_config_class(job)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in job.training.extra:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"training.extra.{key}: not a field of TRL's {cls.__name__}{hint}")
    for key in ("output_dir", "reward_weights", "save_strategy"):
        if key in job.training.extra:
            raise ConfigError(f"training.extra.{key}: rlkd sets this itself")


def build_trl_config(job: GRPOJob | SFTJob, *, preview: bool = False) -> tuple[Any, list[str]]:
    """Build TRL's configuration object; return it with notes for the reader.

    With ``preview=True`` (``--dry-run``) a GPU-only setting that this machine cannot honour (bf16
    without a GPU) is switched off for the preview and reported in the notes, so that a GPU recipe can
    be checked on a laptop; the real run uses the recipe's value.
    """
    cls = trl_config_class(job)
    kwargs = trl_kwargs(job)
    notes: list[str] = []
    if preview and kwargs.get("bf16") and not kwargs.get("use_cpu"):
        import torch

        if not torch.cuda.is_available():
            kwargs["bf16"] = False
            notes.append("no GPU here: the preview was built with bf16=false (shown above); the run uses the "
                         "recipe's bf16=true and needs a GPU")
    if isinstance(job, GRPOJob) and kwargs.get("generation_batch_size") is None:
        notes.append("generation_batch_size is computed for the processes of this command; under accelerate "
                     "launch it is per_device_train_batch_size x processes x steps_per_generation")
    try:
        return cls(**kwargs), notes
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training: TRL's {cls.__name__} rejected the settings: {exc}") from None


# the GRPOConfig values the dry run prints first (SPEC section 5 and what shapes a step)
GRPO_SHOWN = (
    "beta", "loss_type", "scale_rewards", "num_generations", "temperature", "top_p", "learning_rate",
    "lr_scheduler_type", "warmup_steps", "max_grad_norm", "max_completion_length", "num_iterations", "epsilon",
    "per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
    "steps_per_generation", "num_train_epochs", "max_steps", "save_steps", "logging_steps", "bf16", "use_cpu",
    "activation_checkpointing", "use_vllm", "vllm_mode", "reward_weights", "seed", "output_dir",
)
SFT_SHOWN = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "max_grad_norm", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "packing",
    "completion_only_loss", "save_steps", "logging_steps", "bf16", "use_cpu", "activation_checkpointing",
    "seed", "output_dir",
)


def shown_trl_values(job: GRPOJob | SFTJob, trl_config: Any) -> dict[str, Any]:
    """The TRL configuration values worth printing: the key ones first, then every extra key."""
    import enum

    names = list(GRPO_SHOWN if isinstance(job, GRPOJob) else SFT_SHOWN)
    names += [k for k in job.training.extra if k not in names]
    values = {}
    for name in names:
        if hasattr(trl_config, name):
            value = getattr(trl_config, name)
            values[name] = value.value if isinstance(value, enum.Enum) else value
    return values
