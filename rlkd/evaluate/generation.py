"""Sampling completions for an evaluation, cached in ``generations.jsonl`` (a rerun generates only what is
missing; a torn last line is cut off), with transformers or vLLM.

Sampling is seeded per batch (transformers) or per sample (vLLM); with transformers a resumed run draws
different batches than an uninterrupted one would, so its samples differ, but they come from the same
distribution.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any

from rlkd.backends import GenerationRequest, TransformersBackend
from rlkd.errors import InputError
from rlkd.files import iter_jsonl, read_done_ids
from rlkd.models import ModelFileError, resolve_model
from rlkd.evaluate.problems import EvalJob, Problem

log = logging.getLogger("rlkd.evaluate")

# --------------------------------------------------------------------------------------------------
# Generation, cached


def _read_cache(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Cached generations by (problem id, sample index); a torn last line is cut off the file."""
    if not path.exists():
        return {}
    read_done_ids(path)  # repairs a torn last line left by a kill (and checks every other line)
    cache: dict[tuple[str, int], dict[str, Any]] = {}
    for number, obj in iter_jsonl(path):
        if "sample" not in obj or "completion" not in obj:
            raise InputError(f"{path}:{number}: not a generation record (needs id, sample, completion)")
        cache[(str(obj["id"]), int(obj["sample"]))] = obj
    return cache


def _seed_for(seed: int, *parts: Any) -> int:
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode("utf-8")) & 0x7FFFFFFF


class _TransformersEngine:
    """Generation with transformers through :class:`rlkd.backends.TransformersBackend` (chat template,
    left padding, batches); one request per sample so each sample has its own token count."""

    def __init__(self, job: EvalJob):
        try:
            self.backend = TransformersBackend(job.model, batch_size=job.batch_size or 8,
                                               device=job.device, dtype=job.dtype)
        except OSError as exc:
            raise InputError(f"cannot load model {job.model!r}: {exc}") from None
        self.batch_size = self.backend.batch_size
        self.args = job

    def generate(self, batch: list[tuple[Problem, int]]) -> list[dict[str, Any]]:
        a = self.args
        seed = _seed_for(a.seed, batch[0][0].id, batch[0][1])  # one seed for the batch: one generate call
        requests = [GenerationRequest.chat(_messages(a, p), max_tokens=a.max_new_tokens, temperature=a.temperature,
                                           top_p=a.top_p, n=1, seed=seed) for p, _ in batch]
        out = []
        for completion in self.backend.generate_sync(requests):
            if completion.error:
                out.append({"error": completion.error})
            else:
                out.append({"completion": completion.text, "completion_tokens": completion.completion_tokens,
                            "truncated": completion.completion_tokens >= a.max_new_tokens})
        return out


class _VllmEngine:
    """Generation with vLLM's offline ``LLM`` (imported only when chosen), seeded per sample."""

    def __init__(self, job: EvalJob):
        try:
            import vllm
        except ImportError:
            raise InputError("--engine vllm needs vLLM, which is not installed here: pip install vllm "
                           "(on a CUDA machine), or use --engine transformers") from None

        self.vllm = vllm
        try:
            model = resolve_model(job.model)  # a .gguf file: its converted folder
        except ModelFileError as exc:
            raise InputError(f"cannot load model {job.model!r}: {exc}") from None
        kwargs: dict[str, Any] = {"model": model, "seed": job.seed, "dtype": job.dtype,
                                  "tensor_parallel_size": job.tensor_parallel_size}
        if job.max_model_len:
            kwargs["max_model_len"] = job.max_model_len
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.batch_size = job.batch_size or 512
        self.args = job

    def generate(self, batch: list[tuple[Problem, int]]) -> list[dict[str, Any]]:
        a = self.args
        # token ids, rendered exactly as the transformers engine does (no second BOS added by vLLM)
        prompts = [{"prompt_token_ids": self.tokenizer(
            self.tokenizer.apply_chat_template(_messages(a, p), tokenize=False, add_generation_prompt=True),
            add_special_tokens=False)["input_ids"]} for p, _ in batch]
        params = [self.vllm.SamplingParams(temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_new_tokens,
                                           n=1, seed=_seed_for(a.seed, p.id, s)) for p, s in batch]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        out = []
        for result in outputs:
            sample = result.outputs[0]
            out.append({"completion": sample.text, "completion_tokens": len(sample.token_ids),
                        "truncated": sample.finish_reason == "length"})
        return out


def _messages(job: EvalJob, problem: Problem) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": job.system_prompt}] if job.system_prompt else []
    return messages + [{"role": "user", "content": problem.prompt}]


def generate_missing(job: EvalJob, problems: list[Problem], n: int, out_dir: Path) -> dict[str, int]:
    """Generate every (problem, sample) not yet in ``generations.jsonl``, appending as batches finish."""
    from tqdm.auto import tqdm

    path = out_dir / "generations.jsonl"
    cache = _read_cache(path)
    todo, stale = [], 0
    for p in problems:
        for s in range(n):
            cached = cache.get((p.id, s))
            if cached is not None and cached.get("prompt_hash") == p.prompt_hash:
                continue
            stale += cached is not None
            todo.append((p, s))
    counts = {"reused": len(problems) * n - len(todo), "generated": 0, "failed": 0, "stale": stale}
    if stale:
        log.warning("%d cached generations were made for a different prompt; generating them again", stale)
    if not todo:
        return counts
    engine = _VllmEngine(job) if job.engine == "vllm" else _TransformersEngine(job)
    failures: list[str] = []
    with open(path, "a", encoding="utf-8") as handle, \
            tqdm(total=len(todo), desc=f"generating ({job.engine})", unit="sample", dynamic_ncols=True) as bar:
        for start in range(0, len(todo), engine.batch_size):
            batch = todo[start:start + engine.batch_size]
            for (p, s), result in zip(batch, engine.generate(batch)):
                if "error" in result:
                    counts["failed"] += 1
                    failures.append(result["error"])
                    continue
                record = {"id": p.id, "sample": s, "prompt_hash": p.prompt_hash, **result}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["generated"] += 1
            handle.flush()
            bar.update(len(batch))
            bar.set_postfix(failed=counts["failed"], refresh=False)
    if failures:
        log.warning("%d samples failed to generate (first reason: %s); a re-run retries them",
                    len(failures), failures[0])
    return counts
