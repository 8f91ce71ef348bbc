"""Reporting (torch-only): Markdown/JSON tables and matplotlib figures of invariance results.

``tables`` holds the generic tables (exported here), ``comparison`` and ``paper`` the reports of
``recipes/compare.py`` and ``recipes/paper.py``, ``machine`` what they say about the machine (imported from those
modules); they need nothing beyond torch. ``figures``
needs matplotlib (imported when a figure is drawn).
"""

from invariance_lightning.deprecation import deprecated_aliases
from invariance_lightning.reporting import comparison, machine, paper
from invariance_lightning.reporting.tables import (
    SUMMARY_METRICS,
    describe_sequence,
    format_cell,
    json_safe,
    per_frame_markdown,
    protocol_line,
    protocols_markdown,
    protocols_to_dict,
    report_markdown,
    results_to_dict,
    summary_markdown,
    to_json,
    write_json,
    write_report,
)

__all__ = [
    "SUMMARY_METRICS",
    "comparison",
    "describe_sequence",
    "format_cell",
    "json_safe",
    "machine",
    "paper",
    "per_frame_markdown",
    "protocol_line",
    "protocols_markdown",
    "protocols_to_dict",
    "report_markdown",
    "results_to_dict",
    "summary_markdown",
    "to_json",
    "write_json",
    "write_report",
]

#: The recipes' own reports live in their modules (``reporting.comparison``, ``reporting.paper``); the old
#: package-level names keep working with a DeprecationWarning.
__getattr__ = deprecated_aliases(
    __name__,
    globals(),
    {
        name: f"{module}.{name}"
        for module, names in {
            "comparison": ("COMPARISON_COLUMNS", "comparison_columns", "comparison_markdown", "write_comparison"),
            "paper": ("gap_markdown", "paper_report_markdown"),
        }.items()
        for name in names
    },
)
