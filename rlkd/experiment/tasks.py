"""The demo's task sets and the GSRM's training data: testbed tasks of both splits, the GSRM prompt file,
the GSRM SFT rows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.files import atomic_write_jsonl
from rlkd.gsrm import sft_example
from rlkd.templates import load_prompt
from rlkd.testbed import GSRM_INSTRUCTION, generate_tasks, gsrm_prompt, trace_prefixes

from rlkd.experiment.recipe import DataSection

log = logging.getLogger("rlkd.experiment")

# --------------------------------------------------------------------------------------------------
# Data


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    atomic_write_jsonl(path, rows)
    return path


def make_tasks(data: DataSection) -> dict[str, list[Any]]:
    """The experiment's task sets: ``train``, ``test_id``, ``test_ood``, ``gsrm`` (GSRM training), and
    ``gsrm_test_id`` / ``gsrm_test_ood`` (the held-out traces the GSRM's accuracy is measured on, so that
    it is measured on more traces than the students' test sets hold).

    Every set is structurally disjoint from the others (no two tasks share a structure key), so the
    test sets are held out from both the student's and the GSRM's training. Each set has its own seed
    and is drawn after the ones before it, so adding a later set changes none of the earlier ones.
    """
    seed = data.seed
    train = generate_tasks(data.train, "id", seed=seed, **data.id_knobs)
    seen = {t.key for t in train}
    test_id = generate_tasks(data.test_id, "id", seed=seed + 1, exclude=seen, **data.id_knobs)
    seen |= {t.key for t in test_id}
    test_ood = generate_tasks(data.test_ood, "ood", seed=seed + 2, exclude=seen, **data.ood_knobs)
    seen |= {t.key for t in test_ood}
    gsrm = generate_tasks(data.gsrm_train, "id", seed=seed + 3, exclude=seen, **data.id_knobs)
    seen |= {t.key for t in gsrm}
    gsrm_test_id = generate_tasks(data.gsrm_test, "id", seed=seed + 4, exclude=seen, **data.id_knobs)
    seen |= {t.key for t in gsrm_test_id}
    gsrm_test_ood = generate_tasks(data.gsrm_test, "ood", seed=seed + 5, exclude=seen, **data.ood_knobs)
    return {"train": train, "test_id": test_id, "test_ood": test_ood, "gsrm": gsrm, "gsrm_test_id": gsrm_test_id,
            "gsrm_test_ood": gsrm_test_ood}


def write_gsrm_prompt(path: Path) -> Path:
    """Write the testbed's GSRM prompt (:func:`rlkd.testbed.gsrm_prompt`) as a prompt file that
    :func:`rlkd.templates.load_prompt` reads, so that the Decomposer sends exactly what the testbed defines."""
    text = f"=== user ===\n{GSRM_INSTRUCTION}\n\nProblem: {{problem}}\n\nReasoning: {{reasoning}}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")

    load_prompt.cache_clear()
    check = load_prompt(str(path)).render("P", "R", few_shot=False)
    if check != [{"role": "user", "content": gsrm_prompt("P", "R")}]:  # pragma: no cover - a guard on drift
        raise RuntimeError(f"{path}: the prompt file does not reproduce rlkd.testbed.gsrm_prompt")
    return path


def gsrm_sft_rows(tasks: Sequence[Any], prompt: str = "math", prefixes: bool = False) -> list[dict[str, Any]]:
    """GSRM training rows (chat ``prompt``/``completion``) in exactly the prompt the structure reward's
    :class:`rlkd.gsrm.Decomposer` sends (``prompt``: a domain or a prompt file, without the worked
    example), so the GSRM is used the way it was trained. The targets are the ground-truth
    decompositions of the testbed's teacher traces; ``prefixes`` adds, after them, a row for every
    trace cut after each of its computations but the last (:func:`rlkd.testbed.trace_prefixes`, ids
    ``<task id>~<steps>``)."""
    rows = [{"id": task.id, **sft_example(task.problem, task.trace, task.decomposition, prompt)} for task in tasks]
    if prefixes:
        rows += [{"id": f"{task.id}~{len(cut.steps)}", **sft_example(task.problem, trace, cut, prompt)}
                 for task in tasks for trace, cut in trace_prefixes(task)]
    return rows
