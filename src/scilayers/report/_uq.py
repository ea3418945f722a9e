"""The report's uncertainty section: calibration tables, the reliability diagram, coverage
and spread–skill over lead time, forecast intervals, and θ_s intervals against the truth.

Reads the ``uq`` block of ``results.json`` (written by ``scilayers run NAME --uq …``) and
the ``uq__<method>__<set>`` arrays (truth, mean, 5 % and 95 % quantiles of the first
trajectory's first state component).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._figures import Arrays, FigureOutcome, _new_figure, _save, _skip, method_colours
from ._format import fmt_number, markdown_table
from ._load import Results, _is_number

_METRICS = (
    ("picp_50", "PICP 50 %"),
    ("picp_90", "PICP 90 %"),
    ("picp_95", "PICP 95 %"),
    ("mpiw_90", "width 90 %"),
    ("crps", "CRPS"),
    ("nll", "NLL"),
    ("spread_skill", "spread/skill"),
)


def _num(v: Any) -> float | None:
    return float(v) if _is_number(v) else None


def _methods(uq: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    methods = uq.get("methods")
    return dict(methods) if isinstance(methods, Mapping) else {}


def uq_section(results: Results) -> str:
    """Markdown: what was done, the calibration table at the main lead time and pooled, the
    θ_s intervals, and whether intervals widen out of domain."""
    uq = results.uq
    methods = _methods(uq)
    if not methods:
        return "No uncertainty was quantified (run with `--uq ensemble` or `--uq bayes`)."
    kind = uq.get("kind", "?")
    lead = uq.get("lead")
    how = uq.get("description") or (
        f"deep ensembles of {uq.get('members')} members (one vectorised program), each "
        f"rolled out {uq.get('samples_per_member')} times with a zero-mean AR(1) model "
        "error fitted to one-step residuals on the validation trajectories, the "
        "spread then recalibrated per lead time on them (EMOS: spread/skill 1, a "
        "floor of the typical spread for nominal 90 % coverage; `sl.uq.fit_spread_scale`)"
        if kind == "ensemble"
        else f"the NUTS posterior of θ_s (network fixed at its trained weights): "
        f"{uq.get('members')} posterior draws, each rolled out "
        f"{uq.get('samples_per_member')} times with the same zero-mean AR(1) model error "
        "and spread recalibration"
    )
    if uq.get("rolling"):
        how += (
            f"; then each test forecast's spread is refitted on the forecasts of its set "
            f"already verified when it was issued, once there are {uq['rolling']} of them "
            f"(a rolling EMOS; no truth after a forecast's issue time)"
        )
    w = int(uq.get("windows_per_trajectory") or 1)
    windows = (f", each issuing up to {w} forecasts {lead} steps apart" if w > 1 else "")
    out = [
        f"Method: {how}. Scored on the first {uq.get('trajectories')} trajectories of each "
        f"set{windows}. PICP: fraction of the truth inside the central interval (nominal 0.50 / "
        f"0.90 / 0.95); spread/skill: ensemble spread over the RMSE of the ensemble mean "
        f"(1 is calibrated, < 1 over-confident).",
        "",
    ]
    tables = [(f"At the main lead time ({lead} steps)", "at_lead"),
              ("Pooled over lead times 1 … main", None)]  # fmt: skip
    if lead is None:  # no lead time (e.g. a periodic flow): one table, pooled
        tables = [(f"Pooled {uq.get('lead_label', 'over every predicted time')}", "at_lead")]
    for title, pick in tables:
        rows = []
        for name, entry in methods.items():
            for s in results.sets:
                block = entry.get(s)
                if not isinstance(block, Mapping):
                    continue
                src = block.get(pick, {}) if pick else block
                rows.append([f"`{name}`", s, *[fmt_number(_num(src.get(k))) for k, _ in _METRICS]])
        out += [f"### {title}", "", markdown_table(["Method", "Set", *[h for _, h in _METRICS]],
                                                   rows), ""]  # fmt: skip
    out += _widening(methods, results.sets)
    theta_rows = []
    marked = any(isinstance(row, Mapping) and "identified" in row
                 for e in methods.values() for row in (e.get("theta") or {}).values())  # fmt: skip
    for name, entry in methods.items():
        for p, row in (entry.get("theta") or {}).items():
            if not isinstance(row, Mapping):
                continue
            ci = row.get("ci95") or [None, None]
            covered = row.get("covered")
            ident = row.get("identified")
            extra = [{True: "yes", False: "no"}.get(ident, "—")] if marked else []
            theta_rows.append([
                f"`{name}`", f"`{p}`", *extra, fmt_number(_num(np.mean(row["mean"]))),
                fmt_number(_num(np.mean(row["std"]))),
                f"[{fmt_number(_num(ci[0]))}, {fmt_number(_num(ci[1]))}]",
                fmt_number(_num(row.get("true"))),
                "—" if covered is None else ("yes" if covered else "no"),
                fmt_number(_num(row.get("r_hat"))),
            ])  # fmt: skip
    if theta_rows:
        head = ["Method", "θ_s", "mean", "std", "95 % interval", "true", "covers truth",
                "R-hat"]  # fmt: skip
        if marked:
            head = [*head[:2], "identified (Fisher)", *head[2:]]
        out += ["### θ_s uncertainty", "", markdown_table(head, theta_rows), "",
            "Ensemble intervals are mean ± 1.96 std across members; Bayesian ones are posterior "
            "quantiles (R-hat and the effective sample size are in results.json).", ""]  # fmt: skip
    costs = []
    for name, entry in methods.items():
        parts = [f"{k.replace('_', ' ')} {entry[k]:.1f} s" for k in
                 ("train_seconds", "posterior_seconds", "forecast_seconds")
                 if _num(entry.get(k)) is not None]  # fmt: skip
        if parts:
            costs.append(f"- `{name}`: " + ", ".join(parts))
    if costs:
        out += ["Cost:", "", *costs, ""]
    return "\n".join(out).rstrip()


def _widening(methods: Mapping[str, Mapping[str, Any]], sets) -> list[str]:
    """Whether each method's interval widens out of domain, and whether its coverage holds."""
    if len(sets) < 2:
        return []
    lines = []
    for name, entry in methods.items():
        base = (entry.get("id") or {}).get("at_lead") or {}
        w0 = _num(base.get("mpiw_90"))
        for s in sets[1:]:
            at = (entry.get(s) or {}).get("at_lead") or {}
            w, c = _num(at.get("mpiw_90")), _num(at.get("picp_90"))
            if w0 is None or w is None or c is None:
                continue
            verdict = "widens" if w > w0 else "does not widen"
            lines.append(
                f"- `{name}` on `{s}`: the 90 % interval {verdict} (width {w:.3g} vs "
                f"{w0:.3g} in domain) and covers {c:.0%} of the truth."
            )
    return ["Out of domain:", "", *lines, ""] if lines else []


