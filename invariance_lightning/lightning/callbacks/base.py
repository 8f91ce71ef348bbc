"""What the invariance callbacks share: configuration, input checks, measuring, plotting."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from invariance_lightning.lightning.callbacks.measure import (
    ModuleForward,
    NonFiniteLogitsError,
    SequenceMeasurement,
    measure_sequences,
    targets_error,
)
from invariance_lightning.reporting.figures import FLIP_GRID_IMAGES, flip_grid_figure, per_frame_figure
from invariance_lightning.lightning.callbacks.sinks import FigureSink, Table
from invariance_lightning.lightning.callbacks.subsets import BatchKey
from invariance_lightning.metrics.evaluate import as_float_images, check_normalize
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.transforms import Normalization, TransformSequence
from invariance_lightning.validation import check_choice, check_int

NONFINITE_POLICIES = ("warn", "raise")


class InvarianceCallbackBase(Callback):
    """Common machinery of :class:`InvarianceMonitor` and :class:`InvarianceReport`."""

    def __init__(
        self,
        sequences: Mapping[str, TransformSequence],
        *,
        batch_size: int,
        normalize: Normalization | str | None,
        forward_fn: ModuleForward | None,
        batch_key: BatchKey,
        top_k: int | None,
        log_plots: bool,
        on_nonfinite: str,
        prefix: str,
    ) -> None:
        if not isinstance(sequences, Mapping) or not sequences:
            raise ValueError(f"sequences must be a non-empty dict of name -> TransformSequence, got {sequences!r}")
        for name, sequence in sequences.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"sequence names must be non-empty strings without '/', got {name!r}")
            if not isinstance(sequence, TransformSequence):
                raise TypeError(f"sequences[{name!r}] must be a TransformSequence, got {type(sequence).__name__}")
        owner = type(self).__name__
        check_choice(owner, "on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        if normalize != "auto":
            normalize = check_normalize(normalize)  # type: ignore[arg-type]
        self.sequences = dict(sequences)
        self.batch_size = check_int(owner, "batch_size", batch_size, 1)
        self.normalize = normalize
        self.forward_fn = forward_fn
        self.batch_key = batch_key
        self.top_k = top_k
        self.log_plots = log_plots
        self.on_nonfinite = on_nonfinite
        self.prefix = prefix
        self.class_names: list[str] | None = None
        self._num_classes: int | None = None
        self._sink = FigureSink(type(self).__name__)

    # -- setup -----------------------------------------------------------------------------------
    def _resolve_normalize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Normalization | None:
        """``"auto"``: the module's ``input_normalization`` (``(mean, std)``, as ``ImageClassifier`` has), else the
        datamodule's ``mean``/``std`` attributes, else no normalization."""
        if self.normalize != "auto":
            return self.normalize  # type: ignore[return-value]
        own = getattr(pl_module, "input_normalization", None)
        if own is not None:
            return check_normalize(own)
        datamodule = trainer.datamodule
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        return check_normalize((mean, std)) if mean is not None and std is not None else None

    def _check_images(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor, targets: Tensor | None, split: str
    ) -> None:
        """Check that ``images`` of ``split`` are NCHW and fit every sequence, and that the module gives ``(N, C)``
        logits for them whose classes cover ``targets``."""
        if images.ndim != 4:
            raise ValueError(
                f"the {split!r} images must have shape (N, C, H, W), got {tuple(images.shape)}; "
                "pass batch_key if batches are not (images, targets)"
            )
        height, width = images.shape[-2:]
        for name, sequence in self.sequences.items():
            try:
                sequence.output_size(height, width)
            except ValueError as error:
                raise ValueError(f"sequence {name!r} does not fit the {split!r} images: {error}") from None
        probe = as_float_images(images[:2].to(pl_module.device))
        with evaluation_mode(pl_module), trainer.precision_plugin.val_step_context():
            output = self.forward_fn(pl_module, probe) if self.forward_fn else pl_module(probe)
        if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != probe.shape[0]:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"{type(self).__name__} needs (N, C) logits from the module on {split!r} images, got {shape}; "
                "pass forward_fn=lambda module, x: ... to extract them"
            )
        self._num_classes = output.shape[1]
        error = targets_error(targets, self._num_classes, split)
        if error is not None:
            raise ValueError(error)

    # -- measuring -------------------------------------------------------------------------------
    def _measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batches: Iterable[tuple[Tensor, Tensor | None]],
        normalize: Normalization | None,
        split: str,
    ) -> dict[str, SequenceMeasurement] | None:
        """Measure this process's ``batches`` of ``split`` (checked with :meth:`_check_images` first); None (after a
        warning) on non-finite logits with ``"warn"``."""
        assert self._num_classes is not None, "_check_images sets the number of classes"
        try:
            return measure_sequences(
                trainer,
                pl_module,
                batches,
                self.sequences,
                split=split,
                num_classes=self._num_classes,
                batch_size=self.batch_size,
                normalize=normalize,
                forward_fn=self.forward_fn,
                top_k=self.top_k,
                examples=FLIP_GRID_IMAGES if self.log_plots else 0,
            )
        except NonFiniteLogitsError as error:
            if self.on_nonfinite == "raise":
                raise
            self._sink.warn_once("non-finite logits", f"{error}; logging NaN for this epoch")
            return None

    def _scalar_names(self, has_targets: bool) -> list[str]:
        names = ["flip_rate", "consistency", "mac"]
        if self.top_k is not None:
            names.append(f"top{self.top_k}_distance")
        if has_targets:
            names += ["accuracy", "worst_case_accuracy"]
        return names

    def _scalars(
        self, split: str, has_targets: bool, results: dict[str, SequenceMeasurement] | None
    ) -> dict[str, float]:
        """``{"{split}/{sequence}/{metric}": value}`` for every scalar metric (NaN where measuring failed)."""
        values = {}
        for name in self.sequences:
            for metric in self._scalar_names(has_targets):
                value = math.nan if results is None else float(results[name].metrics[metric])
                values[f"{split}/{name}/{metric}"] = value
        return values

    def _log_scalars(self, pl_module: pl.LightningModule, values: Mapping[str, float]) -> None:
        # values are already synced over processes, so every rank logs the same number without reduction
        for key, value in values.items():
            pl_module.log(f"{self.prefix}/{key}", value, on_step=False, on_epoch=True, sync_dist=False)

    # -- plots -----------------------------------------------------------------------------------
    def _figures_and_tables(
        self,
        results_by_split: Mapping[str, dict[str, SequenceMeasurement] | None],
        epoch: int,
    ) -> tuple[dict[str, Any], dict[str, Table], dict[str, tuple[str, Table]]]:
        figures: dict[str, Any] = {}
        tables: dict[str, Table] = {}
        line_plots: dict[str, tuple[str, Table]] = {}
        measured = {split: r for split, r in results_by_split.items() if r is not None}
        columns = ["epoch", "split", "frame", "frame_value", "accuracy", "flip_rate_from_previous"]
        for name, sequence in self.sequences.items():
            by_split = {split: r[name].metrics for split, r in measured.items()}
            if not by_split:
                continue
            figures[f"{self.prefix}_plots/{name}/per_frame"] = per_frame_figure(
                sequence, by_split, f"{name}: {sequence!r}"[:120] + f" (epoch {epoch})"
            )
            rows, flips = [], []
            for split, metrics in by_split.items():
                accuracy = metrics.get("per_frame_accuracy")
                flip = [math.nan] + metrics["per_frame_flip_rate"].tolist()
                for t, (value, label) in enumerate(zip(sequence.frame_values, sequence.frame_labels)):
                    acc = math.nan if accuracy is None else float(accuracy[t])
                    rows.append([epoch, split, label, value, acc, flip[t]])
                    if t:
                        flips.append([value, flip[t], split])
            tables[f"{self.prefix}_tables/{name}/per_frame"] = (columns, rows)
            line_plots[f"{self.prefix}_charts/{name}/flip_rate"] = (
                f"{name}: flip rate along the sequence", (["frame_value", "flip_rate", "split"], flips)
            )
            split, result = next(iter(measured.items()))  # the first split's images, this process's shard
            examples = result[name].examples  # rank zero's shard is never empty
            figures[f"{self.prefix}_plots/{name}/flips_{split}"] = flip_grid_figure(
                examples.images.cpu(),
                examples.predictions.cpu(),
                sequence,
                self.class_names,
                targets=None if examples.targets is None else examples.targets.cpu(),
            )
        return figures, tables, line_plots

    def _extra_figures(self) -> dict[str, Any]:
        """Figures beyond the per-sequence ones (subclasses add theirs)."""
        return {}

    def _log_plots(
        self,
        trainer: pl.Trainer,
        results_by_split: Mapping[str, dict[str, SequenceMeasurement] | None],
    ) -> None:
        """Build and deliver the figures on global rank zero; failures warn once.

        The flip grids show rank zero's shard; every scalar and curve covers the whole subset.
        """
        if not (self.log_plots and trainer.is_global_zero):
            return
        epoch = trainer.current_epoch
        try:
            figures, tables, line_plots = self._figures_and_tables(results_by_split, epoch)
            figures.update(self._extra_figures())
        except Exception as error:  # no matplotlib, or a figure that cannot be drawn: never stop training
            self._sink.warn_once("plots", f"could not draw plots ({type(error).__name__}: {error})")
            return
        self._sink.log(trainer, figures, tables, line_plots, epoch)


def class_names_of(trainer: pl.Trainer) -> list[str] | None:
    """The datamodule's ``classes`` attribute as strings, if it has one."""
    classes = getattr(trainer.datamodule, "classes", None)
    return [str(c) for c in classes] if classes is not None else None


def device_transfer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[Any], Any]:
    """Move a batch to the module's device with the ``transfer_batch_to_device`` hook Lightning would use (the
    datamodule's where it overrides it, e.g. to decode images there), without the before/after-transfer hooks,
    which may augment or normalize."""
    datamodule = trainer.datamodule
    overrides = datamodule is not None and is_overridden("transfer_batch_to_device", datamodule)
    owner = datamodule if overrides else pl_module
    return lambda batch: owner.transfer_batch_to_device(batch, pl_module.device, 0)
