"""One evaluation run end to end (:func:`run_eval`): check the settings against the cache, generate what
is missing, grade, and write samples, problems, summary and plot.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlkd.answers import STATS
from rlkd.errors import InputError
from rlkd.files import atomic_write_jsonl, atomic_write_text
from rlkd.evaluate.generation import _read_cache, generate_missing
from rlkd.evaluate.problems import BENCHMARKS, EvalJob, load_problems
from rlkd.evaluate.summary import grade_samples, plot_pass_at_k, summarize

log = logging.getLogger("rlkd.evaluate")

def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")



# --------------------------------------------------------------------------------------------------
# rlkd eval


# Settings that change what a cached generation means: a resumed run must use the same ones.
_CACHE_SETTINGS = ("model", "benchmark", "data", "temperature", "top_p", "max_new_tokens", "system_prompt", "seed")


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / "settings.json"
    if path.exists() and (out_dir / "generations.jsonl").exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable ({exc}); remove it to start over") from None
        diff = [k for k in _CACHE_SETTINGS if old.get(k) != settings.get(k)]
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
            raise InputError(f"{out_dir} holds generations made with other settings ({shown}). Use another "
                           "--output, or delete the folder to start over")
    _write_json(path, settings)


def default_output(model: str, benchmark: str) -> Path:
    """``eval_results/<benchmark>__<model name>``."""
    model_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model.rstrip("/")).name or model)
    bench = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(benchmark).stem if benchmark not in BENCHMARKS else benchmark)
    return Path("eval_results") / f"{bench}__{model_name}"


def run_eval(job: EvalJob) -> dict[str, Any]:
    """Generate what is missing, grade, and write samples, problems, summary and plot; the summary."""
    if job.temperature < 0 or not 0 < job.top_p <= 1:
        raise InputError("--temperature must be >= 0 and --top-p in (0, 1]")
    if job.max_new_tokens < 1 or (job.n is not None and job.n < 1) or (job.limit is not None and job.limit < 1):
        raise InputError("--max-new-tokens, --n and --limit must be at least 1")
    spec, problems = load_problems(job)
    n = job.n or spec.n
    if job.temperature == 0 and n > 1:
        log.warning("temperature 0 is greedy: the %d samples per problem will be identical", n)
    out_dir = Path(job.output) if job.output else default_output(job.model, job.benchmark)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(job, k) for k in
                ("model", "benchmark", "data", "temperature", "top_p", "max_new_tokens", "system_prompt", "seed",
                 "shuffle_seed", "engine", "batch_size", "limit", "prompt_template", "grading")}
    settings["n"] = n
    _check_settings(out_dir, settings)
    counts = generate_missing(job, problems, n, out_dir)
    stats_before = dict(STATS)
    cache = _read_cache(out_dir / "generations.jsonl")
    records = grade_samples(problems, cache, n, job.grade_timeout, job.grading)
    atomic_write_jsonl(out_dir / "samples.jsonl", records)
    correct: dict[str, list[bool | None]] = {}
    for r in records:
        correct.setdefault(r["id"], []).append(r["correct"])
    atomic_write_jsonl(out_dir / "problems.jsonl", (
        {**asdict(p), "n": len(correct.get(p.id, [])), "correct": sum(bool(c) for c in correct.get(p.id, []))}
        for p in problems))
    summary = {"benchmark": spec.name, "model": job.model, "kind": problems[0].kind, **summarize(problems, records),
               "generation": counts, "grading": {k: STATS[k] - stats_before.get(k, 0) for k in STATS},
               "settings": settings}
    _write_json(out_dir / "summary.json", summary)
    plot_pass_at_k([(Path(job.model.rstrip("/")).name or job.model, summary)], out_dir / "pass_at_k.png",
                   f"{spec.name}: pass@k")
    return summary | {"output": str(out_dir)}
