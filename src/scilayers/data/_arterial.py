"""Arterial network cases: the openBF YAML/.dat reader, and runs to the periodic state.

Case files (openBF format, Melis 2017) live under ``<data dir>/hemodynamics/``; a case is
named by its folder, e.g. ``boileau2015/uta`` (the file ``boileau2015/uta/uta.yaml``) or
``alastruey2007/circle_of_willis`` (``alastruey2007/circle_of_willis.yaml``), or given as
the path of a ``.yaml`` file. Every problem with a file is a one-line error that names the
file and the field.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from ..models._arterial import (
    MMHG,
    ArterialCase,
    ArterialNetwork,
    OutletSpec,
    VesselSpec,
    wall_stiffness,
)
from ._io import data_dir as _data_dir
from ._io import save_dataset

ARTERIAL_CASES = (
    "boileau2015/uta",
    "boileau2015/cca",
    "boileau2015/ibif",
    "boileau2015/adan56",
    "alastruey2007/circle_of_willis",
    "matthys2007/invitro_model",
)
"""The cases shipped in ``hemodynamics/`` of the data directory."""

_KNOWN_VESSEL_FIELDS = {
    "label", "sn", "tn", "L", "E", "R0", "Rp", "Rd", "h0", "gamma_profile", "gamma profile",
    "Pext", "M", "outlet", "R1", "R2", "Cc", "inlet_impedance_matching",
    "inlet", "inlet_file", "inlet_number", "Rt",
}  # fmt: skip


def avolio_thickness(radius: float) -> float:
    """Wall thickness (m) from the lumen radius (m) by Avolio's (1980) fit, as openBF when a
    vessel gives no ``h0``: ``h = R (0.2802 e^{−505.3 R} + 0.1324 e^{−11.14 R})``."""
    return radius * (0.2802 * math.exp(-505.3 * radius) + 0.1324 * math.exp(-11.14 * radius))


def arterial_case_path(case: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """The YAML file of ``case``: a path to a ``.yaml`` file, or a name such as
    ``boileau2015/uta`` under ``<data dir>/hemodynamics/`` (``data_dir`` or
    ``$SCILAYERS_DATA_DIR``).

    **Raises:** `FileNotFoundError` (one line, naming the file and the known cases)."""
    text = str(case)
    if text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_absolute() and not path.exists() and data_dir is not None:
            path = Path(_data_dir(data_dir)) / "hemodynamics" / text
    else:
        base = Path(_data_dir(data_dir)) / "hemodynamics" / text
        path = base / f"{base.name}.yaml" if base.is_dir() else base.with_suffix(".yaml")
    if not path.is_file():
        raise FileNotFoundError(
            f"arterial case file {path} does not exist; pass a .yaml file or one of "
            f"{', '.join(ARTERIAL_CASES)} with --data-dir pointing at the folder that "
            f"holds hemodynamics/."
        )
    return path


def _fail(path: Path, where: str, msg: str):
    raise ValueError(f"{path}: {where}{msg}")


def _number(d: dict, key: str, path: Path, where: str, *, positive=True, default=None,
            allow_zero=False) -> float:  # fmt: skip
    if key not in d or d[key] is None:
        if default is not None:
            return float(default)
        _fail(path, where, f"missing field {key!r}.")
    v = _as_float(d[key])
    if v is None:
        _fail(path, where, f"field {key!r} must be a number, got {d[key]!r}.")
    if not math.isfinite(v):
        _fail(path, where, f"field {key!r} must be finite, got {v}.")
    if positive and not (v > 0 or (allow_zero and v == 0)):
        _fail(path, where, f"field {key!r} must be {'>= 0' if allow_zero else '> 0'}, got {v}.")
    return v


def _as_float(v) -> float | None:
    """A YAML scalar as a float. PyYAML (YAML 1.1) reads ``400.0e3`` (no exponent sign) as a
    string, where openBF's parser reads a number: accept such numeric strings."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _integer(d: dict, key: str, path: Path, where: str, *, minimum=None, default=None) -> int:
    if key not in d or d[key] is None:
        if default is not None:
            return int(default)
        _fail(path, where, f"missing field {key!r}.")
    f = _as_float(d[key])
    if f is None or not f.is_integer():
        _fail(path, where, f"field {key!r} must be an integer, got {d[key]!r}.")
    v = int(f)
    if minimum is not None and v < minimum:
        _fail(path, where, f"field {key!r} must be >= {minimum}, got {v}.")
    return v


