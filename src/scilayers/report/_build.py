"""``build_report``: results folder → report.md and figures/*.png."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._fields import field_figure
from ._figures import (
    FigureOutcome,
    ablations,
    data_efficiency,
    error_growth,
    theta_trajectories,
)
from ._format import and_list, fmt_number, markdown_table
from ._load import ARRAYS_FILE, RESULTS_FILE, Results, StudyFigure, read_arrays, read_results
from ._sections import (
    convergence_section,
    data_efficiency_section,
    identifiability_section,
    truth_section,
)
from ._tables import (
    DAGGER,
    Column,
    environment_section,
    extra_columns,
    is_worse,
    main_columns,
    mapping_table,
    metric_table,
    name_cell,
    set_header,
    summary_section,
    targets_section,
    theta_table,
)
from ._uq import uq_figures, uq_section

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/figures/*.png`` from the results of a run.

    Reads ``run_dir/results.json`` (required; schema in docs/design.md) and
    ``run_dir/arrays.npz`` (optional). The report holds the run summary, the truth (λ₁ and
    Lyapunov time per evaluation set, checks), the main table (mean ± std over seeds, one
    column per evaluation set and metric, best value per column in bold; lower is better
    except the correlation times; reference forecasts in a block of their own, never bold,
    and † on a method worse than the best of them), training convergence, the θ_s table,
    identifiability of θ_s, data efficiency, one table per ablation, the study's own
    figures, the targets, the notes and the environment, with these figures embedded:

    - per evaluation set ``s``, by ``results["field_kind"]``: ``spacetime_{s}.png`` (1-D
      fields), ``snapshots_{s}.png`` (2-D fields) or ``series_{s}.png`` (channels);
    - ``error_growth.png``: MSE against forecast horizon, one panel per evaluation set;
    - ``theta_trajectories.png``: θ_s against training step for every method with a history;
    - ``data_efficiency.png``: MSE against the number of training trajectories;
    - ``ablations.png``: MSE of the first two evaluation sets per ablation variant.

    A figure whose data are absent is skipped, with a note in the report saying what was
    missing; so is a study figure whose file does not exist. The report can be rebuilt at
    any time (``scilayers report DIR``).

    Arguments:
        run_dir: the folder written by ``scilayers run <experiment> --out DIR``.

    Returns:
        The path of the written ``report.md``.

    Raises:
        FileNotFoundError: ``run_dir/results.json`` does not exist.
        ValueError: ``results.json`` is empty, truncated or otherwise not valid JSON, lacks
            a required key or has a value of the wrong type; or ``arrays.npz`` is
            unreadable. The message is one line and names the file and the key.
    """
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    arrays = read_arrays(run_dir)
    figures_dir = run_dir / FIGURES_DIR

    def draw(outcome: FigureOutcome) -> FigureOutcome:
        if outcome.skipped is not None:  # never leave a stale figure from an earlier build
            (figures_dir / outcome.filename).unlink(missing_ok=True)
        return outcome

    def path(name: str) -> Path:
        return figures_dir / name

    fields = {
        s: draw(field_figure(results, arrays, s, figures_dir)) for s in _field_sets(results, arrays)
    }
    figures = {
        "error_growth": draw(error_growth(results, arrays, path("error_growth.png"))),
        "theta_trajectories": draw(
            theta_trajectories(results, arrays, path("theta_trajectories.png"))
        ),
        "data_efficiency": draw(data_efficiency(results, arrays, path("data_efficiency.png"))),
        "ablations": draw(ablations(results, arrays, path("ablations.png"))),
    }
    uq = [draw(o) for o in uq_figures(results, arrays, figures_dir)]
    text = render(
        results,
        figures,
        arrays_present=arrays is not None,
        fields=fields,
        study_figures=[(f, (run_dir / f.file).is_file()) for f in results.figures],
        uq_figures=uq,
    )
    out = run_dir / REPORT_FILE
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def _field_sets(results: Results, arrays) -> list[str]:
    """The evaluation sets with a field figure: those results.json names; for a run that
    names none, ID and OOD and any other set whose truth field is in ``arrays.npz``."""
    if results.eval_sets:
        return list(results.eval_sets)
    found = []
    for key, value in (arrays or {}).items():
        for prefix in ("truth_", "spacetime_truth_"):
            if key.startswith(prefix) and len(key) > len(prefix) and np.ndim(value) >= 2:
                found.append(key[len(prefix) :])
    return list(dict.fromkeys([*results.sets, *sorted(found)]))


