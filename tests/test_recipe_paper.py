"""The Azulay & Weiss reproduction: the recipe end to end on a freshly trained checkpoint and generated data (no
../shared needed), and its package parts (``invariance_lightning.lightning.paper``): the shared pretrained ResNet-20 on
real CIFAR-10, the main job on a machine without ../shared (data and weights "downloaded" from stand-ins: a fake
torchvision dataset and a local HTTP server), and the missing-file errors."""

from __future__ import annotations

import hashlib
import io
import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from http_server import FileServer
from invariance_lightning.lightning.data import CIFAR_STATS, CIFARDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.paper import (
    PAPER_PRESETS,
    PAPER_SEQUENCES,
    PaperSettings,
    load_checkpoint_model,
    load_pretrained,
    load_subsets,
)
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.metrics.protocols import PROTOCOLS as PUBLISHED
from invariance_lightning.metrics.protocols import evaluate_protocol
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, PRETRAINED_CIFAR_RESNETS, load_cifar_resnet
from invariance_lightning.models.pretrained import WEIGHTS_URL_ENV, DownloadError, PretrainedFile
from invariance_lightning.transforms import sequence_preset
from lightning_helpers import train_classifier_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = {"shift_zeros", "shift_crop", "shift_embed", "shift_circular", "scale"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CIRCULAR = {"shift_circular": sequence_preset("paper")["shift_circular"]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rolled_predictions(model: torch.nn.Module, images: torch.Tensor, normalize, max_shift: int) -> torch.Tensor:
    """Top-1 predictions (N, T) on ``torch.roll``-ed diagonal shifts 0..max_shift, computed by hand."""
    mean, std = (torch.tensor(v)[:, None, None] for v in normalize)
    x = images.float() / 255
    model.eval()
    with torch.no_grad():
        frames = [model((torch.roll(x, (k, k), dims=(2, 3)) - mean) / std).argmax(1) for k in range(max_shift + 1)]
    return torch.stack(frames, dim=1)


def check_split(metrics: dict, predictions: torch.Tensor, labels: torch.Tensor) -> None:
    """The recipe's circular-shift numbers equal the hand computation."""
    flips = (predictions[:, 1:] != predictions[:, :-1]).double()
    hits = (predictions == labels[:, None]).double()
    assert metrics["flip_rate"] == pytest.approx(float(flips.mean()), abs=1e-6)
    assert metrics["per_frame_flip_rate"] == pytest.approx(flips.mean(0).tolist(), abs=1e-6)
    assert metrics["worst_case_accuracy"] == pytest.approx(float(hits.all(1).double().mean()), abs=1e-6)
    assert metrics["per_frame_accuracy"] == pytest.approx(hits.mean(0).tolist(), abs=1e-6)


def check_outputs(report_path: Path, payload: dict, protocols: set[str]) -> str:
    """Files exist, values are in range, the Markdown carries the tables and figures; returns the Markdown."""
    folder = report_path.parent
    assert report_path.name == "report.md" and (folder / "report.json").is_file()
    expected_plots = {"flip_rate_by_protocol.png", "train_vs_test.png", "layer_profile.png"}
    expected_plots |= {f"per_frame_{name}.png" for name in protocols}
    assert set(payload["plots"]) == expected_plots
    for plot in expected_plots:
        assert (folder / plot).read_bytes()[:8] == PNG_MAGIC
    assert set(payload["results"]) == {"test", "train"}
    for split in ("test", "train"):
        assert set(payload["results"][split]) == protocols
        for entry in payload["results"][split].values():
            metrics = entry["metrics"]
            for key in ("flip_rate", "consistency", "mac", "accuracy", "worst_case_accuracy"):
                assert 0.0 <= metrics[key] <= 1.0, key
            assert 0.0 <= metrics["top5_distance"] <= 5.0
            assert metrics["worst_case_accuracy"] <= min(metrics["per_frame_accuracy"]) + 1e-6
            assert len(metrics["per_frame_accuracy"]) == len(entry["frame_labels"])
    counts = payload["data"]["num_images"]
    for protocol, gap in payload["train_test_gap"].items():
        for metric, values in gap.items():
            train, test = values["train"], values["test"]
            assert train == payload["results"]["train"][protocol]["metrics"][metric]
            assert values["difference"] == pytest.approx(test - train)
            variance = train * (1 - train) / counts["train"] + test * (1 - test) / counts["test"]
            assert values["bound"] == pytest.approx(2 * math.sqrt(variance))
            assert values["significant"] == (abs(values["difference"]) > values["bound"])
    markdown = report_path.read_text()
    assert "| sequence | accuracy | worst_case_accuracy | flip_rate |" in markdown
    assert "| protocol | metric | train | test | test - train |" in markdown
    assert "| layer | type | shape | stride |" in markdown
    for name in protocols:
        assert f"| {name} (train) |" in markdown and f"| {name} (test) |" in markdown
    for plot in expected_plots:
        assert f"({plot})" in markdown
    assert "python recipes/paper.py" in markdown
    return markdown


@pytest.mark.shared_data
def test_pretrained_resnet20_on_cifar10(cifar10_dir, cifar_resnet_weights_dir, tmp_path):
    loaded = load_pretrained("resnet20", cifar_resnet_weights_dir, download=False)
    assert loaded.source == str(cifar_resnet_weights_dir / "resnet20-12fca82f.th") and loaded.name == "resnet20"
    assert tuple(loaded.normalize) == tuple(CIFAR_RESNET_NORMALIZE)
    subsets, datamodule = load_subsets(loaded, {"test": 16, "train": 16}, cifar10_dir, False, seed=0)
    assert datamodule.source == str(cifar10_dir)
    reference = CIFARDataModule(data_dir=cifar10_dir, download=False, val_split=0)
    model = load_cifar_resnet(cifar_resnet_weights_dir / "resnet20-12fca82f.th")
    for split in ("test", "train"):
        images, labels = subsets[split]
        expected_images, expected_labels = reference.split_arrays(split, 16, seed=0)
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
        results = evaluate_sequences(loaded.model, images, labels, sequence_preset("paper"), normalize=loaded.normalize)
        predictions = rolled_predictions(model, images, CIFAR_RESNET_NORMALIZE, 8)
        check_split({k: v.tolist() for k, v in results["shift_circular"].items()}, predictions, labels)
        # frame (0, 0) of every shift protocol but the crop is the plain image
        plain = float((predictions[:, 0] == labels).double().mean())
        assert float(results["shift_zeros"]["per_frame_accuracy"][0]) == pytest.approx(plain)
    assert plain > 0.8  # the pretrained model is 91.7% accurate on the test set


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """Random CIFAR-like npz files (64 train, 24 test) and an ImageClassifier checkpoint after 10 SGD steps."""
    folder = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("test", 24)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        np.savez(folder / f"cifar10_{split}.npz", images=images, labels=rng.integers(0, 10, count))
    return folder, train_classifier_checkpoint(folder, folder / "model.ckpt", steps=10)


def test_recipe_end_to_end_on_a_generated_checkpoint(generated, tmp_path, monkeypatch):
    recipe = runpy.run_path(str(REPO_ROOT / "recipes" / "paper.py"), run_name="paper_recipe")
    data_dir, checkpoint = generated
    monkeypatch.chdir(tmp_path)
    protocols = ["shift_circular", "shift_crop"]
    report = recipe["main"](
        [
            "--checkpoint",
            str(checkpoint),
            "--data_dir",
            str(data_dir),
            "--num_images",
            "32",
            "--layer_images",
            "4",
            "--protocols",
            *protocols,
            "aps2021_circular",
            "--seed",
            "2",
        ]
    )
    assert report == Path("results/paper/model/report.md")  # the default output folder, under the cwd
    payload = json.loads(report.with_name("report.json").read_text())
    markdown = check_outputs(report, payload, set(protocols))
    # 32 requested: all 24 test images, and 32 of the 56 training images left after the checkpoint's hold-out of 8
    assert payload["data"]["num_images"] == {"test": 24, "train": 32}
    assert payload["data"]["image_size"] == [32, 32] and "smaller than the 32x32 it was trained on" in markdown
    assert payload["data"]["datamodule"] == {"name": "cifar10", "val_split": 8, "seed": 0, "train_subset": None}
    assert payload["model"]["normalize"] == [list(v) for v in CIFAR_STATS["cifar10"]]

    with torch.serialization.safe_globals([type(Path())]):  # the datamodule saved its data_dir, a Path
        model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    datamodule = CIFARDataModule(data_dir=data_dir, download=False, val_split=8, seed=0)
    # the published protocol on the test images, with their positions as indices and the recipe's --seed
    images, labels = datamodule.split_arrays("test", 24, seed=2)
    published = payload["published_protocols"]["aps2021_circular"]
    assert published["results"] == evaluate_protocol(
        model, images, labels, "aps2021_circular", normalize=CIFAR_STATS["cifar10"], seed=2
    )
    assert 0 < published["results"]["consistency"] < 1
    assert "### Published protocols" in markdown and "| aps2021_circular | 24 | consistency " in markdown
    flip_rates = []
    for split, count in (("test", 24), ("train", 32)):
        images, labels = datamodule.split_arrays(split, count, seed=2)
        predictions = rolled_predictions(model, images, CIFAR_STATS["cifar10"], 8)
        check_split(payload["results"][split]["shift_circular"]["metrics"], predictions, labels)
        flip_rates.append(payload["results"][split]["shift_circular"]["metrics"]["flip_rate"])
    assert min(flip_rates) > 0  # the check above compared non-trivial predictions

    # default 'blocks' layers of the backbone: first conv, 9 residual blocks, the classifier
    rows = payload["layers"]["rows"]
    assert list(rows) == ["conv1", *(f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)), "linear"]
    assert [rows[f"layer{s}.0"]["stride"][0] for s in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert all(math.isfinite(row["pooled_change"]) for row in rows.values())
    # pooled change of the logits under a (1, 1) roll, by hand, on the 4 layer images (the first test images)
    images = datamodule.split_arrays("test", 24, seed=2)[0][:4].float() / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in CIFAR_STATS["cifar10"])
    with torch.no_grad():
        logits, rolled = (model.backbone((x - mean) / std) for x in (images, torch.roll(images, (1, 1), dims=(2, 3))))
    change = ((rolled - logits).norm(dim=1) / logits.norm(dim=1)).double().mean()
    assert rows["linear"]["pooled_change_by_shift"]["1,1"] == pytest.approx(float(change), rel=1e-4)

    assert recipe["build_parser"]().parse_args([]).download is True  # downloads are on unless --no-download
    assert recipe["build_parser"]().parse_args(["--no-download"]).download is False
    weights = tmp_path / "resnet20-0.th"
    weights.write_bytes(b"")
    with pytest.raises(SystemExit) as info:  # bad input: one line, status 1, no traceback
        recipe["cli"](["--checkpoint", str(weights)])
    assert str(info.value.code).startswith(f"paper.py: error: --checkpoint {weights}: expected a Lightning .ckpt")


def test_missing_data_says_where_it_looked(generated, tmp_path, monkeypatch):
    monkeypatch.delenv("INVARIANCE_DATA_DIR", raising=False)
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(tmp_path / "no-shared"))
    empty = tmp_path / "empty"
    empty.mkdir()
    loaded = load_checkpoint_model(generated[1])
    with pytest.raises(FileNotFoundError, match="no data found") as info:
        load_subsets(loaded, {"test": 4}, empty, download=False, seed=0)
    message = str(info.value)
    assert str(empty) in message and "download=False" in message
    assert "--data_dir" in message and "without --no-download" in message


