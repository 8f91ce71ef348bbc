"""What the measured batches hold and what the model expects: the callbacks' one input-space decision.

A shift must fill vacated pixels with black, so the callbacks measure *raw* images (uint8, or floats in
[0, 1]) and normalize each frame for the model. Users' batches are often normalized already (a ``Normalize``
at the end of the dataset's ``Compose``): such batches are un-normalized first, and the model gets them
normalized again with the same statistics, so the numbers equal a measurement on the raw images.
:func:`resolve_input_space` decides this from the arguments and what the pipeline shows, checks the images
against it, and says what it measured when it cannot know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from invariance_lightning.lightning.packages import is_overridden
from invariance_lightning.transforms.normalization import Normalization, check_normalize, denormalize_images

#: How far outside [0, 1] raw float images may reach (rounding of an un-normalization) before they are not raw.
RAW_TOLERANCE = 1e-3


@dataclass(frozen=True)
class InputSpace:
    """``data``: the normalization the batches carry (None: raw images); ``model``: the normalization raw frames
    get before the model (None: they go in as they are)."""

    data: Normalization | None
    model: Normalization | None

    def raw(self, images: Tensor) -> Tensor:
        """``images`` as raw images: un-normalized with ``data`` if the batches carry it, else unchanged."""
        if self.data is None or not images.is_floating_point():
            return images
        return denormalize_images(images, self.data)


def _model_normalization(owner: str, trainer: Any, pl_module: Any, data: Normalization | None) -> Normalization | None:
    """``normalize="auto"``: the batches' own normalization, else the module's ``input_normalization`` (as
    ``ImageClassifier`` has), else the datamodule's ``mean``/``std``, else None."""
    if data is not None:
        return data
    own = getattr(pl_module, "input_normalization", None)
    if own is not None:
        return check_normalize(owner, "the module's input_normalization", own)
    datamodule = trainer.datamodule
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None:
        return None
    return check_normalize(owner, "the datamodule's (mean, std)", (mean, std))


def _value_range(images: Tensor) -> tuple[float, float]:
    return float(images.min()), float(images.max())


def _is_raw(low: float, high: float) -> bool:
    return -RAW_TOLERANCE <= low and high <= 1 + RAW_TOLERANCE


def resolve_input_space(
    owner: str,
    trainer: Any,
    pl_module: Any,
    *,
    normalize: Normalization | str | None,
    data_normalization: Normalization | str | None,
    found: Normalization | None,
    images: Tensor,
    split: str,
) -> InputSpace:
    """Decide what the ``split`` batches hold and what the model needs, and check ``images`` (a sample) against it.

    ``data_normalization="auto"`` takes ``found`` (the ``Normalize`` in the dataset's transforms);
    ``normalize="auto"`` then takes the batches' normalization, else the module's or datamodule's statistics.
    Raises ``ValueError`` when the arguments contradict the data (normalized images with another ``normalize``,
    images outside [0, 1] that would be normalized again, un-normalized images outside [0, 1]); warns (rank zero)
    when the images are outside [0, 1] and nothing says how they were normalized, or when a raw model input may
    depend on an ``on_after_batch_transfer`` hook the callback skips.
    """
    data = found if data_normalization == "auto" else check_normalize(owner, "data_normalization", data_normalization)
    if data is not None and found is not None and data != found:
        raise ValueError(
            f"{owner}: data_normalization={tuple(data)}, but the Normalize in the {split!r} dataset's transforms uses "
            f"{tuple(found)}; leave data_normalization='auto'"
        )
    if normalize == "auto":
        model = _model_normalization(owner, trainer, pl_module, data)
    else:
        model = check_normalize(owner, "normalize", normalize)
        if data is not None and model != data:
            origin = "the dataset's transforms normalize" if data_normalization == "auto" else "data_normalization says"
            raise ValueError(
                f"{owner}: {origin} the {split!r} batches with {tuple(data)}, so the model is fed images normalized "
                f"that way, but normalize={None if model is None else tuple(model)}; leave normalize='auto' (or pass "
                "the same statistics), or pass data_normalization=None if the batches are in fact raw images in [0, 1]"
            )
    space = InputSpace(data, model)
    if not images.is_floating_point():
        if data is not None:
            raise ValueError(
                f"{owner}: the {split!r} images are {images.dtype}, which cannot carry a normalization, but "
                f"data_normalization is {tuple(data)}; pass data_normalization=None"
            )
        return space
    low, high = _value_range(space.raw(images))
    if data is not None and not _is_raw(low, high):
        raise ValueError(
            f"{owner}: the {split!r} images un-normalized with {tuple(data)} range over [{low:.4g}, {high:.4g}], not "
            "[0, 1]: these are not the statistics the batches were normalized with; pass "
            "data_normalization=(mean, std) with the right ones"
        )
    if data is None and not _is_raw(low, high):
        if model is not None:
            raise ValueError(
                f"{owner}: the {split!r} images range over [{low:.4g}, {high:.4g}], not [0, 1], so they look "
                f"normalized already, and normalize={tuple(model)} would normalize them again; if the batches are "
                "normalized with (mean, std), pass data_normalization=(mean, std)"
            )
        rank_zero_warn(
            f"{owner}: the {split!r} images range over [{low:.4g}, {high:.4g}], not [0, 1], and no torchvision "
            "Normalize was found in the dataset's transforms: they are measured as given, and shifts and rescalings "
            "fill vacated pixels with 0, which is black only for images in [0, 1]. If the batches are normalized, "
            "pass data_normalization=(mean, std)"
        )
    elif model is None and any(
        part is not None and is_overridden("on_after_batch_transfer", part) for part in (pl_module, trainer.datamodule)
    ):
        rank_zero_warn(
            f"{owner}: the model gets the raw {split!r} images (values in [0, 1]), without the on_after_batch_transfer "
            "hook, which the callback skips since it may augment; if that hook normalizes, pass "
            "normalize=(mean, std)"
        )
    return space
