"""Reports from a results folder: ``report.md`` (Markdown tables) and PNG figures.

``build_report(run_dir)`` reads ``run_dir/results.json`` (and ``run_dir/arrays.npz`` when
present) and writes ``run_dir/report.md`` and ``run_dir/figures/*.png``.

Besides the required keys (``experiment``, ``preset``, ``seeds``, ``methods``), every block
of results.json is optional: ``eval_sets`` (metrics keyed ``{set}_{metric}``), method
entries with ``reference``, ``convergence``, ``theta_history`` and ``horizon_mse``,
``truth``, ``identifiability``, ``data_efficiency``, ``ablations``, ``figures``,
``field_kind`` (how ``truth_{set}`` / ``pred_{set}__{method}`` in arrays.npz are drawn),
``targets``, ``uq`` and ``notes``. Any other key is listed as it is.
"""

from ._build import build_report as build_report

__all__ = ["build_report"]
