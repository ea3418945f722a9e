"""Kuramoto–Sivashinsky truth generation at scale: batched, seeded, with splits and an OOD group."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, Float, PRNGKeyArray

from ..distributed import local_mesh, shard_batch
from ..models import KuramotoSivashinsky
from ..solvers import ETDRK4, Repeated, rollout
from ._fingerprint import code_fingerprint
from ._splits import SPLIT_RULE, assign_splits

_EQUATION = "u_t + c u u_x + a u_xx + b u_xxxx + d u_xxx = e (u_x^2)_x, periodic on [0, length)"


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


@dataclass(frozen=True)
class KSDataConfig:
    r"""What `generate_ks` simulates: θ_s, grid, time stepping, sizes, seed, splits and OOD.

    The truth is the generalised Kuramoto–Sivashinsky equation
    ``u_t + c u u_x + a u_xx + b u_xxxx + d u_xxx = 0`` on ``[0, length)`` (periodic), integrated
    with ETDRK4 at the inner step ``dt = dt_save / substeps`` and saved every ``dt_save``.

    **Arguments (all with defaults):**

    - `trajectories`: in-domain trajectories (1000).
    - `steps`: saved steps after the burn-in (1000); each trajectory holds ``steps + 1``
      states, at times ``0, dt_save, …, steps·dt_save`` counted from the end of the burn-in.
    - `n`, `length`: grid points (64) and domain length (22, chaotic).
    - `a`, `b`, `c`, `d`: θ_s of the truth (1, 1, 1, 0); any values, e.g. ``d != 0`` on a
      finer grid for a study whose physics prior lacks dispersion.
    - `dt_save`: time between saved states (0.25); `substeps`: ETDRK4 steps per save (5, so
      the inner step is 0.05).
    - `burn_in`: time integrated and discarded before saving (100), a multiple of ``dt``;
      it takes the random smooth initial state onto the attractor.
    - `batch_size`: trajectories per compiled batch (250; rounded up to a multiple of the
      local device count, over which each batch is split); results do not depend on it.
    - `seed`: trajectory ``i`` starts from ``model.initial_condition(fold_in(fold_in(key(seed),
      0), i))``; OOD trajectory ``j`` from ``fold_in(fold_in(key(seed), 1), j)``.
    - `dealias`: ETDRK4 dealiasing fraction (``None``: off).
    - `train_fraction`, `val_fraction`: split sizes (0.8, 0.1; the rest is test), see
      `assign_splits`.
    - `ood_fraction`: OOD trajectories as a fraction of `trajectories` (0.1; 0 disables).
    - `ood_length_factor`: the OOD domain is ``length · factor`` long (2, so L = 44), on
      ``n · factor`` points (rounded to even) so that ``dx`` is unchanged. Not 1.5: at
      L = 33 the chaos is transient and most trajectories settle on steady cellular states
      within a few hundred time units (90 of 100 by t = 350 with the defaults), whereas at
      L = 38.5 and 44 none of 50 did; see `steady_trajectories`.
    - `ood_a`, `ood_b`, `ood_c`, `ood_d`: θ_s for the OOD group (``None``: as in-domain).
    """

    trajectories: int = 1000
    steps: int = 1000
    n: int = 64
    length: float = 22.0
    a: float = 1.0
    b: float = 1.0
    c: float = 1.0
    d: float = 0.0
    e: float | None = None
    dt_save: float = 0.25
    substeps: int = 5
    burn_in: float = 100.0
    batch_size: int = 250
    seed: int = 0
    dealias: float | None = None
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    ood_fraction: float = 0.1
    ood_length_factor: float = 2.0
    ood_a: float | None = None
    ood_b: float | None = None
    ood_c: float | None = None
    ood_d: float | None = None

    def __post_init__(self):
        for name in ("trajectories", "steps", "n", "substeps", "batch_size", "seed"):
            if not _is_int(getattr(self, name)):
                raise ValueError(
                    f"KSDataConfig.{name} must be an integer, got {getattr(self, name)!r}."
                )
        if self.trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {self.trajectories}.")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if self.n < 4 or self.n % 2:
            raise ValueError(f"n must be an even integer >= 4, got {self.n}.")
        if self.substeps < 1 or self.batch_size < 1:
            raise ValueError(
                f"substeps and batch_size must be >= 1, got {self.substeps}, {self.batch_size}."
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        for name in ("length", "dt_save", "ood_length_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive and finite, got {v}.")
        if not (math.isfinite(self.burn_in) and self.burn_in >= 0):
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}.")
        ratio = self.burn_in / self.dt
        if abs(ratio - round(ratio)) > 1e-6 * max(1.0, ratio):
            raise ValueError(
                f"burn_in={self.burn_in} is not a multiple of the inner step dt={self.dt:g} "
                f"(dt_save / substeps); round it to {round(ratio) * self.dt:g}."
            )
        for name in ("a", "b"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"{name} must be > 0 (KS needs it positive), got {getattr(self, name)}."
                )
        for name in ("ood_a", "ood_b"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 or None, got {v}.")
        if not 0 <= self.ood_fraction <= 10:
            raise ValueError(f"ood_fraction must be in [0, 10], got {self.ood_fraction}.")
        if self.dealias is not None and not 0 < self.dealias <= 1:
            raise ValueError(f"dealias must be in (0, 1] or None, got {self.dealias}.")
        assign_splits(0, 0, self.train_fraction, self.val_fraction)  # checks the fractions

    # -- derived quantities ------------------------------------------------------------------
    @property
    def dt(self) -> float:
        """The inner ETDRK4 step ``dt_save / substeps``."""
        return self.dt_save / self.substeps

    @property
    def burn_in_steps(self) -> int:
        """Inner steps of the burn-in."""
        return int(round(self.burn_in / self.dt))

    @property
    def ood_trajectories(self) -> int:
        return int(round(self.ood_fraction * self.trajectories))

    @property
    def ood_length(self) -> float:
        return self.length * self.ood_length_factor

    @property
    def ood_n(self) -> int:
        return max(4, 2 * int(round(self.n * self.ood_length_factor / 2)))

    @property
    def theta(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c, "d": self.d, "e": self.e}

    @property
    def ood_theta(self) -> dict[str, float]:
        out = {
            k: (v if (v := getattr(self, f"ood_{k}")) is not None else self.theta[k])
            for k in "abcd"
        }
        return dict(out, e=self.e)

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KSDataConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"unknown KSDataConfig field(s) {sorted(unknown)}; known: {sorted(names)}."
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KSDataConfig:
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """A hash of everything the generated values depend on: the config (except
        ``batch_size``, which does not change them), the float precision and the
        generating code (`code_fingerprint`)."""
        fields = {k: v for k, v in self.to_dict().items() if k != "batch_size"}
        payload = json.dumps(fields, sort_keys=True) + f"|x64={bool(jax.config.jax_enable_x64)}"
        payload += "|code=" + code_fingerprint()  # the solver's round-off is part of it
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ks_model(length: float, n: int, theta: dict[str, float]) -> KuramotoSivashinsky:
    """The KS model with θ_s ``theta`` (keys ``a, b, c, d``) on ``n`` points of ``[0, length)``."""
    return KuramotoSivashinsky(length=length, n=n, **theta)


@eqx.filter_jit
def _simulate(
    inner: ETDRK4, keys: PRNGKeyArray, substeps: int, burn_steps: int, steps: int
) -> Float[Array, "batch time n"]:
    step = Repeated(inner, substeps)

    def one(key):
        u = inner.model.initial_condition(key)
        if burn_steps:
            u = Repeated(inner, burn_steps)(u)
        return rollout(step, u, steps, check_finite=False)

    return jax.vmap(one)(keys)


def _keys(seed: int, group: int, start: int, stop: int) -> PRNGKeyArray:
    base = jax.random.fold_in(jax.random.key(seed), group)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(start, stop, dtype=jnp.uint32)
    )


STEADY_RULE = (
    "a trajectory is steady (an equilibrium or travelling wave) if, over the second half of "
    "its saved states, the relative standard deviation in time of its energy spectrum "
    "|u_hat_k|^2 (summed over k) is below 1e-2; assessed only if that half spans >= 20 time "
    "units, else the count is -1"
)
STEADY_MIN_TIME = 20.0


def steady_trajectories(u: np.ndarray, dt_save: float, tol: float = 1e-2) -> np.ndarray | None:
    """Which trajectories of ``u (trajectory, time, x)`` are steady up to translation.

    A chaotic KS trajectory keeps changing its energy spectrum; an equilibrium or travelling
    wave does not. Rule: over the second half of the saved states, the relative standard
    deviation in time of ``|û_k|²`` (summed over k) is below ``tol``. Returns ``None`` when
    that half spans less than 20 time units (too short to tell).
    """
    half = u[:, u.shape[1] // 2 :]
    if (half.shape[1] - 1) * dt_save < STEADY_MIN_TIME:
        return None
    spec = np.abs(np.fft.rfft(half.astype(np.float64), axis=-1)) ** 2
    spread = spec.std(axis=1).sum(-1)
    level = np.maximum(spec.mean(axis=1).sum(-1), np.finfo(np.float64).tiny)
    return spread / level < tol


def _run_group(
    config: KSDataConfig,
    model: KuramotoSivashinsky,
    count: int,
    group: int,
    advance,
) -> tuple[np.ndarray, int]:
    inner = ETDRK4(model, dt=config.dt, dealias=config.dealias)
    out = np.empty((count, config.steps + 1, model.n), dtype=np.float32)
    steady = 0
    # a batch is split over this process's devices (each process generates the whole truth
    # by itself, so none waits on another), so it is rounded up to a multiple of them
    mesh = local_mesh()
    bs = -(-min(config.batch_size, count) // mesh.size) * mesh.size
    for start in range(0, count, bs):
        stop = min(start + bs, count)
        keys = _keys(config.seed, group, start, stop)
        if stop - start < bs:  # pad the last batch so that one compiled shape serves all
            keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], bs - (stop - start), axis=0)])
        keys = shard_batch(keys, mesh)
        traj = np.asarray(
            _simulate(inner, keys, config.substeps, config.burn_in_steps, config.steps)
        )[: stop - start]
        bad = ~np.isfinite(traj).all(axis=2)
        if bad.any():
            i, t = np.argwhere(bad)[0]
            where = (
                "during the burn-in" if t == 0 and config.burn_in_steps else f"at saved step {t}"
            )
            raise ValueError(
                f"KS generation blew up (NaN/Inf) in trajectory {start + i} {where}; "
                f"reduce the inner step dt={config.dt:g} (raise substeps) or refine the grid "
                f"(raise n) for θ_s={_model_values(model)}."
            )
        out[start:stop] = traj
        flags = steady_trajectories(traj, config.dt_save)
        steady = -1 if flags is None else steady + int(flags.sum())
        advance(stop - start)
    return out, steady


def _model_values(model: KuramotoSivashinsky) -> dict[str, float]:
    return {k: float(p.value) for k in "abcde" if (p := getattr(model, k)) is not None}


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trajectories"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled or not Console(stderr=True).is_terminal,
        transient=False,
    )


def generate_ks(config: KSDataConfig | None = None, progress: bool = True) -> xr.Dataset:
    """Simulate Kuramoto–Sivashinsky truth for a study; returns an `xarray.Dataset`.

    Each batch of initial conditions is advanced through the burn-in and then rolled out with
    ``sl.rollout`` over ``sl.solvers.Repeated(ETDRK4(model, dt), substeps)``, vmapped over the
    batch and compiled once (the last batch is padded). Keys are derived per trajectory
    index, so the values do not depend on ``batch_size``.

    **Returns** a dataset with

    - ``u (trajectory, time, x)``, float32: the in-domain trajectories;
    - ``split (trajectory)``: ``"train"``/``"val"``/``"test"`` (rule in ``attrs["split_rule"]``);
    - ``u_ood (trajectory_ood, time, x_ood)``, float32: the out-of-domain group on the
      longer domain (absent when ``ood_fraction == 0``);
    - attributes: θ_s (``a, b, c, d``), ``length, n, dt_save, dt, substeps, steps, burn_in,
      seed``, the OOD θ_s/grid (``ood_*``), the number of trajectories that are steady
      rather than chaotic (``steady_trajectories``, ``ood_steady_trajectories``; rule in
      ``steady_rule``), ``scilayers_version``, ``jax_version``, ``compute_dtype`` and the
      full ``config`` as JSON.

    ``progress`` shows a Rich progress bar on stderr.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("scilayers")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        __version__ = "0.0.0"

    config = KSDataConfig() if config is None else config
    model = ks_model(config.length, config.n, config.theta)
    n_ood = config.ood_trajectories
    with _progress(progress) as bar:
        task = bar.add_task("KS in-domain", total=config.trajectories)
        u, steady = _run_group(
            config, model, config.trajectories, 0, lambda k: bar.advance(task, k)
        )
        u_ood, steady_ood = None, 0
        if n_ood:
            ood_model = ks_model(config.ood_length, config.ood_n, config.ood_theta)
            task = bar.add_task("KS out-of-domain", total=n_ood)
            u_ood, steady_ood = _run_group(
                config, ood_model, n_ood, 1, lambda k: bar.advance(task, k)
            )

    time = config.dt_save * np.arange(config.steps + 1)
    coords = {
        "trajectory": np.arange(config.trajectories),
        "time": (
            "time",
            time,
            {"units": "KS time units", "note": "time since the end of the burn-in"},
        ),
        "x": ("x", np.asarray(model.grid(), dtype=np.float64), {"long_name": "position"}),
        "split": (
            "trajectory",
            assign_splits(
                config.trajectories, config.seed, config.train_fraction, config.val_fraction
            ),
        ),
    }
    data_vars = {
        "u": (("trajectory", "time", "x"), u, {"long_name": "KS solution u(x, t)"}),
    }
    attrs: dict[str, Any] = {
        "title": "Kuramoto-Sivashinsky truth generated by scilayers",
        "equation": _EQUATION,
        **{k: float(v) for k, v in config.theta.items() if v is not None},
        "length": float(config.length),
        "n": int(config.n),
        "dx": float(config.length / config.n),
        "dt_save": float(config.dt_save),
        "dt": float(config.dt),
        "substeps": int(config.substeps),
        "steps": int(config.steps),
        "burn_in": float(config.burn_in),
        "seed": int(config.seed),
        "solver": "ETDRK4" + ("" if config.dealias is None else f", dealias={config.dealias}"),
        "dealias": "none" if config.dealias is None else float(config.dealias),
        "train_fraction": float(config.train_fraction),
        "val_fraction": float(config.val_fraction),
        "split_rule": SPLIT_RULE,
        "steady_trajectories": int(steady),
        "ood_steady_trajectories": int(steady_ood),
        "steady_rule": STEADY_RULE,
        "ood_shift": f"domain length x{config.ood_length_factor:g} at equal dx",
        "ood_trajectories": int(n_ood),
        **{f"ood_{k}": float(v) for k, v in config.ood_theta.items() if v is not None},
        "ood_length": float(config.ood_length),
        "ood_n": int(config.ood_n),
        "scilayers_version": __version__,
        "jax_version": jax.__version__,
        "compute_dtype": str(jnp.result_type(float)),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config": config.to_json(),
    }
    if u_ood is not None:
        ood_grid = np.arange(config.ood_n) * (config.ood_length / config.ood_n)
        coords["trajectory_ood"] = np.arange(n_ood)
        coords["x_ood"] = ("x_ood", ood_grid, {"long_name": "position (OOD domain)"})
        data_vars["u_ood"] = (
            ("trajectory_ood", "time", "x_ood"),
            u_ood,
            {"long_name": "KS solution on the out-of-domain (longer) domain"},
        )
    return xr.Dataset(data_vars, coords, attrs)


def ks_truth(
    config: KSDataConfig | None = None, cache_dir=None, progress: bool = True
) -> xr.Dataset:
    """`generate_ks`, cached under ``cache_dir`` (if given) by the config's fingerprint."""
    from pathlib import Path

    from ._io import cached

    config = KSDataConfig() if config is None else config
    if cache_dir is None:
        return generate_ks(config, progress)
    fp = config.fingerprint()
    return cached(
        Path(cache_dir) / f"ks-{fp}.nc", lambda: generate_ks(config, progress), fingerprint=fp
    )
