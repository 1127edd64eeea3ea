"""The structure reward's configuration and the one place that wires it: GSRM backend, decomposer, judge.

1. :class:`StructureConfig` is the ``structure:`` section of a GRPO recipe (and of ``rlkd serve``'s), each
   field with its default and help.
2. :func:`build_judge` turns the judge fields of such a section (``judge``, ``meta_judge``,
   ``subproblem_judge``, ``answer_judge``, ``overlap_threshold``, ``judge_batched``) into a
   :class:`~rlkd.judges.Judge`, the LLM judge over ``judge_backend`` or a backend passed in.
3. :func:`build_structure_reward` builds the :class:`~rlkd.rewards.StructureReward` that training,
   ``rlkd score --completions``, ``rlkd serve`` and the benchmarks score with, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlkd.backends import Backend
from rlkd.backends.build import build_backend
from rlkd.backends.config import BackendConfig
from rlkd.errors import ConfigError
from rlkd.gsrm import Decomposer, RuleDecomposer
from rlkd.judges import FIELD_JUDGES, JUDGES, Judge, make_judge
from rlkd.llm_judge import LLMJudge
from rlkd.recipes import option, section
from rlkd.rewards import StructureReward
from rlkd.structure import MODES as STRUCTURE_MODES
from rlkd.templates import DOMAINS, load_prompt


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
    judge: str = option("hybrid", "how step fields are compared; 'llm' asks an LLM (judge_backend in a recipe; "
                       "rlkd score: the backend options' server)", JUDGES)
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
        try:
            load_prompt(self.prompt_source())
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{field}: {exc}") from None

    def uses_llm_judge(self) -> bool:
        """Whether any field is judged by the LLM judge."""
        return uses_llm_judge(self)


def uses_llm_judge(spec: Any) -> bool:
    """Whether the judge fields of ``spec`` (a :class:`StructureConfig`, or anything with its judge fields)
    have any step field judged by the LLM judge."""
    if spec.judge == "llm":
        return True
    return spec.judge == "hybrid" and "llm" in (spec.meta_judge, spec.subproblem_judge, spec.answer_judge)


def build_judge(spec: Any, llm_backend: Backend | None = None) -> Judge:
    """The judge a structure section names: ``spec`` has the judge fields of :class:`StructureConfig`
    (``judge``, ``meta_judge``, ``subproblem_judge``, ``answer_judge``, ``overlap_threshold``,
    ``judge_batched``). When a field is judged by the LLM, the LLM judge runs over ``llm_backend`` or,
    without one, over ``spec.judge_backend`` (:func:`~rlkd.backends.build.build_backend`). A name that
    is not a judge, or an LLM judge without a backend, is a ConfigError.

    >>> judge = build_judge(StructureConfig(judge="hybrid", answer_judge="text"))
    >>> {field: type(j).__name__ for field, j in judge.judges.items()}
    {'meta': 'OverlapJudge', 'subproblem': 'OverlapJudge', 'answer': 'TextJudge'}
    """
    fields = {"meta": spec.meta_judge, "subproblem": spec.subproblem_judge, "answer": spec.answer_judge}
    llm = None
    if uses_llm_judge(spec):
        backend = llm_backend if llm_backend is not None else build_backend(spec.judge_backend, "structure.judge_backend")
        llm = LLMJudge(backend, batched=bool(spec.judge_batched))
    try:
        return make_judge(spec.judge, overlap_threshold=spec.overlap_threshold, fields=fields, llm=llm)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_structure_reward(s: StructureConfig, sample_log: Path | None = None) -> StructureReward:
    """The :class:`~rlkd.rewards.StructureReward` of a recipe's ``structure:`` section: its decomposer (the
    GSRM over ``s.gsrm``, or the testbed's rule decomposer) and its judge (:func:`build_judge`). Training
    (:func:`rlkd.train.grpo_structure_reward`), ``rlkd score --completions`` and ``rlkd serve`` all build
    it here, so they score on one path. ``sample_log``: where scored samples are appended (None: nowhere).
    """
    if s.decomposer == "rule":
        decomposer: Any = RuleDecomposer()
    else:
        decomposer = Decomposer(build_backend(s.gsrm, "structure.gsrm"), domain=s.prompt_source(),
                                max_trace_chars=s.gsrm_max_trace_chars, max_tokens=s.gsrm_max_tokens,
                                few_shot=s.gsrm_few_shot)
    return StructureReward(decomposer, build_judge(s), mode=s.mode, lazy=s.lazy, early_exit=s.early_exit,
                           max_failure_share=s.max_failure_share,
                           min_failures=s.min_failures, max_batch_failure_share=s.max_batch_failure_share,
                           sample_log=sample_log, samples_per_step=s.samples_per_step)
