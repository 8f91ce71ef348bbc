"""Single-logit binary classifiers (and sigmoid/softmax outputs) measured natively, and ``forward_fn`` /
``output_key`` from a LightningCLI YAML config.

A binary model's ``(N,)`` or ``(N, 1)`` output is one logit ``z``, read as the two-class logits ``[0, z]``; a model
that outputs probabilities says so with ``outputs="probabilities"``.
"""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import write_random_cifar10
from invariance_lightning import InvarianceMonitor, InvarianceReport, evaluate_invariance, sequence_preset
from invariance_lightning.lightning.cli import InvarianceCLI, main
from invariance_lightning.metrics import OutputKey, transform_consistency
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.metrics.outputs import class_logits, class_targets
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.metrics.published import ProtocolTotals
from lightning_helpers import tiny_trainer

NUM_IMAGES = 48
SIZE = 16
METRICS = ("flip_rate", "consistency", "mac", "top5_distance", "accuracy", "worst_case_accuracy")


def binary_data(float_targets: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1]; class 1 when the left half is brighter than the right half."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(NUM_IMAGES, 3, SIZE, SIZE, generator=generator)
    targets = (images[..., : SIZE // 2].mean(dim=(1, 2, 3)) > images[..., SIZE // 2 :].mean(dim=(1, 2, 3))).long()
    return images, targets.float() if float_targets else targets


class BinaryFineTuner(pl.LightningModule):
    """Lightning's computer-vision fine-tuning template in small: a feature extractor and a one-logit head, trained
    with ``BCEWithLogitsLoss`` on the targets viewed as ``(N, 1)`` floats; ``forward`` returns ``(N, 1)`` (or
    ``(N,)`` with ``squeeze``)."""

    def __init__(self, squeeze: bool = False) -> None:
        super().__init__()
        self.squeeze = squeeze
        self.feature_extractor = nn.Sequential(  # no global pooling: a position-sensitive head, which flips
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.feature_extractor.requires_grad_(False)  # frozen, as the template freezes its backbone at first
        self.fc = nn.Sequential(nn.Linear(16 * (SIZE // 4) ** 2, 8), nn.ReLU(), nn.Linear(8, 1))
        self.loss_func = nn.BCEWithLogitsLoss()
        with torch.no_grad():  # logits of a few units, centred on the validation images: both classes predicted
            self.eval()
            self.fc[-1].weight *= 50
            self.fc[-1].bias -= self.logit(binary_data()[0]).mean()
            self.train()

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feature_extractor(x))

    def forward(self, x: torch.Tensor):
        logit = self.logit(x)
        return logit.squeeze(1) if self.squeeze else logit

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_func(self.logit(x), y.view((-1, 1)).type_as(x))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.loss_func(self.logit(x), y.view((-1, 1)).type_as(x)))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=1e-3)


class DictBinaryHead(BinaryFineTuner):
    """The same, with a ``forward`` that returns a dict (as many hub models do)."""

    def forward(self, x: torch.Tensor):
        return {"logit": self.logit(x), "features": self.feature_extractor(x)}


class SigmoidHead(pl.LightningModule):
    """``inner``'s probabilities ``sigmoid(z)``; its fit trains nothing, so ``inner``'s weights are measured as they
    are."""

    def __init__(self, inner: BinaryFineTuner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.inner(x))

    def training_step(self, batch, batch_idx):
        return None  # no forward (BatchNorm statistics stay) and no optimizer step

    def validation_step(self, batch, batch_idx):
        pass

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class BinaryData(pl.LightningDataModule):
    """:func:`binary_data` as train and validation splits (float 0./1. targets with ``float_targets``)."""

    def __init__(self, float_targets: bool = False) -> None:
        super().__init__()
        self.float_targets = float_targets

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*binary_data(self.float_targets, seed=1)), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*binary_data(self.float_targets, seed=0)), batch_size=16)

    test_dataloader = val_dataloader


def two_class(z: torch.Tensor) -> torch.Tensor:
    """The explicit two-class logits ``[0, z]`` of one binary logit per image."""
    z = z.reshape(-1, 1)
    return torch.cat([torch.zeros_like(z), z], dim=1)


def hand_rates(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, sequence) -> dict[str, float]:
    """Flip rate and accuracy counted by hand from the sign of the logit ``z`` on every frame."""
    model.eval()
    with torch.no_grad():
        z = torch.stack([model(sequence.frame(images, t)).reshape(-1) for t in range(len(sequence))], dim=1)
    predicted = (z > 0).long()  # (N, T)
    return {
        "flip_rate": (predicted[:, 1:] != predicted[:, :-1]).float().mean().item(),
        "accuracy": (predicted == targets[:, None]).float().mean().item(),
        "classes_predicted": int(predicted.unique().numel()),
    }


