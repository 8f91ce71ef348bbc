"""Send figures and tables to a Trainer's loggers: W&B media, TensorBoard figures, PNG files otherwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from invariance_lightning.lightning.loggers import FaultTolerantLogger
from invariance_lightning.lightning.packages import TENSORBOARD_LOGGERS, WANDB_LOGGERS
from invariance_lightning.reporting.figures import write_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A table as ``(columns, rows)``.
Table = tuple[Sequence[str], Sequence[Sequence[Any]]]


class FigureSink:
    """Deliver figures/tables to every logger of a Trainer; each kind of failure warns once, never raises.

    W&B gets ``wandb.Image`` panels, ``wandb.Table`` s and native line plots; TensorBoard gets
    ``add_figure``; without a W&B logger, PNG files are written under ``<log_dir>/invariance_plots``
    (``<default_root_dir>/invariance_plots`` with ``logger=False``; none under ``fast_dev_run``).
    Loggers of ``lightning.pytorch`` and of ``pytorch_lightning`` are recognised alike.
    Call :meth:`log` on global rank zero only. Warnings start with ``owner`` (the callback's name)
    and are emitted on global rank zero only.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._warned: set[str] = set()

    def warn_once(self, kind: str, message: str) -> None:
        """Warn (on global rank zero) about a failure of ``kind`` the first time it happens."""
        if kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(f"{self.owner}: {message} (training continues; further such failures are silent)")

    def _attempt(self, kind: str, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except Exception as error:  # a plotting or logging failure must never stop training
            self.warn_once(kind, f"could not log {kind}: {type(error).__name__}: {error}")

    def log(
        self,
        trainer: pl.Trainer,
        figures: Mapping[str, Figure],
        tables: Mapping[str, Table],
        line_plots: Mapping[str, tuple[str, Table]],
        epoch: int,
    ) -> None:
        """Log ``figures``/``tables``; ``line_plots`` maps a key to ``(title, table with x, y, series)``."""
        # a FaultTolerantLogger's wrapped logger itself, so that a failure warns with its own error, not the
        # wrapper's None experiment
        loggers = [logger.logger if isinstance(logger, FaultTolerantLogger) else logger for logger in trainer.loggers]
        for logger in loggers:
            if isinstance(logger, WANDB_LOGGERS):
                self._attempt("W&B media", self._to_wandb, logger, trainer, figures, tables, line_plots)
            elif isinstance(logger, TENSORBOARD_LOGGERS):
                self._attempt("TensorBoard figures", self._to_tensorboard, logger, trainer, figures)
        # under fast_dev_run Lightning writes no logs or checkpoints, and neither do the callbacks
        fast_dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # set by the Trainer's setup
        if not fast_dev_run and not any(isinstance(logger, WANDB_LOGGERS) for logger in loggers):
            self._attempt("PNG files", self._to_files, trainer, figures, epoch)

    @staticmethod
    def _to_wandb(
        logger: Any,
        trainer: pl.Trainer,
        figures: Mapping[str, Figure],
        tables: Mapping[str, Table],
        line_plots: Mapping[str, tuple[str, Table]],
    ) -> None:
        import wandb

        payload: dict[str, Any] = {key: wandb.Image(fig) for key, fig in figures.items()}
        for key, (columns, rows) in tables.items():
            payload[key] = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
        for key, (title, (columns, rows)) in line_plots.items():
            table = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
            payload[key] = wandb.plot.line(table, columns[0], columns[1], stroke=columns[2], title=title)
        payload["trainer/global_step"] = trainer.global_step
        logger.experiment.log(payload)

    @staticmethod
    def _to_tensorboard(logger: Any, trainer: pl.Trainer, figures: Mapping[str, Figure]) -> None:
        for key, fig in figures.items():
            logger.experiment.add_figure(key, fig, global_step=trainer.global_step, close=False)

    @staticmethod
    def _to_files(trainer: pl.Trainer, figures: Mapping[str, Figure], epoch: int) -> None:
        # trainer.log_dir is the logger's folder, or default_root_dir without a logger; a logger without a local
        # folder gives "" there (the working directory), so default_root_dir, where Lightning keeps checkpoints
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "invariance_plots"
        folder.mkdir(parents=True, exist_ok=True)
        for key, fig in figures.items():  # what fig.savefig writes, drawn once (not again after add_figure)
            write_png(fig, folder / f"{key.replace('/', '_')}_epoch{epoch:03d}.png")
