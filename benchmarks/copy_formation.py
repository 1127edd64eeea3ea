"""When does copying form? Pretrain a small Llama on the testbed's problem language and probe it.

The demo's students can only learn the testbed if they can look things up in their input: copy the
input names of a definition out of the shuffled problem, and find an input's value. This script
measures when (and whether) that forms for a model shape and a text surface, with a plain PyTorch
loop (the same loss as ``rlkd demo --build-base``: next-token loss on the computations only, the
problem is the context), so several shapes can be compared cheaply, one per core:

    .venv/bin/python benchmarks/copy_formation.py --hidden 64 --layers 4 --heads 4 --steps 3000
    .venv/bin/python benchmarks/copy_formation.py --hidden 128 --heads 4 --steps 1500
    .venv/bin/python benchmarks/copy_formation.py --surface capital --recall --steps 1500

Every ``--probe-every`` steps it prints teacher-forced next-token accuracy on held-out problems by the
role of the token (:func:`rlkd.experiment.probe_positions`) in ``x needs a and b. x = a + b, a is 3,
b is 5, so x is 8.``: ``copy_inputs`` (``a`` and ``b`` of the first sentence, found in the problem's
definition), ``copy_definition`` and ``copy_operator`` (the definition restated), ``copy_name`` (a name
restated within the sentence), ``look_up_value`` (``3`` and ``5``, found as ``a is 3``),
``arithmetic`` (``8``) and ``choice`` (``x``, which the problem does not determine). Copying has formed
when ``copy_inputs`` leaves chance (1/80 names) and climbs. Surfaces (1 to 5 are the testbed before
its third redesign, with each computation's values in its definition's order; 6 is the testbed now):

1. ``plain``: the testbed's previous problem, every fact and definition its own sentence, all in a
   random order (``Find dup. dup = vat - tor. vat is 5. ...``);
2. ``capital``: sentence case, every sentence's subject capitalised (``Dup = vat - tor. Vat is 5.``),
   so the sentence that defines a quantity is found by a token that occurs once in the problem;
3. ``fused``: every value right after its name (``zor 1.`` for ``zor is 1.``, ``so lev 4`` for ``so
   lev is 4``), so that finding a value is a plain induction copy (match the name, take the next
   token) rather than a match on two tokens (the name and ``is``); the probe's ``value_fact`` (a fact's
   value, found in the problem) and ``value_result`` (a result's, found in an earlier computation)
   compare the surfaces;
4. ``grouped``: the problem states each definition followed by the facts it uses (``lev = zor + cod.
   zor is 1. cod is 3.``; a fact two definitions use is stated after both), the definitions in a random
   order, so a computation restates a run of the problem and its values follow the definition it found;
5. ``runs``: grouped, each definition and its facts one sentence worded as the computation restates
   them (``lev = zor + cod, zor is 1, cod is 3.``), so a computation copies a run of the problem
   verbatim up to its first input that is a result;
6. ``runs-facts-first`` (the default): runs, with each computation's fact values before its result
   values (``hov = lev - dag, dag is 2, lev is 4, so hov is 2.``), so the facts are one verbatim copy of
   the problem's run and a result's value is looked up last, just before ``so``: what
   :mod:`rlkd.testbed` writes since its third redesign;
7. ``--recall``: the text restates every problem sentence in a new random order before the
   computations (dense copying practice: all of it is looked up in the problem).

``--task mqar`` strips the testbed away to the look-up alone (multi-query associative recall):
``--pairs`` sentences ``name = value.`` (``name value.`` with ``--fused``: a one-token key; the values
digits 1-9, or with ``--values names`` names distinct within the text), then half of
them asked again in a random order, the loss on the values only; ``copy_definition`` is then the
share of asked values found. It tells whether a shape can learn content look-ups at all in a budget. ``--task induction`` is the
plainest copy there is: a run of 20 random names, repeated after a gap, at a random offset (so that
no fixed-distance attention solves it), the loss on the repeat; ``copy_definition`` is then the share
of the repeat predicted right.

Transfer: ``--init DIR`` starts from a saved model and its tokenizer (e.g. ``--task induction --save
DIR``, or the base build's copying warm-up, ``<base.path>-build/copying``), and ``--mix SHARE`` keeps
that share of every batch copying texts while the problem language is learned (the probe then adds
``copy_run``, the copy's share right); ``--pool N`` draws each copying text's names from N random
names, so that a single name recurs and only a pair of names finds the run. ``--text trace`` trains on
the teacher's whole trace after the problem instead of the base text (the issue's own run) and probes
the greedy share of problems ``solved``; ``--text computations`` drops the inputs sentences. ``--constant`` keeps the learning rate flat after the
warm-up.

    .venv/bin/python benchmarks/copy_formation.py --init runs/b-build/copying --mix 0.3 --lr 1e-3 --constant
    .venv/bin/python benchmarks/copy_formation.py --text trace --hidden 128 --constant --steps 12000

Results and the commands behind them are in ``docs/demo-results.md`` ("When copying forms").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

_SUBJECT = re.compile(r"(^|\. |\n|: )([a-z]+)(?= (?:=|is|needs) )")
_NEEDS = re.compile(r"(?<=[.:] )[a-z]+ needs [^.]*\. ")
_IS_VALUE = re.compile(r"\b([a-z]+) is (\d+)")


def sentence_case(text: str) -> str:
    """Capitalise each sentence's subject name: ``dup = a + b. c is 3.`` -> ``Dup = a + b. C is 3.``

    >>> sentence_case("Find dup. dup = a + b. c is 3.\\nEvery quantity: dup needs a and b. dup = a + b, a is 1")
    'Find dup. Dup = a + b. C is 3.\\nEvery quantity: Dup needs a and b. Dup = a + b, a is 1'
    """
    return _SUBJECT.sub(lambda m: m.group(1) + m.group(2).capitalize(), text)


def _sentence(q) -> str:
    """A quantity's own sentence of the problem: ``zor is 1.`` or ``lev = zor + cod.``"""
    return f"{q.name} = {q.symbolic()}." if q.inputs else f"{q.name} is {q.value}."


