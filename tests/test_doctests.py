"""Doctest collection (``--doctest-modules`` over the package, see pyproject.toml) needs no optional package,
display or network: it imports every module of ``invariance_lightning``, so each must import with only the
required dependencies. The examples themselves run as ordinary test items of ``python -m pytest``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Extras (wandb, cli, timm, dev) that must not be imported by collecting the package's doctests.
OPTIONAL = ("wandb", "matplotlib", "jsonargparse", "docstring_parser", "timm", "tensorboard", "tensorboardX")

COLLECT = """
import json, socket, sys

def offline(*args, **kwargs):
    raise OSError("network access during doctest collection")

socket.socket.connect = offline
socket.create_connection = offline
# the required dependencies (lightning.pytorch.cli itself copes with a missing jsonargparse)
import kornia, lightning.pytorch, lightning.pytorch.cli, numpy, torch, torchmetrics, torchvision, tqdm, yaml
import pytest

before = {name.partition(".")[0] for name in sys.modules}

class Items:
    names = []

    def pytest_collection_modifyitems(self, items):
        self.names = [item.nodeid for item in items]

items = Items()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "invariance_lightning"], plugins=[items])
imported = sorted({name.partition(".")[0] for name in sys.modules} - before)
print(json.dumps({"code": int(code), "doctests": items.names, "imported": imported}))
"""


def test_collecting_the_doctests_needs_no_optional_package_display_or_network() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", COLLECT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stdout[-2000:]
    assert not set(report["imported"]) & set(OPTIONAL), report["imported"]
    # every module with docstring examples is collected (one item per documented object)
    assert (
        "invariance_lightning/metrics/functional.py::invariance_lightning.metrics.functional.transform_consistency"
        in report["doctests"]
    )
    assert len(report["doctests"]) >= 6, report["doctests"]
