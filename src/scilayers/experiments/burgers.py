"""A minimal study, and the template for adding one: viscous Burgers with a missing term.

Truth: Korteweg–de Vries–Burgers ``u_t + u u_x = ν u_xx - δ u_xxx`` (fine grid, small
step). Coarse physics: plain Burgers on a coarser grid, viscosity ``ν`` learnable from a
mis-specified prior; the dispersion ``δ u_xxx`` is missing. Out of domain: initial fields
twice as strong (the nonlinearity, which the physics represents, matters more). Everything
else — methods, ablations, seeds, caching, results, report — comes from the engine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..baselines import PINNConfig
from ..data import cached, code_fingerprint, save_dataset
from ..models import Burgers
from ..nn import PeriodicCNN1d
from ..params import LogNormal, Param, Positive
from ..solvers import ETDRK4, Repeated, rollout
from ..training import TrainConfig
from ._study import AbstractStudy, EvalSet, Problem, StudyConfig


@dataclass(frozen=True)
class BurgersConfig(StudyConfig):
    """Truth ν and δ, the prior ν, grids, sizes, the OOD amplitude factor, networks."""

    nu_true: float = 0.1
    delta_true: float = 0.05
    nu_prior: float = 0.2
    n_fine: int = 128
    n: int = 64
    fine_substeps: int = 4
    trajectories: int = 48
    amplitude: float = 0.5
    ood_amplitude: float = 1.0
    data_seed: int = 0
    width: int = 8
    depth: int = 2


PRESETS = {
    "quick": BurgersConfig(
        dt=0.1, context_steps=5, corr_steps=40, main_horizon=20, horizons=(5, 10, 20, 40),
        field_steps=40, data_sizes=(), lambda_sweep=(0.0,), closure_variants=("unrestricted",),
        pinn=PINNConfig(adam_steps=400, lbfgs_steps=1000), pinn_trajectories=2, pinn_seeds=1,
        train=TrainConfig(steps=300, batch_size=8, horizon=5, lr_theta=5e-2, lr_net=3e-3,
                          val_every=50),
    ),
}  # fmt: skip
PRESETS["full"] = PRESETS["quick"].replace(
    preset="full", extend_rounds=3, trajectories=400, data_sizes=(4, 16, 64),
    lambda_sweep=(0.0, 0.1, 1.0),
    train=PRESETS["quick"].train.replace(steps=1000, batch_size=32, horizon=10),
)


class BurgersStudy(AbstractStudy):
    name = "burgers"
    title = "Burgers"
    description = "Burgers (example study): learn ν with a closure for missing dispersion"
    presets = PRESETS
    cfg: BurgersConfig

    def _simulate(self, amplitude: float, group: int, count: int) -> np.ndarray:
        c = self.cfg
        truth = Burgers(n=c.n_fine, nu=c.nu_true, delta=c.delta_true)
        step = Repeated(ETDRK4(truth, c.dt / c.fine_substeps), c.fine_substeps)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(c.data_seed), group), count)
        u0 = jax.vmap(lambda k: truth.initial_condition(k, modes=4, amplitude=amplitude))(keys)
        steps = c.context_steps + c.corr_steps - 1
        traj = jax.jit(jax.vmap(lambda u: rollout(step, u, steps)))(u0)
        return np.asarray(traj)[:, :, :: c.n_fine // c.n]

    def _dataset(self) -> xr.Dataset:
        c = self.cfg
        u = self._simulate(c.amplitude, 0, c.trajectories)
        ood = self._simulate(c.ood_amplitude, 1, max(4, c.trajectories // 8))
        return xr.Dataset({"u": (("trajectory", "time", "x"), u),
                           "u_ood": (("trajectory_ood", "time", "x"), ood)})  # fmt: skip

    def problem(self, cache_dir: Path | None, progress: bool) -> Problem:
        c = self.cfg
        payload = repr(c) + code_fingerprint(__name__)  # the code that makes the truth too
        key = "burgers-" + hashlib.sha256(payload.encode()).hexdigest()[:16]
        ds = self._dataset() if cache_dir is None else cached(
            Path(cache_dir) / f"{key}.nc", self._dataset, fingerprint=repr(c))  # fmt: skip
        u, ood = ds["u"].values, ds["u_ood"].values
        n_tr, n_va = int(0.7 * len(u)), int(0.1 * len(u))
        ctx = {"x": np.asarray(Burgers(n=c.n).grid())}
        sets = {"id": EvalSet("id", u[n_tr + n_va :], c.context_steps - 1, ctx,
                              f"amplitude {c.amplitude:g}"),
                "ood": EvalSet("ood", ood, c.context_steps - 1, ctx,
                               f"amplitude {c.ood_amplitude:g}")}  # fmt: skip
        return Problem(u[:n_tr], u[n_tr : n_tr + n_va], sets)

    def truth_model(self, eval_set: EvalSet | None = None):
        return Burgers(n=self.cfg.n, nu=self.cfg.nu_true, delta=self.cfg.delta_true)

    def physics(self, eval_set: EvalSet | None = None):
        c = self.cfg
        nu = Param(c.nu_prior, Positive(), prior=LogNormal(c.nu_prior, 0.5), name="nu")
        return ETDRK4(Burgers(n=c.n, nu=nu), c.dt)

    def closure(self, key, odd: bool = False):
        c = self.cfg
        return PeriodicCNN1d(width=c.width, depth=c.depth, kernel_size=5,
                             activation=jnp.tanh, use_bias=not odd, key=key)  # fmt: skip

    def emulator(self, key):
        return self.closure(key)

    def targets(self, res: dict) -> list[dict]:
        th = res["methods"]["hybrid_joint"]["theta"].get("nu")
        if not th:
            return []
        worst = max(th["rel_error"]["per_seed"])
        return [{"name": "ν learned within 10 % (orthogonal closure, joint)",
                 "value": f"worst {100 * worst:.1f} %", "target": "<= 10 %",
                 "pass": bool(worst <= 0.1)}]  # fmt: skip

    def write_data(self, out: Path, progress: bool, **overrides) -> str:
        ds = self._dataset()
        save_dataset(ds, out)
        return f"{ds.sizes['trajectory']} trajectories x {ds.sizes['time']} states"