def previous_problem(task, rng: random.Random) -> str:
    """The problem as the testbed wrote it before its third redesign: the question, then every fact and
    definition as its own sentence, all in a random order (``Find hub. bim is 7. hub = bim * hov. lev =
    zor + cod. cod is 3. ...``).

    >>> from rlkd.testbed import generate_tasks
    >>> text = previous_problem(generate_tasks(1, seed=0)[0], random.Random(0))
    >>> text.startswith("Find hub. ") and " zor is 1." in text and ", " not in text
    True
    """
    sentences = [_sentence(q) for q in task.quantities]
    rng.shuffle(sentences)
    return " ".join([f"Find {task.goal}."] + sentences)


def grouped_problem(task, rng: random.Random, runs: bool = False) -> str:
    """The task's problem with each definition followed by its facts, the definitions in a random order,
    then any fact no definition uses: ``Find hub. lev = zor + cod. zor is 1. cod is 3. hub = lev * bim.
    bim is 7.`` (``runs``: each group one sentence, ``lev = zor + cod, zor is 1, cod is 3.``, as the
    testbed now writes it).

    >>> from rlkd.testbed import generate_tasks
    >>> text = grouped_problem(generate_tasks(1, seed=0)[0], random.Random(0))
    >>> text.startswith("Find ") and ". zor is 1. cod is 3." in text
    True
    """
    fact = {q.name for q in task.quantities if not q.inputs}
    sentence = {q.name: _sentence(q) for q in task.quantities}
    defined = [q for q in task.quantities if q.inputs]
    rng.shuffle(defined)
    ordered = []
    for q in defined:
        group = [sentence[q.name]] + [sentence[i] for i in q.inputs if i in fact]
        # runs: one sentence per group, worded as the computation will restate it
        ordered += [", ".join(s.rstrip(".") for s in group) + "."] if runs else group
    used = {i for q in defined for i in q.inputs}
    ordered += [sentence[q.name] for q in task.quantities if q.name in fact - used]
    return " ".join([f"Find {task.goal}."] + ordered)


