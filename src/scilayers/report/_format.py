"""Number formatting and Markdown tables.

Numbers are shown to three significant digits, trailing zeros kept (``0.800``): plainly
between 0.01 and 1000, as integers up to 10⁵, in compact scientific notation (``1.23e-4``)
otherwise. A missing value is ``—``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._load import Stat

MISSING = "—"


def fmt_number(value: float | None) -> str:
    """``value`` to three significant digits; ``—`` for ``None``/NaN."""
    if value is None or math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0.0:
        return "0"
    rounded = float(f"{value:.3g}")
    size = abs(rounded)
    if 1e-2 <= size < 1e3:
        return f"{rounded:#.3g}".rstrip(".")
    if 1e3 <= size < 1e5:
        return f"{rounded:.0f}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_stat(stat: Stat | None, scale: float = 1.0) -> str:
    """``mean ± std`` (times ``scale``); only the mean when the std is unknown or comes
    from a single seed."""
    if stat is None or math.isnan(stat.mean):
        return MISSING
    mean = fmt_number(stat.mean * scale)
    if math.isnan(stat.std) or len(stat.per_seed) == 1:
        return mean
    if abs(stat.std) <= 1e-10 * abs(stat.mean):  # identical seeds up to rounding noise
        return f"{mean} ± 0"
    return f"{mean} ± {fmt_number(stat.std * scale)}"


def best_rows(values: Sequence[float], higher_is_better: bool) -> set[int]:
    """Indices of the rows holding the best finite value (ties at the shown precision
    included). Empty when fewer than two rows can be compared."""
    shown = {i: float(f"{v:.3g}") for i, v in enumerate(values) if math.isfinite(v)}
    if len(shown) < 2:
        return set()
    best = max(shown.values()) if higher_is_better else min(shown.values())
    return {i for i, v in shown.items() if v == best}


def and_list(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def bold(text: str) -> str:
    return text if text == MISSING else f"**{text}**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table: first column left-aligned, the rest right."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