def _figure_block(outcome: FigureOutcome) -> str:
    if outcome.skipped is not None:
        return (
            f"> **Figure skipped** (`{FIGURES_DIR}/{outcome.filename}`, {outcome.title}): "
            f"{outcome.skipped}."
        )
    lines = [f"![{outcome.title}]({FIGURES_DIR}/{outcome.filename})", "", f"*{outcome.caption}*"]
    lines += [f"\n> {remark}" for remark in outcome.remarks]
    return "\n".join(lines)


def _study_figure_block(figure: StudyFigure, exists: bool) -> str:
    if not exists:
        return f"> **Figure skipped** (`{figure.file}`, {figure.title}): the file does not exist."
    lines = [f"![{figure.title}]({figure.file})"]
    if figure.caption:
        lines += ["", f"*{figure.caption}*"]
    return "\n".join(lines)


def _main_table_note(results: Results) -> str:
    """The legend of the main table, for the columns it has."""
    keys = {k for e in results.methods.values() for k, v in e.stats.items() if not v.is_missing}
    has_theta = any(e.theta for e in results.methods.values())
    sets = results.sets
    parts = []
    if results.main_horizon_steps is not None and keys & {f"{s}_mse" for s in sets}:
        horizon = f"{results.main_horizon_steps} steps"
        if results.dt is not None:
            horizon += f", t = {fmt_number(results.main_horizon_steps * results.dt)}"
        parts.append(f"MSE and nMSE at the main horizon ({horizon})")
    if keys & {f"{s}_corr_time" for s in sets}:
        parts.append(
            "correlation time in time units until the correlation with the truth drops below "
            "0.8 (higher is better; every other column: lower is better)"
        )
    if keys & {f"{s}_corr_time_lyap" for s in sets}:
        parts.append(
            "corr. time (Lyap.) is the same correlation time in Lyapunov times 1/λ₁ of that "
            "set (higher is better)"
        )
    if any(k.startswith("physics_residual") for k in keys):
        parts.append("physics residual under the true θ_s")
    if has_theta:
        parts.append(
            "θ_s rel. error is |learned − true| / |true| averaged over the parameters, in %"
        )
    parts += ["— where a metric does not apply", "best value per column in bold"]
    note = "*" + "; ".join(parts) + ".*"
    if results.references:
        names = ", ".join(f"`{n}`" for n in results.references)
        note += (
            f"\n\n*The rows under the divider are reference forecasts ({names}): trivial "
            "forecasts that use no model and no training, shown for scale and never marked "
            "best. A method worse than the best of them at an evaluation set is worse than "
            f"doing nothing there; its MSE carries {DAGGER}.*"
        )
        worse = _worse_than_reference(results)
        if worse:
            note += "\n\n" + " ".join(worse)
    return note


def _worse_than_reference(results: Results) -> list[str]:
    """Plain sentences naming the methods whose MSE is worse than doing nothing."""
    out = []
    for s in results.sets:
        key = f"{s}_mse"
        refs = [
            e.stats[key].mean
            for e in results.references.values()
            if key in e.stats and not e.stats[key].is_missing
        ]
        if not refs:
            continue
        best = min(refs)
        worse = [
            name_cell(e)
            for e in results.methods.values()
            if not e.reference
            and key in e.stats
            and not e.stats[key].is_missing
            and is_worse(e.stats[key].mean, best, higher_is_better=False)
        ]
        if worse:
            verb = "is" if len(worse) == 1 else "are"
            out.append(
                f"On {set_header(s)}, {and_list(worse)} {verb} worse than the best "
                "reference forecast."
            )
    return out


