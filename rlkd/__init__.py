"""rlkd: distil an LLM teacher's multi-branch reasoning structure into a student with GRPO.

The method in one line: a GSRM rewrites reasoning traces into (meta-reasoning, sub-problem, answer)
steps (:mod:`rlkd.structure`), judges compare the student's steps with the teacher's
(:mod:`rlkd.judges`), and GRPO trains the student on that structure reward plus accuracy and format.
"""

from rlkd.structure import (
    Decomposition,
    Step,
    StepVerdict,
    StructureResult,
    Verdict,
    parse_decomposition,
    structure_reward,
)

__version__ = "0.1.0"
__all__ = [
    "Decomposition",
    "Step",
    "StepVerdict",
    "StructureResult",
    "Verdict",
    "parse_decomposition",
    "structure_reward",
]
