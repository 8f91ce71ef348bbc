"""ImageNet-style class folders (Imagenette, ImageNet-100, your own data) decoded to uint8 batches.

Layout: ``<root>/<train_dir>/<class>/<image>`` and the same for ``val_dir`` / ``test_dir``; labels follow the sorted
class folder names of the training folder (torchvision's ``ImageFolder`` convention). An optional
``<root>/classes.json`` (``{"<folder>": "<readable name>"}``) gives readable :attr:`ImageFolderDataModule.classes`
(what the callbacks label their figures with); :attr:`ImageFolderDataModule.class_folders` keeps the folder names.

Every image is decoded by ``torchvision.io`` to uint8 RGB and brought to ``image_size`` x ``image_size``:

- evaluation (and un-augmented training): resize the short side to ``resize_size`` (antialiased), centre-crop;
- training with ``train_crop="random-resized"``: ``RandomResizedCrop`` + horizontal flip, the usual ImageNet recipe.
  The default ``"center"`` leaves all augmentation to the GPU presets of ``invariance_lightning.augment``, so the
  augmentation under study is the only one.

Decoding happens in ``DataLoader`` workers (``decode="workers"``), or, with ``decode="device"``, on the training
device at batch transfer: the workers then only read file bytes and the datamodule's ``transfer_batch_to_device``
decodes the whole batch with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``) when that device is a GPU,
frees the CPU workers for reading, and crops/resizes there too. Non-JPEG files in such a batch are decoded on the CPU.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2

from invariance_lightning.lightning.data.base import ImageClassificationDataModule, holdout_split
from invariance_lightning.transforms.normalization import IMAGENET_STATS
from invariance_lightning.validation import check_choice, check_int, check_optional_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "EncodedBatch",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "decode_encoded_batch",
]

#: File endings (any case) taken as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")

Transform = Callable[[torch.Tensor], torch.Tensor]


class EncodedBatch(NamedTuple):
    """A batch of undecoded files (``decode="device"``): the bytes of all files concatenated in ``data`` (1-D
    uint8, CPU), file ``i`` being ``data[offsets[i]:offsets[i + 1]]``; int64 ``labels``, the files' ``paths`` and
    whether it is a ``train`` batch (which picks the crop).

    One tensor per batch rather than one per file: a worker shares every tensor it returns through its own file
    descriptor, and a batch of dozens of small tensors stalled the DataLoader here (torch 2.14, Linux).
    """

    data: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    train: bool

    def files(self) -> list[torch.Tensor]:
        """The encoded files, as views of ``data``."""
        bounds = self.offsets.tolist()
        return [self.data[start:end] for start, end in itertools.pairwise(bounds)]


def _decode_rgb(data: torch.Tensor, path: str) -> torch.Tensor:
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise RuntimeError(f"cannot decode image file {path}: {err}") from err


class ImageFileDataset(Dataset[tuple[Any, int]]):
    """Items ``(transform(uint8 (3, H, W) image), label)`` of ``samples`` ``[(path, label), ...]``, or, with
    ``decode=False``, ``(file bytes, label, path)`` for :func:`collate_encoded`."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Transform | None = None, decode: bool = True):
        self.samples = samples
        self.transform = transform
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        path, label = self.samples[index]
        data = read_file(path)
        if not self.decode:
            return data, label, path
        image = _decode_rgb(data, path)
        return (image if self.transform is None else self.transform(image)), label


def collate_encoded(items: list[tuple[torch.Tensor, int, str]], train: bool) -> EncodedBatch:
    """Collate ``ImageFileDataset(decode=False)`` items into an :class:`EncodedBatch`."""
    sizes = torch.tensor([0] + [data.numel() for data, _, _ in items])
    return EncodedBatch(
        torch.cat([data for data, _, _ in items]),
        torch.cumsum(sizes, 0),
        torch.tensor([label for _, label, _ in items]),
        [path for _, _, path in items],
        train,
    )


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() >= 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_encoded_batch(
    batch: EncodedBatch, device: torch.device, transform: Transform
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``batch`` on ``device`` (nvJPEG for JPEGs when it is a CUDA device), ``transform`` each image there,
    and return ``(uint8 (N, 3, S, S), labels)`` on ``device``."""
    files = batch.files()
    images: list[torch.Tensor] = [torch.empty(0)] * len(files)
    on_cuda = [i for i, data in enumerate(files) if device.type == "cuda" and _is_jpeg(data)]
    if on_cuda:
        decoded = decode_jpeg([files[i] for i in on_cuda], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(on_cuda, decoded):
            images[i] = image
    for i in sorted(set(range(len(files))) - set(on_cuda)):
        images[i] = _decode_rgb(files[i], batch.paths[i]).to(device)
    return torch.stack([transform(image) for image in images]), batch.labels.to(device)


def default_num_workers() -> int:
    """Worker processes by default: the usable CPU cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cores)


