"""InvarianceMonitor in real Trainer runs: logged values, checkpoints, resume, loggers, bad input."""

from __future__ import annotations

import csv
import glob
import math
import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from invariance_lightning import InvarianceMonitor, ScaleSequence, ShiftSequence, evaluate_invariance
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.validation import NonFiniteLogitsError
from lightning_helpers import TinyClassifier, tiny_data, tiny_loader, tiny_trainer

SEQUENCES = {"shift": ShiftSequence(max_shift=2, mode="zeros"), "scale": ScaleSequence([0.9, 1.0, 1.1])}


def monitor(**kwargs) -> InvarianceMonitor:
    options = dict(sequences=SEQUENCES, num_samples=16, log_plots=False, batch_size=20)
    options.update(kwargs)
    return InvarianceMonitor(**options)


def test_logged_values_equal_evaluate_invariance_on_the_same_subset(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    callback = monitor()
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    trainer.fit(model, tiny_loader(40, seed=1), tiny_loader(24, seed=2))

    val_images, val_targets = tiny_data(24, seed=2)
    indices = callback.subsets["val"].indices
    for name, sequence in SEQUENCES.items():
        expected = evaluate_invariance(model, val_images[indices], val_targets[indices], sequence)
        for metric in ("flip_rate", "consistency", "mac", "top5_distance", "accuracy", "worst_case_accuracy"):
            logged = trainer.callback_metrics[f"invariance/val/{name}/{metric}"]
            assert float(logged) == pytest.approx(float(expected[metric]), abs=1e-6), (name, metric)
    train_images, train_targets = tiny_data(40, seed=1)
    train_indices = callback.subsets["train"].indices
    expected = evaluate_invariance(model, train_images[train_indices], train_targets[train_indices], SEQUENCES["shift"])
    assert float(trainer.callback_metrics["invariance/train/shift/flip_rate"]) == pytest.approx(
        float(expected["flip_rate"])
    )
    assert model.training, "train mode must be restored"
    assert [row["epoch"] for row in callback.history] == [0]


def test_callback_does_not_change_training(tmp_path):
    def train(callbacks):
        pl.seed_everything(7)
        model = TinyClassifier()
        trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=callbacks, logger=False, enable_checkpointing=False)
        trainer.fit(model, tiny_loader(40, seed=1, shuffle=True), tiny_loader(24, seed=2))
        return model.state_dict()

    without = train([])
    with_monitor = train([monitor(log_plots=True)])
    for key in without:
        torch.testing.assert_close(with_monitor[key], without[key], rtol=0, atol=0, msg=key)


