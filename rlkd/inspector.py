"""Look at the structure reward: teacher and student steps side by side with the judge's verdicts.

``rlkd inspect --pairs SCORED.jsonl`` (options: :mod:`rlkd.cli.inspector`) reads what ``rlkd score --pairs --output`` writes (or the scored
samples a training run logs with the same fields) and shows, per pair, each aligned step of teacher and
student with the meta-reasoning / sub-problem / answer verdicts, where the gate closed, and the reward.
``--html OUT.html`` writes the same view for many pairs as one self-contained page (inline CSS, script
and SVG: nothing is fetched when it is opened), with a reward filter and a histogram of where the
matched prefix ends.

1. A record without verdicts (only ``teacher`` and ``student``) is scored here with ``--judge``, so a
   raw pairs file can be inspected directly.
2. Verdict marks: ``+`` match, ``x`` mismatch, ``!`` judge failure, ``.`` not judged (gated off or
   zeroed earlier).
"""

from __future__ import annotations

import html
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from rlkd.errors import InputError
from rlkd.files import iter_jsonl, json_type
from rlkd.judges import decomposition_field, score_structure
from rlkd.reward_config import StructureConfig, build_judge
from rlkd.structure import Decomposition, FIELDS, StepVerdict, StructureResult

_FIELD_TITLES = {"meta": "meta-reasoning", "subproblem": "sub-problem", "answer": "answer"}
PAGE_MARKER = "<meta name='generator' content='rlkd inspect'>"  # how an existing page is known to be ours
_SHORT = {"meta": "meta", "subproblem": "sub", "answer": "ans"}


@dataclass
class InspectedPair:
    """One record ready to show: its id, both decompositions and the scored result."""

    id: Any
    teacher: Decomposition
    student: Decomposition
    result: StructureResult
    extra: dict[str, Any]


def load_pairs(path: str, judge_name: str = "hybrid") -> list[InspectedPair]:
    """Read scored pairs; records with no verdicts are scored with ``judge_name``."""
    import asyncio


    pairs: list[InspectedPair] = []
    to_score: list[int] = []
    for number, obj in iter_jsonl(path):
        where = f"{path}:{number}"
        for name in ("teacher", "student"):
            if name not in obj:
                raise InputError(f"{where}: missing field '{name}' (inspect needs the teacher and student decompositions)")
        teacher, student = decomposition_field(obj, "teacher", where), decomposition_field(obj, "student", where)
        extra = {k: v for k, v in obj.items() if k not in _RESULT_KEYS and k not in ("teacher", "student", "id")}
        if "reward" in obj and "steps" in obj:
            problem = scored_record_problem(obj)
            if problem:
                raise InputError(f"{where}: not a scored record: {problem}")
            try:
                result = StructureResult.from_dict({**obj, "reward": obj["reward"] if obj["reward"] is not None else 0.0})
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{where}: not a scored record ({exc})") from None
            if obj["reward"] is None:
                result.reward = None  # type: ignore[assignment]  # unjudged: shown as such, never as 0
        else:
            result = StructureResult(0.0, "", len(teacher), len(student), 0)
            to_score.append(len(pairs))
        pairs.append(InspectedPair(obj.get("id", number), teacher, student, result, extra))
    if to_score:
        judge = build_judge(StructureConfig(judge=judge_name))

        async def score_all():
            return await asyncio.gather(*(score_structure(pairs[i].teacher, pairs[i].student, judge) for i in to_score))

        for i, result in zip(to_score, asyncio.run(score_all())):
            pairs[i].result = result
    return pairs


_RESULT_KEYS = set(StructureResult.__dataclass_fields__)
_NUMBER = (int, float)