def reliability_figure(results: Results, path: Path) -> FigureOutcome:
    outcome = FigureOutcome(
        path.name, "Reliability diagram",
        "Observed coverage of central intervals against their nominal level, pooled over "
        "lead times (the diagonal is perfect calibration; below it, over-confident).",
    )  # fmt: skip
    methods = _methods(results.uq)
    sets = [s for s in results.sets if any(isinstance(e.get(s), Mapping) for e in methods.values())]
    if not methods or not sets:
        return _skip(outcome, "no uq block in results.json")
    colours = method_colours(list(methods))
    fig = _new_figure(3.6 * len(sets), 3.4)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, s in zip(axes, sets, strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for name, entry in methods.items():
            rel = (entry.get(s) or {}).get("reliability")
            if not rel:
                continue
            ax.plot(rel["nominal"], [np.nan if o is None else o for o in rel["observed"]],
                    marker="o", ms=3, color=colours[name], label=name)  # fmt: skip
        ax.set(title=s, xlabel="nominal coverage", ylabel="observed coverage",
               xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    if axes[0].get_legend_handles_labels()[0]:  # no labelled artist: no empty legend
        axes[0].legend(fontsize=7)
    _save(fig, path)
    return outcome


def lead_figure(results: Results, path: Path) -> FigureOutcome:
    outcome = FigureOutcome(
        path.name, "Coverage and spread–skill over lead time",
        "PICP of the 90 % interval (top; dashed: nominal) and the spread–skill ratio "
        "(bottom; dashed: 1) against lead time, per method and evaluation set.",
    )  # fmt: skip
    methods = _methods(results.uq)
    if not methods:
        return _skip(outcome, "no uq block in results.json")
    colours = method_colours(list(methods))
    styles = ["-", "--", ":", "-."]
    fig = _new_figure(6.0, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name, entry in methods.items():
        for i, s in enumerate(results.sets):
            block = entry.get(s)
            if not isinstance(block, Mapping) or "by_step" not in block:
                continue
            steps = block["steps"]
            by = block["by_step"]
            kw = {"color": colours[name], "ls": styles[i % len(styles)], "label": f"{name} ({s})"}
            top.plot(steps, [np.nan if v is None else v for v in by["picp_90"]], **kw)
            bottom.plot(steps, [np.nan if v is None else v for v in by["spread_skill"]], **kw)
    top.axhline(0.9, color="0.5", ls="--", lw=1)
    bottom.axhline(1.0, color="0.5", ls="--", lw=1)
    top.set(ylabel="PICP 90 %", ylim=(0, 1.02))
    bottom.set(ylabel="spread / skill", xlabel=results.uq.get("time_label", "lead time (steps)"))
    top.legend(fontsize=6, ncol=2)
    _save(fig, path)
    return outcome


def interval_figure(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    outcome = FigureOutcome(
        path.name, "Forecast intervals",
        "The first trajectory's first state component: truth (black), ensemble mean and the "
        "5–95 % band, per method (rows) and evaluation set (columns).",
    )  # fmt: skip
    methods = list(_methods(results.uq))
    if arrays is None or not methods:
        return _skip(outcome, "no uq arrays in arrays.npz")
    sets = [s for s in results.sets if any(f"uq__{m}__{s}" in arrays for m in methods)]
    if not sets:
        return _skip(outcome, "no uq arrays in arrays.npz")
    colours = method_colours(methods)
    fig = _new_figure(3.4 * len(sets), 2.4 * len(methods))
    axes = fig.subplots(len(methods), len(sets), squeeze=False)
    for r, name in enumerate(methods):
        for c, s in enumerate(sets):
            ax = axes[r, c]
            key = f"uq__{name}__{s}"
            if key not in arrays:
                ax.set_axis_off()
                continue
            truth, mean, lo, hi = np.asarray(arrays[key], dtype=float)
            steps = np.arange(truth.size)
            ax.fill_between(steps, lo, hi, color=colours[name], alpha=0.3, lw=0)
            ax.plot(steps, mean, color=colours[name], lw=1.2)
            ax.plot(steps, truth, color="k", lw=1)
            ax.set_title(f"{name} — {s}", fontsize=8)
            if r == len(methods) - 1:
                ax.set_xlabel(results.uq.get("time_label", "lead time (steps)"))
    _save(fig, path)
    return outcome


def theta_figure(results: Results, path: Path) -> FigureOutcome:
    outcome = FigureOutcome(
        path.name, "θ_s uncertainty against the truth",
        "Per θ_s: each method's 95 % interval (ensemble: mean ± 1.96 std of the members, with "
        "the members as dots; bayes: the posterior, its draws as a histogram) and the true "
        "value (red line) where known.",
    )  # fmt: skip
    methods = _methods(results.uq)
    params = list(dict.fromkeys(p for e in methods.values() for p in (e.get("theta") or {})))
    params = [p for p in params if p != "noise"]
    if not params:
        return _skip(outcome, "no method reports θ_s uncertainty")
    colours = method_colours(list(methods))
    fig = _new_figure(3.2 * len(params), 2.8)
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params, strict=True):
        true = None
        for i, (name, entry) in enumerate(methods.items()):
            row = (entry.get("theta") or {}).get(p)
            if not isinstance(row, Mapping) or np.ndim(row.get("mean")) != 0:
                continue
            samples = (entry.get("posterior_samples") or {}).get(p)
            if samples:
                ax.hist(samples, bins=30, density=True, color=colours[name], alpha=0.5,
                        label=name)  # fmt: skip
            else:
                lo, hi = row["ci95"]
                ax.errorbar([row["mean"]], [i], xerr=[[row["mean"] - lo], [hi - row["mean"]]],
                            fmt="o", color=colours[name], label=name, capsize=3)  # fmt: skip
                ax.plot(row.get("members", []), [i] * len(row.get("members", [])), "x",
                        color=colours[name], ms=4)  # fmt: skip
                ax.set_yticks([])
            true = row.get("true", true)
        if true is not None:
            ax.axvline(true, color="red", lw=1.5)
        ax.set_title(p)
    if axes[0].get_legend_handles_labels()[0]:  # no labelled artist: no empty legend
        axes[0].legend(fontsize=7)
    _save(fig, path)
    return outcome


def uq_figures(results: Results, arrays: Arrays | None, figures_dir: Path) -> list[FigureOutcome]:
    if not _methods(results.uq):
        return []
    return [
        reliability_figure(results, figures_dir / "uq_reliability.png"),
        lead_figure(results, figures_dir / "uq_lead_time.png"),
        interval_figure(results, arrays, figures_dir / "uq_intervals.png"),
        theta_figure(results, figures_dir / "uq_theta.png"),
    ]
