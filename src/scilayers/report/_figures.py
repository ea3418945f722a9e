"""The report's figures, drawn with matplotlib's object API on an Agg canvas.

No pyplot: figures are plain ``Figure`` objects that are never registered with a GUI
backend or a global figure manager, so nothing needs closing and nothing leaks between
calls. Each function either writes its PNG and returns a :class:`Figure` outcome with a
caption, or returns one that says why it was skipped (its arrays are absent).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._format import fmt_number
from ._load import ARRAYS_FILE, Entry, Results
from ._tables import theta_rel_error

DPI = 100
_SPLIT_NAMES = {"id": "in-domain", "ood": "out-of-domain"}


@dataclass(frozen=True)
class FigureOutcome:
    """A written figure (``skipped`` is None) or the reason it was not drawn."""

    filename: str
    title: str
    caption: str = ""
    skipped: str | None = None
    remarks: tuple[str, ...] = field(default=())


Arrays = Mapping[str, np.ndarray]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


def method_colours(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One colour per method, stable across figures (order of results.json)."""
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _split_title(split: str) -> str:
    return _SPLIT_NAMES.get(split, split)


def _dt(results: Results, arrays: Arrays | None) -> float | None:
    if arrays is not None and "dt" in arrays and np.size(arrays["dt"]) == 1:
        value = float(np.asarray(arrays["dt"]).reshape(()))
        if math.isfinite(value) and value > 0:
            return value
    return results.dt


def _finite(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nan)


def _edges(centres: np.ndarray) -> tuple[float, float]:
    step = float(centres[1] - centres[0]) if centres.size > 1 else 1.0
    return float(centres[0]) - step / 2, float(centres[-1]) + step / 2


def _label(entry: Entry | None, name: str, width: int = 18) -> str:
    text = entry.display if entry is not None else name
    return _wrap(text, width)


def _wrap(text: str, width: int) -> str:
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


# --- space–time ------------------------------------------------------------------------


