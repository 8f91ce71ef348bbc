"""APS2d and APS2dFollower: component choice, tie-breaking, shift invariance, leader/follower pairing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from invariance_lightning.nn import APS2d, APS2dFollower, polyphase_norms, take_polyphase


def reference_choice(x: torch.Tensor, stride: int, norm: str) -> list[tuple[int, int]]:
    """Per sample, the (i, j) maximizing the norm of x[n, :, i::s, j::s], first in row-major order on ties."""
    choices = []
    for sample in x:
        best, best_norm = (0, 0), -1.0
        for i in range(stride):
            for j in range(stride):
                part = sample[:, i::stride, j::stride]
                value = part.abs().sum().item() if norm == "l1" else part.pow(2).sum().sqrt().item()
                if value > best_norm:
                    best, best_norm = (i, j), value
        choices.append(best)
    return choices


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_keeps_the_component_with_the_largest_norm(stride: int, norm: str) -> None:
    x = torch.randn(16, 3, 6 * stride, 4 * stride, dtype=torch.float64)
    out, index = APS2d(3, stride, norm).select(x)
    for n, (i, j) in enumerate(reference_choice(x, stride, norm)):
        assert index[n].item() == i * stride + j
        assert torch.equal(out[n], x[n, :, i::stride, j::stride])
    assert torch.equal(APS2d(3, stride, norm)(x), out)


def test_ties_go_to_the_first_component_in_row_major_order() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 0] = 3.0  # component (1, 0)
    x[0, 0, 0, 1] = -3.0  # component (0, 1): same norm, different content
    x[0, 0, 1, 1] = 1.0  # component (1, 1): smaller
    out, index = APS2d().select(x)
    assert index.tolist() == [1]
    assert torch.equal(out, x[:, :, 0::2, 1::2])


def test_polyphase_norms_layout() -> None:
    x = torch.zeros(1, 2, 4, 6)
    x[0, 1, 1, 0] = 2.0  # component (1, 0) -> index 2
    assert torch.equal(polyphase_norms(x, 2), torch.tensor([[0.0, 0.0, 2.0, 0.0]]))
    assert torch.equal(take_polyphase(x, torch.tensor([2]), 2), x[:, :, 1::2, 0::2])


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1), (3, 6), (7, 5)])
def test_output_is_a_circular_shift_of_the_unshifted_output(shift: tuple[int, int]) -> None:
    # Shifting the input circularly permutes the components and shifts each: APS keeps the same one.
    x = torch.randn(4, 3, 16, 16)
    layer = APS2d(3)
    out = layer(x)
    shifted_out = layer(torch.roll(x, shift, (2, 3)))
    for n in range(len(x)):
        assert any(
            torch.equal(shifted_out[n], torch.roll(out[n], (dy, dx), (1, 2))) for dy in range(8) for dx in range(8)
        )
    # Plain subsampling keeps pixels of a different grid after an odd shift.
    if shift[0] % 2 or shift[1] % 2:
        plain = x[:, :, ::2, ::2]
        shifted_plain = torch.roll(x, shift, (2, 3))[:, :, ::2, ::2]
        assert not any(
            torch.equal(shifted_plain[0], torch.roll(plain[0], (dy, dx), (1, 2))) for dy in range(8) for dx in range(8)
        )


def test_odd_sizes_are_zero_padded_to_ceil() -> None:
    x = torch.randn(2, 3, 7, 5)
    out, index = APS2d().select(x)
    assert out.shape == (2, 3, 4, 3)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
    for n in range(2):
        i, j = divmod(index[n].item(), 2)
        assert torch.equal(out[n], padded[n, :, i::2, j::2])


def test_gradient_reaches_only_the_kept_component() -> None:
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    _, index = APS2d().select(x.detach())
    APS2d()(x).sum().backward()
    i, j = divmod(index.item(), 2)
    mask = torch.zeros(4, 4)
    mask[i::2, j::2] = 1
    assert torch.equal(x.grad[0, 0], mask) and torch.equal(x.grad[0, 1], mask)


def test_follower_keeps_the_leaders_component() -> None:
    leader = APS2d(4)
    follower = APS2dFollower(leader)
    main, shortcut = torch.randn(6, 4, 8, 8), torch.randn(6, 2, 8, 8)
    _, index = leader.select(main)
    leader(main)
    out = follower(shortcut)
    for n in range(6):
        i, j = divmod(index[n].item(), 2)
        assert torch.equal(out[n], shortcut[n, :, i::2, j::2])


def test_follower_refuses_to_run_before_its_leader_or_twice() -> None:
    leader = APS2d()
    follower = APS2dFollower(leader)
    with pytest.raises(RuntimeError, match="ran before its leader"):
        follower(torch.randn(1, 1, 4, 4))
    leader(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="batch of 3 but its leader chose components for 2"):
        follower(torch.randn(3, 1, 4, 4))
    with pytest.raises(RuntimeError, match="ran before its leader"):  # the choice was consumed
        follower(torch.randn(2, 1, 4, 4))


def test_deepcopy_keeps_each_follower_with_its_own_leader() -> None:
    pair = nn.ModuleDict({"down": APS2d(), "shortcut": nn.Sequential(nn.Identity(), APS2dFollower(APS2d()))})
    pair["shortcut"][1] = APS2dFollower(pair["down"])
    clone = copy.deepcopy(pair)
    assert clone["shortcut"][1].leader is clone["down"]
    assert clone["down"] is not pair["down"]
    assert pair.state_dict() == {}


def test_leader_without_followers_keeps_no_state() -> None:
    layer = APS2d()
    layer(torch.randn(1, 1, 4, 4))
    with pytest.raises(RuntimeError, match="ran before its leader APS2d chose"):
        layer.pop_selection()  # nothing was kept for followers that do not exist


def test_invalid_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="norm must be one of .* got 'linf'"):
        APS2d(norm="linf")
    with pytest.raises(ValueError, match="^APS2d: stride must be an int >= 1, got 0$"):
        APS2d(stride=0)
    with pytest.raises(ValueError, match="^APS2d: channels must be None or an int >= 1, got -2$"):
        APS2d(channels=-2)
    with pytest.raises(TypeError, match="^APS2d: channels must be None or an int >= 1, got str '3'$"):
        APS2d(channels="3")
    with pytest.raises(
        TypeError, match="^APS2dFollower: leader must be an APS2d or another PolyphaseLeader, got Identity$"
    ):
        APS2dFollower(nn.Identity())
    with pytest.raises(
        ValueError, match=r"^APS2d: input must be a floating-point \(N, C, H, W\) tensor, got shape \(2, 4, 4\)"
    ):
        APS2d()(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match=r"^APS2d: input must have C=3 channels .* got shape \(\d+, 5, "):
        APS2d(3)(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match=r"index must have shape \(2,\)"):
        take_polyphase(torch.randn(2, 1, 4, 4), torch.tensor([0]), 2)
