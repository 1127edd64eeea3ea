"""The testbed's tasks and their oracle teacher: the dependency graphs, the problem statements, the
teacher's flat narrative and its ground-truth decomposition (:func:`generate_tasks`, :func:`teacher_trace`,
:func:`oracle_decomposition`), and the base student's texts (:func:`base_text`, :func:`copying_texts`).
The package docstring (:mod:`rlkd.testbed`) describes the task."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from rlkd.structure import Decomposition, Step

SPLITS: dict[str, dict[str, Any]] = {
    # knob -> an int, or an inclusive (low, high) range sampled per task (branching: per definition)
    "id": {"depth": (2, 4), "branching": 2, "distractors": (1, 3), "max_value": 9, "max_result": 99},
    "ood": {"depth": (5, 7), "branching": 2, "distractors": (3, 5), "max_value": 9, "max_result": 99},
}
KNOBS = ("depth", "branching", "distractors", "max_value", "max_result")

# --------------------------------------------------------------------------------------------------
# Names and wording. Every name is one lower-case word that no template uses (no digits, so a sentence
# with a digit is a computation). One fixed wording per sentence type: a tiny model then spends its
# capacity on the task (looking quantities up and choosing what to compute), not on paraphrase.

NAMES: tuple[str, ...] = (
    "box", "cap", "pen", "jar", "cup", "bag", "key", "map", "hat", "fan", "net", "pot", "rod", "tin", "van",
    "web", "dot", "fig", "gem", "hub", "ink", "jet", "kit", "log", "mug", "nut", "oak", "pin", "rug", "sap",
    "tub", "urn", "vat", "wax", "yak", "zip", "bee", "cod", "elk", "fox", "zib", "kor", "pim", "tav", "dex",
    "lun", "mip", "rax", "sol", "vek", "yor", "quin", "bax", "cor", "dup", "fel", "gor", "hib", "jax", "kel",
    "lom", "mur", "nix", "pov", "ral", "sib", "tor", "ulm", "vin", "wex", "yip", "zor", "bim", "dag", "fip",
    "gux", "hov", "jil", "kip", "lev",
)

_IS = "{q} is {v}"                                        # a known value: a fact, or a result
_FACT = _IS + "."
_DEFINITION = "{q} = {sym}."
_QUESTION = "Find {g}."
_OPENING = "We want {g}."
_WALK = "{q} needs {ins}."                                # a link whose inputs are not all known yet
_CHOICE = "{q} needs {ins}, all known, so compute {q}."  # the sub-problem chosen next
_COMPUTE = "{q} = {sym}, {values}, so " + _IS + "."         # restates the definition, then each input's value
_BASE_OPENING = "Every quantity:"                         # starts the base text's line (no name at a line start)
_P_FRESH_DISTRACTOR_FACT = 0.4


def _join_names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# --------------------------------------------------------------------------------------------------
# Types


@dataclass
class Quantity:
    """One named quantity: a fact (no inputs) or a definition ``inputs[0] ops[0] inputs[1] ...``.

    Operators are applied left to right; ``*`` only ever comes first, so this is also the usual
    precedence. ``role`` is ``fact``, ``needed`` (on the goal's chain) or ``distractor``.
    """

    name: str
    role: str
    value: int
    inputs: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)

    def symbolic(self) -> str:
        """The definition with names, e.g. ``c + d``."""
        return _expression(self.inputs, self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "value": self.value, "inputs": list(self.inputs),
                "ops": list(self.ops)}


@dataclass
class Task:
    """One testbed problem with its graph, its oracle trace and the trace's ground-truth decomposition."""

    id: str
    split: str
    seed: int
    problem: str
    answer: int
    goal: str
    quantities: list[Quantity]
    order: list[str]  # the needed quantities in the only order they can be computed; ends with goal
    knobs: dict[str, int]
    key: str  # structure fingerprint: equal for two tasks that differ only in names and wording
    trace_seed: int = 0
    trace: str = ""
    decomposition: Decomposition = field(default_factory=Decomposition)

    def quantity(self, name: str) -> Quantity:
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """One dataset row: the rlkd columns (``problem``, ``answer``, ``teacher_reasoning``,
        ``teacher_structure`` as GSRM text) plus the split, the knobs, the graph and the decomposition."""
        return {
            "id": self.id,
            "split": self.split,
            "problem": self.problem,
            "answer": str(self.answer),
            "teacher_reasoning": self.trace,
            "teacher_structure": self.decomposition.render(),
            "decomposition": self.decomposition.to_dict(),
            "knobs": dict(self.knobs),
            "goal": self.goal,
            "order": list(self.order),
            "graph": [q.to_dict() for q in self.quantities],
            "key": self.key,
            "seed": self.seed,
            "trace_seed": self.trace_seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Task":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` naming a missing or malformed field."""
        required = ("id", "split", "problem", "answer", "teacher_reasoning", "decomposition", "knobs",
                    "goal", "order", "graph", "key", "seed", "trace_seed")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"task is missing field(s) {missing}")
        try:
            quantities = [Quantity(str(q["name"]), str(q["role"]), int(q["value"]), list(q.get("inputs", [])),
                                   list(q.get("ops", []))) for q in data["graph"]]
            answer = int(data["answer"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"task {data.get('id')!r}: malformed 'graph' or 'answer' ({exc})") from None
        return cls(
            id=str(data["id"]), split=str(data["split"]), seed=int(data["seed"]), problem=str(data["problem"]),
            answer=answer, goal=str(data["goal"]), quantities=quantities, order=list(data["order"]),
            knobs=dict(data["knobs"]), key=str(data["key"]), trace_seed=int(data["trace_seed"]),
            trace=str(data["teacher_reasoning"]), decomposition=Decomposition.from_dict(data["decomposition"]),
        )


# --------------------------------------------------------------------------------------------------
# Generator


def _expression(items: Sequence[Any], ops: Sequence[str]) -> str:
    parts = [str(items[0])]
    for op, item in zip(ops, items[1:]):
        parts += [op, str(item)]
    return " ".join(parts)


def _apply(values: Sequence[int], ops: Sequence[str]) -> list[int]:
    """Running values of ``v0 op0 v1 op1 v2 ...`` evaluated left to right."""
    acc = [values[0]]
    for op, v in zip(ops, values[1:]):
        prev = acc[-1]
        acc.append(prev + v if op == "+" else prev - v if op == "-" else prev * v)
    return acc


def _choose_ops(rng: random.Random, values: list[int], max_result: int) -> tuple[list[int], list[str]] | None:
    """Pick an input order and operators whose running values all stay in ``[0, max_result]``."""
    n = len(values)
    for _ in range(20):
        order = list(range(n))
        rng.shuffle(order)
        # "*" only as the first operator (so left-to-right is also the usual precedence), "+" favoured
        ops = [rng.choice("+-*" if i == 0 and (n == 2 or rng.random() < 0.5) else "++-") for i in range(n - 1)]
        running = _apply([values[i] for i in order], ops)
        if all(0 <= v <= max_result for v in running):
            return order, ops
    return None


@dataclass
class _Node:
    role: str
    value: int
    inputs: list[int] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)


def _sample(rng: random.Random, knob: int | tuple[int, int]) -> int:
    return rng.randint(knob[0], knob[1]) if isinstance(knob, tuple) else knob


def _build_graph(rng: random.Random, knobs: Mapping[str, Any], depth: int, distractors: int) -> list[_Node] | None:
    """Nodes in creation order; the last needed node is the goal. None when the numbers did not fit."""
    nodes: list[_Node] = []
    max_value, max_result = knobs["max_value"], knobs["max_result"]

    def fact() -> int:
        nodes.append(_Node("fact", rng.randint(1, max_value)))
        return len(nodes) - 1

    def define(role: str, inputs: list[int]) -> int | None:
        chosen = _choose_ops(rng, [nodes[i].value for i in inputs], max_result)
        if chosen is None:
            return None
        order, ops = chosen
        ins = [inputs[i] for i in order]
        nodes.append(_Node(role, _apply([nodes[i].value for i in ins], ops)[-1], ins, ops))
        return len(nodes) - 1

    chain: list[int] = []
    for _ in range(depth):
        width = max(2, _sample(rng, knobs["branching"]))
        inputs = [chain[-1]] if chain else []  # each link takes the previous one, the rest are facts
        while len(inputs) < width:
            inputs.append(fact())
        made = define("needed", inputs)
        if made is None:
            return None
        chain.append(made)

    facts = [i for i, n in enumerate(nodes) if n.role == "fact"]
    extra: list[int] = []
    for j in range(distractors):
        pool = facts + (chain[:-1] + extra if j > 0 else [])  # the first distractor is open from the start
        width = max(2, _sample(rng, knobs["branching"]))
        inputs: list[int] = []
        if rng.random() < _P_FRESH_DISTRACTOR_FACT:
            inputs.append(fact())
        while len(inputs) < width:
            candidates = [p for p in pool if p not in inputs]
            inputs.append(rng.choice(candidates) if candidates else fact())
        made = define("distractor", inputs)
        if made is None:
            return None
        if any(n.role == "needed" and sorted(n.inputs) == sorted(nodes[made].inputs) for n in nodes):
            return None  # a distractor must not restate a link of the chain
        extra.append(made)
    return nodes


def _key(nodes: Sequence[_Node]) -> str:
    payload = json.dumps([[n.role, n.value, n.inputs, n.ops] for n in nodes], separators=(",", ":"))
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _render_problem(rng: random.Random, quantities: Sequence[Quantity], goal: str) -> str:
    """The question, then every definition in a random order, each one sentence with the values of the
    facts it uses (``lev = zor + cod, zor is 1, cod is 3.``: a fact two definitions use is stated with
    both), then any fact no definition uses. A computation (:func:`computation`) then restates the run
    of the problem that defines its quantity, verbatim up to its first input that is a result, so the
    look-up of a fact's value follows the definition it found (docs/demo-results.md measures why: the
    fact look-up of a model trained from scratch, 37% in the problem order of before, 77% and more
    this way). The question comes first so that no name starts the text: a byte-level tokenizer gives
    a word at a line start another token than the same word after a space, and a look-up matches
    tokens."""
    by_name = {q.name: q for q in quantities}
    defined = [q for q in quantities if q.inputs]
    rng.shuffle(defined)
    sentences = [", ".join([_DEFINITION.format(q=q.name, sym=q.symbolic()).rstrip(".")]
                           + [_IS.format(q=i, v=by_name[i].value) for i in q.inputs if not by_name[i].inputs]) + "."
                 for q in defined]
    used = {i for q in defined for i in q.inputs}
    sentences += [_FACT.format(q=q.name, v=q.value) for q in quantities if not q.inputs and q.name not in used]
    return " ".join([_QUESTION.format(g=goal)] + sentences)


def computation(task: Task, name: str) -> str:
    """The sentence that computes a defined quantity: its definition, each input's value (the facts'
    first, then the results', each group in the definition's order), its result, e.g. ``hov = lev -
    dag, dag is 2, lev is 4, so hov is 2.`` Each value is written as ``x is v``, the form the problem
    gives facts in, so every later look-up of a value (a fact's or a result's) is the same copy; the
    facts' part repeats the problem's own sentence (:func:`_render_problem`), and a result's value is
    looked up last, just before ``so``."""
    by_name = {q.name: q for q in task.quantities}
    q = by_name[name]
    inputs = sorted(q.inputs, key=lambda i: bool(by_name[i].inputs))  # stable: facts, then results
    values = ", ".join(_IS.format(q=i, v=by_name[i].value) for i in inputs)
    return _COMPUTE.format(q=q.name, sym=q.symbolic(), values=values, v=q.value)


def _resolve_knobs(split: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unknown = set(overrides) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; the knobs are {', '.join(KNOBS)}")
    knobs = dict(SPLITS[split])
    knobs.update({k: v for k, v in overrides.items() if v is not None})
    minimum = {"depth": 1, "branching": 2, "distractors": 0, "max_value": 1, "max_result": 1}
    for name, value in knobs.items():
        if isinstance(value, list):
            value = knobs[name] = tuple(value)
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)
            and value[0] <= value[1])
        low = value[0] if isinstance(value, tuple) else value
        if not ok or low < minimum[name]:
            raise ValueError(f"knob {name}={value!r}: expected an int >= {minimum[name]} or a range (low, high)")
    return knobs


