"""What the invariance callbacks share: configuration, subset preparation and checks, measuring, plotting."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from invariance_lightning.callbacks.measure import (
    ModuleForward,
    NonFiniteLogitsError,
    SequenceMeasurement,
    evaluation_mode,
    measure_sequences,
)
from invariance_lightning.callbacks.plots import flip_grid_figure, per_frame_figure
from invariance_lightning.callbacks.sinks import FigureSink, Table
from invariance_lightning.callbacks.subsets import BatchKey, ImageSubset, draw_subset
from invariance_lightning.metrics.evaluate import Normalization, as_float_images, check_normalize
from invariance_lightning.transforms import TransformSequence

NONFINITE_POLICIES = ("warn", "raise")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


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
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {list(NONFINITE_POLICIES)}, got {on_nonfinite!r}")
        if normalize != "auto":
            normalize = check_normalize(normalize)  # type: ignore[arg-type]
        self.sequences = dict(sequences)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.normalize = normalize
        self.forward_fn = forward_fn
        self.batch_key = batch_key
        self.top_k = top_k
        self.log_plots = log_plots
        self.on_nonfinite = on_nonfinite
        self.prefix = prefix
        self.class_names: list[str] | None = None
        self._sink = FigureSink()

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

    def _prepare_subset(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, num_samples: int | None, seed: int
    ) -> ImageSubset:
        """Draw the subset, check that every sequence fits it and that the module returns logits, move it to the device."""
        subset = draw_subset(trainer, split, num_samples, seed, self.batch_key)
        if subset.images.ndim != 4:
            raise ValueError(
                f"the {split!r} images must have shape (N, C, H, W), got {tuple(subset.images.shape)}; "
                "pass batch_key if batches are not (images, targets)"
            )
        height, width = subset.images.shape[-2:]
        for name, sequence in self.sequences.items():
            try:
                sequence.output_size(height, width)
            except ValueError as error:
                raise ValueError(f"sequence {name!r} does not fit the {split!r} images: {error}") from None
        subset = subset.to(pl_module.device)
        self._check_logits_shape(trainer, pl_module, subset, split)
        return subset

    def _check_logits_shape(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, subset: ImageSubset, split: str
    ) -> None:
        probe = as_float_images(subset.images[:2])
        with evaluation_mode(pl_module), trainer.precision_plugin.val_step_context():
            output = self.forward_fn(pl_module, probe) if self.forward_fn else pl_module(probe)
        if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != probe.shape[0]:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"InvarianceMonitor needs (N, C) logits from the module on {split!r} images, got {shape}; "
                "pass forward_fn=lambda module, x: ... to extract them"
            )
        if self.top_k is not None and self.top_k > output.shape[1]:
            rank_zero_info(f"InvarianceMonitor: the module has {output.shape[1]} classes; top_k lowered to {output.shape[1]}")
            self.top_k = output.shape[1]
        if subset.targets is not None and subset.targets.numel():
            if int(subset.targets.max()) >= output.shape[1] or int(subset.targets.min()) < 0:
                raise ValueError(
                    f"{split!r} targets range over [{int(subset.targets.min())}, {int(subset.targets.max())}] but the "
                    f"module returns {output.shape[1]} logits"
                )

    # -- measuring -------------------------------------------------------------------------------
    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, subset: ImageSubset, normalize: Normalization | None
    ) -> dict[str, SequenceMeasurement] | None:
        """Measure this process's shard of ``subset``; None (after a warning) on non-finite logits with ``"warn"``."""
        shard = subset.shard(trainer.global_rank, trainer.world_size)
        try:
            return measure_sequences(
                trainer,
                pl_module,
                shard,
                self.sequences,
                batch_size=self.batch_size,
                normalize=normalize,
                forward_fn=self.forward_fn,
                top_k=self.top_k,
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
        self, split: str, subset: ImageSubset, results: dict[str, SequenceMeasurement] | None
    ) -> dict[str, float]:
        """``{"{split}/{sequence}/{metric}": value}`` for every scalar metric (NaN where measuring failed)."""
        values = {}
        for name in self.sequences:
            for metric in self._scalar_names(subset.targets is not None):
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
        shards: Mapping[str, ImageSubset],
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
            figures[f"{self.prefix}_plots/{name}/flips_{split}"] = flip_grid_figure(
                shards[split].images.cpu(),
                result[name].predictions,
                sequence,
                self.class_names,
                targets=None if shards[split].targets is None else shards[split].targets.cpu(),
            )
        return figures, tables, line_plots

    def _extra_figures(self) -> dict[str, Any]:
        """Figures beyond the per-sequence ones (subclasses add theirs)."""
        return {}

    def _log_plots(
        self,
        trainer: pl.Trainer,
        results_by_split: Mapping[str, dict[str, SequenceMeasurement] | None],
        subsets: Mapping[str, ImageSubset],
    ) -> None:
        """Build and deliver the figures on global rank zero; failures warn once.

        The flip grids show rank zero's shard; every scalar and curve covers the whole subset.
        """
        if not (self.log_plots and trainer.is_global_zero):
            return
        epoch = trainer.current_epoch
        shards = {split: subset.shard(trainer.global_rank, trainer.world_size) for split, subset in subsets.items()}
        try:
            figures, tables, line_plots = self._figures_and_tables(results_by_split, shards, epoch)
            figures.update(self._extra_figures())
        except Exception as error:  # no matplotlib, or a figure that cannot be drawn: never stop training
            self._sink.warn_once("plots", f"could not draw plots ({type(error).__name__}: {error})")
            return
        self._sink.log(trainer, figures, tables, line_plots, epoch)


def class_names_of(trainer: pl.Trainer) -> list[str] | None:
    """The datamodule's ``classes`` attribute as strings, if it has one."""
    classes = getattr(trainer.datamodule, "classes", None)
    return [str(c) for c in classes] if classes is not None else None

