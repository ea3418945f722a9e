"""Figures of the fields themselves, one per evaluation set: truth, each method's rollout
and the error, from ``arrays.npz``.

Keys, per evaluation set ``s``: ``truth_{s}`` and ``pred_{s}__{method}``, whose shape
``results["field_kind"]`` names — ``1d`` (T, N): a space–time plot; ``2d`` (T, H, W): a few
time slices of truth, each method and its error; ``series`` (T, C): a few channels against
time. Runs from before ``field_kind`` wrote ``spacetime_truth_{s}`` and
``spacetime_{method}_{s}`` (1-D), which are read as well. Optional coordinates: ``x_{s}``
(1-D grid), ``dt`` (time step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from ._figures import (
    Arrays,
    FigureOutcome,
    _dt,
    _edges,
    _finite,
    _label,
    _new_figure,
    _save,
    _skip,
    _split_title,
    _with_grey_nan,
    method_colours,
)
from ._format import fmt_number
from ._load import ARRAYS_FILE, Results

#: File name stem of the field figure of each kind.
FIELD_FIGURE = {"1d": "spacetime", "2d": "snapshots", "series": "series"}
#: Time slices of a 2-D field and channels of a series that are drawn.
N_SLICES = 3
N_CHANNELS = 4


@dataclass(frozen=True)
class _Fields:
    """The arrays of one evaluation set: truth and each method's prediction."""

    kind: str
    truth_key: str
    truth: np.ndarray | None
    preds: dict[str, tuple[str, np.ndarray]]  # method → (key, array)


def _find(results: Results, arrays: Arrays | None, split: str) -> _Fields:
    """The truth and predictions of ``split``, in the new keys or else the old ones."""
    new_truth, old_truth = f"truth_{split}", f"spacetime_truth_{split}"
    arrays = arrays or {}
    if new_truth in arrays or old_truth not in arrays:
        truth = arrays.get(new_truth)
        prefix = f"pred_{split}__"
        found = {
            k[len(prefix) :]: k for k in arrays if k.startswith(prefix) and len(k) > len(prefix)
        }
        kind = results.field_kind
        if kind is None:
            kind = "2d" if truth is not None and np.ndim(truth) == 3 else "1d"
        key = new_truth
    else:
        truth = arrays[old_truth]
        prefix, suffix = "spacetime_", f"_{split}"
        found = {
            k[len(prefix) : -len(suffix)]: k
            for k in arrays
            if k.startswith(prefix)
            and k.endswith(suffix)
            and k != old_truth
            and len(k) > len(prefix) + len(suffix)
        }
        kind, key = "1d", old_truth
    order = [m for m in results.methods if m in found] + sorted(set(found) - set(results.methods))
    preds = {m: (found[m], _finite(np.asarray(arrays[found[m]], dtype=float))) for m in order}
    return _Fields(
        kind,
        key,
        None if truth is None else _finite(np.asarray(truth, dtype=float)),
        preds,
    )


def field_filename(results: Results, arrays: Arrays | None, split: str) -> str:
    return f"{FIELD_FIGURE[_find(results, arrays, split).kind]}_{split}.png"


def field_figure(
    results: Results, arrays: Arrays | None, split: str, figures_dir: Path
) -> FigureOutcome:
    """The field figure of one evaluation set (kind from ``results.field_kind``)."""
    fields = _find(results, arrays, split)
    path = figures_dir / f"{FIELD_FIGURE[fields.kind]}_{split}.png"
    titles = {
        "1d": "Space–time",
        "2d": "Snapshots",
        "series": "Time series",
    }
    title = f"{titles[fields.kind]}, {_split_title(split)} test trajectory"
    outcome = FigureOutcome(path.name, title)
    if arrays is None:
        return _skip(outcome, f"there is no `{ARRAYS_FILE}`")
    if fields.truth is None:
        keys = f"`truth_{split}`"
        if not results.eval_sets and results.field_kind is None:  # a run of the old schema
            keys = f"`spacetime_truth_{split}` or `truth_{split}`"
        return _skip(outcome, f"`{ARRAYS_FILE}` has no {keys}")
    want = {"1d": 2, "2d": 3, "series": 2}[fields.kind]
    shape = {"1d": "(T, n)", "2d": "(T, H, W)", "series": "(T, channels)"}[fields.kind]
    if fields.truth.ndim != want or not np.isfinite(fields.truth).any():
        return _skip(
            outcome,
            f"`{fields.truth_key}` should be a finite {shape} array for field kind "
            f"`{fields.kind}`, got shape {fields.truth.shape}",
        )
    remarks: list[str] = []
    panels: list[tuple[str, np.ndarray]] = []
    for name, (key, data) in fields.preds.items():
        if data.ndim != want or data.shape[1:] != fields.truth.shape[1:]:
            expected = ("T", *fields.truth.shape[1:])
            remarks.append(f"`{key}` has shape {data.shape}, not {expected}; left out.")
            continue
        panels.append((name, data))
    dt = _dt(results, arrays)
    draw = {"1d": _spacetime, "2d": _snapshots, "series": _series}[fields.kind]
    caption = draw(results, arrays, split, title, fields.truth, panels, dt, path)
    return FigureOutcome(path.name, title, caption, remarks=tuple(remarks))


