"""Reports of evaluations: study-style tables (terminal, Markdown, LaTeX, CSV, JSON) and PNG figures.
matplotlib is imported only when a figure is drawn."""
from __future__ import annotations

from .tables import Table, build_tables, to_csv, to_latex, to_markdown, to_rich
from .writer import reports_in, write_report

__all__ = ["Table", "build_tables", "to_csv", "to_latex", "to_markdown", "reports_in", "to_rich", "write_report"]