_COMPUTATION = re.compile(r"\b([a-z]+)( = [^,.]+)((?:, [a-z]+ is \d+)+)(, so )")


def in_definition_order(text: str, task) -> str:
    """Each computation's values in its definition's order, as the testbed wrote them before its third
    redesign (now the facts' come first, then the results').

    >>> from rlkd.testbed import generate_tasks
    >>> in_definition_order("hov = lev - dag, dag is 2, lev is 4, so hov is 2.", generate_tasks(1, seed=0)[0])
    'hov = lev - dag, lev is 4, dag is 2, so hov is 2.'
    """
    inputs = {q.name: q.inputs for q in task.quantities}

    def reorder(match: re.Match) -> str:
        values = match.group(3)[2:].split(", ")
        values.sort(key=lambda value: inputs[match.group(1)].index(value.split(" ", 1)[0]))
        return match.group(1) + match.group(2) + ", " + ", ".join(values) + match.group(4)
    return _COMPUTATION.sub(reorder, text)


def make_text(task, surface: str, recall: bool, rng: random.Random, what: str = "needs") -> tuple[str, str]:
    """(whole text, context prefix without loss) for one task: the problem, then the base student's text
    (``what="needs"``: each computation after the sentence naming its inputs), its computations alone
    (``"computations"``) or the teacher's whole trace (``"trace"``), on one of the surfaces of the module
    docstring (``runs-facts-first`` is the testbed's own)."""
    from rlkd.testbed import base_text

    if what == "trace":
        return task.problem + "\n" + task.trace, task.problem + "\n"
    problem, computations = base_text(task).split("\n", 1)
    if what == "computations":
        computations = _NEEDS.sub("", computations)
    if surface != "runs-facts-first":
        computations = in_definition_order(computations, task)
        problem = (grouped_problem(task, rng, runs=surface == "runs") if surface in ("grouped", "runs")
                   else previous_problem(task, rng))
    if surface == "capital":
        problem, computations = sentence_case(problem), sentence_case(computations)
    elif surface == "fused":  # a value right after its name: ``zor 1`` for ``zor is 1``
        problem, computations = _IS_VALUE.sub(r"\1 \2", problem), _IS_VALUE.sub(r"\1 \2", computations)
    middle = ""
    if recall:  # the problem's statements (the question aside) in a new order
        sentences = [s if s.endswith(".") else s + "." for s in problem.split(". ")[1:]]
        rng.shuffle(sentences)
        middle = " ".join(sentences) + "\n"
    return problem + "\n" + middle + computations, problem + "\n"