def _field_scale(truth: np.ndarray) -> dict:
    lo, hi = float(np.nanmin(truth)), float(np.nanmax(truth))
    if lo < 0.0 < hi:
        vmax = max(-lo, hi)
        return {"cmap": _with_grey_nan("RdBu_r"), "vmin": -vmax, "vmax": vmax}
    return {"cmap": _with_grey_nan("viridis"), "vmin": lo, "vmax": hi if hi > lo else lo + 1.0}


def _error_scale(truth: np.ndarray, errors: list[np.ndarray]) -> dict:
    """Shared |error| scale: the 99th percentile, at most the spread of the truth."""
    spread = (float(np.nanmax(truth)) - float(np.nanmin(truth))) or 1.0
    tops = [np.percentile(e[np.isfinite(e)], 99) for e in errors if np.isfinite(e).any()]
    err_max = min(max(tops), spread) if tops else spread
    return {
        "cmap": _with_grey_nan("magma"),
        "vmin": 0.0,
        "vmax": err_max if err_max > 0 else spread,
    }


def _mse(err: np.ndarray) -> float:
    finite = err[np.isfinite(err)]
    with np.errstate(over="ignore"):
        return float(np.mean(finite**2)) if finite.size == err.size and err.size else math.inf


# --- 1-D: space–time -------------------------------------------------------------------


def _spacetime(results, arrays, split, title, truth, panels, dt, path) -> str:
    """Truth and every method's rollout (top), absolute error (bottom); x across, time up,
    one colour scale per row."""
    n_t, n_x = truth.shape
    t = np.arange(n_t) * (dt if dt is not None else 1.0)
    x = np.asarray(arrays.get(f"x_{split}", np.arange(n_x)), dtype=float).reshape(-1)
    if x.size != n_x:
        x = np.arange(n_x, dtype=float)
    x_lo, x_hi = _edges(x)
    step_t = t[1] - t[0] if n_t > 1 else 1.0
    field_kw = _field_scale(truth)
    errors = [np.abs(f[: min(n_t, f.shape[0])] - truth[: min(n_t, f.shape[0])]) for _, f in panels]
    err_kw = _error_scale(truth, errors)

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
            panel_title = f"MSE {fmt_number(_mse(err))}"
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
    return (
        f"{title}: the truth and each method's rollout from the same initial state (top row, "
        "shared colour scale), and the absolute error (bottom row, shared scale capped at the "
        "99th percentile); the MSE over the whole window is above each error panel, and grey "
        "marks non-finite values (a rollout that blew up)."
    )


# --- 2-D: snapshots --------------------------------------------------------------------


def _slices(n_t: int) -> list[int]:
    """``N_SLICES`` time indices spread over the window, the initial state left out (every
    method starts from it)."""
    if n_t == 1:
        return [0]
    picks = np.linspace(0, n_t - 1, N_SLICES + 1)[1:]
    return sorted({int(round(v)) for v in picks})


