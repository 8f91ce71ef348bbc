"""Learnable polyphase sampling (Rojas-Gomez et al., "Learnable Polyphase Sampling for Shift Invariant and
Equivariant Convolutional Networks", NeurIPS 2022).

Like APS (:mod:`invariance_lightning.nn.aps`), subsampling by ``s`` keeps one of the ``s * s`` polyphase components
per sample; LPS learns which one. A small convolutional network scores every component (the same network for each,
its output averaged over the component's pixels), and

* in training, the output is the mix ``sum_k w_k x_k`` with ``w = gumbel_softmax(scores, tau)``: a differentiable
  sample whose temperature ``tau`` is annealed towards a hard choice (``lightning.callbacks.GumbelTemperature``);
* in evaluation, the component with the highest score is kept.

A circular shift of the input permutes the components and circularly shifts each; with circular padding in the
scorer the scores are permuted with them, so the evaluation-mode choice follows the shift and a network of circularly
padded convs, pointwise layers, LPS and global pooling is exactly invariant to circular shifts (up to exact ties of
scores). With zero padding the scores are nearly, not exactly, permuted.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invariance_lightning.nn.aps import PolyphaseLeader, pad_to_multiple, polyphase_list, take_polyphase
from invariance_lightning.nn.circular import make_conv2d
from invariance_lightning.validation import check_choice, check_images, check_int, check_number

ScorerPadding = Literal["circular", "zeros"]
SCORER_PADDING: tuple[str, ...] = ("circular", "zeros")


def polyphase_components(x: Tensor, stride: int) -> Tensor:
    """The ``s * s`` components of ``x`` (sizes multiples of ``stride``) stacked: ``(N, s * s, C, H/s, W/s)``,
    component ``(i, j)`` at ``i * s + j`` (the order of :func:`~invariance_lightning.nn.aps.polyphase_norms`)."""
    return torch.stack(polyphase_list(x, stride), dim=1)


class LPS2d(PolyphaseLeader):
    """Learnable polyphase sampling: keep the polyphase component a learned scorer prefers.

    Args:
        channels: input channels (the scorer's input).
        stride: subsampling factor.
        hidden: channels of the scorer's hidden layer (3x3 conv, ReLU, 1x1 conv to one score map).
        padding_mode: the scorer's padding, ``"circular"`` (exact invariance to circular shifts) or ``"zeros"``.
        temperature: initial Gumbel-softmax temperature (a buffer, saved in checkpoints; see :meth:`set_temperature`).

    Maps whose sizes are not multiples of ``stride`` are zero-padded at the bottom/right first, as in
    :class:`~invariance_lightning.nn.APS2d`. An :class:`~invariance_lightning.nn.APS2dFollower` reuses the choice (a
    component index in evaluation, the mixing weights in training) on a residual block's shortcut.
    """

    temperature: Tensor

    def __init__(
        self,
        channels: int,
        stride: int = 2,
        hidden: int = 8,
        padding_mode: ScorerPadding = "circular",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.channels = check_int(owner, "channels", channels, 1)
        self.stride = check_int(owner, "stride", stride, 1)
        hidden = check_int(owner, "hidden", hidden, 1)
        self.padding_mode = check_choice(owner, "padding_mode", padding_mode, SCORER_PADDING)
        self.scorer = nn.Sequential(
            make_conv2d(channels, hidden, 3, padding=1, padding_mode=self.padding_mode),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )
        self.register_buffer(
            "temperature", torch.tensor(check_number(owner, "temperature", temperature, low=0, strict=True))
        )

    def set_temperature(self, temperature: float) -> None:
        """Set the Gumbel-softmax temperature used in training (> 0; lower: closer to a hard choice)."""
        self.temperature.fill_(check_number(type(self).__name__, "temperature", temperature, low=0, strict=True))

    def scores(self, x: Tensor) -> Tensor:
        """The scorer's logits ``(N, s * s)`` for the components of ``x`` (sizes multiples of ``stride``)."""
        components = polyphase_components(x, self.stride)
        n, k = components.shape[:2]
        maps = self.scorer(components.flatten(0, 1))  # every component through the same network
        return maps.mean(dim=(1, 2, 3)).reshape(n, k)

    def forward(self, x: Tensor) -> Tensor:
        check_images(type(self).__name__, "input", x, channels=self.channels)
        x = pad_to_multiple(x, self.stride)
        scores = self.scores(x)
        if self.training:
            # dim=-1: one sample per image; Gumbel noise comes from torch's global generator (seeded runs repeat)
            selection = F.gumbel_softmax(scores.float(), tau=float(self.temperature), dim=-1).to(x.dtype)
        else:
            selection = scores.argmax(dim=1)
        self._share(selection)
        return self.apply_selection(x, selection)

    def apply_selection(self, x: Tensor, selection: Tensor) -> Tensor:
        if selection.dim() == 1:  # evaluation: one component per sample
            return take_polyphase(x, selection, self.stride)
        return torch.einsum("nk,nkchw->nchw", selection, polyphase_components(x, self.stride))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, padding_mode={self.padding_mode!r}"
