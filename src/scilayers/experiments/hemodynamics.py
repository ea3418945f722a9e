r"""Patient-specific arterial hemodynamics: learnable wall and outflow θ_s, a closure for
the wall and friction physics the 1-D model lacks, and another heart rate out of domain.

Virtual patients. A case file (default ``boileau2015/uta``, the upper thoracic aorta: one
vessel with a three-element Windkessel) gives the benchmark θ_s = ``{E, R1, C, R2}``; each
patient draws its own θ_s around them (``1 + U(−30 %, +30 %)`` each, seeded by patient).

Truth (richer than the hybrid's physics). The same area–flow equations (`ArterialMUSCL`)
on a grid `refine` times finer, with

- a viscoelastic wall (Kelvin–Voigt): ``p = p_el(A) + (Γ / (A0 √A)) ∂_t A``, which adds
  ``(A/ρ) ∂_x(Γ/(A0√A) ∂_x Q)`` ≈ ``ν_w ∂²_x Q``, ``ν_w = Γ / (ρ √A0)``, ``Γ = (2/3)√π φ h0``
  to the momentum equation (Alastruey et al. 2011, J Biomech 44:2250), applied after every
  fine step by an implicit (backward Euler) diffusion of ``Q``;
- a different velocity profile: friction with ``gamma_profile = gamma_true`` (default 2,
  Poiseuille) where the physics uses the case file's (9, blunt).

Observed (as states of the coarse model): pressure and flow at the cell centres of the
coarse grid (fine-cell averages) and the Windkessel capacitor pressure, every
``T / samples_per_cycle``, with Gaussian measurement noise on the training data.

Physics. The coarse `ArterialNetwork` (`n_cells` cells, elastic wall, the case file's
profile) stepped by `ArterialMUSCL` with the textbook (case-file) θ_s as the mis-specified
prior. The engine's state is the scaled flat state ``s = ((p − p_ref)/p_scale,
Q/q_scale, (P_c − p_ref)/p_scale)``: pressure (not area) is the state variable, so a
wrong ``E`` shows as a wrong pressure–area relation inside the step, not in the data.

Closure (``closure="structured"``, the default; `LocalClosure`). Both missing terms are
local, so the closure is built the way the field would: one small network shared by
every cell (a 1-D stencil network) sees the cell's scaled ``p``, ``Q`` and the centred
differences ``∂_x Q``, ``∂²_x Q``, ``∂_x p`` (reflecting ends) and adds a pressure and a
flow tendency once per observed step (``s_{n+1} = Φ_phys(s_n) + Δt · g(s_n)``, Lie
splitting); and a learned wall viscosity ``κ = ν_w/Δx²`` (per vessel) diffuses the flow
implicitly after every MUSCL step, as the truth's wall does — explicitly, the truth's
wall would need ``ν_w Δt/Δx² ≈ 100`` per observed step, far beyond any stable explicit
term. ``closure="mlp"`` (`Closure`) is the earlier MLP of the whole scaled state giving a
tendency for every component; it learned nothing that transfers out of domain.

Out of domain (never trained on): heart rate (inflow period ×0.75 and ×1.3, the waveform
time-scaled) and an exercise-like inflow (amplitude ×1.5). The inflow is a known input
that the physics represents explicitly; the hybrid moves to it with its learned θ_s.

Measurements (`observed`): every trained method fits only the clinical measurements —
pressure at the inlet and at the distal end of the first vessel, and the inlet flow —
through the engine's observation operator (`Problem.observed`). Windows and forecasts start
from full states (the periodic state is taken as known), and the unmeasured quantities
(mid-vessel pressure, outlet flow, every other cell) are predicted and scored. See `notes`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..data import cached, code_fingerprint, load_arterial_case, save_dataset
from ..models import AbstractForcedModel, ArterialNetwork
from ..models._arterial import MMHG, area, pressure
from ..params import LogNormal, Param, Positive, values
from ..solvers import AbstractStepper, ArterialMUSCL
from ..solvers._arterial import arterial_stable_dt
from ..training import TrainConfig
from ._common import save_figure
from ._study import AbstractStudy, EvalSet, Problem, StudyConfig

THETA = ("E", "R1", "C", "R2")
CLOSURES = ("structured", "mlp")


# ------------------------------------------------------------------------- config
@dataclass(frozen=True)
class HemoConfig(StudyConfig):
    """The case, the cohort, the truth's extra physics, sampling, noise, OOD shifts, nets.

    - `case`: case file under ``<data dir>/hemodynamics`` (one inlet; Windkessel outlets).
    - `n_cells`: cells per vessel of the physics (coarse); `refine`: truth grid factor.
    - `patients`: the cohort size; `patient`: the index patient the engine trains every
      method on; `cohort_steps`: calibration steps per cohort patient (0: no cohort block).
    - `spread`: θ_s of a patient are the benchmark's times ``1 + U(−spread, spread)``.
    - `gamma_true`: the truth's velocity-profile exponent; `wall_viscosity`: φ (Pa·s) of
      the truth's Kelvin–Voigt wall (0: elastic).
    - `samples_per_cycle`: observed states per cardiac cycle (``dt = T / samples``).
    - `warmup_cycles`: cycles run before recording (to the periodic state);
      `train_cycles`, `val_cycles`, `test_cycles`: recorded cycles per split.
    - `noise`: measurement noise (std, in units of each scaled component's std).
    - `hr_factors`: inflow period factors of the heart-rate sets; `amplitude`: the
      exercise-like inflow amplitude factor.
    - `test_starts`: forecast starts per test cycle (equally spaced phases). Scores at
      one lead time depend on the cardiac phase they land on, so a test set of few phases
      is a biased sample of what the UQ calibration (fitted over every phase) is scored
      on: with 4 starts (8 windows) the quick ensemble's PICP 90 read 0.962 at the main
      lead, with 10 (20 windows) 0.924, the same trained members.
    - `sparse`: train on the clinical measurements only (proximal and distal pressure of
      the first vessel, inlet flow; `HemodynamicsStudy.observed`); ``False``: every
      coarse cell's pressure and flow.
    - `closure`: ``"structured"`` (`LocalClosure`: a per-cell network of local quantities
      and a learned implicit wall viscosity) or ``"mlp"`` (`Closure`: an MLP of the whole
      state); `local_width`: the per-cell network's width (`depth` layers);
      `wall_kappa0`: its wall viscosity ``ν_w/Δx²`` (1/s) at initialisation, learned on a
      log scale with gain `wall_gain` (Adam moves ``log κ`` by about ``gain · lr_net`` a
      step).
    """

    case: str = "boileau2015/uta"
    n_cells: int = 24
    refine: int = 3
    patients: int = 4
    patient: int = 0
    cohort_steps: int = 0
    spread: float = 0.3
    gamma_true: float = 2.0
    wall_viscosity: float = 8000.0
    samples_per_cycle: int = 40
    warmup_cycles: int = 6
    train_cycles: int = 3
    val_cycles: int = 3
    test_cycles: int = 3
    noise: float = 0.02
    hr_factors: tuple[float, ...] = (0.75, 1.3)
    amplitude: float = 1.5
    test_starts: int = 10
    data_seed: int = 0
    width: int = 64
    depth: int = 2
    sparse: bool = True
    closure: str = "structured"
    local_width: int = 16
    wall_kappa0: float = 50.0
    wall_gain: float = 75.0

    def __post_init__(self):
        super().__post_init__()
        if self.closure not in CLOSURES:
            raise ValueError(f"HemoConfig(closure={self.closure!r}): choose one of {CLOSURES}.")


# Training windows of 10 observed steps (a quarter cycle, 0.24 s) for every method. With
# 4-step windows (0.1 s) the loss sees the pressure wave cross the vessel (E) but hardly
# the outflow's decay (time constant R2·C, 0.6-1.1 s), and the windows' noisy start states
# then pull R2 ~10 % high and R1 ~8 % low; every θ_s-learning method inherited that bias
# (issue 9: the calibrated physics and the joint hybrid at 2.0 mmHg in domain, the
# staged hybrid better only because its shorter θ_s stage stopped before the bias).
_QUICK_TRAIN = TrainConfig(steps=60, batch_size=8, horizon=10, lr_theta=3e-2, lr_net=2e-3,
                           val_every=20, schedule="cosine")  # fmt: skip
PRESETS: dict[str, HemoConfig] = {
    "quick": HemoConfig(
        dt=0.955 / 40, context_steps=2, corr_steps=40, main_horizon=20, horizons=(5, 10, 20, 40),
        field_steps=40, identifiable="orthogonal", closure_variants=("orthogonal",),
        lambda_sweep=(0.0,), data_sizes=(), pinn=None, checkpoint_every=0,
        ablation_seeds=1, emulator_steps=200, train=_QUICK_TRAIN,
    ),
}  # fmt: skip
PRESETS["full"] = PRESETS["quick"].replace(
    preset="full", extend_rounds=3, n_cells=32, patients=8, cohort_steps=150, train_cycles=6,
    test_cycles=3,
    closure_variants=("unrestricted", "orthogonal"), lambda_sweep=(0.0, 1e-3, 1e-2),
    data_sizes=(1, 3), ablation_seeds=None, emulator_steps=1000,
    train=_QUICK_TRAIN.replace(steps=300, batch_size=16, val_every=50),
)  # fmt: skip


# ------------------------------------------------------------------ physics in scaled form
class ArterialFlow(AbstractForcedModel):
    r"""An `ArterialNetwork` under `ArterialMUSCL`, seen in scaled pressure–flow variables.

    State ``s = ((p − p_ref)/p_scale, Q/q_scale, (P_c − p_ref)/p_scale)`` (cells' pressure,
    cells' flow, capacitor pressures). ``source(t, s)`` is the scheme's semi-discrete
    right-hand side in these variables (so sensitivities and residuals are the scheme's);
    ``rhs`` is zero (everything is time-dependent through the inflow). `advance` runs
    ``n`` MUSCL steps in physical variables."""

    solver: ArterialMUSCL
    p_ref: float = eqx.field(static=True)
    p_scale: float = eqx.field(static=True)
    q_scale: float = eqx.field(static=True)

    @property
    def network(self) -> ArterialNetwork:
        return self.solver.model

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.network.state_shape

    def _tube(self):
        net = self.network
        return net.reference_area(), net.beta()[net.layout.vessel_of], net.layout.p_ext

    def to_physical(self, s):
        net = self.network
        n = net.n_cells
        A0, beta, pext = self._tube()
        p = self.p_ref + self.p_scale * s[:n]
        A = area(p, A0, beta, pext)
        return net.join(A, self.q_scale * s[n : 2 * n], self.p_ref + self.p_scale * s[2 * n :])

    def from_physical(self, u):
        A, Q, pc = self.network.split(u)
        A0, beta, pext = self._tube()
        p = pressure(A, A0, beta, pext)
        return jnp.concatenate([(p - self.p_ref) / self.p_scale, Q / self.q_scale,
                                (pc - self.p_ref) / self.p_scale])  # fmt: skip

    def rhs(self, s):
        return jnp.zeros_like(s)

    def source(self, t, s):
        net, sol = self.network, self.solver
        u = self.to_physical(s)
        A, Q, pc = net.split(u)
        dA, dQ, dpc = sol._rates(A, Q, pc, t, sol._coefficients())
        A0, beta, _ = self._tube()
        dp = beta / (2.0 * A0 * jnp.sqrt(A)) * dA  # dp/dt = (dp/dA) dA/dt
        return jnp.concatenate([dp / self.p_scale, dQ / self.q_scale, dpc / self.p_scale])

    def advance(self, s, t, n: int, wall=None):
        """``n`` MUSCL steps from ``s``; ``wall`` (optional) maps the cells' flow after
        every step (an implicit wall-viscosity step, `LocalClosure.wall`)."""
        dt = self.solver.dt
        net = self.network

        def one(i, v):
            v = self.solver(v, t + i * dt)
            if wall is None:
                return v
            A, Q, pc = net.split(v)
            return net.join(A, self.q_scale * wall(Q / self.q_scale), pc)

        return self.from_physical(jax.lax.fori_loop(0, n, one, self.to_physical(s)))

    def initial_condition(self, key=None):
        return self.from_physical(self.network.initial_state("mean"))


class ArterialStep(AbstractStepper):
    """One observation interval ``dt`` = ``substeps`` MUSCL steps of an `ArterialFlow`; a
    closure (a `Hybrid` with ``coupling="closure"`` replaces `model` by the model with the
    closure's term) is added once per interval, ``s ← Φ(s) + dt · g(t, s)``. A
    `LocalClosure`'s wall viscosity is stiff (``ν_w Δt/Δx²`` ≈ 100 per interval on 24
    cells): it is applied implicitly after every MUSCL step instead, as the truth does."""

    model: AbstractForcedModel
    substeps: int = eqx.field(static=True)
    dt: float = eqx.field(static=True)

    def _core(self) -> ArterialFlow:
        m = self.model
        return m if isinstance(m, ArterialFlow) else m.inner

    def __call__(self, s, t=0.0):
        self.check(s)
        core = self._core()
        net = getattr(getattr(self.model, "term", None), "net", None)
        wall = net.wall(core.solver.dt) if isinstance(net, LocalClosure) else None
        v = core.advance(s, t, self.substeps, wall)
        if self.model is not core:  # the closure's term alone
            v = v + self.dt * (self.model.source(t, s) - core.source(t, s))
        return v


class Closure(eqx.Module):
    """MLP of the scaled state giving a tendency (scaled units per second)."""

    mlp: eqx.nn.MLP
    out_scale: float = eqx.field(static=True)

    def __init__(self, n: int, width: int, depth: int, key, use_bias: bool = True,
                 out_scale: float = 0.3):  # fmt: skip
        self.mlp = eqx.nn.MLP(n, n, width, depth, activation=jnp.tanh, use_bias=use_bias,
                              use_final_bias=use_bias, key=key)  # fmt: skip
        self.out_scale = float(out_scale)

    def __call__(self, s):
        return self.out_scale * self.mlp(s)


def _neumann_modes(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (≤ 0) and orthonormal eigenvectors of the ``m``-cell second difference
    with reflecting (zero-flux) ends, the stencil of the truth's wall viscosity."""
    D = np.diag(-2.0 * np.ones(m)) + np.diag(np.ones(m - 1), 1) + np.diag(np.ones(m - 1), -1)
    D[0, 0] = D[-1, -1] = -1.0
    lam, V = np.linalg.eigh(D)
    return np.minimum(lam, 0.0), V


class LocalClosure(eqx.Module):
    r"""A structured closure: the same small network in every cell, seeing only local
    quantities, and a learned wall viscosity.

    Per cell ``i`` of a vessel (``m`` cells, scaled state), the inputs are
    ``p_i, Q_i, m δQ_i / 4, m² δ²Q_i / 100, m δp_i / 4`` with the centred differences
    ``δQ_i = (Q_{i+1} − Q_{i−1})/2``, ``δ²Q_i = Q_{i+1} − 2Q_i + Q_{i−1}`` taken with
    reflecting ends (a ghost cell equal to the end cell); the network (shared weights, a
    1-D stencil network) gives a pressure and a flow tendency for the cell. It can express
    the friction of another velocity profile (``∝ Q/A(p)``) and the wall's ``ν_w ∂²_x Q``
    at moderate strength; the capacitor pressures get no term.

    The wall viscosity itself is too stiff for the explicit term (``ν_w Δt/Δx²`` ≈ 100 per
    observation interval for the truth's wall on 24 cells): ``kappa = ν_w/Δx²`` (1/s, one
    per vessel, learned on a log scale with gain `gain`) enters as the implicit step
    ``Q ← (I − Δt κ D²)⁻¹ Q`` after every MUSCL step (`wall`, applied by `ArterialStep`),
    the scheme the truth uses; it is outside the orthogonal projection, which no θ_s can
    imitate (E, R1, C, R2 never diffuse flow along the vessel)."""

    mlp: eqx.nn.MLP
    log_kappa: jax.Array
    cells: tuple[int, ...] = eqx.field(static=True)
    n_out: int = eqx.field(static=True)
    out_scale: float = eqx.field(static=True)
    gain: float = eqx.field(static=True)

    def __init__(self, cells, n_out: int, width: int, depth: int, key, kappa0: float = 50.0,
                 gain: float = 75.0, out_scale: float = 0.3):  # fmt: skip
        self.cells, self.n_out = tuple(int(m) for m in cells), int(n_out)
        self.mlp = eqx.nn.MLP(5, 2, width, depth, activation=jnp.tanh, key=key)
        self.gain, self.out_scale = float(gain), float(out_scale)
        self.log_kappa = jnp.full((len(self.cells),), math.log(kappa0) / self.gain)

    @property
    def kappa(self) -> jax.Array:
        """``ν_w / Δx²`` per vessel (1/s)."""
        return jnp.exp(self.gain * self.log_kappa)

    def _segments(self, x):
        out, off = [], 0
        for m in self.cells:
            out.append(x[off : off + m])
            off += m
        return out

    def __call__(self, s):
        n = sum(self.cells)
        if s.shape != (2 * n + self.n_out,):
            raise ValueError(f"LocalClosure expects a flat state of {2 * n + self.n_out} "
                             f"components (p, Q per cell, capacitor pressures), got "
                             f"{s.shape}.")  # fmt: skip
        feats = []
        for p, Q in zip(self._segments(s[:n]), self._segments(s[n : 2 * n]), strict=True):
            m = p.shape[0]
            qg = jnp.concatenate([Q[:1], Q, Q[-1:]])
            pg = jnp.concatenate([p[:1], p, p[-1:]])
            dq = 0.5 * (qg[2:] - qg[:-2])
            d2q = qg[2:] - 2.0 * Q + qg[:-2]
            dp = 0.5 * (pg[2:] - pg[:-2])
            feats.append(jnp.stack([p, Q, m * dq / 4.0, m**2 * d2q / 100.0, m * dp / 4.0], 1))
        y = self.out_scale * jax.vmap(self.mlp)(jnp.concatenate(feats))
        return jnp.concatenate([y[:, 0], y[:, 1], jnp.zeros(self.n_out, s.dtype)])

    def wall(self, dt: float):
        """The implicit wall-viscosity step of length ``dt`` on the cells' flow."""
        kappa = self.kappa

        def apply(Q):
            parts = []
            for j, q in enumerate(self._segments(Q)):
                lam, V = _neumann_modes(q.shape[0])
                V = jnp.asarray(V, q.dtype)
                damp = 1.0 / (1.0 - dt * kappa[j] * jnp.asarray(lam, q.dtype))
                parts.append(V @ (damp * (V.T @ q)))
            return jnp.concatenate(parts)

        return apply


# ------------------------------------------------------------------------- helpers
def _scaled_case(case, *, n_cells=None, gamma=None, period=1.0, amplitude=1.0):
    vessels = tuple(
        dataclasses.replace(v, n_cells=n_cells or v.n_cells,
                            gamma_profile=v.gamma_profile if gamma is None else gamma)
        for v in case.vessels
    )  # fmt: skip
    return dataclasses.replace(
        case, vessels=vessels,
        inflow_time=tuple(float(t) * period for t in case.inflow_time),
        inflow_flow=tuple(float(q) * amplitude for q in case.inflow_flow),
    )  # fmt: skip


def _cycles(x, t, first: int, count: int, length: int):
    """``count`` windows of one cycle (``length + 1`` states each) from index ``first`` of
    the states ``x`` at times ``t``, and their start times."""
    idx = [first + i * length for i in range(count)]
    return np.stack([x[i : i + length + 1] for i in idx]), np.asarray([t[i] for i in idx])


def _with_noise(x, std, rng):
    """``x`` with Gaussian measurement noise of standard deviation ``std`` (float32)."""
    return (x + std * rng.standard_normal(x.shape)).astype(np.float32)


def _visco_matrix(case, dt: float, phi: float) -> np.ndarray:
    """``(I − dt ν_w D²)⁻¹`` per vessel (block diagonal), reflecting ends."""
    n = sum(v.n_cells for v in case.vessels)
    M = np.eye(n)
    off = 0
    for v in case.vessels:
        m = v.n_cells
        dx = v.length / m
        r = 0.5 * (v.r_prox + v.r_dist)
        gam = (2.0 / 3.0) * math.sqrt(math.pi) * phi * v.h0
        nu = gam / (case.rho * math.sqrt(math.pi) * r)
        D = np.zeros((m, m))
        for i in range(m):
            if i > 0:
                D[i, i - 1] += 1.0
                D[i, i] -= 1.0
            if i < m - 1:
                D[i, i + 1] += 1.0
                D[i, i] -= 1.0
        M[off : off + m, off : off + m] = np.linalg.inv(np.eye(m) - dt * nu / dx**2 * D)
        off += m
    return M


# ---------------------------------------------------------------------------- study
class HemodynamicsStudy(AbstractStudy):
    name = "hemodynamics"
    title = "Arterial hemodynamics"
    description = (
        "virtual patients: learn wall stiffness and Windkessel θ_s with a closure for "
        "viscoelastic wall and friction; out of domain: heart rate, exercise"
    )
    presets = PRESETS
    field_kind = "series"
    cfg: HemoConfig

    def __init__(self, cfg: HemoConfig, data_dir: Path | None = None):
        super().__init__(cfg, data_dir)
        try:  # the observation interval is the case's period / samples_per_cycle
            dt = self.case().period / cfg.samples_per_cycle
        except (FileNotFoundError, ValueError):
            return  # no data folder: the study still lists; problem() will say so
        if abs(cfg.dt - dt) > 1e-9 * dt:
            self.cfg = cfg.replace(dt=dt)

    # -- case, patients, scaling ---------------------------------------------------------
    def case(self):
        return load_arterial_case(self.cfg.case, self.data_dir)

    def patient_theta(self, patient: int) -> dict[str, np.ndarray]:
        """True θ_s of a patient: the benchmark's times ``1 + U(−spread, spread)``."""
        case = self.case()
        bench = {
            "E": np.array([v.E for v in case.vessels]),
            "R1": np.array([o.R1 for o in case.outlets]),
            "C": np.array([o.C for o in case.outlets]),
            "R2": np.array([o.R2 for o in case.outlets]),
        }
        rng = np.random.default_rng([self.cfg.data_seed, patient])
        return {k: v * (1.0 + rng.uniform(-self.cfg.spread, self.cfg.spread, v.shape))
                for k, v in bench.items()}  # fmt: skip

    def _scales(self):
        case = self.case()
        o = case.outlets[0]
        p_ref = case.mean_inflow * (o.R1 + o.R2)  # a constant, also while tracing a solver
        return float(p_ref), 20.0 * MMHG, float(np.max(np.abs(case.inflow_flow)))

    def _substeps(self, case) -> tuple[int, float]:
        """MUSCL steps per observation interval for the coarse grid, with a CFL margin for
        E up to 1.7x the benchmark and 1.5x the inflow."""
        c = self.cfg
        coarse = _scaled_case(case, n_cells=c.n_cells)
        stiff = ArterialNetwork(coarse, E=np.array([v.E for v in case.vessels]) * 1.7)
        dt_obs = case.period / c.samples_per_cycle
        k = math.ceil(dt_obs / arterial_stable_dt(stiff, 0.8))
        return k, dt_obs

    def _context(self, name: str) -> dict:
        c = self.cfg
        if name.startswith("hr"):
            return {"period": float(name[2:].replace("_", ".")), "amplitude": 1.0}
        if name == "exercise":
            return {"period": 1.0, "amplitude": c.amplitude}
        return {"period": 1.0, "amplitude": 1.0}

    def _set_names(self) -> list[str]:
        return ["id", *[f"hr{f:g}".replace(".", "_") for f in self.cfg.hr_factors], "exercise"]

    # -- truth ---------------------------------------------------------------------------
    def _simulate(self, patient: int, period: float, amplitude: float, cycles: int):
        """Observed (scaled, coarse) states of the truth over ``cycles`` cycles after the
        warm-up, ``samples_per_cycle`` per cycle, and their times."""
        c = self.cfg
        base = self.case()
        k, _ = self._substeps(base)
        T = base.period * period
        dt_obs = base.period / c.samples_per_cycle  # the same for every set
        fine = _scaled_case(base, n_cells=c.n_cells * c.refine, gamma=c.gamma_true,
                            period=period, amplitude=amplitude)  # fmt: skip
        th = self.patient_theta(patient)
        with jax.enable_x64(True):
            net = ArterialNetwork(fine, **th)
            sub = k * c.refine
            while dt_obs / sub > arterial_stable_dt(net, 0.9):
                sub += 1
            solver = ArterialMUSCL(net, dt_obs / sub)
            M = (jnp.asarray(_visco_matrix(fine, dt_obs / sub, c.wall_viscosity))
                 if c.wall_viscosity > 0 else None)  # fmt: skip
            r = c.refine

            def restrict(u):
                A, Q, pc = net.split(u)
                p = net.pressure(u)
                pm = p.reshape(-1, r).mean(1)
                Qm = Q.reshape(-1, r).mean(1)
                p_ref, p_scale, q_scale = self._scales()
                return jnp.concatenate([(pm - p_ref) / p_scale, Qm / q_scale,
                                        (pc - p_ref) / p_scale])  # fmt: skip

            def fine_step(u, t):
                u = solver(u, t)
                if M is None:
                    return u
                A, Q, pc = net.split(u)
                return net.join(A, M @ Q, pc)

            block = 10  # observed steps per compiled call

            @jax.jit
            def run(u, t0):
                def obs(v, j):
                    t = t0 + j * dt_obs
                    v = jax.lax.fori_loop(
                        0, sub, lambda i, w: fine_step(w, t + i * (dt_obs / sub)), v
                    )
                    return v, restrict(v)

                return jax.lax.scan(obs, u, jnp.arange(block))

            n_warm = block * math.ceil(c.warmup_cycles * T / dt_obs / block)
            n_rec = block * math.ceil(cycles * T / dt_obs / block)
            u = net.initial_state("mean")
            for b in range(n_warm // block):
                u, _ = run(u, jnp.asarray(b * block * dt_obs))
            first = restrict(u)
            rec = []
            for b in range(n_rec // block):
                u, tr = run(u, jnp.asarray(n_warm * dt_obs + b * block * dt_obs))
                rec.append(np.asarray(tr))
            traj = np.concatenate(rec)
            states = np.concatenate([np.asarray(first)[None], np.asarray(traj)])
            if not np.all(np.isfinite(states)):
                raise ValueError(f"hemodynamics truth for patient {patient} blew up; "
                                 f"lower the CFL or the wall viscosity.")  # fmt: skip
        times = n_warm * dt_obs + dt_obs * np.arange(states.shape[0])
        return states.astype(np.float32), times

    def _dataset(self) -> xr.Dataset:
        c = self.cfg
        out = {}
        n_id = c.train_cycles + c.val_cycles + c.test_cycles
        for name in self._set_names():
            ctx = self._context(name)
            cycles = n_id if name == "id" else c.test_cycles
            s, t = self._simulate(c.patient, ctx["period"], ctx["amplitude"], cycles)
            out[f"s_{name}"] = ((f"time_{name}", "component"), s)
            out[f"t_{name}"] = ((f"time_{name}",), t)
        return xr.Dataset(out)

    def problem(self, cache_dir: Path | None, progress: bool) -> Problem:
        c = self.cfg
        payload = repr(c) + code_fingerprint(__name__)
        key = "hemodynamics-" + hashlib.sha256(payload.encode()).hexdigest()[:16]
        ds = self._dataset() if cache_dir is None else cached(
            Path(cache_dir) / f"{key}.nc", self._dataset, fingerprint=repr(c))  # fmt: skip
        L = c.samples_per_cycle
        rng = np.random.default_rng([c.data_seed, 99])
        s, t = ds["s_id"].values, ds["t_id"].values
        std = s.std(0, keepdims=True) + 1e-6

        def noisy(x):
            return _with_noise(x, c.noise * std, rng)

        train, train_t0 = _cycles(s, t, 0, c.train_cycles, L)
        val, val_t0 = _cycles(s, t, c.train_cycles * L, c.val_cycles, L)
        n = c.context_steps + c.corr_steps
        sets = {}
        for name in self._set_names():
            x = ds[f"s_{name}"].values
            tt = ds[f"t_{name}"].values
            first = (c.train_cycles + c.val_cycles) * L if name == "id" else 0
            starts = [
                first + j * (L // c.test_starts) + cyc * L
                for cyc in range(c.test_cycles - 1)
                for j in range(c.test_starts)
            ]
            starts = [i for i in starts if i + n <= x.shape[0]] or [first]
            data = np.stack([x[i : i + n] for i in starts])
            ctx = dict(self._context(name), x=np.arange(data.shape[-1]))
            sets[name] = EvalSet(name, data, c.context_steps - 1, ctx, self._label(name),
                                 t0=np.asarray([tt[i] for i in starts]))  # fmt: skip
        return Problem(noisy(train), noisy(val), sets, train_t0=train_t0, val_t0=val_t0,
                       info={"std": std}, observed=self.observed(),
                       calib_noise=c.noise * std[0])  # fmt: skip

    def observed(self) -> tuple[int, ...] | None:
        """The clinical measurements (flat state indices): pressure at the inlet and at the
        distal end of the first vessel, and the inlet flow; ``None`` with
        ``cfg.sparse = False`` (every cell's pressure and flow)."""
        if not self.cfg.sparse:
            return None
        n = self.cfg.n_cells * len(self.case().vessels)
        return (0, self.cfg.n_cells - 1, n)

    def quantities(self) -> np.ndarray:
        """The state's quantities for ``--uq``: cells' pressure 0, cells' flow 1, the
        Windkessel capacitor pressures 2 (each has its own error scale)."""
        n = self.cfg.n_cells * len(self.case().vessels)
        return np.repeat([0, 1, 2], [n, n, len(self.case().outlets)])

    def _label(self, name: str) -> str:
        ctx = self._context(name)
        if name == "id":
            return "training heart rate and inflow"
        if name == "exercise":
            return f"inflow amplitude x{ctx['amplitude']:g}"
        return f"inflow period x{ctx['period']:g} (heart rate x{1 / ctx['period']:.2f})"

    # -- models --------------------------------------------------------------------------
    def physics_on(self, *, patient: int | None = None, period=1.0, amplitude=1.0,
                   gamma=None) -> ArterialStep:  # fmt: skip
        """The coarse physics (elastic wall, the case's profile unless ``gamma``) on a
        shifted inflow; θ_s the case file's (prior) or ``patient``'s (truth)."""
        c = self.cfg
        base = self.case()
        k, dt_obs = self._substeps(base)
        # the shifted inflow is data of the network (one compiled program for every set)
        case = _scaled_case(base, n_cells=c.n_cells, gamma=gamma)
        inflow = (np.asarray(base.inflow_time) * period, np.asarray(base.inflow_flow) * amplitude)
        if patient is None:
            th = {"E": [v.E for v in base.vessels], "R1": [o.R1 for o in base.outlets],
                  "C": [o.C for o in base.outlets], "R2": [o.R2 for o in base.outlets]}  # fmt: skip
        else:
            th = self.patient_theta(patient)
        units = {"E": "Pa", "R1": "Pa s/m^3", "C": "m^3/Pa", "R2": "Pa s/m^3"}
        params = {
            k_: Param(np.asarray(v, dtype=float), Positive(), name=k_, units=units[k_],
                      prior=LogNormal(np.asarray(v, dtype=float), 0.3))
            for k_, v in th.items()
        }  # fmt: skip
        net = ArterialNetwork(case, **params, inflow=inflow)
        p_ref, p_scale, q_scale = self._scales()
        flow = ArterialFlow(ArterialMUSCL(net, dt_obs / k), p_ref, p_scale, q_scale)
        return ArterialStep(flow, k, dt_obs)

    def truth_model(self, eval_set: EvalSet | None = None):
        ctx = eval_set.context if eval_set is not None else {}
        return self.physics_on(patient=self.cfg.patient, period=ctx.get("period", 1.0),
                               amplitude=ctx.get("amplitude", 1.0),
                               gamma=self.cfg.gamma_true).model  # fmt: skip

    def physics(self, eval_set: EvalSet | None = None):
        ctx = eval_set.context if eval_set is not None else {}
        return self.physics_on(period=ctx.get("period", 1.0),
                               amplitude=ctx.get("amplitude", 1.0))  # fmt: skip

    def _n(self) -> int:
        return 2 * self.cfg.n_cells * len(self.case().vessels) + len(self.case().outlets)

    def closure(self, key, odd: bool = False):
        c = self.cfg
        if c.closure == "structured":
            case = self.case()
            return LocalClosure([c.n_cells] * len(case.vessels), len(case.outlets),
                                c.local_width, c.depth, key, kappa0=c.wall_kappa0,
                                gain=c.wall_gain)  # fmt: skip
        return Closure(self._n(), c.width, c.depth, key, use_bias=not odd)

    def emulator(self, key):
        c = self.cfg
        return Closure(self._n(), c.width, c.depth, key, out_scale=0.1)

    # -- metrics -------------------------------------------------------------------------
    def _waveforms(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Proximal/distal pressure (mmHg) and inlet/outlet flow (mL/s) of scaled states."""
        p_ref, p_scale, q_scale = self._scales()
        n = self.cfg.n_cells * len(self.case().vessels)
        p = (p_ref + p_scale * x[..., :n]) / MMHG
        q = q_scale * x[..., n : 2 * n] * 1e6
        m = self.cfg.n_cells
        return {"p_prox": p[..., 0], "p_mid": p[..., m // 2], "p_dist": p[..., m - 1],
                "q_in": q[..., 0], "q_out": q[..., m - 1]}  # fmt: skip

    def extra_metrics(self, eval_set: EvalSet, pred: np.ndarray, truth: np.ndarray) -> dict:
        if not np.all(np.isfinite(pred)):
            return {
                k: float("nan")
                for k in (
                    "p_prox_rmse_mmhg",
                    "p_mid_rmse_mmhg",
                    "p_dist_rmse_mmhg",
                    "q_in_rmse_mls",
                    "q_out_rmse_mls",
                    "systolic_error_mmhg",
                    "diastolic_error_mmhg",
                )
            }
        wp, wt = self._waveforms(pred[:, 1:]), self._waveforms(truth[:, 1:])
        rmse = {k: float(np.sqrt(np.mean((wp[k] - wt[k]) ** 2))) for k in wp}
        sys_err = np.abs(wp["p_dist"].max(1) - wt["p_dist"].max(1))
        dia_err = np.abs(wp["p_dist"].min(1) - wt["p_dist"].min(1))
        return {
            "p_prox_rmse_mmhg": rmse["p_prox"],
            "p_mid_rmse_mmhg": rmse["p_mid"],
            "p_dist_rmse_mmhg": rmse["p_dist"],
            "q_in_rmse_mls": rmse["q_in"],
            "q_out_rmse_mls": rmse["q_out"],
            "systolic_error_mmhg": float(np.mean(sys_err)),
            "diastolic_error_mmhg": float(np.mean(dia_err)),
        }  # fmt: skip

    def wall_kappa(self) -> np.ndarray:
        """The truth's wall viscosity on the physics' grid, ``ν_w / Δx²`` per vessel (1/s):
        what a `LocalClosure`'s ``kappa`` would be if it learned the wall alone."""
        c = self.cfg
        case = self.case()
        out = []
        for v in case.vessels:
            r = 0.5 * (v.r_prox + v.r_dist)
            gam = (2.0 / 3.0) * math.sqrt(math.pi) * c.wall_viscosity * v.h0
            out.append(gam / (case.rho * math.sqrt(math.pi) * r) / (v.length / c.n_cells) ** 2)
        return np.asarray(out)

    def model_metrics(self, name: str, eval_set: EvalSet, model, seed: int) -> dict:
        """The learned wall viscosity of a structured closure, against the truth's."""
        net = getattr(model, "net", None)
        if eval_set.name != "id" or not isinstance(net, LocalClosure):
            return {}
        k = np.asarray(net.kappa, dtype=float)
        return {"wall_kappa": float(k.mean()),
                "wall_kappa_ratio": float(np.mean(k / self.wall_kappa()))}  # fmt: skip

    # -- cohort --------------------------------------------------------------------------
    def cohort(self, progress: bool = False) -> list[dict]:
        """Calibrate the physics' θ_s to each virtual patient's measurements (the same
        sparse sites, noise and training cycles as the index patient; `cohort_steps`
        steps of `calibrate`), for patients ``0 … patients − 1``: recovered vs true θ_s."""
        from ..baselines import calibrate

        c = self.cfg
        rows = []
        L = c.samples_per_cycle
        tc = c.train.replace(steps=c.cohort_steps, val_every=max(c.cohort_steps, 1),
                             observed=self.observed())  # fmt: skip
        for patient in range(c.patients):
            s, t = self._simulate(patient, 1.0, 1.0, c.train_cycles)
            rng = np.random.default_rng([c.data_seed, 7, patient])
            s = _with_noise(s, c.noise * (s.std(0, keepdims=True) + 1e-6), rng)
            data, t0 = _cycles(s, t, 0, c.train_cycles, L)
            fit = calibrate(self.physics(), data, tc, t0=t0, progress=progress)
            learned = {k: np.asarray(v, dtype=float).reshape(-1)
                       for k, v in values(fit.model).items()}  # fmt: skip
            true = self.patient_theta(patient)
            for k in THETA:
                tk = np.asarray(true[k], dtype=float).reshape(-1)
                for j, (lv, tv) in enumerate(zip(learned[k], tk, strict=True)):
                    rows.append({"patient": patient, "theta": k, "index": j,
                                 "true": float(tv), "learned": float(lv),
                                 "rel_error": float(abs(lv - tv) / abs(tv))})  # fmt: skip
        return rows

    def study_results(self, problem: Problem, results: dict) -> dict:
        c = self.cfg
        out: dict = {}
        rows = []
        meths = results["methods"]
        for m in ("pure_physics_calibrated", "hybrid_joint", "hybrid_fixed_theta"):
            th = meths.get(m, {}).get("theta", {})
            for k in THETA:
                if k in th and "rel_error" in th[k]:
                    e = th[k]["rel_error"]
                    rows.append([m, k, f"{th[k]['initial']:.4g}", f"{th[k]['true']:.4g}",
                                 f"{np.mean(th[k]['learned']):.4g}",
                                 f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}"])  # fmt: skip
        out["tables"] = [{
            "title": f"Recovered θ_s, patient {c.patient}",
            "columns": ["method", "θ_s", "prior", "true", "learned (mean)", "rel. error %"],
            "rows": rows,
            "caption": "prior = case-file (textbook) value; true = the patient's draw.",
        }]  # fmt: skip
        if c.cohort_steps > 0:
            cohort = self.cohort()
            out["cohort"] = cohort
            worst = {k: max(r["rel_error"] for r in cohort if r["theta"] == k) for k in THETA}
            out["tables"].append({
                "title": f"Cohort: θ_s calibrated to each of {c.patients} virtual patients",
                "columns": ["patient", "θ_s", "true", "recovered", "rel. error %"],
                "rows": [[str(r["patient"]), r["theta"], f"{r['true']:.4g}",
                          f"{r['learned']:.4g}", f"{100 * r['rel_error']:.1f}"]
                         for r in cohort],
                "caption": f"Physics calibrated (no network) on each patient's sparse "
                           f"measurements, {c.cohort_steps} steps; worst error per θ_s: "
                           + ", ".join(f"{k} {100 * v:.1f} %" for k, v in worst.items()),
            })  # fmt: skip
        return out

    # -- figures -------------------------------------------------------------------------
    def figures(self, out: Path, results: dict, arrays: dict) -> list[dict]:
        """Waveforms (truth vs methods) at the measured and the unmeasured sites, in and
        out of domain; recovered vs true θ_s across the cohort."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figs = Path(out) / "figures"
        figs.mkdir(parents=True, exist_ok=True)
        entries = []
        sites = [("p_prox", "inlet p, mmHg\n(measured)"),
                 ("p_dist", "distal p, mmHg\n(measured)"),
                 ("p_mid", "mid-vessel p, mmHg\n(unmeasured)"),
                 ("q_out", "outlet flow, mL/s\n(unmeasured)")]  # fmt: skip
        shown = ["pure_physics", "pure_physics_calibrated", "sequential_hybrid",
                 "hybrid_fixed_theta", "hybrid_joint"]  # fmt: skip
        sets = [k for k in results["eval_sets"] if f"truth_{k}" in arrays][:2]
        if sets:
            fig, axes = plt.subplots(len(sites), len(sets), figsize=(5 * len(sets), 9),
                                     squeeze=False, sharex="col")  # fmt: skip
            for col, k in enumerate(sets):
                truth = self._waveforms(np.asarray(arrays[f"truth_{k}"]))
                tt = np.arange(next(iter(truth.values())).shape[0]) * self.cfg.dt
                for row, (site, label) in enumerate(sites):
                    ax = axes[row, col]
                    ax.plot(tt, truth[site], "k", lw=2, label="truth")
                    for m in shown:
                        key = f"pred_{k}__{m}"
                        if key in arrays:
                            ax.plot(tt, self._waveforms(np.asarray(arrays[key]))[site], lw=1,
                                    label=m)  # fmt: skip
                    ax.set_ylabel(label, fontsize=8)
                    if row == 0:
                        ax.set_title(results["eval_set_labels"].get(k, k), fontsize=9)
                axes[-1, col].set_xlabel("time from forecast start (s)")
            axes[0, 0].legend(fontsize=7)
            fig.tight_layout()
            entries.append({"file": save_figure(fig, figs / "waveforms.png", dpi=100),
                            "title": "Waveforms at measured and unmeasured sites",
                            "caption": "Forecasts from the same start (first test trajectory, "
                                       "seed 0): truth (black) and methods; the top rows are "
                                       "what was measured, the bottom rows were never "
                                       "trained on."})  # fmt: skip
        cohort = results.get("cohort")
        if cohort:
            fig, axes = plt.subplots(1, len(THETA), figsize=(3.2 * len(THETA), 3.2))
            for ax, k in zip(axes, THETA, strict=True):
                rows = [r for r in cohort if r["theta"] == k]
                tv = np.array([r["true"] for r in rows])
                lv = np.array([r["learned"] for r in rows])
                lo, hi = min(tv.min(), lv.min()), max(tv.max(), lv.max())
                ax.plot([lo, hi], [lo, hi], color="0.6", ls="--")
                ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi],
                                color="0.9")  # fmt: skip
                ax.plot(tv, lv, "o")
                ax.set(title=k, xlabel="true", ylabel="recovered")
            fig.tight_layout()
            entries.append({"file": save_figure(fig, figs / "cohort_theta.png", dpi=100),
                            "title": "Recovered vs true θ_s across the cohort",
                            "caption": "Physics calibrated on each virtual patient's sparse "
                                       "measurements; grey band: ±10 %."})  # fmt: skip
        return entries

    # -- targets and notes ---------------------------------------------------------------
    def targets(self, res: dict) -> list[dict]:
        out = []
        meths = res["methods"]
        th = meths.get("hybrid_joint", {}).get("theta", {})
        ident = [k for k, v in th.items() if v.get("identifiable", True) and "rel_error" in v]
        if ident:
            worst = max(max(th[k]["rel_error"]["per_seed"]) for k in ident)
            out.append({"name": f"identifiable θ_s ({', '.join(ident)}) recovered within 10 % "
                                "(hybrid_joint)", "value": f"worst {100 * worst:.1f} %",
                        "target": "<= 10 %", "pass": bool(worst <= 0.1)})  # fmt: skip
        hr = [k for k in res["eval_sets"] if k.startswith("hr")]

        def ood(m):
            vals = [meths.get(m, {}).get(f"{k}_p_dist_rmse_mmhg", {}).get("mean") for k in hr]
            return None if any(v is None for v in vals) or not vals else float(np.mean(vals))

        j, f = ood("hybrid_joint"), ood("hybrid_fixed_theta")
        if j is not None and f is not None:
            out.append({"name": "hybrid_joint heart-rate OOD pressure RMSE >= 20 % below "
                                "hybrid_fixed_theta", "value": f"{j:.3g} vs {f:.3g} mmHg",
                        "target": "<= 0.8x", "pass": bool(j <= 0.8 * f)})  # fmt: skip
        others = {m: ood(m) for m in meths if m not in ("hybrid_joint",) and ood(m) is not None}
        if j is not None and others:
            best = min(others, key=others.get)
            out.append({"name": "hybrid_joint heart-rate OOD pressure RMSE below every "
                                "other method", "value": f"{j:.3g} vs {best} {others[best]:.3g}",
                        "target": "lowest", "pass": bool(j < others[best])})  # fmt: skip
        return out

    def notes(self, problem: Problem) -> list[str]:
        c = self.cfg
        k, dt_obs = self._substeps(self.case())
        return [
            f"Case {c.case}; physics on {c.n_cells} cells per vessel, {k} MUSCL steps per "
            f"observed interval dt = {dt_obs:.4g} s ({c.samples_per_cycle} per cycle); truth "
            f"on {c.n_cells * c.refine} cells with a Kelvin–Voigt wall (φ = "
            f"{c.wall_viscosity:g} Pa·s) and velocity profile γ = {c.gamma_true:g}.",
            f"Patient {c.patient}: true θ_s drawn within ±{100 * c.spread:g} % of the case "
            f"file's values, which are the physics' prior.",
            (
                "Measured (the only components any method is trained on): pressure at the inlet "
                "and at the distal end of vessel 1, and the inlet flow, with noise. Unmeasured "
                "and predicted: the mid-vessel pressure (p_mid), the outlet flow (q_out) and every "
                "other cell. Training windows and forecasts start from full states (the "
                "periodic state is taken as known)."
                if c.sparse
                else "Every method is trained on pressure and flow in every coarse cell (sparse = "
                "False)."
            ),
            "MSE columns are in scaled units (pressure / 20 mmHg, flow / peak inflow).",
            self._window_note(),
        ]

    def _window_note(self) -> str:
        """Training windows against the outflow's time constant (the prior's R2·C)."""
        c = self.cfg
        o = self.case().outlets[0]
        h = c.train.longest_horizon
        return (
            f"Every method trains on windows of {h} observed steps ({h * c.dt:.2g} s, "
            f"{h / c.samples_per_cycle:.2g} of a cycle); the prior's outflow time constant "
            f"R2·C is {o.R2 * o.C:.2g} s. Windows of 4 steps (0.1 s) biased R2 ~10 % high "
            f"and R1 ~8 % low for every θ_s-learning method (issue 9): they see the wave's "
            f"transit (E) but hardly the outflow's decay, from noisy start states."
        )

    def write_data(self, out: Path, progress: bool) -> str:
        ds = self._dataset()
        save_dataset(ds, out)
        return ", ".join(f"{k}: {ds[k].shape}" for k in ds.data_vars if k.startswith("s_"))
