"""What the recipes' reports say about the machine they ran on."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> dict[str, int | str | None]:
    """The torch threads, CPUs, processor (else architecture), torch version and CUDA GPU (None without one) of this
    process."""
    return {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages as ``"a / b / c"`` (``"n/a"`` where the system has none)."""
    return " / ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
