"""Export antialiased classifiers with dynamic batch and image size: ``torch.export``, ONNX (both exporters), checked.

Every downsampling method of the package exports (``blur``, ``aps``, ``lps``, ``afc``, on :func:`cifar_resnet` and
on torchvision/timm ResNets converted by :func:`antialias`): while a graph is captured the layers take their general
path (``nn.tracing.capturing_graph``), so one graph serves every size, including sizes that make an intermediate
map odd. Alias-free networks need sizes divisible by their total stride (``size_multiple``, 4 for CIFAR ResNets).

:func:`export_onnx` can check its file against the PyTorch model with onnxruntime on sizes you choose (the
``onnx`` extra installs both packages). :func:`constant_padding` makes the variant for runtimes that refuse
reflect padding (TensorRT): BlurPool's reflect/replicate border becomes zeros (docs/models.md, "Export").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invariance_lightning.metrics.mode import evaluation_mode
from invariance_lightning.nn.blurpool import BlurPool2d
from invariance_lightning.validation import check_int, check_number

ImageSize = tuple[int, int, int]  # (channels, height, width)
#: The largest image side the dynamic dimensions allow.
MAX_SIDE = 4096


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from the PyTorch model's by more than the tolerance."""


def dynamic_image_shapes(size_multiple: int = 1, min_side: int = 32) -> tuple[dict[int, torch.export.Dim], ...]:
    """``dynamic_shapes`` for a model taking one ``(N, C, H, W)`` batch: any batch size, and ``H``, ``W`` from
    ``min_side`` to :data:`MAX_SIDE` that are multiples of ``size_multiple`` (for ``torch.export.export`` and
    ``torch.onnx.export(dynamo=True)``). ``min_side``: small enough for your inputs, large enough that no map in
    the network shrinks to one pixel (the exporter cannot prove a graph right for both 1 and larger sizes)."""
    size_multiple = check_int("dynamic_image_shapes", "size_multiple", size_multiple, 1)
    min_side = check_int("dynamic_image_shapes", "min_side", min_side, 2, MAX_SIDE)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if size_multiple == 1:
        height = torch.export.Dim("height", min=min_side, max=MAX_SIDE)
        width = torch.export.Dim("width", min=min_side, max=MAX_SIDE)
    else:
        low, high = -(-min_side // size_multiple), MAX_SIDE // size_multiple
        height = size_multiple * torch.export.Dim("height_blocks", min=low, max=high)
        width = size_multiple * torch.export.Dim("width_blocks", min=low, max=high)
    return ({0: batch, 2: height, 3: width},)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _example(model: nn.Module, example_size: ImageSize) -> torch.Tensor:
    return torch.rand(2, *example_size, device=_device(model))


def export_program(
    model: nn.Module, example_size: ImageSize = (3, 32, 32), size_multiple: int = 1
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode with a dynamic batch and image size (see
    :func:`dynamic_image_shapes`); the model's own training flags are restored afterwards."""
    with evaluation_mode(model):
        return torch.export.export(
            model, (_example(model, example_size),), dynamic_shapes=dynamic_image_shapes(size_multiple)
        )


def export_onnx(
    model: nn.Module,
    path: str | PathLike[str],
    example_size: ImageSize = (3, 32, 32),
    size_multiple: int = 1,
    dynamo: bool = True,
    check_sizes: Sequence[tuple[int, int, int]] = (),
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` (in eval mode) to ONNX with a dynamic batch and image size; input ``"images"``, output
    ``"logits"``.

    Args:
        model: the classifier, e.g. ``cifar_resnet(20, downsample="aps")`` or ``antialias(resnet18(), "lps")``.
        path: the ``.onnx`` file to write.
        example_size: ``(C, H, W)`` of the example batch the exporter runs (H, W multiples of ``size_multiple``).
        size_multiple: sizes the exported model accepts are multiples of this (alias-free networks: their total
            stride); 1: any size. The graph of an alias-free network refuses other sizes at run time (its
            downsampling layers reshape into stride x stride blocks: an ONNX runtime raises a Reshape error).
        dynamo: ``True`` for the ``torch.export``-based exporter, ``False`` for the TorchScript-based one.
        check_sizes: ``(N, H, W)`` batches to run through onnxruntime and the PyTorch model after writing; raises
            :class:`ExportMismatchError` if any logit differs by more than ``atol`` (pick sizes that make
            intermediate maps odd, e.g. 36x36 for a CIFAR ResNet: 36 -> 18 -> 9).
        atol: the largest absolute difference of the logits the check accepts.

    Returns:
        The written path.
    """
    owner = "export_onnx"
    size_multiple = check_int(owner, "size_multiple", size_multiple, 1)
    atol = check_number(owner, "atol", atol, low=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with evaluation_mode(model):
        example = _example(model, example_size)
        # the dynamo exporter takes torch.export's dynamic_shapes, the TorchScript one named dynamic_axes
        dynamic: dict[str, Any] = (
            {"dynamic_shapes": dynamic_image_shapes(size_multiple)}
            if dynamo
            else {"dynamic_axes": {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}}
        )
        torch.onnx.export(
            model, (example,), path, dynamo=dynamo, input_names=["images"], output_names=["logits"], **dynamic
        )
    if check_sizes:
        compare_onnx(path, model, check_sizes, example_size[0], atol)
    return path


def compare_onnx(
    path: str | PathLike[str],
    model: nn.Module,
    sizes: Sequence[tuple[int, int, int]],
    channels: int = 3,
    atol: float = 1e-4,
) -> float:
    """Run random ``(N, H, W)`` batches through the ONNX file (onnxruntime, CPU) and ``model`` (eval mode) and return
    the largest absolute difference of their logits; raises :class:`ExportMismatchError` above ``atol``."""
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - the onnx extra is part of "all"
        raise ImportError("compare_onnx needs onnxruntime: pip install 'invariance-lightning[onnx]'") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    device = _device(model)
    with evaluation_mode(model):
        for batch, height, width in sizes:
            images = torch.rand(batch, channels, height, width, generator=generator)
            expected = model(images.to(device)).float().cpu()
            logits = session.run(None, {input_name: images.numpy()})[0]
            difference = float((torch.from_numpy(logits) - expected).abs().max())
            worst = max(worst, difference)
            if difference > atol:
                raise ExportMismatchError(
                    f"{path}: logits of a {batch}x{channels}x{height}x{width} batch differ from the PyTorch model's "
                    f"by {difference:.3g} (atol={atol:g})"
                )
    return worst


def constant_padding(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BlurPool layers and convs pad with zeros where they reflected or replicated.

    For runtimes that reject reflect padding (TensorRT). The border pixels then see zeros, so the outputs change:
    re-measure (or fine-tune) the copy before deploying it. Circular padding is kept (it exports as slices and
    concatenations, which such runtimes accept, and exact circular-shift invariance depends on it).
    """
    converted = copy.deepcopy(model)
    for module in converted.modules():
        reflecting = getattr(module, "padding_mode", None) in ("reflect", "replicate")
        if reflecting and isinstance(module, (BlurPool2d, nn.Conv2d)):
            module.padding_mode = "zeros"
    return converted
