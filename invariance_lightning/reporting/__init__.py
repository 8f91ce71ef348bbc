"""Reporting (torch-only): Markdown/JSON tables and matplotlib figures of invariance results."""

from invariance_lightning.reporting.tables import (
    SUMMARY_METRICS,
    per_frame_markdown,
    report_markdown,
    results_to_dict,
    summary_markdown,
)

__all__ = ["SUMMARY_METRICS", "per_frame_markdown", "report_markdown", "results_to_dict", "summary_markdown"]
