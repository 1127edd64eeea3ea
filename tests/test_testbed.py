"""The synthetic testbed: generator, oracle teacher, rule decomposer, alignment and dataset helpers."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd.structure import Decomposition, Step, parse_decomposition
from rlkd.testbed import (
    SPLITS,
    Task,
    alignment,
    base_text,
    corpus,
    generate_tasks,
    gsrm_pairs,
    oracle_decomposition,
    read_tasks,
    reasoning_text,
    rule_decompose,
    teacher_trace,
    token_stats,
    whole_word_check,
    write_dataset,
)


@pytest.fixture(scope="module")
def id_tasks() -> list[Task]:
    return generate_tasks(300, "id", seed=0)


@pytest.fixture(scope="module")
def ood_tasks() -> list[Task]:
    return generate_tasks(100, "ood", seed=0)


# --------------------------------------------------------------------------------------------------
# An independent reading of the problem text: its own regexes, Python's eval, no generator code.


def _to_python(rhs: str) -> str:
    m = re.fullmatch(r"the sum of (.+)", rhs)
    if m:
        return " + ".join(re.split(r", | and ", m.group(1)))
    m = re.fullmatch(r"the product of (\w+) and (\w+)", rhs)
    if m:
        return f"{m.group(1)} * {m.group(2)}"
    m = re.fullmatch(r"(\w+) less than (\w+)", rhs)
    if m:
        return f"{m.group(2)} - {m.group(1)}"
    return rhs.replace(" plus ", " + ").replace(" minus ", " - ").replace(" times ", " * ")


def solve_problem_text(problem: str) -> tuple[str, int]:
    """Read every statement of the problem and evaluate the asked quantity."""
    sentences = re.split(r"(?<=[.?])\s+", problem.strip())
    questions = [s for s in sentences if re.match(r"(Find|What) ", s)]
    assert len(questions) == 1, f"expected one question in {problem!r}"
    goal = re.search(r"(\w+)[?.]$", questions[0]).group(1)
    definitions: dict[str, str] = {}
    # a sentence may hold several statements: a definition and the facts it uses (`x = a + b, a is 1.`)
    statements = [part for s in sentences if s not in questions
                  for part in re.split(r", (?=\w+ (?:is|=) )", s.rstrip("."))]
    for statement in statements:
        body = re.sub(r"^(Let|We know|Define) ", "", statement)
        m = re.fullmatch(r"(\w+) (?:is|be|=|equals|as) (.+)", body)
        assert m, f"cannot read statement {statement!r}"
        expression = _to_python(m.group(2))
        # a fact may be stated with each definition that uses it, always with the same value
        assert definitions.get(m.group(1), expression) == expression, f"{m.group(1)} defined twice"
        definitions[m.group(1)] = expression
    values: dict[str, int] = {}

    def value(name: str, depth: int = 0) -> int:
        assert depth < 100, "cyclic definitions"
        if name not in values:
            expr = re.sub(r"[a-z]+", lambda m: str(value(m.group(0), depth + 1)), definitions[name])
            values[name] = eval(expr, {"__builtins__": {}})  # digits and + - * only
        return values[name]

    return goal, value(goal)


def test_reader_on_a_literal_problem():
    problem = ("Let b be 4. c = b * d. We know d equals 3. e is the sum of c, b and d. f is d less than c. "
               "Define g as e minus f. h equals b times d plus c. What is the value of g?")
    assert solve_problem_text(problem) == ("g", (12 + 4 + 3) - (12 - 3))


# --------------------------------------------------------------------------------------------------
# Generator


def test_every_task_is_solvable_and_its_answer_is_the_texts(id_tasks, ood_tasks):
    for task in id_tasks + ood_tasks:
        goal, answer = solve_problem_text(task.problem)
        assert (goal, answer) == (task.goal, task.answer), task.problem
        assert task.trace.endswith(f"<answer>\\boxed{{{task.answer}}}</answer>")


def test_known_multi_branch_structure(id_tasks, ood_tasks):
    for task in id_tasks + ood_tasks:
        by_name = {q.name: q for q in task.quantities}
        needed = [q.name for q in task.quantities if q.role == "needed"]
        distractors = [q.name for q in task.quantities if q.role == "distractor"]
        assert len(needed) == task.knobs["depth"] and len(distractors) == task.knobs["distractors"]
        assert task.order[-1] == task.goal and sorted(task.order) == sorted(needed)
        # everything the goal needs, found by walking the graph back from it
        ancestors, stack = set(), [task.goal]
        while stack:
            for i in by_name[stack.pop()].inputs:
                if by_name[i].role != "fact" and i not in ancestors:
                    ancestors.add(i)
                    stack.append(i)
        assert ancestors | {task.goal} == set(needed)
        known = {q.name for q in task.quantities if q.role == "fact"}
        for step, name in enumerate(task.order):
            open_now = {q.name for q in task.quantities
                        if q.inputs and q.name not in known and all(i in known for i in q.inputs)}
            assert open_now & set(needed) == {name}  # exactly one needed choice at every step
            assert open_now - {name}, "a distractor is open at every step"
            assert set(task.order[step + 1:]).isdisjoint(open_now)  # later links must wait
            known.add(name)
        for q in task.quantities:
            if q.inputs:
                assert len(q.inputs) >= 2 and len(set(q.inputs)) == len(q.inputs)
                assert 0 <= q.value <= task.knobs["max_result"]
            else:
                assert 1 <= q.value <= task.knobs["max_value"]


def test_in_distribution_problems_are_short(id_tasks):
    words = [len(t.problem.split()) for t in id_tasks]
    trace_words = [len(reasoning_text(t.trace).split()) for t in id_tasks]
    assert 35 <= sum(words) / len(words) <= 80
    assert 50 <= sum(trace_words) / len(trace_words) <= 150


def test_splits_are_disjoint_and_ood_is_harder(id_tasks, ood_tasks):
    more_id = generate_tasks(300, "id", seed=1)
    assert not {t.key for t in id_tasks + more_id} & {t.key for t in ood_tasks}
    assert not {t.problem for t in id_tasks + more_id} & {t.problem for t in ood_tasks}
    assert max(t.knobs["depth"] for t in id_tasks) < min(t.knobs["depth"] for t in ood_tasks)

    def mean(tasks, knob):
        return sum(t.knobs[knob] for t in tasks) / len(tasks)

    assert mean(ood_tasks, "distractors") > mean(id_tasks, "distractors") + 1
    assert len({t.key for t in id_tasks}) == len(id_tasks)  # no repeats within a split either


def test_exclude_keeps_a_second_draw_disjoint(id_tasks):
    narrow = {"depth": 2, "distractors": 1, "max_value": 3}
    first = generate_tasks(30, "id", seed=0, **narrow)
    second = generate_tasks(30, "id", seed=1, exclude=[t.key for t in first], **narrow)
    assert not {t.key for t in first} & {t.key for t in second}
    with pytest.raises(ValueError, match="could only generate"):
        generate_tasks(10, "id", seed=0, depth=1, distractors=0, max_value=1, branching=2)


def test_generation_is_deterministic():
    a = [t.to_dict() for t in generate_tasks(20, "ood", seed=7)]
    b = [t.to_dict() for t in generate_tasks(20, "ood", seed=7)]
    c = [t.to_dict() for t in generate_tasks(20, "ood", seed=8)]
    assert a == b and a != c
    assert a[0]["id"] == "ood-7-0"
    assert teacher_trace(generate_tasks(1, seed=3)[0], seed=5) == teacher_trace(generate_tasks(1, seed=3)[0], seed=5)


def test_one_wording_and_the_walk(id_tasks):
    """One fixed wording per sentence type; each definition is stated with the facts it uses; the first
    step walks the chain back from the goal, every computation restates its definition's sentence of the
    problem, then its results' values."""
    for task in id_tasks[:50]:
        assert task.problem.startswith(f"Find {task.goal}. ")  # no name starts the text
        runs = {}
        for q in task.quantities:
            if q.inputs:
                facts = [f"{i} is {task.quantity(i).value}" for i in q.inputs if not task.quantity(i).inputs]
                runs[q.name] = ", ".join([f"{q.name} = {q.symbolic()}"] + facts)
                assert f" {runs[q.name]}." in task.problem
            else:  # a fact is stated with every definition that uses it
                users = [d for d in task.quantities if q.name in d.inputs]
                assert task.problem.count(f" {q.name} is {q.value}") == len(users) >= 1
        assert task.problem.count(".") == 1 + len(runs)
        steps = task.decomposition.steps
        walk = [f"{name} needs" for name in reversed(task.order[1:])]
        assert steps[0].meta_reasoning.startswith(f"We want {task.goal}. " + (walk[0] if walk else ""))
        for step, name in zip(steps, task.order):
            q = task.quantity(name)
            assert step.meta_reasoning.endswith(f"{name} needs {' and '.join(q.inputs)}, all known, so compute {name}.")
            results = "".join(f", {i} is {task.quantity(i).value}" for i in q.inputs if task.quantity(i).inputs)
            assert f"{runs[name]}{results}, so {name} is {q.value}." in task.trace
        assert teacher_trace(task, task.trace_seed + 7) == task.trace  # one wording: the seed changes nothing
    # each link takes the previous link and facts only, so the walk never branches
    for task in id_tasks:
        for previous, name in zip(task.order, task.order[1:]):
            inputs = task.quantity(name).inputs
            assert previous in inputs
            assert all(task.quantity(i).role == "fact" for i in inputs if i != previous)


