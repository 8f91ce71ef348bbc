"""Reporting (torch-only): Markdown/JSON tables and matplotlib figures of invariance results.

``tables`` needs nothing beyond torch; ``figures`` needs matplotlib (imported when a figure is drawn).
"""

from invariance_lightning.reporting.tables import (
    COMPARISON_COLUMNS,
    SUMMARY_METRICS,
    comparison_columns,
    comparison_markdown,
    format_cell,
    gap_markdown,
    json_safe,
    paper_report_markdown,
    per_frame_markdown,
    protocols_markdown,
    protocols_to_dict,
    report_markdown,
    results_to_dict,
    summary_markdown,
    write_comparison,
    write_report,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "SUMMARY_METRICS",
    "comparison_columns",
    "comparison_markdown",
    "format_cell",
    "gap_markdown",
    "json_safe",
    "paper_report_markdown",
    "per_frame_markdown",
    "protocols_markdown",
    "protocols_to_dict",
    "report_markdown",
    "results_to_dict",
    "summary_markdown",
    "write_comparison",
    "write_report",
]
