"""The Markdown sections of the study protocol: truth, training convergence,
identifiability of θ_s and data efficiency."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._format import MISSING, and_list, best_rows, bold, fmt_number, fmt_stat, markdown_table
from ._load import DataEfficiency, Entry, Identifiability, Results, Stat, Truth
from ._tables import REFERENCE_DIVIDER, leaf_text, name_cell, set_header

#: |correlation| from which two parameters count as strongly correlated (set in bold).
STRONG_CORRELATION = 0.9


def _code_list(names: Sequence[str]) -> str:
    """The names as code, joined with commas and a final "and"."""
    return and_list([f"`{n}`" for n in names])


# --- truth -----------------------------------------------------------------------------


def truth_section(truth: Truth, sets: Sequence[str]) -> str:
    """λ₁ and the Lyapunov time per evaluation set, then the checks of the truth."""
    lines = []
    order = list(dict.fromkeys([*sets, *truth.lyapunov_exponent, *truth.lyapunov_time]))
    order = [s for s in order if s in truth.lyapunov_exponent or s in truth.lyapunov_time]
    if order:
        rows = [
            [
                f"`{s}` ({set_header(s)})",
                fmt_number(truth.lyapunov_exponent.get(s)),
                fmt_number(truth.lyapunov_time.get(s)),
            ]
            for s in order
        ]
        lines += [
            markdown_table(["Evaluation set", "λ₁", "Lyapunov time 1/λ₁"], rows),
            "",
            "*λ₁ is the leading Lyapunov exponent of the true dynamics (per time unit); in one "
            "Lyapunov time a small error grows by a factor e, so forecasts beyond a few "
            "Lyapunov times cannot follow the truth.*",
            "",
        ]
    if truth.checks:
        lines += ["Checks of the truth:", ""]
        lines += [f"- {name}: {leaf_text(name, value)}" for name, value in truth.checks.items()]
        lines.append("")
    return "\n".join(lines).rstrip() or "Nothing was recorded about the truth."


# --- convergence -----------------------------------------------------------------------


def convergence_section(results: Results) -> str | None:
    """Method × (criterion, final loss, seeds converged, steps), and who did not converge."""
    entries = [e for e in results.methods.values() if e.convergence is not None]
    if not entries:
        return None
    losses = [e.convergence.final_loss for e in entries if e.convergence is not None]
    best = best_rows([math.nan if s is None else s.mean for s in losses], False)
    rows = []
    unconverged = []
    for i, entry in enumerate(entries):
        conv = entry.convergence
        assert conv is not None
        done = sum(conv.converged)
        n = len(conv.converged)
        if n and done < n:
            unconverged.append(f"{name_cell(entry)} ({done}/{n})")
        loss = fmt_stat(conv.final_loss)
        rows.append(
            [
                name_cell(entry),
                conv.criterion or MISSING,
                bold(loss) if i in best else loss,
                f"{done}/{n}" if n else MISSING,
                fmt_stat(conv.steps),
            ]
        )
    table = markdown_table(["Method", "Criterion", "Final loss", "Converged seeds", "Steps"], rows)
    if unconverged:
        verdict = (
            "Not converged in every seed: " + and_list(unconverged) + "; their scores are "
            "those of an unfinished training and may improve with a longer budget."
        )
    else:
        verdict = "Every method met its convergence criterion in every seed."
    note = "*Final loss and steps: mean ± std over seeds; lowest final loss in bold.*"
    return "\n".join([table, "", note, "", verdict])


# --- identifiability -------------------------------------------------------------------


def identifiability_section(ident: Identifiability) -> str:
    """Condition number, per-parameter relative std and flag, correlation matrix."""
    lines = []
    if math.isfinite(ident.condition_number):
        text = (
            "Condition number of the Fisher information matrix: "
            f"**{fmt_number(ident.condition_number)}**"
        )
        eig = [v for v in ident.eigenvalues if math.isfinite(v)]
        if eig:
            text += f" (eigenvalues from {fmt_number(min(eig))} to {fmt_number(max(eig))})"
        lines += [text + ".", ""]
    if ident.poorly_identified:
        lines += [
            f"Poorly identified: {_code_list(ident.poorly_identified)}. The data constrain "
            "these only weakly or only in combination with others, so their learned values "
            "are not measurements.",
            "",
        ]
    elif ident.params:
        lines += ["No parameter is flagged as poorly identified.", ""]
    if ident.params:
        rows = []
        for p in ident.params:
            flagged = p in ident.poorly_identified
            rows.append(
                [
                    f"`{p}`",
                    fmt_number(ident.relative_std.get(p)),
                    "**no** (poorly identified)" if flagged else "yes",
                ]
            )
        lines += [markdown_table(["θ_s", "relative std", "identified"], rows), ""]
        lines += [
            "*Relative std: the Cramér–Rao standard deviation of the parameter from the "
            "inverse Fisher information, divided by its true value.*",
            "",
        ]
    if ident.correlation is not None and ident.params:
        rows = []
        for i, p in enumerate(ident.params):
            row = [f"`{p}`"]
            for j in range(len(ident.params)):
                value = float(ident.correlation[i, j])
                text = fmt_number(value)
                strong = i != j and math.isfinite(value) and abs(value) >= STRONG_CORRELATION
                row.append(bold(text) if strong else text)
            rows.append(row)
        headers = ["", *(f"`{p}`" for p in ident.params)]
        lines += ["Correlation of the parameter estimates:", "", markdown_table(headers, rows), ""]
        lines += [
            f"*|correlation| ≥ {STRONG_CORRELATION} in bold: the data see mostly a "
            "combination of the two parameters.*",
            "",
        ]
    if ident.fisher is not None and ident.params:
        rows = [
            [f"`{p}`", *(fmt_number(float(v)) for v in ident.fisher[i])]
            for i, p in enumerate(ident.params)
        ]
        lines += [
            "<details><summary>Fisher information matrix</summary>",
            "",
            markdown_table(["", *(f"`{p}`" for p in ident.params)], rows),
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines).rstrip() or "No identifiability analysis was recorded."


# --- data efficiency -------------------------------------------------------------------


def _trajectories(n: int) -> str:
    return f"{n} trajectory" if n == 1 else f"{n} trajectories"


def _stat_cell(stat: Stat) -> str:
    """``mean ± std``; ``diverged`` for a null mean, and how many seeds diverged otherwise."""
    if stat.is_missing:
        return "diverged"
    text = fmt_stat(stat)
    bad = int(np.sum(~np.isfinite(np.asarray(stat.per_seed, dtype=float))))
    if bad:
        text += f" ({bad}/{len(stat.per_seed)} diverged)"
    return text


def _runs(sizes: Sequence[int], winners: Sequence[str | None]) -> list[tuple[str | None, list]]:
    """Group consecutive sizes with the same winner."""
    out: list[tuple[str | None, list]] = []
    for n, w in zip(sizes, winners, strict=True):
        if out and out[-1][0] == w:
            out[-1][1].append(n)
        else:
            out.append((w, [n]))
    return out


def winner_sentence(de: DataEfficiency, split: str, entries: dict[str, Entry]) -> str:
    """Plain words: which method has the lowest MSE at each number of trajectories."""
    parts = []
    for i, (winner, sizes) in enumerate(_runs(de.sizes, de.winner.get(split, ()))):
        shown = and_list([str(n) for n in sizes])
        where = _trajectories(sizes[0]) if len(sizes) == 1 else f"{shown} trajectories"
        if winner is None:
            parts.append(f"no method has a finite MSE with {where}")
        else:
            name = name_cell(entries[winner]) if winner in entries else f"`{winner}`"
            verb = "is best with" if i == 0 else "with"
            parts.append(f"{name} {verb} {where}")
    if not parts:
        return f"**{set_header(split)}**: no winner was recorded."
    return f"**{set_header(split)}**: " + "; ".join(parts) + "."


def data_efficiency_section(de: DataEfficiency, results: Results) -> str:
    """One table per evaluation set (rows: methods, columns: training trajectories), the
    winner at each size in words, and the trajectories each method needs for the
    threshold."""
    entries = dict(results.methods)
    names = list(de.mse)
    lines = [
        "Test MSE (mean ± std over seeds) against the number of training trajectories; "
        "lowest per column in bold, reference forecasts never bold.",
        "",
    ]
    threshold = (
        None
        if de.threshold_set is None or de.threshold_mse is None
        else (de.threshold_set, de.threshold_mse)
    )
    for split in de.sets:
        rows_for = [m for m in names if split in de.mse[m]]
        if not rows_for:
            continue
        is_ref = [entries[m].reference if m in entries else False for m in rows_for]
        order = [m for m, r in zip(rows_for, is_ref, strict=True) if not r] + [
            m for m, r in zip(rows_for, is_ref, strict=True) if r
        ]
        n_methods = is_ref.count(False)
        cells = [[name_cell(entries[m]) if m in entries else f"`{m}`"] for m in order]
        for i in range(len(de.sizes)):
            stats = [de.mse[m][split][i] for m in order]
            best = best_rows([s.mean for s in stats[:n_methods]], higher_is_better=False)
            for r, stat in enumerate(stats):
                text = _stat_cell(stat)
                cells[r].append(bold(text) if r in best else text)
        headers = ["Method", *(str(n) for n in de.sizes)]
        if threshold is not None and threshold[0] == split:
            headers.append(f"needed for MSE ≤ {fmt_number(threshold[1])}")
            for r, m in enumerate(order):
                needed = de.needed.get(m)
                if m not in de.needed:
                    cells[r].append(MISSING)
                elif needed is None:
                    cells[r].append(f"not within {max(de.sizes)}")
                else:
                    cells[r].append(str(needed))
        if 0 < n_methods < len(order):
            cells.insert(n_methods, [REFERENCE_DIVIDER] + [""] * (len(headers) - 1))
        lines += [
            f"### {set_header(split)} MSE by number of training trajectories",
            "",
            markdown_table(headers, cells),
            "",
        ]
    lines += ["Lowest MSE at each number of training trajectories:", ""]
    lines += [f"- {winner_sentence(de, split, entries)}" for split in de.winner]
    lines.append("")
    if threshold is not None and de.needed:
        split, mse = threshold
        reached = [
            f"{name_cell(entries[m]) if m in entries else f'`{m}`'} needs "
            + ("more than " + _trajectories(max(de.sizes)) if n is None else _trajectories(n))
            for m, n in de.needed.items()
        ]
        lines += [
            f"To reach {set_header(split)} MSE ≤ {fmt_number(mse)}: " + "; ".join(reached) + ".",
            "",
        ]
    return "\n".join(lines).rstrip()
