"""One variant's training: its CLI arguments, whether it trains, resumes or is reused, and the ``fit`` itself."""

from __future__ import annotations

import shlex
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from invariance_lightning.lightning.checkpoint import read_checkpoint
from invariance_lightning.lightning.cli import main as cli_main
from invariance_lightning.lightning.comparison.configs import checkpoint_path, comparison_config
from invariance_lightning.lightning.comparison.settings import Preset
from invariance_lightning.models.pretrained import resolve_cifar_resnet_weights


@dataclass
class VariantRun:
    """One variant of the comparison: its configs, run directory and the CLI arguments that train it."""

    variant: str
    source: Path
    config: dict[str, Any]
    config_path: Path
    run_dir: Path
    checkpoint: Path
    max_epochs: int
    fit_args: list[str]

    def command(self, resume: bool) -> list[str]:
        """``fit`` arguments of :func:`invariance_lightning.lightning.cli.main`."""
        return ["fit", "--config", str(self.config_path), *self.fit_args, *(["--ckpt_path", "last"] if resume else [])]


def plan_variant(
    variant: str,
    source: Path,
    run_dir: Path,
    preset: Preset,
    data_overrides: Mapping[str, Any],
    wandb_group: str | None,
    weights_dirs: Sequence[Path] = (),
) -> VariantRun:
    """Read the variant's config and decide its checkpoint and CLI overrides (nothing is written); ``wandb_group``
    None trains with CSV logs only. A config's ``model.init_weights`` is resolved to a file now (looked for first in
    ``weights_dirs``), so that a missing one fails before anything trains."""
    config = comparison_config(yaml.safe_load(source.read_text()), run_dir, preset, wandb_group, variant)
    configured = int(config["trainer"].get("max_epochs") or 1)
    max_epochs = min(preset.max_epochs, configured) if preset.max_epochs else configured
    fit_args = ["--trainer.max_epochs", str(max_epochs)]
    init_weights = (config.get("model") or {}).get("init_weights")
    if init_weights is not None:
        fit_args += ["--model.init_weights", str(resolve_cifar_resnet_weights(init_weights, search_dirs=weights_dirs))]
    for key, value in preset.trainer.items():
        fit_args += [f"--trainer.{key}", str(value)]
    for key, value in data_overrides.items():
        fit_args += [f"--data.{key}", str(value)]
    for key, value in preset.model.items():
        fit_args += [f"--model.{key}", str(value)]
    if wandb_group is None:
        fit_args += ["--no_wandb", "true"]
    if not sys.stderr.isatty():
        fit_args += ["--trainer.enable_progress_bar", "false"]
    return VariantRun(
        variant, source, config, run_dir / "compare_config.yaml", run_dir, checkpoint_path(config), max_epochs, fit_args
    )


def planned_epochs(run_dir: Path) -> int | None:
    """``trainer.max_epochs`` of the newest config that LightningCLI saved for the run (``config.yaml`` in its log
    folder), or None when there is none."""
    newest: tuple[float, int] | None = None
    for path in run_dir.rglob("config.yaml"):
        config = yaml.safe_load(path.read_text())
        trainer = config.get("trainer") if isinstance(config, dict) else None
        if isinstance(trainer, dict) and trainer.get("max_epochs") is not None:
            written = path.stat().st_mtime
            if newest is None or written > newest[0]:
                newest = (written, int(trainer["max_epochs"]))
    return None if newest is None else newest[1]


def training_action(run: VariantRun, reuse: bool) -> str:
    """``"trained"`` (no checkpoint yet), ``"reused"`` (``last.ckpt`` covers the epochs) or ``"resumed"`` (a run
    of the same length stopped early); ``ValueError`` for an existing run without ``reuse``, or a shorter run
    planned for another number of epochs (its learning-rate schedule is fixed by ``max_epochs``)."""
    if not run.checkpoint.is_file():
        return "trained"
    if not reuse:
        raise ValueError(f"{run.checkpoint} exists: pass --reuse to use or resume it")
    done = read_checkpoint(run.checkpoint).epochs
    if done >= run.max_epochs:
        return "reused"
    planned = planned_epochs(run.run_dir)
    if planned != run.max_epochs:
        raise ValueError(
            f"{run.checkpoint} holds {done} epoch(s) of a run planned for {planned or 'an unknown number of'} "
            f"epochs; its learning-rate schedule is fixed by max_epochs, so it cannot be resumed to {run.max_epochs} "
            f"epochs: delete {run.run_dir}"
        )
    return "resumed"


def train(run: VariantRun, action: str) -> None:
    """Run ``fit`` for ``action`` ``"trained"`` or ``"resumed"`` (from ``last.ckpt``); nothing for ``"reused"``."""
    if action == "reused":
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    print(
        f"== {run.variant} ({action}): invariance-lightning {shlex.join(run.command(action == 'resumed'))}", flush=True
    )
    with warnings.catch_warnings():
        # the CLI gets its arguments from the list; LightningCLI warns that this process's own command line (the
        # recipe's, pytest's) holds arguments too, which it does not read
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        cli_main(run.command(action == "resumed"))
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()  # WandbLogger leaves its run open; the next variant must start its own
    if not run.checkpoint.is_file():
        raise RuntimeError(f"{run.variant}: training finished without writing {run.checkpoint}")
