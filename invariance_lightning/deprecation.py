"""Old public names that keep working, with a ``DeprecationWarning`` that names the replacement."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any


def deprecated_aliases(module: str, namespace: Mapping[str, Any], aliases: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for the module named ``module`` with globals ``namespace``: each old name
    of ``aliases`` returns the object its new name has in ``namespace`` (a dotted name reads attributes of a
    submodule there, e.g. ``"comparison.comparison_markdown"``), with a ``DeprecationWarning`` naming it."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        first, *rest = aliases[name].split(".")
        value = namespace[first]
        for attribute in rest:
            value = getattr(value, attribute)
        # a function or class names its own home; a constant is named by the path it was found under
        home = getattr(value, "__module__", None) if callable(value) else None
        new_name = f"{home}.{value.__qualname__}" if home else f"{module}.{aliases[name]}"
        warnings.warn(
            f"{module}.{name} is deprecated and will be removed; use {new_name}", DeprecationWarning, stacklevel=2
        )
        return value

    return __getattr__
