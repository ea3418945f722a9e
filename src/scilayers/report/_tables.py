"""The Markdown sections of report.md: run summary, metric tables, θ_s, targets, notes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._format import MISSING, best_rows, bold, fmt_number, fmt_stat, markdown_table
from ._load import (
    DEFAULT_EVAL_SETS,
    Entry,
    Results,
    Stat,
    Target,
    is_stat_like,
    stat_of_values,
    to_stat,
)

#: Pseudo-metric key for the mean relative θ_s error over a method's parameters.
THETA_REL = "__theta_rel_error__"


@dataclass(frozen=True)
class Column:
    """A metric column: results key, header, direction, and a display scale.

    ``dagger``: mark (†) a method whose value is worse than the best reference forecast's.
    """

    key: str
    header: str
    higher_is_better: bool = False
    scale: float = 1.0
    dagger: bool = False


#: Mark of a method worse than the best reference forecast (doing nothing) at a set.
DAGGER = "†"


def set_header(split: str) -> str:
    """Short name of an evaluation set in a header: ``id`` → ID, ``ood_f16`` → OOD f16."""
    head, _, rest = split.partition("_")
    head = head.upper() if head.lower() in ("id", "ood") else head
    return f"{head} {rest.replace('_', ' ')}".strip()


def physics_residual_key(split: str) -> str:
    """``physics_residual`` for the in-domain set, ``physics_residual_{set}`` otherwise."""
    return "physics_residual" if split == "id" else f"physics_residual_{split}"


def main_columns(sets: Sequence[str] = DEFAULT_EVAL_SETS) -> tuple[Column, ...]:
    """The main-table columns for these evaluation sets, in order: MSE per set, nMSE,
    correlation time, correlation time in Lyapunov times, physics residual, θ_s error,
    training time, peak memory of a training step (per device). Columns that no row has
    are dropped by :func:`metric_table`."""
    h = {s: set_header(s) for s in sets}
    residual = [
        Column(physics_residual_key(s), "Physics residual" + ("" if s == "id" else f" ({h[s]})"))
        for s in sets
    ]
    if "id" not in sets:  # the in-domain residual is recorded without a suffix
        residual.insert(0, Column("physics_residual", "Physics residual"))
    return (
        *(Column(f"{s}_mse", f"{h[s]} MSE", dagger=True) for s in sets),
        *(Column(f"{s}_nmse", f"{h[s]} nMSE") for s in sets),
        *(Column(f"{s}_corr_time", f"{h[s]} corr. time", higher_is_better=True) for s in sets),
        *(
            Column(f"{s}_corr_time_lyap", f"{h[s]} corr. time (Lyap.)", higher_is_better=True)
            for s in sets
        ),
        *residual,
        Column(THETA_REL, "θ_s rel. error (%)", scale=100.0),
        Column("train_seconds", "Train s"),
        Column("train_step_peak_mb", "Step peak MiB"),  # XLA's memory of one training step
    )


#: The main-table columns of a run with the default evaluation sets (ID and OOD).
MAIN_COLUMNS = main_columns()

#: Config groups worth a line in the run summary: (group, words that put a key in it,
#: leaf names that put a key in it).
HIGHLIGHT_GROUPS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("truth", frozenset({"truth", "true"}), frozenset()),
    ("prior", frozenset({"prior"}), frozenset()),
    ("out-of-domain split", frozenset({"ood"}), frozenset()),
    ("grid and time step", frozenset({"grid", "domain"}), frozenset({"n", "nx", "length", "dt"})),
    ("horizon", frozenset({"horizon", "horizons"}), frozenset()),
    ("training", frozenset({"train", "training", "optimiser", "optimizer"}), frozenset()),
)


def theta_rel_error(entry: Entry) -> Stat:
    """Relative θ_s error of ``entry`` averaged over its parameters (a fraction).

    With per-seed errors of equal length the average is taken per seed, then mean ± std over
    seeds; otherwise the mean of the parameter means, std unknown.
    """
    rels = [t.rel_error for t in entry.theta.values()]
    if not rels:
        return Stat(math.nan, math.nan)
    if len(rels) == 1:
        return rels[0]
    lengths = {len(r.per_seed) for r in rels}
    if len(lengths) == 1 and 0 not in lengths:
        per_seed = np.asarray([r.per_seed for r in rels], dtype=float)
        if np.isfinite(per_seed).all():
            return stat_of_values(per_seed.mean(axis=0))
    means = [r.mean for r in rels if math.isfinite(r.mean)]
    return Stat(float(np.mean(means)) if means else math.nan, math.nan)


def entry_stat(entry: Entry, key: str) -> Stat | None:
    if key == THETA_REL:
        return theta_rel_error(entry) if entry.theta else None
    return entry.stats.get(key)


def _present(entries: Sequence[Entry], column: Column) -> bool:
    return any((s := entry_stat(e, column.key)) is not None and not s.is_missing for e in entries)


def name_cell(entry: Entry, code: bool = True) -> str:
    if not code:  # an ablation variant: its name is already human-readable
        text = entry.name if not entry.label or entry.label == entry.name else entry.label
    else:
        name = f"`{entry.name}`"
        text = f"{entry.label} ({name})" if entry.label and entry.label != entry.name else name
    return f"*{text}*" if entry.reference else text


#: The first cell of the row that divides the methods from the reference forecasts.
REFERENCE_DIVIDER = "*reference forecasts*"


def is_worse(value: float, than: float, higher_is_better: bool) -> bool:
    """Whether ``value`` is worse than ``than`` at the shown precision."""
    a, b = float(f"{value:.3g}"), float(f"{than:.3g}")
    return a < b if higher_is_better else a > b


def metric_table(
    entries: Sequence[Entry], columns: Sequence[Column], first: str, code_names: bool = True
) -> str | None:
    """Rows = entries, columns = the given metrics that at least one entry has; the best
    value of each column in bold. ``None`` when no column applies. Names are set as code
    (method identifiers) unless ``code_names`` is false (ablation variant labels).

    Reference forecasts (``entry.reference``) follow the other rows under a divider row,
    names in italics; they never take the bold mark, and a value in a ``dagger`` column
    worse than the best reference value of that column carries †.
    """
    columns = [c for c in columns if _present(entries, c)]
    if not columns or not entries:
        return None
    entries = [e for e in entries if not e.reference] + [e for e in entries if e.reference]
    n_methods = sum(not e.reference for e in entries)
    cells = [[name_cell(e, code_names)] for e in entries]
    for column in columns:
        stats = [entry_stat(e, column.key) for e in entries]
        means = [math.nan if s is None else s.mean for s in stats]
        best = best_rows(means[:n_methods], column.higher_is_better)
        ref_best = best_finite(means[n_methods:], column.higher_is_better)
        for i, stat in enumerate(stats):
            text = fmt_stat(stat, column.scale)
            if i in best:
                text = bold(text)
            if (
                column.dagger
                and i < n_methods
                and ref_best is not None
                and math.isfinite(means[i])
                and is_worse(means[i], ref_best, column.higher_is_better)
            ):
                text += f" {DAGGER}"
            cells[i].append(text)
    if 0 < n_methods < len(entries):
        cells.insert(n_methods, [REFERENCE_DIVIDER] + [""] * len(columns))
    return markdown_table([first, *(c.header for c in columns)], cells)


def best_finite(values: Sequence[float], higher_is_better: bool) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if higher_is_better else min(finite)


def extra_columns(
    entries: Sequence[Entry], sets: Sequence[str] = DEFAULT_EVAL_SETS
) -> list[Column]:
    """Columns for stat metrics outside the main set (experiments may add their own)."""
    main = {c.key for c in main_columns(sets)}
    keys: list[str] = []
    for entry in entries:
        keys += [k for k in entry.stats if k not in main and k not in keys]
    higher = ("corr_time", "corr_time_lyap", "picp")
    return [Column(k, k, higher_is_better=k.endswith(higher)) for k in keys]


def theta_table(results: Results) -> str | None:
    """Method × parameter: true, initial, learned mean ± std, relative error in %."""
    rows: list[tuple[Entry, str]] = [
        (entry, param) for entry in results.methods.values() for param in entry.theta
    ]
    if not rows:
        return None
    best_by_param: dict[str, set[int]] = {}
    for param in dict.fromkeys(p for _, p in rows):
        idx = [i for i, (_, p) in enumerate(rows) if p == param]
        means = [rows[i][0].theta[param].rel_error.mean for i in idx]
        best_by_param[param] = {idx[j] for j in best_rows(means, higher_is_better=False)}
    cells = []
    for i, (entry, param) in enumerate(rows):
        theta = entry.theta[param]
        rel = fmt_stat(theta.rel_error, 100.0)
        cells.append(
            [
                name_cell(entry),
                f"`{param}`",
                fmt_number(theta.true),
                fmt_number(theta.initial),
                fmt_stat(stat_of_values(theta.learned)) if theta.learned else MISSING,
                bold(rel) if i in best_by_param[param] else rel,
            ]
        )
    headers = ["Method", "θ_s", "true", "initial", "learned", "rel. error (%)"]
    return markdown_table(headers, cells)


def targets_section(targets: Sequence[Target]) -> str:
    marks = {True: "✅", False: "❌", None: "➖"}
    met = sum(t.passed is True for t in targets)
    lines = [f"{met} of {len(targets)} targets met.", ""]
    for t in targets:
        lines.append(f"- {marks[t.passed]} {t.name}: {t.value} (target {t.target})")
    return "\n".join(lines)


# --- free-form mappings -----------------------------------------------------------------


def _scalar(value: Any, metric: bool = False) -> str:
    """A config or environment value as written (floats to 6 digits), or a metric value
    to three significant digits."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return fmt_number(value) if metric else f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v, metric) for v in value) + "]"
    return str(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted.key, leaf)`` pairs of a nested mapping; stat dicts are leaves."""
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not is_stat_like(value):
            out += flatten(value, f"{name}.")
        else:
            out.append((name, value))
    return out


def leaf_text(key: str, value: Any) -> str:
    if is_stat_like(value):
        return fmt_stat(to_stat(value, key))
    return _scalar(value, metric=True)


def mapping_table(mapping: Mapping[str, Any]) -> str:
    rows = [[f"`{k}`", leaf_text(k, v)] for k, v in flatten(mapping)]
    return markdown_table(["Quantity", "Value"], rows)


def config_highlights(config: Mapping[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """The config values worth a line in the summary, grouped (truth, prior, horizon, …).

    A leaf belongs to the first group one of whose words appears among the words of its
    dotted path (split at ``.`` and ``_``), or whose leaf names include the key's own name;
    so both nested configs (``truth.a``) and flat ones (``a_true``) are found. Inside a
    group, a leading ``group.`` is dropped.
    """
    groups: dict[str, list[tuple[str, Any]]] = {name: [] for name, _, _ in HIGHLIGHT_GROUPS}
    for path, value in flatten(config):
        words = set(re.split(r"[._]", path.lower()))
        leaf = path.rsplit(".", 1)[-1].lower()
        for group, keys, leaves in HIGHLIGHT_GROUPS:
            if words & keys or leaf in leaves:
                head, _, rest = path.partition(".")
                shown = rest if rest and head.lower() in keys else path
                groups[group].append((shown, value))
                break
    return {name: items for name, items in groups.items() if items}


def _compact(items: Sequence[tuple[str, Any]], limit: int = 10) -> str:
    text = ", ".join(f"{k}={_scalar(v)}" for k, v in items[:limit])
    return text + (", …" if len(items) > limit else "")


def _time(steps: float, dt: float | None) -> str:
    return f"{steps:g} steps" + ("" if dt is None else f" (t = {fmt_number(steps * dt)})")


def summary_section(results: Results) -> str:
    """What was run: methods, seeds, horizon, and the highlights of the config."""
    n = sum(not e.reference for e in results.methods.values())
    k = len(results.references)
    refs = f" (and {k} reference forecast{'s' * (k != 1)})" if k else ""
    seeds = ", ".join(str(s) for s in results.seeds)
    parts = [
        f"This report compares {n} method{'s' * (n != 1)}{refs} on the `{results.experiment}` "
        f"experiment (preset `{results.preset}`) over {len(results.seeds)} "
        f"seed{'s' * (len(results.seeds) != 1)} ({seeds}); "
        + (
            "every score is the mean ± std over seeds."
            if len(results.seeds) > 1
            else "with a single seed there is no spread to report."
        )
    ]
    if results.main_horizon_steps is not None:
        parts.append(
            f"Errors are measured at the main forecast horizon of "
            f"{_time(results.main_horizon_steps, results.dt)}."
        )
    elif results.dt is not None:
        parts.append(f"The time step is dt = {fmt_number(results.dt)}.")
    if results.eval_sets:
        parts.append(
            "Evaluation sets: "
            + ", ".join(f"`{s}` ({set_header(s)})" for s in results.eval_sets)
            + "."
        )
    lines = [" ".join(parts), ""]
    methods = [e for e in results.methods.values() if not e.reference]
    if methods:
        lines.append("Methods: " + ", ".join(name_cell(e) for e in methods) + ".")
        lines.append("")
    if results.references:
        lines.append(
            "Reference forecasts (trivial, for scale): "
            + ", ".join(name_cell(e) for e in results.references.values())
            + "."
        )
        lines.append("")
    highlights = config_highlights(results.config)
    if highlights:
        lines.append("Configuration highlights:")
        lines.append("")
        for group, items in highlights.items():
            lines.append(f"- **{group}**: {_compact(items)}")
        lines.append("")
    if results.config:
        dumped = json.dumps(results.config, indent=2, default=str, ensure_ascii=False)
        lines += [
            "<details><summary>Full resolved config</summary>",
            "",
            "```json",
            dumped,
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines).rstrip()


def environment_section(environment: Mapping[str, Any]) -> str:
    if not environment:
        return "No environment was recorded."
    return "\n".join(f"- **{k}**: {_scalar(v)}" for k, v in flatten(environment))
