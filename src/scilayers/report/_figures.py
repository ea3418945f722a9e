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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._format import fmt_number
from ._load import ARRAYS_FILE, Entry, Results
from ._tables import set_header, theta_rel_error

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
    """``id`` → in-domain, ``ood`` → out-of-domain, ``ood_f16`` → out-of-domain (f16)."""
    if split in _SPLIT_NAMES:
        return _SPLIT_NAMES[split]
    head, _, rest = split.partition("_")
    if head in _SPLIT_NAMES and rest:
        return f"{_SPLIT_NAMES[head]} ({rest.replace('_', ' ')})"
    return split


def _line_style(results: Results, name: str) -> str:
    """Reference forecasts are dashed, methods solid."""
    entry = results.methods.get(name)
    return "--" if entry is not None and entry.reference else "-"


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
        dict.fromkeys([*results.sets, *(s for e in results.methods.values() for s in e.horizon)])
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
            style = "o" + _line_style(results, name)
            (line,) = ax.plot(x, mean, style, ms=3, lw=1.4, color=colours[name])
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
        lyap = None if results.truth is None else results.truth.lyapunov_time.get(split)
        if dt is not None and lyap is not None and math.isfinite(lyap) and lyap > 0:
            top = ax.secondary_xaxis(
                "top", functions=(lambda t, T=lyap: t / T, lambda n, T=lyap: n * T)
            )
            top.set_xlabel("Lyapunov times", fontsize=8)
            top.tick_params(labelsize=7)
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
        "line marks the main horizon used in the tables"
        + ("; reference forecasts are dashed" if results.references else "")
        + "."
    )
    return FigureOutcome(path.name, title, caption)


# --- θ_s trajectories ------------------------------------------------------------------


