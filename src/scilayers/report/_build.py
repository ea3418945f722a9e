"""``build_report``: results folder → report.md and figures/*.png."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._figures import FigureOutcome, ablations, error_growth, spacetime, theta_trajectories
from ._format import fmt_number
from ._load import ARRAYS_FILE, RESULTS_FILE, Results, read_arrays, read_results
from ._tables import (
    MAIN_COLUMNS,
    Column,
    environment_section,
    extra_columns,
    mapping_table,
    metric_table,
    summary_section,
    targets_section,
    theta_table,
)

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/figures/*.png`` from the results of a run.

    Reads ``run_dir/results.json`` (required; schema in docs/design.md) and
    ``run_dir/arrays.npz`` (optional). The report holds the run summary, the main table
    (mean ± std over seeds, best value per column in bold; lower is better except the
    correlation time), the θ_s table, one table per ablation, the targets, the notes and the
    environment, with these figures embedded:

    - ``spacetime_id.png``, ``spacetime_ood.png``: truth, each rollout, absolute error;
    - ``error_growth.png``: MSE against forecast horizon, ID and OOD;
    - ``theta_trajectories.png``: θ_s against training step for every method with a history;
    - ``ablations.png``: OOD/ID MSE per ablation variant.

    A figure whose arrays are absent is skipped, with a note in the report saying which
    array was missing. The report can be rebuilt at any time (``scilayers report DIR``).

    Arguments:
        run_dir: the folder written by ``scilayers run <experiment> --out DIR``.

    Returns:
        The path of the written ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir/results.json`` does not exist.
        ValueError: ``results.json`` is not valid JSON, lacks a required key or has a value
            of the wrong type (the message names the key); or ``arrays.npz`` is unreadable.
    """
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    arrays = read_arrays(run_dir)
    figures_dir = run_dir / FIGURES_DIR

    def draw(filename: str, make: Callable[[Path], FigureOutcome]) -> FigureOutcome:
        path = figures_dir / filename
        outcome = make(path)
        if outcome.skipped is not None:
            path.unlink(missing_ok=True)  # never leave a stale figure from an earlier build
        return outcome

    figures = {
        "spacetime_id": draw("spacetime_id.png", lambda p: spacetime(results, arrays, "id", p)),
        "spacetime_ood": draw("spacetime_ood.png", lambda p: spacetime(results, arrays, "ood", p)),
        "error_growth": draw("error_growth.png", lambda p: error_growth(results, arrays, p)),
        "theta_trajectories": draw(
            "theta_trajectories.png", lambda p: theta_trajectories(results, arrays, p)
        ),
        "ablations": draw("ablations.png", lambda p: ablations(results, arrays, p)),
    }
    text = render(results, figures, arrays_present=arrays is not None)
    path = run_dir / REPORT_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _figure_block(outcome: FigureOutcome) -> str:
    if outcome.skipped is not None:
        return (
            f"> **Figure skipped** (`{FIGURES_DIR}/{outcome.filename}`, {outcome.title}): "
            f"{outcome.skipped}."
        )
    lines = [f"![{outcome.title}]({FIGURES_DIR}/{outcome.filename})", "", f"*{outcome.caption}*"]
    lines += [f"\n> {remark}" for remark in outcome.remarks]
    return "\n".join(lines)


def _main_table_note(results: Results) -> str:
    """The legend of the main table, for the columns it has."""
    keys = {k for e in results.methods.values() for k, v in e.stats.items() if not v.is_missing}
    has_theta = any(e.theta for e in results.methods.values())
    parts = []
    if results.main_horizon_steps is not None and keys & {"id_mse", "ood_mse"}:
        horizon = f"{results.main_horizon_steps} steps"
        if results.dt is not None:
            horizon += f", t = {fmt_number(results.main_horizon_steps * results.dt)}"
        parts.append(f"MSE and nMSE at the main horizon ({horizon})")
    if keys & {"id_corr_time", "ood_corr_time"}:
        parts.append(
            "correlation time in time units until the correlation with the truth drops below "
            "0.8 (higher is better; every other column: lower is better)"
        )
    if keys & {"physics_residual", "physics_residual_ood"}:
        parts.append("physics residual under the true θ_s")
    if has_theta:
        parts.append(
            "θ_s rel. error is |learned − true| / |true| averaged over the parameters, in %"
        )
    parts += ["— where a metric does not apply", "best value per column in bold"]
    return "*" + "; ".join(parts) + ".*"


def render(results: Results, figures: dict[str, FigureOutcome], arrays_present: bool = True) -> str:
    """The Markdown text of the report."""
    methods = list(results.methods.values())
    out = [f"# {results.experiment}: results (preset `{results.preset}`)", ""]
    out += [summary_section(results), ""]
    if not arrays_present:
        out += [
            f"> `{ARRAYS_FILE}` was not found next to `{RESULTS_FILE}`, so the figures "
            "that need arrays are skipped.",
            "",
        ]

    out += ["## Main results", ""]
    table = metric_table(methods, MAIN_COLUMNS, "Method")
    out += [table, "", _main_table_note(results), ""] if table else ["No metrics recorded.", ""]
    extra = extra_columns(methods)
    if extra and (table := metric_table(methods, extra, "Method")):
        out += ["### Other metrics", "", table, ""]

    out += ["## Forecasts", ""]
    for key in ("spacetime_id", "spacetime_ood", "error_growth"):
        out += [_figure_block(figures[key]), ""]

    out += ["## Scientific parameters θ_s", ""]
    table = theta_table(results)
    out += [table, ""] if table else ["No method learns θ_s.", ""]
    out += [_figure_block(figures["theta_trajectories"]), ""]

    out += ["## Ablations", ""]
    if results.ablations:
        for name, variants in results.ablations.items():
            entries = list(variants.values())
            columns: list[Column] = [*MAIN_COLUMNS, *extra_columns(entries)]
            table = metric_table(entries, columns, "Variant", code_names=False)
            out += [f"### {name}", "", table or "No metrics recorded.", ""]
        out += [_figure_block(figures["ablations"]), ""]
    else:
        out += ["No ablations were run.", ""]

    out += ["## Targets", ""]
    out += [targets_section(results.targets) if results.targets else "No targets were set.", ""]

    if results.uq:
        out += ["## Uncertainty quantification", "", mapping_table(results.uq), ""]

    if results.notes:
        out += ["## Notes", ""] + [f"- {note}" for note in results.notes] + [""]

    if results.extra:
        out += ["## Other recorded values", "", mapping_table(results.extra), ""]

    out += ["## Environment", "", environment_section(results.environment), ""]
    return "\n".join(out)