def generate_tasks(
    n: int,
    split: str = "id",
    seed: int = 0,
    *,
    exclude: Iterable[str] = (),
    **knobs: Any,
) -> list[Task]:
    """Generate ``n`` distinct tasks of a split, deterministically from ``seed``.

    Knobs (an int, or an inclusive ``(low, high)`` range sampled per task) override the split's
    defaults in :data:`SPLITS`: ``depth`` (needed definitions on the chain to the goal), ``branching``
    (inputs per definition), ``distractors`` (useless definitions), ``max_value`` (facts are
    ``1..max_value``) and ``max_result`` (every defined value and partial result stays in
    ``0..max_result``). ``exclude`` holds :attr:`Task.key` values not to generate again (e.g. a training
    set's, to draw a disjoint test set of the same split). The default ``id`` and ``ood`` splits are
    disjoint because their depth ranges do not overlap.

    >>> [t.answer for t in generate_tasks(2, seed=1)] == [t.answer for t in generate_tasks(2, seed=1)]
    True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    resolved = _resolve_knobs(split, knobs)
    seen = set(exclude)
    master = random.Random(f"rlkd-testbed:{split}:{seed}")
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ValueError(f"could only generate {len(tasks)} distinct {split} tasks of {n} with knobs "
                             f"{resolved}; widen the ranges (max_value, depth, distractors)")
        task_seed = master.randrange(2**32)
        task = _make_task(f"{split}-{seed}-{len(tasks)}", split, task_seed, resolved)
        if task is None or task.key in seen:
            continue
        seen.add(task.key)
        tasks.append(task)
    return tasks


def _names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct names from :data:`NAMES` (pairs of names when a task needs more)."""
    pool = NAMES if count <= len(NAMES) else NAMES + tuple(a + b for a in NAMES for b in NAMES if a != b)
    return rng.sample(pool, count)


