"""How often rlkd's grading agrees with other projects' own test cases (a measurement, not a test).

Reads pytest files of Math-Verify (whose ``parse``/``verify`` lighteval 0.9.0's math metric follows) and
of lighteval (its letter-extraction cases), from wherever you keep a copy (nothing is shipped with rlkd),
takes every parametrised case with a gold, a prediction and an expected verdict, grades the prediction
with :mod:`rlkd.answers`, and prints how many verdicts agree, per test function and in total, then every
case that differs.

- Math cases (``--math-verify-tests``): the prediction is graded as a completion against the gold, once
  per protocol (``lighteval``, the default of ``rlkd eval``, and ``reward``, the training reward's).
  Math-Verify's tests call ``parse``/``verify`` with per-test settings (``boxed_match_priority=0``,
  expression-only or LaTeX-only targets, ``strict=False``, other precisions); rlkd applies the benchmark
  protocol to every case, so the cases written for other settings are where the counts differ.
- Letter cases (``--lighteval-letter-tests``): lighteval's source distribution carries no metric tests,
  so copy ``test_extraction_abc`` of its repository's ``tests/metrics/test_extractive_match.py`` into a
  file of your own (its other math cases repeat Math-Verify's ``test_all.py``). As lighteval's test does, the letter is extracted from
  the gold and from the prediction with the same rules (:func:`rlkd.answers.extract_choice_lighteval`,
  or :func:`rlkd.answers.extract_choice` for ``reward``) and compared.

- With ``--lighteval-wheel DIR`` (lighteval 0.9.0's wheel, unpacked), every case is also graded by
  lighteval 0.9.0's own code, exactly as its ``math_pass@1`` and ``gpqa_pass@1`` metrics call it, and
  rlkd's ``lighteval`` protocol is compared with that verdict case by case. Its package ``__init__``
  files import every metric's dependencies (nltk, aenum, ...), so only the extraction and comparison
  modules are loaded, with the few imports they do not use stubbed out; they run on the installed
  latex2sympy2_extended, not the 1.0.6 that lighteval 0.9.0 pinned.

Get the files with the package registry (the source distribution carries the tests), e.g.::

    pip download --no-deps --no-binary :all: math-verify==0.9.0 -d /tmp/mv && tar xzf /tmp/mv/*.tar.gz -C /tmp/mv
    pip download --no-deps lighteval==0.9.0 -d /tmp/le && unzip -q /tmp/le/*.whl -d /tmp/le/wheel
    python benchmarks/grading_agreement.py --math-verify-tests /tmp/mv/math_verify-0.9.0/tests \\
        --lighteval-letter-tests /tmp/lighteval_tests/test_extractive_match_abc.py --lighteval-wheel /tmp/le/wheel \\
        --random-letter-texts 5000
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Case:
    where: str  # file::function
    gold: str
    pred: str
    expected: bool
    params: dict[str, Any]  # the case's other parameters (language, precision, strict ...)


def _value(node: ast.AST) -> Any:
    """A literal, with ``Language.X`` and other attribute names kept as their dotted text."""
    if isinstance(node, ast.Attribute):
        return ast.unparse(node)
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    return ast.literal_eval(node)


def read_cases(path: Path) -> tuple[list[Case], list[str]]:
    """Every (gold, pred, expected) case of the parametrised tests in ``path``; and what was skipped."""
    cases, skipped = [], []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for deco in fn.decorator_list:
            if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize")):
                continue
            names = [s.strip() for s in ast.literal_eval(deco.args[0]).split(",")]
            verdict = next((v for v in ("expected", "result") if v in names), None)
            if "gold" not in names or "pred" not in names or verdict is None:
                skipped.append(f"{path.name}::{fn.name} (parameters {', '.join(names)})")
                continue
            for element in deco.args[1].elts:  # type: ignore[attr-defined]
                try:
                    row = dict(zip(names, _value(element)))
                except (ValueError, TypeError, SyntaxError):
                    skipped.append(f"{path.name}::{fn.name} (a case that is not a literal)")
                    continue
                extra = {k: v for k, v in row.items() if k not in ("gold", "pred", verdict)}
                cases.append(Case(f"{path.name}::{fn.name}", str(row["gold"]), str(row["pred"]),
                                  bool(row[verdict]), extra))
    return cases, skipped


def _short(text: str, width: int = 90) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 25] + " ... " + text[-20:]


def measure_math(cases: list[Case], protocol: str, timeout_s: float) -> list[tuple[Case, bool | None, str | None, str]]:
    from rlkd.answers import grade_all

    grades = grade_all([(c.pred, c.gold) for c in cases], kind="math", protocol=protocol, timeout_s=timeout_s)
    return [(c, g.correct, g.answer, g.reason) for c, g in zip(cases, grades)]


def measure_letters(cases: list[Case], protocol: str) -> list[tuple[Case, bool | None, str | None, str]]:
    from rlkd.answers import extract_choice, extract_choice_lighteval

    extract = extract_choice_lighteval if protocol == "lighteval" else extract_choice
    out = []
    for c in cases:
        gold, pred = extract(c.gold), extract(c.pred)
        correct = gold is not None and gold == pred
        out.append((c, correct, pred, f"gold letter {gold}, predicted {pred}"))
    return out


class LightevalReference:
    """lighteval 0.9.0's own grading, loaded from an unpacked wheel (see the module docstring)."""

    def __init__(self, wheel: Path):
        import types

        pkg = wheel / "lighteval"
        if not (pkg / "metrics" / "utils" / "extractive_match_utils.py").exists():
            raise SystemExit(f"{wheel}: not an unpacked lighteval wheel (no lighteval/metrics/utils)")
        sys.path.insert(0, str(wheel))
        for name, sub in (("lighteval.metrics", "metrics"), ("lighteval.metrics.utils", "metrics/utils"),
                          ("lighteval.tasks", "tasks")):
            module = types.ModuleType(name)
            module.__path__ = [str(pkg / sub)]  # a package without running its __init__
            sys.modules[name] = module
        tables = types.ModuleType("pytablewriter")  # imported by lighteval.utils.utils for result tables
        tables.MarkdownTableWriter = tables.LatexTableWriter = object
        sys.modules.setdefault("pytablewriter", tables)
        sys.modules.setdefault("pycountry", types.ModuleType("pycountry"))  # used by prompt functions only
        from lighteval.metrics.utils import extractive_match_utils as emu
        from lighteval.metrics.utils.math_comparison import compare_gold_target
        from lighteval.tasks.requests import Doc
        from lighteval.utils.language import Language

        self.emu, self.compare = emu, compare_gold_target
        self.doc = Doc(choices=["", "", "", ""], query="", gold_index=0)
        self.math_res = emu.get_extraction_regexes(None, [emu.ExprExtractionConfig(), emu.LatexExtractionConfig()],
                                                   Language.ENGLISH)
        self.letter_res = emu.get_extraction_regexes(
            self.doc, [emu.IndicesExtractionConfig(prefix_for_extraction="NativeLetters")], Language.ENGLISH)

    def math(self, pred: str, gold: str) -> bool:
        """``math_pass@1`` for one sample: both sides stripped and extracted (no fallback), then the
        scoring function called as PassAtK calls it: (prediction, gold, doc), so the doc lands where the
        precision goes."""
        p = self.emu.extract_target_from_pred(pred.strip(), self.math_res) if pred else []
        g = self.emu.extract_target_from_pred(gold.strip(), self.math_res)
        return bool(self.compare(p, g, self.doc))

    def letter(self, pred: str, gold: str) -> bool:
        """``gpqa_pass@1`` for one sample (multilingual_extractive_match_metric's sample function)."""
        p = self.emu.extract_target_from_pred(pred, self.letter_res, "first_match")
        g = self.emu.extract_target_from_pred(gold, self.letter_res, "first_match") or [gold]
        return any(self.compare(gg, pp, 6) for gg in g for pp in p)


