"""The one checkpoint reader: metadata of Lightning checkpoints and the classifier with the normalization it
recorded (or a clear error for checkpoints that predate it)."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning
import pytest
import torch

from invariance_lightning import ShiftSequence, evaluate_invariance
from invariance_lightning.lightning.checkpoint import checkpoint_name, load_classifier, read_checkpoint
from invariance_lightning.lightning.module import ImageClassifier

#: Not CIFAR-10's statistics, so that using them is told apart from any CIFAR default.
STATS = ((0.3, 0.6, 0.1), (0.5, 0.25, 0.4))


def save_checkpoint(path: Path, model: ImageClassifier, **entries) -> Path:
    """A checkpoint as Lightning writes it (weights, hyperparameters, version) plus ``entries``."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
            **entries,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("cifar_resnet20", augmentation="none")  # no mean/std: the datamodule's were used


def test_read_checkpoint_gives_epochs_datamodule_hyperparameters_and_callback_states(model, tmp_path):
    history = [{"epoch": 0, "values": {"val/shift/flip_rate": 0.25}}]
    path = save_checkpoint(
        tmp_path / "last.ckpt",
        model,
        epoch=2,
        global_step=30,
        datamodule_hyper_parameters={"name": "cifar10", "data_dir": tmp_path / "data", "val_split": 8},
        callbacks={
            "InvarianceMonitor{'prefix': 'invariance'}": {"history": history},
            "ModelCheckpoint{'monitor': None}": {"best_model_path": ""},
        },
        input_normalization=STATS,
    )
    info = read_checkpoint(path)
    assert (info.epochs, info.global_step) == (3, 30)  # Lightning saves the 0-based epoch it was saved in
    assert info.datamodule_hyper_parameters == {"name": "cifar10", "data_dir": tmp_path / "data", "val_split": 8}
    assert info.callback_states("InvarianceMonitor") == [{"history": history}]
    assert info.callback_states("Invariance") == []  # a class name, not a prefix of one
    assert tuple(info.input_normalization) == STATS
    assert info.hyper_parameters["backbone"] == "cifar_resnet20"


def test_read_checkpoint_refuses_code_and_other_files(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"epoch": 0, "x": Payload()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(evil)
    assert not (tmp_path / "ran").exists()
    torch.save({"state_dict": {}}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        read_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_load_classifier_normalizes_as_the_checkpoint_recorded(model, tmp_path):
    path = save_checkpoint(tmp_path / "recorded.ckpt", model, epoch=0, input_normalization=STATS)
    loaded = load_classifier(path, default_normalization=((0.0,) * 3, (1.0,) * 3))  # not needed: ignored
    assert tuple(loaded.normalize) == STATS and loaded.name == "recorded" and not loaded.model.training
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    sequence = ShiftSequence(max_shift=2)
    mean, std = (torch.tensor(v)[:, None, None] for v in STATS)
    with torch.no_grad():  # by hand: the zero-filled shifts, normalized with the recorded statistics
        frames = []
        for k in range(3):
            shifted = torch.zeros(4, 3, 32, 32)
            shifted[:, :, k:, k:] = images[:, :, : 32 - k, : 32 - k].float() / 255
            frames.append(model.eval()((shifted - mean) / std).argmax(dim=1))
    predictions = torch.stack(frames, dim=1)
    expected = float((predictions[:, 1:] != predictions[:, :-1]).double().mean())
    measured = evaluate_invariance(loaded.model, images, None, sequence, normalize=loaded.normalize)
    assert float(measured["flip_rate"]) == pytest.approx(expected)


def test_a_checkpoint_without_recorded_normalization_needs_a_default(model, tmp_path):
    path = save_checkpoint(tmp_path / "old.ckpt", model, epoch=0)  # saved before input_normalization existed
    with pytest.raises(ValueError, match=r"does not record the input normalization.*default_normalization"):
        load_classifier(path)
    assert tuple(load_classifier(path, default_normalization=STATS).normalize) == STATS
    explicit = ImageClassifier("cifar_resnet20", augmentation="none", mean=STATS[0], std=STATS[1])
    path = save_checkpoint(tmp_path / "explicit.ckpt", explicit, epoch=0)  # mean/std in its hyperparameters
    assert tuple(load_classifier(path).normalize) == STATS


def test_a_checkpoint_is_named_by_its_run_folder_not_by_last():
    assert checkpoint_name(Path("runs/cifar10/resnet20_blur/checkpoints/last.ckpt")) == "resnet20_blur"
    assert checkpoint_name("runs/x/checkpoints/epoch=9-step=160.ckpt") == "x"
    assert checkpoint_name(Path("downloads/my_model.ckpt")) == "my_model"
    assert checkpoint_name(Path("checkpoints/last.ckpt")) == "last"  # no run folder above: the file's stem
