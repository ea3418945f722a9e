r"""Cerebral aneurysm study (issue 10 §2): a patient's blood rheology from 4-D-flow-MRI-like
velocity data, and the wall shear stress (WSS) in the sac.

The question a clinician asks of patient-specific CFD is the time-averaged WSS (TAWSS) and
the oscillatory shear index (OSI) on the aneurysm sac. Both depend on the blood's
shear-thinning rheology, whose parameters vary between patients, and on the resolution of
the solver. This study:

- **Truth**: the Carreau fluid with a "patient's" θ_s (`true_*`, away from the textbook
  values) in a side-wall aneurysm, solved by the D2Q9 lattice Boltzmann scheme on a lattice
  `refine` times finer than the models' (acoustic scaling: ``dx`` and ``dt`` both divided),
  run to its periodic state; its last cycle is recorded at `record_phases` phases.
- **Observations** (4-D flow MRI): the truth averaged over the coarse cells (voxels) of a
  sub-grid (every `obs_stride` cells of the lumen and sac), at `obs_phases` phases of the
  last cycle, with Gaussian noise of standard deviation `noise` × the peak centreline
  inflow speed.
- **Methods** (the coarse lattice, ``cells_across`` cells across the vessel):
  ``pure_physics`` (Newtonian, μ = 0.0035 Pa s, the clinical default), ``carreau_prior``
  (Cho & Kensey 1991), ``pure_physics_calibrated`` (Carreau θ_s fitted to the data),
  ``hybrid_joint`` (θ_s and a near-wall closure fitted together), ``sequential_hybrid``
  (θ_s calibrated first, then the closure with θ_s fixed), ``neural_field`` (an MLP of
  position and phase fitted to the data with a soft divergence penalty; no-slip by
  construction; WSS from its own gradients with the Cho & Kensey viscosity) and the
  reference ``obs_mean`` (the time mean of the observations).
- **Training**: each iteration runs one cardiac cycle with gradients (blocks of the
  cycle recomputed in the backward pass, `jax.checkpoint`); θ_s (4 numbers, log) take
  damped Gauss–Newton steps, the gradient preconditioned by the Gauss–Newton matrix of
  the data and prior (forward-mode sensitivities of the observations, refreshed every few
  iterations; Adam, tried first, was still wandering along the sloppy direction after 16
  cycles), the closure's weights Adam steps, both from the same reverse-mode gradient.
  Each cycle starts from the end state of the previous one, relaxed by one cycle without
  gradient after a θ_s step — a periodic state without a spin-up per iteration (a
  truncated gradient: the dependence of the initial state on θ is dropped; at the truth,
  noise-free, it is zero, as is the full gradient). The loss is the data misfit over σ²
  (mean), a Gaussian prior on log θ_s (the Params' log-normal priors: MAP, so directions
  the data do not see stay at the textbook values), and for the hybrids
  ``lambda_closure`` × the mean square of the closure's force in units of its bound.
- **Closure** (`WallClosure`): a body force ``F = −ρ b(x) K u`` added to the coarse
  lattice's collision (Guo forcing), where ``K`` (2×2, rates in 1/s, bounded by
  ``rate_max``) is a small MLP of local features (distance to the true wall, how far the
  lattice's staircase wall is from it, the wall normal, speed, shear rate) and
  ``b(d)`` (zero beyond 3 cells) confines it to the cells next to the wall, where a coarse
  lattice misplaces the curved wall. It vanishes at rest and starts at zero. Identifiability of
  θ_s against the closure: the closure acts only near walls, sees no time, and is
  penalised; θ_s must explain the bulk.
- **Metrics**, per evaluation set: velocity MSE on the coarse grid against the truth
  averaged over coarse cells (``{s}_mse``, ``{s}_nmse``), RMSE at the observation points
  against the noise-free truth, TAWSS error in the sac (relative L2 along the sac wall of
  the profiles smoothed over one coarse cell of arc length, the neck corners — where WSS
  is singular — left out), the error of the sac-averaged TAWSS, the OSI error; θ_s errors
  and the errors of the learned viscosity μ(γ̇) at 1, 10 and 100 /s; the Fisher
  information of the observations for the Carreau parameters, and by the delta method
  for those viscosities and for ``K = (μ0 − μ∞) λ^(n−1)`` (which of them the data
  identify).
- **Out of domain** (never trained on): a larger sac with a wider neck (``ood_sac``), and a
  higher heart rate (``ood_hr``); learned θ_s and closure are carried over unchanged.

The package: `_config` (configuration, presets, cases, lattices), `_geometry` (restriction
of the truth, wall distance, the closure's features), `_lattice` (`WallClosure`,
`ClosedLattice`, recording a cycle, the jitted training steps), `_field` (the neural-field
baseline), `_identifiability` (θ_s priors, Fisher block, viscosities), `_study`
(`AneurysmStudy`: truth, observations, training, evaluation, the run), `_report`
(results, tables, notes, targets, figures) and `_uq` (``--uq ensemble``: a hybrid_joint
ensemble trained as one vmapped program, a model-error term calibrated on a validation
acquisition, the ``uq`` block; ``--uq bayes`` is refused with the reason).
"""

from ._config import CARREAU as CARREAU
from ._config import METHODS as METHODS
from ._config import NEWTONIAN_MU as NEWTONIAN_MU
from ._config import PRESETS as PRESETS
from ._config import AneurysmConfig as AneurysmConfig
from ._config import Case as Case
from ._config import Lattice as Lattice
from ._config import synthetic_waveform as synthetic_waveform
from ._field import NeuralField as NeuralField
from ._geometry import closure_geometry as closure_geometry
from ._geometry import restrict as restrict
from ._geometry import wall_distance as wall_distance
from ._identifiability import fisher_block as fisher_block
from ._identifiability import power_law_consistency as power_law_consistency
from ._identifiability import viscosity as viscosity
from ._lattice import ClosedLattice as ClosedLattice
from ._lattice import WallClosure as WallClosure
from ._lattice import run_blocks as run_blocks
from ._study import AneurysmStudy as AneurysmStudy
