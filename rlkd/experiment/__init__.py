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
stages whose outputs are there (``--fresh`` starts over), so an interrupted demo resumes; a stage whose
done marker names other rlkd source (:func:`~rlkd.experiment.stages.code_fingerprint`) is kept with a warning. The stages
after the models run side by side on worker processes (``workers``, ``threads``; one per CPU core by
default), each as soon as the stages it needs are done (:meth:`Experiment.plan`), with the same results
as one after another.

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

The package, bottom-up: ``recipe`` (:class:`DemoJob` and its sections, the methods and the RL plan),
``stages`` (timing and skipping stages, and running a plan of them in order or side by side), ``tasks`` (task sets, the GSRM prompt and its SFT rows), ``measurements``
(evaluating students and the GSRM, the RL signal, the machine record), ``base`` (the base student),
``run`` (:class:`Experiment`). The command's options are ``rlkd.cli.demo``.
"""

from __future__ import annotations

from rlkd.experiment.recipe import (
    BaseSection,
    COMPARISONS,
    DEFAULT_BASE,
    DEFAULT_CONFIG,
    DEFAULT_OUTPUT,
    DONE_FILE,
    DataSection,
    DemoJob,
    EvalSection,
    METHODS,
    RESULTS_FILE,
    RL_PLAN,
    SPLITS,
    STAGES_FILE,
    load_demo_job,
)
from rlkd.experiment.stages import (
    Stages,
    stage_times,
)
from rlkd.experiment.tasks import (
    gsrm_sft_rows,
    make_tasks,
    write_gsrm_prompt,
)
from rlkd.experiment.measurements import (
    eval_job,
    evaluate_gsrm,
    evaluate_model,
    grounded_share,
    machine_info,
    rl_signal,
)
from rlkd.experiment.base import (
    BASE_CARD,
    BASE_FILES,
    base_tasks,
    build_base,
    check_computations,
    probe_lookups,
    probe_positions,
)
from rlkd.experiment.run import (
    Experiment,
)

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_OUTPUT",
    "DEFAULT_BASE",
    "METHODS",
    "RL_PLAN",
    "SPLITS",
    "COMPARISONS",
    "STAGES_FILE",
    "RESULTS_FILE",
    "DONE_FILE",
    "DataSection",
    "BaseSection",
    "EvalSection",
    "DemoJob",
    "load_demo_job",
    "Stages",
    "stage_times",
    "make_tasks",
    "write_gsrm_prompt",
    "gsrm_sft_rows",
    "eval_job",
    "evaluate_model",
    "grounded_share",
    "evaluate_gsrm",
    "rl_signal",
    "machine_info",
    "BASE_FILES",
    "BASE_CARD",
    "base_tasks",
    "probe_lookups",
    "probe_positions",
    "check_computations",
    "build_base",
    "Experiment",
]
