"""The one-line callback on users' own data pipelines, shaped like public Lightning examples.

Each client is written the way tutorials write it (torchvision datasets with ``Compose`` + ``Normalize``,
``random_split``, ``ConcatDataset``, transforms v2, dict batches, LightningCLI with ``ImageFolder``), and each test
checks the monitor's numbers against ``evaluate_invariance`` on the *raw* images of the same subset, computed here
independently from the arrays the datasets were built from, or checks that a clear error or warning comes instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, random_split
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.vision import StandardTransform
from torchvision.transforms import v2

from invariance_lightning import InvarianceMonitor, InvarianceReport, evaluate_invariance, sequence_preset
from lightning_helpers import TinyClassifier, tiny_trainer

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SIZE, NUM_CLASSES = 16, 10
METRICS = ("flip_rate", "consistency", "mac", "top5_distance", "accuracy", "worst_case_accuracy")


def cifar_arrays(num_images: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 HWC images with some structure (a bright square at a random place) and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (num_images, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, num_images)
    for image, label in zip(images, labels):
        y, x = rng.integers(0, SIZE - 6, 2)
        image[y : y + 6, x : x + 6, label % 3] = 255
    return images, labels


def cifar10(images: np.ndarray, labels: np.ndarray, transform) -> CIFAR10:
    """A real torchvision ``CIFAR10`` holding ``images`` (as if loaded from disk: no download here)."""
    dataset = CIFAR10.__new__(CIFAR10)
    dataset.root, dataset.train = "unused", True
    dataset.data, dataset.targets = images, [int(label) for label in labels]
    dataset.transform, dataset.target_transform = transform, None
    dataset.transforms = StandardTransform(transform, None)
    dataset.classes = [f"class{i}" for i in range(NUM_CLASSES)]
    return dataset


TRAIN_TF = T.Compose([T.RandomCrop(SIZE, padding=2), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
TEST_TF = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def raw(images: np.ndarray, indices) -> torch.Tensor:
    """The raw images (floats in [0, 1], NCHW) at ``indices``: what ToTensor() gives before Normalize."""
    return torch.from_numpy(images[list(indices)]).permute(0, 3, 1, 2).float() / 255


def assert_equals_raw_measurement(callback, model, split, images, targets, normalize=(MEAN, STD)):
    """The callback's last values for ``split`` equal evaluate_invariance on the raw images (to 0.005)."""
    values = callback.history[-1]["values"]
    for name, sequence in callback.sequences.items():
        expected = evaluate_invariance(model, images, targets, sequence, normalize=normalize)
        for metric in METRICS:
            assert values[f"{split}/{name}/{metric}"] == pytest.approx(float(expected[metric]), abs=0.005), (
                split,
                name,
                metric,
            )


class TutorialNet(TinyClassifier):
    """The PyTorch CIFAR-10 tutorial's network (conv-pool-conv-pool-MLP), for 16x16 images: far from invariant."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(num_classes)
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )


def tutorial_split(images, labels):
    """The Lightning tutorials' CIFAR-10 pattern: two datasets with their transforms, random_split with one seed."""
    train_full, val_full = cifar10(images, labels, TRAIN_TF), cifar10(images, labels, TEST_TF)
    train_set, _ = random_split(train_full, [64, 32], generator=torch.Generator().manual_seed(42))
    _, val_set = random_split(val_full, [64, 32], generator=torch.Generator().manual_seed(42))
    return train_set, val_set


def fit(tmp_path, callback, train_loader, val_loader, model=None, **kwargs):
    pl.seed_everything(0)
    model = model or TutorialNet()
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[callback], **kwargs)
    trainer.fit(model, train_loader, val_loader)
    return model, trainer


