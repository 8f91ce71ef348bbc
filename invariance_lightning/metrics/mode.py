"""``evaluation_mode``: the one eval-mode context manager of the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn


@contextmanager
def evaluation_mode(model: nn.Module, *, no_grad: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode (and, by default, disable autograd) for the duration of the block.

    On exit every submodule gets back its *own* ``training`` flag. ``model.train(was_training)``
    would not do that: it sets all submodules alike, so a BatchNorm that the user had frozen in
    eval mode inside a training model would silently start updating its running statistics again.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
        >>> _ = net[1].eval()  # a frozen BatchNorm
        >>> with evaluation_mode(net):
        ...     net.training, net[1].training
        (False, False)
        >>> net.training, net[1].training
        (True, False)
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad() if no_grad else nullcontext():
            yield
    finally:
        for module, training in flags:
            module.training = training