@pytest.mark.parametrize("knobs, message", [
    ({"depth": 0}, "knob depth"),
    ({"branching": 1}, "knob branching"),
    ({"distractors": (3, 1)}, "knob distractors"),
    ({"width": 2}, "unknown knob"),
])
def test_bad_knobs_are_named(knobs, message):
    with pytest.raises(ValueError, match=message):
        generate_tasks(1, "id", **knobs)
    with pytest.raises(ValueError, match="unknown split"):
        generate_tasks(1, "test")


def test_knobs_shape_the_graph():
    tasks = generate_tasks(20, "id", seed=0, depth=6, branching=3, distractors=4, max_value=5)
    for task in tasks:
        assert task.knobs == {"depth": 6, "branching": 3, "distractors": 4, "max_value": 5, "max_result": 99}
        assert all(len(q.inputs) == 3 for q in task.quantities if q.inputs)
        assert solve_problem_text(task.problem) == (task.goal, task.answer)
        assert rule_decompose(task.trace) == task.decomposition


# --------------------------------------------------------------------------------------------------
# Oracle teacher and ground truth


def test_ground_truth_is_the_narratives_steps(id_tasks, ood_tasks):
    for task in id_tasks + ood_tasks:
        narrative = reasoning_text(task.trace)
        assert "[" not in narrative and "Step" not in narrative  # flat: no step labels
        steps = task.decomposition.steps
        assert [s.subproblem for s in steps] == [f"What is {name}?" for name in task.order]
        assert [s.answer for s in steps] == [str(task.quantity(n).value) for n in task.order]
        assert [s.number for s in steps] == list(range(1, len(steps) + 1))
        position = 0
        for step, name in zip(steps, task.order):
            assert re.search(rf"\b{name}\b", step.meta_reasoning)  # the meta-reasoning names its choice
            assert not re.search(r"\d", step.meta_reasoning)  # and does not give the answer
            position = narrative.index(step.meta_reasoning, position) + len(step.meta_reasoning)
            match = re.compile(rf"\b{step.answer}\.(\s|$)").search(narrative, position)
            assert match, (step, narrative)  # the value follows its meta-reasoning, in order
            position = match.end()


