"""A synthetic multi-branch reasoning testbed whose true reasoning structure is known.

Each task is a small dependency graph of named integer quantities. Some are given as facts; the others
are defined from two or more quantities by ``+``, ``-`` and ``*``; one of them is asked for. The
quantities the goal needs form a chain ``q1 -> q2 -> ... -> goal`` (each link also takes facts, now and
then an earlier link), so at every step exactly one needed quantity can be computed. Beside it the
problem defines *distractors* (computable but useless for the goal, some from the start, some once a
link is known) and the later links wait for inputs that are not known yet. Choosing the next
sub-problem is therefore as much of the task as computing it, which is what RLKD's structure reward is
about. Because the graph is known, so is the ground-truth decomposition of every teacher trace.

What this package gives the experiment (its modules: :mod:`~rlkd.testbed.tasks`, the tasks and the
oracle teacher; :mod:`~rlkd.testbed.rule_decomposer`, the exact decomposer and the alignment;
:mod:`~rlkd.testbed.datasets`, files and training data; every name below is importable from
``rlkd.testbed``):

1. :func:`generate_tasks` (seeded and deterministic) with knobs for depth, branching, distractors and the
   number range, an in-distribution split ``id`` and a harder ``ood`` split (deeper, more distractors),
   structurally disjoint by construction. Every task has its own randomly chosen quantity names and
   one fixed wording per sentence type (the question first, then the definitions in a random order, each
   one sentence with the facts it uses: ``lev = zor + cod, zor is 1, cod is 3.``), so copying the
   teacher's words is not enough: the names must be found in the problem.
2. The oracle teacher: :func:`teacher_trace` writes a flat ``<think>`` narrative (natural sentences, no
   step labels) and a boxed answer; :func:`oracle_decomposition` gives the (meta-reasoning, sub-problem,
   answer) steps of exactly that narrative as a :class:`rlkd.structure.Decomposition`.
3. :func:`rule_decompose`, the exact rule-based decomposer: it reproduces the ground truth on every
   oracle trace and reads a student's imperfect imitation as well as it can, never raising and saying
   why when it finds no steps. It is the reference the trained GSRM is measured against.
4. Helpers: :meth:`Task.to_dict` / :func:`write_dataset` (an rlkd dataset with the columns ``problem``,
   ``answer``, ``teacher_reasoning``, ``teacher_structure``), :func:`gsrm_pairs` (chat-format SFT data for
   a tiny GSRM), :func:`corpus` (texts for :func:`rlkd.models.build_tokenizer`), :func:`alignment`
   (exact structure alignment of a student's decomposition with the oracle's), :func:`token_stats`, and
   the base student's texts, :func:`base_text` (built from :func:`computation`) and
   :func:`copying_texts`.

How this departs from the paper:

1. The paper distils DeepSeek-R1's traces on competition mathematics, where nobody knows the true
   decomposition; it is judged by a GSRM trained on GPT-4o's decompositions. Here the teacher is a
   program, its traces are short, and the decomposition is known exactly, so the GSRM's accuracy and the
   student's structure alignment can be measured rather than estimated.
2. The sub-problem of every step is the canonical question ``What is x?`` and its answer the integer
   value; the meta-reasoning is the narrative's own sentences (which name the chosen quantity and say
   why), so text and overlap judges can compare a student's steps with the teacher's sensibly.
"""

from __future__ import annotations

from rlkd.testbed.datasets import (
    GSRM_INSTRUCTION,
    corpus,
    gsrm_pairs,
    gsrm_prompt,
    read_tasks,
    token_stats,
    trace_prefixes,
    whole_word_check,
    write_dataset,
)
from rlkd.testbed.rule_decomposer import alignment, chosen_quantity, opening_goal, reasoning_text, rule_decompose
from rlkd.testbed.tasks import (
    KNOBS,
    NAMES,
    SPLITS,
    Quantity,
    Task,
    base_text,
    computation,
    copying_texts,
    generate_tasks,
    oracle_decomposition,
    teacher_trace,
)

__all__ = [
    "GSRM_INSTRUCTION", "KNOBS", "NAMES", "SPLITS", "Quantity", "Task", "alignment", "base_text", "chosen_quantity", "computation",
    "copying_texts", "corpus", "generate_tasks", "gsrm_pairs", "gsrm_prompt", "opening_goal", "oracle_decomposition", "read_tasks",
    "reasoning_text", "rule_decompose", "teacher_trace", "token_stats", "trace_prefixes", "whole_word_check", "write_dataset",
]
