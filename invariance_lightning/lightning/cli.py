"""The ``invariance-lightning`` command: LightningCLI ``fit``/``validate``/``test`` plus ``evaluate``.

    invariance-lightning fit --config configs/cifar10/resnet20_blur.yaml
    invariance-lightning fit --config configs/cifar10/resnet20_plain.yaml --no_wandb true
    invariance-lightning evaluate --model runs/x/checkpoints/last.ckpt --output results/x
    invariance-lightning evaluate --model runs/x/checkpoints/last.ckpt --protocols zhang2019 imagenet_p_flip
    invariance-lightning evaluate --model resnet20 --preset content

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import yaml
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from torch import Tensor

from invariance_lightning.lightning.callbacks.subsets import SplitStream
from invariance_lightning.lightning.checkpoint import load_classifier
from invariance_lightning.lightning.data import CIFARDataModule, ImageClassificationDataModule, ImageFolderDataModule
from invariance_lightning.lightning.module import ImageClassifier
from invariance_lightning.metrics.evaluate import evaluate_sequences, module_device
from invariance_lightning.metrics.protocols import PROTOCOLS
from invariance_lightning.metrics.published import ProtocolTotals
from invariance_lightning.models.pretrained import cifar_resnet_weights, release_name
from invariance_lightning.reporting.tables import protocol_line, write_report
from invariance_lightning.transforms import SEQUENCE_PRESETS, TransformSequence, sequence_preset
from invariance_lightning.transforms.normalization import Normalization
from invariance_lightning.validation import nonnegative_int, positive_int

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
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="config-csv-", delete=False) as handle:
        yaml.safe_dump(config, handle)
    return handle.name


class InvarianceCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` with any datamodule, and a ``--no_wandb`` switch."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--no_wandb", type=bool, default=False, help="log to CSV files instead of W&B")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        if importlib.util.find_spec("wandb") is None and isinstance(args, (list, tuple)):
            # without wandb, jsonargparse cannot resolve WandbLogger's options, so a config naming one fails to
            # parse before before_instantiate_classes could swap it: swap it in the config files first
            root = _option_value(args, "--trainer.default_root_dir")
            rewritten = [
                _config_without_wandb(a, root) if i and args[i - 1] in ("--config", "-c") else a
                for i, a in enumerate(args)
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


def add_protocol_arguments(
    parser: argparse.ArgumentParser, where: str, seeds: str, default: Sequence[str] = ()
) -> None:
    """``--protocols NAME ...`` (published protocols to run ``where``; ``default``) and ``--seed`` (the seed of
    ``seeds``): the options the CLI's ``evaluate`` and the recipes share."""
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=list(PROTOCOLS),
        default=list(default),
        metavar="NAME",
        help=f"published protocols to run {where}: {', '.join(PROTOCOLS)} (docs/metrics.md; default: "
        f"{' '.join(default) or 'none'})",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help=f"seed of {seeds} (default: 0)")


