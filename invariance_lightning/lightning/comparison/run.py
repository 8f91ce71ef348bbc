"""The whole comparison: :func:`plan_comparison` checks everything before training, :func:`run_comparison` trains,
evaluates and tabulates each variant."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from invariance_lightning.lightning.checkpoint import load_classifier, read_checkpoint
from invariance_lightning.lightning.cli import configure_wandb_mode
from invariance_lightning.lightning.comparison.configs import resolve_variants
from invariance_lightning.lightning.comparison.data import EvaluationData, prepare_data
from invariance_lightning.lightning.comparison.logs import epoch_log, monitor_history
from invariance_lightning.lightning.comparison.records import (
    VariantRecord,
    evaluation_key,
    file_sha256,
    read_record,
    record_path,
    table_row,
    write_record,
)
from invariance_lightning.lightning.comparison.settings import COMPARISON_PRESETS, ComparisonSettings
from invariance_lightning.lightning.comparison.training import VariantRun, plan_variant, train, training_action
from invariance_lightning.lightning.comparison.wandb_summary import log_to_wandb
from invariance_lightning.locations import SHARED_WEIGHTS_SUBDIR, shared_dir
from invariance_lightning.metrics.evaluate import evaluate_sequences
from invariance_lightning.metrics.published import check_protocol_names, evaluate_protocols
from invariance_lightning.reporting.comparison import (
    EVALUATION_PRESET,
    MONITORED_COLUMNS,
    comparison_cell,
    write_comparison,
)
from invariance_lightning.reporting.figures import (
    accuracy_flip_figure,
    monitor_history_figure,
    per_frame_figure,
    save_figures,
)
from invariance_lightning.reporting.machine import load_average, machine_info
from invariance_lightning.transforms import sequence_preset


@dataclass
class ComparisonPlan:
    """A checked comparison, ready to run: nothing has been trained or written yet."""

    settings: ComparisonSettings
    output: Path
    data: EvaluationData
    runs: list[VariantRun]
    actions: dict[str, str]  # training_action of each variant, or "recorded" (its record stands for it)
    records: dict[str, VariantRecord]  # the records of the "recorded" variants
    wandb_project: str | None  # None: no W&B
    started: float  # time.perf_counter() when planning began
    load_start: str  # the load average then


def plan_comparison(settings: ComparisonSettings) -> ComparisonPlan:
    """Check the variants, find the data and decide what each run does; ``ValueError`` listing every problem
    (unknown variants, existing runs without ``reuse``, runs that cannot be resumed) before anything trains."""
    started, load_start = time.perf_counter(), load_average()
    if settings.preset not in COMPARISON_PRESETS:
        raise ValueError(f"unknown preset {settings.preset!r}; valid presets: {list(COMPARISON_PRESETS)}")
    check_protocol_names("ComparisonSettings", settings.protocols)
    variants = resolve_variants(settings.repo_root, settings.family, settings.variants)
    output = settings.output or Path("results") / f"compare_{settings.family}_{settings.preset}"
    runs_dir = settings.runs_dir or (Path("runs") if settings.preset == "full" else output / "runs")
    preset = COMPARISON_PRESETS[settings.preset]
    preset = replace(
        preset,
        max_epochs=settings.epochs or preset.max_epochs,
        train_subset=settings.train_subset or preset.train_subset,
        test_images=settings.test_images or preset.test_images,
    )
    if settings.monitor_samples:
        preset = replace(preset, monitor={**preset.monitor, "num_samples": settings.monitor_samples})
    first = yaml.safe_load(next(iter(variants.values())).read_text())
    data = prepare_data(settings.repo_root, settings.family, settings.data_dir, preset, first, settings.seed)
    group = None if settings.no_wandb else output.name
    shared = shared_dir(settings.repo_root)
    weights_dirs = [] if shared is None else [shared / SHARED_WEIGHTS_SUBDIR]
    runs = [
        plan_variant(
            variant, path, runs_dir / settings.family / path.stem, data.preset, data.overrides, group, weights_dirs
        )
        for variant, path in variants.items()
    ]
    actions, records, problems = {}, {}, []
    for run in runs:
        record = (
            read_record(record_path(output, run.variant), evaluation_key(run, data, settings))
            if settings.reuse
            else None
        )
        if record is not None and record.stands_for(run):
            actions[run.variant], records[run.variant] = "recorded", record
            continue
        try:
            actions[run.variant] = training_action(run, settings.reuse)
        except ValueError as error:
            problems.append(f"{run.variant}: {error}")
    if problems:
        raise ValueError("\n".join(problems) + "\n(or choose another --runs_dir / --output)")
    project = (first["trainer"].get("logger") or {}).get("init_args", {}).get("project", "invariance-lightning")
    wandb_project = None if settings.no_wandb else project
    return ComparisonPlan(settings, output, data, runs, actions, records, wandb_project, started, load_start)


def run_comparison(plan: ComparisonPlan) -> Path:
    """Train (or resume, or reuse), evaluate and tabulate every planned variant; returns ``comparison.md``'s path.

    The tables are rewritten after every variant; the plots are drawn at the end; with W&B a summary run joins
    the training runs' group.
    """
    settings, data = plan.settings, plan.data
    sequences = sequence_preset(EVALUATION_PRESET)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup: dict[str, Any] = {
        "family": settings.family,
        "variants": [run.variant for run in plan.runs],
        "preset": settings.preset,
        "smoke": data.preset.smoke,
        "preset_description": data.preset.describe(),
        "test_images": len(data.labels),
        "seed": settings.seed,
        "device": device,
        **machine_info(),
        "command": settings.command,
        "load_start": plan.load_start,
        "sequences": {name: repr(sequence) for name, sequence in sequences.items()},
        "protocols": list(settings.protocols),
        "actions": dict(plan.actions),
        "seconds_per_variant": {},
    }
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, dict[str, Tensor]]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    for run in plan.runs:
        record = plan.records.get(run.variant) or evaluate_variant(plan, run, device)
        rows.append(record.row)
        results[run.variant], histories[run.variant] = record.results, record.history
        setup["seconds_per_variant"][run.variant] = record.seconds
        setup.update(load_end=load_average(), seconds=time.perf_counter() - plan.started)
        write_comparison(plan.output, rows, results, sequences, setup)
        print(
            f"== {run.variant}: "
            + ", ".join(f"{k} {comparison_cell(k, v)}" for k, v in rows[-1].items() if isinstance(v, float)),
            flush=True,
        )
    figures = {
        "accuracy_vs_flip_rate": accuracy_flip_figure(rows, list(sequences)),
        "monitor_history": monitor_history_figure(histories, list(MONITORED_COLUMNS)),
    }
    for name, sequence in sequences.items():
        by_variant = {variant: r[name] for variant, r in results.items()}
        figures[f"{name}_per_frame"] = per_frame_figure(sequence, by_variant, f"{name}: {sequence!r}")
    plots = save_figures(plan.output, figures)
    if plan.wandb_project is not None:
        configure_wandb_mode()
        log_to_wandb(plan.output.name, plan.wandb_project, plan.output, rows, plots, setup)
    return plan.output / "comparison.md"


def evaluate_variant(plan: ComparisonPlan, run: VariantRun, device: str) -> VariantRecord:
    """Train (or resume, or reuse) one variant, evaluate its ``last.ckpt`` and write its record."""
    settings, data = plan.settings, plan.data
    tick = time.perf_counter()
    train(run, plan.actions[run.variant])
    trained = time.perf_counter()
    loaded = load_classifier(run.checkpoint, map_location=device)
    results = evaluate_sequences(
        loaded.model,
        data.images,
        data.labels,
        sequence_preset(EVALUATION_PRESET),
        batch_size=settings.batch_size,
        normalize=loaded.normalize,
    )
    protocols = evaluate_protocols(
        loaded.model,
        data.images,
        data.labels,
        settings.protocols,
        seed=settings.seed,
        normalize=loaded.normalize,
        batch_size=settings.batch_size,
    )
    saved = read_checkpoint(run.checkpoint)
    row = table_row(
        run,
        results,
        protocols,
        saved,
        len(data.labels),
        plan.actions[run.variant],
        settings.preset,
        settings.repo_root.resolve(),
    )
    seconds = {"training": trained - tick, "evaluation": time.perf_counter() - trained}
    record = VariantRecord(
        row, results, monitor_history(saved), epoch_log(run.run_dir), seconds, file_sha256(run.checkpoint)
    )
    write_record(record_path(plan.output, run.variant), evaluation_key(run, data, settings), record)
    return record
