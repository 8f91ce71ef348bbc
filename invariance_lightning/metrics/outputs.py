"""What a classifier's outputs and targets mean: ``(N, C)`` logits from logits, binary logits or probabilities,
class indices from integer or whole-number float targets, and ``OutputKey`` for models that return more."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import Tensor

from invariance_lightning.validation import check_choice, check_scores

__all__ = [
    "OUTPUTS",
    "OutputKey",
    "check_outputs",
    "class_logits",
    "class_targets",
    "class_targets_error",
    "with_output_key",
]
#: What a model's outputs are: ``"logits"`` (unbounded scores, as cross-entropy or BCE-with-logits trains them) or
#: ``"probabilities"`` (in [0, 1]: the model ends in a softmax or sigmoid).
OUTPUTS = ("logits", "probabilities")


def check_outputs(owner: str, outputs: object) -> str:
    """``outputs`` if it is one of :data:`OUTPUTS`; TypeError/ValueError naming the argument otherwise."""
    return cast(str, check_choice(owner, "outputs", outputs, OUTPUTS))


class OutputKey:
    """A ``forward_fn`` that returns ``model(x)[key]``: a dict's (e.g. ``"logits"``) or a tuple's (e.g. ``0``) entry.

    Picklable, and buildable from YAML, unlike a lambda.

    >>> OutputKey("logits")(lambda x: {"logits": x + 1, "features": x}, 1)
    2
    """

    def __init__(self, key: str | int) -> None:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"OutputKey: key must be a str (dict output) or an int (tuple output), got {key!r}")
        self.key = key

    def __call__(self, model: Callable[[Tensor], Any], x: Tensor) -> Any:
        output = model(x)
        try:
            return output[self.key]
        except (KeyError, IndexError, TypeError):
            if isinstance(output, Mapping):
                has = f"keys {list(output)}"
            elif isinstance(output, (tuple, list)):
                has = f"{len(output)} entries"
            else:
                has = f"a {type(output).__name__}"
            raise ValueError(f"OutputKey: the model's output has no entry {self.key!r} (it is {has})") from None

    def __repr__(self) -> str:
        return f"OutputKey({self.key!r})"


def with_output_key(owner: str, forward_fn: Callable | None, output_key: str | int | None) -> Callable | None:
    """``forward_fn``, or :class:`OutputKey` ``(output_key)`` when that is given instead; ``owner``'s errors for
    both, or for a key that is neither a str nor an int."""
    if output_key is None:
        return forward_fn
    if isinstance(output_key, bool) or not isinstance(output_key, (str, int)):
        raise TypeError(f"{owner}: output_key must be a str (dict output) or an int (tuple output), got {output_key!r}")
    if forward_fn is not None:
        raise ValueError(f"{owner}: pass forward_fn or output_key, not both (got output_key={output_key!r})")
    return OutputKey(output_key)


_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)  # log(0) of a probability, kept finite

_READ_AS = (
    "an (N,) or (N, 1) output is read as one binary logit z (classes 0 and 1: logits [0, z]); pass "
    "outputs='probabilities' for a model that ends in a sigmoid or softmax, or forward_fn (e.g. "
    "forward_fn=OutputKey('logits'); in the callbacks output_key='logits') to pick the (N, C) logits out of other "
    "outputs"
)


def class_logits(output: Any, num_inputs: int, outputs: str = "logits", owner: str = "class_logits") -> Tensor:
    """A model's ``output`` for ``num_inputs`` inputs as ``(N, C)`` logits, C >= 2 for a binary model (``owner``
    names the caller in errors).

    * ``(N, C)`` logits pass unchanged.
    * ``(N,)`` or ``(N, 1)``: one binary logit ``z`` (as ``BCEWithLogitsLoss`` trains) becomes ``[0, z]``, whose
      softmax is ``[1 - sigmoid(z), sigmoid(z)]``: the top-1 class is ``z > 0`` and its probability
      ``max(sigmoid(z), 1 - sigmoid(z))``.
    * ``outputs="probabilities"``: ``(N, C)`` probabilities ``p`` become ``log p``, binary ones ``[log(1 - p),
      log p]`` (softmax gives ``p`` back, divided by its row sum; 0 becomes the log of the smallest positive
      float32, not ``-inf``). Values outside [0, 1] raise ``ValueError``; NaN passes, for the callers' checks of
      non-finite outputs.

    With ``outputs="logits"``, multi-class outputs that look like probabilities (every row in [0, 1], summing to 1)
    warn once: measured as logits they give wrong numbers (a softmax of probabilities misstates the top-1
    probability). A binary sigmoid output cannot be told from a logit in [0, 1] (a model early in training has
    such logits); read as a logit it predicts class 1 for every image, which the callbacks' constant-predictor
    warning reports.

    >>> class_logits(torch.tensor([0.0, 2.0]), 2)
    tensor([[0., 0.],
            [0., 2.]])
    >>> class_logits(torch.tensor([[0.25], [1.0]]), 2, "probabilities").softmax(dim=-1).round(decimals=4)
    tensor([[0.7500, 0.2500],
            [0.0000, 1.0000]])
    """
    check_outputs(owner, outputs)
    try:
        check_scores(owner, "the model's outputs", output, num_inputs)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{error}; {_READ_AS}") from None
    binary = output.ndim == 1 or output.shape[1] == 1
    scores = output.reshape(num_inputs, 1) if binary else output
    if outputs == "logits":
        if not binary and _look_like_probabilities(scores):
            warnings.warn(
                f"{owner}: the model's outputs look like probabilities (every row lies in [0, 1] and sums to 1), but "
                "outputs='logits' reads them as logits, which gives wrong numbers; pass outputs='probabilities' if "
                "the model ends in a softmax",
                UserWarning,
                stacklevel=2,
            )
        return torch.cat([torch.zeros_like(scores), scores], dim=1) if binary else scores
    probabilities = scores.float()
    outside = (probabilities < 0) | (probabilities > 1)  # NaN compares False: left to the non-finite checks
    if bool(outside.any()):
        low, high = float(probabilities[outside].min()), float(probabilities[outside].max())
        raise ValueError(
            f"{owner}: the model's outputs must be probabilities in [0, 1] (outputs='probabilities'), got values in "
            f"[{low:.4g}, {high:.4g}]; "
            "pass outputs='logits' (the default) for a model that returns unbounded scores"
        )
    if binary:
        log_p = torch.cat([torch.log1p(-probabilities), torch.log(probabilities)], dim=1)
    else:
        log_p = torch.log(probabilities)
    return log_p.clamp_min(_LOG_TINY)


def _look_like_probabilities(scores: Tensor) -> bool:
    values = scores.detach().float()
    in_range = bool(((values >= 0) & (values <= 1)).all())  # NaN fails too
    return in_range and bool(((values.sum(dim=1) - 1).abs() <= 1e-4).all())


def class_targets(targets: Any) -> Any:
    """``targets`` as class indices: integer tensors pass unchanged; floats holding whole numbers (the ``0.``/``1.``
    that ``BCEWithLogitsLoss`` needs) become int64, and ``(N, 1)`` becomes ``(N,)``. ValueError for other floats;
    anything else (None, a non-tensor) passes for the caller's own checks.

    >>> class_targets(torch.tensor([[0.0], [1.0]]))
    tensor([0, 1])
    """
    if not isinstance(targets, Tensor):
        return targets
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets.flatten()
    if targets.is_floating_point():
        fractional = targets != targets.round()  # NaN too
        if bool(fractional.any()):
            raise ValueError(
                f"targets must be class indices: integers, or floats holding whole numbers (e.g. the 0./1. of "
                f"BCEWithLogitsLoss), got {targets.dtype} values such as {float(targets[fractional][0]):.4g}"
            )
        targets = targets.long()
    return targets


def class_targets_error(targets: Any, num_classes: int) -> str | None:
    """Why ``targets`` cannot be class indices of a model with ``num_classes`` classes (as :func:`class_logits`
    counts them), saying what to do; None if they can."""
    if not isinstance(targets, Tensor) or not targets.numel():
        return None
    try:
        targets = class_targets(targets)
    except ValueError as error:
        return str(error)
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        return (
            f"targets range over [{low}, {high}] but the model's outputs give {num_classes} classes (targets must be "
            f"class indices in [0, {num_classes})); {_READ_AS}"
        )
    return None