def _make_task(task_id: str, split: str, task_seed: int, knobs: Mapping[str, Any]) -> Task | None:
    rng = random.Random(task_seed)
    depth, distractors = _sample(rng, knobs["depth"]), _sample(rng, knobs["distractors"])
    nodes = _build_graph(rng, knobs, depth, distractors)
    if nodes is None:
        return None
    names = _names(rng, len(nodes))
    quantities = [Quantity(names[i], n.role, n.value, [names[j] for j in n.inputs], list(n.ops))
                  for i, n in enumerate(nodes)]
    order = [q.name for q in quantities if q.role == "needed"]
    goal = order[-1]
    problem = _render_problem(rng, quantities, goal)
    def upper(knob: int | tuple[int, int]) -> int:
        return knob[1] if isinstance(knob, tuple) else knob

    task = Task(
        id=task_id, split=split, seed=task_seed, problem=problem, answer=next(q.value for q in quantities if q.name == goal),
        goal=goal, quantities=quantities, order=order,
        knobs={"depth": depth, "branching": max(len(q.inputs) for q in quantities if q.inputs),
               "distractors": distractors, "max_value": upper(knobs["max_value"]),
               "max_result": upper(knobs["max_result"])},
        key=_key(nodes), trace_seed=task_seed,
    )
    task.trace, task.decomposition = _narrate(task, task_seed)
    return task


