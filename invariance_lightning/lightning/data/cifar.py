"""CIFAR-10/100 as in-memory uint8 tensors: finding the data, checking it, and serving it to Lightning.

Where the data comes from, in this order:

1. a local pair ``{name}_train.npz`` / ``{name}_test.npz`` (``images`` uint8 ``(N, 32, 32, 3)`` RGB HWC, ``labels``
   int ``(N,)``, optional ``classes`` str ``(K,)``) in ``data_dir``, then in ``$INVARIANCE_DATA_DIR`` and the
   shared folder's ``data/`` (:func:`invariance_lightning.locations.data_search_roots`), each searched as
   ``<dir>/``, ``<dir>/<name>/`` and ``<dir>/data/<name>/`` (so pointing at the project's shared folder works);
2. torchvision's copy (``cifar-10-batches-py/`` or ``cifar-100-python/``) under the download root (``data_dir``,
   else ``$INVARIANCE_DATA_DIR``, else :func:`invariance_lightning.locations.cache_dir`), downloaded there first if
   ``download``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision

from invariance_lightning.lightning.data.base import ImageClassificationDataModule, holdout_split
from invariance_lightning.lightning.data.loader import TensorBatchLoader, TensorImageDataset
from invariance_lightning.locations import DATA_DIR_ENV, SHARED_DIR_ENV, cache_dir, data_search_roots, env_data_dir
from invariance_lightning.transforms.normalization import CIFAR_STATS
from invariance_lightning.validation import check_choice, check_optional_int

__all__ = [
    "CIFAR_NUM_CLASSES",
    "DATA_DIR_ENV",
    "CIFARArrays",
    "CIFARDataModule",
    "check_cifar_arrays",
    "read_cifar_npz",
]


#: Classes of each CIFAR dataset, by name.
CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_TORCHVISION = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)


class CIFARArrays(NamedTuple):
    """One checked split: ``images`` uint8 ``(N, 32, 32, 3)``, ``labels`` int64 ``(N,)``, class names or None."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...] | None


