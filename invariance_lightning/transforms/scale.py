"""Rescaling sequences: the paper's rescaling experiment and ImageNet-P-style zooms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from invariance_lightning.transforms.base import TransformSequence, check_crop_size
from invariance_lightning.transforms.functional import center_crop, fit_to_size, resize
from invariance_lightning.validation import check_number


class ScaleSequence(TransformSequence):
    """Frames of an image rescaled about its centre by each of ``factors``.

    Each frame resizes the image to ``round(H * f) x round(W * f)`` (bilinear, antialiased when
    shrinking) and centres it in the output. The frames follow the order of ``factors``;
    the metrics compare consecutive frames, so list the factors in the order to step through them.

    Modes:
        ``"zeros"``: the output keeps the input size; a shrunk image is padded with ``fill``, an
        enlarged one centre-cropped.
        ``"reflect"``: as ``"zeros"`` but padding mirrors the shrunk image.
        ``"crop"``: every frame is the central ``crop_size`` window of the rescaled image, so no
        border is invented; ``crop_size=None`` takes the size of the smallest rescaled image.

    Example:
        >>> ScaleSequence([1.0, 0.9, 1.1])
        ScaleSequence(factors=[1.0, 0.9, 1.1], mode='zeros')
    """

    modes = ("zeros", "reflect", "crop")
    axis_label = "scale factor"

    def __init__(
        self,
        factors: Sequence[float],
        mode: str = "zeros",
        *,
        fill: float = 0.0,
        crop_size: int | tuple[int, int] | None = None,
        embed: float | None = None,
    ) -> None:
        super().__init__(mode, fill, embed)
        if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
            raise TypeError(f"ScaleSequence: factors must be a sequence of positive numbers, got {factors!r}")
        if len(factors) < 2:
            raise ValueError(f"ScaleSequence: factors must hold at least 2 factors, got {list(factors)!r}")
        self.factors = [
            check_number("ScaleSequence", f"each factor in factors ({list(factors)!r})", f, low=0, strict=True)
            for f in factors
        ]
        self.crop_size = check_crop_size("ScaleSequence", crop_size, mode)

    def __len__(self) -> int:
        return len(self.factors)

    @property
    def frame_values(self) -> list[float]:
        return list(self.factors)

    @property
    def frame_labels(self) -> list[str]:
        return [f"x{f:g}" for f in self.factors]

    def _scaled_size(self, height: int, width: int, factor: float) -> tuple[int, int]:
        return max(1, round(height * factor)), max(1, round(width * factor))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.embed is not None and self.embed * max(self.factors) > 1.0 + 1e-9:
            raise ValueError(
                f"embed={self.embed} with factors up to {max(self.factors)} enlarges the object beyond the "
                f"{height}x{width} canvas; keep embed * max(factors) <= 1"
            )
        smallest = self._scaled_size(height, width, min(self.factors))
        if self.mode == "reflect" and (height >= 2 * smallest[0] or width >= 2 * smallest[1]):
            raise ValueError(
                f"mode='reflect' cannot pad a {smallest[0]}x{smallest[1]} image (factor {min(self.factors)}) back to "
                f"{height}x{width}: reflection needs padding smaller than the image; use mode='zeros'"
            )
        if self.mode != "crop":
            return height, width
        crop_h, crop_w = self.crop_size or smallest
        if crop_h > smallest[0] or crop_w > smallest[1]:
            raise ValueError(
                f"crop_size {crop_h}x{crop_w} does not fit the smallest rescaled image, {smallest[0]}x{smallest[1]} "
                f"(factor {min(self.factors)} of {height}x{width})"
            )
        return crop_h, crop_w

    def _transform(self, images: Tensor, index: int) -> Tensor:
        height, width = images.shape[-2:]
        scaled = resize(images, *self._scaled_size(height, width, self.factors[index]))
        if self.mode == "crop":
            return center_crop(scaled, *self.output_size(height, width))
        return fit_to_size(scaled, height, width, self.mode, self.fill)

    def _repr_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"factors": self.factors}
        if self.crop_size is not None:
            args["crop_size"] = self.crop_size
        return args
