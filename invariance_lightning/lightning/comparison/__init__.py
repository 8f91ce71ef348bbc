"""Train the variants of a config family through the CLI and compare their accuracy and shift/scale invariance.

The engine of ``recipes/compare.py`` (docs/recipes.md): :func:`plan_comparison` checks everything that can be
checked before training (the variants, the data, existing runs); :func:`run_comparison` trains or resumes each
variant with ``invariance-lightning fit`` in this process, evaluates its ``last.ckpt`` with
``sequence_preset("report")`` and the chosen published protocols, reads what the run recorded (the
``InvarianceMonitor`` history, the training speed) and writes ``comparison.{md,csv,json}`` and the plots.
Each evaluated variant also gets a record, ``variants/<variant>.json`` beside the tables (its table row, per-frame
results, monitor history and per-epoch log; no weights), from which ``--reuse`` rebuilds the tables and plots
without the checkpoint: commit the records and a fresh clone can redraw the comparison.

One job per module: ``settings`` (families, size presets, the recipe's settings), ``configs`` (the config copies),
``data`` (finding the data, the test images), ``logs`` (what a run recorded), ``training`` (one variant's ``fit``),
``records`` (table rows and per-variant records), ``wandb_summary`` (the W&B summary run) and ``run`` (planning and
running the whole comparison). The table's columns are those of :mod:`invariance_lightning.reporting.comparison`.
"""

from __future__ import annotations

import warnings
from typing import Any

from invariance_lightning.lightning.comparison.configs import (
    CHECKPOINT,
    MONITOR,
    checkpoint_path,
    comparison_config,
    family_configs,
    find_callback,
    moved_paths,
    resolve_variants,
)
from invariance_lightning.lightning.comparison.data import EvaluationData, build_datamodule, data_location, prepare_data
from invariance_lightning.lightning.comparison.logs import epoch_log, last_logged, last_monitored, monitor_history
from invariance_lightning.lightning.comparison.records import (
    RECORDS,
    VariantRecord,
    evaluation_key,
    file_sha256,
    read_record,
    record_path,
    table_row,
    write_record,
)
from invariance_lightning.lightning.comparison.run import (
    ComparisonPlan,
    evaluate_variant,
    plan_comparison,
    run_comparison,
)
from invariance_lightning.lightning.comparison.settings import (
    COMPARISON_PRESETS,
    FAMILIES,
    MAIN_VARIANTS,
    ComparisonSettings,
    Family,
    Preset,
)
from invariance_lightning.lightning.comparison.training import (
    VariantRun,
    plan_variant,
    planned_epochs,
    train,
    training_action,
)
from invariance_lightning.lightning.comparison.wandb_summary import log_to_wandb
from invariance_lightning.reporting.comparison import LOGGED_COLUMNS, MONITORED_COLUMNS, SEQUENCE_METRICS

__all__ = [
    "CHECKPOINT",
    "COMPARISON_PRESETS",
    "FAMILIES",
    "MAIN_VARIANTS",
    "MONITOR",
    "RECORDS",
    "ComparisonPlan",
    "ComparisonSettings",
    "EvaluationData",
    "Family",
    "Preset",
    "VariantRecord",
    "VariantRun",
    "build_datamodule",
    "checkpoint_path",
    "comparison_config",
    "data_location",
    "epoch_log",
    "evaluate_variant",
    "evaluation_key",
    "family_configs",
    "file_sha256",
    "find_callback",
    "last_logged",
    "last_monitored",
    "log_to_wandb",
    "monitor_history",
    "moved_paths",
    "plan_comparison",
    "plan_variant",
    "planned_epochs",
    "prepare_data",
    "read_record",
    "record_path",
    "resolve_variants",
    "run_comparison",
    "table_row",
    "train",
    "training_action",
    "write_record",
]

#: Old names of this module's constants, still importable (deprecated): ``{old name: (new name, value)}``.
_DEPRECATED: dict[str, tuple[str, Any]] = {
    "PRESETS": ("COMPARISON_PRESETS", COMPARISON_PRESETS),
    "SEQUENCE_METRICS": ("invariance_lightning.reporting.comparison.SEQUENCE_METRICS", tuple(SEQUENCE_METRICS)),
    "MONITORED": (
        "invariance_lightning.reporting.comparison.MONITORED_COLUMNS",
        {key: column for key, (column, _) in MONITORED_COLUMNS.items()},
    ),
    "LOGGED": (
        "invariance_lightning.reporting.comparison.LOGGED_COLUMNS",
        {key: column for key, (column, _) in LOGGED_COLUMNS.items()},
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new, value = _DEPRECATED[name]
    warnings.warn(
        f"invariance_lightning.lightning.comparison.{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2
    )
    return value