class ImageFolderDataModule(ImageClassificationDataModule):
    """Class folders of images served as uint8 ``(N, 3, image_size, image_size)`` batches with int64 labels.

    See the module docstring for the layout, the crops and where decoding happens. Held-out validation examples
    (``val_dir=None``, ``val_split>0``) come in a seeded random order, folder splits in folder order.

    Args:
        root: folder holding the split folders.
        image_size: side of the square images in batches.
        batch_size, num_workers, seed, drop_last, pin_memory: see :class:`ImageClassificationDataModule`;
            ``num_workers`` defaults to :func:`default_num_workers`.
        train_dir, val_dir, test_dir: split folders under ``root``; ``val_dir``/``test_dir`` may be None.
        val_split: with ``val_dir=None``, examples (int) or fraction (float) of ``train_dir`` held out for
            validation; must stay 0 when ``val_dir`` is given.
        resize_size: short side before the centre crop (default ``image_size``; ImageNet's usual is
            ``image_size / 0.875``).
        train_crop: ``"center"`` (evaluation crop, augmentation left to the GPU presets) or ``"random-resized"``.
        decode: ``"workers"`` or ``"device"`` (see the module docstring).
        train_subset: keep only this many (random, seeded) training examples.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 128,
        batch_size: int = 64,
        num_workers: int | None = None,
        train_dir: str = "train",
        val_dir: str | None = "val",
        test_dir: str | None = None,
        *,
        val_split: int | float = 0,
        resize_size: int | None = None,
        train_crop: str = "center",
        decode: str = "workers",
        seed: int = 0,
        train_subset: int | None = None,
        drop_last: bool = False,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=default_num_workers() if num_workers is None else num_workers,
            seed=seed,
            drop_last=drop_last,
            pin_memory=pin_memory,
        )
        owner = "ImageFolderDataModule"
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"{owner}: `root` must be a path, got {type(root).__name__}")
        if not Path(root).is_dir():
            raise FileNotFoundError(
                f"{owner}: `root` {str(root)!r} is not a folder; expected <root>/{train_dir}/<class>/<images>"
            )
        check_int(owner, "image_size", image_size, 1)
        check_optional_int(owner, "resize_size", resize_size, image_size)
        check_optional_int(owner, "train_subset", train_subset, 1)
        check_choice(owner, "train_crop", train_crop, ("center", "random-resized"))
        check_choice(owner, "decode", decode, ("workers", "device"))
        if val_dir is not None and val_split != 0:
            raise ValueError(f"{owner}: give `val_dir` or `val_split`, not both (got {val_dir!r} and {val_split!r})")
        self.save_hyperparameters()
        self.root = Path(root)
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir
        self.val_split = val_split
        self.train_subset = train_subset
        self.train_crop = train_crop
        self.decode = decode
        self._image_size = image_size
        self.mean, self.std = IMAGENET_STATS
        self.eval_transform = v2.Compose(
            [v2.Resize(resize_size or image_size, antialias=True), v2.CenterCrop(image_size)]
        )
        self.train_transform = (
            v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])
            if train_crop == "random-resized"
            else self.eval_transform
        )
        self._samples: dict[str, list[tuple[str, int]]] | None = None
        self._class_folders: tuple[str, ...] = ()
        self._classes: tuple[str, ...] = ()

    # -- metadata ------------------------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed by label: the readable name from ``<root>/classes.json`` where it names a folder,
        else the folder name."""
        self._scan()
        return self._classes

    @property
    def class_folders(self) -> tuple[str, ...]:
        """Class folder names, indexed by label (sorted, as torchvision's ``ImageFolder``)."""
        self._scan()
        return self._class_folders

    def _readable_names(self, folders: tuple[str, ...]) -> tuple[str, ...]:
        path = self.root / "classes.json"
        if not path.is_file():
            return folders
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read it as JSON ({err})") from err
        if not isinstance(names, dict):
            raise ValueError(f"{path}: expected an object mapping class folder to name, got {type(names).__name__}")
        return tuple(str(names.get(folder, folder)) for folder in folders)

    @property
    def image_size(self) -> int:
        return self._image_size

    def split_size(self, split: str) -> int:
        return len(self._split_samples(split))

    # -- scanning ------------------------------------------------------------------------------------------------
    def _folder(self, name: str, argument: str) -> Path:
        path = self.root / name
        if not path.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"ImageFolderDataModule: `{argument}`={name!r}: no folder {path}; {self.root} has the folders "
                f"{present}. Expected {path}/<class>/<image files>, or set `{argument}`."
            )
        return path

    def _scan_folder(self, name: str, argument: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        folder = self._folder(name, argument)
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in class_to_idx)
        if unknown:
            raise ValueError(
                f"ImageFolderDataModule: {folder} has class folders that {self.root / self.train_dir} lacks: {unknown}"
            )
        samples = make_dataset(folder, class_to_idx, IMAGE_EXTENSIONS, allow_empty=True)
        if not samples:
            raise FileNotFoundError(
                f"ImageFolderDataModule: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}"
            )
        return samples

    def _scan(self) -> None:
        if self._samples is not None:
            return
        train_folder = self._folder(self.train_dir, "train_dir")
        try:
            classes, class_to_idx = find_classes(train_folder)
            train = make_dataset(train_folder, class_to_idx, IMAGE_EXTENSIONS)
        except FileNotFoundError as err:  # no class folders, or a class folder without images
            raise FileNotFoundError(f"ImageFolderDataModule: {train_folder}: {err}") from err
        if self.val_dir is None:
            try:
                train_index, val_index = holdout_split(len(train), self.val_split, self.seed)
            except ValueError as err:
                raise ValueError(f"ImageFolderDataModule: {err}") from err
            val = [train[i] for i in val_index.tolist()]
            train = [train[i] for i in train_index.tolist()]
        else:
            val = self._scan_folder(self.val_dir, "val_dir", class_to_idx)
        if self.train_subset is not None:
            if self.train_subset > len(train):
                raise ValueError(
                    f"ImageFolderDataModule: `train_subset` must be at most the {len(train)} training images, "
                    f"got {self.train_subset}"
                )
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
            train = [train[i] for i in order[: self.train_subset].tolist()]
        self._samples = {"train": train, "val": val}
        if self.test_dir is not None:
            self._samples["test"] = self._scan_folder(self.test_dir, "test_dir", class_to_idx)
        self._class_folders = tuple(classes)
        self._classes = self._readable_names(self._class_folders)

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders (idempotent)."""
        self._scan()

    def _split_samples(self, split: str) -> list[tuple[str, int]]:
        self._scan()
        assert self._samples is not None
        if split == "test" and "test" not in self._samples:
            raise ValueError("ImageFolderDataModule: no test split; pass `test_dir` (a folder under `root`)")
        return self._samples[split]

    def _gather(self, split: str, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self._split_samples(split)
        if indices is not None:
            samples = [samples[i] for i in indices.tolist()]
        if not samples:
            size = self._image_size
            return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        loader = DataLoader(
            ImageFileDataset(samples, self.eval_transform), batch_size=self.batch_size, num_workers=self.num_workers
        )
        images, labels = zip(*loader)
        return torch.cat(images), torch.cat(labels)

    # -- loaders -------------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> Any:
        samples = self._split_samples(split)
        if not samples:
            return []  # no validation split: Lightning skips validation
        if self.decode == "device":
            return self._dataloader(
                ImageFileDataset(samples, decode=False),
                train=train,
                pin_memory=False,  # decode_jpeg reads the bytes from (pageable) CPU memory
                collate_fn=functools.partial(collate_encoded, train=train),
            )
        transform = self.train_transform if train else self.eval_transform
        return self._dataloader(ImageFileDataset(samples, transform), train=train)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Decode :class:`EncodedBatch` batches on ``device`` (``decode="device"``); move others as usual.

        Lightning prefers a datamodule's override of this hook to one in the LightningModule.
        """
        if isinstance(batch, EncodedBatch):
            return decode_encoded_batch(batch, device, self.train_transform if batch.train else self.eval_transform)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
