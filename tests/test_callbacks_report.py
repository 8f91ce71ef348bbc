"""InvarianceReport: the full protocol over a whole split at the end of testing, and on demand."""

from __future__ import annotations

import json

import pytest
from lightning_helpers import TinyClassifier, tiny_data, tiny_loader, tiny_trainer

from invariance_lightning import InvarianceReport, ScaleSequence, ShiftSequence, evaluate_invariance

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
    with pytest.raises(ValueError, match="split must be one of"):
        InvarianceReport(split="holdout")
    with pytest.raises(ValueError, match="num_samples must be None"):
        InvarianceReport(num_samples=0)
