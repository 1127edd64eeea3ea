"""The experiment's report: markdown and a self-contained HTML page, with PNG plots, and the console summary.

:func:`write_report` takes the results structure :class:`rlkd.experiment.Experiment` writes to
``results.json`` and produces, in one folder, ``report.md`` (PNG files beside it), ``report.html``
(the same content with the PNGs embedded, so the one file can be sent around) and the PNGs:

- ``accuracy.png``: pass@1 per method and split with its 95 % interval, each seed's value as a dot;
- ``pass_at_k.png``: pass@k against k up to k = n per method, with interval bands, one panel per split;
- ``alignment.png``: structure alignment with the oracle (meta prefix share) per method and split;
- ``first_mismatch.png``: during RL, the step at which a student's decomposition first departs from the
  teacher's meta-reasoning, per RL method;
- ``training.png``: reward components during RL (weighted total, each reward's mean, the structure
  reward's meta-reasoning / sub-problem match rates and the share of zero structure rewards), mean over
  seeds per logged step.

What it reads from the results, and how the report is built:

1. ``methods.<m>.<split>``: :func:`rlkd.statistics.summarize_scores` output (pass@1 and pass@k with
   bootstrap intervals over seeds and problems) plus ``format`` and ``meta_prefix_share`` intervals;
   ``methods.<m>.seeds`` keeps each seed's metrics (the dots in the plots, the per-seed column).
2. ``comparisons``: paired differences with intervals and the verdict sentence that
   :func:`rlkd.statistics.verdict` computed from each interval. The findings are assembled from these
   verdicts and from the targets' numbers; no sentence in the report states a result that was not
   computed.
3. ``diagnostics.<m>``: the RL signal per RL method (share of GRPO groups with zero reward spread against
   the 30 % target for RLKD arms, the structure reward's mean and its share of the weighted total, the
   first-mismatch histogram, the change against the starting point); ``gsrm.step_accuracy`` against the
   90 % target; ``gsrm.heldout`` / ``gsrm.students`` as before.
4. Whatever is missing (a method not run, an older ``results.json`` without intervals) is left out or
   shown as ``n/a``; numbers without an interval fall back to the mean ± standard deviation over seeds.

:func:`console_table` and :func:`comparisons_text` are the summary ``rlkd demo`` prints.

How this departs from the paper: the paper reports single runs on AIME24 / MATH-500 / GPQA; here every
number carries a bootstrap interval over seeds and test problems, every comparison is a paired interval,
and the structure alignment is measured exactly against the testbed's ground truth.

The package, bottom-up: ``numbers`` (summaries, intervals, comparisons, the console summary), ``plots``,
``document`` (:class:`Doc`, markdown and HTML), ``findings`` (findings, targets, diagnostics), ``writer``
(:func:`build_document`, :func:`write_report`).
"""

from __future__ import annotations

from rlkd.report.numbers import (
    COMPARISONS,
    LABELS,
    RLKD_METHODS,
    SPLITS,
    SPLIT_TITLES,
    STARTING_POINTS,
    TARGET_GSRM_STEP_ACCURACY,
    TARGET_SFT_PASS_AT_1,
    TARGET_ZERO_SPREAD_SHARE,
    comparisons_text,
    console_table,
    interval,
    kmax,
    stat,
    summarize,
    training_summary,
)
from rlkd.report.plots import (
    plot_first_mismatch,
    plot_pass_at_k,
    plot_training,
)
from rlkd.report.document import (
    Doc,
)
from rlkd.report.findings import (
    findings,
    targets,
)
from rlkd.report.writer import (
    build_document,
    write_report,
)

__all__ = [
    "SPLITS",
    "SPLIT_TITLES",
    "LABELS",
    "STARTING_POINTS",
    "RLKD_METHODS",
    "COMPARISONS",
    "TARGET_SFT_PASS_AT_1",
    "TARGET_GSRM_STEP_ACCURACY",
    "TARGET_ZERO_SPREAD_SHARE",
    "stat",
    "summarize",
    "training_summary",
    "interval",
    "kmax",
    "console_table",
    "comparisons_text",
    "plot_training",
    "plot_pass_at_k",
    "plot_first_mismatch",
    "Doc",
    "findings",
    "targets",
    "build_document",
    "write_report",
]
