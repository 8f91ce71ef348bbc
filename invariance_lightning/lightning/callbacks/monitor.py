"""``InvarianceMonitor``: measure shift/scale invariance on fixed train and val subsets every epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

from invariance_lightning._compat import callback_state_key
from invariance_lightning.lightning.callbacks.base import InvarianceCallbackBase, class_names_of, device_transfer
from invariance_lightning.lightning.callbacks.inputs import InputSpace
from invariance_lightning.lightning.callbacks.measure import ModuleForward, SequenceMeasurement
from invariance_lightning.lightning.callbacks.subsets import BatchKey, ImageSubset, check_splits, draw_subset
from invariance_lightning.metrics.evaluate import ForwardFn
from invariance_lightning.metrics.protocols import PROTOCOLS
from invariance_lightning.metrics.published import ProtocolTotals, check_protocol_names
from invariance_lightning.reporting.figures import history_figure
from invariance_lightning.reporting.tables import protocol_numbers
from invariance_lightning.transforms import Normalization, TransformSequence, sequence_preset
from invariance_lightning.validation import NonFiniteLogitsError, check_int, check_unit_range

#: Images per split under ``Trainer(fast_dev_run=...)``.
FAST_DEV_RUN_SAMPLES = 8


class InvarianceMonitor(InvarianceCallbackBase):
    """Log how invariant the model is, every epoch, next to loss and accuracy.

    At fit start it draws ``num_samples`` fixed images of each split (by ``seed``, without training
    augmentation), checks that every sequence fits them and that the module returns ``(N, C)``
    logits, and keeps them on the module's device. After validation of every ``every_n_epochs``-th
    epoch (or at the end of the training epoch when there is no validation) it runs each sequence
    over each subset in eval mode without grad and logs, through ``pl_module.log``, scalars named
    ``invariance/{split}/{sequence}/{metric}`` (``flip_rate``, ``consistency``, ``mac``,
    ``top5_distance``, ``accuracy``, ``worst_case_accuracy``), so that ``ModelCheckpoint`` and
    ``EarlyStopping`` can monitor them. With ``log_plots`` it also draws per-frame curves, the
    history over epochs and the most-flipping images (W&B media, TensorBoard figures, or PNGs).

    Under ``fast_dev_run`` the subsets shrink to 8 images per split.

    Cost per measured epoch: ``len(splits) * num_samples * sum(len(s) for s in sequences)`` forward
    passes (the defaults: 2 * 512 * 7 = 7,168, about 5% of the forward passes of one training
    epoch on CIFAR-10, and forwards here run without autograd). Under DDP each process evaluates a
    disjoint shard of each subset and the metrics are summed exactly over processes.

    ``protocols`` adds published protocols (:data:`~invariance_lightning.metrics.protocols.PROTOCOLS`,
    docs/metrics.md), logged as ``invariance/{split}/{protocol}/{number}`` (e.g.
    ``invariance/val/aps2021_circular/consistency``) and equal to ``evaluate_protocol`` on the subset
    (image ``i`` of the subset has index ``i``; random shifts seeded by ``seed``). Each costs
    ``len(splits) * num_samples * PROTOCOLS[name].frames_per_image`` more forward passes per measured
    epoch: 10 frames per image for ``zhang2019``, 2 for ``aps2021_standard``/``aps2021_circular``, 16
    for ``imagenet_p_flip`` and 1,960 for ``afc2023_adversarial`` (meant for a final evaluation, not
    every epoch). Under DDP each process counts its shard and the counts are summed over processes.

    Args:
        sequences: ``{name: sequence}``; default: ``sequence_preset("monitor")``, a diagonal 1-px
            step shift to (3, 3) and rescaling by 0.9 / 1.1 (zeros mode).
        num_samples: images per split (the whole split, with a warning, if it has fewer).
        splits: any of ``"val"``, ``"train"``, ``"test"``.
        every_n_epochs: measure on epochs 0, n, 2n, ...
        batch_size: frames per forward pass (bounds memory; on a CPU 128 frames ran a ResNet-20 about 20%
            faster than 256, which no longer fit the cache: benchmarks/results/monitor_overhead.md).
        seed: chooses the subsets and seeds the protocols' random shifts.
        normalize: ``(mean, std)`` that *raw* images (uint8, or floats in [0, 1]) must be normalized
            with before the model, applied after the geometric transforms (so ``fill=0`` stays
            black); ``"auto"`` takes the batches' own normalization (``data_normalization``), else
            the module's ``input_normalization`` attribute (as ``ImageClassifier`` has), else the
            datamodule's ``mean``/``std``, else none; ``None``: raw frames go to the model as they
            are. uint8 images are scaled to [0, 1] first.
        forward_fn: ``forward_fn(pl_module, x) -> logits`` if ``forward`` does not return logits (from YAML: the
            import path of a function, e.g. ``my_package.heads.logits_of``).
        output_key: instead of ``forward_fn``, the entry of a dict or tuple output to measure
            (``output_key="logits"`` measures ``pl_module(x)["logits"]``; YAML-friendly).
        outputs: ``"logits"`` (default) or ``"probabilities"`` for a module ending in a softmax or sigmoid
            (outputs in [0, 1], measured as log-probabilities). A binary module's one logit, ``(N,)`` or
            ``(N, 1)`` as ``BCEWithLogitsLoss`` trains it, needs nothing: it is read as two classes, logits
            ``[0, z]``; targets may be floats ``0.``/``1.``.
        batch_key: where images/targets are in a batch: ``None`` for ``(images, targets)``
            tuples, or ``("image", "label")`` for dict batches (a single key: no targets).
        log_plots: draw and log figures and tables (global rank zero only).
        top_k: depth of the top-k rank distance (``None`` to skip); a module with fewer classes gets the
            full-ranking distance, still logged as ``top{top_k}_distance``.
        on_nonfinite: ``"warn"`` logs NaN for an epoch whose logits are not finite and carries on;
            ``"raise"`` stops training with the error.
        prefix: first component of the logged names.
        protocols: names of published protocols to measure as well (default: none); the subset images must
            be un-normalized (uint8, or float in [0, 1]), since shifts fill with black before ``normalize``.
        data_normalization: ``(mean, std)`` the batches are *already* normalized with (a ``Normalize``
            in the dataset's transforms): they are un-normalized before each shift and normalized again
            for the model, so the numbers equal a measurement on the raw images. ``"auto"`` finds
            torchvision's ``Normalize`` (v1 or v2) in the dataset's transforms, through ``Subset``,
            ``ConcatDataset`` and ``Compose``; ``None``: the batches are raw images.
        plain_transform: a deterministic transform that replaces every ``transform`` of the measured
            datasets (e.g. the validation transform, when training augmentation cannot be found and
            replaced automatically).
        datasets: ``{split: dataset}`` to draw a split's images from instead of the Trainer's data
            (collated like the split's loader).
    """

    def __init__(
        self,
        sequences: Mapping[str, TransformSequence] | None = None,
        num_samples: int = 512,
        splits: Sequence[str] = ("val", "train"),
        every_n_epochs: int = 1,
        batch_size: int = 128,
        seed: int = 0,
        normalize: Normalization | str | None = "auto",
        forward_fn: ModuleForward | None = None,
        batch_key: BatchKey = None,
        log_plots: bool = True,
        top_k: int | None = 5,
        on_nonfinite: str = "warn",
        prefix: str = "invariance",
        protocols: Sequence[str] = (),
        data_normalization: Normalization | str | None = "auto",
        plain_transform: Callable[..., Any] | None = None,
        datasets: Mapping[str, Dataset] | None = None,
        outputs: str = "logits",
        output_key: str | int | None = None,
    ) -> None:
        super().__init__(
            sequence_preset("monitor") if sequences is None else sequences,
            batch_size=batch_size,
            normalize=normalize,
            data_normalization=data_normalization,
            plain_transform=plain_transform,
            datasets=datasets,
            forward_fn=forward_fn,
            batch_key=batch_key,
            top_k=top_k,
            log_plots=log_plots,
            on_nonfinite=on_nonfinite,
            prefix=prefix,
            outputs=outputs,
            output_key=output_key,
        )
        self.num_samples = check_int("InvarianceMonitor", "num_samples", num_samples, 1)
        self.splits = check_splits(splits)
        self.every_n_epochs = check_int("InvarianceMonitor", "every_n_epochs", every_n_epochs, 1)
        self.seed = seed
        self.protocols = check_protocol_names("InvarianceMonitor", protocols)
        self.history: list[dict[str, Any]] = []
        self.subsets: dict[str, ImageSubset] = {}
        self._restored_indices: dict[str, list[int]] = {}
        self._normalize_values: Normalization | None = None
        self._last_measured_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return callback_state_key(self, prefix=self.prefix, splits=self.splits, sequences=sorted(self.sequences))

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.subsets = {}
        num_samples = self.num_samples
        # a quick check of the code path, like Lightning's own callbacks (fast_dev_run: set by the Trainer's setup)
        if trainer.fast_dev_run:  # type: ignore[attr-defined]
            num_samples = min(num_samples, FAST_DEV_RUN_SAMPLES)
        transfer = device_transfer(trainer, pl_module)
        spaces = {}
        for split in self.splits:
            drawn = draw_subset(
                trainer,
                split,
                num_samples,
                self.seed,
                self.batch_key,
                batch_size=self.batch_size,
                transfer=transfer,
                plain_transform=self.plain_transform,
                dataset=self.datasets.get(split),
            ).to(pl_module.device)
            spaces[split] = self._input_space(trainer, pl_module, drawn.images, drawn.facts, split)
            subset = ImageSubset(spaces[split].raw(drawn.images), drawn.targets, drawn.indices, drawn.facts)
            self._check_images(trainer, pl_module, subset.images, subset.targets, split)
            self._check_protocol_images(subset, split)
            restored = self._restored_indices.get(split)
            if restored is not None and restored != subset.indices:
                rank_zero_warn(
                    f"InvarianceMonitor: the {split!r} subset drawn now differs from the one in the checkpoint "
                    "(different data or seed); the history mixes two subsets"
                )
            self.subsets[split] = subset
        self._normalize_values = self._one_model_normalization(spaces)
        self.class_names = next(
            (names for s in self.subsets.values() if (names := class_names_of(trainer, s.facts)) is not None), None
        )
        if self.history:
            self._last_measured_epoch = self.history[-1]["epoch"]

    @staticmethod
    def _one_model_normalization(spaces: Mapping[str, InputSpace]) -> Normalization | None:
        """The model normalization all splits agree on (the model is one; its input cannot depend on the split)."""
        models = {split: space.model for split, space in spaces.items()}
        if len(set(models.values())) > 1:
            raise ValueError(
                f"InvarianceMonitor: the splits' pipelines normalize differently ({models}); the model expects one "
                "normalization: pass normalize=(mean, std), and data_normalization=(mean, std) if the batches carry it"
            )
        return next(iter(models.values()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._maybe_measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_measure(trainer, pl_module)  # epochs without validation

    def _maybe_measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.subsets or trainer.state.fn != "fit":
            return
        if epoch == self._last_measured_epoch or epoch % self.every_n_epochs:
            return
        self._last_measured_epoch = epoch
        self.measure(trainer, pl_module)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure every split now, log the scalars and plots, append to the history; returns the scalars."""
        results: dict[str, dict[str, SequenceMeasurement] | None] = {}
        values: dict[str, float] = {}
        for split, subset in self.subsets.items():
            shard = subset.shard(trainer.global_rank, trainer.world_size)
            batches = [(shard.images, shard.targets)]
            results[split] = self._measure(trainer, pl_module, batches, self._normalize_values, split)
            values.update(self._scalars(split, subset.targets is not None, results[split]))
            values.update(self._measure_protocols(trainer, pl_module, subset, split))
        self._log_scalars(pl_module, values)
        self.history.append({"epoch": trainer.current_epoch, "global_step": trainer.global_step, "values": values})
        self._log_plots(trainer, results)
        return values

    # -- published protocols ---------------------------------------------------------------------
    def _check_protocol_images(self, subset: ImageSubset, split: str) -> None:
        """The protocols' shifts fit the images, which are un-normalized, with targets where a protocol needs them."""
        if not self.protocols:
            return
        images = subset.images
        for name in self.protocols:
            protocol = PROTOCOLS[name]
            protocol.check_size(images.shape[-2], images.shape[-1])
            if protocol.needs_targets and subset.targets is None:
                raise ValueError(
                    f"InvarianceMonitor: protocol {name!r} needs targets, but the {split!r} batches have none"
                )
        # shifts fill with black before normalize
        check_unit_range("InvarianceMonitor", f"the {split!r} images of the protocols", images)

    def _measure_protocols(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, subset: ImageSubset, split: str
    ) -> dict[str, float]:
        """``{"{split}/{protocol}/{number}": value}``: counts of this process's shard (image ``i`` of the subset has
        index ``i``), summed over processes. Non-finite logits: as ``on_nonfinite`` says (``"warn"``: nothing
        logged for the protocols this epoch)."""
        if not self.protocols:
            return {}
        rank, world_size = trainer.global_rank, trainer.world_size
        shard = subset.shard(rank, world_size)
        totals = ProtocolTotals(
            self.protocols,
            seed=self.seed,
            normalize=self._normalize_values,
            batch_size=self.batch_size,
            device=pl_module.device,
            outputs=self.outputs,
            forward_fn=cast("ForwardFn | None", self.forward_fn),  # called with pl_module only
        ).to(pl_module.device)
        error = None
        try:
            with trainer.precision_plugin.val_step_context():
                totals.update(pl_module, shard.images, shard.targets, torch.arange(len(subset))[rank::world_size])
        except NonFiniteLogitsError as caught:  # the inputs were checked at fit start
            error = str(caught)
        if not trainer.strategy.reduce_boolean_decision(error is None, all=True):
            message = f"protocols on the {split!r} subset: {error or 'non-finite logits on another process'}"
            if self.on_nonfinite == "raise":
                raise NonFiniteLogitsError(message)
            self._sink.warn_once("protocols", f"{message}; no protocol values logged for this epoch")
            return {}
        return {  # compute() sums the counts over processes
            f"{split}/{name}/{key}": value
            for name, numbers in totals.compute().items()
            for key, value in protocol_numbers(numbers).items()
        }

    def _extra_figures(self) -> dict[str, Any]:
        return {f"{self.prefix}_plots/history": history_figure(self.history)}

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The measured history and the drawn subsets' indices (the settings come from the constructor)."""
        return {
            "history": [dict(row, values=dict(row["values"])) for row in self.history],
            "subset_indices": {split: list(s.indices) for split, s in self.subsets.items()} or self._restored_indices,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved: the history continues, and the subsets drawn at the next fit
        start are compared with the saved indices (a warning if they differ)."""
        self.history = [dict(row, values=dict(row["values"])) for row in state_dict["history"]]
        self._restored_indices = {split: list(idx) for split, idx in state_dict.get("subset_indices", {}).items()}
