"""ProtocolTotals (metrics/published.py): a torchmetrics Metric of the protocols' counts over batches."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from invariance_lightning.metrics.protocols import PROTOCOLS, evaluate_protocol, protocol_counts
from invariance_lightning.metrics.published import ProtocolTotals, evaluate_protocols

NAMES = ("zhang2019", "imagenet_p_flip")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


@pytest.mark.parametrize(
    ("name", "with_targets"),
    [
        (name, with_targets)
        for name in sorted(PROTOCOLS)
        for with_targets in (True, False)
        if with_targets or not PROTOCOLS[name].needs_targets
    ],  # a protocol that needs targets always has them
)
def test_count_names_list_every_count(name, with_targets):
    images, targets = torch.rand(2, 3, 64, 64), torch.tensor([0, 3])
    protocol = PROTOCOLS[name]
    if name == "afc2023_adversarial":
        protocol = dataclasses.replace(protocol, period=2, crop_margin=1)  # fewer frames, the same counts
    counts = protocol_counts(model(), images, targets if with_targets else None, protocol)
    assert set(counts) <= set(protocol.count_names)


def test_totals_over_batches_equal_the_protocols_on_all_images():
    net, images, targets = model(), torch.rand(7, 3, 16, 16), torch.randint(0, 5, (7,))
    totals = ProtocolTotals(NAMES, seed=3, normalize=None, batch_size=16)
    for part in (slice(0, 4), slice(4, 4), slice(4, 7)):  # an empty batch adds nothing
        totals.update(net, images[part], targets[part], torch.arange(7)[part])
    expected = {name: evaluate_protocol(net, images, targets, name, seed=3) for name in NAMES}
    assert totals.compute() == expected
    assert evaluate_protocols(net, images, targets, NAMES, seed=3) == expected
    assert "accuracy" not in evaluate_protocols(net, images, None, NAMES, seed=3)["zhang2019"]


def test_totals_without_images_raise():
    totals = ProtocolTotals(NAMES, seed=0, normalize=None, batch_size=16)
    with pytest.raises(ValueError, match="ProtocolTotals: no image was counted"):
        totals.compute()


def test_the_lightning_module_is_a_deprecated_reexport():
    from invariance_lightning.lightning import published as old
    from invariance_lightning.metrics import published

    for name in published.__all__:
        with pytest.warns(DeprecationWarning, match=f"use invariance_lightning.metrics.published.{name}$"):
            assert getattr(old, name) is getattr(published, name)