def fit_monitor(tmp_path, module: pl.LightningModule, data: BinaryData, **options) -> InvarianceMonitor:
    monitor = InvarianceMonitor(num_samples=32, splits=("val",), normalize=None, log_plots=False, **options)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[monitor])
    trainer.fit(module, datamodule=data)
    return monitor


# -- the conversion, by hand ----------------------------------------------------------------------------------------
def test_one_logit_becomes_two_class_logits_zero_and_z():
    z = torch.tensor([0.0, 2.0, -3.0])
    logits = class_logits(z, 3)
    assert torch.equal(logits, torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, -3.0]]))
    assert torch.equal(class_logits(z[:, None], 3), logits)  # (N, 1) as (N,)
    probabilities = logits.softmax(dim=-1)
    sigmoid = [1 / (1 + math.exp(-v)) for v in z.tolist()]
    for row, s in zip(probabilities.tolist(), sigmoid):
        assert row == pytest.approx([1 - s, s], abs=1e-7)
    top1 = probabilities.max(dim=-1)
    assert top1.values.tolist() == pytest.approx([0.5, sigmoid[1], 1 - sigmoid[2]], abs=1e-7)  # z = 0: exactly 0.5
    assert top1.indices.tolist() == [0, 1, 0]  # top-1 is z > 0
    multi = torch.randn(4, 3)
    assert class_logits(multi, 4) is multi  # (N, C) logits pass unchanged


def test_hand_worked_metrics_of_one_image_under_three_frames():
    # z along the frames: 0.5 (class 1), -0.5 (class 0), 2.0 (class 1): both transitions flip
    logits = class_logits(torch.tensor([0.5, -0.5, 2.0]), 3).unsqueeze(0)  # (1, T=3, 2)
    out = transform_consistency(logits, torch.tensor([1]), top_k=None)
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # MAC: |p_t[c] - p_{t-1}[c]| for the previous frame's top-1 c: class 1, then class 0
    mac = (abs(s(-0.5) - s(0.5)) + abs((1 - s(2.0)) - (1 - s(-0.5)))) / 2
    assert out["flip_rate"].item() == 1.0
    assert out["consistency"].item() == pytest.approx(1 / 3)  # only frames 0 and 2 agree
    assert out["mac"].item() == pytest.approx(mac, abs=1e-6)
    assert out["accuracy"].item() == pytest.approx(2 / 3) and out["worst_case_accuracy"].item() == 0.0


