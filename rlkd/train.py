"""Training: the work of ``rlkd train sft`` and ``rlkd train grpo`` on Hugging Face TRL (options: :mod:`rlkd.cli.train`).

- ``rlkd train sft --config RECIPE`` runs TRL's ``SFTTrainer``: the SFT-distillation baseline (teacher
  traces turned into ``<think>``/``<answer>`` completions) or GSRM training (chat data from
  ``rlkd data gsrm``).
- ``rlkd train grpo --config RECIPE`` runs TRL's ``GRPOTrainer`` with a reward set: ``rlkd`` (accuracy,
  structure, format, tag_count weighted 3/3/2/2), ``outcome`` (the SFT+RL baseline) or explicit weights.
  RLKD-zero is the ``rlkd`` set from a base model.

A run first validates the recipe (:mod:`rlkd.config`), then checks its inputs (model folder, data file
and columns, checkpoint to resume) before any weights load; ``--dry-run`` stops there after printing the
resolved recipe, the TRL configuration values and the reward weights. The output folder keeps the
resolved recipe (``rlkd_config.yaml``), a record of every launch with package versions and the git
commit (``rlkd_run.json``), checkpoints, the metrics of every logging step (``metrics.jsonl``) and the
final model. ``resume: auto`` continues from the last complete checkpoint in the output folder.

Under ``accelerate launch`` each process scores the completions of its own slice of the batch; TRL
gathers the rewards and the metrics, and only the main process writes logs and files.

How this departs from the authors' code:

1. One entry point and one recipe format for every stage, with every GRPO setting written out (SPEC
   section 5) rather than left to TRL defaults that have since changed.
2. The teacher's decomposition comes precomputed in the data (``rlkd data rlkd``), so the GSRM is
   called once per completion, not again for the teacher at every step.
3. The console log of a step leads with the reward and its components (each reward's mean and weight,
   then the structure reward's match rates) instead of TRL's unordered dictionary.
4. Prompts longer than ``max_prompt_length`` are dropped and counted (TRL 1.16 no longer truncates
   prompts); TRL 0.16 cut them from the left silently.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from rlkd.backends import TooManyFailures
from rlkd.config import GRPOJob, SFTJob, build_trl_config, check_trl_fields, shown_trl_values
from rlkd.data import Records, first_columns, grpo_rows, is_local, sft_rows
from rlkd.errors import InputError
from rlkd.files import atomic_write_text
from rlkd.models import is_gguf, load_tokenizer, resolve_model
from rlkd.recipes import dump_yaml
from rlkd.reward_config import build_structure_reward
from rlkd.rewards import StructureReward, build_rewards

log = logging.getLogger("rlkd.train")

CONFIG_FILE = "rlkd_config.yaml"
RUN_FILE = "rlkd_run.json"
METRICS_FILE = "metrics.jsonl"
VERSIONED_PACKAGES = ("rlkd", "torch", "transformers", "trl", "datasets", "accelerate", "peft", "deepspeed",
                      "vllm", "openai", "math-verify", "tokenizers")


# --------------------------------------------------------------------------------------------------
# Checks before any weights load


class Preflight:
    """Results of the input checks: ``ok`` lines, ``warnings`` (inputs not found here) and ``errors``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def ok(self, what: str) -> None:
        self.lines.append(("ok", what))

    def warn(self, what: str) -> None:
        self.lines.append(("missing", what))

    def note(self, what: str) -> None:
        self.lines.append(("not checked", what))

    def error(self, what: str) -> None:
        self.lines.append(("error", what))

    @property
    def errors(self) -> list[str]:
        return [w for s, w in self.lines if s == "error"]

    @property
    def missing(self) -> list[str]:
        return [w for s, w in self.lines if s == "missing"]

    def render(self) -> str:
        return "\n".join(f"  [{status}] {what}" for status, what in self.lines)


def _check_model(check: Preflight, field: str, name: str) -> None:
    if not is_local(name):
        check.note(f"{field} = {name}: hub name (loaded from the hub or the local cache at run time)")
        return

    path = Path(name).expanduser()
    if is_gguf(name):
        if path.is_file():
            check.ok(f"{field} = {name}: GGUF file found (converted once into a cached folder when it loads)")
        else:
            check.warn(f"{field} = {name}: no such file here")
        return
    if not path.exists():
        check.warn(f"{field} = {name}: no such folder here (an earlier step of the pipeline writes it?)")
    elif not (path / "config.json").is_file():
        check.error(f"{field} = {name}: folder has no config.json (not a saved model)")
    else:
        check.ok(f"{field} = {name}: model folder found")


