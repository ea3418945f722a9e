"""The aneurysm study (`AneurysmStudy`): truth, observations, training, evaluation and the
whole run; see the package docstring."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ... import params as slp
from ...data import code_fingerprint
from ...models import Carreau, Newtonian, SidewallAneurysm, Waveform
from ...models._rheology import BLOOD_DENSITY
from ...solvers import tawss_osi
from ...uq import stack_members
from .._common import RunCache, write_json
from .._study import AbstractStudy
from . import _report, _uq
from ._config import (
    CARREAU,
    DETERMINISTIC,
    METHODS,
    NEWTONIAN_MU,
    PRESETS,
    AneurysmConfig,
    Case,
    Lattice,
    synthetic_waveform,
)
from ._field import (
    NeuralField,
    _field_on_grid,
    _field_step,
    _field_wss,
    _fields_on_grid,
    _fields_step,
)
from ._geometry import closure_geometry, restrict
from ._identifiability import _prior_vectors, fisher_block
from ._lattice import (
    _ADAM,
    ClosedLattice,
    WallClosure,
    _combine,
    _cosine,
    _record,
    _spin,
    _theta_jacobian,
    _train_step,
)


# ================================================================================= study
class AneurysmStudy(AbstractStudy):
    """Cerebral aneurysm: Carreau θ_s from MRI-like velocities, WSS in the sac (issue 10)."""

    name = "aneurysm"
    title = "Cerebral aneurysm: non-Newtonian blood and wall shear stress"
    description = (
        "side-wall aneurysm, 2-D lattice Boltzmann: learn the Carreau θ_s of a patient's "
        "blood from 4-D-flow-MRI-like velocities with a near-wall closure; clinical "
        "metric: TAWSS in the sac; out of domain: larger sac, higher heart rate"
    )
    presets: ClassVar[dict] = PRESETS
    field_kind = "2d"
    cfg: AneurysmConfig

    def __init__(self, cfg: AneurysmConfig, data_dir: Path | None = None):
        super().__init__(cfg, data_dir)
        self._wave: Waveform | None = None
        self._lattices: dict = {}

    # -- the protocol's hooks -----------------------------------------------------------
    def problem(self, cache_dir, progress):
        raise NotImplementedError(
            "the aneurysm study is a calibration study outside the forecast protocol; it "
            "runs through its own AneurysmStudy.run (scilayers run aneurysm)."
        )

    def truth_model(self, eval_set=None):
        """The truth's stepper: the Carreau fluid with the patient's θ_s on the fine lattice."""
        fine = self.lattice(self.cases()[0], self.cfg.refine)
        return fine.stepper(Carreau(**self.cfg.true_theta))

    def physics(self, eval_set=None):
        """The coarse stepper with the textbook (Cho & Kensey) Carreau θ_s."""
        return self.lattice(self.cases()[0]).stepper(Carreau())

    def closure(self, key, odd: bool = False):
        """The hybrid's `WallClosure` on the training lattice (state → body force field)."""
        del odd
        return self._closure(key, self.lattice(self.cases()[0]))

    def emulator(self, key):
        raise NotImplementedError(
            "the aneurysm study has no time-stepping emulator; its neural baseline is a "
            "neural field of the observations (NeuralField)."
        )

    # -- cases and lattices ------------------------------------------------------------
    def base_waveform(self) -> Waveform:
        """The inflow's shape (any mean and period; `lattice` rescales it)."""
        cfg = self.cfg
        if self._wave is None:
            if cfg.waveform == "synthetic":
                self._wave = synthetic_waveform()
            else:
                from ...data import load_arterial_case

                case = load_arterial_case(cfg.waveform, self.data_dir)
                self._wave = Waveform.from_flow(case.inflow_time, case.inflow_flow,
                                                case.vessels[0].r_prox)  # fmt: skip
        return self._wave

    def cases(self) -> list[Case]:
        cfg = self.cfg
        geo = SidewallAneurysm(cfg.diameter, cfg.length, cfg.sac_radius, cfg.neck_width)
        out = [Case("id", "training geometry and heart rate", geo, cfg.period)]
        if "sac" in cfg.ood:
            big = SidewallAneurysm(cfg.diameter, cfg.length, cfg.ood_sac_radius,
                                   cfg.ood_neck_width)  # fmt: skip
            out.append(Case("ood_sac", f"larger sac (R = {cfg.ood_sac_radius * 1e3:g} mm, "
                            f"neck {cfg.ood_neck_width * 1e3:g} mm)", big, cfg.period))  # fmt: skip
        if "hr" in cfg.ood:
            out.append(Case("ood_hr", f"heart rate {60 / cfg.ood_period:.0f} bpm (trained at "
                            f"{60 / cfg.period:.0f})", geo, cfg.ood_period))  # fmt: skip
        return out

    def lattice(self, case: Case, refine: int = 1) -> Lattice:
        """``case`` on the coarse lattice (``refine = 1``) or one ``refine`` times finer."""
        if (case, refine) not in self._lattices:
            self._lattices[(case, refine)] = self._make_lattice(case, refine)
        return self._lattices[(case, refine)]

    def _make_lattice(self, case: Case, refine: int) -> Lattice:
        cfg = self.cfg
        dx, dt = cfg.dx / refine, cfg.dt / refine
        steps = int(round(case.period / dt))
        if abs(steps * dt - case.period) > 1e-6 * case.period or steps % (
            cfg.record_phases * refine
        ):
            raise ValueError(
                f"the period {case.period} s of set {case.name} is not a whole number of "
                f"{cfg.record_phases} blocks of steps dt = {dt:.4g} s; change the period or "
                f"steps_per_cycle."
            )
        wave = self.base_waveform().rescaled(mean=cfg.mean_velocity, period=case.period)
        return Lattice(case, dx, dt, steps, wave, case.geometry.mask(dx), cfg.wall)

    @property
    def speed_ref(self) -> float:
        """Peak centreline inflow speed (m/s): 1.5 × the waveform's peak mean velocity."""
        cfg = self.cfg
        return 1.5 * self.base_waveform().rescaled(mean=cfg.mean_velocity).peak

    def _closure(self, key, lat: Lattice) -> WallClosure:
        cfg = self.cfg
        mlp = eqx.nn.MLP(6, 4, cfg.closure_width, 2, activation=jnp.tanh, key=key)
        last = mlp.layers[-1]
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                          (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))  # fmt: skip
        feats, band = closure_geometry(lat)
        return WallClosure(mlp, feats, band, rate_max=cfg.closure_rate, rho=BLOOD_DENSITY,
                           velocity_unit=lat.dx / lat.dt, speed_ref=self.speed_ref,
                           shear_ref=self.speed_ref / cfg.diameter, dt=lat.dt)  # fmt: skip

    def _move_closure(self, closure: WallClosure | None, lat: Lattice):
        if closure is None:
            return None
        feats, band = closure_geometry(lat)
        return closure.on(feats, band, lat.dt, lat.dx / lat.dt)

    # -- truth -------------------------------------------------------------------------
    def _truth_key(self) -> str:
        cfg = self.cfg
        keep = {k: v for k, v in cfg.to_dict().items() if k in (
            "waveform", "mean_velocity", "period", "diameter", "length", "sac_radius",
            "neck_width", "cells_across", "steps_per_cycle", "refine", "truth_cycles",
            "record_phases", "wall_points", "wall", "true_mu_0", "true_mu_inf", "true_lam",
            "true_n", "ood", "ood_sac_radius", "ood_neck_width", "ood_period")}  # fmt: skip
        keep["dtype"] = str(jnp.result_type(float))
        keep["version"] = 1
        keep["code"] = code_fingerprint("scilayers.experiments.aneurysm")
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def truth(self, cache_dir: Path, log) -> dict[str, dict[str, np.ndarray]]:
        """The fine-lattice truth of every case, restricted to the coarse lattice (cached
        in ``cache_dir`` under a hash of the config)."""
        cfg = self.cfg
        path = Path(cache_dir) / f"aneurysm-truth-{self._truth_key()}.npz"
        if path.is_file():
            with np.load(path) as f:
                flat = {k: f[k] for k in f.files}
            log(f"aneurysm: truth from cache {path}")
            out: dict[str, dict[str, np.ndarray]] = {}
            for k, v in flat.items():
                s, _, name = k.partition("/")
                out.setdefault(s, {})[name] = v
            return out
        out = {}
        for case in self.cases():
            t0 = time.perf_counter()
            coarse = self.lattice(case)
            fine = self.lattice(case, cfg.refine)
            step = fine.stepper(Carreau(**cfg.true_theta))
            wall = fine.sac_wall(cfg.wall_points)
            _, vel, wss, mach, gd = _record(step, cfg.truth_cycles, fine.steps,
                                            cfg.record_phases, wall)  # fmt: skip
            vel, gd = np.asarray(vel, float), np.asarray(gd, float)
            r = cfg.refine
            valid = restrict(fine.mask.astype(float), r, coarse.shape) > 1 - 1e-9
            sac_f = case.geometry.sac_mask(fine.dx)
            out[case.name] = {
                "vel": restrict(vel, r, coarse.shape),
                "wss": np.asarray(wss, float),
                "valid": valid & coarse.mask,
                "mach": np.asarray(float(mach)),
                "shear_sac_median": np.asarray(np.median(gd[:, sac_f])),
                "shear_wall_max": np.asarray(gd.max()),
            }
            log(f"aneurysm: truth {case.name} on {fine.shape} ({cfg.truth_cycles} cycles) in "
                f"{time.perf_counter() - t0:.0f} s, max Mach {float(mach):.3f}")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{f"{s}/{k}": v for s, d in out.items() for k, v in d.items()})
        tmp.replace(path)
        return out

    def observation_cells(self, lat: Lattice) -> np.ndarray:
        """Flat indices of the observed coarse cells (voxels): every `obs_stride`-th cell in
        x and y that is fluid, away from the inlet and outlet columns."""
        s = self.cfg.obs_stride
        nx, ny = lat.shape
        sel = np.zeros(lat.shape, bool)
        sel[2 : nx - 2 : s, 1::s] = True
        sel[:, :] &= lat.mask
        return np.flatnonzero(sel)

    def observations(self, truth_id: dict, lat: Lattice, seed: int):
        """``(noisy (P_obs, 2, n), noise-free (P_obs, 2, n), cells)`` of the training set."""
        cfg = self.cfg
        cells = self.observation_cells(lat)
        every = cfg.record_phases // cfg.obs_phases
        vel = truth_id["vel"][every - 1 :: every].reshape(cfg.obs_phases, 2, -1)[:, :, cells]
        rng = np.random.default_rng(10_000 + seed)
        noisy = vel + cfg.noise * self.speed_ref * rng.standard_normal(vel.shape)
        return noisy, vel, cells

    # -- training -----------------------------------------------------------------------
    def _sigma(self) -> float:
        """The σ the loss assumes (the noise level, floored at 1 % of the peak speed)."""
        return max(self.cfg.noise, 0.01) * self.speed_ref

    def train_lattice(self, stepper: ClosedLattice, lat: Lattice, obs, cells, *,
                      train_theta: bool, train_net: bool, seed: int, log, tag: str):  # fmt: skip
        """`iterations` cycles of Gauss–Newton on θ_s and Adam on the closure (see the
        module docstring and `AneurysmConfig`). Returns the trained stepper, the θ_s
        history, the loss history and seconds."""
        cfg = self.cfg
        t_start = time.perf_counter()
        if not train_theta:
            stepper = eqx.tree_at(lambda s: s.lbm.model.rheology, stepper,
                                  slp.fix(stepper.lbm.model.rheology))  # fmt: skip
        theta_s, theta_ml, frozen = slp.partition(stepper)
        if not train_net:
            frozen = slp.combine(theta_ml, frozen)
            theta_ml = None
        if not train_theta:
            theta_s = None
        sigma = self._sigma()
        n_values = float(np.size(obs))
        consts = (sigma, n_values, float(cfg.lambda_closure), cfg.obs_phases,
                  lat.steps // cfg.obs_phases, bool(train_net))  # fmt: skip
        target, cells_j = jnp.asarray(obs), jnp.asarray(cells)
        state = None if theta_ml is None else _ADAM.init(theta_ml)
        if train_theta:
            _, unravel = jax.flatten_util.ravel_pytree(theta_s)
            prec, _ = _prior_vectors(theta_s)
        u = _spin(stepper, stepper.lbm.initial_state(), cfg.spinup_cycles, lat.steps)
        history = {k: [] for k in slp.values(stepper.lbm.model.rheology)}
        losses = []
        gram = None
        for it in range(cfg.iterations):
            if train_theta and it % cfg.gn_refresh == 0:
                J = np.asarray(_theta_jacobian(theta_s, theta_ml, frozen, u, cells_j, consts))
                gram = J.T @ J / sigma**2
            lr = jnp.asarray(_cosine(cfg.lr_net, it, cfg.iterations, 0.2))
            theta_ml, state, loss, (u, data, pen), grad = _train_step(
                (theta_s, theta_ml), state, frozen, u, target, cells_j, lr, consts)  # fmt: skip
            loss = float(loss)
            if not math.isfinite(loss):
                log(f"aneurysm: {tag} seed {seed}: non-finite loss at iteration {it}; stopped")
                break
            if train_theta:  # damped Gauss–Newton on raw θ_s (the gradient is of L/N)
                H = gram + np.diag(prec)
                step = -np.linalg.solve(H + cfg.gn_damping * np.diag(np.diag(H)),
                                        n_values * np.asarray(grad, float))  # fmt: skip
                step *= min(1.0, cfg.gn_max_step / max(np.max(np.abs(step)), 1e-30))
                flat = jax.flatten_util.ravel_pytree(theta_s)[0]
                theta_s = unravel(flat + jnp.asarray(step, flat.dtype))
                if cfg.gn_relax:
                    u = _spin(_combine((theta_s, theta_ml), frozen), u, cfg.gn_relax, lat.steps)
            losses.append(loss)
            cur = _combine((theta_s, theta_ml), frozen)
            for k, v in slp.values(cur.lbm.model.rheology).items():
                history[k].append(float(v))
            if it % 4 == 0 or it == cfg.iterations - 1:
                th = ", ".join(f"{k} {v[-1]:.4g}" for k, v in history.items())
                log(f"aneurysm: {tag} seed {seed} it {it}: loss {loss:.4g} (data "
                    f"{float(data):.4g}, closure {float(pen):.3g}); {th}")  # fmt: skip
        trainable = (theta_s, theta_ml)
        trained = _combine(trainable, frozen)
        if not train_theta:  # free the Params again (their values are kept bit for bit)
            trained = eqx.tree_at(lambda s: s.lbm.model.rheology, trained,
                                  slp.fix(trained.lbm.model.rheology, False))  # fmt: skip
        return trained, history, losses, time.perf_counter() - t_start

    def train_field(self, lat: Lattice, obs, cells, seed: int, log, members: int | None = None):
        """Fit `NeuralField` to the observations (Adam, a soft divergence penalty on random
        fluid cells at the observed phases). With ``members = M``: a deep ensemble of M
        fields (own initialisation and collocation draws, keys split from the seed's) trained
        as one vmapped program; the fields come back stacked (`scilayers.uq.member`), the
        losses per member."""
        cfg = self.cfg
        t_start = time.perf_counter()
        key = jax.random.key(seed)
        split = None if members is None else jax.random.split(key, members)

        def make(k):
            mlp = eqx.nn.MLP(2 + 2 * cfg.nf_harmonics, 2, cfg.nf_width, cfg.nf_depth,
                             activation=jnp.tanh, key=k)  # fmt: skip
            return NeuralField(mlp, lat.case.geometry, cfg.length, self.speed_ref,
                               cfg.nf_harmonics)  # fmt: skip

        nx, ny = lat.shape
        ci, cj = np.unravel_index(cells, (nx, ny))
        ox, oy = (ci + 0.5) * lat.dx, (cj - 0.5) * lat.dx
        phases = (np.arange(cfg.obs_phases) + 1.0) / cfg.obs_phases
        P, n = len(phases), len(cells)
        X = jnp.asarray(np.tile(ox, P))
        Y = jnp.asarray(np.tile(oy, P))
        PH = jnp.asarray(np.repeat(phases, n))
        T = jnp.asarray(np.transpose(obs, (0, 2, 1)).reshape(-1, 2))
        fi, fj = np.nonzero(lat.mask)
        cx, cy = jnp.asarray((fi + 0.5) * lat.dx), jnp.asarray((fj - 0.5) * lat.dx)
        data = (X, Y, PH, T, cx, cy, jnp.asarray(phases))
        consts = (self._sigma(), float(cfg.nf_lambda_div), cfg.diameter / self.speed_ref,
                  cfg.nf_batch)  # fmt: skip
        init = lambda f: _ADAM.init(eqx.filter(f, eqx.is_inexact_array))  # noqa: E731
        if members is None:
            field, step = make(key), _field_step
            state = init(field)
            keys_at = lambda it: jax.random.fold_in(key, it)  # noqa: E731
        else:
            field, step = stack_members([make(k) for k in split]), _fields_step
            state = eqx.filter_vmap(init)(field)
            keys_at = lambda it: jax.vmap(jax.random.fold_in, (0, None))(split, it)  # noqa: E731
        losses = []
        for it in range(cfg.nf_iterations):
            lr = jnp.asarray(_cosine(cfg.nf_lr, it, cfg.nf_iterations, 0.05))
            field, state, loss = step(field, state, keys_at(it), lr, data, consts)
            if it % 100 == 0 or it == cfg.nf_iterations - 1:
                losses.append(float(loss) if members is None else np.asarray(loss).tolist())
        first, last = np.median(losses[0]), np.median(losses[-1])
        many = "" if members is None else f" ({members} members, median)"
        log(f"aneurysm: neural_field seed {seed}{many}: loss {first:.4g} -> {last:.4g}")
        return field, losses, time.perf_counter() - t_start

    # -- evaluation --------------------------------------------------------------------
    def evaluate_lattice(self, rheology, closure, case: Case):
        """Run the coarse model (rheology, closure moved onto the case) from rest; the
        last cycle's velocity (P, 2, nx, ny) and sac WSS (P, W)."""
        cfg = self.cfg
        lat = self.lattice(case)
        st = ClosedLattice(lat.stepper(rheology), self._move_closure(closure, lat))
        _, vel, wss, mach, _ = _record(st, cfg.eval_cycles, lat.steps, cfg.record_phases,
                                       lat.sac_wall(cfg.wall_points))  # fmt: skip
        return np.asarray(vel, float), np.asarray(wss, float), float(mach)

    def evaluate_field(self, field: NeuralField, case: Case):
        """The neural field on the coarse grid of ``case`` (same geometry only) at the
        recorded phases, and its WSS on the sac wall from its own gradients with the Cho &
        Kensey viscosity."""
        cfg = self.cfg
        lat = self.lattice(case)
        X, Y, phases = self._field_grid(lat)
        vel = np.asarray(_field_on_grid(field, X, Y, phases))
        vel = np.transpose(vel, (0, 2, 1)).reshape(len(phases), 2, *lat.shape)
        vel = np.where(lat.mask[None, None], vel, 0.0)
        wall = lat.sac_wall(cfg.wall_points)
        pts = np.asarray(wall.points) - np.array([0.0, lat.dx])
        wss = _field_wss(field, jnp.asarray(pts), jnp.asarray(wall.normals),
                         jnp.asarray(wall.tangents), jnp.asarray(phases), Carreau())  # fmt: skip
        return vel, np.asarray(wss, float)

    def evaluate_fields(self, fields: NeuralField, case: Case) -> np.ndarray:
        """Stacked neural fields (`train_field` with ``members``) on the coarse grid of
        ``case`` at the recorded phases: ``(M, P, 2, nx, ny)``, one vmapped evaluation."""
        lat = self.lattice(case)
        X, Y, phases = self._field_grid(lat)
        vel = np.asarray(_fields_on_grid(fields, X, Y, phases), float)
        vel = np.transpose(vel, (0, 1, 3, 2)).reshape(*vel.shape[:2], 2, *lat.shape)
        return np.where(lat.mask, vel, 0.0)

    def _field_grid(self, lat: Lattice):
        """Cell centres ``X, Y`` (flattened, x-major) and recorded phases of ``lat``."""
        nx, ny = lat.shape
        X, Y = np.meshgrid((np.arange(nx) + 0.5) * lat.dx, (np.arange(ny) - 0.5) * lat.dx,
                           indexing="ij")  # fmt: skip
        phases = (np.arange(self.cfg.record_phases) + 1.0) / self.cfg.record_phases
        return jnp.asarray(X.ravel()), jnp.asarray(Y.ravel()), jnp.asarray(phases)

    def scores(self, case: Case, truth: dict, vel, wss) -> tuple[dict, dict]:
        """Metrics (keys without the set prefix) and arrays of one prediction."""
        lat = self.lattice(case)
        tv, valid = truth["vel"], truth["valid"]
        cells = self.observation_cells(lat)
        m: dict[str, float | None] = {}
        arrays: dict[str, np.ndarray] = {}
        if vel is not None:
            err = (vel - tv)[:, :, valid]
            m["mse"] = float(np.mean(err**2))
            m["nmse"] = m["mse"] / float(np.mean(tv[:, :, valid] ** 2))
            flat = (vel - tv).reshape(vel.shape[0], 2, -1)[:, :, cells]
            m["rmse_obs"] = float(np.sqrt(np.mean(flat**2)))
            sac = valid & case.geometry.sac_mask(lat.dx)
            m["rmse_sac"] = float(np.sqrt(np.mean((vel - tv)[:, :, sac] ** 2)))
            arrays["speed"] = np.sqrt(np.sum(vel**2, axis=1)).astype(np.float32)
        if wss is not None:
            ta, osi = (np.asarray(a, float) for a in tawss_osi(wss))
            tt, ot = (np.asarray(a, float) for a in tawss_osi(truth["wss"]))
            S, keep = self.wall_smoothing(lat)
            a, b = (S @ ta)[keep], (S @ tt)[keep]
            m["tawss_err"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
            m["tawss_mean_err"] = float(abs(ta[keep].mean() / tt[keep].mean() - 1.0))
            m["osi_err"] = float(np.mean(np.abs(osi - ot)[keep]))
            arrays["tawss"], arrays["osi"] = ta, osi
        return m, arrays

    def wall_smoothing(self, lat: Lattice):
        """Gaussian smoothing over one coarse cell of arc length along the sac wall, and the
        points more than one coarse cell (of arc) away from the neck corners."""
        cfg = self.cfg
        arc = np.asarray(lat.sac_wall(cfg.wall_points).arclength)
        total = arc[-1] + arc[0]
        S = np.exp(-0.5 * ((arc[:, None] - arc[None, :]) / lat.dx) ** 2)
        S /= S.sum(axis=1, keepdims=True)
        keep = (arc > lat.dx) & (arc < total - lat.dx)
        return S, keep

    # -- identifiability -------------------------------------------------------------------
    def fisher(self, rheology: Carreau, lat: Lattice, cells) -> dict:
        """Fisher information of the observations for log θ_s (Carreau), from their
        sensitivities over one cycle from the periodic state at ``rheology`` (forward mode),
        with the assumed noise σ: eigenvalues, condition number, relative standard errors
        (Cramér–Rao), correlations; a parameter with relative std > 0.1 is flagged as not
        identified within 10 %."""
        cfg = self.cfg
        st0 = ClosedLattice(lat.stepper(rheology))
        theta_s, theta_ml, frozen = slp.partition(st0)
        frozen = slp.combine(theta_ml, frozen)
        vals = slp.values(rheology)
        names = list(vals)
        n_values = float(2 * cfg.obs_phases * len(cells))
        consts = (self._sigma(), n_values, float(cfg.lambda_closure), cfg.obs_phases,
                  lat.steps // cfg.obs_phases, False)  # fmt: skip
        u0 = _spin(st0, st0.lbm.initial_state(), cfg.spinup_cycles + 1, lat.steps)
        J = np.asarray(_theta_jacobian(theta_s, None, frozen, u0, jnp.asarray(cells), consts))
        return fisher_block(J, self._sigma(), names, [float(vals[k]) for k in names])

    # -- the whole study -----------------------------------------------------------------
    def run(self, seeds, out, *, resume=False, progress=True, log=print) -> dict:
        """Truth, every method for every seed (cached in ``OUT/runs``), identifiability,
        figures and ``OUT/results.json`` / ``OUT/arrays.npz``."""
        del progress
        t_start = time.perf_counter()
        cfg = self.cfg
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        asked = list(seeds)
        seeds = asked[: cfg.max_seeds] if cfg.max_seeds is not None else asked
        cache = RunCache(out / "runs")
        truth = self.truth(out.parent / ".cache", log)
        cases = self.cases()
        lat_id = self.lattice(cases[0])
        runs: dict[str, list[tuple[dict, dict]]] = {m: [] for m in METHODS if m in cfg.methods}
        trained: dict[tuple[str, int], object] = {}  # calibrated rheology per seed, this process

        def cached(name, seed):
            return cache.get(name, seed) if resume else None

        for seed in seeds:
            obs, obs_clean, cells = self.observations(truth["id"], lat_id, seed)
            for method in [m for m in METHODS if m in cfg.methods]:
                hit = cached(method, seed)
                if hit is not None:
                    log(f"aneurysm: {method} seed {seed}: cached")
                    runs[method].append(hit)
                    continue
                if method in DETERMINISTIC and runs[method]:  # the same for every seed
                    metrics, arrays = runs[method][0]
                    log(f"aneurysm: {method} seed {seed}: as seed {seeds[0]} (no data, no noise)")
                else:
                    metrics, arrays = self._run_method(method, seed, truth, obs, cells, cases,
                                                       trained, runs, log)  # fmt: skip
                cache.put(method, seed, metrics, arrays)
                runs[method].append((metrics, arrays))
        ident = cached("identifiability", seeds[0])
        carreau_method = next((m for m in ("pure_physics_calibrated", "hybrid_joint")
                               if m in cfg.methods), None)  # fmt: skip
        if ident is None:
            if carreau_method is not None:
                learned = runs[carreau_method][0][0]["theta"]
                rheo = Carreau(**{k: learned[k] for k in CARREAU})
            else:
                rheo = Carreau()
            log("aneurysm: Fisher information of the observations for the Carreau θ_s")
            block = self.fisher(rheo, lat_id, self.observation_cells(lat_id))
            block["at"] = carreau_method or "carreau_prior"
            ident = (block, {})
            cache.put("identifiability", seeds[0], block, {})
        ident = ident[0]
        check = cached("coarse_true_theta", seeds[0])
        if check is None:
            log("aneurysm: the coarse lattice at the true θ_s (premise check)")
            m, a = {}, {}
            for case in cases:
                vel, wss, _ = self.evaluate_lattice(Carreau(**cfg.true_theta), None, case)
                sc, arr = self.scores(case, truth[case.name], vel, wss)
                m.update({f"{case.name}_{k}": v for k, v in sc.items()})
                a.update({f"{k}_{case.name}": v for k, v in arr.items() if k == "tawss"})
            check = (m, a)
            cache.put("coarse_true_theta", seeds[0], m, a)
        uq = nf = None
        if cfg.uq == "ensemble":
            obs, _, cells = self.observations(truth["id"], lat_id, seeds[0])
            uq = cached("uq_ensemble_hybrid_joint", seeds[0])
            if uq is None:
                uq = _uq.ensemble_block(self, truth, obs, cells, cases, ident, seeds[0], log)
                cache.put("uq_ensemble_hybrid_joint", seeds[0], *uq)
            _uq.log_block(uq[0], log)
            if "neural_field" in cfg.methods:  # the data-only baseline, as an ensemble too
                nf = cached("uq_ensemble_neural_field", seeds[0])
                if nf is None:
                    nf = _uq.field_block(self, truth, obs, cells, cases, seeds[0], log)
                    cache.put("uq_ensemble_neural_field", seeds[0], *nf)
                _uq.log_block(nf[0], log, "neural_field")
        results = _report.assemble(self, seeds, asked, runs, truth, ident, check, cases)
        arrays = _report.report_arrays(self, runs, truth, cases, check[1])
        if uq is not None:
            results["uq"] = _uq.wrap(self, uq[0], seeds[0], None if nf is None else nf[0])
            results["tables"].append(_uq.tawss_table(results["uq"]))
            blocks = {"hybrid_joint": uq, **({"neural_field": nf} if nf else {})}
            for name, (entry, shown) in blocks.items():
                results["notes"] += [f"Uncertainty: {n}" for n in entry.get("notes", [])]
                arrays.update({f"uq__{name}__{k}": v for k, v in shown.items()})
        np.savez(out / "arrays.npz", **arrays)
        results["figures"] = _report.draw(self, out, results, arrays, cases)
        results["wall_seconds"] = time.perf_counter() - t_start
        results["targets"] = _report.study_targets(self, results) + _uq.targets(results)
        write_json(out / "results.json", results)
        return results

    def _run_method(self, method, seed, truth, obs, cells, cases, trained, runs, log):
        lat = self.lattice(cases[0])
        metrics: dict = {}
        arrays: dict = {}
        rheology, closure, field = None, None, None
        seconds = 0.0
        if method == "pure_physics":
            rheology = Newtonian(NEWTONIAN_MU)
        elif method == "carreau_prior":
            rheology = Carreau()
        elif method in ("pure_physics_calibrated", "hybrid_joint", "sequential_hybrid"):
            key = jax.random.key(seed)
            if method == "sequential_hybrid":
                calibrated = trained.get(("pure_physics_calibrated", seed))
                if calibrated is None:  # from the cache of this seed's calibration
                    th = runs["pure_physics_calibrated"][-1][0]["theta"]
                    calibrated = Carreau(**{k: th[k] for k in CARREAU})
                start = ClosedLattice(lat.stepper(calibrated), self._closure(key, lat))
                train_theta, train_net = False, True
            elif method == "hybrid_joint":
                start = ClosedLattice(lat.stepper(Carreau()), self._closure(key, lat))
                train_theta, train_net = True, True
            else:
                start = ClosedLattice(lat.stepper(Carreau()))
                train_theta, train_net = True, False
            log(f"aneurysm: training {method} seed {seed}")
            st, history, losses, seconds = self.train_lattice(
                start, lat, obs, cells, train_theta=train_theta, train_net=train_net,
                seed=seed, log=log, tag=method)  # fmt: skip
            rheology, closure = st.lbm.model.rheology, st.closure
            if method == "pure_physics_calibrated":
                trained[(method, seed)] = rheology
            metrics["theta_history"] = history
            metrics["losses"] = losses
        elif method == "neural_field":
            field, losses, seconds = self.train_field(lat, obs, cells, seed, log)
            metrics["losses"] = losses
        metrics["train_seconds"] = seconds
        if rheology is not None:
            metrics["theta"] = {k: float(v) for k, v in slp.values(rheology).items()}
        for case in cases:
            t0 = time.perf_counter()
            vel = wss = None
            if rheology is not None:
                vel, wss, mach = self.evaluate_lattice(rheology, closure, case)
                metrics[f"{case.name}_max_mach"] = mach
            elif field is not None and case.geometry == cases[0].geometry:
                vel, wss = self.evaluate_field(field, case)
            elif method == "obs_mean" and case.geometry == cases[0].geometry:
                vel = self.obs_mean_field(obs, cells, lat)
            if vel is None:
                continue
            sc, arr = self.scores(case, truth[case.name], vel, wss)
            metrics.update({f"{case.name}_{k}": v for k, v in sc.items()})
            arrays.update({f"{k}_{case.name}": v for k, v in arr.items()})
            log(f"aneurysm: {method} seed {seed} on {case.name}: "
                + ", ".join(f"{k} {v:.3g}" for k, v in sc.items() if v is not None)
                + f" ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        return metrics, arrays

    def obs_mean_field(self, obs, cells, lat: Lattice):
        """The time mean of the observations, spread over the coarse grid by nearest
        observed cell, constant in time."""
        nx, ny = lat.shape
        mean = obs.mean(axis=0)  # (2, n)
        ci, cj = np.unravel_index(cells, (nx, ny))
        fi, fj = np.nonzero(lat.mask)
        d = (fi[:, None] - ci[None]) ** 2 + (fj[:, None] - cj[None]) ** 2
        near = np.argmin(d, axis=1)
        vel = np.zeros((2, nx, ny))
        vel[:, fi, fj] = mean[:, near]
        return np.broadcast_to(vel, (self.cfg.record_phases, 2, nx, ny)).copy()

    # -- results -----------------------------------------------------------------------