def test_a_literal_trace():
    task = generate_tasks(1, "id", seed=0)[0]
    assert task.problem == ("Find hub. hub = bim * hov, bim is 7. lev = zor + cod, zor is 1, cod is 3. "
                            "hov = lev - dag, dag is 2. pot = dag * zor, dag is 2, zor is 1.")
    assert reasoning_text(task.trace) == (
        "We want hub. hub needs bim and hov. hov needs lev and dag. lev needs zor and cod, all known, so compute "
        "lev. lev = zor + cod, zor is 1, cod is 3, so lev is 4. hov needs lev and dag, all known, so compute hov. "
        "hov = lev - dag, dag is 2, lev is 4, so hov is 2. hub needs bim and hov, all known, so compute hub. "
        "hub = bim * hov, bim is 7, hov is 2, so hub is 14.")
    assert task.answer == 14
    assert [(s.subproblem, s.answer) for s in task.decomposition.steps] == [
        ("What is lev?", "4"), ("What is hov?", "2"), ("What is hub?", "14")]
    assert base_text(task) == (
        task.problem + "\nEvery quantity: lev needs zor and cod. lev = zor + cod, zor is 1, cod is 3, so lev is 4. "
        "hov needs lev and dag. hov = lev - dag, dag is 2, lev is 4, so hov is 2. hub needs bim and hov. "
        "hub = bim * hov, bim is 7, hov is 2, so hub is 14. pot needs dag and zor. pot = dag * zor, dag is 2, "
        "zor is 1, so pot is 2.")


