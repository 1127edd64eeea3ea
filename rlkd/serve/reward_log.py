"""The reward log of ``rlkd serve``: every few batches, one console line and one ``metrics.jsonl`` record
with the reward and its components, in the format of training (:func:`rlkd.train.format_log_line`).
"""
from __future__ import annotations

import collections
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.train import METRICS_FILE, format_log_line, order_metrics
from rlkd.serve.items import ScoredItem

log = logging.getLogger("rlkd.serve")



class RewardLog:
    """Collects scored batches; every ``every`` batches writes one ``metrics.jsonl`` record to
    ``output_dir`` (if given) and logs one line, in the format of ``rlkd train grpo``."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], output_dir: Path | None = None,
                 every: int = 10) -> None:
        self.names = list(names)
        self.weights = list(weights)
        self.output_dir = output_dir
        self.every = max(int(every), 1)
        self.step = 0
        self._reset()

    def _reset(self) -> None:
        self.batches = 0
        self.items: list[ScoredItem] = []
        self.metrics: dict[str, list[float]] = collections.defaultdict(list)
        self.seconds: list[float] = []
        self.unscored_total: dict[str, int] = {}

    def add(self, items: Sequence[ScoredItem], metrics: Mapping[str, Sequence[float]], seconds: float,
            unscored_total: Mapping[str, int]) -> None:
        self.batches += 1
        self.items.extend(items)
        for name, values in metrics.items():
            self.metrics[name].extend(values)
        self.seconds.append(seconds)
        self.unscored_total = dict(unscored_total)
        if self.batches >= self.every:
            self.flush()

    def logs(self) -> dict[str, Any]:
        """The metrics of the batches since the last flush, named as in training."""

        def mean_std(values: Sequence[float]) -> tuple[float, float]:
            return (statistics.fmean(values), statistics.pstdev(values)) if values else (math.nan, math.nan)

        scored = [i.reward for i in self.items if i.reward is not None]
        logs: dict[str, Any] = {}
        if scored:
            logs["reward"], logs["reward_std"] = mean_std(scored)
        for name in self.names:
            values = [i.components[name] for i in self.items if i.components.get(name) is not None]
            if values:
                logs[f"rewards/{name}/mean"], logs[f"rewards/{name}/std"] = mean_std(values)  # type: ignore[arg-type]
        for name, values in self.metrics.items():
            logs[name] = statistics.fmean(values)
        logs["serve/completions"] = len(self.items)
        logs["serve/unscored"] = sum(i.reward is None for i in self.items)
        logs["serve/batches"] = self.batches
        logs["serve/mean_batch_size"] = len(self.items) / max(self.batches, 1)
        logs["serve/mean_batch_seconds"] = statistics.fmean(self.seconds) if self.seconds else 0.0
        for cause, count in sorted(self.unscored_total.items()):
            logs[f"serve/unscored_total/{cause}"] = count
        return logs

    def flush(self) -> None:
        """Write and log the collected batches (nothing when there are none)."""
        if not self.batches:
            return
        self.step += 1
        ordered = order_metrics(self.logs(), self.names)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.step, **ordered}) + "\n")
        line = format_log_line(self.step, None, ordered, self.names, self.weights)
        log.info("%s | %d completions in %d batches, %d unscored", line, ordered["serve/completions"],
                 ordered["serve/batches"], ordered["serve/unscored"])
        self._reset()