def evaluate_main(argv: Sequence[str]) -> Path:
    """``evaluate``: the full invariance report of a model on a dataset split, as Markdown/JSON/PNG.

    The split is streamed from the datamodule's dataset ``--batch_size`` images at a time and read once (each batch
    goes through every sequence and every ``--protocols`` protocol, whose counts are summed over the batches), so
    memory holds one batch, never the split. A checkpoint saved before
    checkpoints recorded their input normalization is normalized with the evaluated data's statistics.
    """
    parser = argparse.ArgumentParser(prog="invariance-lightning evaluate", description=evaluate_main.__doc__)
    parser.add_argument(
        "--model",
        required=True,
        help="ImageClassifier .ckpt, CIFAR ResNet weights (.th), or a released CIFAR-10 ResNet by name (resnet20, "
        "resnet56, ...: looked for in the shared folder and the cache, else downloaded)",
    )
    parser.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download a released model named by --model when no local copy is found (default: yes)",
    )
    parser.add_argument("--data", default="cifar10", help="cifar10, cifar100, or an ImageFolder root")
    parser.add_argument(
        "--data_dir", default=None, help="folder with local CIFAR .npz files (else $INVARIANCE_DATA_DIR)"
    )
    parser.add_argument("--image_size", type=positive_int, default=128, help="ImageFolder evaluation size")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--preset", default="report", choices=sorted(SEQUENCE_PRESETS))
    parser.add_argument(
        "--num_images", type=positive_int, default=None, help="seeded subset size (default: the whole split)"
    )
    parser.add_argument("--batch_size", type=positive_int, default=256)
    add_protocol_arguments(parser, "as well", "the protocols' random shifts (the subset is the datamodule's)")
    parser.add_argument("--output", type=Path, default=None, help="default: results/evaluate/<model name>")
    args = parser.parse_args(list(argv))

    if args.data in ("cifar10", "cifar100"):
        datamodule: ImageClassificationDataModule = CIFARDataModule(args.data, data_dir=args.data_dir, val_split=0)
    else:
        datamodule = ImageFolderDataModule(args.data, image_size=args.image_size, test_dir="val")
    datamodule.setup("test" if args.split == "test" else "fit")
    model_file = cifar_resnet_weights(args.model, download=args.download) if release_name(args.model) else args.model
    loaded = load_classifier(model_file, default_normalization=Normalization(datamodule.mean, datamodule.std))
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
    totals = ProtocolTotals(args.protocols, seed=args.seed, normalize=loaded.normalize, batch_size=args.batch_size)

    def counted() -> Iterator[tuple[Tensor, Tensor | None]]:
        """The stream's batches, each added to the protocol counts (indices: positions in the split's subset)."""
        position = 0
        for batch_images, batch_targets in images:
            indices = torch.arange(position, position + len(batch_images))
            totals.update(loaded.model, batch_images, batch_targets, indices)
            position += len(batch_images)
            yield batch_images, batch_targets

    results = evaluate_sequences(
        loaded.model, counted(), None, sequences, batch_size=args.batch_size, normalize=loaded.normalize, progress=True
    )
    protocols = totals.compute()
    output = args.output or Path("results") / "evaluate" / loaded.name
    payload = {"model": str(args.model), "data": args.data, "split": args.split, "num_images": images.num_images}
    title = (
        f"Invariance of {loaded.name} on {args.data} {args.split} ({images.num_images} images, preset {args.preset})"
    )
    command = "invariance-lightning evaluate " + " ".join(argv)
    report = write_report(
        output,
        "report",
        payload,
        results,
        sequences,
        title,
        notes=f"Command: `{command}`",
        protocols=protocols,
        protocol_seed=args.seed,
    )
    _write_per_frame_plots(results, sequences, output)
    for name, numbers in protocols.items():
        print(protocol_line(name, numbers))
    print(f"report written to {report}")
    return output


def _write_per_frame_plots(
    results: Mapping[str, Mapping[str, Tensor]], sequences: Mapping[str, TransformSequence], output: Path
) -> None:
    try:
        from invariance_lightning.reporting.figures import per_frame_figure, save_figures

        figures = {f"{name}_per_frame": per_frame_figure(sequences[name], {"": m}, name) for name, m in results.items()}
        save_figures(output, figures)
    except ImportError as error:  # matplotlib is an optional extra
        print(f"plots skipped ({error}); pip install 'invariance-lightning[wandb]' for matplotlib")


def run_cli(argv: Sequence[str]) -> InvarianceCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``, ...) of :class:`ImageClassifier` with any
    datamodule and return the CLI, whose ``model``, ``datamodule`` and ``trainer`` hold what ran (offline W&B unless
    the user chose otherwise)."""
    configure_wandb_mode()
    return InvarianceCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``invariance-lightning`` console script: ``evaluate`` or :func:`run_cli`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        evaluate_main(argv[1:])
        return
    run_cli(argv)


if __name__ == "__main__":
    main()
