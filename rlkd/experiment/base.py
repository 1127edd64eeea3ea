"""The base student: pretrained once on the testbed's problem language (:func:`build_base`, resumable), with
probes of how well it copies and looks up what a problem defines."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from rlkd.config import SFTJob
from rlkd.errors import InputError, RlkdError
from rlkd.models import build_tiny_model, build_tokenizer, load_model, load_tokenizer
from rlkd.templates import load_prompt
from rlkd.testbed import base_text, computation, copying_texts, corpus, generate_tasks, whole_word_check
from rlkd.train import last_checkpoint, train_job

from rlkd.experiment.measurements import _read_metrics, _training_for_device, machine_info
from rlkd.experiment.recipe import BaseSection, DemoJob
from rlkd.experiment.tasks import _write_jsonl, write_gsrm_prompt

log = logging.getLogger("rlkd.experiment")

# --------------------------------------------------------------------------------------------------
# The base student: pretrained once on the testbed's problem language

BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
BASE_CARD = "base_card.json"


def base_tasks(base: BaseSection) -> tuple[list[Any], list[Any]]:
    """The pretraining tasks and the held-out probe tasks of the base student (one generator stream)."""
    tasks = generate_tasks(base.tasks + base.probe_tasks, "id", seed=base.seed, **base.knobs)
    return tasks[: base.tasks], tasks[base.tasks:]


def probe_lookups(model_dir: str | Path, tasks: Sequence[Any], batch_size: int = 64) -> dict[str, float]:
    """How well a model writes the computations of held-out problems (greedy, after ``problem + "\\n"``,
    the layout of :func:`rlkd.testbed.base_text`). Each written computation (:func:`check_computations`)
    is checked on its own against the task's graph, in any order (the problem does
    not say which definition to compute first): ``lines_right`` is the share of the task's definitions
    written exactly right (definition restated, input values looked up, result right), ``values_right``
    the share whose result alone is right, ``tasks_right`` the share of problems with every definition
    right. The look-ups are where copying shows: the definition and the values must be found in the
    input."""
    import torch


    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, device="cpu", dtype="float32")
    total = right = values = whole = 0
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start: start + batch_size]
        batch = tokenizer([t.problem + "\n" for t in chunk], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=256, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        for task, ids in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
            written = check_computations(task, tokenizer.decode(ids, skip_special_tokens=True).strip().split("\n")[0])
            defined = [q.name for q in task.quantities if q.inputs]
            total += len(defined)
            right += sum(written.get(n, (False, False))[0] for n in defined)
            values += sum(written.get(n, (False, False))[1] for n in defined)
            whole += all(written.get(n, (False, False))[0] for n in defined)
    return {"lines_right": right / total if total else 0.0, "values_right": values / total if total else 0.0,
            "tasks_right": whole / len(tasks) if tasks else 0.0, "tasks": float(len(tasks))}


# the roles of the tokens of the base text's two sentences on a definition of two inputs, keyed by the
# sentence's token count (its period aside): ``x needs a and b`` and ``x = a + b, a is 1, b is 3, so x is 4``
ROLES: dict[int, tuple[str | None, ...]] = {
    5: ("choice", None, "copy_inputs", None, "copy_inputs"),
    18: ("copy_name", None, "copy_definition", "copy_operator", "copy_definition", None, "copy_name", None,
         "look_up_value", None, "copy_name", None, "look_up_value", None, None, "copy_name", None, "arithmetic"),
}
ROLE_NAMES = tuple(dict.fromkeys(r for roles in ROLES.values() for r in roles if r))
VALUE_ROLES = ("value_fact", "value_result")  # the value look-ups split by where the value is found


def probe_positions(model_dir: str | Path, tasks: Sequence[Any]) -> dict[str, float]:
    """Teacher-forced next-token accuracy on the base text of held-out problems, by the role of the
    token: ``choice`` (which quantity comes next; the problem does not say, so this stays low),
    ``copy_inputs`` (an input name in ``x needs a and b``, copied from the problem's definition),
    ``copy_definition`` and ``copy_operator`` (the definition restated, a few tokens after its inputs
    sentence), ``copy_name`` (a name restated within the sentence), ``look_up_value`` (an input's value,
    found as ``a is 3`` in the problem or in an earlier computation) and ``arithmetic`` (the result, given
    the values); the value look-ups of every computation, split by where the value is found
    (:func:`count_values`): ``value_fact`` (in the problem) and ``value_result`` (in an earlier
    computation). Copying has formed when ``copy_inputs`` and ``look_up_value`` climb towards 1; greedy
    generation (:func:`probe_lookups`) needs all of them."""
    import torch

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, device="cpu", dtype="float32")
    hits: dict[str, list[int]] = {role: [0, 0] for role in ROLE_NAMES + VALUE_ROLES}
    for task in tasks:
        ids = tokenizer.encode(base_text(task), add_special_tokens=False)
        start = len(tokenizer.encode(task.problem + "\n", add_special_tokens=False))
        with torch.no_grad():
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        pieces = tokenizer.convert_ids_to_tokens(ids)
        count_roles(ids, pieces, predicted, start, hits)
        count_values(task, pieces, ids, predicted, start, hits)
    return {role: right / seen if seen else 0.0 for role, (right, seen) in hits.items()}


def count_roles(ids: Sequence[int], pieces: Sequence[str], predicted: Sequence[int], start: int,
                hits: dict[str, list[int]]) -> None:
    """Add to ``hits`` (role -> [right, seen]) the teacher-forced predictions (``predicted[i]`` is the
    guess for ``ids[i + 1]``) of every sentence from token ``start`` on whose length :data:`ROLES` knows
    (sentences end at a ``.`` or ``:`` token; a definition of three inputs has other lengths and is
    skipped)."""
    i = start
    while i < len(ids):
        j = i
        while j < len(ids) and pieces[j] not in (".", ":"):
            j += 1
        for k, role in enumerate(ROLES.get(j - i, ())):
            if role:
                hits.setdefault(role, [0, 0])
                hits[role][1] += 1
                hits[role][0] += int(predicted[i + k - 1] == ids[i + k])
        i = j + 1


def count_values(task: Any, pieces: Sequence[str], ids: Sequence[int], predicted: Sequence[int], start: int,
                 hits: dict[str, list[int]]) -> None:
    """Add to ``hits`` the teacher-forced predictions of every input value from token ``start`` on
    (``zor is 1``, or ``zor 1`` on a surface without ``is``; a result after ``so`` is arithmetic, not
    counted): ``value_fact`` for a fact's value, found in the problem, ``value_result`` for a result's,
    found in an earlier computation."""
    by_name = {q.name: q for q in task.quantities}
    words = [p.replace("\u0120", "") for p in pieces]  # the byte-level tokenizer's space mark
    for i in range(max(start, 3), len(ids)):
        if not words[i].isdigit():
            continue
        if words[i - 1] in by_name:
            name, before = words[i - 1], words[i - 2]
        elif words[i - 1] == "is" and words[i - 2] in by_name:
            name, before = words[i - 2], words[i - 3]
        else:
            continue
        if before == "so":
            continue
        role = VALUE_ROLES[1] if by_name[name].inputs else VALUE_ROLES[0]
        hits.setdefault(role, [0, 0])
        hits[role][1] += 1
        hits[role][0] += int(predicted[i - 1] == ids[i])


def check_computations(task: Any, text: str) -> dict[str, tuple[bool, bool]]:
    """For each defined quantity a text computes (sentences ``x = <definition>, <input> is <value>, ...,
    so x is <result>.``, the first one per quantity, in any order): (written exactly as
    :func:`rlkd.testbed.computation` writes it, result right).

    >>> from rlkd.testbed import base_text, generate_tasks
    >>> task = generate_tasks(1, seed=0)[0]
    >>> all(exact for exact, _ in check_computations(task, base_text(task).split("\\n")[1]).values())
    True
    >>> check_computations(task, "lev = zor + cod, zor is 1, cod is 3, so lev is 5.")
    {'lev': (False, False)}
    """
    by_name = {q.name: q for q in task.quantities}
    written: dict[str, tuple[bool, bool]] = {}
    for sentence in re.split(r"(?<=\.) |: ", text.strip()):
        head = sentence.split(" = ", 1)[0].strip()
        q = by_name.get(head) if " = " in sentence else None
        if q is None or not q.inputs or q.name in written:
            continue
        sentence = sentence if sentence.endswith(".") else sentence + "."
        written[q.name] = (sentence == computation(task, q.name), sentence.endswith(f" so {q.name} is {q.value}."))
    return written



def build_base(job: "DemoJob") -> dict[str, Any]:
    """Build the base student at ``job.base.path`` (``rlkd demo --build-base``), deterministically from
    the recipe, resuming after an interruption; return its card (also written as ``base_card.json``).

    0. The copying warm-up (``base.copying_steps > 0``): ``rlkd train sft`` of the random initial model on
       :func:`rlkd.testbed.copying_texts` (the loss on the repeat) into ``<path>-build/copying``; the
       pretraining below starts from it. A model of the base's size learns there to find a thing by its
       content in about 2,500 steps with ``pretraining.extra {adam_beta2: 0.98}`` (with TRL's default 0.999
       once by 3,200, once not by 6,000); on the problems alone it had not by 3,000 (docs/demo-results.md).
       A warm-up whose last loss is above ``base.copying_max_loss`` stops the build here.
    1. Draw ``base.tasks`` tasks (their own seed, the id split's knobs) and write each one's
       :func:`rlkd.testbed.base_text` to ``<path>-build/pretrain.jsonl``: the problem, and the
       computations that follow it, on which alone the loss is taken (the problem's own tokens are
       random names and values; training on them only slows the look-ups down).
    2. Train a BPE tokenizer that keeps every name and number one token (refused otherwise) and a random
       Llama of the recipe's size (``<path>-build/init``).
    3. Pretrain it with ``rlkd train sft`` (``data.format: text``) into ``<path>-build/train``, saving a
       checkpoint every ``pretraining.save_steps``; a re-run resumes from the last one.
    3b. With ``base.continued_steps > 0``: continue from that model on ``base.tasks`` fresh problems
       (seed ``base.continued_seed``) with a new cosine schedule from ``base.continued_learning_rate``, into
       ``<path>-build/continued`` (resumable the same way). The look-ups were still improving when the
       first stage's schedule ran out (docs/demo-results.md).
    4. Probe every checkpoint of both stages on held-out problems (steps counted from the start): greedy
       computations (:func:`probe_lookups`) and teacher-forced accuracy by token role
       (:func:`probe_positions`): when copying forms.
    5. Copy the last stage's model and tokenizer to ``path`` with the card: recipe, loss curve, probes,
       times.
    """

    b = job.base
    final, work = Path(b.path), Path(f"{b.path}-build")
    started = time.monotonic()
    train, probe = base_tasks(b)
    data = work / "pretrain.jsonl"
    if _rows(data) != len(train):  # written again when the recipe's count changed
        _write_base_texts(data, train)
    init = work / "init"
    if not (init / "config.json").exists():
        texts = corpus(train[:2000]) + [c for _, c in load_prompt(str(write_gsrm_prompt(work / "gsrm_prompt.txt"))).turns]
        tokenizer = build_tokenizer(texts, b.vocab_size)
        split = whole_word_check(tokenizer)
        if split:
            raise InputError(f"base.vocab_size: {b.vocab_size} is too small to keep every name and number one token "
                           f"({len(split)} are split, e.g. {split[:5]}); raise it")
        build_tiny_model(init, tokenizer=tokenizer, hidden_size=b.hidden_size, num_layers=b.num_layers,
                         num_heads=b.num_heads, max_position_embeddings=b.max_position_embeddings, seed=b.seed)
    training = _training_for_device(job.pretraining, job.device)
    training.seed = b.seed
    start, copying_metrics = init, None
    if b.copying_steps > 0:
        texts = work / "copying.jsonl"
        if _rows(texts) != b.copying_texts:
            _write_jsonl(texts, copying_texts(b.copying_texts, seed=b.seed))
        # a constant learning rate: the copying forms late in the stage, which a decay would slow
        warm = dataclasses.replace(training, max_steps=b.copying_steps, save_steps=max(1, b.copying_steps // 5),
                                   lr_scheduler_type="constant_with_warmup")
        copying_metrics = _pretrain(init, texts, work / "copying", warm, "copying warm-up")
        _check_copying(work / "copying", b.copying_max_loss)
        start = work / "copying"
    # the loss is on the computations: look-ups and arithmetic
    metrics = _pretrain(start, data, work / "train", training, "problem language")
    stages = [(work / "train", 0)]
    continued_metrics = None
    if b.continued_steps > 0:
        more, _ = base_tasks(dataclasses.replace(b, seed=b.continued_seed))
        data = work / "pretrain-continued.jsonl"
        if _rows(data) != len(more):
            _write_base_texts(data, more)
        again = dataclasses.replace(training, max_steps=b.continued_steps, learning_rate=b.continued_learning_rate,
                                    seed=b.continued_seed)
        continued_metrics = _pretrain(work / "train", data, work / "continued", again, "continued pretraining")
        stages.append((work / "continued", training.max_steps))
    t0 = (init / "config.json").stat().st_mtime
    probes, losses = [], []
    for stage, offset in stages:  # steps counted from the start of the first stage
        points = sorted(((int(p.name.split("-")[1]), p) for p in stage.glob("checkpoint-*")
                         if p.name.split("-")[1].isdigit()), key=lambda x: x[0])
        for step, folder in points:
            result = probe_lookups(folder, probe)
            probes.append({"step": offset + step, "stage": stage.name, "wall_s": round(folder.stat().st_mtime - t0, 1),
                           **result, "teacher_forced": probe_positions(folder, probe)})
            log.info("base student probe at step %d: %s", offset + step, json.dumps(result))
        losses += [{"step": offset + r["step"], "loss": r.get("loss")} for r in _read_metrics(stage / "metrics.jsonl")
                   if "loss" in r and r.get("step") is not None]
    last = stages[-1][0]
    final.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        if (last / name).exists():
            shutil.copy2(last / name, final / name)
    copying_loss = [{"step": r.get("step"), "loss": r.get("loss")}
                    for r in _read_metrics(work / "copying" / "metrics.jsonl") if "loss" in r]
    card = {"recipe": {"base": dataclasses.asdict(b), "pretraining": dataclasses.asdict(job.pretraining)},
            "parameters": _parameter_count(final), "copying_metrics": copying_metrics, "copying_loss": copying_loss,
            "train_metrics": metrics, "continued_metrics": continued_metrics, "loss": losses, "probes": probes,
            "final_probe": probe_lookups(final, probe), "build_wall_s": round(time.monotonic() - started, 1),
            "machine": machine_info(), "command": "rlkd demo --build-base"}
    (final / BASE_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def _write_base_texts(path: Path, tasks: Sequence[Any]) -> None:
    """The pretraining rows of ``tasks``: the problem as context, its computations as the text the loss is on."""
    _write_jsonl(path, [{"id": t.id, "problem": t.problem + "\n", "text": base_text(t).split("\n", 1)[1]}
                        for t in tasks])


def _rows(path: Path) -> int:
    """The number of lines of a JSONL file the build wrote (-1 when there is none)."""
    if not path.exists():
        return -1
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def _pretrain(model: Path, data: Path, output: Path, training: Any, what: str) -> dict[str, Any]:
    """One ``rlkd train sft`` stage of the base build on ``data`` (text rows, the loss after the
    ``problem`` column), resuming from its last checkpoint. A finished stage is not trained again (not
    even the one step TRL would add on a resume), only reported."""
    sft = SFTJob(model=str(model), output_dir=str(output), resume="auto")
    sft.data.path, sft.data.format, sft.training = str(data), "text", training
    sft.data.prompt_column = "problem"
    last = last_checkpoint(sft.output_dir)
    if last is not None and int(last.name.split("-")[-1]) >= training.max_steps > 0 and (output / "config.json").exists():
        log.info("base student: %s finished before (%s)", what, last)
        return {"resumed_finished": str(last)}
    log.info("base student: %s, %s -> %s", what, model, output)
    return train_job(sft, argv=["rlkd demo", "--build-base"])


def _check_copying(stage: Path, max_loss: float | None) -> None:
    """Stop the build (RlkdError naming the stage and the field) when the warm-up's last logged loss is
    above ``max_loss``: the copy did not form, and the problem language should not start from it."""
    losses = [r["loss"] for r in _read_metrics(stage / "metrics.jsonl") if "loss" in r]
    if max_loss is None or not losses or losses[-1] <= max_loss:
        return
    raise RlkdError(f"{stage}: the copying warm-up ended at loss {losses[-1]:.2f} > base.copying_max_loss "
                    f"{max_loss:g}: the copy did not form (a uniform guess over the names is about 4.38). "
                    "Raise base.copying_steps and run again (the warm-up resumes from its last checkpoint), or "
                    "set pretraining.extra {adam_beta2: 0.98} (docs/demo-results.md); base.copying_max_loss=null "
                    "skips this check")


def _parameter_count(model_dir: Path) -> int:
    return sum(p.numel() for p in load_model(model_dir, device="cpu", dtype="float32").parameters())
