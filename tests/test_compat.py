"""One test per private internal that ``invariance_lightning._compat`` uses, against the real library.

Each fails if Lightning, kornia, torchmetrics or torch rename or change the internal the helper relies on.
"""

from __future__ import annotations

import kornia.augmentation as K
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import Metric

from invariance_lightning._compat import (
    PostComputeMetric,
    as_pair,
    callback_state_key,
    keep_kornia_rng_on,
    loop_data_source,
    training_batch_index,
)
from lightning_helpers import TinyClassifier, tiny_loader


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    return pl.Trainer(**{**options, **kwargs})


def test_loop_data_source_gives_each_loops_loaders_before_they_are_iterated(tmp_path):
    train, val, test = tiny_loader(16, seed=1), tiny_loader(8, seed=2), tiny_loader(8, seed=3)
    seen = {}

    def look(split, loop):
        source = loop_data_source(loop)
        seen[split] = (source.instance is not None and source.is_defined(), source.dataloader())

    class Probe(Callback):
        def on_fit_start(self, trainer, pl_module):
            look("train", trainer.fit_loop)
            look("val", trainer.fit_loop.epoch_loop.val_loop)

        def on_test_start(self, trainer, pl_module):
            look("test", trainer.test_loop)

    run = trainer(tmp_path, callbacks=[Probe()], limit_train_batches=1, limit_val_batches=1)
    run.fit(TinyClassifier(), train, val)
    run.test(TinyClassifier(), test)
    assert seen == {"train": (True, train), "val": (True, val), "test": (True, test)}


def test_training_batch_index_counts_batches_across_epochs_and_resumes(tmp_path):
    class Recorder(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.indices = []

        def on_after_batch_transfer(self, batch, dataloader_idx):
            if self.trainer.training:  # read while the batch is transferred, as GPUAugmentationMixin does
                self.indices.append(training_batch_index(self.trainer))
            return batch

    loader = tiny_loader(24, batch_size=8)  # 3 batches per epoch
    first = Recorder()
    # with gradient accumulation: the optimizer steps (global_step) lag behind the batches
    run = trainer(tmp_path, max_epochs=2, limit_val_batches=0, accumulate_grad_batches=2)
    run.fit(first, loader)
    assert first.indices == [0, 1, 2, 3, 4, 5] and run.global_step == 4
    checkpoint = tmp_path / "epoch1.ckpt"
    one_epoch = trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    one_epoch.fit(Recorder(), loader)
    one_epoch.save_checkpoint(checkpoint)
    resumed = Recorder()
    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(resumed, loader, ckpt_path=checkpoint)
    assert resumed.indices == [3, 4, 5]


def test_callback_state_key_names_the_class_and_identity_and_keys_the_checkpoint(tmp_path):
    class Keyed(Callback):
        def __init__(self, tag):
            self.tag = tag

        @property
        def state_key(self):
            return callback_state_key(self, tag=self.tag)

        def state_dict(self):
            return {"tag": self.tag}

    callbacks = [Keyed("a"), Keyed("b")]
    name = Keyed.__qualname__  # a local class: Lightning uses the qualified name
    assert [c.state_key for c in callbacks] == [f"{name}{{'tag': 'a'}}", f"{name}{{'tag': 'b'}}"]
    run = trainer(tmp_path, callbacks=callbacks, limit_train_batches=1, limit_val_batches=0)
    run.fit(TinyClassifier(), tiny_loader(8))
    path = tmp_path / "keyed.ckpt"
    run.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]
    assert saved[callbacks[0].state_key] == {"tag": "a"} and saved[callbacks[1].state_key] == {"tag": "b"}


def test_keep_kornia_rng_on_reaches_nested_augmentations_and_their_parameter_draws():
    def augmentations():
        affine = K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), p=1.0)
        return affine, nn.Sequential(nn.Identity(), K.AugmentationSequential(affine, K.RandomHorizontalFlip()))

    def draw(affine):
        torch.manual_seed(0)
        return affine.forward_parameters(torch.Size((4, 3, 8, 8)))["translations"].double()

    reference, _ = augmentations()
    affine, module = augmentations()
    module.double()  # kornia moves its samplers along: float64 draws differ from float32 ones
    assert not torch.equal(draw(affine), draw(reference))
    keep_kornia_rng_on(module, torch.device("cpu"), torch.float32)
    assert torch.equal(draw(affine), draw(reference))
    assert (affine.device, affine.dtype) == (torch.device("cpu"), torch.float32)


def test_post_compute_metric_sees_the_result_after_torchmetrics_squeezes_it():
    class Total(Metric):
        def __init__(self):
            super().__init__()
            self.add_state("total", torch.zeros(1), dist_reduce_fx="sum")

        def update(self, value):
            self.total += value

        def compute(self):
            return self.total.clone()

    class KeptTotal(PostComputeMetric, Total):
        def after_compute(self, result):
            self.seen = result
            return result.reshape(-1)

    plain, kept = Total(), KeptTotal()
    for metric in (plain, kept):
        metric.update(torch.tensor([2.0]))
    assert plain.compute().shape == ()  # torchmetrics squeezes the one-element result: why the hook exists
    assert kept.compute().shape == (1,) and kept.seen.shape == ()
    assert float(kept.compute()[0]) == 2.0  # the cached result passes through the hook again


def test_as_pair_matches_how_torch_layers_store_their_sizes():
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=(1, 0))
    assert as_pair(2) == (2, 2) == conv.stride
    assert as_pair((1, 0)) == (1, 0) == conv.padding
    assert as_pair(nn.MaxPool2d(3, stride=2).stride) == (2, 2)  # pooling layers keep the int
