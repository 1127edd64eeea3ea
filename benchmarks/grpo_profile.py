"""GRPO step profile on CPU: where one step of TRL's GRPOTrainer spends its time, with and without the
structure reward.

A tiny random Llama policy (``rlkd.models.build_tiny_model``, tokenizer trained on the testbed's texts
and rlkd's prompts) trains on testbed tasks (``rlkd.testbed``, ``id`` split; columns ``prompt`` with
rlkd's system prompt, ``answer``, ``problem``, ``teacher_structure``). ``ProfiledGRPOTrainer``
subclasses ``trl.GRPOTrainer`` and times its own methods:

- ``generate``: ``_generate`` (sampling the completions);
- ``rewards``: ``_calculate_rewards`` (all reward functions; TRL runs the ``async`` structure reward
  beside the others), and within it ``structure``, the structure reward's own call;
- ``other scoring``: the rest of ``_generate_and_score_completions`` (tokenising, the reference and old
  log-probabilities, advantages);
- ``update``: ``training_step`` minus ``_generate_and_score_completions`` (forward, loss, backward,
  optimiser step).

Configurations (``--configs``, each one trainer, the first ``--warmup`` steps not counted):

- ``outcome``: the GRPO baseline rewards (accuracy, format, tag count), no structure reward;
- ``latency``: the RLKD rewards with the structure reward's GSRM and judge behind the local latency
  server (``latency_server.py``, in a subprocess) at ``--latency-ms`` + ``--per-token-ms`` per generated
  token; 0 + 0 (default) is a server on this machine that answers at once, so what is measured is the
  reward's own cost (HTTP round trips, parsing, judging, scheduling). The tiny policy writes nonsense,
  which the server decomposes into sentence chunks (``--gsrm-fallback chunks``), so every completion
  still gets a decomposition of realistic length and a judge call;
- ``matched``: the same, with the server's per-token time set to the policy's own per-token generation
  time measured in the ``outcome`` run (its ``generate`` time per step over ``--max-completion-length``):
  a GSRM exactly as fast as the policy's sampler;
- ``latency-full`` and ``matched-full``: ``latency`` and ``matched`` with early exit turned off (every
  decomposition written to its end), for a side-by-side comparison;
- ``tiny-gsrm``: the structure reward's GSRM and judge are a second tiny random model in this process
  (``rlkd.backends.TransformersBackend``), competing for the same CPU cores; its output has no steps, so
  this measures GSRM generation only (``--gsrm-max-tokens`` tokens each).

The judge is ``--judge`` (default ``batched``: one LLM call per completion). The goal this checks: the
structure reward under a tenth of a GRPO step when its backend answers at the speed of a local server.

    python benchmarks/grpo_profile.py --steps 4 --configs outcome,latency,matched,tiny-gsrm

How this departs from the paper's setting:

1. A tiny random policy on 2 CPU cores, not a 7B model on GPUs, so a step takes a fraction of a second
   and the structure reward's fixed cost per completion weighs far more than it would there.
2. The GSRM and judge are the latency server (or a tiny random model), not a fine-tuned 7B GSRM and a
   7B judge; the policy's nonsense is decomposed into sentence chunks, not into real steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

CONFIGS = ("outcome", "latency", "matched", "tiny-gsrm", "latency-full", "matched-full")
PHASES = ("generate", "rewards", "structure", "other scoring", "update", "step")


def profiled_trainer_class():
    """``trl.GRPOTrainer`` with timers around its generation, reward, scoring and training-step methods."""
    from trl import GRPOTrainer

    class ProfiledGRPOTrainer(GRPOTrainer):
        """Records seconds per call in ``self.timings[name]`` (one entry per call)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timings: dict[str, list[float]] = defaultdict(list)

        def _timed(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.timings[name].append(time.perf_counter() - start)

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("generate", super()._generate, *args, **kwargs)

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("rewards", super()._calculate_rewards, *args, **kwargs)

        def _generate_and_score_completions(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("generate_and_score", super()._generate_and_score_completions, *args, **kwargs)

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("step", super().training_step, *args, **kwargs)

    return ProfiledGRPOTrainer


class TimedReward:
    """Wraps an async reward function and records the seconds of each call (TRL sees an async callable)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.__name__ = getattr(inner, "__name__", "reward")
        self.seconds: list[float] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await self.inner(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - start)


def build_setup(workdir: Path, prompts: int, seed: int, hidden_size: int = 64,
                num_layers: int = 2) -> tuple[Path, list[dict[str, Any]]]:
    """The tiny policy (also the tiny GSRM) and the dataset rows."""
    from rlkd import testbed
    from rlkd.config import SYSTEM_PROMPT
    from rlkd.templates import load_prompt
    from rlkd.llm_judge import load_judge_prompt
    from rlkd.models import build_tiny_model, build_tokenizer

    tasks = testbed.generate_tasks(max(prompts * 4, 8), "id", seed)
    texts = testbed.corpus(tasks) + [SYSTEM_PROMPT] + [t for _, t in load_prompt("math").turns]
    texts += [t for f in ("meta", "subproblem", "answer", "batched") for _, t in load_judge_prompt(f).turns]
    tokenizer = build_tokenizer(texts, vocab_size=1024)
    path = build_tiny_model(workdir / "policy", tokenizer=tokenizer, seed=seed, max_position_embeddings=4096,
                            hidden_size=hidden_size, num_layers=num_layers)
    rows = [{"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": t.problem}],
             "problem": t.problem, "answer": str(t.answer), "teacher_structure": t.decomposition.render()}
            for t in tasks]
    return path, rows


def structure_reward_for(backend: Any, judge_mode: str, gsrm_max_tokens: int, early_exit: bool = True) -> Any:
    """The structure reward over ``backend`` (GSRM and LLM judge)."""
    from rlkd.gsrm import Decomposer
    from rlkd.reward_config import StructureConfig, build_judge
    from rlkd.rewards import StructureReward

    if judge_mode == "hybrid":
        spec = StructureConfig(judge="hybrid", meta_judge="llm", subproblem_judge="llm", answer_judge="math",
                               judge_batched=True)
    else:
        spec = StructureConfig(judge="llm", judge_batched=judge_mode == "batched")
    judge = build_judge(spec, backend)
    return StructureReward(Decomposer(backend, max_tokens=gsrm_max_tokens), judge, early_exit=early_exit,
                           max_failure_share=1.0)


def run_config(name: str, model_path: Path, rows: list[dict[str, Any]], args: argparse.Namespace, workdir: Path,
               per_token_ms: float) -> dict[str, Any]:
    """Train ``--warmup + --steps`` steps under one configuration; per-step seconds of each phase."""
    from datasets import Dataset
    from trl import GRPOConfig

    from rlkd.backends import OpenAIBackend, TransformersBackend
    from rlkd.rewards import build_rewards

    with ExitStack() as stack:
        structure = None
        backend = None
        if name.removesuffix("-full") in ("latency", "matched"):
            from latency_server import spawn

            url = stack.enter_context(spawn(args.latency_ms, per_token_ms, gsrm_fallback="chunks"))
            backend = OpenAIBackend(url, "latency-server", api_key_env=None, concurrency=64, timeout=120, max_retries=2)
        elif name == "tiny-gsrm":
            backend = TransformersBackend(str(model_path), batch_size=args.prompts * args.generations, device="cpu")
        if backend is not None:
            structure = TimedReward(structure_reward_for(backend, args.judge, args.gsrm_max_tokens,
                                                         early_exit=not name.endswith("-full")))
        funcs, weights = build_rewards("outcome" if structure is None else "rlkd", structure)
        config = GRPOConfig(
            output_dir=str(workdir / f"run-{name}"), max_steps=args.warmup + args.steps,
            per_device_train_batch_size=args.prompts * args.generations, num_generations=args.generations,
            max_completion_length=args.max_completion_length, learning_rate=1e-5, beta=0.04, temperature=0.7,
            reward_weights=weights, use_cpu=True, bf16=False, report_to=[], logging_strategy="no", save_strategy="no",
            seed=args.seed, disable_tqdm=True,
        )
        trainer = profiled_trainer_class()(model=str(model_path), reward_funcs=funcs, args=config,
                                           train_dataset=Dataset.from_list(rows))
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # keep the output to the profile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the all-zero structure warning: the tiny policy writes nonsense
            trainer.train()
        t = trainer.timings
        skip = args.warmup
        steps = t["step"][skip:]
        gen_score = t["generate_and_score"][skip:]
        generate = t["generate"][skip:]
        rewards = t["rewards"][skip:]
        structure_s = structure.seconds[skip:] if structure is not None else [0.0] * len(steps)
        per_step = {
            "generate": generate, "rewards": rewards, "structure": structure_s,
            "other scoring": [g - a - b for g, a, b in zip(gen_score, generate, rewards)],
            "update": [s - g for s, g in zip(steps, gen_score)], "step": steps,
        }
        calls = backend.stats.calls if backend is not None else 0
        gsrm_tokens = backend.stats.completion_tokens if backend is not None else 0
        if isinstance(backend, OpenAIBackend) and getattr(trainer, "async_loop", None) is not None:
            import asyncio  # the backend's HTTP client lives on TRL's reward loop: close it there

            asyncio.run_coroutine_threadsafe(backend.aclose(), trainer.async_loop).result(timeout=30)
    completions = (args.warmup + args.steps) * args.prompts * args.generations
    return {"config": name, "per_step": per_step, "per_token_ms": per_token_ms,
            "calls_per_completion": calls / completions, "backend_tokens_per_completion": gsrm_tokens / completions}


def summary(result: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per step of each phase."""
    return {phase: statistics.mean(values) if values else 0.0 for phase, values in result["per_step"].items()}


def describe(name: str, args: argparse.Namespace, per_token_ms: float) -> str:
    if name == "outcome":
        return "outcome rewards only (no structure reward)"
    if name == "tiny-gsrm":
        return f"+ structure, tiny GSRM in process ({args.gsrm_max_tokens} tokens)"
    return (f"+ structure, latency server {args.latency_ms:g} ms + {per_token_ms:.2f} ms/token"
            + (", no early exit" if name.endswith("-full") else ", early exit"))


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """A markdown table of per-step seconds and shares, and the structure-share lines."""
    lines = ["| configuration | step s | generate | rewards | of which structure | other scoring | update |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        s = summary(result)
        share = {k: s[k] / s["step"] if s["step"] else 0.0 for k in s}
        lines.append(f"| {describe(result['config'], args, result['per_token_ms'])} | {s['step']:.3f} | "
                     + " | ".join(f"{s[k]:.3f} ({share[k]:.0%})" for k in
                                  ("generate", "rewards", "structure", "other scoring", "update")) + " |")
    lines.append("")
    for result in results:
        if result["config"] == "outcome":
            continue
        s = summary(result)
        share = s["structure"] / s["step"] if s["step"] else 0.0
        lines.append(f"structure share of a step [{result['config']}]: {share:.3f} "
                     f"({'under' if share < 0.1 else 'over'} the 1/10 goal); structure reward "
                     f"{s['structure']:.3f} s of a {s['step']:.3f} s step; per completion "
                     f"{result['calls_per_completion']:.1f} backend calls writing "
                     f"{result['backend_tokens_per_completion']:.0f} tokens (the policy writes up to "
                     f"{args.max_completion_length})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"configurations to run, of {','.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=4, help="measured steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="first steps not measured")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt")
    p.add_argument("--max-completion-length", type=int, default=64, help="tokens per completion")
    p.add_argument("--judge", choices=("batched", "per-pair", "hybrid"), default="batched", help="structure judge")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency server: fixed cost per request")
    p.add_argument("--per-token-ms", type=float, default=0.0, help="latency server: cost per generated token")
    p.add_argument("--gsrm-max-tokens", type=int, default=64, help="GSRM max_tokens")
    p.add_argument("--hidden-size", type=int, default=64, help="tiny model width")
    p.add_argument("--layers", type=int, default=2, help="tiny model depth")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch CPU threads (1: a tiny model gains nothing from more, and it keeps timings steadier "
                        "on a shared machine)")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        p.error(f"--configs: choose from {', '.join(CONFIGS)}")
    if "matched" in configs and "outcome" in configs:
        configs = ["outcome"] + [c for c in configs if c != "outcome"]  # matched needs outcome's speed

    import logging

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("rlkd.rewards").setLevel(logging.ERROR)  # the tiny policy's all-zero structure rewards
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.torch_threads)
    print(f"GRPO step profile: tiny Llama (hidden {args.hidden_size}, {args.layers} layers), {args.prompts} prompts x "
          f"{args.generations} generations x {args.max_completion_length} tokens, {args.steps} measured steps after {args.warmup} warm-up; "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}; judge {args.judge}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="rlkd-profile-") as tmp:
        workdir = Path(tmp)
        model_path, rows = build_setup(workdir, args.prompts, args.seed, args.hidden_size, args.layers)
        from rlkd.models import load_model

        print(f"policy parameters: {sum(w.numel() for w in load_model(model_path, device='cpu').parameters()):,}",
              flush=True)
        policy_ms_per_token = None
        for name in configs:
            per_token_ms = args.per_token_ms
            if name in ("matched", "matched-full"):
                if policy_ms_per_token is None:
                    p.error("--configs matched needs outcome in the same run")
                per_token_ms = policy_ms_per_token
            elif name == "tiny-gsrm":
                per_token_ms = 0.0
            result = run_config(name, model_path, rows, args, workdir, per_token_ms)
            if name == "outcome":
                policy_ms_per_token = 1000 * summary(result)["generate"] / args.max_completion_length
            results.append(result)
            print(f"  {name}: {summary(result)['step']:.3f} s per step", flush=True)
    print(report(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
