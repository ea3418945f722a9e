"""Reading and checking a results folder: ``results.json`` (schema in docs/design.md) and the
optional ``arrays.npz``.

Everything the report needs is normalised here, once, so that the table and figure code
never has to ask whether a value is a stat dict, a bare number or ``null``.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"
ARRAYS_FILE = "arrays.npz"

#: Keys that every results.json must have.
REQUIRED_TOP_LEVEL = ("experiment", "preset", "seeds", "methods")
#: Every key the report knows; any other top-level key is listed as "other recorded values".
KNOWN_TOP_LEVEL = (
    *REQUIRED_TOP_LEVEL,
    *("config", "environment", "main_horizon_steps", "dt", "ablations", "targets", "uq"),
    *("notes", "eval_sets", "field_kind", "truth", "identifiability", "data_efficiency"),
    "figures",
    "tables",
)
#: Evaluation sets of a run that does not name its own (the schema before ``eval_sets``).
DEFAULT_EVAL_SETS = ("id", "ood")
#: What ``arrays.npz`` holds per evaluation set: ``truth_{set}`` and ``pred_{set}__{method}``
#: of shape (T, N) for ``1d``, (T, H, W) for ``2d``, (T, C) for ``series``.
FIELD_KINDS = ("1d", "2d", "series")


@dataclass(frozen=True)
class Stat:
    """A metric over seeds: mean, standard deviation and the per-seed values.

    ``mean``/``std`` are NaN where the metric does not apply (``null`` in the JSON).
    """

    mean: float
    std: float
    per_seed: tuple[float, ...] = ()

    @property
    def is_missing(self) -> bool:
        return not math.isfinite(self.mean)


@dataclass(frozen=True)
class ThetaEntry:
    """One scientific parameter θ_s of one method: truth, start value, learned value per
    seed, and the relative error |learned − true| / |true| as a fraction (not %)."""

    true: float
    initial: float
    learned: tuple[float, ...]
    rel_error: Stat


@dataclass(frozen=True)
class Curve:
    """MSE against forecast horizon (in steps), mean and std over seeds."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class Convergence:
    """Whether training met its stopping criterion: final loss and steps over seeds, and
    one flag per seed."""

    criterion: str | None
    final_loss: Stat | None
    converged: tuple[bool, ...]
    steps: Stat | None


@dataclass(frozen=True)
class Entry:
    """The metrics of one method, or of one ablation variant.

    ``reference`` marks a trivial forecast (persistence, climatology, zero) shown for scale;
    ``theta_history`` holds θ_s after every training step, one array per seed.
    """

    name: str
    label: str | None
    stats: dict[str, Stat]
    theta: dict[str, ThetaEntry]
    horizon: dict[str, Curve]
    reference: bool = False
    convergence: Convergence | None = None
    theta_history: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Truth:
    """What the truth is: leading Lyapunov exponent and Lyapunov time per evaluation set,
    and named sanity checks (text or numbers)."""

    lyapunov_exponent: dict[str, float]
    lyapunov_time: dict[str, float]
    checks: dict[str, Any]


@dataclass(frozen=True)
class Identifiability:
    """Local identifiability of θ_s from the Fisher information of the data."""

    params: tuple[str, ...]
    fisher: np.ndarray | None
    eigenvalues: tuple[float, ...]
    condition_number: float
    relative_std: dict[str, float]
    correlation: np.ndarray | None
    poorly_identified: tuple[str, ...]


@dataclass(frozen=True)
class DataEfficiency:
    """Test MSE against the number of training trajectories.

    ``mse[method][set]`` has one stat per entry of ``sizes`` (mean NaN: the run diverged);
    ``needed[method]`` is the smallest size reaching the threshold (None: none did);
    ``winner[set][i]`` is the best method at ``sizes[i]`` (None: no finite MSE).
    """

    sizes: tuple[int, ...]
    sets: tuple[str, ...]
    mse: dict[str, dict[str, tuple[Stat, ...]]]
    threshold_set: str | None
    threshold_mse: float | None
    needed: dict[str, int | None]
    winner: dict[str, tuple[str | None, ...]]


@dataclass(frozen=True)
class StudyFigure:
    """A figure a study drew itself, embedded as it is."""

    file: str
    title: str
    caption: str