def _check_data(check: Preflight, field: str, path: str, split: str, subset: str | None,
                columns: Sequence[str], alternatives: Sequence[Sequence[str]] = ()) -> None:
    """Check that a local dataset exists and has ``columns`` (or one of the ``alternatives`` sets)."""
    if not is_local(path):
        check.note(f"{field} = {path}: hub dataset (columns checked when it loads)")
        return
    if not Path(path).expanduser().exists():
        check.warn(f"{field} = {path}: no such file here (an earlier step of the pipeline writes it?)")
        return
    try:
        found = first_columns(path, split, subset) or []
    except InputError as exc:
        check.error(f"{field} = {path}: {exc}")
        return
    options = [list(columns)] if columns else []
    options += [list(a) for a in alternatives]
    for wanted in options:
        if all(c in found for c in wanted):
            check.ok(f"{field} = {path}: columns {', '.join(wanted)} present")
            return
    wanted_text = " or ".join("(" + ", ".join(w) + ")" for w in options)
    check.error(f"{field} = {path}: needs columns {wanted_text}; found {', '.join(found) or 'none'}")


def _check_backend(check: Preflight, field: str, backend: Any) -> None:
    if backend.local_model:
        _check_model(check, f"{field}.local_model", backend.local_model)
    else:
        check.note(f"{field}: server {backend.base_url} model {backend.model} (reachability not checked)")


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (one with ``trainer_state.json``, written last) in ``output_dir``."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        name = child.name
        if child.is_dir() and name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            found.append((int(name[len("checkpoint-"):]), child))
    for step, child in sorted(found, reverse=True):
        state = child / "trainer_state.json"
        try:
            json.loads(state.read_text(encoding="utf-8"))
            return child
        except (OSError, ValueError):
            log.warning("%s: incomplete checkpoint (no readable trainer_state.json), skipped", child)
    return None


def drop_logs_after(output_dir: str | Path, checkpoint: Path) -> None:
    """Before resuming from ``checkpoint-k``, drop what the interrupted run logged after it, so the replayed
    steps are logged once: metric lines with step > k, and sample-log lines with step >= k (the structure
    reward of step k+1 runs while the trainer's global step is still k)."""
    k = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", 0)
    for name, keep in ((METRICS_FILE, lambda step: step <= k), ("structure_samples.jsonl", lambda step: step < k)):
        path = Path(output_dir) / name
        if not path.exists():
            continue
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                step = json.loads(line).get("step")
            except ValueError:  # a line torn by the kill
                dropped += 1
                continue
            if step is None or keep(step):
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write_text(path, "".join(line + "\n" for line in kept))
            log.info("%s: dropped %d line(s) logged after %s (those steps run again)", path, dropped, checkpoint.name)


def resume_point(job: SFTJob | GRPOJob) -> Path | None:
    """The checkpoint this run continues from (None: start from the model)."""
    if job.resume == "never":
        return None
    if job.resume == "auto":
        return last_checkpoint(job.output_dir)
    return Path(job.resume)


RUN_MARKERS = (CONFIG_FILE, RUN_FILE, METRICS_FILE)  # files that show a folder is an rlkd training run


def foreign_output_dir(output_dir: str | Path) -> str | None:
    """Why ``output_dir`` must not receive a training run (None when it may): the filesystem root or the
    home folder, a file, or an existing non-empty folder holding no rlkd run (no rlkd_config.yaml,
    rlkd_run.json, metrics.jsonl or checkpoint-N), whose files a run could overwrite."""
    folder = Path(output_dir).expanduser()
    resolved = folder.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        return f"{output_dir} is {'the filesystem root' if resolved == Path(resolved.anchor) else 'the home folder'}"
    if folder.exists() and not folder.is_dir():
        return f"{output_dir} is a file, not a folder"
    if not folder.is_dir():
        return None
    names = [child.name for child in folder.iterdir()]
    if not names or any(n in RUN_MARKERS or n.startswith("checkpoint-") for n in names):
        return None
    return f"{output_dir} already holds {len(names)} entries that are not an rlkd run (e.g. {sorted(names)[0]})"


