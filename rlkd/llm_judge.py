"""The LLM judge: a chat model decides whether a teacher step and a student step match, field by field.

:class:`LLMJudge` implements :class:`rlkd.judges.Judge` over any :class:`~rlkd.backends.Backend`, so it
plugs into :func:`rlkd.judges.score_structure`, the ``hybrid`` judge (e.g. math-verify for answers and
the LLM for the prose fields), ``rlkd score --judge llm`` and the structure reward.

The questions are the authors': for meta-reasoning and sub-problems "are these two devoted to solving
the same problem?", for answers "are these two equal?", each answered yes or no. The prompts live in
``rlkd/prompts/judge_<field>.txt`` (same file format as the GSRM prompts, placeholders ``{teacher}`` and
``{student}``). Two modes:

- per pair (default): one request per field of each step, all requests of one :meth:`LLMJudge.ajudge`
  call sent together (the backend's concurrency limit applies);
- batched (``batched=True``): every pair of one ``ajudge`` call in one request, as a numbered list, with
  a JSON list reply ``["yes", "no", ...]``, one verdict per pair in order
  (``rlkd/prompts/judge_batched.txt``; about 3 generated tokens per pair, where an object keyed by pair
  number, ``{"1": "yes", ...}``, costs about 9; that form is still read). Far fewer calls, and the judge
  sees each pair in the context of the others; an unreadable entry is a failed verdict for that pair
  only, and a list of the wrong length fails every pair (which entry belongs to which pair is unknown).
  A call with a single pair is sent as a per-pair request (a one-word reply; early exit judges one
  field at a time).

How this departs from the authors' code:

1. Greedy decoding (temperature 0) instead of default sampling, so a verdict is reproducible.
2. A strict verdict parser, :func:`parse_verdict`: the reply must start with a clear "yes" or "no" (or
   be that one word, in any case, with punctuation or markdown), and must not also contain the opposite
   word. Anything else ("yes and no", "I think so", an empty reply, a backend error) is a *failed*
   verdict, counted in :attr:`LLMJudge.failures` and recorded in the reward's ``judge_failures``, never
   read as "no". The authors read "does the reply contain yes", which takes "not yes" for a yes.
3. All verdicts a pair needs are requested concurrently and the gate is applied afterwards (or, with
   ``score_structure(..., lazy=True)``, meta-reasoning is judged in order until the first mismatch).
4. A field that is empty on one side is decided without a call ("no"; "yes" when both are empty): a
   step the parser kept with a missing sub-problem or answer cannot match a written one.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Sequence

from rlkd.backends import GenerationRequest
from rlkd.judges import Judge, JudgeRequest
from rlkd.structure import FIELDS, Verdict
from rlkd.templates import PROMPTS_DIR, PromptTemplate

FIELD_NAMES = {"meta": "meta-reasoning", "subproblem": "sub-problem", "answer": "answer"}
QUESTIONS = {
    "meta": "are these two devoted to solving the same problem?",
    "subproblem": "are these two devoted to solving the same problem?",
    "answer": "are these two equal?",
}
DEFAULT_MAX_TOKENS = 16  # per-pair replies are one word; a little room for "Yes, they are." and the like

_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_LEAD = re.compile(r"^[\s*_`'\"“”‘’>#\-]*")
_PREFIX = re.compile(r"^(?:final\s+)?(?:answer|verdict|reply|response)\s*[:\-–—]\s*", re.IGNORECASE)
_WORD = re.compile(r"(yes|no)(?![A-Za-z0-9_])", re.IGNORECASE)


def parse_verdict(text: Any) -> bool | None:
    """Read a yes/no verdict strictly: True, False, or None when the reply is not a clear verdict.

    Accepted: "yes" or "no" as the first word (after markdown, quotes, a leading ``<think>...</think>``
    block, or an ``Answer:`` / ``Verdict:`` prefix), in any case, followed by anything that does not
    contain the opposite word. A JSON boolean is taken as is.

    >>> [parse_verdict(t) for t in ["yes", "Yes.", "NO", "**yes**", "No, they differ.", "Answer: yes"]]
    [True, True, False, True, False, True]
    >>> [parse_verdict(t) for t in ["yes and no", "", "I think so", "Yes/No", "nope", None]]
    [None, None, None, None, None, None]
    """
    if isinstance(text, bool):
        return text
    if not isinstance(text, str):
        return None
    text = _THINK_BLOCK.sub("", text, count=1)
    if re.search(r"<think>", text, re.IGNORECASE):
        return None  # an unfinished reasoning block: no verdict was given
    text = _LEAD.sub("", text)
    text = _PREFIX.sub("", text)
    text = _LEAD.sub("", text)
    m = _WORD.match(text)
    if not m:
        return None
    word = m.group(1).lower()
    opposite = "no" if word == "yes" else "yes"
    if re.search(rf"(?<![A-Za-z0-9_]){opposite}(?![A-Za-z0-9_])", text[m.end():], re.IGNORECASE):
        return None
    return word == "yes"


def parse_batched_verdicts(text: str, count: int) -> list[tuple[bool | None, str]]:
    """Read a batched reply into ``count`` (verdict, reason) pairs: a JSON list ``["yes", "no", ...]``
    (one entry per pair, in order: the requested form) or an object ``{"1": "yes", "2": "no", ...}``.

    The JSON may sit in a code fence or after a ``<think>`` block. An unreadable entry, or a missing key
    of an object, gives ``None`` for that pair; a list of another length than ``count``, or an
    unreadable reply, gives ``None`` for every pair.

    >>> parse_batched_verdicts('```json\\n["Yes", false, "maybe"]\\n```', 3)
    [(True, 'batched reply'), (False, 'batched reply'), (None, "unreadable entry 3: 'maybe'")]
    >>> parse_batched_verdicts('{"1": "yes", "3": "no"}', 3)[1]
    (None, 'no entry "2" in the batched reply')
    >>> parse_batched_verdicts('["yes"]', 2)[0]
    (None, 'the batched reply lists 1 verdicts for 2 pairs')
    """
    body = _THINK_BLOCK.sub("", text or "", count=1)
    starts = [i for i in (body.find("["), body.find("{")) if i != -1]
    obj: Any = None
    if starts:
        start = min(starts)  # the outermost JSON value: a list, or an object
        end = body.rfind("]" if body[start] == "[" else "}")
        try:
            obj = json.loads(body[start:end + 1]) if end > start else None
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the decoder recurses
            obj = None
    if isinstance(obj, list):
        if len(obj) != count:
            return [(None, f"the batched reply lists {len(obj)} verdicts for {count} pairs")] * count
        entries = {str(i): value for i, value in enumerate(obj, start=1)}
        label = "{}"
    elif isinstance(obj, dict):
        entries, label = obj, '"{}"'
    else:
        return [(None, f"batched reply is neither a JSON list nor an object: {_short(text)!r}")] * count
    out = []
    for i in range(1, count + 1):
        if str(i) not in entries:
            out.append((None, f'no entry "{i}" in the batched reply'))
            continue
        verdict = parse_verdict(entries[str(i)])
        out.append((verdict, "batched reply" if verdict is not None
                    else f"unreadable entry {label.format(i)}: {_short(str(entries[str(i)]))!r}"))
    return out


def _short(text: str, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=None)
def load_judge_prompt(name: str) -> PromptTemplate:
    """A packaged judge prompt: ``meta``, ``subproblem``, ``answer`` or ``batched``."""
    path = PROMPTS_DIR / f"judge_{name}.txt"
    placeholders = ("pairs",) if name == "batched" else ("teacher", "student")
    return PromptTemplate.parse(path.read_text(encoding="utf-8"), f"rlkd/prompts/{path.name}", placeholders)


def render_pairs(requests: Sequence[JudgeRequest]) -> str:
    """The numbered list of pairs a batched request shows the judge."""
    blocks = []
    for i, r in enumerate(requests, start=1):
        blocks.append(f"Pair {i} ({FIELD_NAMES[r.field]}; {QUESTIONS[r.field]})\nA: {r.teacher.strip()}\n"
                      f"B: {r.student.strip()}")
    blocks.append(f"Reply with a JSON list of {len(requests)} verdicts, one per pair.")
    return "\n\n".join(blocks)


class LLMJudge(Judge):
    """Judge step pairs with a chat model behind a backend (temperature 0, strict verdicts).

    Counters: ``calls`` (requests sent), ``verdicts`` (pairs judged, including those decided locally),
    ``failures`` (pairs whose verdict could not be read or whose request failed).

    >>> import asyncio
    >>> from rlkd.backends import ScriptedBackend
    >>> judge = LLMJudge(ScriptedBackend(lambda request: "Yes."))
    >>> [v.same for v in asyncio.run(judge.ajudge([JudgeRequest("answer", "1/2", "0.5")]))]
    [True]
    """

    name = "llm"

    def __init__(self, backend, batched: bool = False, max_tokens: int | None = None):
        for f in (*FIELDS, "batched"):
            load_judge_prompt(f)  # fail now on a broken prompt file
        self.backend = backend
        self.batched = batched
        self.max_tokens = max_tokens
        self.calls = 0
        self.verdicts = 0
        self.failures = 0

    def _request(self, messages: list[dict[str, str]], max_tokens: int):
        return GenerationRequest.chat(messages, max_tokens=max_tokens, temperature=0.0)

    async def ajudge(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """One verdict per request; the requests that need the model go out together."""
        out: list[Verdict | None] = [None] * len(requests)
        pending: list[int] = []
        for i, r in enumerate(requests):
            a, b = r.teacher.strip(), r.student.strip()
            if not a or not b:
                out[i] = Verdict(not a and not b, self.name,
                                 "both fields are empty" if not a and not b else "one field is empty")
            else:
                pending.append(i)
        if pending:
            if self.batched:
                judged = await self._judge_batched([requests[i] for i in pending])
            else:
                judged = await self._judge_each([requests[i] for i in pending])
            for i, verdict in zip(pending, judged):
                out[i] = verdict
        self.verdicts += len(requests)
        self.failures += sum(v.failed for v in out)  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    async def _judge_each(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        max_tokens = self.max_tokens or DEFAULT_MAX_TOKENS
        prompts = [self._request(load_judge_prompt(r.field).fill({"teacher": r.teacher.strip(),
                                                                  "student": r.student.strip()}), max_tokens)
                   for r in requests]
        self.calls += len(prompts)
        completions = await self.backend.generate(prompts)
        verdicts = []
        for completion in completions:
            if completion.error is not None:
                verdicts.append(Verdict(None, self.name, f"judge call failed: {completion.error}"))
                continue
            same = parse_verdict(completion.text)
            reason = f"reply {_short(completion.text, 60)!r}"
            verdicts.append(Verdict(same, self.name, reason if same is not None else "unreadable verdict: " + reason))
        return verdicts

    async def _judge_batched(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        if len(requests) == 1:
            # one pair is a per-pair question: its one-word reply is shorter than a one-entry list, and
            # early exit asks the judge one pair at a time
            [verdict] = await self._judge_each(requests)
            return [Verdict(verdict.same, f"{self.name}-batched", verdict.reason)]
        max_tokens = self.max_tokens or 16 + 8 * len(requests)
        prompt = self._request(load_judge_prompt("batched").fill({"pairs": render_pairs(requests)}), max_tokens)
        self.calls += 1
        [completion] = await self.backend.generate([prompt])
        name = f"{self.name}-batched"
        if completion.error is not None:
            return [Verdict(None, name, f"judge call failed: {completion.error}")] * len(requests)
        return [Verdict(same, name, reason) for same, reason in parse_batched_verdicts(completion.text, len(requests))]