def scored_record_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with a scored record's fields, naming the field (None when every field has its type).

    Checked before anything is rendered, so a wrong-typed field is an error naming it, not a crash halfway
    through writing a page.

    >>> scored_record_problem({"reward": 1, "mode": "paper", "teacher_steps": 1, "student_steps": 1,
    ...                        "matched_prefix": 1, "steps": [{"index": 1, "failures": "x"}]})
    "field 'steps[0].failures' must be an object, got text"
    """

    def number(value: Any, optional: bool = False) -> bool:
        return (value is None and optional) or (isinstance(value, _NUMBER) and not isinstance(value, bool)
                                                and value == value and abs(value) != float("inf"))

    checks = [("reward", number(obj.get("reward"), optional=True), "a number or null"),
              ("mode", isinstance(obj.get("mode", ""), str), "text"),
              ("steps", isinstance(obj.get("steps"), list), "a list")]
    for name in ("teacher_steps", "student_steps", "matched_prefix", "judge_failures", "verdicts_used"):
        if name in obj or name in ("teacher_steps", "student_steps", "matched_prefix"):
            checks.append((name, isinstance(obj.get(name), int) and not isinstance(obj.get(name), bool), "a whole number"))
    if obj.get("parse_failure") is not None:
        checks.append(("parse_failure", isinstance(obj["parse_failure"], str), "text or null"))
    for name, ok, expected in checks:
        if not ok:
            return f"field '{name}' must be {expected}, got {json_type(obj.get(name)) if name in obj else 'nothing'}"
    allowed = set(StepVerdict.__dataclass_fields__)
    for i, step in enumerate(obj["steps"]):
        where = f"steps[{i}]"
        if not isinstance(step, dict):
            return f"field '{where}' must be an object, got {json_type(step)}"
        unknown = sorted(set(step) - allowed)
        if unknown:
            return f"field '{where}' has unknown key(s) {', '.join(unknown)}"
        step_checks = [("index", isinstance(step.get("index"), int) and not isinstance(step.get("index"), bool),
                        "a whole number")]
        for name in ("meta", "subproblem", "answer"):
            step_checks.append((name, step.get(name) is None or isinstance(step.get(name), bool), "true, false or null"))
        step_checks += [("score", number(step.get("score", 0.0)), "a number"),
                        ("gated", isinstance(step.get("gated", False), bool), "true or false")]
        for name in ("judges", "failures"):
            value = step.get(name, {})
            step_checks.append((name, isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
                                "an object"))
        for name, ok, expected in step_checks:
            if not ok:
                got = json_type(step.get(name)) if name in step else "nothing"
                return f"field '{where}.{name}' must be {expected}, got {got}"
    return None


def reward_text(result: StructureResult) -> str:
    """The reward as shown: its value, or ``unjudged`` when a verdict it needed failed."""
    return "unjudged" if result.reward is None else f"{result.reward:g}"


def select(pairs: Iterable[InspectedPair], ids: Sequence[str] | None = None, min_reward: float | None = None,
           max_reward: float | None = None) -> list[InspectedPair]:
    """Keep pairs whose id is in ``ids`` (compared as text) and whose reward lies in the range."""
    wanted = {str(i) for i in ids} if ids else None
    return [p for p in pairs
            if (wanted is None or str(p.id) in wanted)
            and (min_reward is None or (p.result.reward is not None and p.result.reward >= min_reward))
            and (max_reward is None or (p.result.reward is not None and p.result.reward <= max_reward))]


def _mark(step: StepVerdict | None, name: str) -> str:
    if step is None:
        return "."
    if name in step.failures:
        return "!"
    value = getattr(step, name)
    return "." if value is None else ("+" if value else "x")


def gate_position(result: StructureResult) -> int | None:
    """1-based index of the step at which the gate closed (first meta mismatch), or None if it never did."""
    for step in result.steps:
        if step.meta is False or "meta" in step.failures:
            return step.index
    return None


def render_text(pair: InspectedPair, width: int = 100) -> str:
    """The side-by-side terminal view of one pair."""
    r = pair.result
    col = max(20, (width - 12) // 2)
    lines = [f"== {pair.id}  reward {reward_text(r)} ({r.mode or 'unscored'})  "
             f"steps teacher {r.teacher_steps} / student {r.student_steps}  matched prefix {r.matched_prefix}"]
    gate = gate_position(r)
    if gate is not None:
        lines.append(f"   gate closed at step {gate}: credit stops there")
    if r.parse_failure:
        lines.append(f"   parse failure: {r.parse_failure}")
    if r.judge_failures:
        lines.append(f"   judge failures: {r.judge_failures}")
    lines.append(f"{'':8}{'TEACHER':<{col}}  {'STUDENT':<{col}}")
    verdicts = {s.index: s for s in r.steps}
    for i in range(max(len(pair.teacher), len(pair.student))):
        step = verdicts.get(i + 1)
        score = f"{step.score:g}" if step is not None else "-"
        lines.append(f"-- step {i + 1}  score {score}" + ("  (gated)" if step is not None and step.gated else ""))
        for name in FIELDS:
            t = pair.teacher.steps[i].get(name) if i < len(pair.teacher) else ""
            s = pair.student.steps[i].get(name) if i < len(pair.student) else ""
            left = textwrap.wrap(t, col) or [""]
            right = textwrap.wrap(s, col) or [""]
            tag = f"{_mark(step, name)} {_SHORT[name]}"
            for j in range(max(len(left), len(right))):
                a = left[j] if j < len(left) else ""
                b = right[j] if j < len(right) else ""
                lines.append(f"{tag if j == 0 else '':8}{a:<{col}}  {b}")
            if step is not None and name in step.failures:
                lines.append(f"{'':8}judge failure: {step.failures[name]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} .pair{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em}
.head{font-weight:600} .note{color:#a33}
table{border-collapse:collapse;width:100%;table-layout:fixed} td,th{border-top:1px solid #eee;padding:3px 6px;vertical-align:top}
th{text-align:left;background:#f6f6f6} td.v{width:4.5em;text-align:center;font-family:monospace}
.ok{background:#e6f4e6} .no{background:#fbe4e4} .fail{background:#fff1c2} .skip{color:#999}
tr.gate td{border-top:3px solid #c33} .controls{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
"""