def test_probabilities_become_log_probabilities_and_stay_finite():
    p = torch.tensor([0.5, 0.8, 0.0, 1.0])
    logits = class_logits(p, 4, "probabilities")
    assert torch.isfinite(logits).all()  # a saturated sigmoid (0 or 1 exactly) is not -inf
    expected = torch.tensor([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(logits.softmax(dim=-1), expected, atol=1e-6, rtol=0)
    assert torch.equal(class_logits(p[:, None], 4, "probabilities"), logits)
    z = torch.tensor([-4.0, -0.3, 0.0, 0.7, 5.0])  # sigmoid outputs measure as the logits they came from
    torch.testing.assert_close(
        class_logits(torch.sigmoid(z), 5, "probabilities").softmax(-1),
        class_logits(z, 5).softmax(-1),
        atol=1e-6,
        rtol=0,
    )
    softmax = torch.tensor([[0.1, 0.7, 0.2], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(class_logits(softmax, 2, "probabilities").softmax(-1), softmax, atol=1e-6, rtol=0)


def test_softmax_outputs_read_as_logits_warn_and_logits_do_not():
    """A softmax model measured with the default outputs='logits' gives wrong probabilities: it is told. A binary
    sigmoid output cannot be told from a small logit, so it does not warn (the monitor's constant-predictor warning
    catches the class-1-everywhere result)."""
    softmax = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).softmax(dim=-1)
    with pytest.warns(UserWarning, match=r"owner: the model's outputs look like probabilities \(every row lies in"):
        class_logits(softmax, 4, owner="owner")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_logits(softmax.log(), 4)  # log-probabilities are logits
        class_logits(softmax * 3, 4)  # rows in [0, 1] that do not sum to 1
        class_logits(softmax, 4, "probabilities")
        class_logits(torch.tensor([0.2, 0.9, 0.5, 0.7]), 4)  # binary: logits in [0, 1] are logits


def test_float_targets_holding_whole_numbers_are_class_indices():
    assert torch.equal(class_targets(torch.tensor([0.0, 1.0, 1.0])), torch.tensor([0, 1, 1]))
    assert torch.equal(class_targets(torch.tensor([[1.0], [0.0]])), torch.tensor([1, 0]))  # BCE's (N, 1)
    ints = torch.tensor([2, 0])
    assert class_targets(ints) is ints and class_targets(None) is None
    for bad in (torch.tensor([0.0, 0.5]), torch.tensor([1.0, float("nan")])):
        with pytest.raises(ValueError, match=r"targets must be class indices: integers, or floats holding whole"):
            class_targets(bad)


# -- the torch-only layer --------------------------------------------------------------------------------------------
def test_evaluate_invariance_measures_a_binary_model_natively():
    torch.manual_seed(0)
    model = BinaryFineTuner(squeeze=True)
    images, targets = binary_data()
    sequence = sequence_preset("monitor")["shift"]
    native = evaluate_invariance(model, images, targets.float(), sequence, batch_size=40)
    explicit = evaluate_invariance(model, images, targets, sequence, forward_fn=lambda m, x: two_class(m(x)))
    for key in METRICS:
        assert float(native[key]) == pytest.approx(float(explicit[key]), abs=1e-6), key
    rates = hand_rates(model, images, targets, sequence)
    assert float(native["flip_rate"]) == pytest.approx(rates["flip_rate"], abs=1e-6)
    assert float(native["accuracy"]) == pytest.approx(rates["accuracy"], abs=1e-6)
    sigmoid = evaluate_sequences(
        nn.Sequential(model, nn.Sigmoid()), images, targets, {"shift": sequence}, outputs="probabilities"
    )["shift"]
    for key in METRICS:
        assert float(sigmoid[key]) == pytest.approx(float(native[key]), abs=1e-5), key
    # the published protocols run the same conversion, float targets included
    for name in ("zhang2019", "imagenet_p_flip"):
        by_hand = evaluate_protocol(model, images, targets, name, forward_fn=lambda m, x: two_class(m(x)))
        assert evaluate_protocol(model, images, targets.float()[:, None], name) == by_hand, name
        assert evaluate_protocol(
            nn.Sequential(model, nn.Sigmoid()), images, targets, name, outputs="probabilities"
        ) == pytest.approx(by_hand, abs=1e-9), name


def test_bad_outputs_and_probabilities_out_of_range_are_clear_errors():
    model = BinaryFineTuner()
    images, targets = binary_data()
    sequence = sequence_preset("monitor")["shift"]
    with pytest.raises(
        ValueError,
        match=r"^evaluate_invariance: outputs must be one of \('logits', 'probabilities'\), "
        r"got 'probs'$",
    ):
        evaluate_invariance(model, images, targets, sequence, outputs="probs")
    with pytest.raises(TypeError, match=r"evaluate_sequences: outputs must be one of"):
        evaluate_sequences(model, images, targets, {"shift": sequence}, outputs=None)
    with pytest.raises(ValueError, match=r"protocol_counts: outputs must be one of"):
        evaluate_protocol(model, images, targets, "zhang2019", outputs="sigmoid")
    with pytest.raises(ValueError, match=r"ProtocolTotals: outputs must be one of"):
        ProtocolTotals(["zhang2019"], seed=0, normalize=None, batch_size=8, outputs="softmax")
    for callback in (InvarianceMonitor, InvarianceReport):
        with pytest.raises(ValueError, match=rf"^{callback.__name__}: outputs must be one of"):
            callback(outputs="probability")
        with pytest.raises(ValueError, match=rf"^{callback.__name__}: pass forward_fn or output_key, not both"):
            callback(forward_fn=OutputKey("logit"), output_key="logit")
    with pytest.raises(
        ValueError,
        match=r"^class_logits: the model's outputs must be probabilities in \[0, 1\] "
        r"\(outputs='probabilities'\), got values in \[1\.25, 1\.25\]; pass outputs='logits'",
    ):
        evaluate_invariance(
            model, images, targets, sequence, outputs="probabilities", forward_fn=lambda m, x: m(x) * 0 + 1.25
        )
    with pytest.raises(ValueError, match=r"targets must be class indices: integers, or floats"):
        evaluate_invariance(model, images, targets + 0.5, sequence)


def test_targets_that_do_not_fit_say_what_to_do():
    model = BinaryFineTuner()
    images, _ = binary_data()
    three_classes = torch.arange(NUM_IMAGES) % 3
    with pytest.raises(
        ValueError,
        match=r"targets range over \[0, 2\] but the model's outputs give 2 classes.*"
        r"read as one binary logit.*outputs='probabilities'.*forward_fn",
    ):
        evaluate_invariance(model, images, three_classes, sequence_preset("monitor")["shift"])
    with pytest.raises(ValueError, match=r"targets range over \[0, 2\] .*binary logit"):
        evaluate_protocol(model, images, three_classes, "imagenet_p_flip")


def test_output_key_picks_an_entry_of_a_dict_or_tuple_output():
    model = DictBinaryHead()
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(OutputKey("logit")(model, x), model.logit(x))
    assert torch.equal(OutputKey(1)(lambda v: (v, v + 1), torch.zeros(1)), torch.ones(1))
    with pytest.raises(
        ValueError,
        match=r"OutputKey: the model's output has no entry 'logits' \(it is keys "
        r"\['logit', 'features'\]\)",
    ):
        OutputKey("logits")(model, x)
    with pytest.raises(TypeError, match="InvarianceMonitor: output_key must be a str"):
        InvarianceMonitor(output_key=1.5)


# -- the callbacks in real Trainer runs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("squeeze, float_targets", [(False, False), (True, True)], ids=["N1-int", "N-float"])
def test_monitor_measures_a_bce_fine_tuning_module_as_evaluate_invariance_does(tmp_path, squeeze, float_targets):
    torch.manual_seed(0)
    module = BinaryFineTuner(squeeze=squeeze)
    monitor = fit_monitor(tmp_path, module, BinaryData(float_targets), protocols=("imagenet_p_flip",))
    logged = monitor.history[-1]["values"]
    subset = monitor.subsets["val"]
    assert subset.targets.is_floating_point() == float_targets
    targets = subset.targets.long()
    for name, sequence in monitor.sequences.items():
        expected = evaluate_invariance(
            module, subset.images, targets, sequence, forward_fn=lambda m, x: two_class(m(x))
        )
        for key in METRICS:
            assert logged[f"val/{name}/{key}"] == pytest.approx(float(expected[key]), abs=0.005), (name, key)
        rates = hand_rates(module, subset.images, targets, sequence)
        assert logged[f"val/{name}/flip_rate"] == pytest.approx(rates["flip_rate"], abs=0.005), name
        assert logged[f"val/{name}/accuracy"] == pytest.approx(rates["accuracy"], abs=0.005), name
    assert (
        logged["val/shift/flip_rate"] > 0
        and hand_rates(module, subset.images, targets, monitor.sequences["shift"])["classes_predicted"] == 2
    )
    protocol = evaluate_protocol(
        module, subset.images, targets, "imagenet_p_flip", forward_fn=lambda m, x: two_class(m(x))
    )
    assert logged["val/imagenet_p_flip/flip_probability"] == pytest.approx(protocol["flip_probability"], abs=1e-6)
    assert logged["val/imagenet_p_flip/accuracy"] == pytest.approx(protocol["accuracy"], abs=1e-6)


def test_sigmoid_module_with_outputs_probabilities_equals_the_logits_module(tmp_path):
    torch.manual_seed(0)
    inner = BinaryFineTuner()
    data = BinaryData()
    logits_monitor = fit_monitor(tmp_path / "logits", inner, data, protocols=("zhang2019",))
    sigmoid_monitor = fit_monitor(
        tmp_path / "sigmoid", SigmoidHead(inner), data, protocols=("zhang2019",), outputs="probabilities"
    )
    assert sigmoid_monitor.subsets["val"].indices == logits_monitor.subsets["val"].indices
    from_logits, from_sigmoid = logits_monitor.history[-1]["values"], sigmoid_monitor.history[-1]["values"]
    assert from_sigmoid.keys() == from_logits.keys() and "val/zhang2019/consistency" in from_logits
    for key, value in from_logits.items():
        assert from_sigmoid[key] == pytest.approx(value, abs=1e-5), key
    subset = logits_monitor.subsets["val"]
    assert hand_rates(inner, subset.images, subset.targets, logits_monitor.sequences["shift"])["classes_predicted"] == 2
    assert 0 < from_logits["val/zhang2019/consistency"] < 1


def test_report_measures_a_sigmoid_module_with_outputs_probabilities(tmp_path):
    torch.manual_seed(0)
    inner = BinaryFineTuner()
    report = InvarianceReport(normalize=None, log_plots=False, batch_size=64, outputs="probabilities")
    tiny_trainer(tmp_path, callbacks=[report]).test(SigmoidHead(inner), datamodule=BinaryData(float_targets=True))
    images, targets = binary_data()
    for name, sequence in report.sequences.items():
        expected = evaluate_invariance(inner, images, targets, sequence, forward_fn=lambda m, x: two_class(m(x)))
        for key in METRICS:
            assert float(report.results[name][key]) == pytest.approx(float(expected[key]), abs=1e-5), (name, key)
    assert 0 < float(report.results["shift"]["flip_rate"]) < 1


def test_monitor_errors_name_the_fix(tmp_path):
    images, _ = binary_data()
    three_classes = DataLoader(TensorDataset(images, torch.arange(NUM_IMAGES) % 3), batch_size=16)
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        callbacks=[InvarianceMonitor(num_samples=8, splits=("val",), log_plots=False)],
    )
    with pytest.raises(
        ValueError,
        match=r"^InvarianceMonitor: 'val' targets range over \[0, 2\] but the model's "
        r"outputs give 2 classes.*binary logit.*forward_fn",
    ):
        trainer.fit(BinaryFineTuner(), train_dataloaders=three_classes, val_dataloaders=three_classes)
    module = BinaryFineTuner()
    nn.init.constant_(module.fc[-1].bias, 5.0)  # logits far above 1 taken for probabilities
    nn.init.zeros_(module.fc[-1].weight)
    monitor = InvarianceMonitor(num_samples=8, splits=("val",), log_plots=False, outputs="probabilities")
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[monitor])
    with pytest.raises(
        ValueError,
        match=r"^InvarianceMonitor: the model's outputs must be probabilities in \[0, 1\] "
        r"\(outputs='probabilities'\), got values in \[5, 5\]",
    ):
        trainer.fit(module, datamodule=BinaryData())


# -- forward_fn and output_key from YAML, through the project's LightningCLI ----------------------------------------
CALLS: list[int] = []


def unannotated_forward(module, x):
    CALLS.append(x.shape[0])
    return module(x)


def logit_of(module, x):
    return module(x)["logit"]


def test_a_plain_importable_forward_fn_works_from_a_yaml_config(tmp_path):
    data_dir = write_random_cifar10(tmp_path, train=64, test=16)
    monitor = {
        "class_path": "invariance_lightning.InvarianceMonitor",
        "init_args": {
            "forward_fn": f"{__name__}.unannotated_forward",
            "splits": ["val"],
            "num_samples": 8,
            "log_plots": False,
        },
    }
    config = {
        "trainer": {
            "fast_dev_run": True,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [monitor],
        },
        "model": {"backbone": "cifar_resnet20", "num_classes": 10, "augmentation": "none"},
        "data": {
            "class_path": "invariance_lightning.lightning.data.CIFARDataModule",
            "init_args": {"data_dir": str(data_dir), "val_split": 16, "batch_size": 16},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    CALLS.clear()
    main(["fit", "--config", str(path), "--no_wandb", "true"])
    frames = sum(len(sequence) for sequence in sequence_preset("monitor").values())
    assert sum(CALLS) >= 8 * frames, CALLS  # every frame of the 8 fast_dev_run images went through it


@pytest.mark.parametrize(
    "init_args",
    [
        {"output_key": "logit"},
        {"forward_fn": f"{__name__}.logit_of"},
        {"forward_fn": {"class_path": "invariance_lightning.metrics.OutputKey", "init_args": {"key": "logit"}}},
    ],
    ids=["output_key", "function", "OutputKey"],
)
def test_output_key_and_forward_fn_from_yaml_measure_a_dict_output(tmp_path, init_args):
    monitor = {
        "class_path": "invariance_lightning.InvarianceMonitor",
        "init_args": {**init_args, "splits": ["val"], "num_samples": 32, "normalize": None, "log_plots": False},
    }
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [monitor],
        },
        "data": {"float_targets": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = InvarianceCLI(
        DictBinaryHead, BinaryData, args=["fit", "--config", str(path)], save_config_kwargs={"overwrite": True}
    )
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, InvarianceMonitor)]
    assert monitor.history, "the monitor measured"
    subset = monitor.subsets["val"]
    logged = monitor.history[-1]["values"]
    for name, sequence in monitor.sequences.items():
        expected = evaluate_invariance(
            cli.model, subset.images, subset.targets.long(), sequence, forward_fn=lambda m, x: two_class(m(x)["logit"])
        )
        for key in ("flip_rate", "accuracy", "mac"):
            assert logged[f"val/{name}/{key}"] == pytest.approx(float(expected[key]), abs=0.005), (name, key)
