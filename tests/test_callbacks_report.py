"""InvarianceReport: the full protocol over a whole split at the end of testing, and on demand."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, IterableDataset

from invariance_lightning import InvarianceReport, ScaleSequence, ShiftSequence, evaluate_invariance
from invariance_lightning.lightning.callbacks import sinks
from invariance_lightning.lightning.callbacks.measure import FlipExamples
from lightning_helpers import LargestImageBatch, TinyClassifier, tiny_data, tiny_loader, tiny_trainer

SEQUENCES = {"shift": ShiftSequence(max_shift=4, mode="circular"), "zoom": ScaleSequence([1.0, 0.8, 1.2])}


def test_report_at_test_end_equals_evaluate_invariance_on_the_whole_split(tmp_path):
    model = TinyClassifier()
    report = InvarianceReport(SEQUENCES, output_dir=tmp_path / "report", log_plots=True)
    trainer = tiny_trainer(tmp_path, callbacks=[report])
    trainer.test(model, tiny_loader(30, seed=3, batch_size=7))

    images, targets = tiny_data(30, seed=3)
    for name, sequence in SEQUENCES.items():
        expected = evaluate_invariance(model, images, targets, sequence)
        for metric, value in expected.items():
            assert report.results[name][metric].tolist() == pytest.approx(value.tolist(), abs=1e-6), (name, metric)
        logged = trainer.callback_metrics[f"invariance_report/test/{name}/flip_rate"]
        assert float(logged) == pytest.approx(float(expected["flip_rate"]), abs=1e-6)

    payload = json.loads((tmp_path / "report" / "invariance_report.json").read_text())
    assert payload["num_images"] == 30 and payload["split"] == "test"
    assert payload["results"]["shift"]["frame_labels"] == ["(0, 0)", "(1, 1)", "(2, 2)", "(3, 3)", "(4, 4)"]
    assert len(payload["results"]["zoom"]["metrics"]["per_frame_accuracy"]) == 3
    markdown = (tmp_path / "report" / "invariance_report.md").read_text()
    assert "| shift |" in markdown and "worst_case_accuracy" in markdown


def test_report_on_demand_for_the_validation_split(tmp_path):
    model = TinyClassifier()
    trainer = tiny_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(model, tiny_loader(40, seed=1), tiny_loader(24, seed=2))
    report = InvarianceReport(SEQUENCES, split="val", num_samples=10, log_plots=False)
    results = report.run(trainer, model)
    assert set(results) == {"shift", "zoom"}
    assert 0.0 <= float(results["shift"]["consistency"]) <= 1.0


def test_report_rejects_bad_arguments():
    with pytest.raises(ValueError, match="^InvarianceReport: split must be one of .* got 'holdout'$"):
        InvarianceReport(split="holdout")
    with pytest.raises(ValueError, match="^InvarianceReport: num_samples must be None or an int >= 1, got 0$"):
        InvarianceReport(num_samples=0)
    with pytest.raises(TypeError, match="^InvarianceReport: num_samples must be None or an int >= 1, got float 8.0$"):
        InvarianceReport(num_samples=8.0)


def test_report_streams_the_split_and_never_builds_a_tensor_of_its_size(tmp_path):
    model = TinyClassifier()
    report = InvarianceReport(SEQUENCES, batch_size=8, output_dir=tmp_path / "report", log_plots=False)
    trainer = tiny_trainer(tmp_path, callbacks=[report], logger=False)
    loader = tiny_loader(30, seed=3, batch_size=7)  # the dataset itself holds the split, as a datamodule would
    with LargestImageBatch(16, 16) as tracker:
        trainer.test(model, loader)
    assert 7 <= tracker.largest <= 8, f"an image tensor of {tracker.largest} images was built for a 30-image split"

    images, targets = tiny_data(30, seed=3)
    for name, sequence in SEQUENCES.items():
        expected = evaluate_invariance(model, images, targets, sequence)
        for metric, value in expected.items():
            assert report.results[name][metric].tolist() == pytest.approx(value.tolist(), abs=1e-6), (name, metric)
    assert json.loads((tmp_path / "report" / "invariance_report.json").read_text())["num_images"] == 30


class Stream(IterableDataset):
    """An iterable dataset (not indexable): the report takes the first images it yields."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __iter__(self):
        return zip(self.images, self.targets)


def test_report_on_an_iterable_dataset_measures_its_first_images(tmp_path):
    model = TinyClassifier()
    images, targets = tiny_data(30, seed=3)
    report = InvarianceReport(SEQUENCES, num_samples=12, batch_size=8, output_dir=tmp_path, log_plots=False)
    trainer = tiny_trainer(tmp_path, callbacks=[report], logger=False)
    with pytest.warns(UserWarning, match="cannot be indexed; the invariance images are the first ones it yields"):
        trainer.test(model, DataLoader(Stream(images, targets), batch_size=5))
    for name, sequence in SEQUENCES.items():
        expected = evaluate_invariance(model, images[:12], targets[:12], sequence)
        assert float(report.results[name]["flip_rate"]) == pytest.approx(float(expected["flip_rate"]), abs=1e-6)
        assert float(report.results[name]["accuracy"]) == pytest.approx(float(expected["accuracy"]), abs=1e-6)
    assert json.loads((tmp_path / "invariance_report.json").read_text())["num_images"] == 12


def test_flip_examples_kept_batch_by_batch_equal_a_stable_sort_of_all_images():
    generator = torch.Generator().manual_seed(0)
    images = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 1, 2, 2)
    predictions = torch.randint(0, 3, (20, 4), generator=generator)  # flip counts 0..3, with many ties
    targets = torch.arange(20)
    kept = FlipExamples(6)
    for start in range(0, 20, 3):
        kept.add(images[start : start + 3], predictions[start : start + 3], targets[start : start + 3])
    flips = (predictions[:, 1:] != predictions[:, :-1]).sum(dim=1)
    expected = torch.argsort(flips, descending=True, stable=True)[:6]
    assert kept.targets.tolist() == expected.tolist()
    assert torch.equal(kept.images, images[expected]) and torch.equal(kept.predictions, predictions[expected])


def test_report_warnings_and_errors_name_the_report(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sinks.FigureSink, "_to_files", staticmethod(broken))
    report = InvarianceReport({"shift": ShiftSequence(max_shift=1)}, log_plots=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, callbacks=[report]).test(TinyClassifier(), tiny_loader(10))
    (message,) = [str(w.message) for w in caught if "could not log PNG files" in str(w.message)]
    assert message.startswith("InvarianceReport: ") and "disk full" in message

    class Features(TinyClassifier):
        def forward(self, x):
            return self.net[:3](x)  # feature maps, not logits

        def test_step(self, batch, batch_idx):
            pass

    with pytest.raises(ValueError, match=r"^InvarianceReport: the model's outputs must be a floating-point \(N, C\)"):
        tiny_trainer(tmp_path, callbacks=[InvarianceReport(log_plots=False)]).test(Features(), tiny_loader(10))


def test_sink_warnings_are_emitted_on_global_rank_zero_only(monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sinks.FigureSink("InvarianceReport").warn_once("plots", "could not draw plots")
    assert not caught, "a warning on every DDP process repeats it world_size times"
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with pytest.warns(UserWarning, match="^InvarianceReport: could not draw plots"):
        sinks.FigureSink("InvarianceReport").warn_once("plots", "could not draw plots")