# --------------------------------------------------------------------------------------------------
# Rule-based decomposer


def test_rule_decompose_reproduces_the_ground_truth(id_tasks, ood_tasks):
    for task in id_tasks + ood_tasks:
        assert rule_decompose(task.trace) == task.decomposition, task.trace
    for task in id_tasks[:50]:
        for seed in (11, 12):
            assert rule_decompose(teacher_trace(task, seed)) == oracle_decomposition(task, seed)


def test_rule_decompose_on_imperfect_student_text():
    # wrong arithmetic, a distractor computed, no <think> tag, a trailing thought
    text = ("We want x. q is known, so compute q. q = 3 + 4 = 8. Then w = 2 * 2 = 4. "
            "3 + 3 = 6. I think x is next</think><answer>\\boxed{6}</answer>")
    d = rule_decompose(text)
    assert [(s.meta_reasoning, s.subproblem, s.answer) for s in d.steps] == [
        ("We want x. q is known, so compute q.", "What is q?", "8"),
        ("", "What is w?", "4"),
        ("", "", "6"),
        ("I think x is next", "", ""),
    ]
    assert d.reason is None
    assert any("no <think> tag" in w for w in d.warnings)
    assert any("no quantity named" in w for w in d.warnings)
    assert any("no computation" in w for w in d.warnings)


@pytest.mark.parametrize("text, reason", [
    ("", "empty reasoning"),
    ("<think></think>", "empty reasoning"),
    ("<think>We want x. Next is y.</think>", "no computation found"),
    (None, "expected text"),
    (42, "expected text"),
])
def test_rule_decompose_says_why_there_are_no_steps(text, reason):
    d = rule_decompose(text)
    assert d.steps == [] and reason in d.reason


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(
    ["<think>", "</think>", "<answer>", " = ", " is ", "x", "What", ". ", "\n", "7", "-3", "?", "..", "\\boxed{"]),
    max_size=30).map("".join), st.binary().map(lambda b: b)))
def test_rule_decompose_never_raises(text):
    d = rule_decompose(text)
    assert isinstance(d, Decomposition)
    assert d.steps or d.reason
    for step in d.steps:
        assert step.answer == "" or re.fullmatch(r"-?\d+", step.answer)


# --------------------------------------------------------------------------------------------------
# Alignment


def _d(*pairs: tuple[str, str]) -> Decomposition:
    return Decomposition([Step("why", f"What is {q}?", a, i) for i, (q, a) in enumerate(pairs, start=1)])