_SCRIPT = """
function applyFilter(){
  var lo=parseFloat(document.getElementById('lo').value), hi=parseFloat(document.getElementById('hi').value);
  var shown=0;
  document.querySelectorAll('.pair').forEach(function(el){
    var r=parseFloat(el.dataset.reward); var ok=(isNaN(lo)||r>=lo)&&(isNaN(hi)||r<=hi);
    el.style.display=ok?'':'none'; if(ok)shown++;});
  document.getElementById('shown').textContent=shown;
}
// a link like page.html#lo=1&hi=2 opens with the filter set
window.addEventListener('DOMContentLoaded',function(){
  var q=new URLSearchParams(location.hash.slice(1));
  if(q.has('lo'))document.getElementById('lo').value=q.get('lo');
  if(q.has('hi'))document.getElementById('hi').value=q.get('hi');
  applyFilter();
});
"""


def _prefix_histogram_svg(pairs: Sequence[InspectedPair]) -> str:
    counts = Counter(p.result.matched_prefix for p in pairs)
    if not counts:
        return ""
    top = max(counts.values())
    xs = list(range(0, max(counts) + 1))
    bar, gap, height = 36, 8, 120
    width = max(len(xs) * (bar + gap) + 40, 380)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" role="img" '
             f'aria-label="where the matched prefix ends">']
    for j, x in enumerate(xs):
        h = int(height * counts.get(x, 0) / top)
        left = 30 + j * (bar + gap)
        parts.append(f'<rect x="{left}" y="{20 + height - h}" width="{bar}" height="{h}" fill="#4a78b5">'
                     f'<title>{counts.get(x, 0)} pairs end after {x} matched steps</title></rect>')
        parts.append(f'<text x="{left + bar / 2}" y="{height + 35}" text-anchor="middle" font-size="12">{x}</text>')
        parts.append(f'<text x="{left + bar / 2}" y="{16 + height - h}" text-anchor="middle" font-size="11">{counts.get(x, 0)}</text>')
    parts.append(f'<text x="{width / 2}" y="{height + 55}" text-anchor="middle" font-size="12">'
                 'matched prefix length (steps before the gate closed)</text></svg>')
    return "".join(parts)


