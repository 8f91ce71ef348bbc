"""Circularly padded convolution, faster than ``F.pad`` + conv.

``nn.Conv2d(padding_mode="circular")`` pads a copy of its input with ``F.pad(mode="circular")`` and convolves the
copy. On CPU with channels-last tensors that pad (and the scatter in its backward) dominates: a ResNet-20 training
step with it ran at 0.48x of zero padding's speed (benchmarks/results/downsampling_cost.md). :func:`circular_conv2d`
takes one of two faster paths by the map's size (:data:`PADDED_COPY_MAX_PIXELS`):

- **Strips** (large maps). The difference between the circular and the zero-padded convolution is linear in the
  wrapped border alone, so it runs the zero-padded conv (which oneDNN pads internally, no copy) and adds, in place,
  the contribution of each wrapped border: four thin strips (one frame each: top, bottom, left, right; the corners go
  with the top and bottom), each convolved with only the kernel rows or columns that can reach it. Its backward is
  written out (``aten.convolution_backward`` on the main conv and on each strip, strip gradients folded back onto the
  input's opposite border in place), because autograd through slices of the input and the output would allocate and
  fill a full-size gradient per slice, which costs as much as the pad it replaces.
- **Padded copy** (small maps, where the border is a large share of the map and the strips' four extra conv calls
  and their backward cost more than one copy; and every map when autograd is not recording, i.e. at inference): the
  map copied into a wrap-padded buffer slice by slice (again in the backward rather than kept, so it costs no
  memory), its adjoint written out as slice additions. Its conv
  computes every output the same way, so a circular shift of the input shifts the output bit for bit; the strips'
  border sums round differently from the interior's (about 1e-6 relative), which is enough to flip an APS or LPS
  choice between two near-equal polyphase components, so evaluation, where exact circular invariance is promised,
  always takes this path.

The result equals ``F.conv2d(F.pad(x, padding, mode="circular"), weight, ...)`` up to float rounding; the
reference path is taken under autocast, while tracing or exporting (ONNX, ``torch.export``, ``torch.compile``:
one plain graph), and where the padding wraps more than once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning._compat import as_pair
from invariance_lightning.nn.layout import memory_format_of
from invariance_lightning.nn.tracing import capturing_graph
from invariance_lightning.transforms.functional import pad_2d

IntPair = int | tuple[int, int]
#: What ``nn.Conv2d`` accepts as ``padding_mode`` (:func:`cifar_resnet` offers "zeros" and "circular").
ConvPaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


@dataclass(frozen=True)
class _Conv:
    """A convolution's geometry, as :func:`circular_conv2d` hands it to its autograd functions."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def backward(
        self, grad_output: Tensor, x: Tensor, weight: Tensor, padding: tuple[int, int], mask: list[bool], bias: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``aten.convolution_backward`` of ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``."""
        bias_sizes = [weight.shape[0]] if bias else None
        return torch.ops.aten.convolution_backward(
            grad_output, x, weight, bias_sizes, self.stride, padding, self.dilation, False, [0, 0], self.groups, mask
        )


#: Maps of at most this many pixels (16 x 16) are convolved as an explicit wrap-padded copy, larger ones by the
#: strips (module docstring): measured per conv (batch 128, channels-last, CPU), the copy costs less than the strips
#: where the border is a large share of the map, more on 32 x 32 maps.
PADDED_COPY_MAX_PIXELS = 256


@dataclass(frozen=True)
class _Edge:
    """One wrapped border along one axis: the output band it changes, the kernel taps that reach it, and where its
    frame's rows (of the input) sit in the strip that is convolved."""

    axis: int  # -2: a top/bottom frame (rows); -1: a left/right frame (columns)
    out: slice  # output rows (or columns) the frame reaches
    taps: slice  # kernel rows (or columns) that reach the frame
    length: int  # strip length along the axis
    strip: slice  # where the frame's lines sit in the strip
    source: slice  # which input lines they are