_FRAGMENTS = ("Answer", "answer", "answer:", "Final answer is", "final answer", " is ", " I hope", "A", "B", "C",
              "D", "a", "(B)", "**C**", "**", ".", ",", ":", " ", " ", " ", "\n", "Because", "Dog", "the", "option",
              '"C"', "Therefore", "think", "it's", "$", "\\boxed{D}", "x" * 60)


def random_letter_texts(reference: LightevalReference, count: int, seed: int = 1) -> None:
    """rlkd's letter extraction against lighteval 0.9.0's on random texts glued from answer-like pieces."""
    import random

    from rlkd.answers import extract_choice_lighteval

    rng = random.Random(seed)
    differ = []
    for _ in range(count):
        text = "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 25)))
        theirs = reference.emu.extract_target_from_pred(text, reference.letter_res, "first_match")
        if (theirs[0] if theirs else None) != extract_choice_lighteval(text):
            differ.append((text, theirs))
    print(f"\n## random letter texts: rlkd and lighteval 0.9.0's code extract the same letter in "
          f"{count - len(differ)} of {count}")
    for text, theirs in differ[:20]:
        print(f"  - {text!r}: lighteval 0.9.0 {theirs}, rlkd {extract_choice_lighteval(text)}")


def compare_with_lighteval(title: str, results: list[tuple[Case, bool | None, str | None, str]],
                           verdict: Any) -> None:
    """rlkd's verdict against lighteval 0.9.0's own, case by case."""
    differ = []
    for case, correct, answer, reason in results:
        try:
            theirs = verdict(case.pred, case.gold)
        except Exception as exc:  # lighteval's own timeouts and errors
            theirs = f"error {type(exc).__name__}"
        if theirs != bool(correct):
            differ.append((case, correct, theirs, answer, reason))
    print(f"\n## {title}: rlkd 'lighteval' and lighteval 0.9.0's code agree on {len(results) - len(differ)} of "
          f"{len(results)} cases\n")
    for case, correct, theirs, answer, reason in differ:
        print(f"  - {case.where}: rlkd {correct} ({reason}; read {answer!r}), lighteval 0.9.0 {theirs}\n"
              f"      gold {_short(case.gold)!r}\n      pred {_short(case.pred)!r}")


