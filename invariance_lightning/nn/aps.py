"""Adaptive polyphase sampling (Chaman & Dokmanic, CVPR 2021).

Subsampling by ``s`` keeps one of the ``s * s`` polyphase components ``x[:, :, i::s, j::s]``.
A plain strided layer always keeps ``(0, 0)``; a circular shift of the input then changes which
pixels survive. APS keeps, per sample, the component with the largest norm instead: a circular
shift of the input permutes the components (and circularly shifts each), so the chosen component
is the same one, shifted, and a network built from circularly padded convs, pointwise layers,
APS and global pooling is exactly invariant to circular shifts of its input.

Residual blocks need care: the main path and the shortcut are both subsampled, and the two must
keep the *same* component, or a shift by an odd number of pixels moves the two paths by different
amounts. :class:`APS2dFollower` applies the component chosen by an :class:`APS2d` ("leader") in
the same forward pass to another tensor (the block input on the shortcut).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning.nn.tracing import capturing_graph
from invariance_lightning.validation import check_choice, check_images, check_int, check_optional_int

Norm = Literal["l2", "l1"]
NORMS: tuple[str, ...] = ("l2", "l1")


def pad_to_multiple(x: Tensor, stride: int) -> Tensor:
    """Zero-pad the bottom and right of ``x`` to sizes divisible by ``stride`` (output ``ceil(H / s)``).

    While a graph is captured the pad is always recorded (by amounts computed from the input's size), so that an
    exported model pads odd-sized maps too, whatever size it was traced with."""
    height, width = x.shape[-2:]
    # s * ceil(H / s) - H rather than -H % s: the same number, but an exporter can see that the padded size is a
    # multiple of s (it cannot prove it from H + (-H % s)), which the components' equal sizes rest on.
    pad_h = stride * ((height + stride - 1) // stride) - height
    pad_w = stride * ((width + stride - 1) // stride) - width
    return F.pad(x, (0, pad_w, 0, pad_h)) if capturing_graph() or pad_h or pad_w else x


def polyphase_list(x: Tensor, stride: int) -> list[Tensor]:
    """The ``s * s`` components ``x[..., i::s, j::s]`` (views), component ``(i, j)`` at ``i * s + j``.

    Strided slices rather than a ``(N, C, H/s, s, W/s, s)`` reshape: a reshape by ``H // s`` cannot be exported
    for an arbitrary (dynamic) input size, slices can, and they cost no copy either way.
    """
    return [x[..., i::stride, j::stride] for i in range(stride) for j in range(stride)]


def polyphase_norms(x: Tensor, stride: int, norm: Norm = "l2") -> Tensor:
    """Per-sample norms ``(N, s * s)`` of the polyphase components, component ``(i, j)`` at ``i * s + j``.

    ``x`` must have spatial sizes divisible by ``stride``. Computed in at least float32.
    """
    order = 2 if norm == "l2" else 1
    dtype = torch.promote_types(x.dtype, torch.float32)
    norms = [torch.linalg.vector_norm(c, ord=order, dim=(1, 2, 3), dtype=dtype) for c in polyphase_list(x, stride)]
    return torch.stack(norms, dim=1)


def take_polyphase(x: Tensor, index: Tensor, stride: int) -> Tensor:
    """Per-sample component ``index[n] = i * s + j`` of ``x``: ``x[n, :, i::s, j::s]`` -> ``(N, C, H/s, W/s)``.

    A chain of ``torch.where`` over the components (no gather over a reshaped view: see :func:`polyphase_list`).
    """
    if index.shape != (x.shape[0],):
        raise ValueError(f"index must have shape ({x.shape[0]},) (one component per sample), got {tuple(index.shape)}")
    index = index.to(x.device).reshape(-1, 1, 1, 1)
    components = polyphase_list(x, stride)
    chosen = components[0]
    for k, component in enumerate(components[1:], start=1):
        chosen = torch.where(index == k, component, chosen)
    return chosen


class PolyphaseLeader(nn.Module):
    """A subsampler that chooses polyphase components per sample and can hand its choice to followers
    (:class:`APS2dFollower`, e.g. a residual block's shortcut) within the same forward pass.

    Subclasses set ``stride``, call :meth:`_share` with what they chose, and define :meth:`apply_selection`.
    """

    stride: int

    def __init__(self) -> None:
        super().__init__()
        self.has_followers = False
        self._selection: Tensor | None = None

    def _share(self, selection: Tensor) -> None:
        if self.has_followers:
            self._selection = selection

    def pop_selection(self) -> Tensor:
        """What the last forward chose, cleared so that a stale choice is never reused."""
        if self._selection is None:
            raise RuntimeError(
                f"APS2dFollower ran before its leader {type(self).__name__} chose a component in this forward pass: "
                "the leader (main path) must run before the follower (shortcut) in the block's forward"
            )
        selection, self._selection = self._selection, None
        return selection

    def apply_selection(self, x: Tensor, selection: Tensor) -> Tensor:
        """Subsample ``x`` (sizes multiples of ``stride``) with a selection this leader made."""
        raise NotImplementedError


class APS2d(PolyphaseLeader):
    """Keep, per sample, the polyphase component with the largest norm (adaptive polyphase sampling).

    Norm: ``"l2"`` (default, as in the paper) or ``"l1"`` of the whole component, over all channels
    and pixels, computed in at least float32. Ties go to the first component in the order
    ``(0, 0), (0, 1), ..., (s-1, s-1)`` (row offset major; ``torch.argmax`` returns the first
    maximum). Exactly equal norms only occur for components that are equal (e.g. constant maps,
    where any choice gives the same output) or by coincidence; where they differ, the tie-break can
    pick different content for shifted inputs, and rounding in the norm sums can in principle flip
    a near-tie: invariance is exact up to such coincidences.

    Maps whose sizes are not multiples of ``stride`` are zero-padded at the bottom/right first, so
    the output is ``ceil(H / s) x ceil(W / s)`` like a strided conv; exact shift invariance needs
    sizes divisible by the stride at every APS layer (e.g. 32 -> 16 -> 8).

    When an :class:`APS2dFollower` is attached, each forward also records the chosen components
    for it (consumed by the follower's next forward).

    Args:
        channels: expected channel count, only checked (None: any).
        stride: subsampling factor.
        norm: ``"l2"`` or ``"l1"``.
    """

    def __init__(self, channels: int | None = None, stride: int = 2, norm: Norm = "l2") -> None:
        super().__init__()
        owner = type(self).__name__
        self.channels = check_optional_int(owner, "channels", channels, 1)
        self.stride = check_int(owner, "stride", stride, 1)
        self.norm = check_choice(owner, "norm", norm, NORMS)

    def select(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the chosen components ``(N, C, H/s, W/s)`` and their indices ``(N,)`` (``i * s + j``)."""
        check_images("APS2d", "input", x, channels=self.channels)
        x = pad_to_multiple(x, self.stride)
        index = polyphase_norms(x, self.stride, self.norm).argmax(dim=1)
        return take_polyphase(x, index, self.stride), index

    def forward(self, x: Tensor) -> Tensor:
        out, index = self.select(x)
        self._share(index)
        return out

    def apply_selection(self, x: Tensor, selection: Tensor) -> Tensor:
        return take_polyphase(x, selection, self.stride)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, norm={self.norm!r}"


class APS2dFollower(nn.Module):
    """Subsample with the components the ``leader`` (an :class:`APS2d`, or any :class:`PolyphaseLeader` such as
    ``LPS2d``) chose in the same forward pass.

    The leader is registered as a submodule (it has no state_dict entries), so that a
    ``copy.deepcopy`` of the model pairs each copied follower with its copied leader. The input
    must have the spatial size of the leader's input (same zero-padding to a multiple of the
    stride). The pairing is state passed between two modules within one forward pass: the leader
    must run first, and both must run in the same thread.
    """

    def __init__(self, leader: PolyphaseLeader) -> None:
        super().__init__()
        if not isinstance(leader, PolyphaseLeader):
            raise TypeError(
                f"APS2dFollower: leader must be an APS2d or another PolyphaseLeader, got {type(leader).__name__}"
            )
        self.leader = leader
        leader.has_followers = True

    def forward(self, x: Tensor) -> Tensor:
        check_images("APS2dFollower", "input", x)
        selection = self.leader.pop_selection()
        if selection.shape[0] != x.shape[0]:
            raise ValueError(
                f"APS2dFollower got a batch of {x.shape[0]} but its leader chose components for {selection.shape[0]}"
            )
        return self.leader.apply_selection(pad_to_multiple(x, self.leader.stride), selection)