def test_model_checkpoint_monitors_flip_rate(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "best", monitor="invariance/val/shift/flip_rate", mode="min")
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[monitor(), checkpoint])
    trainer.fit(TinyClassifier(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    assert checkpoint.best_model_path, "ModelCheckpoint must find the monitored invariance metric"
    assert math.isfinite(float(checkpoint.best_model_score))


def test_resumed_run_continues_history_identically(tmp_path):
    def run(max_epochs, ckpt_path=None):
        pl.seed_everything(0)
        callback = monitor()
        every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
        trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, callbacks=[callback, every_epoch])
        trainer.fit(TinyClassifier(), tiny_loader(40, seed=1), tiny_loader(24, seed=2), ckpt_path=ckpt_path)
        return callback

    uninterrupted = run(3)
    interrupted = run(1)
    resumed = run(3, ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    assert resumed.history[:1] == interrupted.history
    assert resumed.subsets["val"].indices == uninterrupted.subsets["val"].indices
    for row, expected in zip(resumed.history, uninterrupted.history):
        assert row["values"] == pytest.approx(expected["values"], abs=1e-6), row["epoch"]


def test_csv_logger_gets_the_scalars_and_every_n_epochs(tmp_path):
    pl.seed_everything(0)
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[monitor(every_n_epochs=2, log_plots=True)])
    trainer.fit(TinyClassifier(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    measured = [r for r in rows if r.get("invariance/val/shift/flip_rate")]
    assert sorted(int(r["epoch"]) for r in measured) == [0, 2]
    assert all(0.0 <= float(r["invariance/train/scale/consistency"]) <= 1.0 for r in measured)
    pngs = sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(trainer.logger.log_dir, "invariance_plots", "*.png"))
    )
    assert "invariance_plots_history_epoch002.png" in pngs
    assert "invariance_plots_shift_flips_val_epoch000.png" in pngs


def test_without_validation_it_measures_at_train_epoch_end(tmp_path):
    callback = monitor(splits=("train",))
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(TinyClassifier(), tiny_loader(40, seed=1))
    assert [row["epoch"] for row in callback.history] == [0, 1]
    assert "invariance/train/shift/flip_rate" in trainer.callback_metrics


def test_bf16_mixed_precision_runs(tmp_path):
    callback = monitor()
    trainer = tiny_trainer(tmp_path, max_epochs=1, precision="bf16-mixed", callbacks=[callback])
    trainer.fit(TinyClassifier(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    assert 0.0 <= float(trainer.callback_metrics["invariance/val/shift/flip_rate"]) <= 1.0


def test_wandb_offline_run_has_scalars_and_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="invariance-tests", save_dir=str(tmp_path), offline=True)
    trainer = tiny_trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[monitor(log_plots=True)])
    trainer.fit(TinyClassifier(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    run = logger.experiment
    logged = float(trainer.callback_metrics["invariance/val/shift/flip_rate"])
    assert run.summary["invariance/val/shift/flip_rate"] == pytest.approx(logged)
    run_dir = run.dir
    run.finish()
    images = glob.glob(os.path.join(run_dir, "media", "images", "invariance_plots", "**", "*.png"), recursive=True)
    assert any("per_frame" in p for p in images) and any("history" in p for p in images), images
    tables = glob.glob(os.path.join(run_dir, "media", "table", "invariance_tables", "**", "*.json"), recursive=True)
    assert tables, "per-frame tables must be logged"


def test_plot_failures_warn_once_and_training_continues(tmp_path, monkeypatch):
    from invariance_lightning.lightning.callbacks import sinks

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sinks.FigureSink, "_to_files", staticmethod(broken))
    callback = monitor(log_plots=True)
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[callback])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    messages = [str(w.message) for w in caught if "could not log PNG files" in str(w.message)]
    assert len(messages) == 1 and "disk full" in messages[0]
    assert messages[0].startswith("InvarianceMonitor: "), "a sink warning names the callback that raised it"
    assert len(callback.history) == 3
    assert "invariance/val/shift/flip_rate" in trainer.callback_metrics


class NaNInEvalMode(TinyClassifier):
    """Trains normally, returns NaN logits in eval mode (where the monitor measures)."""

    def forward(self, x):
        out = super().forward(x)
        return out if self.training else out * float("nan")


def test_nonfinite_logits_are_logged_as_nan_with_a_warning(tmp_path):
    callback = monitor()
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    with pytest.warns(UserWarning, match="NaN or infinite"):
        trainer.fit(NaNInEvalMode(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    assert math.isnan(callback.history[0]["values"]["val/shift/flip_rate"])


def test_nonfinite_logits_stop_the_run_when_asked_to_raise(tmp_path):
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[monitor(on_nonfinite="raise")])
    with pytest.raises(NonFiniteLogitsError, match="NaN or infinite"):
        trainer.fit(NaNInEvalMode(), tiny_loader(40, seed=1), tiny_loader(24, seed=2))


class FeatureMaps(TinyClassifier):
    """Returns feature maps, not logits."""

    def forward(self, x):
        return self.net[:3](x)


EMPTY = DataLoader(TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)), batch_size=4)


