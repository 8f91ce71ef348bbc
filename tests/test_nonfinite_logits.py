"""NaN or infinite logits: the core raises NonFiniteLogitsError (a ValueError), the callbacks catch only it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from invariance_lightning import InvarianceMonitor, ShiftSequence, evaluate_invariance
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.metrics.published import ProtocolTotals
from invariance_lightning.validation import NonFiniteLogitsError
from lightning_helpers import NUM_CLASSES, TinyClassifier, tiny_trainer


class NaNModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3), float("nan"))


def test_the_old_import_paths_name_the_core_error():
    from invariance_lightning.lightning.callbacks.measure import NonFiniteLogitsError as old

    assert old is NonFiniteLogitsError and issubclass(NonFiniteLogitsError, ValueError)


@pytest.mark.parametrize(
    "measure",
    [
        lambda images: evaluate_invariance(NaNModel(), images, None, ShiftSequence(max_shift=1)),
        lambda images: evaluate_protocol(NaNModel(), images, None, "aps2021_standard"),
    ],
    ids=["evaluate_invariance", "evaluate_protocol"],
)
def test_the_core_raises_nonfinite_logits_error(measure):
    with pytest.raises(NonFiniteLogitsError, match=r"logits must be finite, got \d+ NaN or infinite values"):
        measure(torch.rand(2, 3, 8, 8))


def monitor_with_protocols(on_nonfinite: str) -> InvarianceMonitor:
    return InvarianceMonitor(
        {"shift": ShiftSequence(max_shift=1)},
        num_samples=8,
        log_plots=False,
        normalize=None,
        protocols=("aps2021_standard",),
        on_nonfinite=on_nonfinite,
    )


def unit_loader(seed: int) -> DataLoader:
    """16 images in [0, 1], as the protocols need."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(16, 3, 16, 16, generator=generator)
    return DataLoader(TensorDataset(images, torch.randint(0, NUM_CLASSES, (16,), generator=generator)), batch_size=8)


def raising(error: Exception):
    def update(self, *args, **kwargs) -> None:
        raise error

    return update


def test_the_monitor_warns_on_nonfinite_protocol_logits(tmp_path, monkeypatch):
    monkeypatch.setattr(ProtocolTotals, "update", raising(NonFiniteLogitsError("nan here")))
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[monitor_with_protocols("warn")])
    with pytest.warns(UserWarning, match="nan here; no protocol values logged"):
        trainer.fit(TinyClassifier(), unit_loader(1), unit_loader(2))
    assert "invariance/val/shift/flip_rate" in trainer.callback_metrics
    assert "invariance/val/aps2021_standard/consistency" not in trainer.callback_metrics


def test_the_monitor_does_not_take_other_value_errors_for_nonfinite_logits(tmp_path, monkeypatch):
    monkeypatch.setattr(ProtocolTotals, "update", raising(ValueError("a bug, not NaN")))
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[monitor_with_protocols("warn")])
    with pytest.raises(ValueError, match="a bug, not NaN"):
        trainer.fit(TinyClassifier(), unit_loader(1), unit_loader(2))
