"""Where does a base student look when it copies a definition's input? Read its attention.

The SFT students fail mostly at one token: the first input of ``x needs a and b``, which must be copied
from the sentence of the problem that defines ``x`` (docs/demo-results.md). This script reads a model
teacher-forced on :func:`rlkd.testbed.base_text` of held-out problems and, at every position that
predicts that input, finds the token each attention head weighs most, classified as

- ``own period``: the period that ends ``x``'s definition sentence;
- ``other period``: the period that ends another definition sentence;
- ``own definition``: a token of ``x = a op b`` itself;
- ``elsewhere``: anything else (the question, a fact, a computation);

separately for right and wrong greedy guesses, and where each wrong guess comes from. Run:

    .venv/bin/python benchmarks/lookup_attention.py                      # the shipped base, 96 problems
    .venv/bin/python benchmarks/lookup_attention.py --model DIR --problems 200 --layers 2 3

It prints one line per head and a summary; a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Any, Sequence

SHIPPED_BASE = Path(__file__).resolve().parents[1] / "assets" / "testbed-base"
CLASSES = ("own period", "other period", "own definition", "elsewhere")


def definition_spans(pieces: Sequence[str], end: int) -> dict[str, tuple[int, int]]:
    """The definition sentences among the first ``end`` tokens (``x = a op b ... .``): defined name ->
    (position of the name, position of the period that ends its sentence)."""
    spans: dict[str, tuple[int, int]] = {}
    for i in range(end - 4):
        if pieces[i + 1] == "=" and pieces[i + 3] in ("+", "-", "*") and (i == 0 or pieces[i - 1] == "."):
            j = i
            while j < end and pieces[j] != ".":
                j += 1
            spans[pieces[i]] = (i, j)
    return spans


def classify(position: int, own: tuple[int, int], periods: set[int]) -> str:
    """Which of :data:`CLASSES` a problem position is, for the definition sentence ``own``."""
    start, period = own
    if position == period:
        return "own period"
    if position in periods:
        return "other period"
    if start <= position < period:
        return "own definition"
    return "elsewhere"


def read_attention(model_dir: str, problems: int, seed: int, layers: Sequence[int] | None) -> dict[str, Any]:
    """Attention argmax classes per (layer, head, right or wrong) and the sources of wrong guesses."""
    import torch

    from rlkd.models import load_model, load_tokenizer
    from rlkd.testbed import base_text, generate_tasks

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, device="cpu", dtype="float32")
    model.config._attn_implementation = "eager"  # the SDPA kernels return no attention weights
    tasks = generate_tasks(problems, split="id", seed=seed, depth=[2, 3], distractors=[1, 2])
    where: dict[tuple[int, int, bool], collections.Counter] = collections.defaultdict(collections.Counter)
    guesses: collections.Counter = collections.Counter()
    for task in tasks:
        ids = tok.encode(base_text(task), add_special_tokens=False)
        pieces = [p.replace("\u0120", "") for p in tok.convert_ids_to_tokens(ids)]
        start = len(tok.encode(task.problem + "\n", add_special_tokens=False))
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
        predicted = out.logits[0].argmax(-1).tolist()
        attention = torch.stack([a[0] for a in out.attentions])  # layers, heads, query, key
        spans = definition_spans(pieces, start)
        periods = {period for _, period in spans.values()}
        for i in range(start, len(ids) - 4):
            x = pieces[i]
            if pieces[i + 1] != "needs" or pieces[i + 3] != "and" or x not in spans:
                continue
            query = i + 1  # the position whose next token is the first input
            guess = tok.convert_ids_to_tokens([predicted[query]])[0].replace("\u0120", "")
            right = guess == pieces[i + 2]
            guesses["right" if right else (
                "an input of another definition" if any(guess in pieces[s:p] for y, (s, p) in spans.items() if y != x)
                else "elsewhere")] += 1
            for layer in (layers if layers is not None else range(attention.shape[0])):
                for head in range(attention.shape[1]):
                    top = int(attention[layer, head, query, :start].argmax())
                    where[layer, head, right][classify(top, spans[x], periods)] += 1
    return {"where": where, "guesses": guesses}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_BASE), help="the model folder (default: the shipped base)")
    parser.add_argument("--problems", type=int, default=96, help="held-out id problems to read (default 96)")
    parser.add_argument("--seed", type=int, default=777, help="their generator seed (default 777)")
    parser.add_argument("--layers", type=int, nargs="*", default=None,
                        help="the layers to print (0-based; default: all)")
    args = parser.parse_args(argv)
    result = read_attention(args.model, args.problems, args.seed, args.layers)
    guesses = result["guesses"]
    total = sum(guesses.values())
    print(f"first inputs of `x needs a and b`: {total}; right {guesses['right']} ({guesses['right'] / max(total, 1):.1%})")
    for source, count in guesses.items():
        if source != "right":
            print(f"  wrong, {source}: {count}")
    print("largest attention weight, per head (share of that head's queries):")
    for (layer, head, right), counts in sorted(result["where"].items()):
        n = sum(counts.values())
        shares = ", ".join(f"{c} {counts[c] / n:.2f}" for c in CLASSES)
        print(f"  layer {layer} head {head} {'right' if right else 'wrong'} (n={n}): {shares}")


if __name__ == "__main__":
    main()