@pytest.mark.parametrize(
    ("module", "val_loader", "options", "match"),
    [
        (
            FeatureMaps,
            tiny_loader(24),
            {},
            r"^InvarianceMonitor: the model's outputs must be a floating-point \(N, C\)",
        ),
        (TinyClassifier, None, {}, "no val data"),
        (TinyClassifier, EMPTY, {}, "'val' split is empty"),
        (
            TinyClassifier,
            tiny_loader(24),
            {"sequences": {"shift": ShiftSequence(max_shift=16)}},
            r"^InvarianceMonitor: sequence 'shift' \(on the 'val' images\) must fit the 16x16 images, got ",
        ),
    ],
    ids=["feature-maps", "no-val-loader", "empty-val-split", "shift-larger-than-the-images"],
)
def test_a_bad_setup_fails_at_fit_start_with_an_error_naming_it(tmp_path, module, val_loader, options, match):
    trainer = tiny_trainer(tmp_path, callbacks=[monitor(**options)])
    with pytest.raises(ValueError, match=match):
        trainer.fit(module(), tiny_loader(40), val_loader)
    assert trainer.global_step == 0, "nothing was trained before the error"


def test_more_samples_than_images_warns_and_measures_every_image(tmp_path):
    callback = monitor(num_samples=100)
    with pytest.warns(UserWarning, match="num_samples=100 exceeds the 24 images"):
        tiny_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(
            TinyClassifier(), tiny_loader(40), tiny_loader(24)
        )
    assert callback.subsets["val"].indices == list(range(24))


def test_the_subsets_are_drawn_by_the_seed_without_repeats(tmp_path):
    def drawn(seed):
        callback = monitor(seed=seed)
        trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False)
        trainer.fit(TinyClassifier(), tiny_loader(40), tiny_loader(24))
        return callback.subsets["val"].indices

    first = drawn(0)
    assert len(set(first)) == 16 and set(first) <= set(range(24))
    assert drawn(0) == first and drawn(1) != first


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"splits": ("val", "holdout")}, "splits must be distinct names"),
        ({"num_samples": 0}, "^InvarianceMonitor: num_samples must be an int >= 1, got 0$"),
        ({"every_n_epochs": 0}, "^InvarianceMonitor: every_n_epochs must be an int >= 1, got 0$"),
        ({"batch_size": 0}, "^InvarianceMonitor: batch_size must be an int >= 1, got 0$"),
        ({"sequences": {}}, "^InvarianceMonitor: sequences must be a non-empty mapping .* got an empty mapping$"),
        ({"sequences": {"a/b": ShiftSequence(max_shift=1)}}, "without '/'"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite must be one of"),
        ({"normalize": ((0.5,), (0.0,))}, "std > 0"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InvarianceMonitor(**kwargs)


def test_constructor_rejects_wrong_types_with_type_error():
    with pytest.raises(TypeError, match="^InvarianceMonitor: num_samples must be an int >= 1, got float 8.0$"):
        InvarianceMonitor(num_samples=8.0)


def test_state_dict_round_trip_restores_every_saved_field(tmp_path):
    # Everything the monitor saves must come back from load_state_dict: a restored monitor built with other
    # settings saves exactly the same state (a saved constructor setting would not be restored and would differ).
    source = monitor()
    tiny_trainer(tmp_path, max_epochs=2, callbacks=[source]).fit(TinyClassifier(), tiny_loader(40), tiny_loader(24))
    saved = source.state_dict()
    assert set(saved) == {"history", "subset_indices"}
    assert [row["epoch"] for row in saved["history"]] == [0, 1]
    assert saved["subset_indices"]["val"] == source.subsets["val"].indices
    restored = monitor(seed=5, num_samples=4)
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved
    assert restored.history == source.history and restored.history is not source.history


def test_dict_batches_with_batch_key_and_forward_fn(tmp_path):
    class DictDataset(torch.utils.data.Dataset):
        def __init__(self, seed):
            self.images, self.targets = tiny_data(24, seed=seed)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return {"image": self.images[i], "label": self.targets[i]}

    class DictModule(TinyClassifier):
        def forward(self, x):
            return {"logits": super().forward(x)}

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch["image"])["logits"], batch["label"])

        def validation_step(self, batch, batch_idx):
            pass

    def logits_of(module, x):
        return module(x)["logits"]

    pl.seed_everything(0)
    model = DictModule()
    callback = monitor(batch_key=("image", "label"), forward_fn=logits_of)
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    trainer.fit(model, DataLoader(DictDataset(1), batch_size=8), DataLoader(DictDataset(2), batch_size=8))
    images, targets = tiny_data(24, seed=2)
    indices = callback.subsets["val"].indices
    expected = evaluate_invariance(model, images[indices], targets[indices], SEQUENCES["shift"], forward_fn=logits_of)
    for metric in ("accuracy", "flip_rate"):
        logged = float(trainer.callback_metrics[f"invariance/val/shift/{metric}"])
        assert logged == pytest.approx(float(expected[metric]), abs=1e-6), metric


