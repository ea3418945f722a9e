"""The aneurysm study's configuration, presets, evaluation cases and lattices."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ...models import IncompressibleFlow2D, SidewallAneurysm, Waveform
from ...models._rheology import BLOOD_DENSITY
from ...solvers import LatticeBoltzmann

CARREAU = ("mu_0", "mu_inf", "lam", "n")
NEWTONIAN_MU = 0.0035

#: Methods in table order, with their labels; ``obs_mean`` is a reference.
METHODS = {
    "pure_physics": "Newtonian blood, μ = 0.0035 Pa s (clinical default)",
    "carreau_prior": "Carreau at Cho & Kensey (1991)",
    "pure_physics_calibrated": "Carreau θ_s calibrated to the MRI data",
    "hybrid_joint": "Carreau θ_s + wall closure, jointly",
    "sequential_hybrid": "calibrated θ_s, then the wall closure",
    "neural_field": "neural field of the MRI data",
    "obs_mean": "time mean of the observations",
}
REFERENCES = ("obs_mean",)
SHEAR_RATES = (1.0, 10.0, 100.0)  # 1/s: the sac, the thinning range, the vessel wall
DETERMINISTIC = ("pure_physics", "carreau_prior")  # use neither data nor the seed
#: Why ``--uq bayes`` is refused here.
BAYES_UNSUPPORTED = (
    "the aneurysm study supports --uq ensemble (and none); --uq bayes is not implemented "
    "there: NUTS would run a whole lattice Boltzmann cardiac cycle with gradients (about "
    "2,500 steps) for every leapfrog step, thousands of cycles on 2 cores. The ensemble's "
    "θ_s spread and the Fisher block (Cramér–Rao) are the study's θ_s uncertainty."
)
TRAINED = ("pure_physics_calibrated", "hybrid_joint", "sequential_hybrid", "neural_field")


# =============================================================================== config
@dataclass(frozen=True)
class AneurysmConfig:
    """The aneurysm study's configuration (SI units). See the module docstring.

    **Flow and geometry**: `waveform` (an openBF case under ``hemodynamics/`` whose inflow
    shape is used — the common carotid artery of Boileau et al. 2015 by default — or
    ``"synthetic"``, a three-harmonic cerebral-like waveform that needs no data), rescaled
    to `mean_velocity` (m/s) and `period` (s); vessel `diameter`, domain `length`, sac
    `sac_radius` and `neck_width` (m). Coarse lattice: `cells_across` cells across the
    vessel, `steps_per_cycle` steps per period; the truth's lattice is `refine` times
    finer (``refine = 1``: the truth on the models' own lattice, no model error).
    `truth_cycles` / `eval_cycles`: cycles run from rest (the last one recorded, at
    `record_phases` phases); `wall_points` points on the sac wall. `wall`: the solver's
    no-slip walls for the truth and every lattice model, ``"bouzidi"`` (default:
    interpolated bounce-back at the analytic wall, second order) or ``"halfway"``
    (bounce-back on the cell faces, a staircase sac wall).

    **Truth**: `true_mu_0`, `true_mu_inf` (Pa s), `true_lam` (s), `true_n`.

    **Observations**: every `obs_stride`-th coarse cell in x and y, `obs_phases` phases
    (dividing `record_phases`), noise std `noise` × the peak centreline inflow speed. The
    default, 16 phases of a 0.8 s cycle (50 ms apart), is within what clinical 4-D flow MRI
    reconstructs (about 15–25 phases per cycle, 30–50 ms temporal resolution). In the
    quick study, hybrid_joint's sac TAWSS error over seeds 0, 1, 2 was 11.2, 9.4, 10.3 %
    with 8 phases (100 ms) and 7.2, 10.3, 9.0 % with 16 (see the README).

    **Out of domain**: `ood` names the sets (``"sac"``: `ood_sac_radius`,
    `ood_neck_width`; ``"hr"``: `ood_period`).

    **Training** (every method the same budget): `iterations` cycles with gradients after
    `spinup_cycles` cycles without. θ_s (log) by damped Gauss–Newton: each step
    ``δ = −(H + μ diag H)⁻¹ ∇L`` with the Gauss–Newton matrix ``H`` of the data and prior
    (forward-mode sensitivities of the observations, refreshed every `gn_refresh`
    iterations), damping `gn_damping`, steps clipped to `gn_max_step` per parameter,
    followed by `gn_relax` cycles without gradient (the state relaxes to the new θ_s);
    the closure by Adam at `lr_net`, cosine-decayed to a fifth. Closure: `closure_width`
    hidden units (two layers), largest rate `closure_rate` (1/s), penalty
    `lambda_closure`. Neural field:
    `nf_width` × `nf_depth`, `nf_harmonics` harmonics of the phase, `nf_iterations` Adam
    steps at `nf_lr`, divergence penalty `nf_lambda_div`, `nf_batch` collocation points.

    `methods`: the methods run (default all); `max_seeds`: at most this many of the
    requested seeds are run (``None``: all), so the quick preset fits its budget.

    **Uncertainty** (`_uq`): `uq` is ``"none"`` or ``"ensemble"`` (``"bayes"`` is refused
    with the reason): `hybrid_joint` again as `uq_members` members trained as one vmapped
    program (θ_s starts jittered by `uq_jitter` in log units), each sampled `uq_samples`
    times with an observation-space model error calibrated on a validation acquisition;
    `uq_error_refine` (> 1) shapes that error by the coarse lattice's discretisation error,
    estimated against the physics on a lattice that many times finer (1: a constant σ_m).
    """

    preset: str = "quick"
    waveform: str = "boileau2015/cca"
    mean_velocity: float = 0.04
    period: float = 0.8
    diameter: float = 4e-3
    length: float = 24e-3
    sac_radius: float = 3e-3
    neck_width: float = 4e-3
    cells_across: int = 12
    steps_per_cycle: int = 2560
    refine: int = 2
    truth_cycles: int = 4
    eval_cycles: int = 3
    record_phases: int = 16
    wall_points: int = 48
    wall: str = "bouzidi"
    true_mu_0: float = 0.08
    true_mu_inf: float = 0.0042
    true_lam: float = 2.2
    true_n: float = 0.42
    obs_stride: int = 2
    obs_phases: int = 16
    noise: float = 0.03
    ood: tuple[str, ...] = ("sac", "hr")
    ood_sac_radius: float = 3.6e-3
    ood_neck_width: float = 5e-3
    ood_period: float = 0.6
    iterations: int = 10
    spinup_cycles: int = 2
    gn_damping: float = 1e-2
    gn_max_step: float = 0.2
    gn_refresh: int = 4
    gn_relax: int = 1
    lr_net: float = 0.05
    closure_width: int = 12
    closure_rate: float = 30.0
    lambda_closure: float = 1.0
    nf_width: int = 48
    nf_depth: int = 3
    nf_harmonics: int = 3
    nf_iterations: int = 1500
    nf_lr: float = 3e-3
    nf_lambda_div: float = 0.1
    nf_batch: int = 1024
    methods: tuple[str, ...] = tuple(METHODS)
    max_seeds: int | None = 1
    uq: str = "none"
    uq_members: int = 4
    uq_samples: int = 10
    uq_error_refine: int = 2
    uq_jitter: float = 0.15

    def __post_init__(self):
        if self.uq == "bayes":
            raise ValueError(BAYES_UNSUPPORTED)
        if self.uq not in ("none", "ensemble"):
            raise ValueError(f"uq must be 'none' or 'ensemble', got {self.uq!r}.")
        if not (isinstance(self.uq_error_refine, int) and self.uq_error_refine >= 1):
            raise ValueError(f"uq_error_refine must be an integer >= 1, got "
                             f"{self.uq_error_refine!r}.")  # fmt: skip
        if self.uq_members < 2 or self.uq_samples < 1 or not self.uq_jitter >= 0:
            raise ValueError(
                f"uq_members must be >= 2, uq_samples >= 1 and uq_jitter >= 0, got "
                f"{self.uq_members}, {self.uq_samples}, {self.uq_jitter}."
            )
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}.")
        need = {"hybrid_joint": (), "sequential_hybrid": ("pure_physics_calibrated",)}
        for m, deps in need.items():
            if m in self.methods and any(d not in self.methods for d in deps):
                raise ValueError(f"method {m} needs {deps} in methods.")
        if set(self.ood) - {"sac", "hr"}:
            raise ValueError(f"ood sets are 'sac' and 'hr', got {self.ood}.")
        if self.record_phases % self.obs_phases:
            raise ValueError(
                f"obs_phases ({self.obs_phases}) must divide record_phases ({self.record_phases})."
            )
        if self.steps_per_cycle % self.record_phases:
            raise ValueError(
                f"record_phases ({self.record_phases}) must divide steps_per_cycle "
                f"({self.steps_per_cycle})."
            )
        if self.wall not in ("bouzidi", "halfway"):
            raise ValueError(f"wall must be 'bouzidi' or 'halfway', got {self.wall!r}.")
        if self.refine < 1 or self.cells_across < 4:
            raise ValueError("refine must be >= 1 and cells_across >= 4.")
        if self.max_seeds is not None and self.max_seeds < 1:
            raise ValueError(f"max_seeds must be >= 1 or None, got {self.max_seeds}.")

    def replace(self, **changes) -> AneurysmConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def true_theta(self) -> dict[str, float]:
        return {k: getattr(self, f"true_{k}") for k in CARREAU}

    @property
    def dx(self) -> float:
        return self.diameter / self.cells_across

    @property
    def dt(self) -> float:
        return self.period / self.steps_per_cycle


PRESETS = {
    "quick": AneurysmConfig(),
    "full": AneurysmConfig(
        preset="full", cells_across=16, steps_per_cycle=3392, record_phases=32,
        obs_phases=16, wall_points=64, truth_cycles=5, eval_cycles=4, iterations=60,
        closure_width=16, nf_iterations=4000, max_seeds=None,
    ),
}  # fmt: skip


# ============================================================================== cases
@dataclass(frozen=True)
class Case:
    """One evaluation set: a geometry and a heart period (s)."""

    name: str
    label: str
    geometry: SidewallAneurysm
    period: float


@dataclass(frozen=True)
class Lattice:
    """A case on a lattice: the flow model factory's fixed parts."""

    case: Case
    dx: float
    dt: float
    steps: int  # per cycle
    waveform: Waveform
    mask: np.ndarray
    wall: str = "bouzidi"

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def model(self, rheology) -> IncompressibleFlow2D:
        return IncompressibleFlow2D(rheology, self.case.geometry, self.dx, rho=BLOOD_DENSITY,
                                    inflow=self.waveform)  # fmt: skip

    def stepper(self, rheology) -> LatticeBoltzmann:
        return LatticeBoltzmann(self.model(rheology), self.dt, wall=self.wall)

    def sac_wall(self, n: int):
        return self.case.geometry.sac_wall(self.dx, n)


def synthetic_waveform(period: float = 1.0) -> Waveform:
    """A cerebral-like inflow (mean 1): systolic peak ≈ 1.8, diastolic flow ≈ 0.6."""
    t = np.linspace(0.0, period, 65)[:-1]
    p = 2 * np.pi * t / period
    v = 1.0 + 0.55 * np.sin(p - 0.3) + 0.25 * np.sin(2 * p - 1.2) + 0.1 * np.sin(3 * p - 2.0)
    return Waveform(tuple(t), tuple(v), period)