def _snapshots(results, arrays, split, title, truth, panels, dt, path) -> str:
    """Rows: truth, then one per method; for each time slice a field panel and an
    |error| panel. One colour scale for fields, one for errors."""
    n_t, height, width = truth.shape
    times = _slices(n_t)
    scale = dt if dt is not None else 1.0

    def frame(data: np.ndarray, k: int) -> np.ndarray:
        return data[k] if k < data.shape[0] else np.full(truth.shape[1:], np.nan)

    errors = [np.stack([np.abs(frame(d, k) - truth[k]) for k in times]) for _, d in panels]
    field_kw = _field_scale(truth[times])
    err_kw = _error_scale(truth[times], errors)
    aspect = min(max(height / width, 0.35), 1.6)
    panel_w = 1.7
    nrows, ncols = 1 + len(panels), 2 * len(times)
    fig = _new_figure(panel_w * ncols + 1.6, panel_w * aspect * nrows + 0.4 * nrows + 0.8)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    kw = {"origin": "lower", "aspect": "auto", "interpolation": "nearest"}
    field_image = err_image = None
    for c, k in enumerate(times):
        when = f"t = {fmt_number(k * scale)}" if dt is not None else f"step {k}"
        field_image = axes[0, 2 * c].imshow(truth[k], **kw, **field_kw)
        axes[0, 2 * c].set_title(f"truth, {when}", fontsize=8)
        axes[0, 2 * c + 1].set_axis_off()
        for r, (name, data) in enumerate(panels, start=1):
            axes[r, 2 * c].imshow(frame(data, k), **kw, **field_kw)
            err = errors[r - 1][c]
            err_image = axes[r, 2 * c + 1].imshow(err, **kw, **err_kw)
            axes[r, 2 * c].set_title(_label(results.methods.get(name), name, 22), fontsize=7)
            axes[r, 2 * c + 1].set_title(f"|error|, MSE {fmt_number(_mse(err))}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(field_image, ax=axes[:, 0::2].ravel().tolist(), shrink=0.6, pad=0.01, label="u")
    if err_image is not None:
        fig.colorbar(err_image, ax=axes[:, 1::2].ravel().tolist(), shrink=0.6, pad=0.01,
                     label="|error|")  # fmt: skip
    fig.suptitle(f"{results.experiment}: {title.lower()}", fontsize=10)
    _save(fig, path)
    return (
        f"{title}: the truth (top row) and each method's rollout (one row each) at "
        f"{len(times)} times, each beside its absolute error; one colour scale for the "
        "fields, one for the errors (capped at the 99th percentile); grey marks non-finite "
        "values (a rollout that blew up or ended early)."
    )


# --- series ----------------------------------------------------------------------------


def _channels(n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, N_CHANNELS))})


def _series(results, arrays, split, title, truth, panels, dt, path) -> str:
    """One panel per drawn channel: the truth in black, each method in its colour (a
    reference forecast dashed); the y range follows the truth, so a blown-up rollout
    leaves the panel instead of flattening it."""
    n_t, n_c = truth.shape
    channels = _channels(n_c)
    scale = dt if dt is not None else 1.0
    colours = method_colours(list(dict.fromkeys([*results.methods, *(n for n, _ in panels)])))
    fig = _new_figure(8.6, 1.9 * len(channels) + 0.9)
    axes = np.asarray(fig.subplots(len(channels), 1, squeeze=False, sharex=True)).reshape(-1)
    handles: dict[str, object] = {}
    for ax, c in zip(axes, channels, strict=True):
        (line,) = ax.plot(np.arange(n_t) * scale, truth[:, c], color="black", lw=2.0)
        handles.setdefault("__truth__", line)
        for name, data in panels:
            entry = results.methods.get(name)
            style = "--" if entry is not None and entry.reference else "-"
            (line,) = ax.plot(
                np.arange(data.shape[0]) * scale, data[:, c], style, color=colours[name], lw=1.1
            )
            handles.setdefault(name, line)
        lo, hi = float(np.nanmin(truth[:, c])), float(np.nanmax(truth[:, c]))
        pad = 0.5 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel(f"channel {c}", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("t" if dt is not None else "step")
    order = ["__truth__", *(n for n, _ in panels)]
    labels = ["truth" if n == "__truth__" else _label(results.methods.get(n), n, 24) for n in order]
    fig.legend([handles[n] for n in order], labels, loc="outside right upper", fontsize=8)
    fig.suptitle(f"{results.experiment}: {title.lower()}", fontsize=10)
    _save(fig, path)
    shown = ", ".join(str(c) for c in channels)
    return (
        f"{title}: channels {shown} of {n_c} against time, truth in black and each method's "
        "rollout from the same initial state (reference forecasts dashed); the y range is "
        "that of the truth plus half its span, so a rollout that leaves it has drifted off."
    )