def preflight(job: SFTJob | GRPOJob) -> Preflight:
    """Check the inputs of a training job without loading weights."""
    check = Preflight()
    problem = foreign_output_dir(job.output_dir)
    if problem:
        check.error(f"output_dir = {job.output_dir}: {problem}; choose a new or empty folder")
    _check_model(check, "model", job.model)
    if isinstance(job, GRPOJob):
        need = [job.data.problem_column, job.data.answer_column]
        if "structure" in job.reward_names():
            need.append(job.data.teacher_structure_column)
        _check_data(check, "data.path", job.data.path, job.data.split, job.data.subset, need)
        if "structure" in job.reward_names():
            if job.structure.decomposer == "rule":
                check.ok("structure.decomposer = rule: the testbed's exact rule decomposer (no GSRM)")
            else:
                _check_backend(check, "structure.gsrm", job.structure.gsrm)
            if job.structure.gsrm_prompt:
                check.ok(f"structure.gsrm_prompt = {job.structure.gsrm_prompt}: prompt file read")
            if job.structure.uses_llm_judge():
                _check_backend(check, "structure.judge_backend", job.structure.judge_backend)
    else:
        d = job.data
        if d.format == "traces":
            _check_data(check, "data.path", d.path, d.split, d.subset,
                        [d.problem_column, d.reasoning_column, d.answer_column])
        elif d.format == "text":
            _check_data(check, "data.path", d.path, d.split, d.subset,
                        [d.text_column] + ([d.prompt_column] if d.prompt_column else []))
        else:
            _check_data(check, "data.path", d.path, d.split, d.subset, [], [["messages"], ["prompt", "completion"]])
    point = resume_point(job)
    if point is not None:
        check.ok(f"resume from {point}")
    elif job.resume == "auto":
        check.ok(f"no checkpoint in {job.output_dir}: starts from the model")
    return check


# --------------------------------------------------------------------------------------------------
# Printing the plan


def reward_table(job: GRPOJob) -> str:
    """``name  weight`` lines of the reward functions in use."""
    weights = job.rewards.resolved()
    label = f"set '{job.rewards.set}'" if job.rewards.set else "explicit weights"
    lines = [f"rewards ({label}):"]
    lines += [f"  {name:<10} weight {weight:g}" for name, weight in weights.items()]
    return "\n".join(lines)


def render_plan(job: SFTJob | GRPOJob, trl_config: Any, notes: Sequence[str], check: Preflight) -> str:
    """What ``--dry-run`` prints: recipe, reward weights, TRL values, input checks."""
    kind = "grpo" if isinstance(job, GRPOJob) else "sft"
    cls_name = type(trl_config).__name__
    parts = [f"# rlkd train {kind}: resolved configuration", dump_yaml(job).rstrip()]
    if isinstance(job, GRPOJob):
        parts.append(reward_table(job))
    parts.append(f"TRL {cls_name} (values the trainer will use):")
    parts += [f"  {k} = {v!r}" for k, v in shown_trl_values(job, trl_config).items()]
    parts += [f"  note: {n}" for n in notes]
    parts.append("input checks:")
    parts.append(check.render())
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Run records


