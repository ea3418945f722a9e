"""Uncertainty in a study (``scilayers run NAME --uq ensemble|bayes``): the ``uq`` block of
``results.json`` for the methods that have UQ.

``ensemble``
    Each method of ``cfg.uq_methods`` (default ``hybrid_joint`` and ``neural_emulator``)
    is trained again as a deep ensemble of ``cfg.uq_members`` members — one compiled
    program vectorised over members (`scilayers.uq.train_ensemble`), each member with its
    own network initialisation, its own θ_s start (jittered around the prior) and its own
    data order, with the method's training config and budget (no validation or early
    stopping). Model error correlated in time is an AR(1) process per state component,
    fitted to the members' one-step residuals on the held-out calibration windows
    (`Problem.calibration`: the validation trajectories, or longer windows of the same
    held-out period where those are shorter than the main lead; ``|φ|`` clipped to 0.98;
    `scilayers.uq.fit_ar1`), its σ scaled so that the spread–skill ratio at the main lead
    time is 1 on them (variance inflation tuned on held-out data); its mean is
    not used (a bias of the validation residuals did not carry to the test periods); every
    member is rolled out ``cfg.uq_samples`` times with it (`scilayers.uq.ensemble_forecast`).
    Then the spread is recalibrated per lead time on
    the same held-out windows (`scilayers.uq.fit_spread_scale`, EMOS: a factor for
    spread–skill 1, a floor of the component's typical spread for nominal 90 % coverage,
    and per-component factors where the state mixes quantities), both recorded as
    ``error_model.calibration``. The same error model and recalibration are used out of
    domain, so whether the intervals widen there is a property of the members, not of a
    refit.
``bayes``
    The NUTS posterior of θ_s of the trained ``hybrid_joint`` (seed of the first run;
    network weights fixed at their trained values), with the solver inside the likelihood
    (`scilayers.uq.posterior_theta`, the observation noise inferred), then the posterior
    predictive: ``cfg.uq_members`` posterior draws, each rolled out ``cfg.uq_samples``
    times with the AR(1) model error of the trained model.

Every prediction is scored against the truth on the first ``cfg.uq_trajectories``
trajectories of each evaluation set over ``cfg.main_horizon`` steps, from up to
``cfg.uq_windows`` starts per trajectory ``cfg.main_horizon`` steps apart (`scilayers.uq.uq_block`:
PICP at 50/90/95 %, interval width, CRPS, NLL, spread–skill, per lead time, a reliability
diagram), with the θ_s spread (ensemble) or posterior summary (bayes) against the truth.
Results are cached under ``OUT/runs`` like the other runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..distributed import agree, is_writer
from ..hybrid import NeuralStepper
from ..metrics import EnsemblePrediction, interval
from ..params import LogNormal, values
from ..solvers import takes_time
from ..uq import (
    AR1,
    ensemble_forecast,
    fit_ar1,
    fit_spread_scale,
    init_members,
    member,
    one_step_residuals,
    posterior_theta,
    stack_members,
    theta_spread,
    train_ensemble,
    uq_block,
)
from ._common import config_stamp, write_json
from ._study import AbstractStudy, Problem


def _key(name: str, seed: int):
    from ._engine import _key as engine_key

    return engine_key(f"uq/{name}", seed)


def _members(study: AbstractStudy, problem: Problem, method: str, seed: int):
    """The initial ensemble of ``method`` and its training config (the engine's: under
    ``--distributed`` the members are split over every device)."""
    from ._engine import hybrid, train_config

    cfg = study.cfg
    emulator = method == "neural_emulator"
    tc = train_config(study, problem, seed, hybrid=not emulator,
                      lambda_physics=cfg.lambda_physics)  # as the engine  # fmt: skip
    key = _key(method, seed)
    if emulator:
        shape = problem.eval_sets["id"].state_shape
        members = init_members(lambda k: NeuralStepper(study.emulator(k), shape), key,
                               cfg.uq_members, theta="keep")  # fmt: skip
        return members, tc.replace(steps=cfg.emulator_steps or tc.steps)
    if method not in ("hybrid_joint", "hybrid_fixed_theta"):
        raise ValueError(
            f"uq_methods: {method!r} has no ensemble; choose hybrid_joint, hybrid_fixed_theta "
            f"or neural_emulator."
        )

    def build(k):
        return hybrid(study, k, cfg.identifiable)

    strategy = "joint" if method == "hybrid_joint" else "fixed"
    theta = "jitter" if strategy == "joint" else "keep"
    members = init_members(build, key, cfg.uq_members, theta=theta, jitter=cfg.uq_jitter)
    return members, tc.replace(strategy=strategy)


class _ErrorModel:
    """AR(1) model error from one-step residuals on validation data: one process per state
    component, and one pooled over components for a set on another grid. It is fitted and
    calibrated on every calibration trajectory (`Problem.calibration`: the validation
    trajectories unless the study gives longer ones), held out from training and test
    alike. The one-step residuals the AR(1) is fitted on and the lead-time errors the spread
    is calibrated on are different statistics, while splitting the few trajectories in two
    doubled the calibration's sampling error (KS quick, 6 of 12 trajectories: test
    spread/skill 1.30 at the main lead, on the other 6 1.22, with 1.0 on the 6 it was fitted
    on; with all 12: test 1.14).

    Where the study measures only some components (`Problem.observed`), only their truth
    is used: the AR(1) of an unmeasured component is the one pooled over the measured
    components of its quantity (`AbstractStudy.quantities`; of all measured ones without
    labels), and the spread factors are fitted on the measured ones."""

    def __init__(self, models: list, problem: Problem, groups: np.ndarray | None = None):
        self.groups = groups
        self.observed = problem.observed
        windows, starts = problem.calibration
        val = jnp.asarray(windows)
        t0 = None if starts is None else jnp.asarray(starts)
        res = np.concatenate(
            [np.asarray(one_step_residuals(m, val, t0 if takes_time(m) else None)) for m in models]
        )
        if self.observed is None:
            self.per_component = fit_ar1(res, per_component=True, max_phi=0.98)
            self.pooled = fit_ar1(res, max_phi=0.98)
        else:
            self.per_component, self.pooled = _measured_ar1(res, self.observed, groups)
        self.inflation = 1.0
        self.scale = None
        self.rolling: dict[str, int] = {}  # forecasts refitted by set (`uq_rolling`)

    def on(self, shape: tuple[int, ...]):
        same = tuple(np.shape(self.per_component.phi)) == tuple(shape)
        base = self.per_component if same else self.pooled
        # zero mean: the bias of the validation residuals does not carry to the test
        # periods (ERA5: with it, test CRPS 0.94 and spread/skill 0.44 even when fitted and
        # calibrated on separate halves; without, 0.78); the process carries the model
        # error's spread and memory, not a correction
        return AR1(base.phi, self.inflation * base.sigma, np.zeros_like(base.mean))

    def calibrate(self, models: list, problem: Problem, lead: int, dt: float, key) -> dict:
        """Calibrate on the calibration windows (held-out data, never the test sets), in two
        stages:

        1. scale σ so that the spread–skill ratio at ``lead`` is 1 (variance inflation of
           the model error: ``c² = (skill² − spread_members²) / spread_noise²``, clipped to
           ``[1/16, 16]``); where the members alone already spread more than they err, this
           cannot narrow them, hence
        2. `scilayers.uq.fit_spread_scale` (EMOS): per lead time a factor on the spread
           (spread–skill 1) and the weight of a floor of the component's typical spread
           (90 % coverage nearest nominal), and per state component a factor (shrunk by
           empirical Bayes, towards their quantity's factor where the study labels
           them; fitted on the measured components only); applied to every forecast by
           `recalibrate`.

        Windows start every ``lead // 2`` steps of each trajectory (every ``lead`` steps,
        without overlap, from 32 trajectories on: enough independent windows, at half the
        cost), or at every step where that would give fewer than 4 windows per trajectory
        (short trajectories, e.g. one cardiac cycle: every phase then appears)."""
        windows_all, starts_all = problem.calibration
        val = np.asarray(windows_all)
        lead = int(min(lead, val.shape[1] - 1))
        room, step = val.shape[1] - lead, max(1, lead // 2 if val.shape[0] < 32 else lead)
        starts = list(range(0, room, step if room > 3 * step else 1))
        u0 = jnp.asarray(np.concatenate([val[:, s] for s in starts]))
        windows = np.concatenate([val[:, s : s + lead + 1] for s in starts]).astype(np.float64)
        truth = windows[:, -1]
        t0 = None
        if starts_all is not None and takes_time(models[0]):
            vt0 = np.asarray(starts_all)
            t0 = jnp.asarray(np.concatenate([vt0 + s * dt for s in starts]))
        stacked = stack_members(models)
        shape = tuple(val.shape[2:])
        kb, kn = jax.random.split(key)
        bare = np.asarray(ensemble_forecast(stacked, u0, lead, kb, t0=t0).samples)[:, 0, :, -1]
        nd, obs = val.ndim - 2, self.observed
        bare, truth = _measured(bare, nd, obs), _measured(truth, nd, obs)
        meas2 = 0.0  # the measurement noise variance in the windows, taken off the error
        if problem.calib_noise is not None:
            sd = np.broadcast_to(np.asarray(problem.calib_noise, np.float64), shape)
            meas2 = float(np.mean(_measured(sd**2, nd, obs)))
        skill2 = max(float(np.mean((bare.mean(0) - truth) ** 2)) - meas2, 1e-30)
        members2 = float(np.mean(bare.var(0)))

        def noisy_forecast():
            fc = ensemble_forecast(stacked, u0, lead, kn, t0=t0, samples=4, error=self.on(shape))
            s = np.asarray(fc.samples)  # (members, samples, batch, time, *state)
            return s.reshape(-1, *s.shape[2:])

        noisy = _measured(noisy_forecast()[:, :, -1], nd, obs)
        noise2 = max(float(np.mean(noisy.var(0))) - members2, 1e-30)
        c2 = float(np.clip((skill2 - members2) / noise2, 1 / 256, 256))
        self.inflation = float(np.sqrt(c2))
        self.scale = scale = fit_spread_scale(windows, EnsemblePrediction(noisy_forecast()),
                                              independent=val.shape[0], groups=self.groups,
                                              observed=self.observed,
                                              noise=problem.calib_noise)  # fmt: skip
        return {"inflation": self.inflation, "lead": lead, "windows": int(u0.shape[0]),
                "measured_components": None if obs is None else len(obs),
                "skill": skill2**0.5, "members_spread": members2**0.5,
                "noise_spread": noise2**0.5,
                "spread_scale_by_lead": [float(v) for v in scale.lead],
                "floor_weight_by_lead": [float(v) for v in scale.mix],
                "spread_scale_components": _spread_summary(scale.component)}  # fmt: skip

    def recalibrate(self, pred: EnsemblePrediction) -> EnsemblePrediction:
        """A forecast with the spread factors of `calibrate` applied (none before it)."""
        return pred if self.scale is None else self.scale.apply(pred)

    def recalibrate_rolling(
        self, pred: EnsemblePrediction, truth: np.ndarray, t0: np.ndarray, span: float,
        minimum: int,
    ) -> tuple[EnsemblePrediction, int]:  # fmt: skip
        """A rolling recalibration of forecasts issued at times ``t0`` and verified
        ``span`` later: forecast ``i`` gets the spread factors fitted on the forecasts
        verified by ``t0[i]`` (``t0[j] + span <= t0[i]``) once there are ``minimum`` of
        them, those of `calibrate` before — no forecast sees a truth after its issue time.
        Returns the forecasts and how many were refitted."""
        x = np.asarray(pred.samples)
        out = np.array(self.recalibrate(pred).samples)
        t0 = np.asarray(t0, np.float64)
        gaps = np.diff(np.sort(t0))
        spacing = float(np.median(gaps)) if gaps.size else span
        refits = 0
        for i in range(x.shape[1]):
            seen = np.flatnonzero(t0 + span <= t0[i] + 1e-9)
            if seen.size < minimum:
                continue
            independent = max(1, int(round(seen.size * min(1.0, spacing / span))))
            scale = fit_spread_scale(truth[seen], EnsemblePrediction(x[:, seen]),
                                     independent=independent, groups=self.groups,
                                     observed=self.observed)  # fmt: skip
            one = scale.apply(EnsemblePrediction(x[:, i : i + 1]), seed=i)
            out[:, i] = np.asarray(one.samples)[:, 0]
            refits += 1
        return EnsemblePrediction(out), refits

    @property
    def phi(self):
        return self.per_component.phi

    @property
    def sigma(self):
        return self.inflation * self.per_component.sigma


def _measured(x: np.ndarray, state_ndim: int, observed) -> np.ndarray:
    """The measured components of ``x`` (``(..., *state)``), flat: ``(..., len(observed))``;
    ``x`` itself where every component is measured."""
    if observed is None:
        return x
    return x.reshape(*x.shape[: x.ndim - state_ndim], -1)[..., np.asarray(observed)]


def _measured_ar1(res: np.ndarray, observed, groups) -> tuple[AR1, AR1]:
    """AR(1) processes from the residuals of the measured components only: their own for
    those, the one pooled over the measured components of the same quantity (of all
    measured ones where none of it is measured) for the others; and the pooled one."""
    obs = np.asarray(observed)
    r = res.reshape(res.shape[0], res.shape[1], -1)
    own = fit_ar1(r[..., obs], per_component=True, max_phi=0.98)
    pooled = fit_ar1(r[..., obs], max_phi=0.98)
    n = r.shape[-1]
    phi, sigma = np.full(n, pooled.phi), np.full(n, pooled.sigma)
    if groups is not None:
        labels = np.asarray(groups).reshape(-1)
        for g in np.unique(labels[obs]):
            part = fit_ar1(r[..., obs[labels[obs] == g]], max_phi=0.98)
            phi[labels == g], sigma[labels == g] = part.phi, part.sigma
    phi[obs], sigma[obs] = np.asarray(own.phi), np.asarray(own.sigma)
    shape = res.shape[2:]
    return AR1(phi.reshape(shape), sigma.reshape(shape), np.zeros(shape)), pooled


def _issue_steps(cfg, es) -> list[int]:
    """The forecast starts scored in ``es``: its start, then every ``main_horizon`` steps
    while a whole window fits, `StudyConfig.uq_windows` of them at most."""
    n, room = cfg.main_horizon, es.data.shape[1] - 1 - es.start
    return [es.start + k * n for k in range(max(1, min(cfg.uq_windows, room // n)))]


def _forecasts(study: AbstractStudy, problem: Problem, models: list, error, seed: int):
    """Sampled rollouts of every model (moved to each set) from each set's forecast starts
    (`_issue_steps`, window-major: all trajectories of the first, then the next), scored."""
    from ._engine import pad_batch, transfer

    cfg = study.cfg
    n = cfg.main_horizon
    sets, shown = {}, {}

    def count(e):
        return min(cfg.uq_trajectories, e.data.shape[0]) * len(_issue_steps(cfg, e))

    # every set's batch padded to one size: one compiled forecast for sets of one shape
    size = max(count(e) for e in problem.eval_sets.values())
    for name, es in problem.eval_sets.items():
        b, starts = min(cfg.uq_trajectories, es.data.shape[0]), _issue_steps(cfg, es)
        stacked = stack_members([transfer(study, m, es) for m in models])
        u0 = jnp.concatenate([jnp.asarray(es.data[:b, s]) for s in starts])
        issued = None if es.t0 is None else np.concatenate(
            [np.asarray(es.t0)[:b] + s * cfg.dt for s in starts])  # fmt: skip
        t0 = jnp.asarray(issued) if issued is not None and takes_time(models[0]) else None
        fc = ensemble_forecast(stacked, pad_batch(u0, size), n, _key(f"forecast/{name}", seed),
                               t0=pad_batch(t0, size), samples=cfg.uq_samples,
                               error=error.on(es.state_shape))  # fmt: skip
        if size > u0.shape[0]:
            fc = fc._replace(samples=fc.samples[:, :, : u0.shape[0]])
        truth = np.concatenate([es.data[:b, s : s + n + 1] for s in starts])
        if cfg.uq_rolling and issued is not None:  # issue times, whatever the model takes
            pred, refits = error.recalibrate_rolling(fc.prediction(), truth, issued,
                                                     n * cfg.dt, cfg.uq_rolling)  # fmt: skip
            error.rolling[name] = refits
        else:
            pred = error.recalibrate(fc.prediction())
        sets[name] = (truth, pred)
        samples = np.asarray(pred.samples)[:, 0].reshape(pred.samples.shape[0], n + 1, -1)
        lo, hi = interval(EnsemblePrediction(samples[..., 0]), 0.9)
        shown[name] = np.stack(
            [truth[0].reshape(n + 1, -1)[:, 0], samples[..., 0].mean(0), lo, hi]
        ).astype(np.float32)
    return sets, shown


def _true_theta(study: AbstractStudy) -> dict[str, float]:
    truth = study.truth_model()
    return {} if truth is None else {k: float(np.mean(v)) for k, v in values(truth).items()}


def _with_truth(spread: dict, truth: dict) -> dict:
    out = {}
    for k, v in spread.items():
        row = dict(v)
        mean, std = np.mean(v["mean"]), np.mean(v["std"])
        row["ci95"] = [float(mean - 1.96 * std), float(mean + 1.96 * std)]
        if k in truth:
            row["true"] = truth[k]
            row["covered"] = bool(row["ci95"][0] <= truth[k] <= row["ci95"][1])
        out[k] = row
    return out


def _ensemble(study: AbstractStudy, problem: Problem, method: str, seed: int, progress: bool):
    cfg = study.cfg
    members, tc = _members(study, problem, method, seed)
    t0 = problem.train_t0
    res = train_ensemble(members, problem.train, tc, t0=t0 if takes_time(members) else None)
    models = [member(res.models, i) for i in range(cfg.uq_members)
              if not bool(res.diverged[i])]  # fmt: skip
    if not models:
        raise ValueError(f"every {method} ensemble member diverged; see the training notes.")
    error = _ErrorModel(models, problem, study.quantities())
    inflation = error.calibrate(models, problem, cfg.main_horizon, cfg.dt, _key("val", seed))
    t = time.perf_counter()
    sets, shown = _forecasts(study, problem, models, error, seed)
    theta = _with_truth(theta_spread(stack_members(models)), _true_theta(study))
    block = uq_block(sets, lead=cfg.main_horizon, theta=theta)
    block["train_seconds"] = res.seconds
    block["forecast_seconds"] = time.perf_counter() - t
    block["members"] = len(models)
    block["diverged_members"] = int(np.sum(res.diverged))
    block["error_model"] = dict(_ar1_summary(error), calibration=inflation,
                                rolling_refits=error.rolling)  # fmt: skip
    block["notes"] = list(res.notes)
    return block, shown


def _spread_summary(component: np.ndarray) -> dict:
    c = np.asarray(component, np.float64)
    return {"min": float(c.min()), "median": float(np.median(c)), "max": float(c.max())}


def _ar1_summary(error) -> dict:
    phi, sigma = np.asarray(error.phi), np.asarray(error.sigma)
    return {"kind": "AR(1) per state component (pooled over components on another grid)",
            "phi_median": float(np.median(phi)),
            "sigma_median": float(np.median(sigma))}  # fmt: skip


def _bayes(study: AbstractStudy, problem: Problem, seed: int, out: Path, progress: bool):
    from ._engine import _train, train_runs

    cfg = study.cfg
    runs = train_runs(study, int(problem.train.shape[0]))
    ckpt = out / "checkpoints" / "hybrid_joint" / f"seed{seed}"
    # the finished run, restored from its last checkpoint (trained now if there is none)
    model = _train(study, problem, "hybrid_joint", runs["hybrid_joint"], seed, ckpt,
                   resume=True, progress=progress).model  # fmt: skip
    error = _ErrorModel([model], problem, study.quantities())
    b = min(cfg.bayes_trajectories, problem.train.shape[0])
    data = problem.train[:b]
    t0 = None if problem.train_t0 is None or not takes_time(model) else problem.train_t0[:b]
    scale = float(np.sqrt(np.mean(np.asarray(error.sigma) ** 2
                                  / np.maximum(1 - np.asarray(error.phi) ** 2, 1e-6))))  # fmt: skip
    post = posterior_theta(
        model,
        data,
        _key("bayes", seed),
        noise=LogNormal(max(scale, 1e-8), 1.0),
        t0=t0,
        horizon=cfg.bayes_horizon,
        num_warmup=cfg.bayes_warmup,
        num_samples=cfg.bayes_samples,
        num_chains=cfg.bayes_chains,
        init="model",
    )
    draws = post.models(cfg.uq_members)
    models = [member(draws, i) for i in range(cfg.uq_members)]
    inflation = error.calibrate(models, problem, cfg.main_horizon, cfg.dt, _key("val", seed))
    t = time.perf_counter()
    sets, shown = _forecasts(study, problem, models, error, seed)
    block = uq_block(sets, lead=cfg.main_horizon, theta=post.summary(_true_theta(study)))
    block["posterior_seconds"] = post.seconds
    block["forecast_seconds"] = time.perf_counter() - t
    block["divergences"] = int(post.divergences)
    block["members"] = cfg.uq_members
    block["error_model"] = dict(_ar1_summary(error), calibration=inflation,
                                rolling_refits=error.rolling)  # fmt: skip
    block["posterior_samples"] = {k: post.samples[..., i].reshape(-1).tolist()
                                  for i, k in enumerate(post.names)}  # fmt: skip
    return block, shown


def _g(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def uq_targets(uq: dict | None) -> list[dict]:
    """Issue-level UQ targets at the main lead time: hybrid_joint's 90 % coverage and
    spread–skill in domain, and its CRPS below the data-only baseline's (the emulator's, or
    ``uq["baseline_method"]``) on every shifted set where that baseline was scored."""
    if not uq or "hybrid_joint" not in uq.get("methods", {}):
        return []
    kind = uq.get("kind", "ensemble")
    joint = uq["methods"]["hybrid_joint"]
    at = {k: v["at_lead"] for k, v in joint.items() if isinstance(v, dict) and "at_lead" in v}
    out = []
    if "id" in at:
        picp, ss = at["id"].get("picp_90"), at["id"].get("spread_skill")
        out.append({"name": f"uq ({kind}): hybrid_joint PICP90 in domain",
                    "value": _g(picp), "target": "0.85-0.95",
                    "pass": picp is not None and 0.85 <= picp <= 0.95})  # fmt: skip
        out.append({"name": f"uq ({kind}): hybrid_joint spread/skill in domain",
                    "value": _g(ss), "target": "0.8-1.2",
                    "pass": ss is not None and 0.8 <= ss <= 1.2})  # fmt: skip
    base = uq.get("baseline_method") or "neural_emulator"  # the study's data-only method
    emu = uq["methods"].get(base, {})
    for name in (k for k in at if k != "id"):
        a = at[name].get("crps")
        b = emu.get(name, {}).get("at_lead", {}).get("crps") if isinstance(emu, dict) else None
        if a is not None and b is not None:
            out.append({"name": f"uq ({kind}), {name}: hybrid_joint CRPS below {base}",
                        "value": f"{a:.3g} vs {b:.3g}", "target": "lower",
                        "pass": bool(a < b)})  # fmt: skip
    return out


def _uq_paths(out: Path, kind: str, method: str, seed: int) -> tuple[Path, Path]:
    path = Path(out) / "runs" / f"uq_{kind}_{method}__seed{seed}.json"
    return path, path.with_suffix(".npz")


def _uq_cached(out: Path, kind: str, method: str, seed: int, stamp: str):
    """The cached ``(entry, arrays)`` of one method's UQ, or ``None`` (none, or made with
    another config)."""
    path, apath = _uq_paths(out, kind, method, seed)
    if not agree(path.exists() and apath.exists()):  # process 0 decides for all
        return None
    entry = json.loads(path.read_text())
    if entry.pop("config_stamp", stamp) != stamp:
        return None
    with np.load(apath) as f:
        return entry, {k: f[k] for k in f.files}


def _uq_method(study: AbstractStudy, problem: Problem, method: str, seed: int, out: Path,
               kind: str, progress: bool, stamp: str):  # fmt: skip
    """One method's UQ entry, computed and written to the run cache; returns it."""
    t = time.perf_counter()
    if kind == "ensemble":
        entry, shown = _ensemble(study, problem, method, seed, progress)
    else:
        entry, shown = _bayes(study, problem, seed, out, progress)
    entry["seconds"] = time.perf_counter() - t
    path, apath = _uq_paths(out, kind, method, seed)
    if is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(apath, **shown)
    write_json(path, {**entry, "config_stamp": stamp})
    return entry, shown