def theta_trajectories(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    """θ_s against training step, one panel per parameter: mean over seeds with the
    min–max band, and the truth dashed."""
    title = "θ_s during training"
    outcome = FigureOutcome(path.name, title)
    histories = _theta_histories(results, arrays)
    if not histories:
        where = (
            f"there is no `{ARRAYS_FILE}`"
            if arrays is None
            else f"`{ARRAYS_FILE}` has no `theta__<method>__<param>` histories"
        )
        return _skip(outcome, f"no method has `theta_history` in results.json and {where}")
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
            if history.shape[1] == 0:
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


def _pad(seeds: Sequence[np.ndarray]) -> np.ndarray:
    """Per-seed histories of different lengths (early stopping) as (seeds, steps), NaN
    after a seed's last step."""
    longest = max((h.size for h in seeds), default=0)
    out = np.full((len(seeds), longest), np.nan)
    for i, h in enumerate(seeds):
        out[i, : h.size] = h
    return out


def _theta_histories(results: Results, arrays: Arrays | None) -> dict[str, dict[str, np.ndarray]]:
    """``{param: {method: (seeds, steps)}}`` from results.json's ``theta_history``, else
    from the ``theta__{method}__{param}`` arrays of older runs."""
    histories: dict[str, dict[str, np.ndarray]] = {}
    for name, entry in results.methods.items():
        for param, seeds in entry.theta_history.items():
            if seeds:
                histories.setdefault(param, {})[name] = _pad(seeds)
    for key, value in (arrays or {}).items():
        parts = key.split("__", 2)
        if len(parts) == 3 and parts[0] == "theta" and parts[1] and parts[2]:
            histories.setdefault(parts[2], {}).setdefault(parts[1], np.asarray(value, dtype=float))
    return histories


def _theta_true(results: Results, arrays: Arrays | None, param: str) -> float | None:
    for entry in results.methods.values():
        if param in entry.theta and math.isfinite(entry.theta[param].true):
            return entry.theta[param].true
    key = f"theta_true__{param}"
    if arrays is not None and key in arrays and np.size(arrays[key]) == 1:
        return float(np.asarray(arrays[key]).reshape(()))
    return None


# --- ablations -------------------------------------------------------------------------

_BAR_COLOURS = ("#4c72b0", "#c44e52")


def _bars(results: Results) -> tuple[tuple[str, str, str], ...]:
    """(key, label, colour) of the MSE bars: the first two evaluation sets."""
    return tuple(
        (f"{s}_mse", f"{set_header(s)} MSE", colour)
        for s, colour in zip(results.sets[:2], _BAR_COLOURS, strict=False)
    )


def ablations(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    """One panel per ablation: grouped OOD/ID MSE bars (± std) per variant; the mean θ_s
    relative error is written under each variant's name."""
    title = "Ablations"
    outcome = FigureOutcome(path.name, title)
    mse_bars = _bars(results)
    studies = {
        name: variants
        for name, variants in results.ablations.items()
        if any(
            (s := v.stats.get(k)) is not None and not s.is_missing
            for v in variants.values()
            for k, _, _ in mse_bars
        )
    }
    if not studies:
        wanted = " or ".join(label for _, label, _ in mse_bars)
        return _skip(outcome, f"no ablation in results.json has an {wanted}")
    ncols = min(len(studies), 2)
    nrows = math.ceil(len(studies) / ncols)
    widest = max(len(v) for v in studies.values())
    fig = _new_figure(ncols * max(4.2, 1.05 * widest + 1.5), 3.7 * nrows + 0.6)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    handles = {}
    for ax, (study, variants) in zip(axes, studies.items(), strict=False):
        x = np.arange(len(variants))
        heights = {}
        for key, _, _ in mse_bars:
            stats = [v.stats.get(key) for v in variants.values()]
            heights[key] = (
                np.array([np.nan if s is None else s.mean for s in stats]),
                np.array([np.nan if s is None else s.std for s in stats]),
            )
        values = np.concatenate([m for m, _ in heights.values()])
        positive = values[_plottable(values)]
        log = positive.size > 0 and positive.max() / positive.min() > 50
        width = 0.38
        for k, (key, name, colour) in enumerate(mse_bars):
            offset = (k - (len(mse_bars) - 1) / 2) * width
            mean, std = heights[key]
            ok = _plottable(mean) if log else np.isfinite(mean) & (np.abs(mean) < _HUGE)
            for i in np.flatnonzero(~ok):
                ax.annotate(
                    "n/a",
                    (x[i] + offset, 0.0),
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
                x[ok] + offset,
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
        f"Ablations: {' and '.join(label for _, label, _ in mse_bars)} per variant "
        "(mean ± std over seeds; log scale where the "
        "values span more than a factor 50), with the mean θ_s relative error under the name."
    )
    return FigureOutcome(path.name, title, caption)


# --- data efficiency -------------------------------------------------------------------


def data_efficiency(results: Results, arrays: Arrays | None, path: Path) -> FigureOutcome:
    """Test MSE against the number of training trajectories, log–log, one panel per
    evaluation set, one line per method with a ± std band; the threshold dotted."""
    title = "Data efficiency"
    outcome = FigureOutcome(path.name, title)
    de = results.data_efficiency
    if de is None:
        return _skip(outcome, "results.json has no `data_efficiency`")
    sets = [s for s in de.sets if any(s in by for by in de.mse.values())]
    if not sets:
        return _skip(outcome, "`data_efficiency` holds no MSE for any evaluation set")
    names = list(dict.fromkeys([*(m for m in results.methods if m in de.mse), *de.mse]))
    colours = method_colours(names)
    sizes = np.asarray(de.sizes, dtype=float)
    fig = _new_figure(4.4 * len(sets) + 2.4, 3.8)
    axes = np.asarray(fig.subplots(1, len(sets), squeeze=False, sharey=True))[0]
    handles: dict[str, object] = {}
    diverged = False
    for ax, split in zip(axes, sets, strict=True):
        drawn = False
        for name in names:
            stats = de.mse[name].get(split)
            if stats is None:
                continue
            mean = np.array([s.mean for s in stats])
            std = np.array([s.std for s in stats])
            ok = _plottable(mean)
            diverged |= bool((~np.isfinite(mean)).any())
            if not ok.any():
                continue
            drawn = True
            lower, upper = _log_band(mean[ok], std[ok])
            style = "o" + _line_style(results, name)
            (line,) = ax.plot(sizes[ok], mean[ok], style, ms=3.5, lw=1.4, color=colours[name])
            ax.fill_between(sizes[ok], lower, upper, color=colours[name], alpha=0.15, lw=0)
            handles.setdefault(name, line)
        if drawn:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no finite MSE", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in de.sizes])
        ax.minorticks_off()
        if de.threshold_set == split and de.threshold_mse is not None and de.threshold_mse > 0:
            line = ax.axhline(de.threshold_mse, color="0.3", ls=":", lw=1.1)
            handles.setdefault("__threshold__", line)
        ax.set_title(_split_title(split), fontsize=10)
        ax.set_xlabel("training trajectories")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("test MSE")
    order = [n for n in [*names, "__threshold__"] if n in handles]
    if order:
        labels = [
            "threshold" if n == "__threshold__" else _label(results.methods.get(n), n, 24)
            for n in order
        ]
        fig.legend([handles[n] for n in order], labels, loc="outside right upper", fontsize=8)
    fig.suptitle(f"{results.experiment}: {title.lower()}", fontsize=10)
    _save(fig, path)
    caption = (
        f"{title}: test MSE against the number of training trajectories (log–log), mean over "
        "seeds with ± std shading"
        + ("; the dotted line is the MSE threshold" if "__threshold__" in handles else "")
        + (
            "; reference forecasts are dashed"
            if any(results.methods[n].reference for n in names if n in results.methods)
            else ""
        )
        + ("; a missing point is a size at which the method diverged" if diverged else "")
        + "."
    )
    return FigureOutcome(path.name, title, caption)
