"""ImageFolderDataModule on generated image folders (always run) and on the shared Imagenette subset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, encode_png, write_file

from invariance_lightning.lightning.callbacks.base import class_names_of
from invariance_lightning.lightning.data import EncodedBatch, ImageFolderDataModule
from lightning_helpers import BatchRecorder

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every call
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# class folder -> colour; folder names are not in colour order, so labels must come from sorting the names
COLOURS = {"b_green": (30, 200, 30), "a_red": (200, 30, 30), "c_blue": (30, 30, 200)}
LABEL_OF_CHANNEL = {0: 0, 1: 1, 2: 2}  # sorted folders: a_red (channel 0), b_green (1), c_blue (2)


def _solid(colour: tuple[int, int, int], height: int, width: int) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width).contiguous()


def _make_tree(root: Path, per_class: dict[str, int]) -> Path:
    for split, count in per_class.items():
        for folder, colour in COLOURS.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = (40 + 4 * i, 56 - 2 * i)  # various sizes, both orientations of the short side
                write_file(str(root / split / folder / f"img{i}.JPEG"), encode_jpeg(_solid(colour, *size), quality=95))
    (root / "train" / "a_red" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return _make_tree(tmp_path / "folders", {"train": 6, "val": 2})


def _module(root: Path, **kwargs) -> ImageFolderDataModule:
    kwargs = {"image_size": 32, "batch_size": 4, "num_workers": 0, **kwargs}
    return ImageFolderDataModule(root, **kwargs)


def _label_from_colour(images: torch.Tensor) -> list[int]:
    return [LABEL_OF_CHANNEL[int(c)] for c in images.float().mean((2, 3)).argmax(1)]


def test_generated_folders_shapes_labels_and_classes(tree):
    (tree / "classes.json").write_text(json.dumps({"a_red": "red things", "c_blue": "blue things"}))
    dm = _module(tree)
    assert dm.class_folders == ("a_red", "b_green", "c_blue") and dm.num_classes == 3
    # one name for what the callbacks show: `classes` carries the readable names
    assert dm.classes == ("red things", "b_green", "blue things")
    assert class_names_of(SimpleNamespace(datamodule=dm)) == ["red things", "b_green", "blue things"]
    assert (dm.split_size("train"), dm.split_size("val"), dm.image_size) == (18, 6, 32)
    assert dm.mean == (0.485, 0.456, 0.406) and dm.std == (0.229, 0.224, 0.225)
    for split in ("train", "val"):
        images, labels = dm.split_arrays(split)
        assert images.dtype == torch.uint8 and images.shape == (dm.split_size(split), 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.tolist() == _label_from_colour(images)
        assert torch.bincount(labels).tolist() == [dm.split_size(split) // 3] * 3
        # solid colours survive JPEG, resizing and cropping within a few levels
        expected = torch.tensor([sorted(COLOURS.items())[label][1] for label in labels], dtype=torch.float32)
        assert (images.float().mean((2, 3)) - expected).abs().max() < 6


def test_short_side_resize_and_centre_crop(tmp_path):
    # a lossless 32x64 image: red | green (32 wide, centred) | blue; the centre crop keeps only the green
    widths = {"a_red": 16, "b_green": 32, "c_blue": 16}
    red, green, blue = (_solid(COLOURS[name], 32, width) for name, width in widths.items())
    image = torch.cat([red, green, blue], 2)
    for folder in COLOURS:
        (tmp_path / "train" / folder).mkdir(parents=True)
        write_file(str(tmp_path / "train" / folder / "wide.png"), encode_png(image))
    dm = _module(tmp_path, val_dir=None)
    images, _ = dm.split_arrays("train")
    assert torch.equal(images, _solid(COLOURS["b_green"], 32, 32).expand(3, 3, 32, 32))
    # 32x64 -> 16x32 -> centre 16 columns; the antialiasing filter (2 px wide at this scale) mixes the edge columns
    halved, _ = _module(tmp_path, val_dir=None, image_size=16).split_arrays("train")
    assert halved.shape == (3, 3, 16, 16)
    assert torch.equal(halved[..., 1:-1], _solid(COLOURS["b_green"], 16, 14).expand(3, 3, 16, 14))
    assert not torch.equal(halved[..., :1], _solid(COLOURS["b_green"], 16, 1).expand(3, 3, 16, 1))


def test_device_decoding_gives_the_worker_pixels(tree):
    write_file(str(tree / "val" / "a_red" / "extra.png"), encode_png(_solid(COLOURS["a_red"], 33, 47)))
    workers = list(_module(tree).val_dataloader())
    device_dm = _module(tree, decode="device")
    encoded = list(device_dm.val_dataloader())
    assert all(isinstance(batch, EncodedBatch) and not batch.train for batch in encoded)
    assert len(workers) == len(encoded) == 2
    for (images, labels), batch in zip(workers, encoded):
        decoded, decoded_labels = device_dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
        assert torch.equal(decoded, images) and torch.equal(decoded_labels, labels)
    plain = (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    moved = device_dm.transfer_batch_to_device(plain, torch.device("cpu"), 0)
    assert torch.equal(moved[0], plain[0])


def test_random_resized_training_crop(tree):
    dm = _module(tree, train_crop="random-resized", batch_size=18)
    train_images, train_labels = next(iter(dm.train_dataloader()))
    _eval_images, eval_labels = dm.split_arrays("train")
    order = torch.argsort(train_labels * 1000 + torch.arange(18))  # only compare colours: solid images
    assert train_images.shape == (18, 3, 32, 32) and train_images.dtype == torch.uint8
    assert train_labels[order].tolist() == sorted(eval_labels.tolist())
    assert _label_from_colour(train_images) == train_labels.tolist()
    val_images, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(val_images, dm.split_arrays("val")[0][:18])


def test_held_out_validation_and_train_subset(tree):
    def paths(dm: ImageFolderDataModule, split: str) -> list[str]:
        dm.setup()
        return [path for path, _ in dm._split_samples(split)]

    dm = _module(tree, val_dir=None, val_split=0.25, seed=3)
    assert dm.split_size("train") == 14 and dm.split_size("val") == 4
    assert set(paths(dm, "train")).isdisjoint(paths(dm, "val"))
    assert paths(_module(tree, val_dir=None, val_split=0.25, seed=3), "val") == paths(dm, "val")
    assert paths(_module(tree, val_dir=None, val_split=0.25, seed=4), "val") != paths(dm, "val")
    subset = _module(tree, train_subset=5)
    assert subset.split_size("train") == 5 and set(paths(subset, "train")) <= set(paths(_module(tree), "train"))
    assert _module(tree, val_dir=None).val_dataloader() == []


def test_missing_and_inconsistent_folders_are_reported(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="`root` .* is not a folder"):
        _module(tmp_path / "nowhere")
    missing = rf"`val_dir`='validation': no folder {tree / 'validation'}; .* has the folders \['train', 'val'\]"
    with pytest.raises(FileNotFoundError, match=missing):
        _module(tree, val_dir="validation").setup()
    with pytest.raises(ValueError, match=r"no test split; pass `test_dir`"):
        _module(tree).test_dataloader()
    (tree / "val" / "d_unknown").mkdir()
    with pytest.raises(ValueError, match=r"class folders that .*train lacks: \['d_unknown'\]"):
        _module(tree).setup()
    (tree / "val" / "d_unknown").rmdir()
    (tree / "train" / "d_empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{tree / 'train'}: .*d_empty"):
        _module(tree).setup()
    with pytest.raises(ValueError, match="give `val_dir` or `val_split`, not both"):
        _module(tree, val_split=2)
    with pytest.raises(
        ValueError, match=r"^ImageFolderDataModule: decode must be one of \('workers', 'device'\), got 'gpu'$"
    ):
        _module(tree, decode="gpu")


def test_undecodable_file_is_named(tree):
    broken = tree / "val" / "b_green" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(RuntimeError, match=f"cannot decode image file {broken}"):
        _module(tree).split_arrays("val")


@pytest.mark.parametrize(("decode", "num_workers"), [("workers", 2), ("device", 2)])
def test_trainer_fits_on_generated_folders(tree, tmp_path, decode, num_workers):
    model = BatchRecorder(num_classes=3)
    # fast_dev_run=2: two training and two validation batches, no logger or checkpoints
    trainer = pl.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _module(tree, decode=decode, num_workers=num_workers, train_crop="random-resized"))
    seen = [("train", torch.uint8, (3, 32, 32))] * 2 + [("val", torch.uint8, (3, 32, 32))] * 2
    assert trainer.global_step == 2 and sorted(model.seen) == seen


# -- the shared Imagenette subset ------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_shared_imagenette(imagenette_dir):
    dm = ImageFolderDataModule(imagenette_dir, image_size=128, batch_size=50, num_workers=0)
    assert dm.num_classes == 10 and dm.class_folders[0] == "n01440764" and dm.classes[0] == "tench"
    assert (dm.split_size("train"), dm.split_size("val")) == (1000, 500)
    images, _labels = dm.split_arrays("val", num=30, seed=1)
    assert images.shape == (30, 3, 128, 128) and images.dtype == torch.uint8
    assert torch.equal(dm.split_arrays("val", num=30, seed=1)[0], images)
    first_images, first_labels = next(iter(dm.val_dataloader()))
    assert first_labels.tolist() == [0] * 50  # folder order: the 50 tench images first
    # the 128 px images pass through unchanged: compare with an independent decode by Pillow (RGB, HWC)
    first_file = sorted((imagenette_dir / "val" / dm.class_folders[0]).glob("*.JPEG"))[0]
    pillow = torch.from_numpy(np.array(Image.open(first_file).convert("RGB"))).permute(2, 0, 1)
    assert (first_images[0].int() - pillow.int()).abs().max() <= 2
    # labels without decoding: the undecoded batches of decode="device"
    encoded = ImageFolderDataModule(imagenette_dir, batch_size=250, num_workers=0, decode="device")
    assert torch.bincount(torch.cat([b.labels for b in encoded.train_dataloader()])).tolist() == [100] * 10