def spacetime(results: Results, arrays: Arrays | None, split: str, path: Path) -> FigureOutcome:
    """Truth and every method's rollout on one test trajectory (top), absolute error
    (bottom); x across, time up, one colour scale per row."""
    title = f"Space–time, {_split_title(split)} test trajectory"
    outcome = FigureOutcome(path.name, title)
    truth_key = f"spacetime_truth_{split}"
    if arrays is None:
        return _skip(outcome, f"there is no `{ARRAYS_FILE}`")
    if truth_key not in arrays:
        return _skip(outcome, f"`{ARRAYS_FILE}` has no `{truth_key}`")
    truth = _finite(np.asarray(arrays[truth_key], dtype=float))
    if truth.ndim != 2 or not np.isfinite(truth).any():
        return _skip(outcome, f"`{truth_key}` should be a finite (T, n) array, got {truth.shape}")
    n_t, n_x = truth.shape

    names = list(results.methods)
    prefix, suffix = "spacetime_", f"_{split}"
    names += [
        k[len(prefix) : -len(suffix)]
        for k in arrays
        if k.startswith(prefix) and k.endswith(suffix) and k != truth_key
    ]
    remarks: list[str] = []
    panels: list[tuple[str, np.ndarray]] = []
    for name in dict.fromkeys(names):
        key = f"{prefix}{name}{suffix}"
        if key not in arrays:
            continue
        field_ = _finite(np.asarray(arrays[key], dtype=float))
        if field_.ndim != 2 or field_.shape[1] != n_x:
            remarks.append(f"`{key}` has shape {field_.shape}, not (T, {n_x}); left out.")
            continue
        panels.append((name, field_))

    dt = _dt(results, arrays)
    t = np.arange(n_t) * (dt if dt is not None else 1.0)
    x = np.asarray(arrays.get(f"x_{split}", np.arange(n_x)), dtype=float).reshape(-1)
    if x.size != n_x:
        x = np.arange(n_x, dtype=float)
    x_lo, x_hi = _edges(x)
    step_t = t[1] - t[0] if n_t > 1 else 1.0

    lo, hi = float(np.nanmin(truth)), float(np.nanmax(truth))
    if lo < 0.0 < hi:
        vmax = max(-lo, hi)
        field_kw = {"cmap": _with_grey_nan("RdBu_r"), "vmin": -vmax, "vmax": vmax}
    else:
        field_kw = {
            "cmap": _with_grey_nan("viridis"),
            "vmin": lo,
            "vmax": hi if hi > lo else lo + 1.0,
        }
    errors = []
    for _, f in panels:
        m = min(n_t, f.shape[0])
        errors.append(np.abs(f[:m] - truth[:m]))
    spread = (hi - lo) or 1.0
    tops = [np.percentile(e[np.isfinite(e)], 99) for e in errors if np.isfinite(e).any()]
    err_max = min(max(tops), spread) if tops else spread
    err_kw = {
        "cmap": _with_grey_nan("magma"),
        "vmin": 0.0,
        "vmax": err_max if err_max > 0 else spread,
    }

    ncols = 1 + len(panels)
    nrows = 2 if panels else 1
    fig = _new_figure(1.75 * ncols + 1.3, 3.1 * nrows + 0.5)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True))

    def show(ax: Axes, data: np.ndarray, kw: dict) -> object:
        top = t[0] + (data.shape[0] - 0.5) * step_t
        extent = (x_lo, x_hi, t[0] - step_t / 2, top)
        return ax.imshow(
            data, origin="lower", aspect="auto", extent=extent, interpolation="nearest", **kw
        )

    field_image = show(axes[0, 0], truth, field_kw)
    axes[0, 0].set_title("truth", fontsize=9)
    for j, (name, data) in enumerate(panels, start=1):
        show(axes[0, j], data, field_kw)
        axes[0, j].set_title(_label(results.methods.get(name), name), fontsize=8)
    fig.colorbar(field_image, ax=axes[0, :].tolist(), shrink=0.9, pad=0.01, label="u")
    if panels:
        axes[1, 0].set_axis_off()
        axes[1, 0].text(
            0.5,
            0.5,
            "absolute error\n|method − truth|\n→",
            ha="center",
            va="center",
            fontsize=9,
            transform=axes[1, 0].transAxes,
        )
        err_image = None
        for j, err in enumerate(errors, start=1):
            err_image = show(axes[1, j], err, err_kw)
            finite = err[np.isfinite(err)]
            with np.errstate(over="ignore"):
                mse = float(np.mean(finite**2)) if finite.size == err.size else math.inf
            panel_title = f"MSE {fmt_number(mse)}"
            if err.shape[0] < n_t:  # a shorter rollout: say over which window
                panel_title += f" (to t = {fmt_number(t[err.shape[0] - 1])})"
            axes[1, j].set_title(panel_title, fontsize=8)
        fig.colorbar(err_image, ax=axes[1, :].tolist(), shrink=0.9, pad=0.01, label="|error|")
    time_label = "t" if dt is not None else "step"
    axes[0, 0].set_ylabel(time_label)
    for ax in axes[-1, :]:
        ax.set_xlabel("x")
    if panels:
        axes[1, 1].set_ylabel(time_label)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{results.experiment}: {title.lower()}", fontsize=10)
    _save(fig, path)
    caption = (
        f"{title}: the truth and each method's rollout from the same initial state (top row, "
        "shared colour scale), and the absolute error (bottom row, shared scale capped at the "
        "99th percentile); the MSE over the whole window is above each error panel, and grey "
        "marks non-finite values (a rollout that blew up)."
    )
    return FigureOutcome(path.name, title, caption, remarks=tuple(remarks))


def _with_grey_nan(name: str):
    """A colormap that draws NaN (a blown-up rollout) grey, not as a data colour."""
    return colormaps[name].with_extremes(bad="0.55")


def _skip(outcome: FigureOutcome, reason: str) -> FigureOutcome:
    return FigureOutcome(outcome.filename, outcome.title, skipped=reason)


# --- error growth ----------------------------------------------------------------------


#: Values above this are a blown-up run: not drawn (matplotlib's log autoscaling overflows).
_HUGE = 1e100


def _plottable(values: np.ndarray) -> np.ndarray:
    """Mask of the values a log axis can show: finite, positive, not absurdly large."""
    return np.isfinite(values) & (values > 0) & (values < _HUGE)