# --------------------------------------------------------------------------------------------------
# Oracle teacher


def _narrate(task: Task, seed: int) -> tuple[str, Decomposition]:
    """The oracle's trace and the decomposition of exactly that trace.

    The first step walks the chain back from the goal (``g needs f and b. f needs d and c.``) to the
    link whose inputs are all known; each later step takes the link one up the walk. Every computation
    restates its definition and its input values just before the result (:func:`computation`), so each
    look-up is short and explicit. There is one wording, so ``seed`` does not change the text.
    """
    del seed  # one wording: kept in the signature for teacher_trace(task, seed)
    by_name = {q.name: q for q in task.quantities}
    sentences: list[str] = []
    steps: list[Step] = []
    g = task.goal
    for number, name in enumerate(task.order, start=1):
        q = by_name[name]
        meta: list[str] = []
        if number == 1:
            meta.append(_OPENING.format(g=g))
            meta += [_WALK.format(q=later, ins=_join_names(by_name[later].inputs))
                     for later in reversed(task.order[1:])]
        meta.append(_CHOICE.format(q=name, ins=_join_names(q.inputs)))
        sentences += meta + [computation(task, name)]
        steps.append(Step(" ".join(meta), f"What is {name}?", str(q.value), number))
    trace = "<think>\n" + " ".join(sentences) + "\n</think>\n<answer>\\boxed{" + str(task.answer) + "}</answer>"
    return trace, Decomposition(steps=steps)


