r"""Uncertainty in the aneurysm study (``scilayers run aneurysm --uq ensemble``).

**Ensemble.** `hybrid_joint` (Carreau θ_s and the wall closure, jointly) trained again as a
deep ensemble of ``uq_members`` members: each member with its own closure initialisation
(key folded from the seed) and its own θ_s start (the Cho & Kensey values jittered by
``uq_jitter`` in log units, `scilayers.uq.draw_theta`), all trained as one program
vectorised over members (`train_members`: every jitted piece of the study's training
iteration — the forward-mode θ_s sensitivities, the cycle with gradients and the Adam
step, the relaxation cycles — under ``eqx.filter_vmap``; the damped Gauss–Newton solve is a
batched NumPy solve over the member axis). Member by member the arithmetic is that of
`AneurysmStudy.train_lattice`, so member ``i`` equals a model trained alone from the same
start to round-off. The members are evaluated from rest on every set, again vectorised
(`record_members`).

**Model error.** The members alone see only how the data constrain θ_s and the closure,
not what the coarse lattice cannot represent. An observation-space model-error term
``ε ~ N(0, σ_m²)``, independent per point and phase, is added to every member
(``uq_samples`` draws each), with ``σ_m² = max(0, skill² − noise² − spread²)`` fitted on a
**validation acquisition**: a second, independent noisy MRI scan of the training geometry
on the voxels between the training voxels (shifted by one cell in x and y) at every
recorded phase — never on the test sets. ``skill²`` is the mean squared difference between
the ensemble mean and the validation data, ``noise²`` the known MRI noise variance,
``spread²`` the members' variance ``(1 + 1/M) s²``: the ensemble is then calibrated
(spread/skill = 1) on the validation data.

The error's size is not the same everywhere: it follows the flow (faster phases, the jet
into the sac). With ``uq_error_refine = r > 1`` (the default, 2) it is shaped by the
coarse lattice's own discretisation error, estimated as a grid-convergence study does
(ASME V&V 20's numerical uncertainty; `discretisation_error`): the physics at the members'
mean θ_s run on a lattice ``r`` times finer, restricted to the coarse cells, minus the same
physics on the coarse lattice — per point and phase, no data involved. ``σ_m(point) = s ·
|d(point)|`` with the one scale ``s`` fitted on the validation acquisition as above; on an
out-of-domain set ``d`` is computed on that set's own geometry and heart rate, so the
intervals widen where the lattice's error grows. (The estimate's shape hardly depends on
``r``: at the true θ_s the magnitudes from ``r = 2`` and ``r = 3`` correlate at 0.997; the
scale absorbs the difference. In this synthetic study the lattice is the model's only
error besides θ_s, so the shape is a good one; on patient data model-form error would add
to it.) With ``uq_error_refine = 1`` σ_m is one constant, used out of domain as is.

**The scale's own uncertainty.** The validation scan pins σ_m down poorly: ``skill² −
noise²`` is a small difference of large numbers (in the quick study σ_m² = 1.5e-7 m²/s² ±
2.1e-7 at one standard error, the noise variance 1.4e-5). A plug-in σ_m then gives
intervals that are right only if the estimate happens to be (measured on the quick study's
members: the test errors were 1.2–1.4 times the plug-in σ, PICP 90 0.83 in domain). So the
scale's uncertainty is propagated, as a Bayesian predictive does with a nuisance parameter:
each of a member's ``uq_samples`` draws takes its own ``σ_m² ~ N(v̂, se²)`` truncated to
``σ_m² ≥ 0`` (`draw_sigma`: the posterior of σ_m² under a flat prior on ``[0, ∞)``), and
the shape as above. The scores with σ_m at its point estimate (shaped, and constant) are
recorded beside the main ones, on the same members and normal draws
(``error_model.point_scale_scores``, ``error_model.constant_sigma_scores``).

Why not `scilayers.uq.fit_spread_scale` (the other studies' EMOS recalibration): it needs
the truth of its validation windows, and here the validation truth is only measured
through the MRI noise, seven times the model error. Its factors must then be fitted to the
predictive of the noisy scan (members + σ_m + noise) and the noise variance taken off
again. Per phase (524 values in the quick study), a factor on that predictive's spread
has a sampling error of about 3 %, five times the model error's share of it (0.6 %), so
the per-phase factors (0.94–1.07) are noise: in truth space they shrink some phases'
intervals to nothing and widen others (ID PICP90 0.44, spread/skill 1.31, measured on the
quick study's members); pooled over phases the factor is 1.00, σ_m again. A scan whose
noise is small next to the model error (or many repeated scans) would be needed for more
than σ_m.

**The data-only baseline** (`field_block`, when `neural_field` is among the methods):
`neural_field` trained again as ``uq_members`` fields in one vmapped program, sampled with
the same kind of model error fitted on the same validation acquisition (constant: the
lattice's error is no error of a field's), its scale's uncertainty propagated alike. A
field knows one geometry, so it is scored on the sets of the training geometry only; it is
the reference of the study's CRPS target (``uq["baseline_method"]``).

**Scores.** Velocity at the MRI observation points of each set, every recorded phase of the
last cycle, against the noise-free truth (`scilayers.uq.uq_block`; the phase is the "time"
axis, and since a periodic flow has no lead time ``at_lead`` holds the metrics pooled over
the cycle). The sac TAWSS per wall point (profiles smoothed as in the study's TAWSS metric,
neck corners left out): coverage of the truth by the members' interval and its width. No
WSS is measured, so no term is calibrated for it: those intervals are the members' alone.
"""