def mqar_example(tokenizer, pairs: int, fused: bool, rng: random.Random,
                 values: str = "digits") -> tuple[list[int], list[int]]:
    """(token ids, labels) of one bare look-up text: ``pairs`` sentences ``name = value.``, a line break,
    then half of the names asked again in a random order with their values (the only labels). ``values``:
    ``digits``, 1-9 drawn independently (so values recur within a text), or ``names``, other names, all
    distinct within the text."""
    from rlkd.testbed import NAMES

    def one(text: str) -> int:
        return tokenizer.encode(text, add_special_tokens=False)[0]

    eq, dot = one(" ="), one(".")
    drawn = rng.sample(NAMES, 2 * pairs if values == "names" else pairs)
    names = [one(" " + n) for n in drawn[:pairs]]
    if values == "names":
        value_ids = [one(" " + n) for n in drawn[pairs:]]
    else:
        value_ids = [one(f" {rng.randint(1, 9)}") for _ in names]
    ids: list[int] = []
    for name, value in zip(names, value_ids):
        ids += [name, value, dot] if fused else [name, eq, value, dot]
    ids.append(one("\n"))
    labels = [-100] * len(ids)
    asked = rng.sample(range(pairs), max(1, pairs // 2))
    for i in asked:
        ids += [names[i], value_ids[i], dot] if fused else [names[i], eq, value_ids[i], dot]
        labels += [-100, value_ids[i], -100] if fused else [-100, -100, value_ids[i], -100]
    return ids, labels


def induction_example(tokenizer, rng: random.Random, run: int = 20, width: int = 80,
                      pool: int = 0) -> tuple[list[int], list[int]]:
    """(token ids, labels) of one copying text: random names, a run of ``run`` names, a random gap, the
    run again, random names up to ``width``; the labels are the repeat's names after its first (after
    its second with ``pool``). ``pool > 0`` draws every name of the text from ``pool`` random names, so
    a name recurs often and only a pair of names tells where the run is (two-token copying)."""
    from rlkd.testbed import NAMES

    choices = rng.sample(NAMES, pool) if pool else NAMES

    def names(k: int) -> list[int]:
        return [tokenizer.encode(" " + rng.choice(choices), add_special_tokens=False)[0] for _ in range(k)]

    before, gap = rng.randint(0, 30), rng.randint(0, 10)
    chunk = names(run)
    ids = names(before) + chunk + names(gap) + chunk + names(width - 2 * run - before - gap)
    start = before + run + gap
    labels = [-100] * len(ids)
    first = start + (2 if pool else 1)
    labels[first: start + run] = ids[first: start + run]
    return ids, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default 64, the shipped base's)")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (default 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4: head size hidden/heads)")
    parser.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE base (default 10000)")
    parser.add_argument("--init-range", type=float, default=0.02, help="standard deviation of the initial weights "
                        "(LlamaConfig.initializer_range, default 0.02)")
    parser.add_argument("--surface", choices=("plain", "capital", "fused", "grouped", "runs", "runs-facts-first"),
                        default="runs-facts-first",
                        help="the text's surface (see the module docstring): runs-facts-first (default), the "
                        "testbed's own: each definition and its facts one sentence of the problem, each computation's "
                        "fact values before its result values; the testbed before its third redesign: plain, every "
                        "statement its own sentence in a random order; capital: plain in sentence case; fused: plain "
                        "with a value right after its name; grouped: each definition followed by its facts; runs: "
                        "grouped, each definition and its facts one sentence")
    parser.add_argument("--recall", action="store_true", help="restate the problem's sentences before the "
                        "computations (loss on them too)")
    parser.add_argument("--task", choices=("testbed", "mqar", "induction"), default="testbed",
                        help="testbed: the problem language; mqar: the bare look-up; induction: copy a "
                        "repeated run of names (see the module docstring)")
    parser.add_argument("--pairs", type=int, default=10, help="mqar: name-value sentences per text (default 10)")
    parser.add_argument("--fused", action="store_true", help="mqar: no ' =' between name and value")
    parser.add_argument("--values", choices=("digits", "names"), default="digits",
                        help="mqar: the values, digits 1-9 drawn independently (they recur within a text, as "
                        "the testbed's do; default) or names, distinct within a text")
    parser.add_argument("--text", choices=("needs", "computations", "trace"), default="needs",
                        help="testbed: what follows the problem (loss on it): needs, the base student's text, "
                        "each computation after the sentence naming its inputs, 'x needs a and b.' (default); "
                        "computations, the computations alone (no choice or copy_inputs probe); or trace, the "
                        "teacher's whole trace (the probe is then the greedy share of problems solved)")
    parser.add_argument("--pool", type=int, default=0, help="induction and --mix texts: draw each text's names "
                        "from this many random names (0: all 80), so that copying must match pairs of names")
    parser.add_argument("--mix", type=float, default=0.0, help="testbed: the share of each batch that is "
                        "induction copying texts (default 0); the probe then adds copy_run, their repeat's "
                        "share right")
    parser.add_argument("--init", type=Path, default=None, help="start from the model and tokenizer saved in "
                        "this folder (e.g. a copying warm-up's output) instead of a random model")
    parser.add_argument("--save", type=Path, default=None, help="save the model and tokenizer here at every probe")
    parser.add_argument("--constant", action="store_true", help="constant learning rate after the warm-up "
                        "instead of the cosine decay")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    parser.add_argument("--batch", type=int, default=32, help="texts per step (default 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, 100 warm-up steps then cosine "
                        "to a tenth (default 3e-3, the base recipe's); AdamW betas (0.9, 0.98)")
    parser.add_argument("--tasks", type=int, default=40000, help="pretraining tasks (default 40000, seed 1000: "
                        "the base recipe's)")
    parser.add_argument("--probe-tasks", type=int, default=64, help="held-out tasks probed (default 64)")
    parser.add_argument("--probe-every", type=int, default=250, help="probe every N steps (default 250)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: run shapes side by side)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed (default 0)")
    parser.add_argument("--output", type=Path, default=None, help="also append each probe as a JSON line here")
    args = parser.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlkd.experiment.base import ROLE_NAMES, VALUE_ROLES, count_roles, count_values
    from rlkd.models import build_tokenizer, load_tokenizer
    from rlkd.testbed import NAMES, generate_tasks

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # the synthetic texts use the testbed's tokenizer too (built from 3,000 problems)
    tasks = generate_tasks(args.tasks + args.probe_tasks if args.task == "testbed" else 3000, "id", seed=1000)
    train, probe = tasks[: args.tasks], tasks[args.tasks:]
    rng = random.Random(args.seed)
    if args.init:
        tokenizer = load_tokenizer(args.init)
    else:
        tokenizer = build_tokenizer([make_text(t, args.surface, args.recall, rng, args.text)[0] for t in train[:3000]],
                                    1024)
    forms = (" {}", " {C}") if args.surface == "capital" else (" {}",)  # no name starts a line
    split = [f.format(n, C=n.capitalize()) for n in NAMES for f in forms
             if len(tokenizer.encode(f.format(n, C=n.capitalize()), add_special_tokens=False)) != 1]
    if split:
        print(f"warning: {len(split)} name forms are split by the tokenizer, e.g. {split[:5]}", file=sys.stderr)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=1024, rope_theta=args.rope_theta,
                         initializer_range=args.init_range,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM.from_pretrained(args.init, dtype=torch.float32) if args.init else LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    what = {"testbed": f"{args.text}, surface {args.surface}{' + recall' if args.recall else ''}"
                       + (f", {args.mix:.0%} copying texts" if args.mix else ""),
            "mqar": f"mqar, {args.pairs} pairs{', fused' if args.fused else ''}, {args.values} as values",
            "induction": "induction (a run of 20 names repeated at a random offset)"}[args.task]
    start = f", from {args.init}" if args.init else ""
    shape = model.config
    print(f"# hidden {shape.hidden_size}, layers {shape.num_hidden_layers}, heads {shape.num_attention_heads}, "
          f"rope_theta {getattr(shape, 'rope_theta', args.rope_theta):g}, "
          f"{what}{start}: {params} parameters", flush=True)

    def encode(task, order_rng: random.Random) -> tuple[list[int], int, int]:
        text, context = make_text(task, args.surface, args.recall, order_rng, args.text)
        ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        computations_start = len(tokenizer.encode(text.rsplit("\n", 1)[0] + "\n", add_special_tokens=False))
        return ids, len(tokenizer.encode(context, add_special_tokens=False)), computations_start

    def synthetic(example_rng: random.Random) -> tuple[list[int], list[int]]:
        if args.task == "mqar":
            return mqar_example(tokenizer, args.pairs, args.fused, example_rng, args.values)
        return induction_example(tokenizer, example_rng, pool=args.pool)

    if args.task != "testbed" or args.mix:
        probe_set = [synthetic(random.Random(10**6 + k)) for k in range(args.probe_tasks)]

    def probe_synthetic() -> dict[str, float]:
        model.eval()
        right = seen = 0
        for ids, labels in probe_set:
            with torch.no_grad():
                predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            for i, label in enumerate(labels):
                if label != -100:
                    seen += 1
                    right += int(predicted[i - 1] == label)
        model.train()
        return {"copy_definition": right / seen}

    def probe_solved() -> dict[str, float]:
        """--text trace: the share of probe problems whose greedy trace boxes the right answer."""
        model.eval()
        tokenizer.padding_side = "left"
        batch = tokenizer([t.problem + "\n" for t in probe], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=256, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        model.train()
        return {"solved": sum(f"\\boxed{{{t.answer}}}" in text for t, text in zip(probe, texts)) / len(probe)}

    def probe_roles() -> dict[str, float]:
        if args.task != "testbed":
            return probe_synthetic()
        extra = {"copy_run": probe_synthetic()["copy_definition"]} if args.mix else {}
        if args.text == "trace":
            return {**probe_solved(), **extra}
        hits = {role: [0, 0] for role in ROLE_NAMES + VALUE_ROLES}
        recall = [0, 0]
        model.eval()
        for k, task in enumerate(probe):
            ids, start, comp = encode(task, random.Random(k))
            ids = ids[:-1]
            with torch.no_grad():
                predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            pieces = tokenizer.convert_ids_to_tokens(ids)
            for i in range(start, comp):  # the restated sentences, when --recall
                recall[1] += 1
                recall[0] += int(predicted[i - 1] == ids[i])
            count_roles(ids, pieces, predicted, comp, hits)
            count_values(task, pieces, ids, predicted, comp, hits)
        model.train()
        result = {role: right / seen if seen else 0.0 for role, (right, seen) in hits.items()}
        if args.recall:
            result["recall"] = recall[0] / recall[1] if recall[1] else 0.0
        return {**result, **extra}

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    order = list(range(len(train)))
    rng.shuffle(order)
    header = ["step", "wall_s", "loss", "copy_definition"]
    if args.task == "testbed" and args.text == "trace":
        header = ["step", "wall_s", "loss", "solved"]
    elif args.task == "testbed":
        header += ["look_up_value", "arithmetic", "copy_operator", "copy_name"]
        header += ["copy_inputs", "choice"] if args.text == "needs" else []
        header += ["recall"] if args.recall else []
        header += ["value_fact", "value_result"]
    header += ["copy_run"] if args.task == "testbed" and args.mix else []
    print(" ".join(f"{h:>15}" for h in header), flush=True)
    started, smoothed, position = time.monotonic(), None, 0
    out = args.output.open("a", encoding="utf-8") if args.output else None
    for step in range(1, args.steps + 1):
        decay = 1.0 if args.constant else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        scale = min(1.0, step / 100) * decay
        for group in optimizer.param_groups:
            group["lr"] = args.lr * scale
        if args.task != "testbed":
            batch = [synthetic(rng) for _ in range(args.batch)]
        else:
            batch = []
            for _ in range(args.batch):
                if args.mix and rng.random() < args.mix:
                    batch.append(induction_example(tokenizer, rng, pool=args.pool))
                    continue
                ids, start, _ = encode(train[order[position % len(order)]], rng)
                batch.append((ids, [-100] * start + ids[start:]))
                position += 1
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, row_labels) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(row_labels)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % args.probe_every == 0 or step == args.steps:
            row = {"step": step, "wall_s": round(time.monotonic() - started, 1), "loss": round(smoothed, 3),
                   **{k: round(v, 3) for k, v in probe_roles().items()}}
            print(" ".join(f"{row[h]:>15}" for h in header), flush=True)
            if out:
                config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
                out.write(json.dumps({**row, "config": config}) + "\n")
                out.flush()
            if args.save:
                model.save_pretrained(args.save)
                tokenizer.save_pretrained(args.save)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
