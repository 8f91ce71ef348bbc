"""CIFARDataModule on generated .npz files (always run) and on the shared CIFAR-10 (skipped without it)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from invariance_lightning.lightning.data import DATA_DIR_ENV, CIFARDataModule, TensorBatchLoader, read_cifar_npz
from invariance_lightning.locations import SHARED_DIR_ENV
from lightning_helpers import BatchRecorder

CLASSES = [f"class{i}" for i in range(10)]


def _images(first: int, n: int, labels: np.ndarray) -> np.ndarray:
    """Random images whose first pixel encodes (row index, label), so every example can be traced back."""
    images = np.random.default_rng(first).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    index = np.arange(first, first + n)
    images[:, 0, 0] = np.stack([index % 256, index // 256, labels], axis=1)
    return images


def _write(folder: Path, name: str = "cifar10", n_train: int = 200, n_test: int = 50, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, first, n in (("train", 0, n_train), ("test", 10_000, n_test)):
        labels = np.arange(n) % 10
        arrays = {"images": _images(first, n, labels), "labels": labels.astype(np.int64), "classes": np.array(CLASSES)}
        arrays.update(overrides.get(split, {}))
        np.savez(folder / f"{name}_{split}.npz", **arrays)
    return folder


def _index(images: torch.Tensor) -> torch.Tensor:
    """Row indices encoded in the first pixel of uint8 NCHW images."""
    return images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()


@pytest.fixture(autouse=True)
def _no_shared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No shared folder unless a test makes one: the real one beside the checkout holds CIFAR-10."""
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path / "no-shared-folder"))


@pytest.fixture
def npz_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return _write(tmp_path / "plain")


def test_generated_splits_shapes_and_labels(npz_dir):
    dm = CIFARDataModule(data_dir=npz_dir, download=False, val_split=40)
    dm.setup("fit")
    assert dm.source == str(npz_dir)
    assert (dm.num_classes, dm.image_size, dm.classes) == (10, 32, tuple(CLASSES))
    assert [dm.split_size(s) for s in ("train", "val", "test")] == [160, 40, 50]
    for split in ("train", "val", "test"):
        images, labels = dm.split_arrays(split)
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32) and labels.dtype == torch.int64
        assert torch.equal(images[:, 2, 0, 0].long(), labels)  # the label written into the pixel
    train_index, val_index = (_index(dm.split_arrays(s)[0]) for s in ("train", "val"))
    assert set(train_index.tolist()).isdisjoint(val_index.tolist())
    assert sorted(train_index.tolist() + val_index.tolist()) == list(range(200))
    assert _index(dm.split_arrays("test")[0]).tolist() == list(range(10_000, 10_050))  # file order


def test_val_split_reproducible_by_seed_and_fraction(npz_dir):
    def val_rows(**kwargs) -> list[int]:
        dm = CIFARDataModule(data_dir=npz_dir, download=False, **kwargs)
        return _index(dm.split_arrays("val")[0]).tolist()

    assert val_rows(val_split=30, seed=4) == val_rows(val_split=30, seed=4)
    assert val_rows(val_split=30, seed=4) != val_rows(val_split=30, seed=5)
    assert len(val_rows(val_split=0.1)) == 20
    dm = CIFARDataModule(data_dir=npz_dir, download=False, val_split=0, train_subset=25)
    assert dm.split_size("train") == 25 and dm.split_size("val") == 0 and dm.val_dataloader() == []


def test_split_arrays_subsets(npz_dir):
    dm = CIFARDataModule(data_dir=npz_dir, download=False, val_split=40)
    images, _labels = dm.split_arrays("train", num=7, seed=1)
    assert images.shape == (7, 3, 32, 32) and len(set(_index(images).tolist())) == 7
    assert torch.equal(dm.split_arrays("train", num=7, seed=1)[0], images)
    assert not torch.equal(dm.split_arrays("train", num=7, seed=2)[0], images)
    with pytest.raises(
        ValueError, match=r"the 'val' split has 40 examples\): num must be an int in \[1, 40\], got 41$"
    ):
        dm.split_arrays("val", num=41)
    with pytest.raises(TypeError, match=r"num must be an int in \[1, 40\], got float 2.0$"):
        dm.split_arrays("val", num=2.0)
    with pytest.raises(ValueError, match="^CIFARDataModule.split_arrays: split must be one of .* got 'validation'$"):
        dm.split_arrays("validation")
    with pytest.raises(ValueError, match="^CIFARDataModule.split_arrays: seed must be None or an int >= 0, got -1$"):
        dm.split_arrays("train", num=2, seed=-1)