def _log_band(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean ± std, with a lower edge that stays positive on a log axis."""
    std = np.where(np.isfinite(std), std, 0.0)
    lower = mean - std
    lower = np.where(lower > 0, lower, mean / (1.0 + std / mean))  # = mean² / (mean + std)
    return lower, mean + std


def error_growth(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    """MSE against forecast horizon for every method, one panel per split, log y."""
    title = "Error growth with forecast horizon"
    outcome = FigureOutcome(path.name, title)
    splits = list(
        dict.fromkeys(["id", "ood"] + [s for e in results.methods.values() for s in e.horizon])
    )
    splits = [s for s in splits if any(s in e.horizon for e in results.methods.values())]
    if not splits:
        return _skip(outcome, "no method has `horizon_mse` in results.json")
    dt = _dt(results, arrays)
    scale = dt if dt is not None else 1.0
    colours = method_colours(list(results.methods))
    fig = _new_figure(4.6 * len(splits) + 2.4, 3.9)
    axes = np.asarray(fig.subplots(1, len(splits), squeeze=False, sharey=True))[0]
    handles: dict[str, object] = {}
    for ax, split in zip(axes, splits, strict=True):
        positive = False
        for name, entry in results.methods.items():
            curve = entry.horizon.get(split)
            if curve is None:
                continue
            ok = _plottable(curve.mean) & np.isfinite(curve.steps)
            if not ok.any():
                continue
            positive = True
            x, mean = curve.steps[ok] * scale, curve.mean[ok]
            lower, upper = _log_band(mean, curve.std[ok])
            (line,) = ax.plot(x, mean, "o-", ms=3, lw=1.4, color=colours[name])
            ax.fill_between(x, lower, upper, color=colours[name], alpha=0.15, lw=0)
            handles.setdefault(name, line)
        if positive:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no finite MSE", ha="center", va="center", transform=ax.transAxes)
        if results.main_horizon_steps is not None:
            ax.axvline(results.main_horizon_steps * scale, color="0.4", ls=":", lw=1)
        ax.set_title(_split_title(split), fontsize=10)
        ax.set_xlabel("forecast horizon (time units)" if dt is not None else "forecast steps")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("MSE")
    if handles:
        order = [n for n in results.methods if n in handles]
        labels = [_label(results.methods[n], n, 24) for n in order]
        fig.legend([handles[n] for n in order], labels, loc="outside right upper", fontsize=8)
    fig.suptitle(f"{results.experiment}: {title.lower()}", fontsize=10)
    _save(fig, path)
    caption = (
        f"{title}: test MSE against lead time, mean over seeds with ± std shading; the dotted "
        "line marks the main horizon used in the tables."
    )
    return FigureOutcome(path.name, title, caption)


# --- θ_s trajectories ------------------------------------------------------------------


def theta_trajectories(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    """θ_s against training step, one panel per parameter: mean over seeds with the
    min–max band, and the truth dashed."""
    title = "θ_s during training"
    outcome = FigureOutcome(path.name, title)
    if arrays is None:
        return _skip(outcome, f"there is no `{ARRAYS_FILE}`")
    histories: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        parts = key.split("__", 2)
        if len(parts) == 3 and parts[0] == "theta" and parts[1] and parts[2]:
            histories.setdefault(parts[2], {})[parts[1]] = np.asarray(value, dtype=float)
    if not histories:
        return _skip(outcome, f"`{ARRAYS_FILE}` has no `theta__<method>__<param>` histories")
    param_order = [p for e in results.methods.values() for p in e.theta] + sorted(histories)
    params = [p for p in dict.fromkeys(param_order) if p in histories]
    method_order = list(
        dict.fromkeys(list(results.methods) + sorted({m for h in histories.values() for m in h}))
    )
    colours = method_colours(method_order)

    ncols = min(len(params), 3)
    nrows = math.ceil(len(params) / ncols)
    fig = _new_figure(4.3 * ncols + 2.4, 3.3 * nrows + 0.4)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    handles: dict[str, object] = {}
    remarks = []
    for ax, param in zip(axes, params, strict=False):
        for name in method_order:
            if name not in histories[param]:
                continue
            history = np.atleast_2d(_finite(histories[param][name]))
            if history.ndim != 2:
                remarks.append(f"`theta__{name}__{param}` is not (seeds, steps); left out.")
                continue
            ok = np.isfinite(history).any(axis=0)
            if not ok.any():
                continue
            steps = np.arange(1, history.shape[1] + 1)[ok]
            h = history[:, ok]
            mean, lo, hi = np.nanmean(h, axis=0), np.nanmin(h, axis=0), np.nanmax(h, axis=0)
            (line,) = ax.plot(steps, mean, lw=1.4, color=colours[name])
            ax.fill_between(steps, lo, hi, color=colours[name], alpha=0.18, lw=0)
            handles.setdefault(name, line)
        true = _theta_true(results, arrays, param)
        if true is not None:
            line = ax.axhline(true, color="black", ls="--", lw=1.1)
            handles.setdefault("__truth__", line)
        ax.set_title(f"θ_s = {param}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(param)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(params) :]:
        ax.set_visible(False)
    order = [n for n in [*method_order, "__truth__"] if n in handles]
    if order:
        labels = [
            "truth" if n == "__truth__" else _label(results.methods.get(n), n, 24) for n in order
        ]
        fig.legend([handles[n] for n in order], labels, loc="outside right upper", fontsize=8)
    fig.suptitle(f"{results.experiment}: {title}", fontsize=10)
    _save(fig, path)
    caption = (
        f"{title}: value after every training step, mean over seeds with the min–max band "
        "across seeds; the dashed line is the truth."
    )
    return FigureOutcome(path.name, title, caption, remarks=tuple(remarks))


def _theta_true(results: Results, arrays: Arrays, param: str) -> float | None:
    key = f"theta_true__{param}"
    if key in arrays and np.size(arrays[key]) == 1:
        return float(np.asarray(arrays[key]).reshape(()))
    for entry in results.methods.values():
        if param in entry.theta and math.isfinite(entry.theta[param].true):
            return entry.theta[param].true
    return None


# --- ablations -------------------------------------------------------------------------

_BARS = (("ood_mse", "OOD MSE", "#c44e52"), ("id_mse", "ID MSE", "#4c72b0"))


def ablations(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    """One panel per ablation: grouped OOD/ID MSE bars (± std) per variant; the mean θ_s
    relative error is written under each variant's name."""
    title = "Ablations"
    outcome = FigureOutcome(path.name, title)
    studies = {
        name: variants
        for name, variants in results.ablations.items()
        if any(
            (s := v.stats.get(k)) is not None and not s.is_missing
            for v in variants.values()
            for k, _, _ in _BARS
        )
    }
    if not studies:
        return _skip(outcome, "no ablation in results.json has an ID or OOD MSE")
    ncols = min(len(studies), 2)
    nrows = math.ceil(len(studies) / ncols)
    widest = max(len(v) for v in studies.values())
    fig = _new_figure(ncols * max(4.2, 1.05 * widest + 1.5), 3.7 * nrows + 0.6)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    handles = {}
    for ax, (study, variants) in zip(axes, studies.items(), strict=False):
        x = np.arange(len(variants))
        heights = {}
        for key, _, _ in _BARS:
            stats = [v.stats.get(key) for v in variants.values()]
            heights[key] = (
                np.array([np.nan if s is None else s.mean for s in stats]),
                np.array([np.nan if s is None else s.std for s in stats]),
            )
        values = np.concatenate([m for m, _ in heights.values()])
        positive = values[_plottable(values)]
        log = positive.size > 0 and positive.max() / positive.min() > 50
        width = 0.38
        for k, (key, name, colour) in enumerate(_BARS):
            mean, std = heights[key]
            ok = _plottable(mean) if log else np.isfinite(mean) & (np.abs(mean) < _HUGE)
            for i in np.flatnonzero(~ok):
                ax.annotate(
                    "n/a",
                    (x[i] + (k - 0.5) * width, 0.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color=colour,
                )
            if not ok.any():
                continue
            std = np.where(np.isfinite(std), std, 0.0)
            if log:
                lower, upper = _log_band(mean[ok], std[ok])
                yerr = np.vstack([mean[ok] - lower, upper - mean[ok]])
            else:
                yerr = std[ok]
            bars = ax.bar(
                x[ok] + (k - 0.5) * width,
                mean[ok],
                width,
                yerr=yerr,
                capsize=2,
                color=colour,
                error_kw={"lw": 0.8},
            )
            handles.setdefault(name, bars)
        if log:
            ax.set_yscale("log")
        ticks = []
        for label, variant in variants.items():
            rel = theta_rel_error(variant) if variant.theta else None
            tick = _wrap(label, 14)
            if rel is not None and not rel.is_missing:
                tick += f"\nθ err {fmt_number(rel.mean * 100)} %"
            ticks.append(tick)
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_title(study, fontsize=10)
        ax.set_ylabel("MSE")
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(studies) :]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="outside upper right", fontsize=8)
    fig.suptitle(f"{results.experiment}: ablations", fontsize=10)
    _save(fig, path)
    caption = (
        "Ablations: OOD and ID MSE per variant (mean ± std over seeds; log scale where the "
        "values span more than a factor 50), with the mean θ_s relative error under the name."
    )
    return FigureOutcome(path.name, title, caption)