def run_uq(study: AbstractStudy, problem: Problem, seed: int, out: Path, kind: str,
           progress: bool, log, jobs: int = 1,
           cache_dir: Path | None = None) -> tuple[dict, dict[str, np.ndarray]]:  # fmt: skip
    """The ``uq`` block (and the interval arrays for the report) of a study run. With
    ``jobs`` > 1, the methods not cached yet are computed at once on worker processes
    (`run_parallel`, which loads the problem from ``cache_dir``)."""
    cfg = study.cfg
    methods = ("hybrid_joint",) if kind == "bayes" else tuple(cfg.uq_methods)
    block: dict = {
        "kind": kind,
        "lead": cfg.main_horizon,
        "trajectories": cfg.uq_trajectories,
        "windows_per_trajectory": cfg.uq_windows,
        "members": cfg.uq_members,
        "samples_per_member": cfg.uq_samples,
        "rolling": cfg.uq_rolling,
        "methods": {},
    }
    arrays: dict[str, np.ndarray] = {}
    stamp = config_stamp(cfg, uq=True)
    todo = [m for m in methods if _uq_cached(out, kind, m, seed, stamp) is None]
    if jobs > 1 and len(todo) > 1 and jax.process_count() == 1:
        from ._parallel import run_parallel

        log(f"uq {kind}: {', '.join(todo)} on {min(jobs, len(todo))} worker processes")
        tasks = [(m, _uq_method, (m, seed, out, kind, False, stamp)) for m in todo]
        run_parallel(study, tasks, jobs=jobs, cache_dir=cache_dir, log=log,
                     done=lambda m, _, t: log(f"  uq {kind} {m}: {t:.0f} s"))  # fmt: skip
    for method in methods:
        hit = _uq_cached(out, kind, method, seed, stamp)
        if hit is None:
            hit = _uq_method(study, problem, method, seed, out, kind, progress, stamp)
        entry, shown = hit
        block["methods"][method] = entry
        for k, v in shown.items():
            arrays[f"uq__{method}__{k}"] = v
        at = {s: entry[s]["at_lead"] for s in problem.eval_sets if s in entry}
        log(f"uq {kind} {method:24s} " + "  ".join(
            f"{s}: PICP90 {_g(a['picp_90'])} spread/skill {_g(a['spread_skill'])} "
            f"CRPS {_g(a['crps'])}" for s, a in at.items()))  # fmt: skip
    jax.clear_caches()
    return block, arrays
