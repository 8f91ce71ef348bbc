"""Package structure: the public API (lazy names, types, version) and the import rules of docs/architecture.md."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import invariance_lightning

PACKAGE_DIR = Path(invariance_lightning.__file__).parent
LIGHTNING_LAYER = "invariance_lightning.lightning"
#: The torch-only layers of docs/architecture.md's diagram, lowest first: a module may import its own layer and the
#: rows below its row, never a layer of its own row or above (nor the top-level package, which imports them all).
TORCH_ONLY_LAYERS = (
    ("validation", "_compat", "locations", "deprecation"),
    ("transforms",),
    ("nn", "augment"),
    ("models",),
    ("metrics",),
    ("diagnostics", "export"),
    ("reporting",),
)
#: Top-level modules that belong to Lightning itself.
LIGHTNING_MODULES = ("lightning", "pytorch_lightning")


def package_modules() -> list[str]:
    """Every module of the package, by dotted name."""
    found = pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="invariance_lightning.")
    return ["invariance_lightning", *sorted(info.name for info in found)]


def torch_only_modules() -> list[str]:
    return [m for m in package_modules() if m != LIGHTNING_LAYER and not m.startswith(LIGHTNING_LAYER + ".")]


def source_of(module: str) -> Path:
    path = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST, module: str) -> set[str]:
    """The modules an AST imports at run time (anywhere, also inside functions; not under ``if TYPE_CHECKING``),
    with relative imports resolved against ``module``."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                package = parts if source_of(module).name == "__init__.py" else parts[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _forbidden_for_torch_only(name: str) -> bool:
    return name.split(".")[0] in LIGHTNING_MODULES or _within(name, LIGHTNING_LAYER)


def _row(layer: str) -> int:
    return next(row for row, layers in enumerate(TORCH_ONLY_LAYERS) if layer in layers)


def layer_problems(module: str, imports: set[str]) -> list[str]:
    """The imports of the torch-only ``module`` that break the layer order of :data:`TORCH_ONLY_LAYERS`."""
    layer = module.split(".")[1]
    problems = []
    for name in sorted(imports):
        if name == "invariance_lightning":
            problems.append(f"{module} imports the top-level package")
        elif _within(name, "invariance_lightning"):
            other = name.split(".")[1]
            if other != layer and (other == "lightning" or _row(other) >= _row(layer)):
                problems.append(f"{module} ({layer}) imports {name} ({other})")
    return problems


# -- public API ----------------------------------------------------------------------------------------------------
def test_every_public_name_resolves_and_is_listed_by_dir():
    for name in invariance_lightning.__all__:
        assert getattr(invariance_lightning, name) is not None, name
    assert set(invariance_lightning.__all__) <= set(dir(invariance_lightning))


def test_lazy_names_are_their_modules_objects_and_typed_for_type_checkers():
    lazy = invariance_lightning._LAZY
    for name, module in lazy.items():
        assert getattr(invariance_lightning, name) is getattr(importlib.import_module(module), name), name
    # the TYPE_CHECKING block imports exactly the lazy names, each from the module __getattr__ loads it from
    tree = ast.parse(source_of("invariance_lightning").read_text())
    block = next(node for node in tree.body if _is_type_checking(node))
    typed = {alias.name: node.module for node in block.body for alias in node.names}
    assert typed == lazy
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        invariance_lightning.nothing_here


def test_load_classifier_and_build_backbone_are_exported():
    from invariance_lightning.lightning.checkpoint import load_classifier
    from invariance_lightning.models.factory import build_backbone

    assert invariance_lightning.load_classifier is load_classifier
    assert invariance_lightning.build_backbone is build_backbone


def test_version_has_one_source():
    assert invariance_lightning.__version__ == importlib.metadata.version("invariance-lightning")
    pyproject = (PACKAGE_DIR.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "invariance_lightning.__version__"' in pyproject


# -- import rules --------------------------------------------------------------------------------------------------
def test_torch_only_layers_do_not_import_lightning_at_run_time():
    modules = torch_only_modules()
    assert {
        "invariance_lightning._compat",
        "invariance_lightning.validation",
        "invariance_lightning.diagnostics.report",
    } <= set(modules)
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + (
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{LIGHTNING_MODULES!r} or m.startswith({LIGHTNING_LAYER!r}))))\n"
        )
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_no_module_imports_lightning_where_the_layers_forbid_it_or_imports_recipes():
    problems = []
    for module in package_modules():
        imports = sorted(imported_modules(ast.parse(source_of(module).read_text()), module))
        problems += [f"{module} imports {name}" for name in imports if name.split(".")[0] == "recipes"]
        if module in torch_only_modules():
            problems += [f"{module} imports {name}" for name in imports if _forbidden_for_torch_only(name)]
    assert problems == []


def test_each_torch_only_layer_imports_only_the_layers_below_it():
    layers = {module.split(".")[1] for module in torch_only_modules() if module != "invariance_lightning"}
    assert layers == {layer for row in TORCH_ONLY_LAYERS for layer in row}, "every layer has its row"
    problems = []
    for module in torch_only_modules():
        if module != "invariance_lightning":
            problems += layer_problems(module, imported_modules(ast.parse(source_of(module).read_text()), module))
    assert problems == []


def test_the_layer_check_finds_upward_and_sideways_imports_also_inside_functions():
    tree = ast.parse(
        "from invariance_lightning.validation import check_int\n"
        "from invariance_lightning.nn.blurpool import pad\n"
        "def f():\n    from invariance_lightning.metrics import evaluate\n    import invariance_lightning\n"
        "def g():\n    from ..augment import pipeline\n"
    )
    problems = layer_problems("invariance_lightning.nn.aps", imported_modules(tree, "invariance_lightning.nn.aps"))
    assert problems == [
        "invariance_lightning.nn.aps imports the top-level package",
        "invariance_lightning.nn.aps (nn) imports invariance_lightning.augment (augment)",
        "invariance_lightning.nn.aps (nn) imports invariance_lightning.augment.pipeline (augment)",
        "invariance_lightning.nn.aps (nn) imports invariance_lightning.metrics (metrics)",
        "invariance_lightning.nn.aps (nn) imports invariance_lightning.metrics.evaluate (metrics)",
    ]


def test_the_diagram_of_docs_architecture_lists_the_layers_in_their_order():
    text = (PACKAGE_DIR.parent / "docs" / "architecture.md").read_text()
    diagram = text[text.index("torch-only layers (never import") : text.index("```", text.index("torch-only layers"))]
    drawn = [
        tuple(w.strip("/").removesuffix(".py") for w in line.split() if w.endswith(("/", ".py")))
        for line in diagram.splitlines()[1:]
        if line.strip()
    ]
    assert [row for row in drawn if row] == list(reversed(TORCH_ONLY_LAYERS))


def test_the_import_scan_sees_imports_inside_functions_and_relative_ones():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import lightning\n"
        "def f():\n    from ..lightning import module\n    import recipes.paper\n"
    )
    found = imported_modules(tree, "invariance_lightning.metrics.evaluate")
    assert {"invariance_lightning.lightning", "recipes.paper"} <= found and "lightning" not in found
