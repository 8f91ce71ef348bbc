"""Reporting (torch-only): Markdown/JSON tables and matplotlib figures of invariance results.

``tables`` holds the generic tables, ``comparison`` and ``paper`` the reports of ``recipes/compare.py`` and
``recipes/paper.py``, ``machine`` what they say about the machine; they need nothing beyond torch. ``figures``
needs matplotlib (imported when a figure is drawn).
"""

from invariance_lightning.reporting.comparison import (
    COMPARISON_COLUMNS,
    comparison_columns,
    comparison_markdown,
    write_comparison,
)
from invariance_lightning.reporting.machine import load_average, machine_info
from invariance_lightning.reporting.paper import gap_markdown, paper_report_markdown
from invariance_lightning.reporting.tables import (
    SUMMARY_METRICS,
    describe_sequence,
    format_cell,
    json_safe,
    per_frame_markdown,
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
    "COMPARISON_COLUMNS",
    "SUMMARY_METRICS",
    "comparison_columns",
    "comparison_markdown",
    "describe_sequence",
    "format_cell",
    "gap_markdown",
    "json_safe",
    "load_average",
    "machine_info",
    "paper_report_markdown",
    "per_frame_markdown",
    "protocols_markdown",
    "protocols_to_dict",
    "report_markdown",
    "results_to_dict",
    "summary_markdown",
    "to_json",
    "write_comparison",
    "write_json",
    "write_report",
]