def test_normalize_in_the_transforms_and_random_split_measure_the_raw_images(tmp_path):
    images, labels = cifar_arrays()
    train_set, val_set = tutorial_split(images, labels)
    callback = InvarianceMonitor(num_samples=24, log_plots=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing here deserves a warning
        warnings.filterwarnings("ignore", message=".*(num_workers|log_every_n_steps|smaller than).*")
        model, _ = fit(tmp_path, callback, DataLoader(train_set, batch_size=8), DataLoader(val_set, batch_size=8))
    assert callback._normalize_values == (MEAN, STD)
    for split, subset_of in (("val", val_set), ("train", train_set)):
        subset = callback.subsets[split]
        where = [subset_of.indices[i] for i in subset.indices]
        expected = raw(images, where)
        # the kept images are the raw, un-augmented ones (so the flip galleries show the frames the model saw)
        torch.testing.assert_close(subset.images, expected, atol=1e-6, rtol=0)
        assert_equals_raw_measurement(callback, model, split, expected, torch.as_tensor(labels[where]))
    assert callback.class_names == [f"class{i}" for i in range(NUM_CLASSES)]  # from the torchvision dataset


def test_an_explicit_normalize_equal_to_the_transforms_does_not_normalize_twice(tmp_path):
    images, labels = cifar_arrays()
    train_set, val_set = tutorial_split(images, labels)
    callback = InvarianceMonitor(num_samples=16, splits=("val",), normalize=(MEAN, STD), log_plots=False)
    model, _ = fit(tmp_path, callback, DataLoader(train_set, batch_size=8), DataLoader(val_set, batch_size=8))
    where = [val_set.indices[i] for i in callback.subsets["val"].indices]
    assert_equals_raw_measurement(callback, model, "val", raw(images, where), torch.as_tensor(labels[where]))


def test_contradicting_or_wrong_statistics_fail_at_fit_start(tmp_path):
    images, labels = cifar_arrays()
    train_set, val_set = tutorial_split(images, labels)
    loaders = DataLoader(train_set, batch_size=8), DataLoader(val_set, batch_size=8)
    other = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"transforms normalize the 'val' batches with .* but normalize="):
        fit(tmp_path, InvarianceMonitor(num_samples=8, normalize=other, log_plots=False), *loaders)
    with pytest.raises(ValueError, match=r"data_normalization=.* but the Normalize in the 'val' dataset's transforms"):
        fit(tmp_path, InvarianceMonitor(num_samples=8, data_normalization=other), *loaders)
    # batches normalized where the callback cannot see it (a Lambda)
    hidden = T.Compose([T.ToTensor(), T.Lambda(lambda x: (x - 0.5) / 0.25)])
    hidden_loader = DataLoader(cifar10(images, labels, hidden), batch_size=8)
    with pytest.raises(ValueError, match=r"un-normalized with .* range over .* not the statistics"):
        fit(tmp_path, InvarianceMonitor(num_samples=8, data_normalization=other), hidden_loader, hidden_loader)
    # ... while normalize is set: never normalize twice
    with pytest.raises(ValueError, match=r"look normalized already, and normalize=.* would normalize them again"):
        fit(tmp_path, InvarianceMonitor(num_samples=8, normalize=other, log_plots=False), hidden_loader, hidden_loader)


def test_normalization_the_callback_cannot_see_warns_and_data_normalization_fixes_it(tmp_path):
    images, labels = cifar_arrays()
    hidden = T.Compose([T.ToTensor(), T.Lambda(lambda x: (x - 0.5) / 0.25)])
    loader = DataLoader(cifar10(images, labels, hidden), batch_size=8)
    with pytest.warns(UserWarning, match=r"no torchvision Normalize was found .* pass data_normalization"):
        fit(tmp_path, InvarianceMonitor(num_samples=8, splits=("val",), log_plots=False), loader, loader)
    stats = ((0.5,) * 3, (0.25,) * 3)
    callback = InvarianceMonitor(num_samples=16, splits=("val",), data_normalization=stats, log_plots=False)
    model, _ = fit(tmp_path, callback, loader, loader)
    indices = callback.subsets["val"].indices
    assert_equals_raw_measurement(
        callback, model, "val", raw(images, indices), torch.as_tensor(labels[indices]), normalize=stats
    )


def test_one_augmenting_dataset_split_in_two_warns_and_plain_transform_fixes_it(tmp_path):
    images, labels = cifar_arrays()
    train_set, val_set = random_split(
        cifar10(images, labels, TRAIN_TF), [64, 32], generator=torch.Generator().manual_seed(1)
    )
    loaders = DataLoader(train_set, batch_size=8), DataLoader(val_set, batch_size=8)
    with pytest.warns(UserWarning, match=r"'val' images differ each time they are read .* plain_transform="):
        fit(tmp_path, InvarianceMonitor(num_samples=8, log_plots=False), *loaders)
    callback = InvarianceMonitor(num_samples=16, plain_transform=TEST_TF, log_plots=False)
    model, _ = fit(tmp_path, callback, *loaders)
    for split, subset_of in (("val", val_set), ("train", train_set)):
        where = [subset_of.indices[i] for i in callback.subsets[split].indices]
        assert_equals_raw_measurement(callback, model, split, raw(images, where), torch.as_tensor(labels[where]))
    # the checks read items under their own seeds: training randomness is what it would be without the callback
    state = torch.get_rng_state()
    InvarianceMonitor()  # nothing drawn at construction
    assert torch.equal(state, torch.get_rng_state())