def test_fast_and_standard_paths_yield_the_same_batches(npz_dir):
    def batches(fast_path: bool, split: str, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dm = CIFARDataModule(data_dir=npz_dir, download=False, val_split=40, batch_size=16, fast_path=fast_path)
        loader = getattr(dm, f"{split}_dataloader")()
        assert isinstance(loader, TensorBatchLoader) == fast_path
        loader.sampler.set_epoch(epoch)
        return list(loader)

    for split, epoch in (("train", 0), ("train", 1), ("val", 0), ("test", 0)):
        fast, standard = batches(True, split, epoch), batches(False, split, epoch)
        assert len(fast) == len(standard)
        for (a_images, a_labels), (b_images, b_labels) in zip(fast, standard):
            assert a_images.dtype == b_images.dtype == torch.uint8
            assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert _index(batches(True, "train", 0)[0][0]).tolist() != _index(batches(True, "train", 1)[0][0]).tolist()


@pytest.mark.parametrize("layout", [".", "cifar10", "data/cifar10"])
def test_found_through_the_environment_variable(tmp_path, monkeypatch, layout):
    _write(tmp_path / "root" / layout)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "root"))
    dm = CIFARDataModule(download=False, val_split=0)
    assert dm.split_size("train") == 200 and dm.source == str(tmp_path / "root" / layout)


def test_data_dir_comes_before_the_environment_variable(tmp_path, monkeypatch):
    _write(tmp_path / "env", n_train=120)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert CIFARDataModule(data_dir=_write(tmp_path / "arg"), download=False, val_split=0).split_size("train") == 200


def test_without_a_folder_or_the_variable_the_shared_folders_data_is_used_after_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    _write(tmp_path / "shared" / "data" / "cifar10", n_train=130)
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path / "shared"))
    dm = CIFARDataModule(download=False, val_split=0)
    assert dm.split_size("train") == 130 and dm.source == str(tmp_path / "shared" / "data" / "cifar10")
    _write(tmp_path / "env", n_train=120)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert CIFARDataModule(download=False, val_split=0).split_size("train") == 120


def test_missing_data_error_lists_places_and_fixes(tmp_path, monkeypatch):
    _write(tmp_path / "env" / "cifar10", n_train=10)
    (tmp_path / "env" / "cifar10" / "cifar10_test.npz").unlink()
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    dm = CIFARDataModule(data_dir=tmp_path / "arg", download=False)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    for folder in ("arg", "arg/cifar10", "arg/data/cifar10", "env", "env/cifar10", "env/data/cifar10"):
        assert f"{tmp_path / folder}  [" in message
    assert "has only cifar10_train.npz" in message
    assert "download=False" in message and "download=True" in message and DATA_DIR_ENV in message


def test_download_failure_is_reported_with_the_fixes(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    class Offline:
        base_folder = "cifar-10-batches-py"

        def __init__(self, root, train, download):
            raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("invariance_lightning.lightning.data.cifar._TORCHVISION", {"cifar10": Offline})
    dm = CIFARDataModule(data_dir=tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="download failed.*Name or service not known") as info:
        dm.prepare_data()
    assert "download=True on a machine with internet access" in str(info.value)


def test_downloaded_torchvision_copy_is_converted(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    calls = []

    class Downloaded:
        base_folder = "cifar-10-batches-py"

        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 30 if train else 12
            self.targets = [i % 10 for i in range(n)]
            self.data = _images(0 if train else 10_000, n, np.array(self.targets))
            self.classes = CLASSES

    monkeypatch.setattr("invariance_lightning.lightning.data.cifar._TORCHVISION", {"cifar10": Downloaded})
    dm = CIFARDataModule(data_dir=tmp_path, download=True, val_split=5)
    dm.setup()
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert [dm.split_size(s) for s in ("train", "val", "test")] == [25, 5, 12]
    images, labels = dm.split_arrays("test")
    assert _index(images).tolist() == list(range(10_000, 10_012)) and labels.tolist() == [i % 10 for i in range(12)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"images": np.zeros((200, 32, 32, 3), np.float32)}, r"key 'images' must be uint8 \(N, 32, 32, 3\).*float32"),
        ({"images": np.zeros((200, 3, 32, 32), np.uint8)}, r"key 'images' must be uint8 .*\(200, 3, 32, 32\)"),
        ({"labels": np.zeros(199, np.int64)}, "key 'labels' length mismatch: 199 labels for 200 images"),
        ({"labels": np.full(200, 10)}, r"key 'labels' out of range: values span \[10, 10\], expected 0..9"),
        ({"labels": np.zeros(200, np.float32)}, "key 'labels' must be integers"),
        ({"classes": np.array(CLASSES[:3])}, "key 'classes' must name 10 classes, got 3"),
    ],
)
def test_corrupt_arrays_name_the_file_and_key(tmp_path, override, message):
    folder = _write(tmp_path, train=override)
    with pytest.raises(ValueError, match=message) as info:
        CIFARDataModule(data_dir=folder, download=False).setup()
    assert str(folder / "cifar10_train.npz") in str(info.value)