def _read_inflow(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"inflow file {path} does not exist (named by 'inlet_file' or, by default, "
            f"<project_name>_inlet.dat next to the case file); restore it or fix 'inlet_file'."
        )
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the inflow file ({e}).") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            vals = []
        if len(vals) != 2 or not all(math.isfinite(x) for x in vals):
            raise ValueError(
                f"{path}: line {n}: expected two numbers (time in s, flow in m^3/s), "
                f"got {line.strip()[:60]!r}."
            )
        rows.append(vals)
    if len(rows) < 2:
        raise ValueError(f"{path}: the inflow waveform needs at least 2 rows, got {len(rows)}.")
    t = np.array([r[0] for r in rows])
    q = np.array([r[1] for r in rows])
    if abs(t[0]) > 1e-12:
        raise ValueError(f"{path}: the inflow time must start at 0 s, got {t[0]}.")
    # rows out of time order are put in order (the circle-of-Willis waveform has one
    # swapped pair, a digitisation slip); a repeated time is an error
    order = np.argsort(t, kind="stable")
    t, q = t[order], q[order]
    if np.any(np.diff(t) <= 0):
        dup = t[int(np.flatnonzero(np.diff(t) <= 0)[0])]
        raise ValueError(f"{path}: time (column 1) repeats {dup}; each time must appear once.")
    return tuple(float(x) for x in t), tuple(float(x) for x in q)


