"""``FaultTolerantLogger``: keep training when an experiment logger fails.

Lightning calls ``log_metrics``/``save`` on every logger after each logging step and lets their
exceptions propagate, so a tracking service that goes away, a full disk or a log directory that
cannot be created ends a run that could otherwise have finished. Wrapping the logger turns such
failures into one warning per method; the metrics still reach ``trainer.callback_metrics``
(and so ``ModelCheckpoint`` and ``EarlyStopping``) because Lightning keeps them apart from loggers.
"""

from __future__ import annotations

import warnings
from argparse import Namespace
from collections import Counter
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn

from invariance_lightning.lightning.packages import LOGGERS


class FaultTolerantLogger(Logger):
    """Forward everything to ``logger``; exceptions from its logging methods warn once and are dropped.

    Guarded: ``log_metrics``, ``log_hyperparams``, ``log_graph``, ``save``, ``finalize``,
    ``after_save_checkpoint`` and ``experiment`` (None when it cannot be created). The first
    failure of each warns (with the error); later ones are only counted in ``failures``.
    ``name``, ``version``, ``save_dir``, ``root_dir``, ``log_dir`` and ``group_separator`` are the
    wrapped logger's; any other attribute (``log_image``, ``watch``, ...) is looked up on the
    wrapped logger and called unguarded. The wrapped logger is ``.logger``, a logger of ``lightning.pytorch`` or of
    ``pytorch_lightning`` (for that package's ``Trainer``).

    The wrapper also passes as an instance of the wrapped logger's class (``__class__`` is that
    class, as for ``unittest.mock`` specs), because Lightning picks directories by type:
    ``Trainer.log_dir`` is ``log_dir`` for a ``CSVLogger``/``TensorBoardLogger`` but ``save_dir``
    for any other logger. So ``trainer.log_dir``, checkpoints, ``SaveConfigCallback``'s config and
    the monitor's plots land where they would without the wrapper. ``type(logger)`` still is
    ``FaultTolerantLogger``, and so is ``isinstance(logger, FaultTolerantLogger)``.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> logger = FaultTolerantLogger(CSVLogger("logs"))
        >>> logger.name
        'lightning_logs'
    """

    def __init__(self, logger: Logger) -> None:
        super().__init__()
        if not isinstance(logger, LOGGERS):
            raise TypeError(
                "logger must be a lightning.pytorch Logger or a pytorch_lightning one (e.g. CSVLogger), "
                f"got {type(logger).__name__}"
            )
        self.logger = logger
        self.failures: Counter[str] = Counter()

    def _guarded(self, method: str, call: Callable[[], Any]) -> Any:
        """``call()``'s result, or None after counting (and the first time, warning about) its failure."""
        try:
            return call()
        except Exception as error:  # any logger failure must leave training running
            self.failures[method] += 1
            if self.failures[method] == 1:
                warnings.warn(
                    f"FaultTolerantLogger: {type(self.logger).__name__}.{method} failed "
                    f"({type(error).__name__}: {error}); training continues and further {method} failures "
                    "are counted in .failures without a warning",
                    stacklevel=3,
                )
            return None

    # -- guarded logging methods -----------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._guarded("log_metrics", lambda: self.logger.log_metrics(metrics, step))

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self._guarded("log_hyperparams", lambda: self.logger.log_hyperparams(params, *args, **kwargs))

    def log_graph(self, model: nn.Module, input_array: Tensor | None = None) -> None:
        self._guarded("log_graph", lambda: self.logger.log_graph(model, input_array))

    def save(self) -> None:
        self._guarded("save", self.logger.save)

    def finalize(self, status: str) -> None:
        self._guarded("finalize", lambda: self.logger.finalize(status))

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self._guarded("after_save_checkpoint", lambda: self.logger.after_save_checkpoint(checkpoint_callback))

    @property
    def experiment(self) -> Any:
        """The wrapped logger's experiment object, or None (guarded as above) if creating it fails.

        Creating it is where e.g. ``CSVLogger`` makes its log directory; Lightning does so at setup.
        """
        if not hasattr(type(self.logger), "experiment"):
            raise AttributeError(f"{type(self.logger).__name__} has no experiment")
        return self._guarded("experiment", lambda: self.logger.experiment)  # type: ignore[attr-defined]  # checked above

    # -- identity and locations of the wrapped logger --------------------------------------------
    @property
    def name(self) -> str | None:
        return self.logger.name

    @property
    def version(self) -> int | str | None:
        return self.logger.version

    @property
    def save_dir(self) -> str | None:
        return self.logger.save_dir

    @property
    def root_dir(self) -> str | None:
        return self.logger.root_dir

    @property
    def log_dir(self) -> str | None:
        return self.logger.log_dir

    @property
    def group_separator(self) -> str:
        return self.logger.group_separator

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """The wrapped logger's class (see above)."""
        return type(self.logger)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle would rebuild the class __class__ names; rebuild the wrapper instead
        return type(self), (self.logger,), vars(self)

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the wrapper lacks; "logger" itself is absent while unpickling
        if name == "logger" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.logger, name)

    def __repr__(self) -> str:
        return f"FaultTolerantLogger({self.logger!r})"