@dataclass(frozen=True)
class StudyTable:
    """A table a study composed itself (``results["tables"]``): cells are shown as given."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    value: str
    target: str
    passed: bool | None


@dataclass(frozen=True)
class Results:
    """A checked, normalised ``results.json``."""

    experiment: str
    preset: str
    seeds: tuple[Any, ...]
    config: Mapping[str, Any]
    environment: Mapping[str, Any]
    main_horizon_steps: int | None
    dt: float | None
    methods: dict[str, Entry]
    ablations: dict[str, dict[str, Entry]]
    targets: tuple[Target, ...]
    uq: Mapping[str, Any]
    notes: tuple[str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    eval_sets: tuple[str, ...] = ()
    field_kind: str | None = None
    truth: Truth | None = None
    identifiability: Identifiability | None = None
    data_efficiency: DataEfficiency | None = None
    figures: tuple[StudyFigure, ...] = ()
    tables: tuple[StudyTable, ...] = ()

    @property
    def sets(self) -> tuple[str, ...]:
        """The evaluation sets, in order (``("id", "ood")`` for runs that name none)."""
        return self.eval_sets or DEFAULT_EVAL_SETS

    @property
    def references(self) -> dict[str, Entry]:
        return {n: e for n, e in self.methods.items() if e.reference}


# --- scalars and stats -----------------------------------------------------------------


def to_float(value: Any, where: str) -> float:
    """``value`` as a float; ``None`` (JSON ``null``) becomes NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{RESULTS_FILE}: {where} should be a number or null, got {value!r}.")
    return float(value)