from __future__ import annotations

import math
import time

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ... import params as slp
from ...metrics import (
    CALIBRATION_KEYS,
    EnsemblePrediction,
    as_gaussian,
    interval,
    picp,
    spread_skill,
)
from ...models import Carreau
from ...solvers import tawss_osi
from ...uq import draw_theta, stack_members, uq_block
from ._config import CARREAU, SHEAR_RATES
from ._geometry import restrict
from ._identifiability import _prior_vectors, power_law_consistency, viscosity
from ._lattice import (
    _ADAM,
    ClosedLattice,
    _combine,
    _cosine,
    _record,
    _spin,
    _theta_jacobian,
    _train_step,
)


# ==================================================================== vmapped pieces
@eqx.filter_jit
def _jacobians(theta_s, net, frozen, u, cells, consts):
    """`_theta_jacobian` of every member: ``(M, n_obs, p)``."""
    return eqx.filter_vmap(lambda t, n, v: _theta_jacobian(t, n, frozen, v, cells, consts))(
        theta_s, net, u
    )


@eqx.filter_jit
def _steps(theta_s, net, state, frozen, u, target, cells, lr, consts):
    """`_train_step` of every member (one cycle with gradients, Adam on the closure)."""

    def one(t, n, s, v):
        return _train_step((t, n), s, frozen, v, target, cells, lr, consts)

    return eqx.filter_vmap(one)(theta_s, net, state, u)


@eqx.filter_jit
def _relax(theta_s, net, frozen, u, cycles: int, steps: int):
    """``cycles`` cycles without gradient of every member from its own state."""
    return eqx.filter_vmap(lambda t, n, v: _spin(_combine((t, n), frozen), v, cycles, steps))(
        theta_s, net, u
    )


@eqx.filter_jit
def _adam_init(net):
    return eqx.filter_vmap(_ADAM.init)(net)


@eqx.filter_jit
def record_members(steppers, cycles: int, steps: int, phases: int, wall):
    """`_record` of a stacked ensemble of steppers (`scilayers.uq.stack_members`): from rest,
    the last cycle's velocity ``(M, P, 2, nx, ny)``, sac WSS ``(M, P, W)`` and max Mach
    ``(M,)``."""
    _, vel, wss, mach, _ = eqx.filter_vmap(lambda s: _record(s, cycles, steps, phases, wall))(
        steppers
    )
    return vel, wss, mach


