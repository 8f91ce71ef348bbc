"""Anneal the Gumbel-softmax temperature of learnable polyphase sampling (``nn.LPS2d``) over training."""

from __future__ import annotations

from typing import Any

from invariance_lightning.lightning.packages import CALLBACK_BASES
from invariance_lightning.nn import LPS2d
from invariance_lightning.validation import check_number, check_optional_int


class GumbelTemperature(*CALLBACK_BASES):  # type: ignore[misc]
    """Set every :class:`~invariance_lightning.nn.LPS2d` of the module to ``start * (end / start) ** (e / (E - 1))``
    at the start of training epoch ``e`` of ``E`` (geometric decay from ``start`` to ``end``; ``E`` is ``epochs``,
    else the Trainer's ``max_epochs``), so that the soft polyphase choice of training hardens towards the arg-max
    that evaluation uses.

    The temperature is a function of the epoch alone, and each ``LPS2d`` keeps it in a buffer saved with the model: a
    run resumed from a checkpoint continues with the same temperatures as an uninterrupted one, so the callback has
    no state of its own. Works under ``lightning.pytorch`` and ``pytorch_lightning`` Trainers alike.

    Args:
        start: temperature of the first epoch (> 0).
        end: temperature of the last epoch (> 0).
        epochs: epochs of the decay (None: the Trainer's ``max_epochs``); later epochs keep ``end``.
    """

    def __init__(self, start: float = 1.0, end: float = 0.1, epochs: int | None = None) -> None:
        super().__init__()
        self.start = check_number("GumbelTemperature", "start", start, low=0, strict=True)
        self.end = check_number("GumbelTemperature", "end", end, low=0, strict=True)
        self.epochs = check_optional_int("GumbelTemperature", "epochs", epochs, 1)

    def temperature(self, epoch: int, epochs: int) -> float:
        """The temperature of 0-based ``epoch`` out of ``epochs``."""
        if epochs <= 1:
            return self.end
        progress = min(epoch, epochs - 1) / (epochs - 1)
        return self.start * (self.end / self.start) ** progress

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epochs = self.epochs or trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(
                "GumbelTemperature: epochs must be given when the Trainer has no max_epochs (max_epochs=-1 or None)"
            )
        layers = [module for module in pl_module.modules() if isinstance(module, LPS2d)]
        if not layers:
            raise ValueError(
                "GumbelTemperature: the module has no LPS2d layer to anneal (build it with downsample='lps')"
            )
        value = self.temperature(trainer.current_epoch, epochs)
        for layer in layers:
            layer.set_temperature(value)
        pl_module.log("train/lps_temperature", value, on_step=False, on_epoch=True)
