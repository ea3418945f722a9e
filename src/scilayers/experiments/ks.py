"""The Kuramoto–Sivashinsky study: does learning θ_s jointly with a closure pay off?

Truth: the generalised KS equation ``u_t + c u u_x + a u_xx + b u_xxxx + d u_xxx = 0`` on a
fine grid (``n_fine`` points, inner step ``dt / fine_substeps``), with a dispersive term
``d u_xxx`` that the coarse physics does not contain. Coarse physics: KS without ``d`` on
``n`` points with ETDRK4 at the saving step ``dt``, starting from a mis-specified prior for
``a`` and ``b``. Out of domain: a longer domain (the physics takes ``length`` explicitly; the
networks are convolutional, so they apply at any size); nothing is tuned on it.

Every method gets the same truth, the same splits, the same optimiser budget
(`TrainConfig`), and is evaluated on the same targets: rollouts from the same initial states
of held-out trajectories. Results go to ``DIR/results.json`` (see ``docs/design.md``),
``DIR/arrays.npz``, ``DIR/report.md`` and ``DIR/figures``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics as M
from ..baselines import calibrate, neural_emulator, sequential_hybrid
from ..data import KSDataConfig, ks_truth
from ..hybrid import Hybrid, NeuralStepper
from ..models import KuramotoSivashinsky
from ..nn import PeriodicCNN1d
from ..params import LogNormal, Param, Positive, values
from ..solvers import ETDRK4, rollout
from ..training import TrainConfig, fit
from ._common import RunCache, environment, write_json

METHODS = (
    "pure_physics",
    "pure_physics_calibrated",
    "pinn",
    "sequential_hybrid",
    "neural_emulator",
    "hybrid_fixed_theta",
    "hybrid_staged",
    "hybrid_joint",
)
LABELS = {
    "pure_physics": "physics, prior θ_s",
    "pure_physics_calibrated": "physics, θ_s calibrated (no network)",
    "pinn": "PINN, θ_s fixed at prior",
    "sequential_hybrid": "calibrate θ_s, then post-hoc residual net",
    "neural_emulator": "neural emulator (no physics)",
    "hybrid_fixed_theta": "hybrid closure, θ_s fixed at prior",
    "hybrid_staged": "hybrid closure, staged",
    "hybrid_joint": "hybrid closure, joint",
}
LEARNED = ("a", "b")


@dataclass(frozen=True)
class KSStudyConfig:
    """Everything the KS study depends on (with the seed list, the whole result).

    Truth θ_s* = (a, b, c, d)_true; coarse prior (a, b)_prior; c known; d absent from the
    coarse model. `lambda_physics` is the hybrids' default λ_p (chosen on ID validation
    only); `lambda_sweep` is the ablation.
    """

    preset: str = "quick"
    length: float = 22.0
    n_fine: int = 128
    n: int = 64
    dt: float = 0.25
    fine_substeps: int = 5
    a_true: float = 1.0
    b_true: float = 1.0
    c_true: float = 1.0
    d_true: float = 0.3
    a_prior: float = 0.8
    b_prior: float = 1.25
    prior_sigma: float = 0.3
    ood_length_factor: float = 2.0
    trajectories: int = 120
    traj_steps: int = 300
    burn_in: float = 100.0
    data_seed: int = 0
    n_test: int = 8
    n_ood: int = 8
    main_horizon: int = 40
    horizons: tuple[int, ...] = (4, 10, 20, 40, 80, 160)
    corr_steps: int = 200
    spacetime_steps: int = 160
    closure_width: int = 16
    closure_depth: int = 1
    emulator_width: int = 24
    emulator_depth: int = 3
    kernel_size: int = 5
    closure_symmetry: str | None = "ks-odd"
    odd_closure: bool = True  # bias-free tanh closure: odd by construction, half the calls
    lambda_closure_sweep: tuple[float, ...] = (1e-2, 1.0)
    lambda_physics: float = 0.0
    lambda_sweep: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
    pinn_window: int = 20
    pinn_steps: int = 600
    pinn_width: int = 48
    pinn_collocation: int = 256
    checkpoint_every: int = 100
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=200,
            batch_size=16,
            horizon=10,
            lr_theta=3e-2,
            lr_net=2e-3,
            val_every=50,
        )
    )

    def __post_init__(self):
        if self.n_fine % self.n:
            raise ValueError(f"n_fine={self.n_fine} must be a multiple of n={self.n}.")
        if self.main_horizon > self.corr_steps:
            raise ValueError("main_horizon must not exceed corr_steps.")
        need = self.pinn_window + self.corr_steps
        if self.traj_steps < need:
            raise ValueError(
                f"traj_steps={self.traj_steps} is too short: evaluation needs "
                f"pinn_window + corr_steps = {need} saved steps."
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


PRESETS = {
    "quick": KSStudyConfig(),
    "full": KSStudyConfig(
        preset="full",
        trajectories=1000,
        traj_steps=1000,
        n_test=32,
        n_ood=32,
        pinn_steps=2000,
        train=TrainConfig(
            steps=2000,
            batch_size=32,
            horizon=20,
            lr_theta=3e-2,
            lr_net=2e-3,
            val_every=100,
        ),
    ),
}


# ------------------------------------------------------------------------------ problem


@dataclass
class Problem:
    cfg: KSStudyConfig
    train: jnp.ndarray
    val: jnp.ndarray
    eval_id: np.ndarray  # (n_test, pinn_window + corr_steps, n): window, then targets
    eval_ood: np.ndarray
    length_ood: float
    n_ood: int


def make_problem(cfg: KSStudyConfig, cache_dir: Path | None, progress: bool) -> Problem:
    """Generate (or load from the cache) the truth and cut it into splits on the coarse grid."""
    n_total = cfg.trajectories
    data_cfg = KSDataConfig(
        trajectories=n_total,
        steps=cfg.traj_steps,
        n=cfg.n_fine,
        length=cfg.length,
        a=cfg.a_true,
        b=cfg.b_true,
        c=cfg.c_true,
        d=cfg.d_true,
        dt_save=cfg.dt,
        substeps=cfg.fine_substeps,
        burn_in=cfg.burn_in,
        seed=cfg.data_seed,
        ood_fraction=cfg.n_ood / n_total,
        ood_length_factor=cfg.ood_length_factor,
    )
    ds = ks_truth(data_cfg, cache_dir=cache_dir, progress=progress)
    r = cfg.n_fine // cfg.n
    u = np.asarray(ds["u"].values)[:, :, ::r]
    split = np.asarray(ds["split"].values).astype(str)
    u_ood = np.asarray(ds["u_ood"].values)[:, :, ::r]
    span = cfg.pinn_window + cfg.corr_steps
    test = u[split == "test"][: cfg.n_test, :span]
    if test.shape[0] < cfg.n_test:
        raise ValueError(
            f"only {test.shape[0]} test trajectories for n_test={cfg.n_test}; raise `trajectories`."
        )
    return Problem(
        cfg,
        train=jnp.asarray(u[split == "train"]),
        val=jnp.asarray(u[split == "val"]),
        eval_id=test,
        eval_ood=u_ood[: cfg.n_ood, :span],
        length_ood=float(ds.attrs["ood_length"]),
        n_ood=u_ood.shape[-1],
    )


def coarse_model(cfg: KSStudyConfig, length: float, n: int, a=None, b=None):
    """The coarse physics: KS without the dispersive term, ``a, b`` learnable with a
    log-normal prior around the (mis-specified) textbook values, ``c`` known."""
    a = (
        a
        if a is not None
        else Param(cfg.a_prior, Positive(), prior=LogNormal(cfg.a_prior, cfg.prior_sigma), name="a")
    )
    b = (
        b
        if b is not None
        else Param(cfg.b_prior, Positive(), prior=LogNormal(cfg.b_prior, cfg.prior_sigma), name="b")
    )
    return KuramotoSivashinsky(
        length, n, a=a, b=b, c=Param(cfg.c_true, fixed=True, name="c"), d=None
    )


def true_model(cfg: KSStudyConfig, length: float, n: int):
    return KuramotoSivashinsky(length, n, a=cfg.a_true, b=cfg.b_true, c=cfg.c_true, d=cfg.d_true)


def on_domain(model, cfg: KSStudyConfig, length: float, n: int):
    """The same trained model on another domain: θ_s and network weights carried over."""
    if isinstance(model, NeuralStepper):
        return NeuralStepper(model.net, (n,), model.dt, model.scale)
    if isinstance(model, Hybrid):
        return eqx.tree_at(lambda h: h.step, model, on_domain(model.step, cfg, length, n))
    old = model.model
    new = KuramotoSivashinsky(length, n, a=old.a, b=old.b, c=old.c, d=old.d)
    return eqx.tree_at(lambda s: s.model, model, new)


# ------------------------------------------------------------------------------ evaluation


@eqx.filter_jit
def _predict(step, u0, n_steps: int):
    return jax.vmap(lambda u: rollout(step, u, n_steps, check_finite=False))(u0)


def evaluate(prob: Problem, preds_id: np.ndarray, preds_ood: np.ndarray) -> dict:
    """Metrics of predictions ``(batch, 1 + steps, n)`` that start at the evaluation start."""
    cfg = prob.cfg
    w = cfg.pinn_window - 1
    out = {}
    for tag, pred, truth_all, length, n in (
        ("id", preds_id, prob.eval_id, cfg.length, cfg.n),
        ("ood", preds_ood, prob.eval_ood, prob.length_ood, prob.n_ood),
    ):
        steps = pred.shape[1] - 1
        truth = truth_all[:, w : w + steps + 1]
        per_step = M.mse_by_step(pred, truth)
        h = min(cfg.main_horizon, steps)
        mse = float(per_step[1 : h + 1].mean())
        out[f"{tag}_mse"] = mse
        out[f"{tag}_nmse"] = M.normalised(mse, truth)
        out[f"{tag}_corr_time"] = float(M.correlation_time(pred, truth, cfg.dt).mean())
        out[f"{tag}_diverged"] = M.diverged_fraction(pred)
        out[f"{tag}_horizon"] = [
            float(per_step[k]) if k <= steps else float("nan") for k in cfg.horizons
        ]
        phys = true_model(cfg, length, n)
        key = "physics_residual" if tag == "id" else "physics_residual_ood"
        out[key] = M.physics_residual(phys, pred[:, : h + 1], cfg.dt)
    return out


def _theta_entry(model) -> dict[str, float]:
    if model is None:
        return {}
    vals = values(model)
    return {k: float(vals[k]) for k in LEARNED if k in vals}


# ------------------------------------------------------------------------------ runs


def _closure(cfg: KSStudyConfig, key, odd: bool = False):
    return PeriodicCNN1d(
        width=cfg.closure_width,
        depth=cfg.closure_depth,
        kernel_size=cfg.kernel_size,
        activation=jnp.tanh,
        use_bias=not odd,
        key=key,
    )


def _hybrid(cfg, key, symmetry):
    step = ETDRK4(coarse_model(cfg, cfg.length, cfg.n), cfg.dt)
    odd = cfg.odd_closure and symmetry is not None  # an unrestricted closure keeps biases
    return Hybrid(step, _closure(cfg, key, odd), coupling="closure", symmetry=symmetry)


def _train_runs(cfg: KSStudyConfig) -> dict[str, tuple[str, dict]]:
    """Every trained configuration of the study: name -> (kind, options)."""
    runs: dict[str, tuple[str, dict]] = {
        "pure_physics_calibrated": ("calibrate", {}),
        "sequential_hybrid": ("sequential", {}),
        "neural_emulator": ("emulator", {}),
        "hybrid_fixed_theta": ("hybrid", {"strategy": "fixed"}),
        "hybrid_staged": ("hybrid", {"strategy": "staged"}),
        "hybrid_joint": ("hybrid", {"strategy": "joint"}),
        "abl_joint_unrestricted": ("hybrid", {"strategy": "joint", "symmetry": None}),
        "abl_fixed_unrestricted": ("hybrid", {"strategy": "fixed", "symmetry": None}),
    }
    for lc in cfg.lambda_closure_sweep:
        runs[f"abl_joint_unrestricted_penalised_{lc:g}"] = (
            "hybrid",
            {"strategy": "joint", "symmetry": None, "lambda_closure": lc},
        )
    for lp in cfg.lambda_sweep:
        if lp != cfg.lambda_physics:
            runs[f"abl_lambda_{lp:g}"] = ("hybrid", {"strategy": "joint", "lambda_physics": lp})
    return runs


def _run_one(
    prob: Problem,
    name: str,
    kind: str,
    opts: dict,
    seed: int,
    ckpt: Path,
    resume: bool,
    progress: bool,
):
    cfg = prob.cfg
    tc = cfg.train.replace(seed=seed, lambda_physics=opts.get("lambda_physics", cfg.lambda_physics))
    if "lambda_closure" in opts:
        tc = tc.replace(lambda_closure=opts["lambda_closure"])
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % (2**31))
    fit_kw = {"val": prob.val, "progress": progress}
    if cfg.checkpoint_every:
        fit_kw.update(checkpoint_dir=ckpt, resume=resume or (ckpt / "checkpoint.json").exists())
        tc = tc.replace(checkpoint_every=cfg.checkpoint_every)
    step = ETDRK4(coarse_model(cfg, cfg.length, cfg.n), cfg.dt)
    if kind == "calibrate":
        res = calibrate(step, prob.train, tc, **fit_kw)
    elif kind == "sequential":
        net = _closure(cfg, key)
        res = sequential_hybrid(step, net, prob.train, tc, **fit_kw)
    elif kind == "emulator":
        net = PeriodicCNN1d(
            width=cfg.emulator_width,
            depth=cfg.emulator_depth,
            kernel_size=cfg.kernel_size,
            activation=jnp.tanh,
            key=key,
        )
        res = neural_emulator(net, (cfg.n,), prob.train, tc, **fit_kw)
    else:
        symmetry = opts.get("symmetry", cfg.closure_symmetry)
        res = fit(
            _hybrid(cfg, key, symmetry), prob.train, tc.replace(strategy=opts["strategy"]), **fit_kw
        )
    return res


def _predictions(prob: Problem, model):
    cfg = prob.cfg
    w = cfg.pinn_window - 1
    pid = np.asarray(_predict(model, jnp.asarray(prob.eval_id[:, w]), cfg.corr_steps))
    ood_model = on_domain(model, cfg, prob.length_ood, prob.n_ood)
    pood = np.asarray(_predict(ood_model, jnp.asarray(prob.eval_ood[:, w]), cfg.corr_steps))
    return pid, pood


def _pinn_predictions(prob: Problem, seed: int):
    from ..baselines import PINNConfig, fit_pinn

    cfg = prob.cfg
    pc = PINNConfig(
        steps=cfg.pinn_steps, width=cfg.pinn_width, n_collocation=cfg.pinn_collocation, seed=seed
    )
    out, seconds = [], 0.0
    for data, length, n in (
        (prob.eval_id, cfg.length, cfg.n),
        (prob.eval_ood, prob.length_ood, prob.n_ood),
    ):
        prior = coarse_model(cfg, length, n)
        window = jnp.asarray(data[:, : cfg.pinn_window])
        pred, info = fit_pinn(prior, window, cfg.dt, cfg.main_horizon, pc)
        seconds += float(info["seconds"])
        out.append(np.asarray(pred)[:, cfg.pinn_window - 1 :])
    return out[0], out[1], seconds


def run_method(prob: Problem, name: str, seed: int, out: Path, resume: bool, progress: bool):
    """Train (if needed) and evaluate one method or ablation run for one seed."""
    cfg = prob.cfg
    arrays: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    if name == "pure_physics":
        model = ETDRK4(coarse_model(cfg, cfg.length, cfg.n), cfg.dt)
        pid, pood = _predictions(prob, model)
        seconds, theta_model = 0.0, model
    elif name == "pinn":
        pid, pood, seconds = _pinn_predictions(prob, seed)
        theta_model = coarse_model(cfg, cfg.length, cfg.n)
    else:
        kind, opts = _train_runs(cfg)[name]
        res = _run_one(
            prob,
            name,
            kind,
            opts,
            seed,
            out / "checkpoints" / name / f"seed{seed}",
            resume,
            progress,
        )
        model = res.model
        pid, pood = _predictions(prob, model)
        seconds = res.seconds
        theta_model = model if kind != "emulator" else None
        for k, v in res.history.items():
            if k.startswith("theta/") and k[6:] in LEARNED:
                arrays[f"theta__{k[6:]}"] = np.asarray(v, dtype=np.float64)
        arrays["loss"] = np.asarray(res.history["loss"], dtype=np.float64)
    metrics = evaluate(prob, pid, pood)
    metrics["train_seconds"] = seconds
    metrics["theta"] = _theta_entry(theta_model)
    metrics["wall_seconds"] = time.perf_counter() - t0
    if seed == 0:
        s = cfg.spacetime_steps
        arrays["spacetime_id"] = pid[0, : s + 1].astype(np.float32)
        arrays["spacetime_ood"] = pood[0, : s + 1].astype(np.float32)
    return metrics, arrays


# ------------------------------------------------------------------------------ study


def _true_theta(cfg: KSStudyConfig) -> dict[str, float]:
    """The true values of the learned coefficients (`LEARNED`)."""
    return {"a": cfg.a_true, "b": cfg.b_true}


def _fmt(stat: dict) -> str:
    return "—" if stat["mean"] is None else f"{stat['mean']:.3e} ± {stat['std']:.1e}"


def _aggregate(per_seed: list[dict], cfg: KSStudyConfig) -> dict:
    keys = (
        "id_mse",
        "ood_mse",
        "id_nmse",
        "ood_nmse",
        "id_corr_time",
        "ood_corr_time",
        "physics_residual",
        "physics_residual_ood",
        "train_seconds",
        "id_diverged",
        "ood_diverged",
    )
    out = {k: M.summary([m[k] for m in per_seed]) for k in keys}
    horizon = {}
    for tag in ("id", "ood"):
        arr = np.asarray([m[f"{tag}_horizon"] for m in per_seed], dtype=float)
        with np.errstate(invalid="ignore", over="ignore"):
            horizon[tag] = {
                "steps": list(cfg.horizons),
                "mean": arr.mean(0).tolist(),
                "std": arr.std(0).tolist(),
            }
    out["horizon_mse"] = horizon
    theta = {}
    true = _true_theta(cfg)
    prior = {"a": cfg.a_prior, "b": cfg.b_prior}
    for p in LEARNED:
        learned = [m["theta"][p] for m in per_seed if p in m.get("theta", {})]
        if learned:
            theta[p] = {
                "true": true[p],
                "initial": prior[p],
                "learned": learned,
                "rel_error": M.summary([M.relative_error(v, true[p]) for v in learned]),
            }
    out["theta"] = theta
    return out


def run_study(
    cfg: KSStudyConfig,
    seeds: list[int],
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    cache_dir: Path | None = None,
    log=print,
) -> dict:
    """Run every method and ablation over ``seeds``; write results, arrays and report."""
    t_start = time.perf_counter()
    out = Path(out)
    if not resume:
        for sub in ("runs", "checkpoints"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    cache = RunCache(out / "runs")
    cache_dir = cache_dir if cache_dir is not None else out.parent / ".cache"
    prob = make_problem(cfg, cache_dir, progress)
    log(
        f"truth: {prob.train.shape[0]} train / {prob.val.shape[0]} val / {cfg.n_test} test "
        f"trajectories (L={cfg.length}), {cfg.n_ood} OOD (L={prob.length_ood:g})"
    )
    names = list(METHODS) + [n for n in _train_runs(cfg) if n not in METHODS]
    results: dict[str, list[dict]] = {n: [] for n in names}
    spacetime: dict[str, np.ndarray] = {}  # the first seed's rollouts of each method
    theta_hist: dict[tuple[str, str], list[np.ndarray]] = {}  # (method, param) -> per seed
    for name in names:
        for seed in seeds:
            hit = cache.get(name, seed)
            if hit is None:
                metrics, arr = run_method(prob, name, seed, out, resume, progress)
                cache.put(name, seed, metrics, arr)
            else:
                metrics, arr = hit
            results[name].append(metrics)
            if name not in METHODS:  # ablation runs only enter the tables
                continue
            if seed == seeds[0]:
                for tag in ("id", "ood"):
                    if f"spacetime_{tag}" in arr:
                        spacetime[f"spacetime_{name}_{tag}"] = arr[f"spacetime_{tag}"]
            for p in LEARNED:
                if f"theta__{p}" in arr:
                    theta_hist.setdefault((name, p), []).append(arr[f"theta__{p}"])
        m = _aggregate(results[name], cfg)
        theta = {p: np.round(v["learned"], 4).tolist() for p, v in m["theta"].items()}
        log(f"{name:34s} id_mse {_fmt(m['id_mse'])}  ood_mse {_fmt(m['ood_mse'])}  θ {theta}")
    methods = {}
    for name in METHODS:
        if name in results:
            methods[name] = {"label": LABELS[name], **_aggregate(results[name], cfg)}
    agg = {n: _aggregate(results[n], cfg) for n in names}

    lam = {f"{cfg.lambda_physics:g}": agg["hybrid_joint"]}
    for lp in cfg.lambda_sweep:
        if lp != cfg.lambda_physics:
            lam[f"{lp:g}"] = agg[f"abl_lambda_{lp:g}"]
    lam = {k: lam[k] for k in sorted(lam, key=float)}
    ablations = {
        "strategy": {
            "joint": agg["hybrid_joint"],
            "staged": agg["hybrid_staged"],
            "fixed": agg["hybrid_fixed_theta"],
        },
        "lambda_physics": lam,
        "theta": {
            "learned θ_s, symmetric closure": agg["hybrid_joint"],
            "fixed θ_s, symmetric closure": agg["hybrid_fixed_theta"],
            "learned θ_s, unrestricted closure": agg["abl_joint_unrestricted"],
            "fixed θ_s, unrestricted closure": agg["abl_fixed_unrestricted"],
        },
        "closure": {
            "KS-odd symmetric closure": agg["hybrid_joint"],
            "unrestricted closure": agg["abl_joint_unrestricted"],
            **{
                f"unrestricted + magnitude penalty λ_c={lc:g}": agg[
                    f"abl_joint_unrestricted_penalised_{lc:g}"
                ]
                for lc in cfg.lambda_closure_sweep
            },
        },
    }

    # arrays for figures
    arrays_out = {"dt": np.asarray(cfg.dt)}
    w = cfg.pinn_window - 1
    s = cfg.spacetime_steps
    arrays_out["spacetime_truth_id"] = prob.eval_id[0, w : w + s + 1]
    arrays_out["spacetime_truth_ood"] = prob.eval_ood[0, w : w + s + 1]
    arrays_out["x_id"] = np.arange(cfg.n) * cfg.length / cfg.n
    arrays_out["x_ood"] = np.arange(prob.n_ood) * prob.length_ood / prob.n_ood
    arrays_out.update(spacetime)
    for (name, p), runs in theta_hist.items():  # (seeds, steps), NaN-padded
        pad = np.full((len(runs), max(len(x) for x in runs)), np.nan)
        for i, x in enumerate(runs):
            pad[i, : len(x)] = x
        arrays_out[f"theta__{name}__{p}"] = pad
    for p, val in _true_theta(cfg).items():
        arrays_out[f"theta_true__{p}"] = np.asarray(val)
    np.savez(out / "arrays.npz", **arrays_out)

    wall = time.perf_counter() - t_start
    truth_res = M.physics_residual(
        true_model(cfg, cfg.length, cfg.n), prob.eval_id[:, w : w + cfg.main_horizon + 1], cfg.dt
    )
    results_json = {
        "experiment": "ks",
        "preset": cfg.preset,
        "seeds": list(seeds),
        "config": cfg.to_dict(),
        "environment": environment(),
        "main_horizon_steps": cfg.main_horizon,
        "dt": cfg.dt,
        "methods": methods,
        "ablations": ablations,
        "targets": _targets(methods, ablations, cfg, wall),
        "reference": {"physics_residual_truth": truth_res},
        "wall_seconds": wall,
        "notes": _notes(cfg, prob, truth_res),
    }
    write_json(out / "results.json", results_json)
    return results_json


def _targets(methods: dict, ablations: dict, cfg: KSStudyConfig, wall: float) -> list[dict]:
    t = []
    joint = methods["hybrid_joint"]
    errs = [e for p in joint["theta"].values() for e in p["rel_error"]["per_seed"]]
    worst = max(errs) if errs else float("nan")
    t.append(
        {
            "name": "θ_s (a, b) learned jointly within 5 % of truth, every seed",
            "value": f"worst {100 * worst:.2f} %",
            "target": "<= 5 %",
            "pass": bool(worst <= 0.05),
        }
    )
    jo, fx = joint["ood_mse"]["mean"], methods["hybrid_fixed_theta"]["ood_mse"]["mean"]
    gain = 1 - jo / fx if jo is not None and fx else float("nan")
    t.append(
        {
            "name": "OOD MSE of hybrid_joint vs hybrid_fixed_theta",
            "value": f"{100 * gain:.1f} % lower",
            "target": ">= 20 % lower",
            "pass": bool(gain >= 0.2),
        }
    )
    others = {m: v["ood_mse"]["mean"] for m, v in methods.items() if m != "hybrid_joint"}
    beaten = [m for m, v in others.items() if v is None or (jo is not None and jo < v)]
    lost = sorted(set(others) - set(beaten))
    t.append(
        {
            "name": "OOD MSE of hybrid_joint below every other method",
            "value": "beats all" if not lost else "loses to " + ", ".join(lost),
            "target": "beats all",
            "pass": not lost,
        }
    )
    pj = joint["physics_residual"]["mean"]
    comp = {
        m: methods[m]["physics_residual"]["mean"]
        for m in ("neural_emulator", "pinn")
        if m in methods
    }
    ok = all(v is None or (pj is not None and pj < v) for v in comp.values())
    t.append(
        {
            "name": "physics residual (true θ_s) of hybrid_joint below neural_emulator and pinn",
            "value": ", ".join(
                f"{m} {v:.3g}" if v is not None else f"{m} —"
                for m, v in {"hybrid_joint": pj, **comp}.items()
            ),
            "target": "lower",
            "pass": bool(ok),
        }
    )
    if cfg.preset == "quick":
        t.append(
            {
                "name": "quick preset wall time",
                "value": f"{wall / 60:.1f} min",
                "target": "< 10 min",
                "pass": bool(wall < 600),
            }
        )
    return t


def _notes(cfg: KSStudyConfig, prob: Problem, truth_res: float) -> list[str]:
    return [
        f"Truth: generalised KS with a={cfg.a_true}, b={cfg.b_true}, c={cfg.c_true}, "
        f"d={cfg.d_true} on {cfg.n_fine} points, inner dt={cfg.dt / cfg.fine_substeps:g}; "
        f"coarse physics: KS without the d·u_xxx term on {cfg.n} points, ETDRK4 at dt={cfg.dt}, "
        f"prior a={cfg.a_prior}, b={cfg.b_prior}.",
        f"Out of domain: domain length {prob.length_ood:g} (in-domain {cfg.length:g}) at equal "
        f"grid spacing; no model was tuned on it.",
        f"MSE columns are the mean over steps 1..{cfg.main_horizon} "
        f"({cfg.main_horizon * cfg.dt:g} time units) of rollouts from the same initial states; "
        f"the correlation time is capped at the evaluated span "
        f"({cfg.corr_steps * cfg.dt:g} time units; {cfg.main_horizon * cfg.dt:g} for the PINN).",
        f"The PINN is fitted per test trajectory on the {cfg.pinn_window} states before the "
        f"forecast start (information the other methods do not get) and extrapolates "
        f"{cfg.main_horizon} steps; its θ_s stay at the prior.",
        f"Physics residual: mean squared residual of the generalised KS at the TRUE θ_s on "
        f"the first {cfg.main_horizon} predicted steps (central differences in time); the "
        f"truth itself scores {truth_res:.3g} at this dt.",
        "Hybrid closures are projected onto terms anti-equivariant under u(x) → -u(-x) "
        "('KS-odd'), which every KS term a, b, c parameterises is not: the closure cannot "
        "absorb θ_s. The 'closure' and 'theta' ablations show what happens without it.",
    ]


def main(
    preset: str = "quick",
    seeds: int = 3,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Entry point of ``scilayers run ks``: run the study and build its report."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}.")
    out = Path(out) if out is not None else Path("runs") / f"ks-{preset}"
    del data_dir  # the KS study generates its own truth (seeded and cached)
    results = run_study(
        PRESETS[preset], list(range(seeds)), out, resume=resume, progress=progress, log=log
    )
    try:
        from ..report import build_report
    except ImportError:  # pragma: no cover - report module missing
        return results
    build_report(out)
    return results
