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
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.errors import ConfigError
from rlkd.judges import FIELD_JUDGES, JUDGES
from rlkd.structure import MODES as STRUCTURE_MODES
from rlkd.templates import DOMAINS
from rlkd.rewards import REWARD_NAMES, REWARD_SETS


# The system prompt of the authors' GRPO runs, in our words: think inside <think>, answer inside
# <answer> with the final result in \boxed{}.
SYSTEM_PROMPT = (
    "You are a careful problem solver. First reason about the problem step by step inside "
    "<think> </think> tags, then state the final answer inside <answer> </answer> tags, with the final "
    "result written as \\boxed{...}. Use exactly this layout:\n"
    "<think>\nyour reasoning\n</think>\n<answer>\nyour answer with \\boxed{...}\n</answer>"
)


def option(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with its help text (and allowed values) in the metadata."""
    meta = {"help": help, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    """A nested configuration section (a dataclass field holding another dataclass)."""
    return field(default_factory=cls, metadata={"help": help, "choices": None})


# --------------------------------------------------------------------------------------------------
# Sections shared by several jobs


@dataclass
class BackendConfig:
    """Where LLM text comes from: an OpenAI-compatible server (vLLM, ``transformers serve``, a provider)
    or a local model folder run in-process with transformers."""

    base_url: str | None = option(None, "server address, e.g. http://127.0.0.1:8000/v1 (or set local_model)")
    model: str | None = option(None, "model name the server knows (for vLLM: the served model name)")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key; keys never "
                              "go in recipes; unset variable means no key")
    concurrency: int = option(16, "requests in flight at once")
    timeout: float = option(120.0, "seconds per request")
    max_retries: int = option(4, "retries of a transient failure, with exponential backoff")
    cache: str | None = option(None, "SQLite request cache file; a re-run answers from it")
    local_model: str | None = option(None, "local model folder, .gguf file or hub name run in-process "
                                     "with transformers instead of a server (CPU recipes, tests)")
    local_batch_size: int = option(8, "local_model: sequences per generate batch")

    def configured(self) -> bool:
        """Whether a server or a local model is given."""
        return bool(self.base_url or self.local_model)

    def check(self, where: str, needed_for: str) -> None:
        """Raise ConfigError unless exactly one of base_url / local_model is set (and model with a server)."""
        if not self.configured():
            raise ConfigError(f"{where}: {needed_for} needs a backend: set {where}.base_url (with {where}.model) "
                              f"or {where}.local_model")
        if self.base_url and self.local_model:
            raise ConfigError(f"{where}: give either {where}.base_url or {where}.local_model, not both")
        if self.base_url and not self.model:
            raise ConfigError(f"{where}.model: required with {where}.base_url (the model name the server knows)")
        _positive(self, where, "concurrency", "timeout", "local_batch_size")
        if self.max_retries < 0:
            raise ConfigError(f"{where}.max_retries: must be >= 0, got {self.max_retries}")
        from rlkd.backends import check_backend_numbers

        try:  # the same limits as the command-line options: finite, bounded
            check_backend_numbers(dataclasses.asdict(self), lambda name: f"{where}.{name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def as_backend_config(self, cache: str | None = None) -> dict[str, Any]:
        """The mapping :func:`rlkd.backends.backend_from_config` takes (``cache`` overrides the field)."""
        config = dataclasses.asdict(self)
        if cache is not None:
            config["cache"] = cache
        if self.local_model:  # server-only settings do not apply in-process
            for name in ("api_key_env", "concurrency", "timeout", "max_retries"):
                config.pop(name)
        else:
            config.pop("local_batch_size")
        return {k: v for k, v in config.items() if v is not None}


@dataclass
class StructureConfig:
    """The structure reward: the GSRM that decomposes student completions and the judge that compares
    their steps with the teacher's (SPEC section 3)."""

    decomposer: str = option("gsrm", "what decomposes the student's completions: gsrm (the GSRM behind the gsrm "
                             "backend) or rule (rlkd.testbed.rule_decompose, the exact decomposer of the "
                             "synthetic testbed's traces: an oracle GSRM for testbed data, no model calls)",
                             ("gsrm", "rule"))
    gsrm: BackendConfig = section(BackendConfig, "the GSRM backend (a server with base_url/model, or local_model)")
    domain: str = option("math", "domain named in the GSRM prompt", DOMAINS)
    gsrm_prompt: str | None = option(None, "a GSRM prompt file (the format of rlkd/prompts/gsrm_math.txt) used "
                                     "instead of domain's packaged prompt, e.g. the prompt a fine-tuned GSRM "
                                     "was trained on; null: the packaged prompt of domain")
    gsrm_max_tokens: int = option(2048, "most tokens the GSRM may write per decomposition")
    gsrm_max_trace_chars: int = option(24000, "longer completions keep their first 2/3 and last 1/3 of this "
                                       "many characters before the GSRM sees them")
    judge: str = option("hybrid", "how step fields are compared; 'llm' asks judge_backend", JUDGES)
    meta_judge: str = option("overlap", "hybrid judge: judge for meta-reasoning", FIELD_JUDGES)
    subproblem_judge: str = option("overlap", "hybrid judge: judge for sub-problems", FIELD_JUDGES)
    answer_judge: str = option("math", "hybrid judge: judge for answers", FIELD_JUDGES)
    overlap_threshold: float = option(0.5, "token F1 at or above which the overlap judge says 'same'")
    judge_batched: bool = option(False, "llm judge: ask for all verdicts of a pair in one JSON request")
    judge_backend: BackendConfig = section(BackendConfig, "the LLM judge's backend (judge 'llm' or a hybrid "
                                           "field set to 'llm')")
    gsrm_few_shot: bool = option(False, "include the prompt's worked example: false for a GSRM fine-tuned by "
                                 "rlkd train sft on rlkd data gsrm output (it was trained without it), true for "
                                 "an instruction model used as is")
    mode: str = option("paper", "paper: the authors' algorithm; normalized: divided by the teacher's step "
                       "count; ungated: no prefix gate", STRUCTURE_MODES)
    lazy: bool = option(False, "judge meta-reasoning in order and stop at the first mismatch (fewer calls; "
                        "no effect with early_exit, which judges in order anyway)")
    early_exit: bool = option(True, "stream the GSRM's reply, judge each step as it is written and stop the "
                              "generation once the reward is decided (first meta-reasoning mismatch, or the "
                              "teacher's step count): the same rewards for far fewer generated tokens "
                              "(SPEC section 8); false: every decomposition is generated to its end")
    max_failure_share: float = option(0.1, "training stops once more than this share of GSRM calls (or judge "
                                      "verdicts) over the job failed, checked once min_failures have been seen")
    min_failures: int = option(20, "GSRM calls (or verdicts) seen before max_failure_share is first checked")
    max_batch_failure_share: float | None = option(None, "training also stops when more than this share of "
                                                      "one batch lost its structure reward (a server dying late "
                                                      "in a long run); default max(0.5, max_failure_share)")
    sample_log: bool = option(True, "append a few scored completions per step to <output_dir>/structure_samples.jsonl "
                              "(read it with rlkd inspect --pairs)")
    samples_per_step: int = option(2, "completions per step written to the sample log")

    def prompt_source(self) -> str:
        """The GSRM prompt as :class:`rlkd.gsrm.Decomposer` takes it: the absolute path of ``gsrm_prompt``
        when set (never mistaken for a domain name), else ``domain``."""
        return str(Path(self.gsrm_prompt).expanduser().resolve()) if self.gsrm_prompt else self.domain

    def check_prompt(self, where: str = "structure") -> None:
        """Raise ConfigError naming ``<where>.gsrm_prompt`` unless it is null or a readable prompt file."""
        if self.gsrm_prompt is None:
            return
        field = f"{where}.gsrm_prompt"
        if not self.gsrm_prompt.strip():
            raise ConfigError(f"{field}: empty (null: the packaged prompt of {where}.domain)")
        if not Path(self.gsrm_prompt).expanduser().is_file():
            raise ConfigError(f"{field}: {self.gsrm_prompt}: no such file")
        from rlkd.templates import load_prompt

        try:
            load_prompt(self.prompt_source())
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{field}: {exc}") from None

    def uses_llm_judge(self) -> bool:
        """Whether any field is judged by the LLM judge."""
        if self.judge == "llm":
            return True
        return self.judge == "hybrid" and "llm" in (self.meta_judge, self.subproblem_judge, self.answer_judge)


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
    batch_size: int = option(64, "records sent per batch (and written per flush)")
    limit: int | None = option(None, "process only the first N records (null: all)")
    max_failure_share: float = option(0.2, "stop when more than this share of records failed (backend error or "
                                      "unparsable output), checked once min_failures records were sent")
    min_failures: int = option(10, "records sent before max_failure_share is first checked")

    def validate(self) -> None:
        _require(self, "input", "output")
        self.backend.check("backend", "rlkd data gsrm")
        _positive(self, "", "max_tokens", "batch_size")
        if not 0.0 <= self.max_failure_share <= 1.0:
            raise ConfigError(f"max_failure_share: must be within [0, 1], got {self.max_failure_share}")
        _within(self, "", "min_failures", 1, None)
        _within(self, "", "max_trace_chars", 0, None)

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
    batch_size: int = option(64, "records sent per batch (and written per flush)")
    limit: int | None = option(None, "process only the first N records (null: all)")
    max_failure_share: float = option(0.2, "stop when more than this share of records failed (backend error or "
                                      "unparsable output), checked once min_failures records were sent")
    min_failures: int = option(10, "records sent before max_failure_share is first checked")

    def validate(self) -> None:
        _require(self, "input", "output_dir")
        self.gsrm.check("gsrm", "rlkd data rlkd")
        if self.test_size < 0:
            raise ConfigError(f"test_size: must be >= 0, got {self.test_size}")
        if self.test_size >= 1 and self.test_size != int(self.test_size):
            raise ConfigError(f"test_size: a count must be a whole number, got {self.test_size}")
        _positive(self, "", "max_tokens", "batch_size")
        if not 0.0 <= self.max_failure_share <= 1.0:
            raise ConfigError(f"max_failure_share: must be within [0, 1], got {self.max_failure_share}")
        _within(self, "", "min_failures", 1, None)
        _within(self, "", "max_trace_chars", 0, None)

    def cache_path(self) -> str | None:
        if self.gsrm.cache:
            return self.gsrm.cache
        return str(Path(self.output_dir) / "gsrm.cache.sqlite") if self.request_cache else None


JOBS: dict[str, type] = {"sft": SFTJob, "grpo": GRPOJob, "data-gsrm": DataGsrmJob, "data-rlkd": DataRlkdJob}


# --------------------------------------------------------------------------------------------------
# Cross-field checks


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _require(job: Any, *dotted: str) -> None:
    for name in dotted:
        if not _get(job, name):
            raise ConfigError(f"{name}: required (set it in the recipe or with --set {name}=...)")


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{where}: must be > 0, got {value}")


def _within(obj: Any, prefix: str, name: str, low: float | None, high: float | None, low_open: bool = False) -> None:
    """Raise ConfigError naming ``prefix.name`` unless its value (None is skipped) lies in [low, high]
    (``(low, high]`` with ``low_open``); None for a bound means unbounded."""
    value = getattr(obj, name)
    if value is None:
        return
    where = f"{prefix}.{name}" if prefix else name
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        shown = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise ConfigError(f"{where}: must be within {shown}, got {value}")


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


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is Any:
        return "any value"
    return {"str": "string", "int": "integer", "float": "number", "bool": "true/false",
            "dict": "mapping", "list": "list"}.get(getattr(tp, "__name__", str(tp)), getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int accepted for float); raise naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {_describe(value)}")
        return _build(tp, value, where + ".")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        (it,) = typing.get_args(tp)
        return [_convert(v, it, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_type_name(type(value))} {text}"


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}{key}: unknown field of {cls.__name__}{hint}; known fields: "
                              f"{', '.join(fields)}")
        where = prefix + key
        converted = _convert(value, hints[key], where)
        choices = fields[key].metadata.get("choices")
        if choices and converted is not None and converted not in choices:
            raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(map(str, choices))}")
        kwargs[key] = converted
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value read as YAML)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set training.max_steps=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: empty field name")
    try:
        value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({' '.join(str(exc).split())})") from None
    return key.split("."), value


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; anything far larger is a mistake


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML the safe way, in bounded time and memory: plain data only (``yaml.SafeLoader``), no
    aliases (``*name``, which can expand exponentially), no key given twice in one mapping, at most
    MAX_RECIPE_BYTES. Raises ConfigError naming ``source`` and the line; yaml.YAMLError for bad syntax."""
    import yaml

    if len(text.encode("utf-8", errors="replace")) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_RECIPE_BYTES} bytes; a recipe is a page of settings")

    class RecipeLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ConfigError(f"{source}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) "
                                  "are not accepted; write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if first is not None:
                    raise ConfigError(f"{source}: line {key_node.start_mark.line + 1}: key {key!r} appears twice "
                                      f"in one mapping (first on line {first})")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe as a mapping (an empty file is an empty mapping)."""
    import yaml

    try:
        if Path(path).is_file() and Path(path).stat().st_size > MAX_RECIPE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_RECIPE_BYTES} bytes; a recipe is a page of settings")
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a recipe file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from None
    try:
        data = load_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return data