def test_a_module_with_fewer_classes_than_top_k_logs_the_full_ranking_distance_under_a_stable_name(tmp_path):
    """Three classes, top_k=5: the callback logs ``top5_distance`` equal to the metric's full-ranking (top-3) value."""
    pl.seed_everything(0)
    model = TinyClassifier(num_classes=3)
    images, _ = tiny_data(24, seed=2)
    targets = torch.arange(24) % 3
    loader = DataLoader(TensorDataset(images, targets), batch_size=8)
    callback = monitor(splits=("val",))
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[callback], limit_train_batches=2)
    trainer.fit(model, loader, loader)

    indices = callback.subsets["val"].indices
    full_ranking = evaluate_invariance(model, images[indices], targets[indices], SEQUENCES["shift"], top_k=3)
    assert "invariance/val/shift/top3_distance" not in trainer.callback_metrics
    logged = trainer.callback_metrics["invariance/val/shift/top5_distance"]
    assert float(logged) == pytest.approx(float(full_ranking["top3_distance"]), abs=1e-6)


def unit_loader(num_images: int, seed: int) -> DataLoader:
    """Images in [0, 1] (the published protocols fill shifts with black before normalizing)."""
    images, targets = tiny_data(num_images, seed=seed)
    return DataLoader(TensorDataset(images.sigmoid(), targets), batch_size=8)


def test_protocol_values_equal_evaluate_protocol_on_the_subset_and_are_kept_in_the_history(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    normalize = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    callback = monitor(protocols=("aps2021_circular", "imagenet_p_flip"), seed=3, normalize=normalize, batch_size=7)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[callback])
    trainer.fit(model, unit_loader(40, seed=1), unit_loader(24, seed=2))

    images, targets = tiny_data(24, seed=2)
    indices = callback.subsets["val"].indices
    values = callback.history[-1]["values"]
    for name in ("aps2021_circular", "imagenet_p_flip"):
        expected = evaluate_protocol(
            model, images.sigmoid()[indices], targets[indices], name, seed=3, normalize=normalize
        )
        for key, value in expected.items():
            if key != "num_images":
                assert values[f"val/{name}/{key}"] == value, (name, key)  # exact: the same counts
                logged = float(trainer.callback_metrics[f"invariance/val/{name}/{key}"])
                assert logged == pytest.approx(value, abs=1e-6), (name, key)
    assert 0 < values["val/aps2021_circular/consistency"] < 1 and 0 < values["val/imagenet_p_flip/flip_probability"]
    assert "train/aps2021_circular/consistency" in values
    restored = monitor(protocols=("aps2021_circular",))
    restored.load_state_dict(callback.state_dict())
    assert restored.history == callback.history


@pytest.mark.parametrize(
    ("protocols", "match"),
    [
        (("zhang2020",), "unknown protocol 'zhang2020'; valid protocols: zhang2019, aps2021_standard"),
        (("zhang2019", "zhang2019"), "names a protocol twice"),
    ],
)
def test_unknown_or_repeated_protocols_are_refused_by_the_constructor(protocols, match):
    with pytest.raises(ValueError, match=match):
        InvarianceMonitor(protocols=protocols)


def test_protocols_refuse_normalized_images_at_fit_start(tmp_path):
    callback = monitor(protocols=("aps2021_standard",))
    with pytest.raises(
        ValueError,
        match=r"^InvarianceMonitor: the 'val' images of the protocols must be uint8 or floats in \[0, 1\] .* got values in \[-",
    ):
        tiny_trainer(tmp_path, callbacks=[callback]).fit(TinyClassifier(), unit_loader(40, 1), tiny_loader(24))