def test_unreadable_files_are_named(tmp_path):
    path = tmp_path / "cifar10_train.npz"
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match=f"{path}: not an .npz archive"):
        read_cifar_npz(path, 10)
    np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=f"{path}: unreadable .npz archive"):
        read_cifar_npz(path, 10)
    np.savez(path, pictures=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['images', 'labels'\].*\['pictures'\]"):
        read_cifar_npz(path, 10)


def test_bad_arguments_are_rejected_early():
    with pytest.raises(ValueError, match="^CIFARDataModule: name must be one of .* got 'cifar1000'$"):
        CIFARDataModule(name="cifar1000")
    with pytest.raises(ValueError, match="^CIFARDataModule: batch_size must be an int >= 1, got 0$"):
        CIFARDataModule(batch_size=0)
    with pytest.raises(TypeError, match="^CIFARDataModule: num_workers must be an int >= 0, got str '2'$"):
        CIFARDataModule(num_workers="2")
    with pytest.raises(ValueError, match="^CIFARDataModule: train_subset must be None or an int >= 1, got 0$"):
        CIFARDataModule(train_subset=0)
    with pytest.raises(TypeError, match="`val_split` must be an int count or a float fraction"):
        CIFARDataModule(val_split="10%")


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.mark.parametrize("fast_path", [True, False])
def test_trainer_fits_on_generated_data(npz_dir, fast_path):
    model = BatchRecorder()
    dm = CIFARDataModule(data_dir=npz_dir, download=False, val_split=40, batch_size=16, fast_path=fast_path)
    trainer = _trainer()
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    assert model.seen == [("train", torch.uint8, (3, 32, 32))] * 2 + [("val", torch.uint8, (3, 32, 32))]


# -- the shared CIFAR-10 -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_cifar(cifar10_dir) -> CIFARDataModule:
    dm = CIFARDataModule(data_dir=cifar10_dir, download=False, val_split=5000, seed=0)
    dm.setup()
    return dm


@pytest.mark.shared_data
def test_shared_cifar10_splits(shared_cifar, cifar10_dir):
    assert shared_cifar.classes[:3] == ("airplane", "automobile", "bird")
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        shared_cifar.split_arrays(s) for s in ("train", "val", "test")
    )
    assert train_x.shape == (45000, 3, 32, 32) and val_x.shape == (5000, 3, 32, 32) and test_x.dtype == torch.uint8
    assert (torch.bincount(torch.cat([train_y, val_y])) == 5000).all()
    assert (torch.bincount(test_y) == 1000).all()
    with np.load(cifar10_dir / "cifar10_test.npz") as test:  # the official test set, in file order
        assert torch.equal(test_x, torch.from_numpy(test["images"]).permute(0, 3, 1, 2))
        assert torch.equal(test_y, torch.from_numpy(test["labels"]))
    same_seed = CIFARDataModule(data_dir=cifar10_dir, download=False, val_split=5000, seed=0, train_subset=10)
    assert torch.equal(same_seed.split_arrays("val")[0], val_x)


@pytest.mark.shared_data
def test_shared_cifar10_statistics_match_the_constants(shared_cifar):
    # exact population statistics of all 50,000 training images from per-channel histograms of the 256 values
    histogram = torch.zeros(3, 256, dtype=torch.float64)
    for split in ("train", "val"):
        for chunk in shared_cifar.split_arrays(split)[0].split(5000):
            for channel in range(3):
                histogram[channel] += torch.bincount(chunk[:, channel].flatten(), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255
    count = histogram.sum(1)
    mean = (histogram * values).sum(1) / count
    std = ((histogram * (values - mean[:, None]) ** 2).sum(1) / count).sqrt()
    assert count.tolist() == [50000 * 32 * 32] * 3
    assert mean.tolist() == pytest.approx(shared_cifar.mean, abs=1e-4)
    assert std.tolist() == pytest.approx(shared_cifar.std, abs=1e-4)


@pytest.mark.shared_data
def test_shared_cifar10_fast_and_standard_path_agree(shared_cifar, cifar10_dir):
    standard = CIFARDataModule(data_dir=cifar10_dir, download=False, seed=0, fast_path=False).val_dataloader()
    fast_batch, standard_batch = next(iter(shared_cifar.val_dataloader())), next(iter(standard))
    assert torch.equal(fast_batch[0], standard_batch[0]) and torch.equal(fast_batch[1], standard_batch[1])
    assert torch.equal(standard.dataset[7][0], shared_cifar.split_arrays("val")[0][7])
