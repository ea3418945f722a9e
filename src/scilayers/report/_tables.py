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
from ._load import Entry, Results, Stat, Target, is_stat_like, stat_of_values, to_stat

#: Pseudo-metric key for the mean relative θ_s error over a method's parameters.
THETA_REL = "__theta_rel_error__"


@dataclass(frozen=True)
class Column:
    """A metric column: results key, header, direction, and a display scale."""

    key: str
    header: str
    higher_is_better: bool = False
    scale: float = 1.0


#: The main-table columns, in order. Columns that no row has are dropped.
MAIN_COLUMNS = (
    Column("id_mse", "ID MSE"),
    Column("ood_mse", "OOD MSE"),
    Column("id_nmse", "ID nMSE"),
    Column("ood_nmse", "OOD nMSE"),
    Column("id_corr_time", "ID corr. time", higher_is_better=True),
    Column("ood_corr_time", "OOD corr. time", higher_is_better=True),
    Column("physics_residual", "Physics residual"),
    Column("physics_residual_ood", "Physics residual (OOD)"),
    Column(THETA_REL, "θ_s rel. error (%)", scale=100.0),
    Column("train_seconds", "Train s"),
)
_MAIN_KEYS = {c.key for c in MAIN_COLUMNS}

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


def _name_cell(entry: Entry, code: bool = True) -> str:
    if not code:  # an ablation variant: its name is already human-readable
        return entry.name if not entry.label or entry.label == entry.name else entry.label
    code = f"`{entry.name}`"
    return f"{entry.label} ({code})" if entry.label and entry.label != entry.name else code


def metric_table(
    entries: Sequence[Entry], columns: Sequence[Column], first: str, code_names: bool = True
) -> str | None:
    """Rows = entries, columns = the given metrics that at least one entry has; the best
    value of each column in bold. ``None`` when no column applies. Names are set as code
    (method identifiers) unless ``code_names`` is false (ablation variant labels)."""
    columns = [c for c in columns if _present(entries, c)]
    if not columns or not entries:
        return None
    cells = [[_name_cell(e, code_names)] for e in entries]
    for column in columns:
        stats = [entry_stat(e, column.key) for e in entries]
        means = [math.nan if s is None else s.mean for s in stats]
        best = best_rows(means, column.higher_is_better)
        for i, stat in enumerate(stats):
            text = fmt_stat(stat, column.scale)
            cells[i].append(bold(text) if i in best else text)
    return markdown_table([first, *(c.header for c in columns)], cells)


def extra_columns(entries: Sequence[Entry]) -> list[Column]:
    """Columns for stat metrics outside the main set (experiments may add their own)."""
    keys: list[str] = []
    for entry in entries:
        keys += [k for k in entry.stats if k not in _MAIN_KEYS and k not in keys]
    return [Column(k, k, higher_is_better=k.endswith(("corr_time", "picp"))) for k in keys]


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
                _name_cell(entry),
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


def _leaf_text(key: str, value: Any) -> str:
    if is_stat_like(value):
        return fmt_stat(to_stat(value, key))
    return _scalar(value, metric=True)


def mapping_table(mapping: Mapping[str, Any]) -> str:
    rows = [[f"`{k}`", _leaf_text(k, v)] for k, v in flatten(mapping)]
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
    n = len(results.methods)
    seeds = ", ".join(str(s) for s in results.seeds)
    parts = [
        f"This report compares {n} method{'s' * (n != 1)} on the `{results.experiment}` "
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
    lines = [" ".join(parts), ""]
    if results.methods:
        lines.append("Methods: " + ", ".join(_name_cell(e) for e in results.methods.values()) + ".")
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