def base_text(task: Task) -> str:
    """A text of the testbed's problem language for pretraining a base student: the problem, then a
    line that takes every defined quantity (the chain and the distractors, in an order where each one's
    inputs come first) with the sentence that names its inputs (``x needs a and b.``, looked up in the
    problem) and its :func:`computation`; no goal, no walk back from it, no choice of what to compute, no
    tags. The teacher's trace adds those: the base knows the language, the teacher brings the strategy.
    The inputs sentence makes each computation's copy local (a few tokens back), and a model of hidden
    size 128 learns the look-up into the problem from there (docs/demo-results.md). The line opens with
    a fixed phrase, so no name starts a line (see :func:`_render_problem`)."""
    lines = [_WALK.format(q=q.name, ins=_join_names(q.inputs)) + " " + computation(task, q.name)
             for q in task.quantities if q.inputs]
    return task.problem + "\n" + " ".join([_BASE_OPENING] + lines)


def copying_texts(n: int, seed: int = 0, run: int = 20, before: int = 30, gap: int = 10) -> list[dict[str, str]]:
    """``n`` texts that teach a small model to copy, for the base student's warm-up (issue 17).

    Each is random testbed names (0 to ``before``), a run of ``run`` names, a gap of 0 to ``gap``
    names, then the same run again; ``problem`` holds everything before the repeat and ``text`` the
    repeat, so the loss (``prompt_column: problem``) is on the copy alone. The offsets are random, so no
    fixed-distance attention solves it: the model must find the run by its content (an induction
    head). A model of the base's size forms that in about 2,300-3,500 steps with Adam's beta2 0.98; under
    ``rlkd train sft`` with TRL's default 0.999 it formed once by 3,200 and once not by 6,000. Pretrained
    on the problem language from there it copies a definition's input names out of a problem (48% and
    14% in two builds, against 1% from a random start; docs/demo-results.md).

    >>> row = copying_texts(1, seed=0, run=3)[0]
    >>> len(row["text"].split()), row["text"].strip() in row["problem"]
    (3, True)
    """
    rng = random.Random(f"rlkd-testbed:copying:{seed}")
    rows = []
    for i in range(n):
        names = [rng.choice(NAMES) for _ in range(rng.randint(0, before))]
        chunk = [rng.choice(NAMES) for _ in range(run)]
        middle = [rng.choice(NAMES) for _ in range(rng.randint(0, gap))]
        rows.append({"id": f"copy-{seed}-{i}", "problem": " ".join(names + chunk + middle),
                     "text": " " + " ".join(chunk)})
    return rows


def teacher_trace(task: Task, seed: int | None = None) -> str:
    """The oracle's flat narrative for ``task``: ``<think>...</think>\\n<answer>\\boxed{N}</answer>``.

    ``seed`` picks the wording (default: the task's own trace, ``task.trace``); the order of steps and
    every value are the same under any seed.
    """
    if seed is None or seed == task.trace_seed:
        return task.trace or _narrate(task, task.trace_seed)[0]
    return _narrate(task, seed)[0]


def oracle_decomposition(task: Task, seed: int | None = None) -> Decomposition:
    """The ground-truth steps of ``teacher_trace(task, seed)``, in order."""
    if seed is None or seed == task.trace_seed:
        return task.decomposition if task.decomposition.steps else _narrate(task, task.trace_seed)[1]
    return _narrate(task, seed)[1]
