"""What the demo measures: evaluation of a student (:func:`evaluate_model`, through
:func:`rlkd.evaluate.run_eval`) and of the GSRM (:func:`evaluate_gsrm`), the RL signal diagnostics
(:func:`rl_signal`), and the run's machine record."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.backends import TransformersBackend
from rlkd.errors import InputError
from rlkd.evaluate import EvalJob, run_eval
from rlkd.files import iter_jsonl
from rlkd.gsrm import Decomposer
from rlkd.judges import normalize_text
from rlkd.rewards import format_reward
from rlkd.structure import as_decomposition
from rlkd.testbed import alignment, chosen_quantity, opening_goal, reasoning_text, rule_decompose

from rlkd.experiment.recipe import _REPLACED_MAPPINGS
from rlkd.experiment.tasks import _write_jsonl

log = logging.getLogger("rlkd.experiment")

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
    task's oracle decomposition, and whether its opening sentence names the problem's goal
    (:func:`rlkd.testbed.opening_goal`, the easiest copy in a trace: the goal from the problem's first sentence)."""

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
                     "grounded": grounded_share(steps, {q.name.lower() for q in task.quantities}),
                     "goal_named": float(opening_goal(text) == task.goal)})
    _write_jsonl(output / "alignment.jsonl", rows)
    metrics: dict[str, Any] = {"problems": summary["graded_problems"], "n": summary["n"],
                               "pass@k": dict(summary["pass_at_k"]), "pass@1": summary["pass_at_k"].get("1", 0.0),
                               "pass@1_stderr": summary.get("pass_at_1_stderr"),
                               "mean_completion_tokens": summary.get("mean_completion_tokens"),
                               "truncated_share": summary.get("truncated_share"),
                               "no_answer_share": summary.get("no_answer_share"),
                               "format": _mean([r["format"] for r in rows])}
    metrics["alignment"] = {k: _mean([r[k] for r in rows])
                            for k in (*keys, "exact", "student_steps", "grounded", "goal_named")}
    return metrics


def grounded_share(decomposition: Any, names: set[str]) -> float:
    """Share of a decomposition's steps whose quantity (``What is x?``) is one of ``names`` (the
    quantities the problem defines): whether a model copies names from its input at all. 0 without steps."""
    chosen = [chosen_quantity(step) for step in decomposition.steps]
    return sum(c is not None and c in names for c in chosen) / len(chosen) if chosen else 0.0


def evaluate_gsrm(gsrm_dir: Path, items: Sequence[tuple[str, str, Any]], *, max_tokens: int,
                  batch_size: int, prompt: str = "math", desc: str = "GSRM", n_boot: int = 2000) -> dict[str, Any]:
    """Decompose ``(problem, trace, reference decomposition)`` items with the trained GSRM (through the
    same :class:`rlkd.gsrm.Decomposer` the structure reward uses) and compare with the reference.

    Returns the means of :func:`rlkd.testbed.alignment` (choice and answer match, exact sequences), the
    share of steps whose meta-reasoning text is the reference's word for word, ``step_accuracy`` (pooled
    over steps) with ``step_accuracy_ci`` (a bootstrap over the traces, ``n_boot`` resamples), plus the
    records.
    """
    import asyncio

    from tqdm.auto import tqdm


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
    from rlkd.statistics import ratio_interval  # numpy: not at import, so the command line starts light

    right = [r["alignment"]["answer_match"] * r["alignment"]["teacher_steps"] for r in records]
    summary["step_accuracy"] = sum(right) / steps if steps else 0.0
    summary["step_accuracy_ci"] = (ratio_interval(right, [r["alignment"]["teacher_steps"] for r in records],
                                                  n_boot=n_boot) if steps else None)
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
# Diagnostics and records of a run



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