def _float_list(value: Any, where: str) -> tuple[float, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(f"{RESULTS_FILE}: {where} should be a list of numbers, got {value!r}.")
    return tuple(to_float(v, f"{where}[{i}]") for i, v in enumerate(value))


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        place = f"{where} is" if where else "the top level is"
        raise ValueError(
            f"{RESULTS_FILE}: {place} missing the key {key!r} "
            f"(found: {', '.join(map(repr, mapping)) or 'nothing'})."
        )
    return mapping[key]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{RESULTS_FILE}: {where} should be an object, got {type(value).__name__}."
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_stat_like(value: Any) -> bool:
    """Whether ``value`` looks like a stat: ``{"mean": …, …}``."""
    return isinstance(value, Mapping) and "mean" in value


def to_stat(value: Any, where: str) -> Stat:
    """Normalise a stat: a ``{"mean", "std", "per_seed"}`` dict, a bare number (std
    unknown) or ``null`` (does not apply)."""
    if value is None or _is_number(value):
        return Stat(to_float(value, where), math.nan)
    stat = _mapping(value, where)
    mean = to_float(_require(stat, "mean", where), f"{where}.mean")
    std = to_float(_require(stat, "std", where), f"{where}.std")
    return Stat(mean, std, _float_list(stat.get("per_seed"), f"{where}.per_seed"))


def stat_of_values(values: tuple[float, ...] | list[float] | np.ndarray) -> Stat:
    """Mean and (population) std of the finite entries of ``values``."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return Stat(math.nan, math.nan, tuple(arr.tolist()))
    return Stat(float(finite.mean()), float(finite.std()), tuple(arr.tolist()))


# --- entries ---------------------------------------------------------------------------

#: Keys of a method entry that are not stats.
_NON_STAT_KEYS = ("label", "theta", "horizon_mse", "reference", "convergence", "theta_history")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{RESULTS_FILE}: {where} should be a list of strings, got {value!r}.")
    return tuple(value)


def _matrix(value: Any, where: str, size: int | None) -> np.ndarray | None:
    """A square matrix given as a list of rows; ``size`` is the expected side (or None)."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ValueError(f"{RESULTS_FILE}: {where} should be a list of rows, got {value!r}.")
    rows = [_float_list(row, f"{where}[{i}]") for i, row in enumerate(value)]
    n = len(rows) if size is None else size
    if len(rows) != n or any(len(r) != n for r in rows):
        shape = (len(rows), *sorted({len(r) for r in rows}))
        raise ValueError(
            f"{RESULTS_FILE}: {where} should be a {n} x {n} matrix (one row and column per "
            f"parameter), got rows of lengths {shape[1:]} over {shape[0]} rows."
        )
    return np.asarray(rows, dtype=float).reshape(n, n)


def _optional_stat(value: Any, where: str) -> Stat | None:
    return None if value is None else to_stat(value, where)


def _convergence(value: Any, where: str) -> Convergence | None:
    if value is None:
        return None
    raw = _mapping(value, where)
    flags = raw.get("converged")
    if flags is None:
        flags = []
    if isinstance(flags, bool):
        flags = [flags]
    if not isinstance(flags, list | tuple) or not all(isinstance(f, bool) for f in flags):
        raise ValueError(
            f"{RESULTS_FILE}: {where}.converged should be a list of true/false per seed, "
            f"got {flags!r}."
        )
    criterion = raw.get("criterion")
    return Convergence(
        criterion=None if criterion is None else str(criterion),
        final_loss=_optional_stat(raw.get("final_loss"), f"{where}.final_loss"),
        converged=tuple(flags),
        steps=_optional_stat(raw.get("steps"), f"{where}.steps"),
    )


def _theta_history(value: Any, where: str) -> dict[str, tuple[np.ndarray, ...]]:
    """``{param: [[value per step] per seed]}``; seeds may have different lengths (early
    stopping). A flat list is one seed."""
    if value is None:
        return {}
    out = {}
    for param, raw in _mapping(value, where).items():
        here = f"{where}.{param}"
        if not isinstance(raw, list | tuple):
            raise ValueError(
                f"{RESULTS_FILE}: {here} should be a list (one list of values per seed), "
                f"got {type(raw).__name__}."
            )
        seeds = [raw] if raw and not isinstance(raw[0], list | tuple) else raw
        out[str(param)] = tuple(
            np.asarray(_float_list(h, f"{here}[{i}]"), dtype=float) for i, h in enumerate(seeds)
        )
    return out


def _theta(value: Any, where: str) -> dict[str, ThetaEntry]:
    if value is None:
        return {}
    out = {}
    for param, raw in _mapping(value, where).items():
        here = f"{where}.{param}"
        entry = _mapping(raw, here)
        # no "true": an effective θ_s without a known true value (e.g. a closure study)
        true = to_float(entry["true"], f"{here}.true") if "true" in entry else math.nan
        learned_raw = _require(entry, "learned", here)
        if _is_number(learned_raw):
            learned_raw = [learned_raw]
        learned = _float_list(learned_raw, f"{here}.learned")
        initial = to_float(entry.get("initial"), f"{here}.initial")
        if entry.get("rel_error") is not None:
            rel = to_stat(entry["rel_error"], f"{here}.rel_error")
        elif learned and math.isfinite(true) and true != 0.0:
            rel = stat_of_values([abs(v - true) / abs(true) for v in learned])
        else:
            rel = Stat(math.nan, math.nan)
        out[str(param)] = ThetaEntry(true, initial, learned, rel)
    return out


def _horizon(value: Any, where: str) -> dict[str, Curve]:
    if value is None:
        return {}
    out = {}
    for split, raw in _mapping(value, where).items():
        here = f"{where}.{split}"
        curve = _mapping(raw, here)
        steps = np.asarray(_float_list(_require(curve, "steps", here), f"{here}.steps"))
        mean = np.asarray(_float_list(_require(curve, "mean", here), f"{here}.mean"))
        if mean.size == 0 or not np.isfinite(mean).any():
            continue  # no finite MSE at any horizon (e.g. every seed blew up)
        std_raw = curve.get("std")
        std = np.asarray(_float_list(std_raw, f"{here}.std"))
        if std.size == 0:
            std = np.full_like(mean, np.nan)
        if not (steps.shape == mean.shape == std.shape):
            raise ValueError(
                f"{RESULTS_FILE}: {here} has steps, mean and std of different lengths "
                f"({steps.size}, {mean.size}, {std.size}); they must match."
            )
        out[str(split)] = Curve(steps, mean, std)
    return out


def _entry(name: str, value: Any, where: str) -> Entry:
    raw = _mapping(value, where)
    label = raw.get("label")
    stats = {
        str(key): to_stat(val, f"{where}.{key}")
        for key, val in raw.items()
        if key not in _NON_STAT_KEYS and (val is None or is_stat_like(val) or _is_number(val))
    }
    reference = raw.get("reference", False)
    if not isinstance(reference, bool):
        raise ValueError(f"{RESULTS_FILE}: {where}.reference should be true or false.")
    return Entry(
        name=name,
        label=None if label is None else str(label),
        stats=stats,
        theta=_theta(raw.get("theta"), f"{where}.theta"),
        horizon=_horizon(raw.get("horizon_mse"), f"{where}.horizon_mse"),
        reference=reference,
        convergence=_convergence(raw.get("convergence"), f"{where}.convergence"),
        theta_history=_theta_history(raw.get("theta_history"), f"{where}.theta_history"),
    )


def _targets(value: Any) -> tuple[Target, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{RESULTS_FILE}: targets should be a list, got {type(value).__name__}.")
    out = []
    for i, raw in enumerate(value):
        here = f"targets[{i}]"
        item = _mapping(raw, here)
        name = str(_require(item, "name", here))
        passed = _require(item, "pass", here)
        if passed is not None and not isinstance(passed, bool):
            raise ValueError(f"{RESULTS_FILE}: {here}.pass should be true, false or null.")
        out.append(
            Target(
                name=name,
                value="—" if item.get("value") is None else str(item["value"]),
                target="—" if item.get("target") is None else str(item["target"]),
                passed=passed,
            )
        )
    return tuple(out)


def _number_map(value: Any, where: str) -> dict[str, float]:
    return {str(k): to_float(v, f"{where}.{k}") for k, v in _mapping(value or {}, where).items()}


def _truth(value: Any) -> Truth | None:
    if value is None:
        return None
    raw = _mapping(value, "truth")
    exponent = _number_map(raw.get("lyapunov_exponent"), "truth.lyapunov_exponent")
    time = _number_map(raw.get("lyapunov_time"), "truth.lyapunov_time")
    for split, lam in exponent.items():  # 1/λ₁ where the study gave only λ₁
        if split not in time and math.isfinite(lam) and lam > 0:
            time[split] = 1.0 / lam
    checks = dict(_mapping(raw.get("checks") or {}, "truth.checks"))
    known = ("lyapunov_exponent", "lyapunov_time", "checks")
    checks.update({k: v for k, v in raw.items() if k not in known})  # kept, not lost
    return Truth(exponent, time, checks)


def _identifiability(value: Any) -> Identifiability | None:
    if value is None:
        return None
    where = "identifiability"
    raw = _mapping(value, where)
    rel_std = _number_map(raw.get("relative_std"), f"{where}.relative_std")
    poor = _str_list(raw.get("poorly_identified"), f"{where}.poorly_identified")
    params = _str_list(raw.get("params"), f"{where}.params")
    size = len(params) if params else None
    fisher = _matrix(raw.get("fisher"), f"{where}.fisher", size)
    correlation = _matrix(raw.get("correlation"), f"{where}.correlation", size)
    if not params:
        params = tuple(dict.fromkeys([*rel_std, *poor]))
        n = next((len(m) for m in (fisher, correlation) if m is not None), None)
        if n is not None and n != len(params):
            raise ValueError(
                f"{RESULTS_FILE}: {where}.params is needed to label a {n} x {n} matrix."
            )
    return Identifiability(
        params=params,
        fisher=fisher,
        eigenvalues=_float_list(raw.get("eigenvalues"), f"{where}.eigenvalues"),
        condition_number=to_float(raw.get("condition_number"), f"{where}.condition_number"),
        relative_std=rel_std,
        correlation=correlation,
        poorly_identified=poor,
    )


def _size(value: Any, where: str) -> int | None:
    number = to_float(value, where)
    if math.isnan(number):
        return None
    if number != int(number) or number <= 0:
        raise ValueError(f"{RESULTS_FILE}: {where} should be a positive integer, got {value!r}.")
    return int(number)


def _best(stats: Mapping[str, Stat]) -> str | None:
    finite = {m: s.mean for m, s in stats.items() if math.isfinite(s.mean)}
    return min(finite, key=finite.__getitem__) if finite else None


def _data_efficiency(
    value: Any, eval_sets: tuple[str, ...], references: set[str]
) -> DataEfficiency | None:
    if value is None:
        return None
    where = "data_efficiency"
    raw = _mapping(value, where)
    sizes_raw = _require(raw, "sizes", where)
    if not isinstance(sizes_raw, list | tuple) or not sizes_raw:
        raise ValueError(f"{RESULTS_FILE}: {where}.sizes should be a non-empty list.")
    sizes = tuple(_size(v, f"{where}.sizes[{i}]") for i, v in enumerate(sizes_raw))
    if None in sizes:
        raise ValueError(f"{RESULTS_FILE}: {where}.sizes should hold no null, got {sizes_raw!r}.")
    sizes = tuple(int(n) for n in sizes if n is not None)
    methods = _mapping(_require(raw, "methods", where), f"{where}.methods")
    sets = _str_list(raw.get("sets"), f"{where}.sets") or tuple(
        s
        for s in (eval_sets or DEFAULT_EVAL_SETS)
        if any(f"{s}_mse" in _mapping(m, where) for m in methods.values())
    )
    mse: dict[str, dict[str, tuple[Stat, ...]]] = {}
    for name, entry in methods.items():
        here = f"{where}.methods.{name}"
        entry = _mapping(entry, here)
        mse[str(name)] = {}
        for split in sets:
            values = entry.get(f"{split}_mse")
            if values is None:
                continue
            if not isinstance(values, list | tuple) or len(values) != len(sizes):
                raise ValueError(
                    f"{RESULTS_FILE}: {here}.{split}_mse should be a list of {len(sizes)} "
                    f"stats, one per size, got {values!r}."
                )
            mse[str(name)][split] = tuple(
                to_stat(v, f"{here}.{split}_mse[{i}]") for i, v in enumerate(values)
            )
    threshold = _mapping(raw.get("threshold") or {}, f"{where}.threshold")
    t_set = threshold.get("set", sets[0] if sets and "mse" in threshold else None)
    t_mse = to_float(threshold.get("mse"), f"{where}.threshold.mse")
    t_mse_or_none = t_mse if math.isfinite(t_mse) else None
    if raw.get("needed") is not None:
        needed = {
            str(m): _size(v, f"{where}.needed.{m}")
            for m, v in _mapping(raw["needed"], f"{where}.needed").items()
        }
    elif t_set is not None and t_mse_or_none is not None:  # not recorded: work it out
        needed = {}
        for name, by_set in mse.items():
            if t_set in by_set:
                hits = [n for n, st in zip(sizes, by_set[t_set], strict=True) if st.mean <= t_mse]
                needed[name] = hits[0] if hits else None
    else:
        needed = {}
    winner: dict[str, tuple[str | None, ...]] = {}
    given = _mapping(raw.get("winner") or {}, f"{where}.winner")
    for split in dict.fromkeys([*sets, *map(str, given)]):
        if split in given:
            by_size = _mapping(given[split], f"{where}.winner.{split}")
            winner[split] = tuple(
                None if (w := by_size.get(str(n), by_size.get(n))) is None else str(w)
                for n in sizes
            )
        else:
            winner[split] = tuple(
                _best(
                    {
                        m: by[split][i]
                        for m, by in mse.items()
                        if split in by and m not in references
                    }
                )
                for i in range(len(sizes))
            )
    return DataEfficiency(
        sizes=sizes,
        sets=sets,
        mse=mse,
        threshold_set=None if t_set is None else str(t_set),
        threshold_mse=t_mse_or_none,
        needed=needed,
        winner=winner,
    )


def _study_figures(value: Any) -> tuple[StudyFigure, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(f"{RESULTS_FILE}: figures should be a list, got {type(value).__name__}.")
    out = []
    for i, raw in enumerate(value):
        here = f"figures[{i}]"
        item = _mapping(raw, here)
        file = _require(item, "file", here)
        if not isinstance(file, str) or not file:
            raise ValueError(f"{RESULTS_FILE}: {here}.file should be a path, got {file!r}.")
        title = str(item.get("title") or Path(file).stem)
        out.append(StudyFigure(file, title, str(item.get("caption") or "")))
    return tuple(out)


def _study_tables(value: Any) -> tuple[StudyTable, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(f"{RESULTS_FILE}: tables should be a list, got {type(value).__name__}.")
    out = []
    for i, raw in enumerate(value):
        here = f"tables[{i}]"
        item = _mapping(raw, here)
        columns = tuple(str(c) for c in _require(item, "columns", here))
        rows = tuple(tuple(str(c) for c in row) for row in _require(item, "rows", here))
        if any(len(r) != len(columns) for r in rows):
            raise ValueError(f"{RESULTS_FILE}: {here}: every row needs {len(columns)} cells.")
        out.append(StudyTable(str(item.get("title") or f"Table {i + 1}"), columns, rows,
                              str(item.get("caption") or "")))  # fmt: skip
    return tuple(out)


def _eval_sets(value: Any) -> tuple[str, ...]:
    sets = _str_list(value, "eval_sets")
    if len(set(sets)) != len(sets) or any(not s for s in sets):
        raise ValueError(f"{RESULTS_FILE}: eval_sets should be distinct names, got {value!r}.")
    return sets


def parse_results(raw: Any) -> Results:
    """Check a decoded ``results.json`` and normalise it; ``ValueError`` names any
    missing or mistyped key."""
    top = _mapping(raw, "the top level")
    for key in REQUIRED_TOP_LEVEL:
        _require(top, key, "")
    seeds = top["seeds"]
    if not isinstance(seeds, list | tuple):
        raise ValueError(f"{RESULTS_FILE}: seeds should be a list, got {seeds!r}.")
    methods = {
        str(name): _entry(str(name), value, f"methods.{name}")
        for name, value in _mapping(top["methods"], "methods").items()
    }
    ablations = {}
    for ab_name, variants in _mapping(top.get("ablations") or {}, "ablations").items():
        here = f"ablations.{ab_name}"
        ablations[str(ab_name)] = {
            str(v): _entry(str(v), val, f"{here}.{v}")
            for v, val in _mapping(variants or {}, here).items()
        }
    horizon = to_float(top.get("main_horizon_steps"), "main_horizon_steps")
    notes = top.get("notes") or []
    if isinstance(notes, str):
        notes = [notes]
    dt = to_float(top.get("dt"), "dt")
    eval_sets = _eval_sets(top.get("eval_sets"))
    field_kind = top.get("field_kind")
    if field_kind is not None and field_kind not in FIELD_KINDS:
        raise ValueError(
            f"{RESULTS_FILE}: field_kind should be one of {', '.join(FIELD_KINDS)}, "
            f"got {field_kind!r}."
        )
    references = {n for n, e in methods.items() if e.reference}
    return Results(
        experiment=str(top["experiment"]),
        preset=str(top["preset"]),
        seeds=tuple(seeds),
        config=_mapping(top.get("config") or {}, "config"),
        environment=_mapping(top.get("environment") or {}, "environment"),
        main_horizon_steps=int(horizon) if math.isfinite(horizon) else None,
        dt=dt if math.isfinite(dt) else None,
        methods=methods,
        ablations=ablations,
        targets=_targets(top.get("targets")),
        uq=_mapping(top.get("uq") or {}, "uq"),
        notes=tuple(str(n) for n in notes),
        extra={k: v for k, v in top.items() if k not in KNOWN_TOP_LEVEL},
        eval_sets=eval_sets,
        field_kind=field_kind,
        truth=_truth(top.get("truth")),
        identifiability=_identifiability(top.get("identifiability")),
        data_efficiency=_data_efficiency(top.get("data_efficiency"), eval_sets, references),
        figures=_study_figures(top.get("figures")),
        tables=_study_tables(top.get("tables")),
    )


# --- files -----------------------------------------------------------------------------


def read_results(run_dir: Path) -> Results:
    """Read and check ``run_dir/results.json``."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run `scilayers run <experiment> --out {run_dir}` first "
            "to create it, then build the report from that folder."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.start}); rerun the experiment to rewrite it."
        ) from err
    if not text.strip():
        raise ValueError(f"{path} is empty; rerun the experiment to rewrite it.")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}; "
            "a truncated file ends like this); rerun the experiment to rewrite it."
        ) from err
    try:
        return parse_results(raw)
    except ValueError as err:  # name the file itself, not just "results.json"
        message = str(err).removeprefix(f"{RESULTS_FILE}: ")
        raise ValueError(f"{path}: {message}") from err


def read_arrays(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``run_dir/arrays.npz`` as a dict, or ``None`` when the file is absent."""
    path = run_dir / ARRAYS_FILE
    if not path.is_file():
        return None
    try:  # own the handle: np.load(path) leaks it when the archive is broken
        with path.open("rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not a named set of arrays")
            with loaded as npz:
                return {key: np.asarray(npz[key]) for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"{path} could not be read as an .npz archive ({reason}); rerun the experiment "
            "to rewrite it, or delete it to build the report without array figures."
        ) from err
