"""The RLKD reward as an OpenRLHF ``reward_func`` (the ``--reward.remote_url FILE.py`` variant).

OpenRLHF loads a ``--reward.remote_url`` ending in ``.py`` as a module and calls its
``reward_func(queries, prompts, labels)`` (OpenRLHF 0.11: once per rollout, from a thread pool), where
each query is the prompt followed by the response, decoded with special tokens. Pass this file's path::

    --reward.remote_url $(python -c "import rlkd.integrations.openrlhf as m; print(m.__file__)")

OpenRLHF passes nothing else, so the reward is configured by the environment: ``RLKD_SERVE_URL`` (a
running ``rlkd serve``) or ``RLKD_CONFIG`` (a recipe, scored in process; concurrent calls from
OpenRLHF's threads are batched before the GSRM). The HTTP variant, ``--reward.remote_url
http://127.0.0.1:5000/get_reward`` against ``rlkd serve``, needs no file: see
``configs/openrlhf/rlkd_grpo.sh``.

The label (``--data.label_key``) is the record id of the RLKD dataset or the reference answer. The
return value is ``{"rewards": tensor, "scores": tensor, "extra_logs": {component: tensor}}``.

How this departs from a plain reward function (and from the authors' code):

1. A query that cannot be scored in full (no matching record, a GSRM call that failed) raises
   ``RuntimeError`` with the reason instead of returning 0; OpenRLHF logs it and leaves that rollout
   without a reward.
2. The response is the query after its prompt with trailing end-of-sequence markers removed
   (:func:`rlkd.serve.completion_from_query`), so the format rewards see what the student wrote.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlkd.integrations import scorer_for
from rlkd.serve import RewardRequest, completion_from_query


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None,
                **kwargs: Any) -> dict[str, Any]:
    """The RLKD reward of OpenRLHF queries (prompt + response); see the module text."""
    import torch

    labels = list(labels) if labels is not None else [None] * len(queries)
    requests = [RewardRequest(completion_from_query(query, prompt), label=None if label is None else str(label),
                              prompt=prompt)
                for query, prompt, label in zip(queries, prompts, labels, strict=True)]
    scorer = scorer_for()
    items = scorer.score(requests)
    failed = [item.error for item in items if item.reward is None]
    if failed:
        raise RuntimeError(f"RLKD reward: {len(failed)} of {len(items)} queries could not be scored: "
                           + "; ".join(dict.fromkeys(e or "" for e in failed)))
    rewards = torch.tensor([item.reward for item in items], dtype=torch.float32)
    names = list(scorer.weights)
    extra_logs = {name: torch.tensor([item.components[name] for item in items], dtype=torch.float32)
                  for name in names}
    return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": extra_logs}
