"""Sampling uncertainty of per-image rates, and invariance on training vs test images with a conservative bound.

Azulay & Weiss (2019) find networks more invariant on images like their training set; :func:`train_test_gap`
puts a number and a ~95% bound on that difference for results of :func:`~invariance_lightning.metrics.evaluate.
evaluate_sequences` on a training and a test subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from invariance_lightning.validation import check_int, check_number

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
    check_int("sampling_bound", "n", n, 1)
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (~95% for ``z=1.96``) of a rate ``p`` measured on ``n`` images.

    Exact in form for a binomial count (one 0/1 outcome per image, e.g. accuracy); for a rate averaged over
    several frames per image (flip rate, consistency) the per-image values vary at most as much as a 0/1
    outcome of the same mean, so the interval is conservative. It reflects the sampling of images only, not
    the training seed.

    >>> [round(v, 4) for v in wilson_interval(0.5, 100)]
    [0.4038, 0.5962]
    """
    check_int("wilson_interval", "n", n, 1)
    check_number("wilson_interval", "p", p, low=0, high=1)
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def train_test_gap(results: Mapping[str, Mapping[str, Mapping[str, Tensor]]], counts: Mapping[str, int]) -> Gap:
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
                "train": train,
                "test": test,
                "difference": test - train,
                "bound": width,
                "significant": abs(test - train) > width,
            }
    return gap