def _where(ok, new, old):
    """Per member: ``new`` where ``ok`` (shape ``(M,)``), else ``old``."""

    def pick(a, b):
        if not eqx.is_array(a):
            return a
        return jnp.where(ok.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


# ======================================================================== training
def hybrid_members(study, lat, seed: int) -> list[ClosedLattice]:
    """The ensemble's starts: `hybrid_joint`'s start (Cho & Kensey θ_s, a closure switched
    off) with member ``i``'s own closure weights and θ_s jittered by ``uq_jitter``."""
    cfg = study.cfg
    key = jax.random.fold_in(jax.random.key(seed), 7_001)
    out = []
    for i in range(cfg.uq_members):
        kc, kt = jax.random.split(jax.random.fold_in(key, i))
        start = ClosedLattice(lat.stepper(Carreau()), study._closure(kc, lat))
        out.append(draw_theta(start, kt, "jitter", cfg.uq_jitter))
    return out


def train_members(study, starts, lat, obs, cells, *, seed: int, log, tag: str = "ensemble"):
    """`AneurysmStudy.train_lattice` (θ_s by damped Gauss–Newton and the closure by Adam)
    for every member of ``starts`` at once: one program vectorised over members.

    **Returns** ``(members, history, losses, seconds, diverged)``: the trained members (a
    list), the θ_s history ``{name: (M, iterations)}``, the losses ``(M, iterations)``, the
    wall time and a ``(M,)`` mask of members whose loss became non-finite (they are frozen
    from that iteration on and should be dropped)."""
    cfg = study.cfg
    t_start = time.perf_counter()
    parts = [slp.partition(s) for s in starts]
    frozen = parts[0][2]
    for i, (_, _, f) in enumerate(parts[1:], start=1):
        if not bool(eqx.tree_equal(f, frozen)):
            raise ValueError(
                f"ensemble member {i} differs from member 0 outside θ_s and the closure's "
                f"weights (lattice, geometry, settings); build every member on one lattice."
            )
    theta_s = stack_members([p[0] for p in parts])
    net = stack_members([p[1] for p in parts])
    M = len(starts)
    sigma = study._sigma()
    n_values = float(np.size(obs))
    consts = (sigma, n_values, float(cfg.lambda_closure), cfg.obs_phases,
              lat.steps // cfg.obs_phases, True)  # fmt: skip
    target, cells_j = jnp.asarray(obs), jnp.asarray(cells)
    state = _adam_init(net)
    _, unravel = jax.flatten_util.ravel_pytree(parts[0][0])
    prec, _ = _prior_vectors(parts[0][0])
    flat = np.stack([np.asarray(jax.flatten_util.ravel_pytree(p[0])[0]) for p in parts])
    dtype = flat.dtype

    def unravel_all(vecs):
        return stack_members([unravel(jnp.asarray(v, dtype)) for v in vecs])

    u0 = starts[0].lbm.initial_state()
    u = _relax(theta_s, net, frozen, jnp.broadcast_to(u0, (M, *u0.shape)), cfg.spinup_cycles,
               lat.steps)  # fmt: skip
    names = list(slp.values(starts[0].lbm.model.rheology))
    history = {k: [] for k in names}
    losses = []
    alive = np.ones(M, bool)
    gram = None
    for it in range(cfg.iterations):
        if it % cfg.gn_refresh == 0:
            J = np.asarray(_jacobians(theta_s, net, frozen, u, cells_j, consts))
            gram = np.einsum("mop,moq->mpq", J, J) / sigma**2
        lr = jnp.asarray(_cosine(cfg.lr_net, it, cfg.iterations, 0.2))
        new_net, new_state, loss, (u, data, pen), grad = _steps(
            theta_s, net, state, frozen, u, target, cells_j, lr, consts)  # fmt: skip
        loss = np.asarray(loss, float)
        alive &= np.isfinite(loss)
        ok = jnp.asarray(alive)
        net, state = _where(ok, new_net, net), _where(ok, new_state, state)
        H = gram + np.diag(prec)[None]
        D = np.einsum("mpp->mp", H)[:, :, None] * np.eye(len(prec))[None]
        g = n_values * np.asarray(grad, float)
        g = np.where(alive[:, None], g, 0.0)
        step = -np.linalg.solve(H + cfg.gn_damping * D, g[..., None])[..., 0]
        big = np.maximum(np.max(np.abs(step), axis=1), 1e-30)
        step *= np.minimum(1.0, cfg.gn_max_step / big)[:, None]
        flat = np.where(alive[:, None], flat + step.astype(dtype), flat)
        theta_s = unravel_all(flat)
        if cfg.gn_relax:
            u = _relax(theta_s, net, frozen, u, cfg.gn_relax, lat.steps)
        losses.append(loss)
        vals = slp.values(theta_s)
        for k in names:
            history[k].append(np.asarray(vals[k], float).reshape(M))
        if it % 4 == 0 or it == cfg.iterations - 1:
            th = ", ".join(f"{k} {np.median(history[k][-1]):.4g}" for k in names)
            log(f"aneurysm: {tag} seed {seed} it {it}: loss median {np.median(loss):.4g} "
                f"over {M} members ({int(alive.sum())} finite); θ_s median {th}")  # fmt: skip
    members = [_combine((t, n), frozen) for t, n in zip(_unstack(theta_s, M), _unstack(net, M),
                                                         strict=True)]  # fmt: skip
    hist = {k: np.stack(v, axis=1) if v else np.zeros((M, 0)) for k, v in history.items()}
    loss_arr = np.stack(losses, axis=1) if losses else np.zeros((M, 0))
    return members, hist, loss_arr, time.perf_counter() - t_start, ~alive


def _unstack(tree, M: int) -> list:
    return [jax.tree_util.tree_map(lambda x, i=i: x[i] if eqx.is_array(x) else x, tree)
            for i in range(M)]  # fmt: skip


# ====================================================================== validation
def validation_cells(lat) -> np.ndarray:
    """Flat indices of the validation voxels: the observation sub-grid shifted by one cell
    in x and y (the voxels between the training voxels), fluid cells only."""
    nx, ny = lat.shape
    sel = np.zeros(lat.shape, bool)
    sel[3 : nx - 2 : 2, 2::2] = True
    sel &= lat.mask
    return np.flatnonzero(sel)


def validation_data(study, truth_id: dict, lat, seed: int):
    """A second noisy acquisition of the training geometry on `validation_cells` at every
    recorded phase: ``(noisy (P, 2, n), cells)`` (independent noise)."""
    cfg = study.cfg
    cells = validation_cells(lat)
    vel = truth_id["vel"].reshape(cfg.record_phases, 2, -1)[:, :, cells]
    rng = np.random.default_rng(20_000 + seed)
    return vel + cfg.noise * study.speed_ref * rng.standard_normal(vel.shape), cells


def fit_model_error(members_vel, val_obs, noise_std: float, shape=None) -> dict:
    """The model error's scale with spread/skill = 1 on the validation data. ``σ_m(point)
    = s · shape(point)`` with ``s² = max(0, skill² − noise² − spread²) / mean(shape²)``
    (``shape = None``: 1 everywhere, a constant σ_m; see the module docstring).
    ``members_vel``: ``(M, P, 2, n)`` at the validation points; ``val_obs`` and ``shape``:
    ``(P, 2, n)``. Where the MRI noise dominates the residuals, ``skill² − noise²`` is a small
    difference of large numbers: ``sigma_1se_range`` is the rms σ_m at ± one standard error
    of ``skill²``."""
    M = members_vel.shape[0]
    mean = members_vel.mean(axis=0)
    sq = (mean - val_obs) ** 2
    skill2 = float(np.mean(sq))
    se2 = float(np.std(sq) / math.sqrt(sq.size))  # of skill², points taken as independent
    spread2 = float(np.mean((1 + 1 / M) * members_vel.var(axis=0, ddof=1)))
    model2 = max(skill2 - noise_std**2 - spread2, 0.0)
    lo, hi = (math.sqrt(max(skill2 - noise_std**2 - spread2 + d, 0.0)) for d in (-se2, se2))
    shape2 = 1.0 if shape is None else float(np.mean(np.asarray(shape, float) ** 2))
    kind = ("Gaussian per point and phase, σ_m fitted on a validation acquisition "
            "(spread/skill = 1 there)")  # fmt: skip
    if shape is not None:
        kind += (", shaped by the coarse lattice's discretisation error (grid-convergence "
                 "estimate)")  # fmt: skip
    return {
        "kind": kind,
        "sigma": math.sqrt(model2),  # rms over the validation points
        "scale": math.sqrt(model2 / max(shape2, 1e-300)),
        "sigma_1se_range": [lo, hi],
        "variance": skill2 - noise_std**2 - spread2,  # the estimate of σ_m², unclipped
        "variance_se": se2,
        "shape_rms": math.sqrt(shape2),
        "validation_rmse": math.sqrt(skill2),
        "noise_std": noise_std,
        "members_spread": math.sqrt(spread2),
        "members_only_spread_skill": math.sqrt(spread2 / max(skill2 - noise_std**2, 1e-30)),
        "validation_points": int(members_vel[0].size),
    }  # fmt: skip


def discretisation_error(study, rheology, case, refine: int) -> np.ndarray:
    """The coarse lattice's discretisation error for ``rheology`` (the physics alone, no
    closure), estimated as a grid-convergence study does (the numerical uncertainty of
    ASME V&V 20): the same model on a lattice ``refine`` times finer (in space and time),
    restricted to the coarse cells, minus the model on the coarse lattice — the last cycle's
    velocity ``(P, 2, nx, ny)``. Needs no data."""
    cfg = study.cfg
    coarse, fine = study.lattice(case), study.lattice(case, refine)
    vc = study.evaluate_lattice(rheology, None, case)[0]
    _, vf, _, _, _ = _record(fine.stepper(rheology), cfg.eval_cycles, fine.steps,
                             cfg.record_phases, fine.sac_wall(cfg.wall_points))  # fmt: skip
    return restrict(np.asarray(vf, float), refine, coarse.shape) - vc


def error_shape(d: np.ndarray) -> np.ndarray:
    """The model error's shape from a discretisation-error field ``d`` ``(P, 2, n)``: its
    magnitude per point and phase (rms over the two components), on both components."""
    mag = np.sqrt(np.mean(d**2, axis=-2, keepdims=True))
    return np.broadcast_to(mag, d.shape)


def draw_sigma(error: dict, size, key) -> np.ndarray:
    """Draws of the rms σ_m from its own uncertainty: ``σ_m² ~ N(v̂, se²)`` truncated to
    ``σ_m² ≥ 0`` — the posterior of σ_m² under a flat prior on ``[0, ∞)`` given the
    validation estimate ``v̂ = skill² − noise² − spread²`` (``error["variance"]``) and its
    standard error (``error["variance_se"]``; `fit_model_error`). With ``se = 0`` every draw
    is the point estimate ``error["sigma"]``."""
    v, se = float(error["variance"]), float(error["variance_se"])
    if not se > 0:
        return np.full(size, error["sigma"])
    a = -v / se  # the truncation point in standard units
    if a < 1:
        xi = np.asarray(jax.random.truncated_normal(key, a, np.inf, size), float)
        return np.sqrt(np.maximum(v + se * xi, 0.0))
    # in the tail the inverse CDF loses precision (float32 without x64): Robert's (1995)
    # exact rejection sampler, x = a + Exp(λ) accepted with probability exp(−(x − λ)²/2)
    lam = 0.5 * (a + math.sqrt(a * a + 4.0))
    n, out = int(np.prod(size)), np.empty(0)
    while out.size < n:
        key, k1, k2 = jax.random.split(key, 3)
        x = a + np.asarray(jax.random.exponential(k1, (2 * n,)), float) / lam
        u = np.asarray(jax.random.uniform(k2, (2 * n,)), float)
        out = np.concatenate([out, x[u <= np.exp(-0.5 * (x - lam) ** 2)]])
    return np.sqrt(np.maximum(v + se * out[:n].reshape(size), 0.0))


# =========================================================================== the block
def probe(lat, ocells, true: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The generic interval figure's arrays ``(truth, mean, lo 90, hi 90)`` of u_x over the
    cycle at the observed point nearest the vessel's centreline below the neck."""
    g = lat.case.geometry
    ci, cj = np.unravel_index(ocells, lat.shape)
    d = ((ci + 0.5) * lat.dx - g.neck_x) ** 2 + ((cj - 0.5) * lat.dx - g.diameter / 2) ** 2
    p = int(np.argmin(d))
    ux = draws[:, :, 0, p]
    lo, hi = interval(EnsemblePrediction(ux), 0.9)
    return np.stack([true[:, 0, p], ux.mean(0), lo, hi]).astype(np.float32)


def score_block(sets: dict, compare: dict, error: dict) -> dict:
    """`uq_block` of the draws (a periodic flow has no lead time: ``at_lead`` holds the
    cycle, pooled); the scores of each comparison's draws go to
    ``error["<name>_scores"]``."""
    block = uq_block(sets, lead=None, skip_initial=False)
    for s in sets:
        block[s]["at_lead"] = {"step": None, **{k: block[s][k] for k in CALIBRATION_KEYS}}
    for name, alt_sets in compare.items():
        alt = uq_block(alt_sets, lead=None, skip_initial=False, by_step=False,
                       reliability_diagram=False)  # fmt: skip
        error[f"{name}_scores"] = {
            s: {k: alt[s][k] for k in ("picp_50", "picp_90", "picp_95", "mpiw_90", "crps",
                                       "spread_skill")}  # fmt: skip
            for s in alt_sets
        }
    return block


def draw_set(name, ens, true, error: dict, unit, alts: dict, samples: int, key, sets: dict,
             compare: dict) -> np.ndarray:
    """The draws of one set (members ``ens`` ``(M, P, 2, n)`` plus the model error: each draw's
    rms σ_m from its own uncertainty, `draw_sigma`, times the pattern ``unit``), put in
    ``sets[name]`` with the truth; and, on the same members and normal draws, σ_m at its
    point estimate times each pattern of ``alts`` (``{comparison: pattern}``), put in
    ``compare[comparison][name]``. Returns the draws ``(M·S, P, 2, n)``."""
    rms = draw_sigma(error, (ens.shape[0], samples), jax.random.fold_in(key, 1))
    draws = sample(ens, rms[:, :, None, None, None] * unit, samples, key)
    sets[name] = (true[None], EnsemblePrediction(draws[:, None]))
    for alt, pattern in alts.items():
        a = sample(ens, error["sigma"] * pattern, samples, key)
        compare.setdefault(alt, {})[name] = (true[None], EnsemblePrediction(a[:, None]))
    return draws


def sample(members_vel: np.ndarray, sigma, samples: int, key) -> np.ndarray:
    """``(M·S, ...)`` draws: each member plus ``samples`` draws of the model error (``sigma``:
    a number, per point (broadcastable to a member's shape), or per draw and point
    (broadcastable to ``(M, samples, *member)``))."""
    M = members_vel.shape[0]
    z = np.asarray(jax.random.normal(key, (M, samples, *members_vel.shape[1:])), float)
    return (members_vel[:, None] + sigma * z).reshape(M * samples, *members_vel.shape[1:])


def tawss_intervals(study, lat, members_wss: np.ndarray, truth_wss: np.ndarray) -> dict:
    """Per sac-wall point (smoothed profiles, neck corners left out): does the members'
    interval cover the true TAWSS, and how wide is it (relative to the truth)."""
    S, keep = study.wall_smoothing(lat)
    ta = np.stack([np.asarray(tawss_osi(w)[0], float) for w in members_wss])
    ens = (ta @ S.T)[:, keep]  # (M, kept points)
    tt = (S @ np.asarray(tawss_osi(truth_wss)[0], float))[keep]
    M = ens.shape[0]
    lo, hi = ens.min(0), ens.max(0)
    members = EnsemblePrediction(ens)
    gauss = as_gaussian(members)  # mean ± 1.645·√(1 + 1/M)·s
    lo90, hi90 = interval(gauss, 0.9)
    sac_mean = ens.mean(axis=1)
    sac_lo, sac_hi = interval(as_gaussian(EnsemblePrediction(sac_mean[:, None])), 0.9)
    return {
        "points": int(keep.sum()),
        "members_range": {
            "nominal": (M - 1) / (M + 1),
            "picp": float(np.mean((tt >= lo) & (tt <= hi))),
            "width_rel": float(np.mean((hi - lo) / tt)),
        },
        "gaussian_90": {
            "picp": float(picp(tt, gauss, 0.9)),
            "width_rel": float(np.mean((hi90 - lo90) / tt)),
        },
        "spread_skill": float(spread_skill(tt, members)),
        "rel_error_of_mean": float(np.linalg.norm(ens.mean(0) - tt) / np.linalg.norm(tt)),
        "sac_mean": {
            "true": float(tt.mean()), "members": sac_mean.tolist(),
            "mean": float(sac_mean.mean()), "std": float(sac_mean.std(ddof=1)),
            "covered_range": bool(sac_mean.min() <= tt.mean() <= sac_mean.max()),
            "covered_gaussian_90": bool(sac_lo[0] <= tt.mean() <= sac_hi[0]),
        },
        "_arrays": (np.asarray(lat.sac_wall(study.cfg.wall_points).arclength)[keep], tt,
                    ens.mean(0), lo, hi, lo90, hi90),
    }  # fmt: skip


def _member_theta(members: list) -> dict[str, list[float]]:
    """Each Carreau θ_s of every member: ``{name: [value per member]}``."""
    return {k: [float(slp.values(m.lbm.model.rheology)[k]) for m in members] for k in CARREAU}


def mean_rheology(members: list) -> Carreau:
    """The Carreau law of the members' geometric-mean θ_s."""
    rows = _member_theta(members)
    return Carreau(**{k: float(np.exp(np.mean(np.log(v)))) for k, v in rows.items()})


def theta_block(members: list, ident: dict, true_theta: dict) -> dict:
    """θ_s across members vs the truth, with the identifiability diagnostic's verdict;
    the viscosities at the study's shear rates and K as derived rows."""
    poorly = set(ident.get("poorly_identified", []))
    combos = ident.get("combinations", {})
    rows = _member_theta(members)
    thetas = [{k: rows[k][i] for k in CARREAU} for i in range(len(members))]
    derived = {"K": ([power_law_consistency(t) for t in thetas], power_law_consistency(true_theta),
                     combos.get("K", {}).get("identified"))}  # fmt: skip
    for g in SHEAR_RATES:
        derived[f"mu({g:g}/s)"] = ([viscosity(t, g) for t in thetas], viscosity(true_theta, g),
                                   combos.get(f"mu({g:g}/s)", {}).get("identified"))  # fmt: skip
    out = {}
    for k, vals in rows.items():
        out[k] = (vals, true_theta[k], k not in poorly)
    out.update(derived)
    block = {}
    for k, (vals, true, identified) in out.items():
        v = np.asarray(vals, float)
        mean, std = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
        ci = [mean - 1.96 * std, mean + 1.96 * std]
        block[k] = {
            "mean": mean, "std": std, "members": v.tolist(), "ci95": ci, "true": float(true),
            "covered": bool(ci[0] <= true <= ci[1]),
            "covered_by_members": bool(v.min() <= true <= v.max()),
            "rel_error_of_mean": abs(mean / true - 1.0), "rel_std": std / abs(mean),
            "identified": identified,
        }  # fmt: skip
    return block


def ensemble_block(study, truth, obs, cells, cases, ident, seed: int, log):
    """The ``uq`` entry of ``hybrid_joint`` (ensemble), and the arrays for the report."""
    cfg = study.cfg
    lat = study.lattice(cases[0])
    t0 = time.perf_counter()
    starts = hybrid_members(study, lat, seed)
    log(f"aneurysm: uq ensemble: training {cfg.uq_members} hybrid_joint members (vmapped)")
    members, history, losses, train_s, diverged = train_members(
        study, starts, lat, obs, cells, seed=seed, log=log, tag="uq hybrid_joint")  # fmt: skip
    kept = [m for m, d in zip(members, diverged, strict=True) if not d]
    if len(kept) < 2:
        raise ValueError(
            f"{int(diverged.sum())} of {len(members)} hybrid_joint ensemble members diverged; "
            f"reduce gn_max_step or uq_jitter."
        )
    t1 = time.perf_counter()
    preds = {}
    for case in cases:
        clat = study.lattice(case)
        steppers = stack_members([ClosedLattice(clat.stepper(m.lbm.model.rheology),
                                                study._move_closure(m.closure, clat))
                                  for m in kept])  # fmt: skip
        vel, wss, mach = record_members(steppers, cfg.eval_cycles, clat.steps, cfg.record_phases,
                                        clat.sac_wall(cfg.wall_points))  # fmt: skip
        preds[case.name] = (np.asarray(vel, float), np.asarray(wss, float),
                            float(np.max(np.asarray(mach))))  # fmt: skip
    eval_s = time.perf_counter() - t1
    # model error on the validation acquisition (training geometry only)
    val_obs, val_cells = validation_data(study, truth["id"], lat, seed)
    P = cfg.record_phases
    at_val = preds["id"][0].reshape(len(kept), P, 2, -1)[..., val_cells]
    shapes, t2 = {}, time.perf_counter()
    if cfg.uq_error_refine > 1:  # the error's shape: the lattice's discretisation error
        rheology = mean_rheology(kept)
        for case in cases:
            d = discretisation_error(study, rheology, case, cfg.uq_error_refine)
            shapes[case.name] = d.reshape(P, 2, -1)
    shape_s = time.perf_counter() - t2
    val_shape = error_shape(shapes["id"][..., val_cells]) if shapes else None
    error = fit_model_error(at_val, val_obs, cfg.noise * study.speed_ref, val_shape)
    sets, tawss, shown, compare = {}, {}, {}, {}
    key = jax.random.fold_in(jax.random.key(seed), 7_002)
    for j, case in enumerate(cases):
        clat = study.lattice(case)
        ocells = study.observation_cells(clat)
        vel, wss, _ = preds[case.name]
        ens = vel.reshape(len(kept), P, 2, -1)[..., ocells]
        true = truth[case.name]["vel"].reshape(P, 2, -1)[:, :, ocells]
        # σ_m's pattern, rms 1 over the validation points (constant without a shape)
        unit = 1.0
        if shapes:
            unit = error_shape(shapes[case.name][..., ocells]) / error["shape_rms"]
            error.setdefault("sigma_rms_by_set", {})[case.name] = float(
                error["sigma"] * np.sqrt(np.mean(unit**2)))  # fmt: skip
        alts = {"constant_sigma": 1.0, **({"point_scale": unit} if shapes else {})}
        draws = draw_set(case.name, ens, true, error, unit, alts, cfg.uq_samples,
                         jax.random.fold_in(key, j), sets, compare)  # fmt: skip
        t = tawss_intervals(study, clat, wss, truth[case.name]["wss"])
        shown[f"tawss_{case.name}"] = np.stack(t.pop("_arrays")).astype(np.float32)
        tawss[case.name] = t
        shown[case.name] = probe(clat, ocells, true, draws)
    block = score_block(sets, compare, error)
    for s in sets:
        block[s]["tawss"] = tawss[s]
        block[s]["max_mach"] = preds[s][2]
    block["theta"] = theta_block(kept, ident, cfg.true_theta)
    block["theta_history"] = {k: v.tolist() for k, v in history.items()}
    block["losses"] = losses.tolist()
    if shapes:
        error.update(refine=cfg.uq_error_refine, shape_seconds=shape_s)
    block["error_model"] = error
    block["members"] = len(kept)
    block["diverged_members"] = int(diverged.sum())
    block["train_seconds"] = train_s
    block["forecast_seconds"] = eval_s
    block["seconds"] = time.perf_counter() - t0
    shape_note = "Model error constant over points and phases."
    if shapes:
        by_set = ", ".join(f"{k} {1e3 * v:.3g}" for k, v in error["sigma_rms_by_set"].items())
        shape_note = (
            f"Model error shaped by the coarse lattice's discretisation error (the physics "
            f"with the members' mean θ_s on a {cfg.uq_error_refine}x finer lattice minus on "
            f"the coarse one, per point and phase; {shape_s:.0f} s), its scale fitted on the "
            f"validation acquisition; rms σ_m by set: {by_set} mm/s."
        )
    block["notes"] = [
        f"{len(kept)} members trained as one vmapped program ({train_s:.0f} s; "
        f"hybrid_joint alone trains {cfg.iterations} cycles too); evaluated from rest on "
        f"every set ({eval_s:.0f} s).",
        shape_note,
        f"Model error σ_m = {1e3 * error['sigma']:.3g} mm/s (rms) fitted on a validation "
        f"acquisition ({error['validation_points']} values, noise "
        f"{1e3 * error['noise_std']:.3g} mm/s; ± one standard error of the validation "
        f"skill: σ_m in [{1e3 * error['sigma_1se_range'][0]:.2g}, "
        f"{1e3 * error['sigma_1se_range'][1]:.2g}] mm/s); the members alone had "
        f"spread/skill {error['members_only_spread_skill']:.2f} there. That uncertainty of "
        f"σ_m is propagated: each draw takes its own σ_m² from N(estimate, se²) truncated "
        f"at 0 (its posterior under a flat prior).",
        "TAWSS intervals are the members' alone (no WSS is measured, so no error term is "
        "calibrated for it).",
    ]
    return block, shown


def field_block(study, truth, obs, cells, cases, seed: int, log):
    """The ``uq`` entry of the data-only baseline, `neural_field`, as a deep ensemble of
    ``uq_members`` fields (own initialisation and collocation draws; one vmapped program,
    `AneurysmStudy.train_field`), sampled like hybrid_joint's members with a model error
    fitted on the same validation acquisition — constant over points and phases (the
    lattice's discretisation error is no error of a field's), its scale's uncertainty
    propagated (`draw_sigma`). A field knows one geometry: it is scored on the sets of the
    training geometry only (in domain and the other heart rate, where it replays the
    trained cycle over the new period)."""
    cfg = study.cfg
    lat = study.lattice(cases[0])
    t0 = time.perf_counter()
    log(f"aneurysm: uq ensemble: training {cfg.uq_members} neural_field members (vmapped)")
    fields, losses, train_s = study.train_field(lat, obs, cells, seed, log,
                                                members=cfg.uq_members)  # fmt: skip
    preds = {c.name: study.evaluate_fields(fields, c) for c in cases
             if c.geometry == cases[0].geometry}  # fmt: skip
    P, M, S = cfg.record_phases, cfg.uq_members, cfg.uq_samples
    val_obs, val_cells = validation_data(study, truth["id"], lat, seed)
    at_val = preds["id"].reshape(M, P, 2, -1)[..., val_cells]
    error = fit_model_error(at_val, val_obs, cfg.noise * study.speed_ref)
    key = jax.random.fold_in(jax.random.key(seed), 7_003)
    sets, compare, shown = {}, {}, {}
    for j, case in enumerate(c for c in cases if c.name in preds):
        clat = study.lattice(case)
        ocells = study.observation_cells(clat)
        ens = preds[case.name].reshape(M, P, 2, -1)[..., ocells]
        true = truth[case.name]["vel"].reshape(P, 2, -1)[:, :, ocells]
        draws = draw_set(case.name, ens, true, error, 1.0, {"constant_sigma": 1.0}, S,
                         jax.random.fold_in(key, j), sets, compare)  # fmt: skip
        shown[case.name] = probe(clat, ocells, true, draws)
    block = score_block(sets, compare, error)
    block["error_model"] = error
    block["members"] = M
    block["losses"] = losses[-1]
    block["train_seconds"] = train_s
    block["seconds"] = time.perf_counter() - t0
    block["notes"] = [
        f"neural_field as {M} fields trained as one vmapped program ({train_s:.0f} s), "
        f"model error σ_m = {1e3 * error['sigma']:.3g} mm/s (rms, constant) fitted on the "
        f"same validation acquisition as hybrid_joint's, its uncertainty propagated; scored "
        f"on the sets of the training geometry ({', '.join(preds)}).",
    ]
    return block, shown


def wrap(study, entry: dict, seed: int, field: dict | None = None) -> dict:
    """``results.json["uq"]``: the block of the other studies — hybrid_joint and, when it
    ran, the data-only baseline's ensemble (`field_block`), the reference of the CRPS
    target (``"baseline_method"``)."""
    cfg = study.cfg
    refine = entry["error_model"].get("refine")
    shaped = (f" shaped per point and phase by the coarse lattice's discretisation error (the "
              f"physics on a {refine}x finer lattice minus on the coarse one, per set)"
              if refine else "")  # fmt: skip
    return {
        "kind": "ensemble",
        "lead": None,
        "lead_label": "over the last cardiac cycle (a periodic flow has no lead time)",
        "time_label": "phase of the cardiac cycle (recorded phase index)",
        "description": (
            f"a deep ensemble of hybrid_joint ({entry['members']} members: own closure "
            f"weights, θ_s starts jittered by {cfg.uq_jitter:g} in log units; one vmapped "
            f"program), each member sampled {cfg.uq_samples} times with an observation-space "
            f"model error{shaped} (rms σ_m = {1e3 * entry['error_model']['sigma']:.3g} mm/s) "
            f"fitted on a validation acquisition (voxels between the training voxels, every "
            f"phase, independent noise), each draw with its own σ_m from that fit's "
            f"uncertainty; scored on the velocity at the MRI observation points of "
            f"each set at all {cfg.record_phases} recorded phases against the noise-free truth"
        ),
        "trajectories": 1,
        "members": cfg.uq_members,
        "samples_per_member": cfg.uq_samples,
        "seed": seed,
        "baseline": (
            f"the data-only baseline is neural_field (there is no time-stepping emulator), "
            f"as an ensemble of {field['members']} fields with the same validation-fitted "
            f"model error (constant); a field knows one geometry, so it is scored in domain "
            f"and at the other heart rate only" if field else
            "no pure-data baseline has an ensemble in this run (neural_field not run)"),
        "baseline_method": "neural_field" if field else None,
        "methods": {"hybrid_joint": entry, **({"neural_field": field} if field else {})},
    }  # fmt: skip


def log_block(entry: dict, log, method: str = "hybrid_joint") -> None:
    for s, b in entry.items():
        if isinstance(b, dict) and "picp_90" in b:
            t = b.get("tawss")
            wall = "" if t is None else (
                f"; TAWSS 90 % (Gaussian) covers {t['gaussian_90']['picp']:.2f} of the sac "
                f"wall, width {100 * t['gaussian_90']['width_rel']:.1f} %")  # fmt: skip
            log(f"aneurysm: uq {method} {s}: PICP90 {b['picp_90']:.3f}, spread/skill "
                f"{b['spread_skill']:.3f}, CRPS {b['crps']:.3g}{wall}")  # fmt: skip


def targets(results: dict) -> list[dict]:
    """The issue-11 targets (the engine's, in domain) and the TAWSS coverage."""
    from .._uq import uq_targets

    uq = results.get("uq")
    out = uq_targets(uq)
    if not uq:
        return out
    entry = uq["methods"]["hybrid_joint"]
    for s in results["eval_sets"]:
        t = (entry.get(s) or {}).get("tawss")
        if t:
            g = t["gaussian_90"]
            out.append({"name": f"uq (ensemble), {s}: hybrid_joint sac TAWSS 90 % interval "
                                "covers the truth along the sac wall (members only)",
                        "value": f"{g['picp']:.2f} (width {100 * g['width_rel']:.0f} % of "
                                 f"the truth)",
                        "target": "0.85-0.95 (reported)",
                        "pass": bool(0.85 <= g["picp"] <= 0.95)})  # fmt: skip
    return out


def tawss_table(uq: dict) -> dict:
    """The study table of the sac TAWSS intervals and the sac-mean TAWSS per set."""
    entry = uq["methods"]["hybrid_joint"]
    rows = []
    for s, b in entry.items():
        t = b.get("tawss") if isinstance(b, dict) else None
        if not t:
            continue
        g, r, m = t["gaussian_90"], t["members_range"], t["sac_mean"]
        rows.append([
            s, f"{g['picp']:.2f}", f"{100 * g['width_rel']:.1f}",
            f"{r['picp']:.2f} (nominal {r['nominal']:.2f})", f"{100 * t['rel_error_of_mean']:.1f}",
            f"{t['spread_skill']:.2f}",
            f"{m['mean']:.4g} ± {m['std']:.2g} vs {m['true']:.4g} "
            f"({'covered' if m['covered_gaussian_90'] else 'not covered'})",
        ])  # fmt: skip
    return {
        "title": "Uncertainty of the sac TAWSS (hybrid_joint ensemble)",
        "columns": ["Set", "PICP 90 % (Gaussian)", "width 90 % (% of truth)",
                    "members' range covers", "error of the mean (%)", "spread/skill",
                    "sac-mean TAWSS (Pa), members"],
        "rows": rows,
        "caption": "Per point of the sac wall (profiles smoothed over one coarse cell of arc, "
                   "neck corners left out): the members' 90 % interval (mean ± 1.645 "
                   "√(1 + 1/M) s; with M < 19 members the rank-position 90 % interval is the "
                   "members' range, whose nominal coverage is (M − 1)/(M + 1)) against the "
                   "fine-lattice truth. No WSS is measured, so these intervals carry no "
                   "calibrated error term: they show how much the data leave the TAWSS open, "
                   "not what the coarse lattice gets wrong.",
    }  # fmt: skip
