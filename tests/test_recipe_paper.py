"""End-to-end tests of ``recipes/paper.py``: the shared pretrained ResNet-20 on real CIFAR-10, a freshly trained
checkpoint on generated data (no ../shared needed), the main job on a machine without ../shared (data and weights
"downloaded" from stand-ins: a fake torchvision dataset and a local HTTP server), and the missing-file errors."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.data import CIFAR_STATS, CIFARDataModule
from http_server import FileServer
from invariance_lightning.models import CIFAR_RESNET_NORMALIZE, PRETRAINED_CIFAR_RESNETS, load_cifar_resnet
from invariance_lightning.models.pretrained import WEIGHTS_URL_ENV, PretrainedFile

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "paper.py"
PROTOCOLS = {"shift_zeros", "shift_crop", "shift_embed", "shift_circular", "scale"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recipe() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("paper_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


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
def test_pretrained_resnet20_on_cifar10(recipe, cifar10_dir, cifar_resnet_weights_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", "resnet20", "--weights-dir", str(cifar_resnet_weights_dir), "--data-dir", str(cifar10_dir),
            "--num-images", "16", "--layer-images", "4", "--layers", "conv1,layer2.0,linear", "--output", str(out)]
    report = recipe.main(argv)
    payload = json.loads((out / "report.json").read_text())
    markdown = check_outputs(report, payload, PROTOCOLS)
    assert payload["data"]["num_images"] == {"test": 16, "train": 16}
    assert payload["command"].endswith(" ".join(argv[-2:]))

    datamodule = CIFARDataModule(data_dir=cifar10_dir, download=False, val_split=0)
    model = load_cifar_resnet(cifar_resnet_weights_dir / "resnet20-12fca82f.th")
    for split in ("test", "train"):
        images, labels = datamodule.split_arrays(split, 16, seed=0)
        predictions = rolled_predictions(model, images, CIFAR_RESNET_NORMALIZE, 8)
        check_split(payload["results"][split]["shift_circular"]["metrics"], predictions, labels)
        # frame (0, 0) of every shift protocol but the crop is the plain image
        plain = float((predictions[:, 0] == labels).double().mean())
        assert payload["results"][split]["shift_zeros"]["metrics"]["per_frame_accuracy"][0] == pytest.approx(plain)
    assert plain > 0.8  # the pretrained model is 91.7% accurate on the test set

    rows = payload["layers"]["rows"]
    assert list(rows) == ["conv1", "layer2.0", "linear"]
    assert [rows[n]["stride"] for n in rows] == [[1.0, 1.0], [2.0, 2.0], None]
    assert rows["conv1"]["equivariance_error"] > 0 and rows["layer2.0"]["equivariance_error"] is None
    # pooled change of the logits under a (1, 1) roll, by hand, on the 4 layer images
    images = datamodule.split_arrays("test", 16, seed=0)[0][:4].float() / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in CIFAR_RESNET_NORMALIZE)
    with torch.no_grad():
        logits, rolled = (model((x - mean) / std) for x in (images, torch.roll(images, (1, 1), dims=(2, 3))))
    change = ((rolled - logits).norm(dim=1) / logits.norm(dim=1)).double().mean()
    assert rows["linear"]["pooled_change_by_shift"]["1,1"] == pytest.approx(float(change), rel=1e-4)
    assert set(rows["linear"]["pooled_change_by_shift"]) == {"1,1", "2,2", "4,4"}
    assert "| conv1 | Conv2d | 16x32x32 | 1 |" in markdown


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """Random CIFAR-like npz files (64 train, 24 test) and an ImageClassifier checkpoint after 10 SGD steps."""
    folder = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("test", 24)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        np.savez(folder / f"cifar10_{split}.npz", images=images, labels=rng.integers(0, 10, count))
    torch.manual_seed(0)
    datamodule = CIFARDataModule(data_dir=folder, download=False, val_split=8, batch_size=16)
    # lr 0.05 for 10 steps: enough for predictions that differ between images and shifts (a fresh network
    # predicts one class for every noise image)
    model = ImageClassifier("cifar_resnet20", augmentation="none", schedule="none", lr=0.05)
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(folder / "model.ckpt")
    return folder, folder / "model.ckpt"


def test_checkpoint_on_generated_data(recipe, generated, tmp_path, monkeypatch):
    data_dir, checkpoint = generated
    monkeypatch.chdir(tmp_path)
    protocols = ["shift_circular", "shift_crop"]
    report = recipe.main(["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--num-images", "32",
                          "--layer-images", "4", "--protocols", *protocols])
    assert report == Path("results/paper/model/report.md")  # the default output folder, under the cwd
    payload = json.loads(report.with_name("report.json").read_text())
    check_outputs(report, payload, set(protocols))
    # 32 requested: all 24 test images, and 32 of the 56 training images left after the checkpoint's hold-out of 8
    assert payload["data"]["num_images"] == {"test": 24, "train": 32}
    assert payload["data"]["datamodule"] == {"name": "cifar10", "val_split": 8, "seed": 0, "train_subset": None}
    assert payload["model"]["normalize"] == [list(v) for v in CIFAR_STATS["cifar10"]]

    with torch.serialization.safe_globals([type(Path())]):  # the datamodule saved its data_dir, a Path
        model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    datamodule = CIFARDataModule(data_dir=data_dir, download=False, val_split=8, seed=0)
    flip_rates = []
    for split, count in (("test", 24), ("train", 32)):
        images, labels = datamodule.split_arrays(split, count, seed=0)
        predictions = rolled_predictions(model, images, CIFAR_STATS["cifar10"], 8)
        check_split(payload["results"][split]["shift_circular"]["metrics"], predictions, labels)
        flip_rates.append(payload["results"][split]["shift_circular"]["metrics"]["flip_rate"])
    assert min(flip_rates) > 0  # the check above compared non-trivial predictions

    # default 'blocks' layers of the backbone: first conv, 9 residual blocks, the classifier
    rows = payload["layers"]["rows"]
    assert list(rows) == ["conv1", *(f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)), "linear"]
    assert [rows[f"layer{s}.0"]["stride"][0] for s in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert all(math.isfinite(row["pooled_change"]) for row in rows.values())


def test_missing_data_says_where_it_looked(recipe, generated, tmp_path, monkeypatch):
    monkeypatch.delenv("INVARIANCE_DATA_DIR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no data found") as info:
        recipe.main(["--checkpoint", str(generated[1]), "--data-dir", str(empty), "--output", str(tmp_path / "o"),
                     "--no-download"])
    message = str(info.value)
    assert str(empty) in message and "download=False" in message
    assert "--data-dir" in message and "without --no-download" in message


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


def test_downloads_are_on_unless_no_download(recipe):
    assert recipe.build_parser().parse_args([]).download is True
    assert recipe.build_parser().parse_args(["--no-download"]).download is False


def test_main_job_downloads_data_and_weights_on_a_fresh_machine(recipe, generated, trained_resnet20, fresh_machine,
                                                                 tmp_path, monkeypatch):
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
    out = tmp_path / "out"
    with FileServer({"/resnet20-random.th": trained_resnet20}) as release:
        monkeypatch.setenv(WEIGHTS_URL_ENV, release.url)
        report = recipe.main(["--model", "resnet20", "--num-images", "8", "--layer-images", "2", "--layers",
                              "conv1,linear", "--protocols", "shift_circular", "--output", str(out)])
    assert release.requests == ["/resnet20-random.th"]
    cached = fresh_machine / "weights" / "resnet20-random.th"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256
    assert downloads == [(str(fresh_machine), True, True), (str(fresh_machine), False, True)]
    payload = json.loads((out / "report.json").read_text())
    assert report == out / "report.md" and payload["model"]["source"] == str(cached)
    assert payload["data"]["source"] == str(fresh_machine)
    # the numbers are those of the downloaded model on the "downloaded" images
    images, labels = CIFARDataModule(download=True, val_split=0).split_arrays("test", 8, seed=0)
    predictions = rolled_predictions(load_cifar_resnet(cached), images, CIFAR_RESNET_NORMALIZE, 8)
    check_split(payload["results"]["test"]["shift_circular"]["metrics"], predictions, labels)
    assert payload["results"]["test"]["shift_circular"]["metrics"]["flip_rate"] > 0  # a non-trivial comparison


def test_explicit_then_shared_weights_win_over_cache_and_download(recipe, trained_resnet20, fresh_machine, tmp_path,
                                                                    monkeypatch):
    shared = tmp_path / "shared" / "weights" / "cifar10-resnet"
    shared.mkdir(parents=True)
    (shared / "resnet20-shared.th").write_bytes(trained_resnet20)
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(tmp_path / "shared"))
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    args = recipe.build_parser().parse_args(["--model", "resnet20", "--weights-dir", str(explicit)])
    with FileServer({}) as release:  # a download attempt would show up here (and fail with 404)
        monkeypatch.setenv(WEIGHTS_URL_ENV, release.url)
        assert recipe.load_model(args).source == str(shared / "resnet20-shared.th")  # --weights-dir lacks it
        (explicit / "resnet20-mine.th").write_bytes(trained_resnet20)
        assert recipe.load_model(args).source == str(explicit / "resnet20-mine.th")
    assert release.requests == [] and not fresh_machine.exists()


def test_missing_weights_fail_with_a_clear_message(recipe, fresh_machine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(SystemExit) as info:
        recipe.cli(["--model", "resnet56", "--weights-dir", str(empty), "--no-download"])
    message = str(info.value.code)  # sys.exit(message): printed to stderr, exit status 1
    assert message.startswith("paper.py: error: no weights for resnet56: looked for ")
    for place in (empty, tmp_path / "no-shared" / "weights" / "cifar10-resnet"):
        assert f"{place}/resnet56-*.th" in message
    assert f"{fresh_machine / 'weights' / 'resnet56-4bfd9763.th'}, and downloading is disabled" in message
    assert "drop --no-download" in message and "--checkpoint" in message and "INVARIANCE_SHARED_DIR" in message

    with pytest.raises(SystemExit) as info:  # no pinned release file to download
        recipe.cli(["--model", "resnet32"])
    message = str(info.value.code)
    assert "resnet32 has no pinned download" in message and WEIGHTS_URL_ENV not in message

    with FileServer({}) as release, pytest.raises(SystemExit) as info:  # the release answers 404
        monkeypatch.setenv(WEIGHTS_URL_ENV, release.url)
        recipe.cli(["--model", "resnet20"])
    message = str(info.value.code)
    assert f"download of {release.url}/resnet20-12fca82f.th failed: HTTPError: HTTP Error 404" in message
    assert f"set {WEIGHTS_URL_ENV} to a mirror" in message
    assert not (tmp_path / "results").exists() and not list((fresh_machine / "weights").iterdir())


def test_checkpoint_must_be_a_lightning_ckpt(recipe, tmp_path):
    weights = tmp_path / "resnet20-0.th"
    weights.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        recipe.cli(["--checkpoint", str(weights)])
    assert str(info.value.code).startswith(f"paper.py: error: --checkpoint {weights}: expected a Lightning .ckpt")
    assert "--model resnet<depth> with --weights-dir" in str(info.value.code)
