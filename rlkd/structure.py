"""Reasoning structure: the GSRM's decomposition format and the paper's structure reward.

A decomposition is an ordered list of steps, each a triple (meta-reasoning, sub-problem, answer), written
by a GSRM as numbered blocks (SPEC section 2)::

    [Meta-reasoning 1]: why this sub-problem is the one to attack next
    [Sub-problem 1]: one question
    [Answer 1]: the short answer to that question

This module holds the three pieces every other part of rlkd builds on:

1. :func:`parse_decomposition`, a tolerant parser. It accepts the label families real generators drift
   between (``Meta-reasoning`` / ``Meat-reasoning`` / ``sub-think``, ``Sub-problem`` / ``Query``,
   ``Answer``), any case, markdown bold or headings around labels, ``:`` or ``-`` after the label,
   numbers that skip or repeat, and a trailing "final answer" section. It never raises, keeps the order
   of steps, keeps a step whose sub-problem or answer is missing (with that field empty and a warning),
   and says why a text gave no steps. It reads the text line by line with anchored patterns, so it runs
   in linear time on any input.
2. :meth:`Decomposition.render`, the canonical writer; parsing what it writes gives back the same steps.
3. :func:`structure_reward`, the authors' algorithm (SPEC section 3) as one pure function over two
   decompositions and a verdict look-up. Everything slow (judge calls, batching, retries) lives in
   :mod:`rlkd.judges`, which gathers the verdicts and then calls this function.
4. :class:`IncrementalParser`, the same parser fed piece by piece as a GSRM streams its reply: it says
   which fields are complete, and those equal the full parse's (prefix stability, SPEC section 8). Both
   parsers share the label matcher and the rule that assembles steps, so they cannot drift apart.

How this departs from the authors' code:

1. The parser reads both the label names their decomposition prompt asks for and the ones their reward
   parser looked for, so the mismatch that made their rewards silently zero cannot happen here.
2. A failed parse is reported with its reason instead of becoming a silent zero.
3. ``mode="paper"`` is their exact algorithm; ``normalized`` (divide by the teacher's step count),
   ``ungated`` (no prefix gate) and ``ungated-normalized`` sit beside it as named options.
4. The reward can be computed while the GSRM writes, and the GSRM stopped once it is decided (see
   :func:`rlkd.judges.score_structure_streaming`); the result is the same.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping

Field = Literal["meta", "subproblem", "answer"]
FIELDS: tuple[Field, ...] = ("meta", "subproblem", "answer")
MODES = ("paper", "normalized", "ungated", "ungated-normalized")

# --------------------------------------------------------------------------------------------------
# Types


@dataclass
class Step:
    """One step of a decomposition: why this sub-problem next, the sub-problem, and its answer."""

    meta_reasoning: str = ""
    subproblem: str = ""
    answer: str = ""
    number: int | None = None  # the number as the generator wrote it (may skip or repeat)

    def get(self, name: Field) -> str:
        """The text of one field by its short name (``meta``, ``subproblem``, ``answer``)."""
        return {"meta": self.meta_reasoning, "subproblem": self.subproblem, "answer": self.answer}[name]


@dataclass
class Decomposition:
    """An ordered list of steps, plus what the parser noticed on the way."""

    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    reason: str | None = None  # why there are no steps; None when there are some
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def render(self) -> str:
        """The canonical text form; ``parse_decomposition(d.render())`` gives back ``d.steps``."""
        blocks = []
        for i, step in enumerate(self.steps, start=1):
            n = step.number if step.number is not None else i
            blocks.append(f"[Meta-reasoning {n}]: {step.meta_reasoning}")
            blocks.append(f"[Sub-problem {n}]: {step.subproblem}")
            blocks.append(f"[Answer {n}]: {step.answer}")
        if self.final_answer is not None:
            blocks.append(f"[Final answer]: {self.final_answer}")
        return "\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the form carried in datasets, e.g. the ``teacher_structure`` column)."""
        return {
            "steps": [asdict(s) for s in self.steps],
            "final_answer": self.final_answer,
            "reason": self.reason,
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decomposition":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` naming the field that is wrong."""
        if not isinstance(data, Mapping) or not isinstance(data.get("steps"), list):
            raise ValueError("a decomposition must be an object with a list under 'steps'")
        steps = []
        for i, raw in enumerate(data["steps"], start=1):
            if not isinstance(raw, Mapping):
                raise ValueError(f"steps[{i - 1}] must be an object, got {type(raw).__name__}")
            unknown = set(raw) - {"meta_reasoning", "subproblem", "answer", "number"}
            if unknown:
                raise ValueError(f"steps[{i - 1}] has unknown field(s) {sorted(unknown)}")
            steps.append(
                Step(
                    meta_reasoning=str(raw.get("meta_reasoning", "")),
                    subproblem=str(raw.get("subproblem", "")),
                    answer=str(raw.get("answer", "")),
                    number=raw.get("number"),
                )
            )
        return cls(
            steps=steps,
            final_answer=data.get("final_answer"),
            reason=data.get("reason") if not steps else None,
            warnings=list(data.get("warnings") or []),
        )

    @classmethod
    def from_json(cls, text: str) -> "Decomposition":
        return cls.from_dict(json.loads(text))


def as_decomposition(value: "Decomposition | Mapping[str, Any] | str | None") -> Decomposition:
    """Accept a decomposition in any form rlkd stores one: object, dict, JSON text or GSRM text."""
    if isinstance(value, Decomposition):
        return value
    if value is None:
        return Decomposition(reason="no decomposition given (None)")
    if isinstance(value, Mapping):
        return Decomposition.from_dict(value)
    text = str(value)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            return Decomposition.from_json(stripped)
        except (ValueError, RecursionError):
            pass  # not JSON after all (or nested too deeply to read): read it as GSRM text
    return parse_decomposition(text)


# --------------------------------------------------------------------------------------------------
# Parser

_LABELS: dict[str, str] = {}
for _name, _words in {
    "meta": ("meta-reasoning", "meat-reasoning", "metareasoning", "meta reasoning", "meat reasoning",
             "meta_reasoning", "sub-think", "subthink", "sub think", "sub_think"),
    "subproblem": ("sub-problem", "subproblem", "sub problem", "sub_problem", "query"),
    "answer": ("answer",),
    "final": ("final answer", "final-answer", "final_answer"),
}.items():
    for _w in _words:
        _LABELS[_w] = _name

_LABEL_WORDS = "|".join(sorted((re.escape(w).replace(r"\ ", r"[ \t]") for w in _LABELS), key=len, reverse=True))
# Two anchored patterns per line: a plain label (optional list/heading marker, optional bracket, the
# label, an optional number, the closing bracket and/or a separator), and the same label wrapped in
# markdown bold or italics. A bracket pair or a separator is required, so a sentence that merely starts
# with "Answer" is not a label. No nested quantifiers, and the blanks before the label are matched
# possessively (``*+``: what follows each run must start with a non-blank anyway), so a line that is not
# a label fails without trying the ways of splitting a run of blanks: matching is linear in its length.
_HEAD = r"^[ \t]*+(?:#{1,6}[ \t]*+|[-*+][ \t]++)?"
_BODY = (
    r"(?:(?P<open>[\[(])[ \t]*+)?"
    rf"(?P<label>{_LABEL_WORDS})[ \t]*#?[ \t]*(?P<num>\d{{1,9}})?[ \t]*(?P<close>[\])])?[ \t]*"
)
_SEP = r"(?P<sep>[:\uff1a]|[-\u2013\u2014.](?=[ \t]|$))?[ \t]*"
_PLAIN_LABEL = re.compile(_HEAD + _BODY + _SEP, re.IGNORECASE)
_BOLD_LABEL = re.compile(
    _HEAD + r"(?P<md1>\*\*|__|\*|_)[ \t]*+" + _BODY + r"(?P<md2>\*\*|__|\*|_)?[ \t]*" + _SEP
    + r"(?P<md3>\*\*|__|\*|_)?",
    re.IGNORECASE,
)


@dataclass
class _Label:
    kind: str
    number: int | None
    rest: str


def _match_label(line: str) -> _Label | None:
    m = _BOLD_LABEL.match(line)
    end = 0
    if m:
        md1, md2, md3 = m.group("md1"), m.group("md2"), m.group("md3")
        if md2 == md1:  # **[Label 1]**: text  (a marker after the separator belongs to the text)
            end = m.start("md3") if md3 else m.end()
        elif md2 is None and md3 == md1 and m.group("sep"):  # **Label 1:** text
            end = m.end()
        else:
            m = None
    if m is None:
        m = _PLAIN_LABEL.match(line)
        if not m:
            return None
        end = m.end()
    bracketed = bool(m.group("open") and m.group("close"))
    if m.group("open") and not m.group("close"):
        return None
    if not bracketed and not m.group("sep") and "md1" not in m.re.groupindex:
        return None
    word = re.sub(r"[ \t]+", " ", m.group("label").lower())
    number = int(m.group("num")) if m.group("num") else None
    return _Label(kind=_LABELS[word], number=number, rest=line[end:])


def is_label_line(line: str) -> bool:
    """True if the parser would read this line as the start of a block."""
    return _match_label(line) is not None


def parse_decomposition(text: object) -> Decomposition:
    """Parse GSRM output into steps. Never raises; ``reason`` says why there are no steps.

    >>> d = parse_decomposition("[Meta-reasoning 1]: start with x\\n[Sub-problem 1]: x?\\n[Answer 1]: 2")
    >>> (d.steps[0].subproblem, d.steps[0].answer)
    ('x?', '2')
    """
    if not isinstance(text, str):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        else:
            return Decomposition(reason=f"expected text, got {type(text).__name__}")
    if not text.strip():
        return Decomposition(reason="empty text")

    blocks: list[tuple[_Label, list[str]]] = []
    for line in text.splitlines():
        label = _match_label(line)
        if label is not None:
            blocks.append((label, [label.rest]))
        elif blocks:
            blocks[-1][1].append(line)

    if not blocks:
        return Decomposition(reason=_NO_LABELS)
    steps = _StepAssembler()
    for label, lines in blocks:
        steps.add(label, lines)
    return steps.decomposition()


_NO_LABELS = ("no step labels found (looked for [Meta-reasoning N], [Meat-reasoning N], "
              "[sub-think N], [Sub-problem N], [Query N], [Answer N])")
_ATTRS = {"meta": "meta_reasoning", "subproblem": "subproblem", "answer": "answer"}


class _StepAssembler:
    """Turns labelled blocks, in order, into steps: the one rule both parsers use.

    A field is set once, when its block ends, and never changed afterwards; a step takes no more fields
    once a later step has started. That is what makes :class:`IncrementalParser` prefix-stable.
    """

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.filled: set[str] = set()  # the kinds of field the last step has
        self.final_answer: str | None = None
        self.warnings: list[str] = []

    def add(self, label: _Label, lines: list[str]) -> None:
        body = "\n".join(lines).strip()
        if label.kind == "final":
            self.final_answer = body if self.final_answer is None else self.final_answer + "\n" + body
            return
        if self.final_answer is not None:
            self.warnings.append("text after the final-answer section was read as further steps")
        filled = self.filled
        if self.starts_step(label.kind):
            self.steps.append(Step(number=label.number))
            self.filled = filled = set()
        current = self.steps[-1]
        if current.number is None:
            current.number = label.number
        setattr(current, _ATTRS[label.kind], body)
        filled.add(label.kind)

    def starts_step(self, kind: str) -> bool:
        """Whether a block of this kind would start a new step: at every meta-reasoning label, and whenever a
        field repeats within a step (e.g. two sub-problems in a row: the generator skipped a meta-reasoning)."""
        filled = self.filled
        return not self.steps or kind == "meta" and bool(filled) or kind in filled or (
            kind == "subproblem" and "answer" in filled)

    def decomposition(self) -> Decomposition:
        steps, warnings = self.steps, list(self.warnings)
        for i, step in enumerate(steps, start=1):
            missing = [name for name, value in (("meta-reasoning", step.meta_reasoning),
                                                ("sub-problem", step.subproblem),
                                                ("answer", step.answer)) if not value]
            if missing:
                warnings.append(f"step {i} has no {' and no '.join(missing)}")
        numbers = [s.number for s in steps if s.number is not None]
        if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            warnings.append(f"step numbers are not consecutive: {numbers}")
        if not steps:
            return Decomposition(final_answer=self.final_answer, reason="only a final-answer section, no steps",
                                 warnings=warnings)
        return Decomposition(steps=[dataclasses.replace(s) for s in steps], final_answer=self.final_answer,
                             warnings=warnings)


_LINE_ENDS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def _bracket_closed(line: str) -> bool:
    """Whether ``line`` (a begun line, no line break yet) is a label line however it goes on: it opens with
    a bracket and the plain label pattern has matched through the closing bracket. No markdown marker can
    come first (so the bold pattern never matches), and everything after the bracket is optional in the
    pattern, so every continuation still matches with the bracket pair and reads as a label."""
    if line.lstrip(" \t")[:1] not in ("[", "("):
        return False
    m = _PLAIN_LABEL.match(line)
    return bool(m and m.group("open") and m.group("close"))


class IncrementalParser:
    """Parse GSRM text as it streams in, reporting each field as soon as it is complete (SPEC section 8).

    Feed it pieces of text with :meth:`feed`; :meth:`final` says whether a field of a step can no longer
    change, and :attr:`steps` holds the steps seen so far. A field is complete when the next label line
    has begun (its label and the first character after it have arrived, or, for a line that opens with
    a bracket, the label's closing bracket), or the text ended (:meth:`finish`). Prefix stability: a field reported complete
    in any prefix of a text equals that field in ``parse_decomposition`` of the whole text. It holds by
    construction: both parsers read the same lines with the same label matcher and assemble steps with
    the same rule (a line is read only once its line break has arrived, exactly as
    ``str.splitlines`` would cut it; a begun label line only closes the field before it, and the
    property tests check that the start of a line settles whether it is a label).

    >>> p = IncrementalParser()
    >>> p.feed("[Meta-reasoning 1]: start with x\\n[Sub-problem 1]: x")
    >>> p.final(0, "meta"), p.final(0, "subproblem")
    (True, False)
    >>> p.finish().steps[0].subproblem
    'x'
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far (the generation is starting again)."""
        self._pending = ""  # text after the last complete line
        self._block: tuple[_Label, list[str]] | None = None
        self._steps = _StepAssembler()
        self._fed: list[str] = []
        self.finished = False
        self.blocks_closed = 0  # grows each time a field becomes complete (consumers watch it)
        self.lines_read = 0  # grows with every whole line read (where the open field may have ended)

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._fed)

    @property
    def steps(self) -> list[Step]:
        """The steps seen so far (the last one may still be growing; see :meth:`final`)."""
        return self._steps.steps

    def feed(self, piece: str) -> None:
        """Read more text."""
        if not piece:
            return
        self._fed.append(piece)
        tail = self._pending + piece
        lines = tail.splitlines(keepends=True)
        # The last piece is complete only if it ends with a line break; a lone \r may still become \r\n.
        if lines and (lines[-1][-1] not in _LINE_ENDS or lines[-1].endswith("\r")):
            self._pending = lines.pop()
        else:
            self._pending = ""
        for line in lines:
            self._line(line.rstrip(_LINE_ENDS) if not line.endswith("\r\n") else line[:-2])
        # The open field is complete as soon as the next label line has begun: a line whose start reads as
        # a label and already has text after the label cannot turn out not to be one; nor can a line that
        # opens with a bracket once its label's closing bracket has arrived (``[Sub-problem 1]``).
        if self._block is not None and self._pending:
            label = _match_label(self._pending)
            if label is not None and (label.rest.strip() or _bracket_closed(self._pending)):
                self._close_block()

    def _line(self, line: str) -> None:
        self.lines_read += 1
        label = _match_label(line)
        if label is not None:
            self._close_block()
            self._block = (label, [label.rest])
        elif self._block is not None:
            self._block[1].append(line)

    def _close_block(self) -> None:
        if self._block is not None:
            self._steps.add(*self._block)
            self._block = None
            self.blocks_closed += 1

    def finish(self) -> Decomposition:
        """The text has ended: complete the last field and return what ``parse_decomposition`` gives."""
        if not self.finished:
            self.finished = True
            if self._pending:
                self._line(self._pending.rstrip(_LINE_ENDS))
                self._pending = ""
            self._close_block()
        return self.decomposition()

    def decomposition(self) -> Decomposition:
        """The complete steps and fields so far as a decomposition (after :meth:`finish`: the full parse)."""
        if self.finished:
            return parse_decomposition(self.text)
        return self._steps.decomposition() if self._steps.steps else Decomposition(reason="no complete step yet")

    def tentative(self) -> tuple[int, Field, str] | None:
        """The open field as it stands at the last line break: (step index, field, text) it will have if
        the next line turns out to be a label; None when no field is open. A guess, not a complete field:
        a consumer may judge it ahead (keyed by its text), never use it unless :meth:`final` later
        reports that field complete with the same text."""
        if self._block is None or self._block[0].kind == "final":
            return None
        label, lines = self._block
        index = len(self._steps.steps) - (0 if self._steps.starts_step(label.kind) else 1)
        return index, label.kind, "\n".join(lines).strip()  # type: ignore[return-value]

    def final(self, index: int, name: Field) -> bool:
        """Whether field ``name`` of step ``index`` (0-based) is complete: it cannot change any more."""
        if self.finished:
            return True
        steps = self._steps.steps
        if index < len(steps) - 1:
            return True
        return index == len(steps) - 1 and name in self._steps.filled

    def step_final(self, index: int) -> bool:
        """Whether every field of step ``index`` is complete."""
        return all(self.final(index, name) for name in FIELDS)


