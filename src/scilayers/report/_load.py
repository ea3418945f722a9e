"""Reading and checking a results folder: ``results.json`` (schema in docs/design.md) and the
optional ``arrays.npz``.

Everything the report needs is normalised here, once, so that the table and figure code
never has to ask whether a value is a stat dict, a bare number or ``null``.
"""

from __future__ import annotations

import json
import math
import zipfile
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
    "notes",
)


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
class Entry:
    """The metrics of one method, or of one ablation variant."""

    name: str
    label: str | None
    stats: dict[str, Stat]
    theta: dict[str, ThetaEntry]
    horizon: dict[str, Curve]

    @property
    def display(self) -> str:
        return self.label or self.name


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
_NON_STAT_KEYS = ("label", "theta", "horizon_mse")


def _theta(value: Any, where: str) -> dict[str, ThetaEntry]:
    if value is None:
        return {}
    out = {}
    for param, raw in _mapping(value, where).items():
        here = f"{where}.{param}"
        entry = _mapping(raw, here)
        true = to_float(_require(entry, "true", here), f"{here}.true")
        learned_raw = _require(entry, "learned", here)
        if _is_number(learned_raw):
            learned_raw = [learned_raw]
        learned = _float_list(learned_raw, f"{here}.learned")
        initial = to_float(entry.get("initial"), f"{here}.initial")
        if entry.get("rel_error") is not None:
            rel = to_stat(entry["rel_error"], f"{here}.rel_error")
        elif learned and true != 0.0:
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
    return Entry(
        name=name,
        label=None if label is None else str(label),
        stats=stats,
        theta=_theta(raw.get("theta"), f"{where}.theta"),
        horizon=_horizon(raw.get("horizon_mse"), f"{where}.horizon_mse"),
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
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "rerun the experiment to rewrite it."
        ) from err
    return parse_results(raw)


def read_arrays(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``run_dir/arrays.npz`` as a dict, or ``None`` when the file is absent."""
    path = run_dir / ARRAYS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} could not be read as an .npz archive ({err}).") from err