def _cell_class(mark: str) -> str:
    return {"+": "ok", "x": "no", "!": "fail", ".": "skip"}[mark]


def render_html(pairs: Sequence[InspectedPair], title: str = "rlkd structure inspection") -> str:
    """One self-contained page for many pairs (no network needed to view it)."""
    e = html.escape
    rewards = [p.result.reward for p in pairs if p.result.reward is not None]
    out = [f"<!doctype html><html><head><meta charset='utf-8'>{PAGE_MARKER}<title>{e(title)}</title><style>{_CSS}</style>"
           f"<script>{_SCRIPT}</script></head><body><h1>{e(title)}</h1>"]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    out.append(f"<p>{len(pairs)} pairs, mean reward {mean:.3f} over {len(rewards)} judged. Marks: + match, x mismatch, ! judge failure, "
               ". not judged (gated). A red rule marks where the gate closed.</p>")
    out.append(f"<div>{_prefix_histogram_svg(pairs)}</div>")
    out.append("<div class='controls'>reward from <input id='lo' type='number' step='0.25' size='5' oninput='applyFilter()'>"
               " to <input id='hi' type='number' step='0.25' size='5' oninput='applyFilter()'>"
               f" &nbsp; showing <span id='shown'>{len(pairs)}</span> of {len(pairs)}</div>")
    for p in pairs:
        r = p.result
        gate = gate_position(r)
        out.append(f"<div class='pair' data-reward='{'' if r.reward is None else r.reward}' id='pair-{e(str(p.id))}'>")
        out.append(f"<div class='head'>{e(str(p.id))} — reward {reward_text(r)} ({e(r.mode or 'unscored')}), "
                   f"teacher {r.teacher_steps} steps, student {r.student_steps} steps, matched prefix {r.matched_prefix}"
                   + (f", gate closed at step {gate}" if gate else "") + "</div>")
        if r.parse_failure:
            out.append(f"<div class='note'>parse failure: {e(r.parse_failure)}</div>")
        if r.judge_failures:
            out.append(f"<div class='note'>judge failures: {r.judge_failures}</div>")
        out.append("<table><colgroup><col style='width:4.5em'><col style='width:7.5em'><col><col style='width:4.5em'>"
                   "<col></colgroup><tr><th>step</th><th>field</th><th>teacher</th><th>verdict</th><th>student</th></tr>")
        verdicts = {s.index: s for s in r.steps}
        for i in range(max(len(p.teacher), len(p.student))):
            step = verdicts.get(i + 1)
            for k, name in enumerate(FIELDS):
                t = p.teacher.steps[i].get(name) if i < len(p.teacher) else ""
                s = p.student.steps[i].get(name) if i < len(p.student) else ""
                mark = _mark(step, name)
                row_class = " class='gate'" if gate == i + 1 and k == 0 else ""
                first = (f"<td rowspan='3'>{i + 1}<br><small>score {step.score:g}</small></td>" if step is not None
                         else "<td rowspan='3'>" + str(i + 1) + "<br><small>unaligned</small></td>") if k == 0 else ""
                why = e(step.failures.get(name, "")) if step is not None else ""
                out.append(f"<tr{row_class}>{first}<td>{_FIELD_TITLES[name]}</td><td>{e(t)}</td>"
                           f"<td class='v {_cell_class(mark)}' title='{why}'>{mark}</td><td>{e(s)}</td></tr>")
        out.append("</table></div>")
    out.append("</body></html>")
    return "\n".join(out)
