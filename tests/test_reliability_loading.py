"""Loading a model file never runs code from it: both loaders refuse pickled objects before executing them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.models import cifar_resnet


class Payload:
    """Unpickling this creates ``marker``: the visible side effect of code run by ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_would_run_the_payload(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists(), "the payload must be able to act, or the tests below prove nothing"


@pytest.mark.parametrize("suffix", [".ckpt", ".th"])
def test_load_classifier_refuses_files_with_code_and_runs_none_of_it(tmp_path, suffix):
    marker = tmp_path / "ran"
    state_dict = cifar_resnet(20).state_dict()
    if suffix == ".ckpt":  # a Lightning checkpoint layout
        content = {
            "state_dict": {f"model.{k}": v for k, v in state_dict.items()},
            "hyper_parameters": {"x": Payload(marker)},
        }
    else:
        content = {"state_dict": state_dict, "extra": Payload(marker)}
    path = tmp_path / f"model{suffix}"
    torch.save(content, path)
    with pytest.raises((pickle.UnpicklingError, ValueError), match="weights_only|Unsupported global"):
        load_classifier(path)
    assert not marker.exists(), "loading must not execute the file's code"
