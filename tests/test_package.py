"""Package structure: public exports resolve, and the torch-only layers never import Lightning."""

from __future__ import annotations

import subprocess
import sys

import invariance_lightning

TORCH_ONLY = [
    "invariance_lightning",
    "invariance_lightning.transforms",
    "invariance_lightning.metrics",
    "invariance_lightning.diagnostics",
    "invariance_lightning.reporting",
    "invariance_lightning.augment",
    "invariance_lightning.validation",
    "invariance_lightning.nn",
    "invariance_lightning.models",
]


def test_every_public_name_resolves():
    for name in invariance_lightning.__all__:
        assert getattr(invariance_lightning, name) is not None, name


def test_torch_only_layers_do_not_import_lightning():
    code = "import sys\n" + "".join(f"import {m}\n" for m in TORCH_ONLY) + (
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