def test_concat_dataset_with_transforms_v2(tmp_path):
    images, labels = cifar_arrays()
    train_tf = v2.Compose(
        [v2.ToImage(), v2.RandomCrop(SIZE, padding=2), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    )
    eval_tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    halves = (slice(0, 48), slice(48, 96))
    train = ConcatDataset([cifar10(images[h], labels[h], train_tf) for h in halves])
    val = ConcatDataset([cifar10(images[h], labels[h], eval_tf) for h in halves])
    callback = InvarianceMonitor(num_samples=20, log_plots=False)
    model, _ = fit(tmp_path, callback, DataLoader(train, batch_size=8), DataLoader(val, batch_size=8))
    for split in ("val", "train"):
        indices = callback.subsets[split].indices
        assert_equals_raw_measurement(callback, model, split, raw(images, indices), torch.as_tensor(labels[indices]))


class DictImages(Dataset):
    """A dataset returning dict items, normalizing in its own ``transform`` (as many Hugging Face-style pipelines do)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels, self.transform = images, labels, TEST_TF

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(Image.fromarray(self.images[index])), "label": int(self.labels[index])}


class DictClassifier(TutorialNet):
    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch["image"]), batch["label"]))


def test_dict_batches(tmp_path):
    images, labels = cifar_arrays()
    loader = DataLoader(DictImages(images, labels), batch_size=8)
    callback = InvarianceMonitor(num_samples=16, splits=("val",), batch_key=("image", "label"), log_plots=False)
    model, _ = fit(tmp_path, callback, loader, loader, model=DictClassifier())
    indices = callback.subsets["val"].indices
    assert_equals_raw_measurement(callback, model, "val", raw(images, indices), torch.as_tensor(labels[indices]))


class NormalizingHook(TutorialNet):
    """Normalizes raw batches in on_after_batch_transfer, which the callback skips."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, targets = batch
        return T.functional.normalize(images, MEAN, STD), targets


def test_a_normalizing_batch_hook_is_named_when_the_model_would_get_raw_images(tmp_path):
    images, labels = cifar_arrays()
    loader = DataLoader(cifar10(images, labels, T.ToTensor()), batch_size=8)
    with pytest.warns(UserWarning, match=r"on_after_batch_transfer .* pass normalize=\(mean, std\)"):
        fit(
            tmp_path,
            InvarianceMonitor(num_samples=8, splits=("val",), log_plots=False),
            loader,
            loader,
            model=NormalizingHook(),
        )


class Constant(TinyClassifier):
    def forward(self, x):
        return super().forward(x) * 0 + torch.arange(NUM_CLASSES, dtype=x.dtype)


def test_a_constant_predictor_is_not_reported_as_invariant_without_a_word(tmp_path):
    images, labels = cifar_arrays()
    loader = DataLoader(cifar10(images, labels, TEST_TF), batch_size=8)
    callback = InvarianceMonitor(num_samples=16, splits=("val",), log_plots=False)
    with pytest.warns(UserWarning, match=r"predicts class 9 \('class9'\) on 100.0% .* trivially invariant") as caught:
        trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=1, callbacks=[callback])
        trainer.fit(Constant(NUM_CLASSES), loader, loader)
    assert sum("trivially invariant" in str(w.message) for w in caught) == 1  # once, not every epoch
    assert callback.history[-1]["values"]["val/shift/flip_rate"] == 0.0


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"n0{label % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:03d}.png")


class ImageFolderClassifier(TutorialNet):
    """Lightning's ImageNet template in miniature: the module builds ImageFolder loaders from ``data_path``."""

    def __init__(self, data_path: str, batch_size: int = 8) -> None:
        super().__init__(num_classes=3)
        self.data_path, self.batch_size = data_path, batch_size

    def train_dataloader(self):
        train_tf = T.Compose(
            [
                T.RandomResizedCrop(SIZE, scale=(0.5, 1.0)),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )
        return DataLoader(ImageFolder(self.data_path, train_tf), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        val_tf = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])
        return DataLoader(ImageFolder(self.data_path, val_tf), batch_size=self.batch_size)


def test_lightning_cli_imagefolder_template(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    images, labels = cifar_arrays(48)
    write_image_folder(tmp_path / "data", images, labels)
    cli = LightningCLI(
        ImageFolderClassifier,
        run=False,
        args=[
            f"--model.data_path={tmp_path / 'data'}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=invariance_lightning.InvarianceMonitor",
            "--trainer.callbacks.num_samples=12",
            "--trainer.callbacks.log_plots=false",
        ],
    )
    cli.trainer.fit(cli.model)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, InvarianceMonitor)]
    folder = ImageFolder(tmp_path / "data")
    assert callback.class_names == folder.classes == ["n00", "n01", "n02"]
    for split in ("val", "train"):  # the train subset is read with the validation transform
        indices = callback.subsets[split].indices
        files = [np.asarray(folder[i][0]) for i in indices]
        expected = torch.from_numpy(np.stack(files)).permute(0, 3, 1, 2).float() / 255
        targets = torch.as_tensor([folder.targets[i] for i in indices])
        assert_equals_raw_measurement(callback, cli.model, split, expected, targets)