def merge_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a recipe mapping (a copy)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def build_job(cls: type, data: Mapping[str, Any]) -> Any:
    """Build and validate a job from a mapping (what a recipe plus overrides give)."""
    rewards = data.get("rewards")
    if isinstance(rewards, Mapping) and rewards.get("weights") is not None and "set" not in rewards:
        data = {**data, "rewards": {**rewards, "set": None}}  # explicit weights replace the default set
    job = _build(cls, data)
    job.validate()
    return job


def load_job(cls: type, config: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """Read the recipe (if any), apply ``--set`` overrides, then build and validate the job."""
    data = read_recipe(config) if config else {}
    return build_job(cls, merge_overrides(data, overrides))


# --------------------------------------------------------------------------------------------------
# Printing


def to_dict(job: Any) -> dict[str, Any]:
    """The job as plain data, fields in declaration order."""
    return dataclasses.asdict(job)


def dump_yaml(job: Any) -> str:
    """The job as a YAML recipe that :func:`load_job` reads back to an equal job."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None  # multi-line strings (system prompts) as literal blocks
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(to_dict(job), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every field of a job, nested sections flattened."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += f" [{'|'.join(map(str, f.metadata['choices']))}]"
        rows.append((prefix + f.name, repr(default) if not isinstance(default, str) else default, help_text))
    return rows


def fields_help(cls: type) -> str:
    """Text listing every field of a job with its default and help (used as the --help epilog)."""
    lines = [f"{cls.__name__} fields (recipe keys; override with --set NAME=VALUE):"]
    for name, default, help_text in describe_fields(cls):
        shown = default if len(default) <= 40 else default[:37] + "..."
        shown = shown.replace("\n", "\\n")
        lines.append(f"  {name} = {shown}\n      {help_text}")
    return "\n".join(lines)


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
