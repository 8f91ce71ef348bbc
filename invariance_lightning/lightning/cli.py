"""The ``invariance-lightning`` command: LightningCLI ``fit``/``validate``/``test`` plus ``evaluate``.

    invariance-lightning fit --config configs/cifar10/resnet20_blur.yaml
    invariance-lightning fit --config configs/cifar10/resnet20_plain.yaml --no_wandb true
    invariance-lightning evaluate --model runs/x/checkpoints/last.ckpt --output results/x

W&B runs offline unless you are logged in (or ``WANDB_MODE`` says otherwise); ``--no_wandb true``
(or a missing ``wandb`` package) replaces the configured loggers with a ``CSVLogger``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import netrc
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from invariance_lightning.lightning.callbacks.subsets import SplitStream
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.lightning.data import CIFARDataModule, ImageFolderDataModule
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.metrics import evaluate_invariance
from invariance_lightning.metrics.evaluate import module_device
from invariance_lightning.reporting.tables import report_markdown, results_to_dict
from invariance_lightning.transforms import SEQUENCE_PRESETS, sequence_preset

CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist (``WANDB_API_KEY`` or a netrc entry), without importing wandb."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return any("wandb" in host for host in netrc.netrc().hosts)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def configure_wandb_mode() -> None:
    """Offline W&B unless the user is logged in or has chosen a mode."""
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"


def _csv_logger(save_dir: str | None) -> dict:
    return {"class_path": CSV_LOGGER, "init_args": {"save_dir": save_dir or "."}}


def _option_value(args: Sequence[str], name: str) -> str | None:
    """The last value given to ``name`` in ``args`` (``--name value`` or ``--name=value``)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _config_without_wandb(path: str, root: str | None = None) -> str:
    """A temporary copy of the YAML config at ``path`` whose W&B logger is a CSVLogger saving under ``root`` (else
    the file's ``default_root_dir``); ``path`` itself if it has no W&B logger."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    trainer = config.get("trainer") or {}
    if "Wandb" not in json.dumps(trainer.get("logger"), default=str):
        return path
    trainer["logger"] = _csv_logger(root or trainer.get("default_root_dir"))
    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="config-csv-", delete=False)
    with handle:
        yaml.safe_dump(config, handle)
    return handle.name


class InvarianceCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` with any datamodule, and a ``--no_wandb`` switch."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--no_wandb", type=bool, default=False, help="log to CSV files instead of W&B")

    def parse_arguments(self, parser, args) -> None:
        if importlib.util.find_spec("wandb") is None and isinstance(args, (list, tuple)):
            # without wandb, jsonargparse cannot resolve WandbLogger's options, so a config naming one fails to
            # parse before before_instantiate_classes could swap it: swap it in the config files first
            root = _option_value(args, "--trainer.default_root_dir")
            rewritten = [
                _config_without_wandb(a, root) if i and args[i - 1] in ("--config", "-c") else a for i, a in enumerate(args)
            ]
            try:
                super().parse_arguments(parser, rewritten)
            finally:
                for original, copy in zip(args, rewritten):
                    if copy != original:
                        os.unlink(copy)
            return
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        no_wandb = config.get("no_wandb") or importlib.util.find_spec("wandb") is None
        if no_wandb and "Wandb" in json.dumps(config.trainer.get("logger"), default=str):
            config.trainer.logger = _csv_logger(config.trainer.get("default_root_dir"))


def evaluate_main(argv: Sequence[str]) -> Path:
    """``evaluate``: the full invariance report of a model on a dataset split, as Markdown/JSON/PNG.

    The split is streamed from the datamodule's dataset ``--batch_size`` images at a time (once per sequence), so
    memory holds one batch, never the split.
    """
    parser = argparse.ArgumentParser(prog="invariance-lightning evaluate", description=evaluate_main.__doc__)
    parser.add_argument("--model", required=True, help="ImageClassifier .ckpt or pretrained CIFAR ResNet weights (.th)")
    parser.add_argument("--data", default="cifar10", help="cifar10, cifar100, or an ImageFolder root")
    parser.add_argument("--data_dir", default=None, help="folder with local CIFAR .npz files (else $INVARIANCE_DATA_DIR)")
    parser.add_argument("--image_size", type=int, default=128, help="ImageFolder evaluation size")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--preset", default="report", choices=sorted(SEQUENCE_PRESETS))
    parser.add_argument("--num_images", type=int, default=None, help="seeded subset size (default: the whole split)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--output", type=Path, default=None, help="default: results/evaluate/<model name>")
    args = parser.parse_args(list(argv))
    if args.num_images is not None and args.num_images < 1:
        parser.error(f"--num_images must be a positive int, got {args.num_images}")

    loaded = load_classifier(args.model)
    if args.data in ("cifar10", "cifar100"):
        datamodule: LightningDataModule = CIFARDataModule(args.data, data_dir=args.data_dir, val_split=0)
    else:
        datamodule = ImageFolderDataModule(args.data, image_size=args.image_size, test_dir="val")
    datamodule.setup("test" if args.split == "test" else "fit")
    device = module_device(loaded.model)
    images = SplitStream(
        getattr(datamodule, f"{args.split}_dataloader")(),
        args.split,
        args.num_images,
        datamodule.seed,  # the subset datamodule.split_arrays(split, num_images) would draw
        batch_size=args.batch_size,
        transfer=lambda batch: datamodule.transfer_batch_to_device(batch, device, 0),
        plain_loader=datamodule.val_dataloader() if args.split == "train" else None,
    )
    sequences = sequence_preset(args.preset)
    results = {
        name: evaluate_invariance(
            loaded.model, images, None, sequence, batch_size=args.batch_size, normalize=loaded.normalize, progress=True
        )
        for name, sequence in sequences.items()
    }
    output = args.output or Path("results") / "evaluate" / loaded.name
    output.mkdir(parents=True, exist_ok=True)
    payload = {"model": str(args.model), "data": args.data, "split": args.split, "num_images": images.num_images}
    payload["results"] = results_to_dict(results, sequences)
    (output / "report.json").write_text(json.dumps(payload, indent=1))
    title = f"Invariance of {loaded.name} on {args.data} {args.split} ({images.num_images} images, preset {args.preset})"
    command = "invariance-lightning evaluate " + " ".join(argv)
    (output / "report.md").write_text(report_markdown(results, sequences, title, notes=f"Command: `{command}`"))
    _write_per_frame_plots(results, sequences, output)
    print(f"report written to {output / 'report.md'}")
    return output


def _write_per_frame_plots(results, sequences, output: Path) -> None:
    try:
        from invariance_lightning.reporting.figures import per_frame_figure

        for name, metrics in results.items():
            per_frame_figure(sequences[name], {"": metrics}, name).savefig(output / f"{name}_per_frame.png")
    except ImportError as error:  # matplotlib is an optional extra
        print(f"plots skipped ({error}); pip install 'invariance-lightning[wandb]' for matplotlib")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``invariance-lightning`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_wandb_mode()
    if argv and argv[0] == "evaluate":
        evaluate_main(argv[1:])
        return
    InvarianceCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