def test_opening_goal_reads_the_goal_the_trace_names(id_tasks, ood_tasks):
    from rlkd.testbed import opening_goal

    assert all(opening_goal(t.trace) == t.goal for t in id_tasks + ood_tasks)  # the oracle always copies it
    assert opening_goal("<think>\nWe want box. box needs cap.\n</think>") == "box"
    assert opening_goal("<think>\nWeWe jet. box = 3.") is None  # no opening sentence at all
    assert all(opening_goal(t.problem) is None for t in id_tasks)  # the problem says "Find x.", not the opening


def test_alignment_literal_cases():
    oracle = _d(("c", "5"), ("d", "7"), ("g", "12"))
    same = alignment(_d(("c", "5"), ("d", "7"), ("g", "12")), oracle)
    assert same["meta_prefix"] == 3 and same["exact"] is True and same["answer_match"] == 1.0

    wrong_value = alignment(_d(("c", "5"), ("d", "8"), ("g", "13")), oracle)
    assert (wrong_value["meta_prefix"], wrong_value["meta_match"], wrong_value["answer_match"]) == (3, 1.0, 1 / 3)
    assert wrong_value["answers_found"] == 1 / 3 and wrong_value["exact"] is False

    detour = alignment(_d(("c", "5"), ("e", "2"), ("d", "7"), ("g", "12")), oracle)
    assert detour == {
        "teacher_steps": 3, "student_steps": 4, "meta_prefix": 1, "meta_prefix_share": 1 / 3,
        "meta_match": 1 / 3, "answer_match": 1 / 3, "answers_found": 1.0, "extra_steps": 1, "exact": False,
        "parse_failure": None,
    }

    swapped_then_right = alignment(_d(("d", "7"), ("d", "7"), ("g", "12")), oracle)
    assert swapped_then_right["meta_prefix"] == 0 and swapped_then_right["meta_match"] == 2 / 3

    empty = alignment(rule_decompose("no reasoning at all"), oracle)
    assert empty["meta_prefix"] == 0 and empty["answer_match"] == 0.0
    assert "student: no computation found" in empty["parse_failure"]

    # any stored form is accepted: GSRM text, dict, JSON
    assert alignment(oracle.render(), oracle.to_dict())["exact"] is True
    assert alignment(oracle.to_json(), oracle)["exact"] is True


def test_alignment_of_rule_decomposed_traces(id_tasks):
    task = id_tasks[0]
    assert alignment(rule_decompose(task.trace), task.decomposition)["exact"] is True
    shorter = task.trace.replace(reasoning_text(task.trace), reasoning_text(task.trace).rsplit(". ", 2)[0] + ".")
    a = alignment(rule_decompose(shorter), task.decomposition)
    assert a["meta_prefix"] == len(task.order) - 1 and a["exact"] is False


def test_structure_reward_of_the_oracle_against_itself_is_full(id_tasks):
    from rlkd.judges import TextJudge, score_structure
    import asyncio

    task = id_tasks[1]
    result = asyncio.run(score_structure(task.decomposition, rule_decompose(task.trace), TextJudge()))
    assert result.reward == len(task.order)


# --------------------------------------------------------------------------------------------------
# Dataset helpers


