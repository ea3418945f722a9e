"""Reports from a results folder: ``report.md`` (Markdown tables) and PNG figures.

``build_report(run_dir)`` reads ``run_dir/results.json`` (and ``run_dir/arrays.npz`` when
present) and writes ``run_dir/report.md`` and ``run_dir/figures/*.png``.
"""

from ._build import build_report as build_report

__all__ = ["build_report"]