def _edges(axis: int, size: int, pad: int, kernel: int, stride: int, dilation: int, out_size: int) -> list[_Edge]:
    """The leading and trailing frame of one axis (padded coordinates: ``[0, pad)`` is the leading frame, input
    lines ``size - pad ..``; ``[size + pad, size + 2 pad)`` the trailing one, input lines ``0 .. pad - 1``)."""
    if pad == 0:
        return []
    extent = dilation * (kernel - 1) + 1
    edges = []
    last_out = min(out_size, -(-pad // stride))  # outputs whose window starts inside the leading frame
    taps = slice(0, min(kernel, (pad - 1) // dilation + 1))  # taps that can land in it
    if last_out > 0:
        length = (last_out - 1) * stride + (taps.stop - 1) * dilation + 1
        used = min(pad, length)
        edges.append(
            _Edge(axis, slice(0, last_out), taps, length, slice(0, used), slice(size - pad, size - pad + used))
        )
    frame_start = size + pad
    first_out = max(0, (frame_start - extent) // stride + 1)  # outputs whose window ends inside the trailing frame
    if first_out < out_size:
        first_tap = max(0, -(-(frame_start - (out_size - 1) * stride) // dilation))
        start = first_out * stride + first_tap * dilation
        end = (out_size - 1) * stride + extent
        lo, hi = max(start, frame_start), min(end, frame_start + pad)
        edges.append(
            _Edge(
                axis,
                slice(first_out, out_size),
                slice(first_tap, kernel),
                end - start,
                slice(lo - start, hi - start),
                slice(lo - frame_start, hi - frame_start),
            )
        )
    return edges


def _strip(x: Tensor, edge: _Edge, padding: tuple[int, int]) -> Tensor:
    """The strip of the circularly padded input that holds ``edge``'s frame and zeros elsewhere: full padded width
    with wrapped corners for a row frame, full padded height with zero corners for a column frame. Built with one
    concatenation and one pad: these are small tensors, so the number of kernel calls is what costs."""
    pad_h, pad_w = padding
    before, after = edge.strip.start, edge.length - edge.strip.stop
    if edge.axis == -2:
        lines = x[:, :, edge.source, :]
        if pad_w:
            lines = torch.cat([lines[..., lines.shape[-1] - pad_w :], lines, lines[..., :pad_w]], dim=-1)
        strip = F.pad(lines, (0, 0, before, after)) if before or after else lines
    else:
        strip = F.pad(x[:, :, :, edge.source], (before, after, pad_h, pad_h))
    return strip.contiguous(memory_format=memory_format_of(x))


def _fold_strip_grad(grad_input: Tensor, grad_strip: Tensor, edge: _Edge, padding: tuple[int, int]) -> None:
    """Add a strip's input gradient onto the input lines its frame was copied from (the adjoint of :func:`_strip`)."""
    pad_h, pad_w = padding
    height, width = grad_input.shape[-2:]
    if edge.axis == -2:
        lines = grad_input[:, :, edge.source, :]
        lines += grad_strip[:, :, edge.strip, pad_w : pad_w + width]
        if pad_w:
            lines[..., width - pad_w :] += grad_strip[:, :, edge.strip, :pad_w]
            lines[..., :pad_w] += grad_strip[:, :, edge.strip, pad_w + width :]
    else:
        grad_input[:, :, :, edge.source] += grad_strip[:, :, pad_h : pad_h + height, edge.strip]


def _taps(weight: Tensor, edge: _Edge) -> Tensor:
    return weight[:, :, edge.taps, :] if edge.axis == -2 else weight[:, :, :, edge.taps]


def _out_band(output: Tensor, edge: _Edge) -> Tensor:
    return output[:, :, edge.out, :] if edge.axis == -2 else output[:, :, :, edge.out]


class _CircularConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, conv: _Conv) -> Tensor:
        output = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        edges = [
            edge
            for axis in (-2, -1)
            for edge in _edges(
                axis,
                x.shape[axis],
                conv.padding[axis],
                weight.shape[axis],
                conv.stride[axis],
                conv.dilation[axis],
                output.shape[axis],
            )
        ]
        strips = [_strip(x, edge, conv.padding) for edge in edges]
        for edge, strip in zip(edges, strips):
            taps = _taps(weight, edge)
            _out_band(output, edge).add_(F.conv2d(strip, taps, None, conv.stride, 0, conv.dilation, conv.groups))
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.has_bias = conv, bias is not None
        ctx.edges, ctx.strips = edges, strips  # thin: kept rather than rebuilt in the backward
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        conv, layout = ctx.conv, memory_format_of(x)
        grad_output = grad_output.contiguous(memory_format=layout)  # mixed layouts: slow kernels
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        mask = [need_input, need_weight, need_bias and ctx.has_bias]
        grad_input, grad_weight, grad_bias = conv.backward(grad_output, x, weight, conv.padding, mask, ctx.has_bias)
        for edge, strip in zip(ctx.edges, ctx.strips):
            band = _out_band(grad_output, edge).contiguous(memory_format=layout)
            grad_strip, grad_taps, _ = conv.backward(
                band, strip, _taps(weight, edge), (0, 0), [need_input, need_weight, False], False
            )
            if need_input:
                _fold_strip_grad(grad_input, grad_strip, edge, conv.padding)
            if need_weight:
                _taps(grad_weight, edge).add_(grad_taps)
        return grad_input, grad_weight, grad_bias, None


def _wrap_padded(x: Tensor, padding: tuple[int, int]) -> Tensor:
    """``x`` circularly padded (each padding at most the map's size), in ``x``'s memory format: one copy of the map
    and its wrapped frame written slice by slice (``F.pad``'s circular mode is several times slower, and so is its
    backward)."""
    pad_h, pad_w = padding
    batch, channels, height, width = x.shape
    shape = (batch, channels, height + 2 * pad_h, width + 2 * pad_w)
    padded = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    padded[:, :, pad_h : pad_h + height, pad_w : pad_w + width] = x
    if pad_h:
        padded[:, :, :pad_h, pad_w : pad_w + width] = x[:, :, height - pad_h :]
        padded[:, :, pad_h + height :, pad_w : pad_w + width] = x[:, :, :pad_h]
    if pad_w:  # the columns of the full padded height: the corners wrap on both axes
        padded[..., :pad_w] = padded[..., width : width + pad_w]
        padded[..., pad_w + width :] = padded[..., pad_w : 2 * pad_w]
    return padded


def _unwrap_grad(
    grad_padded: Tensor, padding: tuple[int, int], size: torch.Size, layout: torch.memory_format
) -> Tensor:
    """The adjoint of :func:`_wrap_padded`: each frame's gradient added onto the lines it was copied from (the
    column frames first, in place in ``grad_padded``, then the row frames)."""
    pad_h, pad_w = padding
    height, width = size
    if pad_w:
        grad_padded[..., width : width + pad_w] += grad_padded[..., :pad_w]
        grad_padded[..., pad_w : 2 * pad_w] += grad_padded[..., pad_w + width :]
    grad = grad_padded[:, :, pad_h : pad_h + height, pad_w : pad_w + width].contiguous(memory_format=layout)
    if pad_h:
        grad[:, :, height - pad_h :] += grad_padded[:, :, :pad_h, pad_w : pad_w + width]
        grad[:, :, :pad_h] += grad_padded[:, :, pad_h + height :, pad_w : pad_w + width]
    return grad


class _PaddedCircularConv2d(torch.autograd.Function):
    """The conv of an explicit wrap-padded copy (:func:`_wrap_padded`), with the copy's adjoint written out."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, conv: _Conv) -> Tensor:
        ctx.save_for_backward(x, weight)  # not the padded copy: x is kept anyway (by the layer before), the copy
        ctx.conv, ctx.has_bias = conv, bias is not None
        padded = _wrap_padded(x, conv.padding)
        return F.conv2d(padded, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        conv, layout = ctx.conv, memory_format_of(x)
        padded = _wrap_padded(x, conv.padding)  # rebuilt: cheaper than keeping it through the whole forward pass
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        mask = [need_input, need_weight, need_bias and ctx.has_bias]
        grad_padded, grad_weight, grad_bias = conv.backward(
            grad_output.contiguous(memory_format=layout), padded, weight, (0, 0), mask, ctx.has_bias
        )
        grad_input = _unwrap_grad(grad_padded, conv.padding, x.shape[-2:], layout) if need_input else None
        return grad_input, grad_weight, grad_bias, None


def _fast_path_applies(x: Tensor, padding: tuple[int, int]) -> bool:
    """Not while tracing, scripting, compiling or exporting (one plain graph), not under autocast (the backward
    would mix dtypes), not where the padding wraps more than once (the strips hold one copy of each border)."""
    if capturing_graph() or torch.is_autocast_enabled(x.device.type):
        return False
    return x.dim() == 4 and padding[0] <= x.shape[-2] and padding[1] <= x.shape[-1]


def circular_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` of ``x`` circularly padded by ``padding`` (symmetric per axis), without the padded copy.

    Same arguments as ``F.conv2d`` (``padding`` an int or an ``(h, w)`` pair). Equal to
    ``F.conv2d(F.pad(x, (pw, pw, ph, ph), mode="circular"), weight, bias, stride, 0, dilation, groups)``; see the
    module docstring for how and when the fast path is taken.
    """
    strides, paddings, dilations = as_pair(stride), as_pair(padding), as_pair(dilation)
    if not _fast_path_applies(x, paddings):
        padded = pad_2d(x, paddings[1], paddings[1], paddings[0], paddings[0], "circular")
        return F.conv2d(padded, weight, bias, strides, 0, dilations, groups)
    recording = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    strips = recording and x.shape[-2] * x.shape[-1] > PADDED_COPY_MAX_PIXELS
    function = _CircularConv2d if strips else _PaddedCircularConv2d
    output: Tensor = function.apply(x, weight, bias, _Conv(strides, paddings, dilations, groups))
    return output


class CircularConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``padding_mode="circular"`` computed by :func:`circular_conv2d`.

    Same constructor (``padding_mode`` is fixed to "circular"), parameters and ``state_dict`` as ``nn.Conv2d``, so
    checkpoints load either way; :meth:`from_conv` turns an existing conv into one, sharing its parameters.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["padding_mode"] = "circular"
        super().__init__(*args, **kwargs)
        if isinstance(self.padding, str):
            raise ValueError(f"CircularConv2d: padding must be an int or a pair, got {self.padding!r}")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> CircularConv2d:
        """A circular conv with ``conv``'s geometry sharing its very parameters (not copies)."""
        circular = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None,
            device="meta",
        )
        circular.weight, circular.bias = conv.weight, conv.bias
        return circular

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return conv2d_forward(self, input, weight, bias)


def conv2d_forward(conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """What ``conv._conv_forward`` computes, through :func:`circular_conv2d` when ``conv`` pads circularly by
    explicit amounts (for subclasses of ``nn.Conv2d`` that want the fast circular path)."""
    if conv.padding_mode == "circular" and not isinstance(conv.padding, str):
        return circular_conv2d(
            x, weight, bias, as_pair(conv.stride), as_pair(conv.padding), as_pair(conv.dilation), conv.groups
        )
    return nn.Conv2d._conv_forward(conv, x, weight, bias)


def make_conv2d(*args: Any, padding_mode: ConvPaddingMode = "zeros", **kwargs: Any) -> nn.Conv2d:
    """``nn.Conv2d(*args, padding_mode=padding_mode, **kwargs)``, as a :class:`CircularConv2d` when circular."""
    if padding_mode == "circular":
        return CircularConv2d(*args, **kwargs)
    return nn.Conv2d(*args, **{**kwargs, "padding_mode": padding_mode})
