"""What the invariance callbacks share: configuration, input checks, measuring, plotting."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from invariance_lightning.lightning.callbacks.inputs import InputSpace, resolve_input_space
from invariance_lightning.lightning.callbacks.measure import (
    ModuleForward,
    SequenceMeasurement,
    measure_sequences,
    targets_error,
)
from invariance_lightning.lightning.callbacks.sinks import FigureSink, Table
from invariance_lightning.lightning.callbacks.subsets import SPLITS, BatchKey, PipelineFacts
from invariance_lightning.lightning.packages import CALLBACK_BASES, is_overridden
from invariance_lightning.metrics.evaluate import check_sequences
from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.metrics.outputs import check_outputs, class_logits, with_output_key
from invariance_lightning.reporting.figures import FLIP_GRID_IMAGES, flip_grid_figure, per_frame_figure
from invariance_lightning.transforms import Normalization, TransformSequence
from invariance_lightning.transforms.normalization import as_float_images, check_normalize
from invariance_lightning.validation import NonFiniteLogitsError, check_choice, check_fits, check_images, check_int

NONFINITE_POLICIES = ("warn", "raise")

#: Share of all frames predicted as one class above which a model counts as a (nearly) constant predictor.
CONSTANT_PREDICTION_SHARE = 0.99


# a Callback of lightning.pytorch and of pytorch_lightning (bases unpacked from a tuple, which mypy cannot follow)
class InvarianceCallbackBase(*CALLBACK_BASES):  # type: ignore[misc]
    """Common machinery of :class:`InvarianceMonitor` and :class:`InvarianceReport`."""

    def __init__(
        self,
        sequences: Mapping[str, TransformSequence],
        *,
        batch_size: int,
        normalize: Normalization | str | None,
        data_normalization: Normalization | str | None,
        plain_transform: Callable[..., Any] | None,
        datasets: Mapping[str, Dataset] | None,
        forward_fn: ModuleForward | None,
        batch_key: BatchKey,
        top_k: int | None,
        log_plots: bool,
        on_nonfinite: str,
        prefix: str,
        outputs: str = "logits",
        output_key: str | int | None = None,
    ) -> None:
        owner = type(self).__name__
        for name in check_sequences(owner, sequences):  # names become parts of the logged names
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"{owner}: sequence names must be non-empty strings without '/', got {name!r}")
        check_choice(owner, "on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        if normalize != "auto":
            normalize = check_normalize(owner, "normalize", normalize)
        if data_normalization != "auto":
            data_normalization = check_normalize(owner, "data_normalization", data_normalization)
        if plain_transform is not None and not callable(plain_transform):
            raise TypeError(
                f"{owner}: plain_transform must be a callable transform, got {type(plain_transform).__name__}"
            )
        datasets = dict(datasets or {})
        unknown = sorted(set(datasets) - set(SPLITS))
        if unknown:
            raise ValueError(f"{owner}: datasets must map split names {list(SPLITS)} to datasets, got keys {unknown}")
        self.sequences = dict(sequences)
        self.batch_size = check_int(owner, "batch_size", batch_size, 1)
        self.normalize = normalize
        self.data_normalization = data_normalization
        self.plain_transform = plain_transform
        self.datasets: dict[str, Dataset] = datasets
        self.forward_fn = forward_fn
        self.batch_key = batch_key
        self.top_k = top_k
        self.log_plots = log_plots
        self.on_nonfinite = on_nonfinite
        self.prefix = prefix
        self.outputs = check_outputs(owner, outputs)
        self.output_key = output_key
        self.forward_fn = with_output_key(owner, forward_fn, output_key)
        self.class_names: list[str] | None = None
        self._num_classes: int | None = None
        self._constant = False  # the constant-predictor warning was given
        self._sink = FigureSink(type(self).__name__)

    # -- setup -----------------------------------------------------------------------------------
    def _input_space(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor, facts: PipelineFacts, split: str
    ) -> InputSpace:
        """What the ``split`` batches hold and what the model needs (see :func:`resolve_input_space`), checked on
        ``images``; warns once per split when the images read differently each time (augmentation left)."""
        if facts.reads_randomly:
            rank_zero_warn(
                f"{type(self).__name__}: the {split!r} images differ each time they are read (random augmentation "
                "in the dataset that the callback could not replace with a plain transform): the fixed subset is one "
                "random draw of augmented images. Pass plain_transform=<the validation transform> (replaces every "
                f"transform in the dataset), or datasets={{{split!r}: <an un-augmented dataset>}}"
            )
        return resolve_input_space(
            type(self).__name__,
            trainer,
            pl_module,
            normalize=self.normalize,
            data_normalization=self.data_normalization,
            found=facts.normalization,
            images=images,
            split=split,
        )

    def _check_images(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor, targets: Tensor | None, split: str
    ) -> None:
        """Check that ``images`` of ``split`` are NCHW and fit every sequence, and that the module gives ``(N, C)``
        logits for them (a binary ``(N,)`` or ``(N, 1)`` logit counts as two classes; see ``outputs``) whose classes
        cover ``targets``."""
        owner = type(self).__name__
        check_images(owner, f"the {split!r} images (batch_key says where they are)", images, uint8=True)
        for name, sequence in self.sequences.items():
            check_fits(owner, f"sequence {name!r} (on the {split!r} images)", sequence, *images.shape[-2:])
        probe = as_float_images(images[:2].to(pl_module.device), owner)
        with evaluation_mode(pl_module), trainer.precision_plugin.val_step_context():
            output = self.forward_fn(pl_module, probe) if self.forward_fn else pl_module(probe)
            # the conversion the measurement uses: a binary module's one logit gives two classes
            logits = class_logits(output, probe.shape[0], self.outputs, owner)
        self._num_classes = logits.shape[1]
        problem = targets_error(targets, self._num_classes, split)
        if problem is not None:
            raise ValueError(f"{owner}: {problem}")

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
            results = measure_sequences(
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
                outputs=self.outputs,
            )
        except NonFiniteLogitsError as error:
            if self.on_nonfinite == "raise":
                raise
            self._sink.warn_once("non-finite logits", f"{error}; logging NaN for this epoch")
            return None
        self._check_not_constant(results, split)
        return results

    def _check_not_constant(self, results: Mapping[str, SequenceMeasurement], split: str) -> None:
        """Warn once when the model predicts one class on nearly every frame: such a model is trivially invariant."""
        for name, measurement in results.items():
            top, share = measurement.dominant_class()
            if len(measurement.predicted_classes) > 1 and share >= CONSTANT_PREDICTION_SHARE and not self._constant:
                self._constant = True
                rank_zero_warn(
                    f"{type(self).__name__}: the model predicts class {self._class_name(top)} on {share:.1%} of the "
                    f"{split!r} frames of {name!r}: a (nearly) constant predictor is trivially invariant, so its flip "
                    "rate near 0 and consistency near 1 say nothing about invariance (a diverged or untrained run?). "
                    "This warning is shown once"
                )

    def _class_name(self, index: int) -> str:
        names = self.class_names
        return f"{index} ({names[index]!r})" if names is not None and index < len(names) else str(index)

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
                flip = [math.nan, *metrics["per_frame_flip_rate"].tolist()]
                for t, (value, label) in enumerate(zip(sequence.frame_values, sequence.frame_labels)):
                    acc = math.nan if accuracy is None else float(accuracy[t])
                    rows.append([epoch, split, label, value, acc, flip[t]])
                    if t:
                        flips.append([value, flip[t], split])
            tables[f"{self.prefix}_tables/{name}/per_frame"] = (columns, rows)
            line_plots[f"{self.prefix}_charts/{name}/flip_rate"] = (
                f"{name}: flip rate along the sequence",
                (["frame_value", "flip_rate", "split"], flips),
            )
            split, result = next(iter(measured.items()))  # the first split's images, this process's shard
            examples = result[name].examples  # rank zero's shard is never empty
            assert examples.images is not None and examples.predictions is not None
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


def class_names_of(trainer: pl.Trainer, facts: PipelineFacts | None = None) -> list[str] | None:
    """The datamodule's ``classes`` attribute as strings, else the dataset's (``facts.classes``), else None."""
    classes = getattr(trainer.datamodule, "classes", None)  # type: ignore[attr-defined]  # set by the data connector
    if classes is not None:
        return [str(c) for c in classes]
    return None if facts is None else facts.classes


def device_transfer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[Any], Any]:
    """Move a batch to the module's device with the ``transfer_batch_to_device`` hook Lightning would use (the
    datamodule's where it overrides it, e.g. to decode images there), without the before/after-transfer hooks,
    which may augment or normalize."""
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by the Trainer's data connector
    overrides = datamodule is not None and is_overridden("transfer_batch_to_device", datamodule)
    owner = datamodule if overrides else pl_module
    return lambda batch: owner.transfer_batch_to_device(batch, pl_module.device, 0)