def load_arterial_case(
    case: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> ArterialCase:
    """Read an openBF case (YAML network + ``.dat`` inflow) into an `ArterialCase`.

    Fields (SI units), per the openBF format: ``blood: {rho, mu}``; ``solver: {Ccfl,
    cycles, jump, convergence_tolerance}`` (optional); ``inlet_file`` (default
    ``<project_name>_inlet.dat``); ``network``: a list of vessels with ``label``, ``sn``,
    ``tn``, ``L``, ``E``, ``R0`` (or ``Rp`` and ``Rd`` for a tapered vessel), optional
    ``h0`` (default: Avolio's fit of the mean radius, as openBF), ``gamma_profile``
    (default 9), ``Pext`` (default 0), ``M`` (cells, default ``max(5, ⌈L/1 mm⌉)``) and,
    on terminal vessels, the Windkessel ``R1``, ``R2``, ``Cc``. As in openBF, a Windkessel
    with ``inlet_impedance_matching: true``, or one that gives only ``R1`` and ``Cc``
    (openBF's two-element form), gets ``R1 = ρ c0 / A0`` (the vessel's characteristic
    impedance) and ``R2 = R_total − R1``, with ``R_total = R1 + R2`` (or the given ``R1``).
    Numbers written without an exponent sign (``400.0e3``, a string to YAML 1.1) are read
    as numbers, as openBF does. The inflow file has two columns, time (s, from 0) and flow
    (m³/s); rows out of time order are sorted, a repeated time is an error.

    **Raises:** `FileNotFoundError` for a missing case or inflow file, `ValueError` for a
    malformed one or a missing/invalid field; each a one-line message naming the file and
    the field.
    """
    import yaml

    path = arterial_case_path(case, data_dir)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"{path}: not valid YAML ({problem}{at}).") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the case file ({e}).") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a YAML mapping with 'blood' and 'network' at the top.")
    name = doc.get("project_name") or path.stem
    if not isinstance(name, str):
        _fail(path, "", f"field 'project_name' must be a string, got {name!r}.")
    blood = doc.get("blood")
    if not isinstance(blood, dict):
        _fail(path, "", "missing field 'blood' (a mapping with rho and mu).")
    rho = _number(blood, "rho", path, "blood: ")
    mu = _number(blood, "mu", path, "blood: ")
    solver = doc.get("solver") or {}
    if not isinstance(solver, dict):
        _fail(path, "", f"field 'solver' must be a mapping, got {solver!r}.")
    cfl = _number(solver, "Ccfl", path, "solver: ", default=0.9)
    if cfl > 1.0:
        _fail(path, "solver: ", f"field 'Ccfl' must be in (0, 1], got {cfl}.")
    cycles = _integer(solver, "cycles", path, "solver: ", minimum=1, default=10)
    jump = _integer(solver, "jump", path, "solver: ", minimum=2, default=100)
    tol = _number(solver, "convergence_tolerance", path, "solver: ", default=1.0)
    inlet_file = doc.get("inlet_file", f"{name}_inlet.dat")
    if not isinstance(inlet_file, str) or not inlet_file:
        _fail(path, "", f"field 'inlet_file' must be a file name, got {inlet_file!r}.")

    network = doc.get("network")
    if not isinstance(network, list) or not network:
        _fail(path, "", "missing field 'network' (a non-empty list of vessels).")
    vessels: list[VesselSpec] = []
    wk: list[tuple[int, dict, str]] = []
    labels: set[str] = set()
    for i, d in enumerate(network):
        where = f"network[{i}]: "
        if not isinstance(d, dict):
            _fail(path, where, f"expected a mapping of vessel fields, got {d!r}.")
        label = d.get("label")
        if not isinstance(label, str) or not label:
            _fail(path, where, "missing field 'label' (the vessel's name).")
        where = f"network[{i}] ({label}): "
        if label in labels:
            _fail(path, where, f"field 'label' repeats {label!r}; labels must be unique.")
        labels.add(label)
        unknown = sorted(set(d) - _KNOWN_VESSEL_FIELDS)
        if unknown:
            _fail(path, where, f"unknown field {unknown[0]!r}.")
        sn = _integer(d, "sn", path, where)
        tn = _integer(d, "tn", path, where)
        L = _number(d, "L", path, where)
        E = _number(d, "E", path, where)
        if "R0" in d:
            rp = rd = _number(d, "R0", path, where)
        elif "Rp" in d or "Rd" in d:
            rp = _number(d, "Rp", path, where)
            rd = _number(d, "Rd", path, where)
        else:
            _fail(path, where, "missing field 'R0' (or 'Rp' and 'Rd').")
        h0 = (_number(d, "h0", path, where) if "h0" in d
              else avolio_thickness(0.5 * (rp + rd)))  # fmt: skip
        gkey = "gamma_profile" if "gamma_profile" in d else "gamma profile"
        gamma = _number(d, gkey, path, where, default=9.0)
        pext = _number(d, "Pext", path, where, positive=False, default=0.0)
        m = _integer(d, "M", path, where, minimum=2, default=max(5, math.ceil(L * 1e3)))
        vessels.append(VesselSpec(label, sn, tn, L, E, rp, rd, h0, gamma, pext, m))
        if any(k in d for k in ("outlet", "R1", "R2", "Cc")):
            wk.append((i, d, where))

    outlets = []
    for i, d, where in wk:
        kind = d.get("outlet", "wk3")
        if kind not in ("wk3", "wk2"):
            _fail(
                path,
                where,
                f"field 'outlet' must be 'wk3' (three-element Windkessel), got {kind!r}.",
            )
        R1 = _number(d, "R1", path, where)
        C = _number(d, "Cc", path, where)
        match = bool(d.get("inlet_impedance_matching", False))
        if "R2" in d and kind == "wk3":
            R2 = _number(d, "R2", path, where)
            if not match:
                outlets.append(OutletSpec(i, R1, C, R2))
                continue
            total = R1 + R2
        else:
            total = R1  # openBF's two-element form: R1 is the total resistance
        v = vessels[i]
        A0 = math.pi * v.r_dist**2
        beta = float(wall_stiffness(v.E, v.h0))
        Z0 = rho * math.sqrt(beta / (2.0 * rho * math.sqrt(A0))) / A0
        if total <= Z0:
            _fail(
                path,
                where,
                f"field 'R1' ({total:.4g}) must exceed the characteristic impedance "
                f"rho c0 / A0 = {Z0:.4g} Pa s m^-3 when R2 is derived from it.",
            )
        outlets.append(OutletSpec(i, Z0, C, total - Z0))

    inflow_path = path.parent / inlet_file
    t, q = _read_inflow(inflow_path)
    try:
        return ArterialCase(
            name=str(name), vessels=tuple(vessels), outlets=tuple(outlets), rho=rho, mu=mu,
            inflow_time=t, inflow_flow=q, cfl=cfl, max_cycles=cycles, samples=jump,
            tolerance_mmhg=tol, source=str(path),
        )  # fmt: skip
    except ValueError as e:
        raise ValueError(" ".join(str(e).split())) from e


