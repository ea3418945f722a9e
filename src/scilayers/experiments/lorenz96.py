"""Two-scale Lorenz-96: a learned subgrid closure for the slow variables.

Truth: Lorenz (1996)'s two-scale system, K = 8 slow variables ``X_k`` each coupled to
J = 32 fast ones ``Y_{j,k}`` (h = 1, b = c = 10), at forcing F = 20, integrated with Tsit5
at an internal step that resolves the fast scale (its convergence is checked), observed as
a climate model would see it: the slow variables only, every ``dt``.

Coarse model: one-scale Lorenz-96 in the slow variables with learnable effective advection
``α`` and linear damping ``γ`` (textbook prior ``α = γ = 1``, which ignores the fast scale),
the forcing F a known input, plus a neural closure ``U(X)`` for the unresolved fast-scale
tendency ``-(hc/b) Σ_j Y_{j,k}``, trained through the solver on multi-step trajectories
(*a posteriori*). Out of domain: forcings F = 16 and 24, never seen in training.

Baselines beyond the standard methods: the cubic closure fitted to the true subgrid
tendency (Arnold et al. 2013), a linear one, and the hybrid's network trained *a priori*
on instantaneous subgrid tendencies. Besides forecasts, every model runs long free runs
(10⁴ time units per method and set) whose climate — mean, variance, autocorrelation, the
density of X scored by the Hellinger distance — is compared with the truth's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import metrics as M
from ..baselines import a_priori_closure
from ..data import cached, code_fingerprint, save_dataset
from ..hybrid import DataOrthogonal, Hybrid, NeuralStepper
from ..models import Lorenz96, Lorenz96TwoScale
from ..nn import LocalNonlocal1d, PeriodicCNN1d, Polynomial
from ..params import LogNormal, Normal, Param
from ..solvers import Diffrax, Repeated, direct_adjoint, rollout
from ..training import TrainConfig
from ._common import RunCache, save_figure
from ._study import AbstractStudy, EvalSet, Problem, StudyConfig


@dataclass(frozen=True)
class Lorenz96Config(StudyConfig):
    """The truth (sizes, coupling, forcings, internal step), the coarse model's prior,
    networks, and the long free runs.

    - `truth_substeps`: internal Tsit5 steps of the truth per observation ``dt``.
    - `spinup`: time units integrated from random states before anything is recorded.
    - `trajectories`: trajectories at the training forcing (70 % train, 10 % validation,
      20 % in-domain test); `ood_trajectories`: per out-of-domain forcing.
    - `climate_members` × `climate_time`: the long free runs per method and set (their
      product is the total time), after `climate_transient` time units discarded;
      sampled every `climate_every` steps.
    - `vpt_threshold`: the valid prediction time is the lead at which the RMSE first
      exceeds this fraction of the truth's standard deviation.
    - `twin_time`: length of the twin runs that measure the slow-variable Lyapunov
      exponent; `benettin_steps`: steps of the full system's (Benettin) exponent.
    - `width`, `depth`, `kernel_size`: the closure's local network (pointwise, `width`
      channels, `depth` hidden layers) and the emulator; `nonlocal_width`: channels of the
      closure's non-local correction (`kernel_size` taps, `depth` hidden layers).
    """

    k: int = 8
    j: int = 32
    h: float = 1.0
    b: float = 10.0
    c: float = 10.0
    forcing: float = 20.0
    ood_forcings: tuple[float, ...] = (16.0, 24.0)
    truth_substeps: int = 20
    spinup: float = 10.0
    trajectories: int = 160
    ood_trajectories: int = 32
    # UQ scored from every start main_horizon steps apart that fits in corr_steps (4 of 10
    # steps), not only the first: 4x the windows per set for the coverage and spread/skill
    uq_windows: int = 4
    data_seed: int = 0
    advection_prior: float = 1.0
    damping_prior: float = 1.0
    width: int = 32
    nonlocal_width: int = 8
    depth: int = 2
    kernel_size: int = 3
    climate_members: int = 100
    climate_time: float = 100.0
    climate_transient: float = 5.0
    climate_every: int = 5
    climate_bins: int = 60
    acf_lags: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0)
    vpt_threshold: float = 0.5
    twin_time: float = 4.0
    benettin_steps: int = 400


_QUICK_TRAIN = TrainConfig(
    steps=600,
    batch_size=32,
    horizon=8,
    horizon_schedule=(4, 8),
    lr_theta=2e-2,
    lr_net=3e-3,
    val_every=50,
)
# quick: the truth's internal step 0.0025 (20 Tsit5 steps per dt = 0.05; against 200 it
# changes X after one observation step by 8e-6, float32 round-off, as 50 and 100 do), a
# closure of width 16 (same depth and receptive field; the closure and the emulator
# dominate training, free-run and ensemble time), and a 4-member ensemble with 10 noise
# samples each (40 draws, enough for a 95 % rank interval). full keeps 50 / 32 / 5 × 8.
# The closure is local plus a non-local correction of width 8 (`Lorenz96Study.closure`);
# the emulator, cheap per step, gets 4000 steps (with 2000 one seed in three had not
# reached its validation plateau; with 4000 all three do).
PRESETS = {
    "quick": Lorenz96Config(
        dt=0.05,
        truth_substeps=20,
        width=16,
        uq_members=4,
        uq_samples=10,
        identifiable="data-orthogonal",
        context_steps=1,
        corr_steps=40,
        main_horizon=10,
        horizons=(2, 5, 10, 20, 40),
        field_steps=40,
        lambda_sweep=(0.0,),
        data_sizes=(8,),
        data_seeds=1,
        ablation_seeds=1,
        pinn=None,
        emulator_steps=4000,
        climate_every=2,
        benettin_steps=200,
        train=_QUICK_TRAIN,
    ),
}
PRESETS["full"] = PRESETS["quick"].replace(
    preset="full", extend_rounds=3,
    truth_substeps=50,
    width=32,
    uq_members=5,
    uq_samples=8,
    trajectories=640,
    ood_trajectories=64,
    lambda_sweep=(0.0, 1e-3, 1e-2),
    data_sizes=(4, 16, 64, 256),
    data_seeds=None,
    ablation_seeds=None,
    emulator_steps=8000,
    train=_QUICK_TRAIN.replace(steps=3000, horizon_schedule=(4, 8, 16)),
)


class Lorenz96Study(AbstractStudy):
    name = "lorenz96"
    title = "Two-scale Lorenz-96"
    description = "two-scale Lorenz-96: learned subgrid closure, OOD forcing, long-run climate"
    presets = PRESETS
    field_kind = "1d"
    cfg: Lorenz96Config

    def __init__(self, cfg: Lorenz96Config, data_dir: Path | None = None):
        super().__init__(cfg, data_dir)
        self._problem: Problem | None = None
        self._lyap: dict[str, float] = {}

    # -- truth -----------------------------------------------------------------------------
    def _fine(self, forcing: float) -> Lorenz96TwoScale:
        c = self.cfg
        return Lorenz96TwoScale(k=c.k, j=c.j, forcing=forcing, h=c.h, b=c.b, c=c.c)

    def _fine_step(self, forcing: float, substeps: int | None = None) -> Diffrax:
        c = self.cfg
        return Diffrax(
            self._fine(forcing),
            c.dt,
            diffrax.Tsit5(),
            substeps=substeps or c.truth_substeps,
            stability_check=False,
        )

    def _spun_up(self, forcing: float, group: int, count: int, substeps: int | None = None):
        c = self.cfg
        fine = self._fine(forcing)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(c.data_seed), group), count)
        u0 = jax.vmap(fine.initial_condition)(keys)
        spin = Repeated(self._fine_step(forcing, substeps), max(1, round(c.spinup / c.dt)))
        return jax.jit(jax.vmap(spin))(u0)

    def subgrid(self, y: np.ndarray) -> np.ndarray:
        """The true subgrid tendency ``-(hc/b) Σ_j Y_{j,k}`` from fast states ``(..., K·J)``."""
        c = self.cfg
        return -(c.h * c.c / c.b) * y.reshape(*y.shape[:-1], c.k, c.j).sum(-1)

    def _trajectories(self, forcing: float, group: int, count: int):
        c = self.cfg
        step = self._fine_step(forcing)
        u0 = self._spun_up(forcing, group, count)
        n = c.context_steps + c.corr_steps - 1
        traj = np.asarray(jax.jit(jax.vmap(lambda u: rollout(step, u, n)))(u0))
        return traj[..., : c.k], self.subgrid(traj[..., c.k :])

    def _climate(
        self, forcing: float, group: int, members: int, time: float, substeps: int | None = None
    ) -> np.ndarray:
        """Slow variables of long truth runs, every ``climate_every`` steps after the
        transient: ``(members, samples, K)``."""
        c = self.cfg
        u0 = self._spun_up(forcing, group, members, substeps)
        every = Repeated(self._fine_step(forcing, substeps), c.climate_every)
        n = max(2, round(time / (c.dt * c.climate_every)))
        traj = jax.jit(jax.vmap(lambda u: rollout(every, u, n)[1:, : c.k]))(u0)
        return np.asarray(traj)

    def _dataset(self) -> xr.Dataset:
        c = self.cfg
        x, u = self._trajectories(c.forcing, 0, c.trajectories)
        data = {"x": (("trajectory", "time", "k"), x), "u": (("trajectory", "time", "k"), u)}
        forcings = (c.forcing, *c.ood_forcings)
        for i, f in enumerate(forcings):
            if i:
                xo, _ = self._trajectories(f, 10 + i, c.ood_trajectories)
                data[f"x_ood{i}"] = ((f"trajectory_ood{i}", "time", "k"), xo)
            clim = self._climate(f, 100 + i, c.climate_members, c.climate_time)
            data[f"climate{i}"] = ((f"member{i}", "sample", "k"), clim)
        ds = xr.Dataset(data)
        ds.attrs.update(self._convergence_check())
        return ds

    def _convergence_check(self) -> dict:
        """The truth's time step: the same states advanced with half the internal step.
        Differences after one observation step (later, chaos amplifies any round-off) and of
        the climate (mean and standard deviation of X over 8 × 50 time units, the same initial
        states)."""
        c = self.cfg
        u0 = self._spun_up(c.forcing, 7, 8)
        a = jax.vmap(self._fine_step(c.forcing))(u0)
        b = jax.vmap(self._fine_step(c.forcing, 2 * c.truth_substeps))(u0)
        short = float(jnp.abs(a[:, : c.k] - b[:, : c.k]).max())
        ca = self._climate(c.forcing, 7, 8, 50.0)
        cb = self._climate(c.forcing, 7, 8, 50.0, 2 * c.truth_substeps)
        return {
            "dt_internal": c.dt / c.truth_substeps,
            "halved_step_max_abs_diff_x_after_1_step": short,
            "halved_step_mean_diff": float(abs(ca.mean() - cb.mean())),
            "halved_step_std_diff": float(abs(ca.std() - cb.std())),
            "climate_std_x": float(ca.std()),
        }

    def problem(self, cache_dir: Path | None, progress: bool) -> Problem:
        c = self.cfg
        truth_fields = {
            k: getattr(c, k)
            for k in (
                "k",
                "j",
                "h",
                "b",
                "c",
                "forcing",
                "ood_forcings",
                "truth_substeps",
                "spinup",
                "trajectories",
                "ood_trajectories",
                "data_seed",
                "climate_members",
                "climate_time",
                "climate_every",
                "dt",
                "context_steps",
                "corr_steps",
            )
        }
        fp = "v2 " + repr(sorted(truth_fields.items()))  # v2: one-step convergence check
        fp += " " + code_fingerprint(__name__)  # chaotic: the code's round-off matters
        key = "lorenz96-" + hashlib.sha256(fp.encode()).hexdigest()[:16]
        ds = (
            self._dataset()
            if cache_dir is None
            else cached(Path(cache_dir) / f"{key}.nc", self._dataset, fingerprint=fp)
        )
        x, u = ds["x"].values, ds["u"].values
        n_tr, n_va = int(0.7 * len(x)), int(0.1 * len(x))
        forcings = (c.forcing, *c.ood_forcings)
        sets, climate = {}, {}
        for i, f in enumerate(forcings):
            name = "id" if i == 0 else f"ood_f{f:g}"
            data = x[n_tr + n_va :] if i == 0 else ds[f"x_ood{i}"].values
            clim = ds[f"climate{i}"].values
            climate[name] = clim
            ctx = {"forcing": f, "x": np.arange(c.k), "sigma": float(clim.std())}
            label = f"F = {f:g}" + (" (training forcing)" if i == 0 else "")
            sets[name] = EvalSet(name, data, c.context_steps - 1, ctx, label)
        info = {
            "u_train": u[:n_tr],
            "u_val": u[n_tr : n_tr + n_va],
            "u_test": u[n_tr + n_va :],
            "climate": climate,
            "checks": dict(ds.attrs),
        }
        self._problem = Problem(x[:n_tr], x[n_tr : n_tr + n_va], sets, info)
        return self._problem

    def truth_model(self, eval_set: EvalSet | None = None):
        return None  # the slow variables have no closed equation: θ_s are effective

    def lyapunov(self, problem: Problem, progress: bool) -> dict[str, float]:
        """Slow-variable Lyapunov exponent per set: the mean logarithmic growth rate of the
        slow-variable separation of twin truth runs (X perturbed by 10⁻³ σ, Y identical),
        fitted where it grows from 1 % to 30 % of σ (the full system's leading exponent
        is set by the fast scale and far larger; see the truth checks)."""
        c = self.cfg
        out = {}
        for i, (name, es) in enumerate(problem.eval_sets.items()):
            f = es.context["forcing"]
            sigma = es.context["sigma"]
            u0 = self._spun_up(f, 200 + i, 32)
            pert = u0.at[:, : c.k].add(
                1e-3 * sigma * jax.random.normal(jax.random.key(i), (32, c.k))
            )
            n = round(c.twin_time / c.dt)
            step = self._fine_step(f)
            run = jax.jit(jax.vmap(lambda u, s=step, n=n: rollout(s, u, n)[:, : c.k]))
            err = np.sqrt(((np.asarray(run(u0)) - np.asarray(run(pert))) ** 2).mean(-1))
            logerr = np.log(err).mean(0) - np.log(sigma)
            t = np.arange(n + 1) * c.dt
            sel = (logerr > np.log(0.01)) & (logerr < np.log(0.3))
            first = int(np.argmax(sel)) if sel.any() else 0
            last = first + int(np.argmin(sel[first:])) if not sel[first:].all() else n + 1
            tt, ll = t[first:last], logerr[first:last]
            out[name] = float(np.polyfit(tt, ll, 1)[0]) if tt.size > 2 else float("nan")
        self._lyap = out
        return out

    def truth_checks(self, problem: Problem) -> dict:
        c = self.cfg
        checks = {k: v for k, v in problem.info["checks"].items() if k != "cache_fingerprint"}
        u0 = self._spun_up(c.forcing, 300, 4)
        step = direct_adjoint(self._fine_step(c.forcing))  # forward mode through Diffrax
        lam = M.lyapunov_exponent(step, u0, steps=c.benettin_steps, transient=c.benettin_steps // 4)
        checks["full_system_lyapunov_exponent"] = float(np.mean(np.asarray(lam)))
        checks["slow_lyapunov_definition"] = (
            "growth rate of the slow-variable separation of twin runs, fitted between 1 % "
            "and 30 % of the truth's standard deviation"
        )
        checks["climate_total_time"] = c.climate_members * c.climate_time
        return checks

    # -- models ----------------------------------------------------------------------------
    def _coarse(self, forcing: float, advection, damping) -> Diffrax:
        c = self.cfg
        model = Lorenz96(
            c.k, forcing=Param(forcing, fixed=True, name="F"), advection=advection, damping=damping
        )
        return Diffrax(model, c.dt, diffrax.Tsit5())

    def physics(self, eval_set: EvalSet | None = None):
        c = self.cfg
        f = c.forcing if eval_set is None else eval_set.context["forcing"]
        adv = Param(c.advection_prior, prior=Normal(c.advection_prior, 0.5), name="advection")
        damp = Param(
            c.damping_prior, "positive", prior=LogNormal(c.damping_prior, 0.7), name="damping"
        )
        return self._coarse(f, adv, damp)

    def projections(self) -> dict:
        """``data-orthogonal``: the closure is kept orthogonal to the θ_s sensitivities on
        average over 64 training states (`DataOrthogonal`) — the study's main option, as
        the per-state ``orthogonal`` removes too much of an 8-variable closure."""
        if self._problem is None:
            return {}
        c = self.cfg
        states = self._problem.train.reshape(-1, c.k)
        pick = np.random.default_rng(c.data_seed).choice(len(states), 64, replace=False)
        return {"data-orthogonal": DataOrthogonal(self.physics().model, states[pick])}

    def closure(self, key, odd: bool = False):
        """``U(X)_k = L(X_k) + N(X)_k`` (`LocalNonlocal1d`): a pointwise network of width
        `width` plus a `nonlocal_width` CNN seeing ``X_{k-3} … X_{k+3}``. Every network
        closure (a posteriori, a priori, sequential) is this one."""
        c = self.cfg
        return LocalNonlocal1d(
            width=c.width,
            nonlocal_width=c.nonlocal_width,
            depth=c.depth,
            kernel_size=c.kernel_size,
            activation=jnp.tanh if odd else jax.nn.gelu,
            use_bias=not odd,
            key=key,
        )

    def emulator(self, key):
        """The whole tendency is non-local (advection): a `PeriodicCNN1d` of `width`."""
        c = self.cfg
        return PeriodicCNN1d(width=c.width, depth=c.depth, kernel_size=c.kernel_size, key=key)

    # -- study baselines -------------------------------------------------------------------
    def extra_methods(self) -> dict[str, str]:
        return {
            "cubic_closure": "cubic closure fitted to the true subgrid tendency, textbook θ_s",
            "linear_closure": "linear-regression closure, textbook θ_s",
            "a_priori_closure": "hybrid's network trained a priori on true tendencies, "
            "textbook θ_s",
        }

    def _textbook(self):
        c = self.cfg
        return self._coarse(
            c.forcing,
            Param(c.advection_prior, fixed=True, name="advection"),
            Param(c.damping_prior, "positive", fixed=True, name="damping"),
        )

    def extra_method(self, name: str, problem: Problem, seed: int, progress: bool):
        c = self.cfg
        xs = problem.train.reshape(-1, c.k)
        us = problem.info["u_train"].reshape(-1, c.k)
        if name in ("cubic_closure", "linear_closure"):
            net = Polynomial.fit(xs, us, 3 if name == "cubic_closure" else 1)
        else:
            key = jax.random.fold_in(jax.random.key(seed), 7)
            val = (problem.val.reshape(-1, c.k), problem.info["u_val"].reshape(-1, c.k))
            net, _ = a_priori_closure(
                self.closure(key), xs, us, c.train.replace(seed=seed), val=val
            )
        return Hybrid(self._textbook(), net, coupling="closure")

    # -- metrics ---------------------------------------------------------------------------
    def extra_metrics(self, eval_set: EvalSet, pred: np.ndarray, truth: np.ndarray) -> dict:
        c = self.cfg
        sigma = eval_set.context["sigma"]
        with np.errstate(invalid="ignore", over="ignore"):
            nrmse = np.sqrt(((pred - truth) ** 2).mean(-1)) / sigma  # (batch, steps)
        bad = ~(nrmse <= c.vpt_threshold)
        bad[:, 0] = False
        first = np.where(bad.any(1), bad.argmax(1), nrmse.shape[1])
        vpt = float(np.mean(first) * c.dt)
        out = {"vpt": vpt}
        lam = self._lyap.get(eval_set.name)
        if lam and np.isfinite(lam):
            out["vpt_lyap"] = vpt * lam
        return out

    def _effective_tendency(self, model, x):
        """What the model adds to the textbook slow equations at states ``x`` (closure
        plus whatever the learned θ_s changed); ``None`` for a model without physics."""
        if isinstance(model, NeuralStepper) or (
            isinstance(model, Hybrid) and model.coupling != "closure"
        ):
            return None
        step = model.step if isinstance(model, Hybrid) else model
        book = self._textbook().model
        book = eqx.tree_at(lambda m: m.forcing, book, step.model.forcing)

        def one(u):
            eff = step.model.rhs(u) - book.rhs(u)
            if isinstance(model, Hybrid):
                eff = eff + model.network_term(u)
            return eff

        return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(x)))

    def model_metrics(self, name: str, eval_set: EvalSet, model, seed: int) -> dict:
        out = self._free_run_metrics(eval_set, model)
        if eval_set.name == "id" and self._problem is not None:
            x = self._problem.eval_sets["id"].data.reshape(-1, self.cfg.k)
            u = self._problem.info["u_test"].reshape(-1, self.cfg.k)
            eff = self._effective_tendency(model, x)
            if eff is not None:
                out["tendency_mse"] = float(np.mean((eff - u) ** 2))
                edges = self._tendency_bins()
                idx = np.digitize(x.ravel(), edges) - 1
                out["effective_tendency"] = [
                    float(eff.ravel()[idx == b].mean()) if (idx == b).any() else None
                    for b in range(len(edges) - 1)
                ]
        return out

    def _tendency_bins(self) -> np.ndarray:
        x = self._problem.eval_sets["id"].data
        return np.linspace(np.percentile(x, 0.5), np.percentile(x, 99.5), 31)

    def _pdf_edges(self, name: str) -> np.ndarray:
        clim = self._problem.info["climate"][name]
        lo, hi = float(clim.min()), float(clim.max())
        pad = 0.1 * (hi - lo)
        return np.linspace(lo - pad, hi + pad, self.cfg.climate_bins + 1)

    def climate_stats(self, name: str, x: np.ndarray) -> dict:
        """Statistics of slow-variable runs ``x`` (members, samples, K) against the truth's
        climate of set ``name``: the density (with an overflow bin for values outside the
        range and non-finite ones), Hellinger distance, mean, std, autocorrelation."""
        c = self.cfg
        truth = self._problem.info["climate"][name]
        edges = self._pdf_edges(name)
        counts, _ = np.histogram(x[np.isfinite(x)], bins=edges)
        p = np.append(counts, x.size - counts.sum()) / x.size
        tc, _ = np.histogram(truth, bins=edges)
        q = np.append(tc, truth.size - tc.sum()) / truth.size
        hell = float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))
        finite = np.isfinite(x).all(axis=(1, 2)) & (
            np.abs(np.nan_to_num(x, nan=np.inf)).max(axis=(1, 2)) < 5 * np.abs(truth).max()
        )
        tail = x[finite, -x.shape[1] // 4 :]
        t_mu, t_sd = float(truth.mean()), float(truth.std())
        drifted = 0
        if tail.size:
            mu, sd = tail.mean(axis=(1, 2)), tail.std(axis=(1, 2))
            drifted = int(np.sum((np.abs(mu - t_mu) > t_sd) | (sd < 0.25 * t_sd)))
        good = x[finite]
        stats = {
            "hellinger": hell,
            "blown_up": int(np.sum(~finite)),
            "drifted": drifted,
            "members": int(x.shape[0]),
            "mean": float(good.mean()) if good.size else None,
            "std": float(good.std()) if good.size else None,
            "pdf": p[:-1].tolist(),
            "outside": float(p[-1]),
        }
        if good.size:
            a = good - good.mean()
            var = np.mean(a**2)
            lags = [max(1, round(lag / (c.dt * c.climate_every))) for lag in c.acf_lags]
            stats["acf"] = [float(np.mean(a[:, s:] * a[:, :-s]) / var) for s in lags]
        return stats

    def _free_run_metrics(self, eval_set: EvalSet, model) -> dict:
        c = self.cfg
        name = eval_set.name
        clim = self._problem.info["climate"][name]
        u0 = jnp.asarray(clim[:, 0])
        every = max(1, c.climate_every)
        n_skip = round(c.climate_transient / c.dt)
        n = round(c.climate_time / (c.dt * every))
        traj = _free_run(model, u0, n_skip, every, n)
        stats = self.climate_stats(name, np.asarray(traj))
        out = {f"climate_{k}": v for k, v in stats.items() if k != "members"}
        out["climate_bounded_fraction"] = 1.0 - stats["blown_up"] / stats["members"]
        return out

    # -- results, tables, figures, targets --------------------------------------------------
    def study_results(self, problem: Problem, results: dict) -> dict:
        c = self.cfg
        xs = problem.train.reshape(-1)
        us = problem.info["u_train"].reshape(-1)
        cubic = Polynomial.fit(xs, us, 3)
        linear = Polynomial.fit(xs, us, 1)
        resid = us - np.asarray(cubic(jnp.asarray(xs)))
        truth = {}
        for name in problem.eval_sets:
            clim = problem.info["climate"][name]
            s = self.climate_stats(name, clim)
            truth[name] = {k: s[k] for k in ("mean", "std", "acf", "pdf")}
            truth[name]["edges"] = self._pdf_edges(name).tolist()
        return {
            "subgrid": {
                "definition": "U_k = -(h c / b) sum_j Y_{j,k}, fitted on the training states",
                "cubic_coefficients": np.asarray(cubic.coeffs).tolist(),
                "linear_coefficients": np.asarray(linear.coeffs).tolist(),
                "cubic_r2": float(1 - resid.var() / us.var()),
                "effective_damping_implied_by_linear_fit": float(
                    c.damping_prior - float(linear.coeffs[1])
                ),
                "tendency_bins": self._tendency_bins().tolist(),
            },
            "climate": {
                "acf_lags": list(c.acf_lags),
                "truth": truth,
                "total_time_per_method_and_set": c.climate_members * c.climate_time,
            },
            "tables": self._tables(results),
        }

    def _tables(self, res: dict) -> list[dict]:
        methods = res["methods"]
        sets = res["eval_sets"]
        rows = []
        for m, e in methods.items():
            if "id_climate_hellinger" not in e:
                continue
            row = [m]
            for s in sets:
                h = e.get(f"{s}_climate_hellinger", {})
                bu = e.get(f"{s}_climate_blown_up", {})
                dr = e.get(f"{s}_climate_drifted", {})
                per = bu.get("per_seed") or []
                members = self.cfg.climate_members * len(per)
                row.append(_pm(h))
                row.append(
                    f"{members - int(np.nansum(per))}/{members}"
                    f" ({int(np.nansum(dr.get('per_seed') or []))} drifted)"
                )
            rows.append(row)
        cols = ["method"]
        for s in sets:
            cols += [f"{s} Hellinger", f"{s} bounded runs"]
        t1 = {
            "title": "Long free runs: climate of X (Hellinger distance to the truth's density)",
            "columns": cols,
            "rows": rows,
            "caption": f"{self.cfg.climate_members} members × {self.cfg.climate_time:g} time "
            "units per method, set and seed; bounded = finite and within 5× the truth's "
            "largest |X|; drifted = bounded but the last quarter's mean is more than one "
            "truth σ off, or its σ below a quarter of the truth's. Lower Hellinger is better "
            "(0: same density).",
        }
        comp = []
        ident = self.cfg.identifiable
        names = {
            "a_priori_closure": "a priori (offline regression), textbook θ_s",
            "abl_closure_unrestricted_fixed": "a posteriori, textbook θ_s (same net, "
            "no projection)",
            "hybrid_fixed_theta": f"a posteriori, textbook θ_s, {ident} closure",
            "hybrid_joint": f"a posteriori, θ_s learned jointly, {ident} closure",
            "cubic_closure": "cubic fit (a priori), textbook θ_s",
        }
        abl = res.get("ablations", {}).get("identifiability", {})
        for m, label in names.items():
            e = methods.get(m)
            if e is None and m.startswith("abl_"):
                e = abl.get("unrestricted, fixed θ_s")
            if e is None:
                continue
            comp.append(
                [label]
                + [_pm(e.get(f"{s}_mse")) for s in sets]
                + [_pm(e.get(f"{s}_vpt_lyap")) for s in sets]
                + [_pm(e.get("id_tendency_mse")), _pm(e.get("id_climate_hellinger"))]
            )
        t2 = {
            "title": "A priori versus a posteriori training of the closure",
            "columns": ["closure"]
            + [f"{s} MSE" for s in sets]
            + [f"{s} VPT (Lyapunov times)" for s in sets]
            + ["offline tendency MSE (id)", "Hellinger (id)"],
            "rows": comp,
            "caption": "MSE over the first main_horizon steps; VPT: lead at which the RMSE "
            "first exceeds half the truth's σ; offline tendency MSE: effective subgrid "
            "tendency (closure + what θ_s changed) against the true -(hc/b)ΣY on the "
            "in-domain test states.",
        }
        return [t1, t2]

    def figures(self, out: Path, results: dict, arrays: dict) -> list[dict]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if self._problem is None:
            return []
        figs = Path(out) / "figures"
        figs.mkdir(parents=True, exist_ok=True)
        cache = RunCache(Path(out) / "runs")
        show = [
            "hybrid_joint",
            "hybrid_fixed_theta",
            "a_priori_closure",
            "cubic_closure",
            "pure_physics",
            "neural_emulator",
        ]
        metrics = {m: hit[0] for m in show if (hit := cache.get(m, results["seeds"][0]))}
        entries = []
        # the subgrid tendency
        c = self.cfg
        x = self._problem.train.reshape(-1)
        u = self._problem.info["u_train"].reshape(-1)
        pick = np.random.default_rng(0).choice(x.size, min(4000, x.size), replace=False)
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        ax.scatter(x[pick], u[pick], s=2, alpha=0.25, color="0.5", label="true −(hc/b)ΣY")
        grid = np.linspace(np.percentile(x, 0.5), np.percentile(x, 99.5), 200)
        coeffs = results["subgrid"]["cubic_coefficients"]
        ax.plot(grid, np.polynomial.polynomial.polyval(grid, coeffs), "k--", label="cubic fit")
        edges = np.asarray(results["subgrid"]["tendency_bins"])
        mid = 0.5 * (edges[1:] + edges[:-1])
        for m in ("hybrid_joint", "hybrid_fixed_theta", "a_priori_closure"):
            eff = metrics.get(m, {}).get("id_effective_tendency")
            if eff:
                ax.plot(mid, [np.nan if v is None else v for v in eff], lw=2, label=m)
        ax.set_xlabel("X_k")
        ax.set_ylabel("subgrid tendency")
        ax.legend(fontsize=8)
        fig.tight_layout()
        entries.append(
            {
                "file": save_figure(fig, figs / "subgrid_tendency.png", dpi=120),
                "title": "Learned effective subgrid tendency against X",
                "caption": "Grey: the true subgrid tendency on training states; dashed: "
                "its cubic fit; lines: the effective tendency (closure plus what the "
                "learned θ_s changed relative to the textbook equations) of each "
                "method, averaged in bins of X_k on the in-domain test states "
                "(seed 0).",
            }
        )
        # climate densities
        sets = results["eval_sets"]
        fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.8), squeeze=False)
        for ax, s in zip(axes[0], sets, strict=True):
            tr = results["climate"]["truth"][s]
            e = np.asarray(tr["edges"])
            mid = 0.5 * (e[1:] + e[:-1])
            width = np.diff(e)
            ax.plot(mid, np.asarray(tr["pdf"]) / width, "k", lw=2.5, label="truth")
            for m, met in metrics.items():
                pdf = met.get(f"{s}_climate_pdf")
                if pdf:
                    ax.plot(mid, np.asarray(pdf) / width, lw=1.2, label=m)
            ax.set_title(results["eval_set_labels"].get(s, s))
            ax.set_xlabel("X")
        axes[0][0].set_ylabel("density")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        entries.append(
            {
                "file": save_figure(fig, figs / "climate_pdf.png", dpi=120),
                "title": "Climate: density of X",
                "caption": f"Long free runs ({c.climate_members} × {c.climate_time:g} "
                "time units, seed 0) against the truth's density; mass outside the "
                "plotted range (blow-ups) is counted in the Hellinger distance.",
            }
        )
        return entries

    def targets(self, res: dict) -> list[dict]:
        methods = res["methods"]
        j = methods.get("hybrid_joint", {})
        out = []
        ood = [s for s in res["eval_sets"] if s != "id"]

        def mean(m, key):
            return (methods.get(m, {}).get(key) or {}).get("mean")

        for s in ood:
            js = mean("hybrid_joint", f"{s}_mse")
            for other, factor in (
                ("hybrid_fixed_theta", 0.8),
                ("neural_emulator", 1.0),
                ("a_priori_closure", 1.0),
            ):
                o = mean(other, f"{s}_mse")
                if js is None or o is None:
                    continue
                out.append(
                    {
                        "name": f"{s}: hybrid_joint MSE below "
                        + (f"{factor:g}× " if factor != 1 else "")
                        + other,
                        "value": f"{js:.3g} vs {o:.3g}",
                        "target": f"<= {factor:g}×",
                        "pass": bool(js <= factor * o),
                    }
                )
        for s in res["eval_sets"]:
            per = (j.get(f"{s}_climate_blown_up") or {}).get("per_seed") or []
            dr = (j.get(f"{s}_climate_drifted") or {}).get("per_seed") or []
            if per:
                out.append(
                    {
                        "name": f"{s}: every hybrid_joint free run bounded (and none drifted)",
                        "value": f"{int(np.nansum(per))} blown up, {int(np.nansum(dr))} drifted",
                        "target": "0",
                        "pass": bool(np.nansum(per) == 0),
                    }
                )
            jh = mean("hybrid_joint", f"{s}_climate_hellinger")
            for other in ("pure_physics", "cubic_closure"):
                oh = mean(other, f"{s}_climate_hellinger")
                if jh is not None and oh is not None:
                    out.append(
                        {
                            "name": f"{s}: hybrid_joint Hellinger below {other}",
                            "value": f"{jh:.3f} vs {oh:.3f}",
                            "target": "lower",
                            "pass": bool(jh < oh),
                        }
                    )
        return out

    def notes(self, problem: Problem) -> list[str]:
        c = self.cfg
        ch = problem.info["checks"]
        return [
            f"Truth: two-scale Lorenz-96 (K={c.k}, J={c.j}, h={c.h:g}, b={c.b:g}, c={c.c:g}) "
            f"with Tsit5 at an internal step {ch['dt_internal']:g}; halving it changes X by "
            f"at most {ch['halved_step_max_abs_diff_x_after_1_step']:.1e} after one "
            f"observation step and the climate's mean/σ by {ch['halved_step_mean_diff']:.2g}/"
            f"{ch['halved_step_std_diff']:.2g} (σ_X = {ch['climate_std_x']:.2f}).",
            f"Observed: X only, every dt = {c.dt:g}; lead times in slow-variable Lyapunov "
            "times (see the truth section for the exponent's definition).",
            "θ_s (advection α, damping γ) are effective coefficients of the slow equations: "
            "the truth has no closed equation in X alone, so no 'true' θ_s is reported; the "
            "linear fit of the true subgrid tendency implies the effective damping recorded "
            "under subgrid in results.json.",
            "The cubic, linear and a-priori closures use the textbook θ_s (α = γ = 1), the "
            "resolved equations being exact for them; the a-priori network is the hybrid's "
            "architecture trained with the same step budget on instantaneous (X, U) pairs.",
            "The neural emulator does not see F (it only ever saw F = 20), so its OOD "
            "forecasts show what a pure-data model does outside its training forcing.",
        ]

    def write_data(self, out: Path, progress: bool, **overrides) -> str:
        ds = self._dataset()
        save_dataset(ds, out)
        return (
            f"{ds.sizes['trajectory']} trajectories x {ds.sizes['time']} states of X "
            f"(K = {self.cfg.k}) with the true subgrid tendency, and the climate runs"
        )


@eqx.filter_jit
def _free_run(model, u0, n_skip: int, every: int, n: int):
    """Slow variables of free runs from ``u0`` (batch): ``n_skip`` steps discarded, then
    ``n`` samples ``every`` steps apart: ``(batch, n, K)``. Non-finite values propagate."""
    if hasattr(model, "prepare"):
        model = model.prepare()  # θ_s/projection coefficients once, not per step
    if isinstance(model, NeuralStepper):
        call = model
    else:

        def call(v):
            return model(v, 0.0)  # autonomous: the time does not matter

    def advance(u, k: int):
        return jax.lax.fori_loop(0, k, lambda i, v: call(v), u)

    def one(u):
        u = advance(u, n_skip)
        return jax.lax.scan(lambda v, _: (advance(v, every),) * 2, u, None, length=n)[1]

    return jax.vmap(one)(u0)


def _pm(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    return f"{stat['mean']:.3g} ± {stat.get('std') or 0:.1g}"