def test_report_respects_limit_test_batches_and_says_what_it_measured(tmp_path):
    images, labels = cifar_arrays()
    loader = DataLoader(cifar10(images, labels, TEST_TF), batch_size=8)
    report = InvarianceReport(sequences=sequence_preset("monitor"), output_dir=tmp_path / "report", log_plots=False)
    model = TutorialNet()
    trainer = tiny_trainer(tmp_path, limit_test_batches=2, callbacks=[report])
    trainer.test(model, loader)
    assert "16 images of the 'test' split (the first 16 at most: limit_test_batches=2)" == report.scope
    for name, sequence in report.sequences.items():
        expected = evaluate_invariance(
            model, raw(images, range(16)), torch.as_tensor(labels[:16]), sequence, normalize=(MEAN, STD)
        )
        for metric in METRICS:
            assert float(report.results[name][metric]) == pytest.approx(float(expected[metric]), abs=1e-5)
    assert "limit_test_batches=2" in (tmp_path / "report" / "invariance_report.md").read_text()


def test_plots_land_under_the_trainer_root_never_in_the_working_directory(tmp_path, monkeypatch):
    images, labels = cifar_arrays(32)
    loader = DataLoader(cifar10(images, labels, TEST_TF), batch_size=8)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    root = tmp_path / "root"
    # fast_dev_run: Lightning writes no logs or checkpoints, and no plots are written either, not even to the
    # default root directory, which is the working directory when none is given
    fit(root, InvarianceMonitor(num_samples=8, splits=("val",)), loader, loader, fast_dev_run=1, default_root_dir=None)
    fit(root, InvarianceMonitor(num_samples=8, splits=("val",)), loader, loader, logger=False)
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in (root / "invariance_plots").iterdir())  # PNGs under default_root_dir


class FrozenResNet(pl.LightningModule):
    """The released CIFAR-10 ResNet-20 in a LightningModule that trains nothing (its numbers stay the paper's)."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from invariance_lightning.models import load_cifar_resnet

        self.net = load_cifar_resnet(weights).eval()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return None  # no optimizer step and no BatchNorm update

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.shared_data
def test_real_cifar10_with_normalize_in_the_transforms_measures_the_raw_images(
    cifar10_dir, cifar_resnet_weights_dir, tmp_path
):
    """The tutorials' pipeline on the real test set and the released ResNet-20 (which expects ImageNet statistics):
    the monitor equals the raw-image measurement at the model's own accuracy, never a double normalization."""
    from invariance_lightning import ShiftSequence
    from invariance_lightning.transforms import IMAGENET_STATS

    archive = np.load(cifar10_dir / "cifar10_test.npz")
    order = np.random.default_rng(0).permutation(len(archive["labels"]))[:256]  # rows are sorted by class
    images, labels = archive["images"][order], archive["labels"][order]
    transform = T.Compose([T.ToTensor(), T.Normalize(*IMAGENET_STATS)])
    loader = DataLoader(cifar10(images, labels, transform), batch_size=64)
    sequence = ShiftSequence(max_shift=3, direction="diagonal", mode="zeros")
    callback = InvarianceMonitor({"shift": sequence}, num_samples=256, splits=("val",), log_plots=False)
    model = FrozenResNet(cifar_resnet_weights_dir / "resnet20-12fca82f.th")
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[callback])
    trainer.fit(model, loader, loader)
    values = callback.history[-1]["values"]
    pixels, targets = raw(images, range(256)), torch.as_tensor(labels)
    right = evaluate_invariance(model.net, pixels, targets, sequence, normalize=IMAGENET_STATS)
    for metric in METRICS:
        assert values[f"val/shift/{metric}"] == pytest.approx(float(right[metric]), abs=0.005), metric
    assert values["val/shift/accuracy"] > 0.85  # the released model's accuracy: the images reach it as it expects
    # what normalizing the dataset's batches a second time would give: the wrong number the callback must not log
    normalized = T.functional.normalize(pixels, *IMAGENET_STATS)
    twice = evaluate_invariance(model.net, normalized, targets, sequence, normalize=IMAGENET_STATS)
    assert float(twice["accuracy"]) < values["val/shift/accuracy"] - 0.3
