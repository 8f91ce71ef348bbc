"""The common interface of transform sequences: T deterministic geometric frames of an image batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from invariance_lightning.transforms.functional import embed_in_canvas, embedded_size
from invariance_lightning.validation import check_choice, check_images, check_number, check_size


def check_crop_size(owner: str, crop_size: int | tuple[int, int] | None, mode: str) -> tuple[int, int] | None:
    """Validate ``crop_size`` (only meaningful in ``"crop"`` mode) as an ``(height, width)`` pair."""
    if crop_size is None:
        return None
    if mode != "crop":
        raise ValueError(
            f"{owner}: crop_size is only used with mode='crop', got crop_size={crop_size!r} with mode={mode!r}"
        )
    return check_size(owner, "crop_size", crop_size)


class TransformSequence(ABC):
    """An ordered list of ``T`` deterministic geometric transforms ("frames") of an image batch.

    Frames are ordered and no frame is special: the metrics compare consecutive frames (flip rate, MAC, top-k
    distance) and all pairs (consistency). ``frame(images, t)`` maps a float batch ``(N, C, H, W)`` to the
    transformed batch ``(N, C, H', W')``; ``H' == H`` except in ``"crop"`` mode. With ``embed``,
    each image is first shrunk (antialiased) to that fraction of its size and centred on a canvas
    of ``fill`` of the original size (the paper's "black background" protocol). ``fill`` must be a
    finite number.
    """

    modes: tuple[str, ...] = ()
    axis_label: str = "frame"

    def __init__(self, mode: str, fill: float, embed: float | None) -> None:
        owner = type(self).__name__
        self.mode = check_choice(owner, "mode", mode, self.modes)
        # a NaN or infinite fill would turn whole frames into NaN
        self.fill = check_number(owner, "fill", fill)
        # embed: the object's size as a fraction of the canvas
        self.embed = None if embed is None else check_number(owner, "embed", embed, low=0, high=1, strict=True)

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames T."""

    @property
    @abstractmethod
    def frame_values(self) -> list[float]:
        """One number per frame for plotting (shift in px, scale factor, or frame index)."""

    @property
    @abstractmethod
    def frame_labels(self) -> list[str]:
        """One short human-readable label per frame."""

    @abstractmethod
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Frame size for inputs of ``height`` x ``width``; raises ValueError if the sequence does not fit."""

    @abstractmethod
    def _transform(self, images: Tensor, index: int) -> Tensor:
        """Apply frame ``index`` to an already embedded, validated batch."""

    @abstractmethod
    def _repr_args(self) -> dict[str, Any]:
        """Constructor arguments shown by ``repr``."""

    def frame(self, images: Tensor, index: int) -> Tensor:
        """Frame ``index`` (0 <= index < T) of the float batch ``images`` (N, C, H, W)."""
        check_images(type(self).__name__, "images", images)
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"{type(self).__name__}: frame index must be an int, got {type(index).__name__} {index!r}")
        if not 0 <= index < len(self):
            raise IndexError(f"frame index must be in [0, {len(self)}), got {index}")
        self.output_size(images.shape[-2], images.shape[-1])
        if self.embed is not None:
            images = embed_in_canvas(images, self.embed, self.fill)
        return self._transform(images, index)

    def frames(self, images: Tensor) -> Iterator[Tensor]:
        """Yield every frame of ``images`` in order."""
        for index in range(len(self)):
            yield self.frame(images, index)

    def __call__(self, images: Tensor) -> Tensor:
        """All frames stacked as ``(N, T, C, H', W')`` (memory grows with T; see ``frames``)."""
        return torch.stack(list(self.frames(images)), dim=1)

    def _embedded_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the object on the canvas (the whole image without ``embed``)."""
        if self.embed is None:
            return height, width
        return embedded_size(height, width, self.embed)

    def __repr__(self) -> str:
        args = dict(self._repr_args(), mode=self.mode)
        if self.fill != 0.0:
            args["fill"] = self.fill
        if self.embed is not None:
            args["embed"] = self.embed
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(repr(self))