def is_main_process() -> bool:
    """True in a single process and in rank 0 of ``accelerate launch`` / ``torchrun``."""
    return int(os.environ.get("RANK", "0")) == 0


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (None: not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state() -> dict[str, Any]:
    """The commit of the rlkd checkout and whether it has uncommitted changes (None outside git)."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_run_record(job: SFTJob | GRPOJob, kind: str, resumed_from: Path | None,
                     argv: Sequence[str] | None = None) -> None:
    """Write ``rlkd_config.yaml`` and append this launch to ``rlkd_run.json`` (main process only)."""
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_FILE
    text = dump_yaml(job)
    if config_path.exists() and config_path.read_text(encoding="utf-8") != text:
        previous = out / f"rlkd_config.previous-{_dt.datetime.now():%Y%m%d-%H%M%S}.yaml"
        config_path.replace(previous)
        log.warning("%s: the configuration differs from the previous launch's (kept as %s)", out, previous.name)
    config_path.write_text(text, encoding="utf-8")
    run_path = out / RUN_FILE
    record: dict[str, Any] = {"job": kind, "launches": []}
    if run_path.exists():
        try:
            record = json.loads(run_path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s: unreadable, starting a new record", run_path)
    record.setdefault("launches", []).append({
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv if argv is not None else sys.argv),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "git": git_state(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    })
    atomic_write_text(run_path, json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Logging


def order_metrics(logs: dict[str, Any], reward_keys: Sequence[str]) -> dict[str, Any]:
    """Logged metrics with the reward first, then each reward component, then the structure reward's
    own metrics, then everything else in TRL's order."""
    first = ["reward", "reward_std"] + [k for name in reward_keys for k in (f"rewards/{name}/mean", f"rewards/{name}/std")]
    ordered = {k: logs[k] for k in first if k in logs}
    ordered.update({k: v for k, v in logs.items() if k.startswith("structure") and k not in ordered})
    ordered.update({k: v for k, v in logs.items() if k not in ordered})
    return ordered


def format_log_line(step: int, max_steps: int | None, logs: dict[str, Any], reward_keys: Sequence[str],
                    weights: Sequence[float]) -> str:
    """One console line per logging step, leading with the reward components (``max_steps=None``: no
    known end, as in ``rlkd serve``)."""
    parts = [f"step {step}/{max_steps}" if max_steps is not None else f"step {step}"]
    if "reward" in logs:
        parts.append(f"reward {logs['reward']:.3f} ± {logs.get('reward_std', 0.0):.3f}")
    components = [f"{name} {logs[f'rewards/{name}/mean']:.3f}×{w:g}"
                  for name, w in zip(reward_keys, weights) if f"rewards/{name}/mean" in logs]
    if components:
        parts.append(" ".join(components))
    first = ("meta_match", "subproblem_match", "answer_match", "prefix_length")
    found = {k.split("/", 1)[-1]: v for k, v in logs.items() if k.startswith("structure/") and isinstance(v, (int, float))}
    names = [n for n in first if n in found] + [n for n in found if n not in first]
    structure = [f"{n} {found[n]:.3f}" for n in names]
    if structure:
        parts.append("structure: " + " ".join(structure))
    rest = [f"{k} {v:.4g}" for k, v in logs.items() if k in ("loss", "kl", "learning_rate", "grad_norm",
                                                               "completions/mean_length", "train_loss",
                                                               "mean_token_accuracy", "entropy")
            and isinstance(v, (int, float))]
    if rest:
        parts.append(" ".join(rest))
    return " | ".join(parts)


def metrics_callback(output_dir: str, reward_keys: Sequence[str], weights: Sequence[float]):
    """A TrainerCallback that writes each log to ``metrics.jsonl`` and prints one ordered line."""
    from transformers import TrainerCallback

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            if not state.is_world_process_zero or not logs:
                return
            ordered = order_metrics(dict(logs), reward_keys)
            with open(Path(output_dir) / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **ordered}) + "\n")
            log.info("%s", format_log_line(state.global_step, state.max_steps, ordered, reward_keys, weights))

    return RewardLog()


def _quiet_progress(trainer) -> None:
    """Keep TRL's progress bar but drop its printing of the raw log dictionary (ours replaces it)."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            return

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())


# --------------------------------------------------------------------------------------------------
# Running


def grpo_structure_reward(job: GRPOJob) -> StructureReward:
    """The structure reward of a GRPO job (:func:`rlkd.reward_config.build_structure_reward` of its
    ``structure`` section), logging scored samples to ``<output_dir>/structure_samples.jsonl`` when asked."""
    sample_log = Path(job.output_dir) / "structure_samples.jsonl" if job.structure.sample_log else None
    return build_structure_reward(job.structure, sample_log)


def reward_functions(job: GRPOJob) -> tuple[list[Any], list[float], list[str]]:
    """(functions, weights, the names TRL logs them under) for the job's rewards."""
    from trl.trainer.utils import get_callable_name


    weights = job.rewards.resolved()
    structure = grpo_structure_reward(job) if "structure" in weights else None
    funcs, func_weights = build_rewards(weights, structure)
    return list(funcs), list(func_weights), [get_callable_name(f) for f in funcs]