def _convergence(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Change of the pressure waveform (``(samples, vessels, points)``) between two cycles:
    ``max |Δp|`` relative to the largest pulse pressure, and ``max |Δp|`` in mmHg."""
    diff = float(np.max(np.abs(cur - prev)))
    pulse = float(np.max(cur.max(axis=0) - cur.min(axis=0)))
    return diff / max(pulse, 1e-300), diff / MMHG


def run_arterial_case(
    case: ArterialCase | str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    max_cycles: int | None = None,
    rtol: float = 0.01,
    min_cycles: int = 2,
    points: int = 5,
    samples: int | None = None,
    cfl: float | None = None,
    initial: str = "mean",
    solver_options: dict | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> xr.Dataset:
    """Run a case cycle by cycle until its pressure waveform is periodic; the last cycle as
    an `xarray.Dataset`.

    Each cycle of period ``T`` is ``samples · every`` fixed steps of `ArterialMUSCL`, with
    ``dt = T / (samples · every)`` the largest such step within the CFL target `cfl`
    (`arterial_stable_dt`). After each cycle the pressure at the probe points (``points`` equally
    spaced per vessel, ``samples`` times per cycle) is compared with the previous cycle;
    the run stops when ``max |Δp| ≤ rtol · (largest pulse pressure)`` (after `min_cycles`)
    or after `max_cycles` (default: the case file's ``cycles``, at least 10).

    **Arguments:** `case` (an `ArterialCase`, a name such as ``"boileau2015/uta"`` or a
    ``.yaml`` path; names resolve under `data_dir`); `rtol` (default 1 %); `samples`
    (per cycle, default the case's ``jump``); `cfl` (default the case's ``Ccfl``);
    `initial` (``"mean"`` or ``"rest"``, see `ArterialNetwork.initial_state`);
    `solver_options` (keyword arguments of `ArterialMUSCL`, e.g. ``limiter``);
    `callback(cycle, convergence)` after each cycle (progress).

    **Returns:** a dataset with ``pressure`` (Pa), ``flow`` (m³/s), ``area`` (m²), dims
    ``(vessel, position, time)``; coordinates ``vessel`` (labels), ``position`` (0…1 along
    the vessel), ``x`` (m) and ``time`` (s, from the start of the last cycle); attributes
    ``cycles`` (run), ``converged``, ``convergence`` (relative change of the pressure
    waveform between the last two cycles), ``convergence_mmhg``, ``dt``, ``cfl``,
    ``max_courant``, ``case`` and more.

    **Raises:** `ValueError` if the solution stops being finite or breaks the CFL
    condition (with the fix).
    """
    from importlib.metadata import PackageNotFoundError, version

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from ..solvers._arterial import ArterialMUSCL, arterial_stable_dt

    try:
        __version__ = version("scilayers")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        __version__ = "0.0.0"

    if not isinstance(case, ArterialCase):
        case = load_arterial_case(case, data_dir)
    if not (0 < rtol < 1):
        raise ValueError(f"rtol must be in (0, 1), got {rtol}.")
    max_cycles = max(case.max_cycles, 10) if max_cycles is None else int(max_cycles)
    if max_cycles < 1:
        raise ValueError(f"max_cycles must be >= 1, got {max_cycles}.")
    samples = case.samples if samples is None else int(samples)
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}.")
    cfl = case.cfl if cfl is None else float(cfl)
    model = ArterialNetwork(case)
    T = case.period
    every = max(1, math.ceil(T / (arterial_stable_dt(model, cfl) * samples)))
    dt = T / (samples * every)
    solver = ArterialMUSCL(model, dt, **(solver_options or {}))

    @eqx.filter_jit
    def cycle(s, u, t0):
        return s.run(u, t0, samples, every, points=points)

    u = model.initial_state(initial)
    prev = None
    conv, conv_mmhg, max_courant = float("nan"), float("nan"), 0.0
    start = time.perf_counter()
    compile_s = None
    k = 0
    for k in range(1, max_cycles + 1):
        t_cycle = time.perf_counter()
        # the start time as an array: a Python float would be static and recompile
        u, probes, cmax = cycle(solver, u, jnp.asarray((k - 1) * T, dtype=u.dtype))
        probes = np.asarray(jax.device_get(probes))
        cmax = float(cmax)
        if compile_s is None:
            compile_s = time.perf_counter() - t_cycle
        if not np.all(np.isfinite(probes)) or not np.all(np.isfinite(np.asarray(u))):
            raise ValueError(
                f"{case.name}: the solution stopped being finite in cycle {k} (dt = {dt:.3g} "
                f"s); reduce --cfl or check the wall and Windkessel parameters."
            )
        max_courant = max(max_courant, cmax)
        if cmax > 1.0:
            raise ValueError(
                f"{case.name}: the Courant number reached {cmax:.3f} > 1 in cycle {k} "
                f"(dt = {dt:.3g} s); rerun with a smaller --cfl (e.g. {cfl * 0.9 / cmax:.2f})."
            )
        if prev is not None:
            conv, conv_mmhg = _convergence(prev[:, 0], probes[:, 0])
        if callback is not None:
            callback(k, conv)
        prev = probes
        if k >= min_cycles and conv <= rtol:
            break
    wall = time.perf_counter() - start
    t = np.arange(samples) * (every * dt)
    position = np.linspace(0.0, 1.0, points)
    lengths = np.array([v.length for v in case.vessels])
    dims = ("vessel", "position", "time")
    data = np.transpose(prev, (1, 2, 3, 0))  # (3, vessel, position, time)
    ds = xr.Dataset(
        {
            "pressure": (dims, data[0], {"units": "Pa", "long_name": "blood pressure"}),
            "flow": (dims, data[1], {"units": "m3 s-1", "long_name": "volumetric flow rate"}),
            "area": (dims, data[2], {"units": "m2", "long_name": "lumen cross-section area"}),
        },
        coords={
            "vessel": ("vessel", np.array(case.labels, dtype=str)),
            "position": (
                "position",
                position,
                {"units": "1", "long_name": "x / L, inlet to outlet"},
            ),
            "x": (("vessel", "position"), lengths[:, None] * position[None, :], {"units": "m"}),
            "time": (
                "time",
                t,
                {"units": "s", "long_name": "time since the start of the last cycle"},
            ),
        },  # fmt: skip
        attrs={
            "case": case.name,
            "case_file": case.source,
            "cycles": k,
            "converged": int(bool(conv <= rtol)),
            "convergence": conv,
            "convergence_mmhg": conv_mmhg,
            "convergence_rtol": rtol,
            "convergence_measure": "max |p_k - p_(k-1)| over probes and times / max pulse pressure",
            "period": T,
            "dt": dt,
            "steps_per_cycle": samples * every,
            "cfl": cfl,
            "max_courant": max_courant,
            "n_cells": model.n_cells,
            "initial_state": initial,
            "limiter": solver.limiter,
            "numerical_flux": solver.numerical_flux,
            "wall_seconds": wall,
            "compile_and_first_cycle_seconds": compile_s or 0.0,
            "tube_law": "p = p_ext + beta (sqrt(A) - sqrt(A0)) / A0, beta = (4/3) sqrt(pi) E h0",
            "scilayers_version": __version__,
        },
    )
    return ds


def write_arterial_case(
    case: ArterialCase | str | os.PathLike, out: str | os.PathLike, **kwargs
) -> xr.Dataset:
    """`run_arterial_case` (same keyword arguments), then write the dataset to the netCDF
    file ``out`` atomically (`save_dataset`); returns the dataset."""
    ds = run_arterial_case(case, **kwargs)
    save_dataset(ds, out)
    return ds