def render(
    results: Results,
    figures: dict[str, FigureOutcome],
    arrays_present: bool = True,
    fields: dict[str, FigureOutcome] | None = None,
    study_figures: list[tuple[StudyFigure, bool]] | None = None,
    uq_figures: list[FigureOutcome] | None = None,
) -> str:
    """The Markdown text of the report."""
    methods = list(results.methods.values())
    sets = results.sets
    out = [f"# {results.experiment}: results (preset `{results.preset}`)", ""]
    out += [summary_section(results), ""]
    if not arrays_present:
        out += [
            f"> `{ARRAYS_FILE}` was not found next to `{RESULTS_FILE}`, so the figures "
            "that need arrays are skipped.",
            "",
        ]

    if results.truth is not None:
        out += ["## Truth", "", truth_section(results.truth, sets), ""]

    out += ["## Main results", ""]
    table = metric_table(methods, main_columns(sets), "Method")
    out += [table, "", _main_table_note(results), ""] if table else ["No metrics recorded.", ""]
    extra = extra_columns(methods, sets)
    if extra and (table := metric_table(methods, extra, "Method")):
        out += ["### Other metrics", "", table, ""]

    if (section := convergence_section(results)) is not None:
        out += ["## Training convergence", "", section, ""]

    out += ["## Forecasts", ""]
    for outcome in (fields or {}).values():
        out += [_figure_block(outcome), ""]
    out += [_figure_block(figures["error_growth"]), ""]

    out += ["## Scientific parameters θ_s", ""]
    table = theta_table(results)
    out += [table, ""] if table else ["No method learns θ_s.", ""]
    out += [_figure_block(figures["theta_trajectories"]), ""]

    if results.identifiability is not None:
        out += ["## Identifiability of θ_s", ""]
        out += [identifiability_section(results.identifiability), ""]

    if results.data_efficiency is not None:
        out += ["## Data efficiency", ""]
        out += [data_efficiency_section(results.data_efficiency, results), ""]
        out += [_figure_block(figures["data_efficiency"]), ""]

    out += ["## Ablations", ""]
    if results.ablations:
        for name, variants in results.ablations.items():
            entries = list(variants.values())
            columns: list[Column] = [*main_columns(sets), *extra_columns(entries, sets)]
            table = metric_table(entries, columns, "Variant", code_names=False)
            out += [f"### {name}", "", table or "No metrics recorded.", ""]
        out += [_figure_block(figures["ablations"]), ""]
    else:
        out += ["No ablations were run.", ""]

    if results.tables:
        out += ["## Study tables", ""]
        for t in results.tables:
            out += [f"### {t.title}", "", markdown_table(list(t.columns), t.rows), ""]
            out += [t.caption, ""] if t.caption else []

    if study_figures:
        out += ["## Study figures", ""]
        for figure, exists in study_figures:
            out += [_study_figure_block(figure, exists), ""]

    out += ["## Targets", ""]
    out += [targets_section(results.targets) if results.targets else "No targets were set.", ""]

    if results.uq:
        text = uq_section(results) if "methods" in results.uq else mapping_table(results.uq)
        out += ["## Uncertainty quantification", "", text, ""]
        for outcome in uq_figures or []:
            out += [_figure_block(outcome), ""]

    if results.notes:
        out += ["## Notes", ""] + [f"- {note}" for note in results.notes] + [""]

    if results.extra:
        out += ["## Other recorded values", "", mapping_table(results.extra), ""]

    out += ["## Environment", "", environment_section(results.environment), ""]
    return "\n".join(out)