def _drop_long_prompts(rows: list[dict[str, Any]], tokenizer: Any, limit: int) -> list[dict[str, Any]]:
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # a BatchEncoding in recent transformers
            ids = ids["input_ids"]
        if len(ids) <= limit:
            kept.append(row)
    dropped = len(rows) - len(kept)
    if dropped:
        log.warning("dropped %d of %d prompts longer than training.max_prompt_length=%d tokens",
                    dropped, len(rows), limit)
    if not kept:
        raise InputError(f"every prompt is longer than training.max_prompt_length={limit} tokens")
    return kept


def run_grpo(job: GRPOJob, trl_config: Any, resume_from: Path | None) -> dict[str, Any]:
    """Train with GRPO; return TRL's training metrics."""
    from datasets import Dataset
    from trl import GRPOTrainer


    need_structure = "structure" in job.reward_names()
    rows = grpo_rows(Records(job.data.path, job.data.split, job.data.subset), job.data, need_structure, job.data.limit)
    tokenizer = load_tokenizer(job.model)
    rows = _drop_long_prompts(rows, tokenizer, job.training.max_prompt_length)
    funcs, weights, names = reward_functions(job)
    trl_config.reward_weights = weights
    trainer = GRPOTrainer(model=resolve_model(job.model), reward_funcs=funcs, args=trl_config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.add_callback(metrics_callback(job.output_dir, names, weights))
    _quiet_progress(trainer)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(job.output_dir)
    return dict(result.metrics)


def run_sft(job: SFTJob, trl_config: Any, resume_from: Path | None) -> dict[str, Any]:
    """Train with SFT; return TRL's training metrics."""
    from datasets import Dataset
    from trl import SFTTrainer


    rows = sft_rows(Records(job.data.path, job.data.split, job.data.subset), job.data, job.data.limit)
    tokenizer = load_tokenizer(job.model)
    tokenizer.padding_side = "right"  # training pads on the right; generation (models.load_tokenizer) on the left
    trainer = SFTTrainer(model=resolve_model(job.model), args=trl_config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.add_callback(metrics_callback(job.output_dir, [], []))
    _quiet_progress(trainer)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(job.output_dir)
    return dict(result.metrics)


def train_job(job: SFTJob | GRPOJob, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one training job (``rlkd train sft|grpo`` without ``--dry-run``); return TRL's training metrics.

    The one path from a job to a trained model, for the command and for Python callers (``rlkd demo``):
    validate the job, check the TRL fields and the inputs (:func:`preflight`; a missing or bad input is a
    :class:`~rlkd.errors.InputError`), record the launch (``argv``, default ``sys.argv``), find the checkpoint to
    resume from and drop what was logged after it, then train with :func:`run_grpo` or :func:`run_sft`. A
    backend that failed too often (:class:`~rlkd.backends.TooManyFailures`) ends in an InputError that says
    how to resume.
    """
    job.validate()
    kind = "grpo" if isinstance(job, GRPOJob) else "sft"
    check_trl_fields(job)
    trl_config, _ = build_trl_config(job)
    check = preflight(job)
    if check.errors or check.missing:
        raise InputError("inputs not ready:\n  " + "\n  ".join(check.errors + check.missing))
    resume_from = resume_point(job)
    if is_main_process():
        write_run_record(job, kind, resume_from, argv)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        log.info("rlkd train %s: output in %s, %d process%s%s", kind, job.output_dir, world, "es" if world > 1 else "",
                 f", resuming from {resume_from}" if resume_from else "")
        if isinstance(job, GRPOJob):
            log.info("%s", reward_table(job).replace("\n", "; "))
        if resume_from is not None:
            drop_logs_after(job.output_dir, resume_from)
    try:
        metrics = run_grpo(job, trl_config, resume_from) if kind == "grpo" else run_sft(job, trl_config, resume_from)
    except TooManyFailures as exc:
        last = last_checkpoint(job.output_dir)
        raise InputError(f"stopped before training on noise: {exc}. Fix the backend, then run the same command "
                       f"again to resume from {last or 'the start'}.") from None
    if is_main_process():
        log.info("done: %s", json.dumps(metrics))
    return metrics
