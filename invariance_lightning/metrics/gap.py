"""Invariance on training vs test images: per-metric differences with a conservative sampling bound.

Azulay & Weiss (2019) find networks more invariant on images like their training set; :func:`train_test_gap`
puts a number and a ~95% bound on that difference for results of :func:`~invariance_lightning.metrics.evaluate.
evaluate_sequences` on a training and a test subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

#: Metrics compared between training and test images, with their labels in tables and figures.
GAP_METRICS = {"flip_rate": "flip rate", "worst_case_accuracy": "worst-case accuracy", "accuracy": "accuracy"}

Gap = dict[str, dict[str, dict[str, float | bool]]]


def sampling_bound(p: float, n: int) -> float:
    """Conservative standard error of a mean ``p`` of ``n`` per-image values in [0, 1].

    A value in [0, 1] with mean ``p`` has variance at most ``p (1 - p)``, so ``sqrt(p (1 - p) / n)``
    bounds the standard error whatever the per-image distribution.

    >>> sampling_bound(0.5, 100)
    0.05
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sampling_bound: n must be an int >= 1 (the number of images), got {n!r}")
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def train_test_gap(
    results: Mapping[str, Mapping[str, Mapping[str, Tensor]]], counts: Mapping[str, int]
) -> Gap:
    """``{sequence: {metric: {train, test, difference, bound, significant}}}`` for every :data:`GAP_METRICS` metric.

    ``results`` maps ``"train"`` and ``"test"`` to ``{sequence: metrics}`` measured on ``counts[split]``
    images. ``difference`` is test - train; ``bound`` is twice the two :func:`sampling_bound` combined in
    quadrature (a conservative ~95% interval); ``significant`` says whether the difference exceeds it.
    """
    missing = {"train", "test"} - set(results) or {"train", "test"} - set(counts)
    if missing:
        raise ValueError(
            f"train_test_gap: results and counts need 'train' and 'test' entries, missing {sorted(missing)}"
        )
    gap: Gap = {}
    for sequence in results["test"]:
        gap[sequence] = {}
        for metric in GAP_METRICS:
            train, test = (float(results[split][sequence][metric]) for split in ("train", "test"))
            width = 2 * math.hypot(sampling_bound(train, counts["train"]), sampling_bound(test, counts["test"]))
            gap[sequence][metric] = {
                "train": train, "test": test, "difference": test - train, "bound": width,
                "significant": abs(test - train) > width,
            }
    return gap
