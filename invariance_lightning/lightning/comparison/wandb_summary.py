"""The comparison's summary run on W&B, in the group of the variants' training runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from invariance_lightning.reporting.comparison import comparison_columns


def log_to_wandb(
    group: str,
    project: str,
    output: Path,
    rows: Sequence[Mapping[str, Any]],
    plots: Sequence[Path],
    setup: Mapping[str, Any],
) -> None:
    """A summary W&B run in the training runs' group: the table, the plots and each variant's scalars."""
    import wandb

    run = wandb.init(
        project=project, group=group, name="comparison", job_type="comparison", dir=str(output), config=dict(setup)
    )
    columns = list(comparison_columns(rows))
    data = [[row[c] for c in columns] for row in rows]
    table = wandb.Table(columns=columns, data=data)  # type: ignore[arg-type]  # wandb: list[str | int], invariant
    run.log({"comparison": table, **{f"plots/{path.stem}": wandb.Image(str(path)) for path in plots}})
    for row in rows:
        for column, value in row.items():
            if isinstance(value, (int, float)) and column != "test_images":
                run.summary[f"{row['variant']}/{column}"] = value
    run.finish()