def test_write_and_read_dataset(tmp_path, id_tasks):
    path = write_dataset(id_tasks[:5], tmp_path / "sub" / "tasks.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5
    row = rows[0]
    assert {"problem", "answer", "teacher_reasoning", "teacher_structure", "split", "knobs", "decomposition",
            "id"} <= set(row)
    assert row["answer"] == str(id_tasks[0].answer) and row["teacher_reasoning"] == id_tasks[0].trace
    assert parse_decomposition(row["teacher_structure"]).steps == id_tasks[0].decomposition.steps
    assert Decomposition.from_dict(row["decomposition"]) == id_tasks[0].decomposition
    back = read_tasks(path)
    assert [t.to_dict() for t in back] == rows
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x"}) + "\n")
    from rlkd.cli import CliError

    with pytest.raises(CliError, match=r"bad.jsonl:1: task is missing field"):
        read_tasks(tmp_path / "bad.jsonl")


def test_gsrm_pairs(id_tasks):
    pairs = gsrm_pairs(id_tasks[:3], traces_per_task=2)
    assert [p["id"] for p in pairs[:2]] == [f"{id_tasks[0].id}#0", f"{id_tasks[0].id}#1"]
    first = pairs[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert id_tasks[0].problem in first[0]["content"]
    assert reasoning_text(id_tasks[0].trace) in first[0]["content"] and "<think>" not in first[0]["content"]
    assert first[1]["content"] == id_tasks[0].decomposition.render()
    assert first[1]["content"].startswith("[Meta-reasoning 1]: ")
    second = pairs[1]["messages"]
    assert parse_decomposition(second[1]["content"]).steps == rule_decompose(
        teacher_trace(id_tasks[0], id_tasks[0].trace_seed + 1)).steps


def test_trace_prefixes_cut_after_each_computation_and_decompose_exactly(id_tasks, ood_tasks):
    from rlkd.testbed import trace_prefixes

    for task in id_tasks + ood_tasks:
        cuts = trace_prefixes(task)
        assert [len(d.steps) for _, d in cuts] == list(range(1, len(task.order)))
        for trace, cut in cuts:
            assert cut == rule_decompose(trace)  # the decomposition is exactly that text's
            assert reasoning_text(task.trace).startswith(reasoning_text(trace))
            assert trace.endswith("\n</think>") and "<answer>" not in trace
            assert cut.steps == task.decomposition.steps[: len(cut.steps)]


def test_tokenizer_from_corpus_round_trips_a_trace(id_tasks, ood_tasks):
    from rlkd.models import build_tokenizer

    texts = corpus(id_tasks[:100])
    assert id_tasks[0].problem in texts and id_tasks[0].trace in texts
    tok = build_tokenizer(texts, vocab_size=512)
    for task in (id_tasks[0], ood_tasks[0]):
        ids = tok.encode(task.trace, add_special_tokens=False)
        assert tok.decode(ids) == task.trace
        assert tok.convert_ids_to_tokens(ids)[0] == "<think>"
    stats = token_stats(id_tasks[:100], tok)
    assert 0 < stats["problem_tokens_mean"] <= stats["problem_tokens_max"]
    assert stats["trace_tokens_mean"] > stats["problem_tokens_mean"]


def test_split_defaults_are_documented():
    assert set(SPLITS) == {"id", "ood"}
    assert SPLITS["id"]["depth"][1] < SPLITS["ood"]["depth"][0]


def test_tokenizer_keeps_names_and_numbers_whole(id_tasks):
    from rlkd.models import build_tokenizer

    tok = build_tokenizer(corpus(id_tasks[:200]), vocab_size=1024)
    assert whole_word_check(tok) == []
    pieces = tok.convert_ids_to_tokens(tok.encode(id_tasks[0].trace, add_special_tokens=False))
    assert "Ġ14" in pieces and "14" in pieces  # "= 14." and "\\boxed{14}"
    small = build_tokenizer(corpus(id_tasks[:20]), vocab_size=320)  # too small a vocabulary splits some
    assert whole_word_check(small)


def test_every_mention_of_a_name_is_one_and_the_same_token(id_tasks):
    """A byte-level tokenizer gives a word at a line start another token than the same word after a
    space, and a look-up matches tokens: so no text the models read or write starts a line with a name,
    and every mention of a quantity in the problem, the base text, the trace and the chat prompt is the
    same token."""
    from rlkd.models import build_tokenizer

    tok = build_tokenizer(corpus(id_tasks[:200]), vocab_size=1024)
    for task in id_tasks[:50]:
        names = {q.name for q in task.quantities}
        prompt = tok.apply_chat_template([{"role": "user", "content": task.problem}], tokenize=False,
                                         add_generation_prompt=True)
        for text in (task.problem, base_text(task), task.trace, prompt + task.trace):
            pieces = tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
            mentioned = [p for p in pieces if p.lstrip("Ġ") in names]
            assert mentioned and all(p.startswith("Ġ") for p in mentioned), (text, mentioned)
