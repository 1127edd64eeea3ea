"""The RLKD reward as a verl custom reward function: :func:`compute_score` (async) and
:func:`compute_score_sync`.

verl loads the file named by ``reward.custom_reward_function.path`` and calls the function named by
``.name`` once per response, as ``compute_score(data_source=..., solution_str=..., ground_truth=...,
extra_info=..., **reward_kwargs)``; an ``async def`` is awaited on verl's reward loop, a plain function
runs in a worker thread. Set ``reward_kwargs`` to ``{rlkd_url: http://127.0.0.1:5000}`` to score
against a running ``rlkd serve``, or ``{rlkd_config: RECIPE.yaml}`` to score in process (the GSRM
backend then runs in each reward worker); without either, the environment variables ``RLKD_SERVE_URL``
or ``RLKD_CONFIG`` are read. See ``configs/verl/rlkd_grpo.yaml``.

The record of the RLKD dataset is found by ``ground_truth`` when it is a record id (what
:func:`verl_rows` writes), else by ``extra_info["problem"]`` (or ``"question"``, verl's usual key), with
``ground_truth`` as the reference answer. The return value is a dict: ``score`` (the weighted total)
and one key per component (``accuracy``, ``structure``, ``format``, ``tag_count``), plus
``structure_prefix`` (the matched prefix length) and ``unscored`` (1.0 when a component is missing);
verl logs the extra keys as ``reward_extra_info``.

``python -m rlkd.integrations.verl --config RECIPE.yaml --output train.parquet`` writes the recipe's
RLKD dataset in verl's format (``prompt`` chat messages with the recipe's system prompt,
``data_source``, ``reward_model.ground_truth`` = the record id, ``extra_info``).

How this departs from training with ``rlkd train grpo``:

1. verl has no "no reward for this sample": a component that could not be computed (a GSRM call that
   failed) is ``nan`` in its key, ``unscored`` is 1.0, and ``score`` is the weighted sum of the other
   components, the sum TRL takes (``nansum``). The failure is counted and logged; in process the
   recipe's ``structure.max_failure_share`` still stops the run.
2. A response that cannot be matched to a record of the dataset (or has no reference answer) raises
   ``ValueError`` naming the cause: a data mistake, not noise to train on.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any, Mapping, Sequence

from rlkd.errors import InputError
from rlkd.integrations import scorer_for
from rlkd.serve import RecordIndex, RewardRequest, ScoredItem, load_serve_job

log = logging.getLogger("rlkd.integrations.verl")

DATA_SOURCE = "rlkd"


def _request(solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None) -> RewardRequest:
    extra = extra_info if isinstance(extra_info, Mapping) else {}
    problem = extra.get("problem", extra.get("question"))
    return RewardRequest(completion=str(solution_str), label=None if ground_truth is None else str(ground_truth),
                         problem=None if problem is None else str(problem))


def verl_result(item: ScoredItem, weights: Mapping[str, float]) -> dict[str, float]:
    """The dict verl expects from a scored item (see the module text)."""
    if not item.components:
        raise ValueError(f"RLKD reward: {item.error}")
    out: dict[str, float] = {"score": sum(weights[name] * value for name, value in item.components.items()
                                          if value is not None and name in weights)}
    for name in weights:
        value = item.components.get(name)
        out[name] = math.nan if value is None else float(value)
    prefix = (item.structure or {}).get("matched_prefix")
    out["structure_prefix"] = math.nan if prefix is None else float(prefix)
    out["unscored"] = 0.0 if item.error is None else 1.0
    if item.error is not None:
        log.warning("RLKD reward incomplete for record %s: %s (score = the other components)", item.record_id,
                    item.error)
    return out


async def compute_score(data_source: str, solution_str: str, ground_truth: Any,
                        extra_info: Mapping[str, Any] | None = None, *, rlkd_config: str | None = None,
                        rlkd_url: str | None = None, **kwargs: Any) -> dict[str, float]:
    """The RLKD reward of one verl response, awaited on verl's reward loop (concurrent calls are batched).

    Other keyword arguments verl passes (``reward_router_address``, ``reward_model_tokenizer``, ...) are
    ignored.
    """
    scorer = scorer_for(rlkd_config, rlkd_url)
    [item] = await scorer.ascore([_request(solution_str, ground_truth, extra_info)])
    return verl_result(item, scorer.weights)


def compute_score_sync(data_source: str, solution_str: str, ground_truth: Any,
                       extra_info: Mapping[str, Any] | None = None, *, rlkd_config: str | None = None,
                       rlkd_url: str | None = None, **kwargs: Any) -> dict[str, float]:
    """:func:`compute_score` for verl's synchronous reward managers (calls from several threads are
    batched in process too)."""
    scorer = scorer_for(rlkd_config, rlkd_url)
    [item] = scorer.score([_request(solution_str, ground_truth, extra_info)])
    return verl_result(item, scorer.weights)


def verl_rows(config: str, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The RLKD dataset of a recipe as verl training rows (the record id as ``ground_truth``)."""
    job = load_serve_job(config, overrides)
    index = RecordIndex.from_job(job)
    ids = {position: record_id for record_id, position in index.by_id.items()}
    return [{"data_source": DATA_SOURCE, "prompt": row["prompt"], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": ids.get(position, str(position))},
             "extra_info": {"id": ids.get(position, str(position)), "problem": row["problem"], "answer": row["answer"]}}
            for position, row in enumerate(index.rows)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlkd.integrations.verl --config RECIPE --output FILE.parquet``."""
    parser = argparse.ArgumentParser(prog="python -m rlkd.integrations.verl",
                                     description="Write a recipe's RLKD dataset as a verl training parquet file.")
    parser.add_argument("--config", required=True, metavar="RECIPE.yaml", help="the recipe rlkd serve reads")
    parser.add_argument("--output", required=True, metavar="FILE.parquet", help="where the verl rows go")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    args = parser.parse_args(argv)
    import pandas as pd


    try:
        rows = verl_rows(args.config, args.set)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pd.DataFrame(rows).to_parquet(args.output)
    print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