def check_cifar_arrays(images: Any, labels: Any, classes: Any, num_classes: int, source: str) -> CIFARArrays:
    """Check one split's arrays and return them as :class:`CIFARArrays`; ``ValueError`` naming ``source`` and the
    offending key otherwise."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{source}: key 'images' must be uint8 (N, 32, 32, 3) (RGB, HWC), got {got}")
    if len(images) == 0:
        raise ValueError(f"{source}: key 'images' holds no images")
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        got = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ValueError(f"{source}: key 'labels' must be integers of shape (N,), got {got}")
    if len(labels) != len(images):
        raise ValueError(f"{source}: key 'labels' length mismatch: {len(labels)} labels for {len(images)} images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{source}: key 'labels' out of range: values span [{low}, {high}], expected 0..{num_classes - 1} "
            f"for {num_classes} classes"
        )
    if classes is not None:
        classes = tuple(str(c) for c in np.asarray(classes).reshape(-1))
        if len(classes) != num_classes:
            raise ValueError(f"{source}: key 'classes' must name {num_classes} classes, got {len(classes)}")
    return CIFARArrays(images, labels.astype(np.int64, copy=False), classes)


def read_cifar_npz(path: str | os.PathLike[str], num_classes: int) -> CIFARArrays:
    """Read and check a CIFAR ``.npz`` split (keys ``images``, ``labels``, optional ``classes``)."""
    path = Path(path)
    with path.open("rb") as file:
        if file.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # .npz files are zip archives
            raise ValueError(f"{path}: not an .npz archive (no zip header); replace it with a good copy")
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ValueError(
            f"{path}: unreadable .npz archive ({type(err).__name__}: {err}); replace it with a good copy"
        ) from err
    with archive:
        missing = [key for key in ("images", "labels") if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}; the archive has keys {archive.files}")
        arrays = {}
        for key in ("images", "labels", "classes"):
            if key in archive.files:
                try:
                    arrays[key] = archive[key]
                except _READ_ERRORS as err:
                    raise ValueError(f"{path}: cannot read key {key!r} ({type(err).__name__}: {err})") from err
    return check_cifar_arrays(arrays["images"], arrays["labels"], arrays.get("classes"), num_classes, str(path))


class CIFARDataModule(ImageClassificationDataModule):
    """CIFAR-10 or CIFAR-100, held in memory, batches of uint8 ``(N, 3, 32, 32)`` images and int64 labels.

    See the module docstring for where the data is found. ``val_split`` examples of the training set are held out
    for validation (drawn with ``seed``); ``test`` is the official 10,000-image test set, in file order.

    Two loading paths yield the same batches for the same seed (:mod:`invariance_lightning.lightning.data.loader`):

    - ``fast_path=True``: a :class:`TensorBatchLoader` cuts batches by indexing the split's tensor. With
      ``move_to_device`` and a trainer attached, each split is first copied once to the trainer's device (150 MB
      for CIFAR's training set), so batches are made there and Lightning's per-batch copy is a no-op.
      ``num_workers`` and ``pin_memory`` are unused.
    - ``fast_path=False``: a :class:`TensorImageDataset` in a ``DataLoader`` with ``num_workers`` workers and
      pinned memory (by default when training on CUDA): the usual per-example pipeline, kept as the baseline.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: folder with the ``.npz`` files (or their ``<name>/``, ``data/<name>/`` subfolders); also the
            download root. Defaults to ``$INVARIANCE_DATA_DIR``, then the shared folder (module docstring).
        download: let torchvision download the data when no local copy is found.
        val_split: held-out validation examples, an int count or a float fraction in ``[0, 1)``; 0 for none.
        batch_size, num_workers, seed, drop_last, pin_memory: see :class:`ImageClassificationDataModule`.
        fast_path: use the in-memory tensor loader (see above).
        train_subset: keep only this many (random, seeded) training examples, for quick runs.
        move_to_device: on the fast path, keep the splits on the trainer's device.
    """

    name: str  # LightningDataModule declares it Optional; here it is always one of the dataset names

    def __init__(
        self,
        name: str = "cifar10",
        data_dir: str | os.PathLike[str] | None = None,
        download: bool = True,
        val_split: int | float = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        fast_path: bool = True,
        seed: int = 0,
        train_subset: int | None = None,
        *,
        drop_last: bool = False,
        move_to_device: bool = True,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, drop_last=drop_last, pin_memory=pin_memory
        )
        check_choice("CIFARDataModule", "name", name, tuple(CIFAR_NUM_CLASSES))
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"CIFARDataModule: `data_dir` must be a path or None, got {type(data_dir).__name__}")
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
            raise TypeError(
                f"CIFARDataModule: `val_split` must be an int count or a float fraction, got {type(val_split).__name__}"
            )
        check_optional_int("CIFARDataModule", "train_subset", train_subset, 1)
        self.save_hyperparameters()
        self.name = name
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.download = download
        self.val_split = val_split
        self.fast_path = fast_path
        self.train_subset = train_subset
        self.move_to_device = move_to_device
        self.mean, self.std = CIFAR_STATS[name]
        self._num_classes = CIFAR_NUM_CLASSES[name]
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._classes: tuple[str, ...] = ()
        self._device_splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        #: Where the data was read from, once loaded.
        self.source: str | None = None

    # -- metadata ------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def classes(self) -> tuple[str, ...]:
        self._load()
        return self._classes

    @property
    def image_size(self) -> int:
        return 32

    def split_size(self, split: str) -> int:
        return len(self._split(split)[1])

    # -- finding and reading -------------------------------------------------------------------------------------
    def search_dirs(self) -> list[tuple[Path, str]]:
        """Folders searched for the ``.npz`` pair, in order, each with the setting it came from."""
        roots = [(self.data_dir, "data_dir")] if self.data_dir is not None else []
        roots += data_search_roots()
        return [
            (folder, origin) for root, origin in roots for folder in (root, root / self.name, root / "data" / self.name)
        ]

    def download_root(self) -> Path:
        """Where torchvision's copy is looked for and downloaded to."""
        if self.data_dir is not None:
            return self.data_dir
        return env_data_dir() or cache_dir()

    def _npz_pair(self, folder: Path) -> tuple[Path, Path]:
        return folder / f"{self.name}_train.npz", folder / f"{self.name}_test.npz"

    def _find_npz(self) -> tuple[Path, Path] | None:
        for folder, _ in self.search_dirs():
            train, test = self._npz_pair(folder)
            if train.is_file() and test.is_file():
                return train, test
        return None

    def _torchvision_arrays(self) -> tuple[CIFARArrays, CIFARArrays]:
        """torchvision's copy under :meth:`download_root`, downloaded first if missing and ``download``; the
        "no data found" error if that fails too."""
        root = self.download_root()
        dataset_class = _TORCHVISION[self.name]
        splits = []
        for train in (True, False):
            try:
                dataset = dataset_class(str(root), train=train, download=self.download)
            except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found or corrupted"; URLError: offline
                raise self._missing_error(err) from err
            source = f"torchvision {dataset_class.__name__} in {root}"
            splits.append(
                check_cifar_arrays(
                    dataset.data, np.asarray(dataset.targets), dataset.classes, self._num_classes, source
                )
            )
        return splits[0], splits[1]

    def _missing_error(self, error: Exception) -> FileNotFoundError:
        train_name, test_name = (path.name for path in self._npz_pair(Path()))
        lines = [f"{self.name}: no data found. Looked for {train_name} and {test_name} in:"]
        for folder, origin in self.search_dirs():
            present = [path.name for path in self._npz_pair(folder) if path.is_file()]
            lines.append(f"  - {folder}  [{origin}]" + (f" (has only {present[0]})" if present else ""))
        if not self.search_dirs():
            lines.append(f"  - nowhere: neither `data_dir` nor ${DATA_DIR_ENV} is set, and there is no shared folder")
        folder = _TORCHVISION[self.name].base_folder
        attempt = f"download failed: {error}" if self.download else f"not there, and download=False ({error})"
        lines += [
            f"and for torchvision's {folder}/ in {self.download_root()}: {attempt}",
            "Fix it either way:",
            f"  1. download=True on a machine with internet access (torchvision saves it in {self.download_root()});",
            f"  2. point `data_dir`, the environment variable {DATA_DIR_ENV} or {SHARED_DIR_ENV} (the shared folder "
            "holding data/<name>/) at a local copy: a folder holding "
            f"{train_name} and {test_name}, or its {self.name}/ or data/{self.name}/ subfolder.",
        ]
        return FileNotFoundError("\n".join(lines))

    def _read(self) -> tuple[CIFARArrays, CIFARArrays]:
        found = self._find_npz()
        if found is not None:
            self.source = str(found[0].parent)
            train, test = (read_cifar_npz(path, self._num_classes) for path in found)
            if train.classes and test.classes and train.classes != test.classes:
                raise ValueError(f"{found[1]}: key 'classes' differs from the one in {found[0]}")
            return train, test
        arrays = self._torchvision_arrays()
        self.source = str(self.download_root())
        return arrays

    def prepare_data(self) -> None:
        """Download through torchvision if there is no local copy (Lightning runs this on one process per node)."""
        if self._find_npz() is None:
            self._torchvision_arrays()

    def setup(self, stage: str | None = None) -> None:
        """Load the arrays and draw the validation hold-out (idempotent)."""
        self._load()

    def _load(self) -> None:
        if self._splits is not None:
            return
        train, test = self._read()
        try:
            train_index, val_index = holdout_split(len(train.labels), self.val_split, self.seed)
        except ValueError as err:
            raise ValueError(f"CIFARDataModule: {err}") from err
        if self.train_subset is not None:
            if self.train_subset > len(train_index):
                raise ValueError(
                    f"CIFARDataModule: `train_subset` must be at most the {len(train_index)} training examples "
                    f"left after the hold-out, got {self.train_subset}"
                )
            train_index = train_index[: self.train_subset]
        train_images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
        train_labels = torch.from_numpy(train.labels)
        self._splits = {
            split: (train_images[index].contiguous(), train_labels[index].clone())
            for split, index in (("train", train_index), ("val", val_index))
        }
        self._splits["test"] = (
            torch.from_numpy(test.images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(test.labels).clone(),
        )
        self._classes = train.classes or test.classes or tuple(str(i) for i in range(self._num_classes))

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._load()
        assert self._splits is not None
        return self._splits[split]

    def _gather(self, split: str, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._split(split)
        if indices is None:
            return images.clone(), labels.clone()
        return images[indices], labels[indices]

    # -- loaders -------------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> Any:
        images, labels = self._split(split)
        if len(labels) == 0:
            return []  # no validation split (val_split=0): Lightning skips validation
        if not self.fast_path:
            return self._dataloader(TensorImageDataset(images, labels), train=train)
        device = self._trainer_device()
        if self.move_to_device and device is not None:
            if split not in self._device_splits or self._device_splits[split][0].device != device:
                self._device_splits[split] = (images.to(device), labels.to(device))
            images, labels = self._device_splits[split]
        return TensorBatchLoader(
            images,
            labels,
            self.batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            **self._sampler_kwargs(),
        )