def test_checkpoint_model_checks_its_data_and_normalizes_old_checkpoints_with_it(tmp_path):
    import lightning

    def save(name: str, num_classes: int, datamodule: dict) -> Path:  # no input_normalization: an old checkpoint
        model = ImageClassifier("cifar_resnet20", num_classes=num_classes, augmentation="none")
        path = tmp_path / f"{name}.ckpt"
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "epoch": 0,
                "pytorch-lightning_version": lightning.__version__,
                "datamodule_hyper_parameters": datamodule,
            },
            path,
        )
        return path

    loaded = load_checkpoint_model(save("c100", 100, {"name": "cifar100", "val_split": 0, "seed": 3}))
    assert tuple(loaded.normalize) == tuple(CIFAR_STATS["cifar100"])  # what CIFARDataModule("cifar100") gave it
    assert loaded.datamodule_kwargs == {"name": "cifar100", "val_split": 0, "seed": 3, "train_subset": None}
    assert loaded.layer_model is loaded.model.backbone and loaded.name == "c100"
    with pytest.raises(ValueError, match="has num_classes=10, but its data, cifar100, has 100"):
        load_checkpoint_model(save("mismatch", 10, {"name": "cifar100"}))
    with pytest.raises(ValueError, match="datamodule other than CIFARDataModule"):
        load_checkpoint_model(save("folder", 10, {"root": "imagenette"}))
    weights = tmp_path / "resnet20-0.th"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="--model resnet<depth> with --weights_dir"):
        load_checkpoint_model(weights)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint_model(tmp_path / "missing.ckpt")


