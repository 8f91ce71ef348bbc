"""``InvarianceReport``: the full invariance protocol over a whole split, once, for final reports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import Dataset

from invariance_lightning.lightning.callbacks.base import InvarianceCallbackBase, class_names_of, device_transfer
from invariance_lightning.lightning.callbacks.measure import ModuleForward
from invariance_lightning.lightning.callbacks.subsets import SPLITS, BatchKey, images_within_limit, split_stream
from invariance_lightning.metrics.evaluate import Normalization
from invariance_lightning.reporting.tables import write_report
from invariance_lightning.transforms import TransformSequence, sequence_preset
from invariance_lightning.validation import check_choice, check_optional_int


class InvarianceReport(InvarianceCallbackBase):
    """Measure a whole split with the full protocol at the end of ``trainer.test()``, or on demand.

    ``trainer.test(model, datamodule=dm)`` with this callback evaluates every image of the test
    split that the test loop reads (all of them, or under ``limit_test_batches`` / ``fast_dev_run``
    the first ones the limit covers; ``scope`` says which), each process a disjoint shard (no
    duplicates, unlike a padded ``DistributedSampler``),
    streaming it from the split's dataset ``batch_size`` images at a time (a :class:`SplitStream`:
    memory holds one batch and the few most-flipping images for the plot, never the split), and
    logs ``invariance_report/{split}/{sequence}/{metric}`` scalars, and with ``output_dir`` writes
    ``invariance_report.json`` and ``invariance_report.md`` there (global rank zero). ``run()``
    does the same at any time after the Trainer has been set up (without logging scalars outside a
    hook). The last results stay in ``results``.

    Args:
        sequences: ``{name: sequence}``; default ``sequence_preset("report")`` (9 diagonal shifts
            0..8 px and 9 scales 0.8..1.2, zeros mode).
        split: the split to measure (``"test"`` runs automatically at the end of testing).
        num_samples: ``None`` for the whole split (within the Trainer's limit), or a seeded subset size.
        output_dir: where to write the JSON/Markdown report (None: don't write files).
        outputs, output_key: ``outputs="probabilities"`` for a module ending in a softmax or sigmoid;
            ``output_key="logits"`` measures ``pl_module(x)["logits"]`` (a binary module's one logit needs
            neither), as in :class:`InvarianceMonitor`.
        Others: as in :class:`InvarianceMonitor`.
    """

    def __init__(
        self,
        sequences: Mapping[str, TransformSequence] | None = None,
        split: str = "test",
        num_samples: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        normalize: Normalization | str | None = "auto",
        forward_fn: ModuleForward | None = None,
        batch_key: BatchKey = None,
        log_plots: bool = True,
        top_k: int | None = 5,
        output_dir: str | Path | None = None,
        on_nonfinite: str = "raise",
        prefix: str = "invariance_report",
        data_normalization: Normalization | str | None = "auto",
        plain_transform: Callable[..., Any] | None = None,
        datasets: Mapping[str, Dataset] | None = None,
        outputs: str = "logits",
        output_key: str | int | None = None,
    ) -> None:
        super().__init__(
            sequence_preset("report") if sequences is None else sequences,
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
        self.split = check_choice("InvarianceReport", "split", split, SPLITS)
        self.num_samples = check_optional_int("InvarianceReport", "num_samples", num_samples, 1)
        self.seed = seed
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.results: dict[str, dict[str, Tensor]] = {}
        self.scope = ""

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.split == "test":
            self.run(trainer, pl_module, log=True)

    def run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, log: bool = False
    ) -> dict[str, dict[str, Tensor]]:
        """Measure now; ``log`` sends scalars through ``pl_module.log`` (only valid inside a Lightning hook)."""
        limit = images_within_limit(trainer, self.split)
        stream = split_stream(
            trainer,
            self.split,
            self.num_samples,
            self.seed,
            batch_size=self.batch_size,
            batch_key=self.batch_key,
            transfer=device_transfer(trainer, pl_module),
            plain_transform=self.plain_transform,
            dataset=self.datasets.get(self.split),
            limit=limit,
        )
        self.class_names = class_names_of(trainer, stream.facts)
        probe_images, probe_targets = stream.probe()
        space = self._input_space(trainer, pl_module, probe_images, stream.facts, self.split)
        self._check_images(trainer, pl_module, space.raw(probe_images), probe_targets, self.split)
        raw_batches = ((space.raw(images), targets) for images, targets in stream)
        measured = self._measure(trainer, pl_module, raw_batches, space.model, self.split)
        if log:
            self._log_scalars(pl_module, self._scalars(self.split, probe_targets is not None, measured))
        self.results = {} if measured is None else {name: m.metrics for name, m in measured.items()}
        self.scope = self._scope(trainer, stream.num_images, limit)
        if limit is not None:
            rank_zero_info(f"InvarianceReport: measured {self.scope}")
        if self.results and self.output_dir is not None and trainer.is_global_zero:
            self._write(stream.num_images)
        self._log_plots(trainer, {self.split: measured})
        return self.results

    def _scope(self, trainer: pl.Trainer, num_images: int | None, limit: int | None) -> str:
        """What was measured, in words: the split, the number of images and the limit that bounded it."""
        scope = f"{num_images} images of the {self.split!r} split"
        if limit is not None:
            limits = {
                "train": trainer.limit_train_batches,
                "val": trainer.limit_val_batches,
                "test": trainer.limit_test_batches,
            }
            scope += f" (the first {limit} at most: limit_{self.split}_batches={limits[self.split]})"
        return scope

    def _write(self, num_images: int | None) -> None:
        assert self.output_dir is not None  # called only when there is one
        title = f"Invariance report: {self.scope}"
        payload = {"split": self.split, "num_images": num_images, "measured": self.scope}
        write_report(self.output_dir, "invariance_report", payload, self.results, self.sequences, title)