# --------------------------------------------------------------------------------------------------
# The structure reward


@dataclass
class Verdict:
    """One judge's answer to "do these two texts match?". ``same`` is None when the judge failed."""

    same: bool | None
    judge: str = ""
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.same is None


@dataclass
class StepVerdict:
    """What the reward saw at one aligned step. A field left None was not judged (gated off)."""

    index: int
    meta: bool | None = None
    subproblem: bool | None = None
    answer: bool | None = None
    score: float = 0.0
    gated: bool = False  # True when the gate zeroed this step before any judging
    judges: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # field -> why the judge failed


@dataclass
class StructureResult:
    """The structure reward for one (teacher, student) pair with everything that produced it."""

    reward: float
    mode: str
    teacher_steps: int
    student_steps: int
    matched_prefix: int
    steps: list[StepVerdict] = field(default_factory=list)
    parse_failure: str | None = None
    judge_failures: int = 0
    verdicts_used: int = 0
    # True when the GSRM was stopped once the reward was decided (SPEC section 8): the reward and the
    # verdicts are the full computation's, but ``student_steps`` counts only the steps read until then
    gsrm_stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StructureResult":
        steps = [StepVerdict(**s) for s in data.get("steps", [])]
        kwargs = {k: data[k] for k in ("reward", "mode", "teacher_steps", "student_steps", "matched_prefix")}
        return cls(steps=steps, parse_failure=data.get("parse_failure"),
                   judge_failures=int(data.get("judge_failures", 0)),
                   verdicts_used=int(data.get("verdicts_used", 0)),
                   gsrm_stopped=bool(data.get("gsrm_stopped", False)), **kwargs)

    def metrics(self) -> dict[str, float]:
        """Components as flat training metrics (match rates over the steps that were judged)."""
        compared = min(self.teacher_steps, self.student_steps)

        def rate(name: str) -> float:
            judged = [getattr(s, name) for s in self.steps if getattr(s, name) is not None]
            return sum(judged) / len(judged) if judged else 0.0

        return {
            "reward": self.reward,
            "meta_match": (sum(bool(s.meta) for s in self.steps) / compared) if compared else 0.0,
            "subproblem_match": rate("subproblem"),
            "answer_match": rate("answer"),
            "prefix_length": float(self.matched_prefix),
            "teacher_steps": float(self.teacher_steps),
            "student_steps": float(self.student_steps),
            "parse_failed": float(self.parse_failure is not None),
            "judge_failures": float(self.judge_failures),
        }