def report(title: str, results: list[tuple[Case, bool | None, str | None, str]]) -> None:
    agree = Counter()
    total = Counter()
    for case, correct, _, _ in results:
        total[case.where] += 1
        agree[case.where] += bool(correct) == case.expected
    print(f"\n## {title}: {sum(agree.values())} of {sum(total.values())} verdicts agree\n")
    for where in total:
        print(f"  {agree[where]:>4} / {total[where]:<4} {where}")
    differing = [r for r in results if bool(r[1]) != r[0].expected]
    if differing:
        print(f"\n  cases that differ ({len(differing)}):")
    for case, correct, answer, reason in differing:
        params = f" {case.params}" if case.params else ""
        print(f"  - {case.where}{params}: expected {int(case.expected)}, got {correct} ({reason}; read {answer!r})\n"
              f"      gold {_short(case.gold)!r}\n      pred {_short(case.pred)!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--math-verify-tests", type=Path, help="folder holding Math-Verify's tests/*.py")
    parser.add_argument("--lighteval-letter-tests", type=Path, nargs="*", default=[],
                        help="lighteval test files with letter cases (gold, pred, expected)")
    parser.add_argument("--protocol", choices=["lighteval", "reward", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case for math-verify")
    parser.add_argument("--lighteval-wheel", type=Path, help="unpacked lighteval 0.9.0 wheel: also grade every "
                                                             "case with lighteval's own code and compare")
    parser.add_argument("--random-letter-texts", type=int, default=0, metavar="N",
                        help="with --lighteval-wheel: also compare letter extraction on N random texts")
    args = parser.parse_args(argv)
    protocols = ["lighteval", "reward"] if args.protocol == "both" else [args.protocol]
    reference = LightevalReference(args.lighteval_wheel) if args.lighteval_wheel else None
    if args.math_verify_tests:
        cases, skipped = [], []
        for path in sorted(args.math_verify_tests.glob("test_*.py")):
            found, left = read_cases(path)
            cases += found
            skipped += left
        print(f"Math-Verify: {len(cases)} cases from {args.math_verify_tests}; not of the (gold, pred, expected) "
              f"form, skipped: {', '.join(sorted(set(skipped))) or 'none'}")
        for protocol in protocols:
            results = measure_math(cases, protocol, args.timeout)
            report(f"Math-Verify cases, rlkd grading '{protocol}'", results)
            if reference is not None and protocol == "lighteval":
                compare_with_lighteval("Math-Verify cases", results, reference.math)
    for path in args.lighteval_letter_tests:
        cases, skipped = read_cases(path)
        for protocol in protocols:
            results = measure_letters(cases, protocol)
            report(f"lighteval letter cases ({path.name}), rlkd grading '{protocol}'", results)
            if reference is not None and protocol == "lighteval":
                compare_with_lighteval(f"lighteval letter cases ({path.name})", results, reference.letter)
    if reference is not None and args.random_letter_texts:
        random_letter_texts(reference, args.random_letter_texts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