@pytest.fixture(scope="module")
def trained_resnet20(generated) -> bytes:
    """The generated checkpoint's ResNet-20 as a weights file in the release's ``{"state_dict": ...}`` layout (a
    fresh network would predict one class for every image, which any model reproduces)."""
    with torch.serialization.safe_globals([type(Path())]):
        model = ImageClassifier.load_from_checkpoint(generated[1], map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save({"state_dict": model.backbone.state_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch) -> Path:
    """No ../shared, no INVARIANCE_DATA_DIR, an empty user cache (returned): what a new user's machine has. The
    weights URL points at a closed local port, so that no test reaches the internet."""
    monkeypatch.setenv(WEIGHTS_URL_ENV, "http://127.0.0.1:9/closed")
    (tmp_path / "no-shared").mkdir()
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(tmp_path / "no-shared"))
    monkeypatch.delenv("INVARIANCE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "invariance_lightning"


def test_main_job_downloads_data_and_weights_on_a_fresh_machine(
    generated, trained_resnet20, fresh_machine, tmp_path, monkeypatch
):
    downloads = []

    class TorchvisionCIFAR10:  # stands in for torchvision.datasets.CIFAR10 (no internet here)
        base_folder = "cifar-10-batches-py"

        def __init__(self, root, train, download):
            downloads.append((root, train, download))
            with np.load(generated[0] / f"cifar10_{'train' if train else 'test'}.npz") as arrays:
                self.data, self.targets = arrays["images"], arrays["labels"].tolist()
            self.classes = [f"class{i}" for i in range(10)]

    monkeypatch.setattr("invariance_lightning.lightning.data.cifar._TORCHVISION", {"cifar10": TorchvisionCIFAR10})
    sha256 = hashlib.sha256(trained_resnet20).hexdigest()
    monkeypatch.setitem(PRETRAINED_CIFAR_RESNETS, "resnet20", PretrainedFile("resnet20-random.th", 0, sha256))
    with FileServer({"/resnet20-random.th": trained_resnet20}) as release:
        monkeypatch.setenv(WEIGHTS_URL_ENV, release.url)
        loaded = load_pretrained("resnet20", None, download=True)
    assert release.requests == ["/resnet20-random.th"]
    cached = fresh_machine / "weights" / "resnet20-random.th"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256 and loaded.source == str(cached)
    subsets, datamodule = load_subsets(loaded, {"train": 8, "test": 8}, None, download=True, seed=0)
    assert downloads == [(str(fresh_machine), True, True), (str(fresh_machine), False, True)]
    assert datamodule.source == str(fresh_machine)
    # the numbers are those of the downloaded model on the "downloaded" images
    images, labels = subsets["test"]
    results = evaluate_sequences(loaded.model, images, labels, CIRCULAR, normalize=loaded.normalize)
    predictions = rolled_predictions(load_cifar_resnet(cached), images, CIFAR_RESNET_NORMALIZE, 8)
    check_split({k: v.tolist() for k, v in results["shift_circular"].items()}, predictions, labels)
    assert float(results["shift_circular"]["flip_rate"]) > 0  # a non-trivial comparison


def test_explicit_then_shared_weights_win_over_cache_and_download(
    trained_resnet20, fresh_machine, tmp_path, monkeypatch
):
    shared = tmp_path / "shared"
    (shared / "weights" / "cifar10-resnet").mkdir(parents=True)
    (shared / "weights" / "cifar10-resnet" / "resnet20-shared.th").write_bytes(trained_resnet20)
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(shared))
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    with FileServer({}) as release:  # a download attempt would show up here (and fail with 404)
        monkeypatch.setenv(WEIGHTS_URL_ENV, release.url)
        loaded = load_pretrained("resnet20", explicit, download=True)  # --weights_dir lacks it
        assert loaded.source == str(shared / "weights" / "cifar10-resnet" / "resnet20-shared.th")
        (explicit / "resnet20-mine.th").write_bytes(trained_resnet20)
        assert load_pretrained("resnet20", explicit, download=True).source == str(explicit / "resnet20-mine.th")
    assert release.requests == [] and not fresh_machine.exists()


def test_missing_weights_fail_with_a_clear_message(fresh_machine, tmp_path, monkeypatch):
    empty = tmp_path / "weights"
    empty.mkdir()
    shared = tmp_path / "no-shared"
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained("resnet56", empty, download=False)
    message = str(info.value)
    assert message.startswith("no weights for resnet56: looked for ")
    for place in (empty, shared / "weights" / "cifar10-resnet"):
        assert f"{place}/resnet56-*.th" in message
    assert f"{fresh_machine / 'weights' / 'resnet56-4bfd9763.th'}, and downloading is disabled" in message
    assert "drop --no-download" in message and "--checkpoint" in message and "INVARIANCE_SHARED_DIR" in message

    with pytest.raises(FileNotFoundError) as info:  # no pinned release file to download
        load_pretrained("resnet32", None, download=True)
    message = str(info.value)
    assert "resnet32 has no pinned download" in message and WEIGHTS_URL_ENV not in message

    with FileServer({}) as release, pytest.raises(DownloadError) as info:  # the release answers 404
        monkeypatch.setenv(WEIGHTS_URL_ENV, release.url)
        load_pretrained("resnet20", None, download=True)
    message = str(info.value)
    assert f"download of {release.url}/resnet20-12fca82f.th failed: HTTPError: HTTP Error 404" in message
    assert f"set {WEIGHTS_URL_ENV} to a mirror" in message
    assert not list((fresh_machine / "weights").iterdir())


def test_the_quick_preset_measures_the_paper_sequences_and_the_full_preset_adds_every_published_protocol():
    assert PaperSettings(preset="quick").chosen_protocols() == (list(PAPER_SEQUENCES), [])
    assert PaperSettings(preset="full").chosen_protocols() == (list(PAPER_SEQUENCES), list(PUBLISHED))
    chosen = PaperSettings(preset="full", protocols=("scale", "zhang2019")).chosen_protocols()
    assert chosen == (["scale"], ["zhang2019"])  # given protocols replace the preset's
    assert PaperSettings(preset="full", num_images=7).sizes() == PAPER_PRESETS["full"].__class__(
        7, 7, PAPER_PRESETS["full"].layers, tuple(PUBLISHED)
    )


def test_settings_refuse_no_sequence_an_unknown_protocol_and_an_unknown_preset():
    with pytest.raises(ValueError, match="needs at least one of shift_zeros"):
        PaperSettings(protocols=("zhang2019",)).chosen_protocols()
    with pytest.raises(ValueError, match="protocols"):
        PaperSettings(protocols=("shift_zeros", "nope")).chosen_protocols()
    with pytest.raises(ValueError, match="preset"):
        PaperSettings(preset="fast").sizes()


def test_options_take_the_lightning_cli_spelling_and_the_old_hyphen_spelling():
    parser = runpy.run_path(str(REPO_ROOT / "recipes" / "paper.py"), run_name="paper_recipe")["build_parser"]()
    for option in ("--data_dir", "--data-dir"):
        assert parser.parse_args([option, "here"]).data_dir == Path("here")
    for option in ("--batch_size", "--batch-size"):
        assert parser.parse_args([option, "64"]).batch_size == 64


def test_a_command_without_a_sequence_is_a_usage_error(capsys):
    main = runpy.run_path(str(REPO_ROOT / "recipes" / "paper.py"), run_name="paper_recipe")["main"]
    with pytest.raises(SystemExit) as stop:
        main(["--protocols", "zhang2019"])
    assert stop.value.code == 2 and "--protocols needs at least one of shift_zeros" in capsys.readouterr().err