VerdictLookup = Callable[[Field, int], Verdict]


def needed_pairs(teacher: Decomposition, student: Decomposition) -> list[tuple[Field, int]]:
    """Every (field, step index) the reward may ask about, for judges that run all pairs at once."""
    return [(f, i) for i in range(min(len(teacher), len(student))) for f in FIELDS]


def structure_reward(
    teacher: Decomposition,
    student: Decomposition,
    verdict: VerdictLookup,
    mode: str = "paper",
) -> StructureResult:
    """The structure reward of SPEC section 3, exactly; ``verdict(field, i)`` judges step ``i`` (0-based).

    ``mode="paper"``: r_1 = [same meta]; r_i = 0 once an earlier meta-reasoning mismatched, else
    [same meta]; every r_i > 0 is halved for a different sub-problem and halved again for a different
    answer; reward = sum(r). ``normalized`` divides by the teacher's step count; ``ungated`` drops the
    gate. A failed verdict counts as a mismatch and is recorded in ``judge_failures``.

    >>> from rlkd.structure import Step, Decomposition, Verdict
    >>> t = Decomposition([Step("a", "q", "1"), Step("b", "r", "2")])
    >>> s = Decomposition([Step("a", "q", "9"), Step("b", "r", "2")])
    >>> same = lambda f, i: Verdict(t.steps[i].get(f) == s.steps[i].get(f))
    >>> structure_reward(t, s, same).reward
    1.5
    """
    if mode not in MODES:
        raise ValueError(f"unknown structure reward mode {mode!r}; choose one of {', '.join(MODES)}")
    k, n = len(teacher), len(student)
    failed_sides = [side for side, d in (("teacher", teacher), ("student", student)) if not d.steps]
    if failed_sides:
        reasons = "; ".join(f"{side}: {(teacher if side == 'teacher' else student).reason or 'no steps'}"
                            for side in failed_sides)
        return StructureResult(0.0, mode, k, n, 0, parse_failure=reasons)

    gate = not mode.startswith("ungated")
    steps: list[StepVerdict] = []
    failures = calls = 0

    def ask(step: StepVerdict, name: Field) -> bool:
        nonlocal failures, calls
        v = verdict(name, step.index - 1)
        calls += 1
        step.judges[name] = v.judge
        if v.failed:
            failures += 1
            step.failures[name] = v.reason or "judge failed"
        setattr(step, name, bool(v.same))
        return bool(v.same)

    r: list[float] = []
    for i in range(min(k, n)):
        step = StepVerdict(index=i + 1)
        steps.append(step)
        if gate and i > 0 and r[i - 1] == 0:
            step.gated = True
            r.append(0.0)
        else:
            r.append(1.0 if ask(step, "meta") else 0.0)
    for i, step in enumerate(steps):
        if r[i] > 0:
            if not ask(step, "subproblem"):
                r[i] *= 0.5
            if not ask(step, "answer"):
                r[i] *= 0.5
        step.score = r[i]

    matched_prefix = 0
    for value in r:
        if value <= 0:
            break
        matched_prefix += 1
    total = sum(r)
    if mode.endswith("normalized"):
        total /= k
    return StructureResult(total, mode, k, n, matched_prefix, steps, None, failures, calls)
