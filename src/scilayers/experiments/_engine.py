"""The study engine: standard methods and ablations from a study's hooks, over seeds.

`run_study(study, seeds, out)` trains and evaluates

- reference forecasts: ``persistence`` (repeat the start state) and ``climatology`` (the
  training mean), so a method worse than doing nothing shows at a glance;
- ``pure_physics`` (prior θ_s), ``pure_physics_calibrated`` (θ_s fitted through the
  solver, no network), ``pinn`` (θ_s fixed at the prior, fitted per trajectory, Adam then
  L-BFGS), ``sequential_hybrid`` (calibrate, then a post-hoc residual network),
  ``neural_emulator`` (no physics), and the hybrid closure trained ``fixed`` / ``staged`` /
  ``joint``;
- ablations: strategy, λ_p sweep, learned vs fixed θ_s, identifiability variants
  (unrestricted, orthogonal, the study's projections) and training-set size;

caches each (run, seed) under ``OUT/runs`` (a killed study resumes with ``--resume``), and
writes ``OUT/results.json`` (schema in ``docs/design.md``), ``OUT/arrays.npz`` and the
report. Every trained method shares the study's `TrainConfig` budget; seeds differ only in
initialisation and data order.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import distributed
from .. import metrics as M
from ..baselines import calibrate, fit_pinn, neural_emulator, sequential_hybrid
from ..hybrid import Hybrid, NeuralStepper
from ..hybrid import identifiability as identifiability_of
from ..params import named, values
from ..solvers import rollout, takes_time
from ..training import fit
from ._common import RunCache, config_stamp, environment, write_json
from ._parallel import run_parallel
from ._study import AbstractStudy, EvalSet, Problem
from ._uq import run_uq, uq_targets

REFERENCE = ("persistence", "climatology")
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
    "persistence": "persistence (repeat the start state)",
    "climatology": "climatology (training mean)",
    "pure_physics": "physics, prior θ_s",
    "pure_physics_calibrated": "physics, θ_s calibrated (no network)",
    "pinn": "PINN, θ_s fixed at prior (Adam + L-BFGS)",
    "sequential_hybrid": "calibrate θ_s, then post-hoc residual net",
    "neural_emulator": "neural emulator (no physics)",
    "hybrid_fixed_theta": "hybrid closure, θ_s fixed at prior",
    "hybrid_staged": "hybrid closure, staged",
    "hybrid_joint": "hybrid closure, joint",
}
#: Methods no seed enters (no training, no sampling): evaluated for the first seed only.
DETERMINISTIC = ("persistence", "climatology", "pure_physics")
CONVERGENCE_RULE = (
    "converged if the best validation loss (fixed held-out windows) of the last quarter of "
    "the validations improves on the best before it by less than 5 % (a plateau), or if "
    "validation early-stopped; a method that is not is trained on at its final learning "
    "rate, a quarter of its budget at a time (up to the preset's extend_rounds), and "
    "converges when such an extension improves the best validation loss by less than 5 %"
)


# --------------------------------------------------------------------------------- runs


def train_runs(study: AbstractStudy, n_train: int) -> dict[str, dict]:
    """Every trained configuration of a study: run name → options."""
    cfg = study.cfg
    main = cfg.identifiable
    runs: dict[str, dict] = {
        "pure_physics_calibrated": {"kind": "calibrate"},
        "sequential_hybrid": {"kind": "sequential"},
        "neural_emulator": {"kind": "emulator"},
        "hybrid_fixed_theta": {"kind": "hybrid", "strategy": "fixed"},
        "hybrid_staged": {"kind": "hybrid", "strategy": "staged"},
        "hybrid_joint": {"kind": "hybrid", "strategy": "joint"},
    }
    for v in dict.fromkeys(cfg.closure_variants):
        if v != main:
            runs[f"abl_closure_{v}_joint"] = {"kind": "hybrid", "strategy": "joint", "closure": v}
            runs[f"abl_closure_{v}_fixed"] = {"kind": "hybrid", "strategy": "fixed", "closure": v}
    for lp in cfg.lambda_sweep:
        if lp != cfg.lambda_physics:
            runs[f"abl_lambda_{lp:g}"] = {"kind": "hybrid", "strategy": "joint", "lambda": lp}
    for size in cfg.data_sizes:
        if size < n_train:
            for m in cfg.data_methods:
                runs[f"abl_data_{size}_{m}"] = dict(runs[m], n_train=size, data_of=m)
    return runs


def _closure_kwargs(study: AbstractStudy, variant: str) -> tuple[dict, bool]:
    """``Hybrid`` keyword arguments of a closure variant, and whether the net is odd."""
    if variant == "unrestricted":
        return {}, False
    if variant == "orthogonal":
        return {"identifiable": "orthogonal"}, False
    projections = study.projections()
    if variant not in projections:
        raise ValueError(
            f"unknown closure variant {variant!r}; choose 'unrestricted', 'orthogonal' or one "
            f"of the study's projections {sorted(projections)}."
        )
    proj = projections[variant]
    return {"projection": proj}, bool(getattr(proj, "odd_network", True))


def _key(name: str, seed: int):
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % (2**31))


def train_config(study: AbstractStudy, problem: Problem, seed: int, hybrid: bool = True,
                 **changes):  # fmt: skip
    """The study's `TrainConfig` for one run of ``seed`` (with ``changes``): split over
    every device under ``--distributed``, fitting only the measured components where the
    problem has them (`Problem.observed`). ``hybrid``: a hybrid's, `StudyConfig.hybrid_train`
    where the study sets it (the ``--uq`` hybrid ensembles take this default); ``False``:
    the shared `StudyConfig.train`."""
    cfg = study.cfg
    base = cfg.hybrid_train if hybrid and cfg.hybrid_train is not None else cfg.train
    tc = base.replace(seed=seed, shard=base.shard or distributed.initialized(), **changes)
    if problem.observed is not None:  # sparse measurements: fit only what was measured
        tc = tc.replace(observed=tuple(int(i) for i in problem.observed))
    return tc


def hybrid(study: AbstractStudy, key, variant: str) -> Hybrid:
    """The study's physics with its closure inside every step, kept identifiable as the
    closure ``variant`` says (`_closure_kwargs`), network initialised from ``key``."""
    hkw, odd = _closure_kwargs(study, variant)
    return Hybrid(study.physics(), study.closure(key, odd=odd), coupling="closure", **hkw)


def _train(study: AbstractStudy, problem: Problem, name: str, opts: dict, seed: int, ckpt: Path,
           resume: bool, progress: bool):  # fmt: skip
    cfg = study.cfg
    tc = train_config(study, problem, seed, hybrid=opts["kind"] == "hybrid",
                      lambda_physics=opts.get("lambda", cfg.lambda_physics))  # fmt: skip
    key = _key(opts.get("data_of", name), seed)
    n = opts.get("n_train")
    train = problem.train[:n]
    kw: dict = {"val": problem.val, "progress": progress}
    if problem.train_t0 is not None:
        kw.update(t0=np.asarray(problem.train_t0)[:n], val_t0=problem.val_t0)
    if cfg.checkpoint_every:
        tc = tc.replace(checkpoint_every=cfg.checkpoint_every)
        found = distributed.agree((ckpt / "checkpoint.json").exists())  # process 0 decides
        kw.update(checkpoint_dir=ckpt, resume=resume or found)
    kind = opts["kind"]
    if kind == "calibrate":
        res = calibrate(study.physics(), train, tc, **kw)
    elif kind == "sequential":
        res = sequential_hybrid(study.physics(), study.closure(key), train, tc, **kw)
    elif kind == "emulator":  # cheap per step: trained longer, to its own convergence
        kw.pop("t0", None), kw.pop("val_t0", None)  # a NeuralStepper takes no time
        shape = problem.eval_sets["id"].state_shape
        tc = tc.replace(steps=cfg.emulator_steps or tc.steps)
        res = neural_emulator(study.emulator(key), shape, train, tc, **kw)
    else:
        model = hybrid(study, key, opts.get("closure", cfg.identifiable))
        tc = tc.replace(strategy=opts["strategy"])
        res = fit(model, train, tc, **kw)
    if name.startswith("abl_"):  # ablations compare variants at one equal budget
        return res
    return _train_on(res, tc, kind, train, kw, cfg.extend_rounds)


def _train_on(res, tc, kind: str, train, kw: dict, rounds: int):
    """Train a method that has not converged (`_convergence`) on, at the final learning
    rate of its schedule, a quarter of its budget per round, until a round improves the
    best validation loss by less than 5 % or ``rounds`` are done. Each round checkpoints in
    its own folder (``extend<i>``), so a killed study resumes inside it. Returns ``res``
    with the histories joined and ``val_round`` marking each validation's round."""
    history = {k: np.asarray(v) for k, v in res.history.items()}
    if "val_loss" not in history:
        return res
    history["val_round"] = np.zeros(len(history["val_loss"]), dtype=int)
    factor = 0.1 if tc.schedule == "cosine" else 1.0
    strategy = {"calibrate": "joint", "sequential": "fixed", "emulator": "joint"}.get(kind)
    if strategy is None:  # a hybrid: staged goes on as its fine-tune stage did
        staged_tail = "joint" if tc.stage_fractions[2] > 0 else "fixed"
        strategy = staged_tail if tc.strategy == "staged" else tc.strategy
    horizon = tc.longest_horizon
    more = tc.replace(
        strategy=strategy, steps=max(tc.val_every * 2, tc.steps // 4), schedule="constant",
        lr_theta=tc.lr_theta * factor, lr_net=tc.lr_net * factor, patience=None,
        horizon=1 if kind == "sequential" else horizon, horizon_schedule=(),
    )  # fmt: skip
    seconds = res.seconds
    for i in range(1, rounds + 1):
        if _convergence(history, False)["converged"]:
            break
        ext_kw = dict(kw)
        if "checkpoint_dir" in kw:
            folder = ext_kw["checkpoint_dir"] = Path(kw["checkpoint_dir"]) / f"extend{i}"
            if not kw.get("resume") and folder.exists() and distributed.is_writer():
                shutil.rmtree(folder)  # left by an earlier run; the first fit was fresh
        nxt = fit(res.model, train, more, **ext_kw)
        offset = int(history["step"][-1]) + 1 if len(history.get("step", [])) else 0
        joined = {}
        for k, v in history.items():
            if k == "val_round":
                joined[k] = np.concatenate([v, np.full(len(nxt.history["val_loss"]), i)])
            elif k in nxt.history:
                w = np.asarray(nxt.history[k])
                joined[k] = np.concatenate([v, w + offset if k in ("step", "val_step") else w])
            else:
                joined[k] = v
        history, seconds = joined, seconds + nxt.seconds
        res = dataclasses.replace(nxt, history=history, seconds=seconds,
                                  memory=res.memory or nxt.memory)  # fmt: skip
    return dataclasses.replace(res, history=history)


def transfer(study: AbstractStudy, model, eval_set: EvalSet):
    """``model`` (trained on the training domain) moved onto ``eval_set``'s domain: the
    study's physics there, with the learned θ_s (the Params that are free there) and the
    network weights carried over; fixed Params (a known forcing, a domain size) keep the
    set's values."""
    if eval_set.name == "id":
        return model
    if isinstance(model, NeuralStepper):
        net = study.move_network(model.net, eval_set)
        return NeuralStepper(net, eval_set.state_shape, model.dt, model.scale)
    if isinstance(model, Hybrid):
        step = transfer(study, model.step, eval_set)
        net = study.move_network(model.net, eval_set)
        out = eqx.tree_at(lambda h: (h.step, h.net), model, (step, net))
        if model.projection is None:
            return out
        moved = model.projection.moved_to(step.model)
        return eqx.tree_at(lambda h: h.projection, out, moved)
    return study.move_physics(model, eval_set)


@eqx.filter_jit
def _rollouts(step, u0, n_steps: int, t0):
    if t0 is None:
        return jax.vmap(lambda u: rollout(step, u, n_steps, check_finite=False))(u0)
    return jax.vmap(lambda u, t: rollout(step, u, n_steps, t, check_finite=False))(u0, t0)


def start_times(es: EvalSet, model, dt: float, count: int | None = None):
    """The time of each forecast start of ``es`` (its first ``count`` trajectories), or
    ``None`` where the set has no times or ``model`` takes none (a `NeuralStepper`)."""
    if es.t0 is None or not takes_time(model):
        return None
    return jnp.asarray(np.asarray(es.t0)[:count] + es.start * dt)


def pad_batch(x, size: int | None):
    """``x`` with its first axis padded to ``size`` by repeating its last row (``None`` or
    a smaller size: unchanged), so that sets of different sizes share a compiled program."""
    if x is None or size is None or x.shape[0] >= size:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], size - x.shape[0], axis=0)])


def forecast(model, es: EvalSet, steps: int, dt: float, pad_to: int | None = None) -> np.ndarray:
    """Rollouts of ``model`` (already on ``es``'s domain) from each trajectory's forecast
    start, at the start's time when the set has times: ``(batch, 1 + steps, *state)``.
    With `pad_to` the batch is padded to that size for the rollout (`pad_batch`)."""
    b = es.data.shape[0]
    u0 = pad_batch(jnp.asarray(es.data[:, es.start]), pad_to)
    t0 = pad_batch(start_times(es, model, dt), pad_to)
    return np.asarray(_rollouts(model, u0, steps, t0))[:b]


def _reference(name: str, problem: Problem, es: EvalSet, steps: int) -> np.ndarray:
    u0 = es.data[:, es.start]
    if name == "persistence":
        return np.repeat(u0[:, None], steps + 1, axis=1)
    mean = np.mean(problem.train, axis=(0, 1), dtype=np.float64)
    if mean.shape != es.state_shape:  # another grid: the scalar climatological mean
        mean = np.full(es.state_shape, mean.mean())
    pred = np.broadcast_to(mean, (u0.shape[0], steps + 1, *es.state_shape)).copy()
    pred[:, 0] = u0
    return pred


# ---------------------------------------------------------------------------- evaluation


def evaluate(study: AbstractStudy, problem: Problem, preds: dict[str, np.ndarray],
             lyap: dict[str, float]) -> dict:  # fmt: skip
    """Metrics of predictions ``{set: (batch, 1 + steps, *state)}`` from the forecast start."""
    cfg = study.cfg
    out: dict = {}
    for name, pred in preds.items():
        es = problem.eval_sets[name]
        s = es.start
        steps = pred.shape[1] - 1
        truth = es.data[: pred.shape[0], s : s + steps + 1]
        per_step = M.mse_by_step(pred, truth)
        h = min(cfg.main_horizon, steps)
        mse = float(per_step[1 : h + 1].mean())
        corr = float(M.correlation_time(pred, truth, cfg.dt).mean())
        out[f"{name}_mse"] = mse
        out[f"{name}_nmse"] = M.normalised(mse, truth)
        out[f"{name}_corr_time"] = corr
        if lyap.get(name):
            out[f"{name}_corr_time_lyap"] = corr * lyap[name]
        out[f"{name}_diverged"] = M.diverged_fraction(pred)
        out[f"{name}_horizon"] = [
            float(per_step[k]) if k <= steps else float("nan") for k in cfg.horizons
        ]
        phys = study.truth_model(es)
        key = "physics_residual" if name == "id" else f"physics_residual_{name}"
        if phys is not None:
            out[key] = M.physics_residual(phys, pred[:, : h + 1], cfg.dt)
        for k, v in study.extra_metrics(es, pred, truth).items():
            out[f"{name}_{k}"] = v
    return out


def _convergence(history: dict, early_stopped: bool) -> dict:
    """Final (best) validation loss and whether training reached a plateau."""
    val = np.asarray(history.get("val_loss", []), dtype=float)
    vstep = np.asarray(history.get("val_step", []), dtype=float)
    rounds = np.asarray(history.get("val_round", []), dtype=int)
    if vstep.size > 1 and (np.diff(vstep) <= 0).any():  # several fits in a row: the last
        cut = int(np.nonzero(np.diff(vstep) <= 0)[0][-1]) + 1
        rounds = rounds[cut:] if rounds.size == val.size else rounds
        val = val[cut:]
    steps = int(len(history.get("step", [])))
    if val.size < 4:
        data = np.asarray(history.get("data", [np.nan]), dtype=float)
        return {"final_loss": float(data[-1]), "converged": early_stopped, "steps": steps}
    if rounds.size == val.size and rounds.size and rounds.max() > 0:  # trained on: the last
        last = np.nanmin(val[rounds == rounds.max()])  # extension against all before it
        before = np.nanmin(val[rounds < rounds.max()])
        plateau = bool(np.isfinite(last) and last >= 0.95 * before)
        return {"final_loss": float(min(last, before)), "converged": plateau or early_stopped,
                "steps": steps, "extensions": int(rounds.max())}  # fmt: skip
    k = max(1, val.size // 4)
    last, before = np.nanmin(val[-k:]), np.nanmin(val[:-k])
    plateau = bool(np.isfinite(last) and last >= 0.95 * before)
    return {"final_loss": float(min(last, before)), "converged": plateau or early_stopped,
            "steps": steps}  # fmt: skip


def run_one(study: AbstractStudy, problem: Problem, name: str, opts: dict | None, seed: int,
            out: Path, resume: bool, progress: bool, lyap: dict[str, float]):  # fmt: skip
    """Train (if needed) and evaluate one method or ablation run for one seed."""
    cfg = study.cfg
    t0 = time.perf_counter()
    steps = cfg.corr_steps
    preds: dict[str, np.ndarray] = {}
    metrics: dict = {}
    model = None
    if name in REFERENCE:
        preds = {k: _reference(name, problem, es, steps) for k, es in problem.eval_sets.items()}
    elif name == "pinn":
        preds, metrics["convergence"] = _pinn(study, problem, seed)
        model = study.physics()
    elif name in study.extra_methods():
        built = study.extra_method(name, problem, seed, progress)
        if isinstance(built, dict):
            preds = {k: np.asarray(v)[:, : steps + 1] for k, v in built.items()}
        else:
            model = built
    else:
        if name == "pure_physics":
            model, history = study.physics(), None
        else:
            ckpt = out / "checkpoints" / name / f"seed{seed}"
            res = _train(study, problem, name, opts, seed, ckpt, resume, progress)
            model, history = res.model, res.history
            if getattr(res, "peak_memory_mb", None) is not None:  # XLA's, per device
                metrics["train_step_peak_mb"] = res.peak_memory_mb
            early = bool(res.config.patience) and len(history["step"]) < res.config.steps
            metrics["convergence"] = dict(_convergence(history, early), criterion=CONVERGENCE_RULE)
            metrics["theta_history"] = {
                k.split("/", 1)[1]: np.asarray(v, dtype=float).tolist()
                for k, v in history.items()
                if k.startswith("theta/")
            }
    if model is not None and name != "pinn" and not preds:  # forecasts of a model
        largest = max(e.data.shape[0] for e in problem.eval_sets.values())
        for k, es in problem.eval_sets.items():
            m = transfer(study, model, es)
            preds[k] = forecast(m, es, steps, cfg.dt, pad_to=largest)
            if not name.startswith("abl_"):
                for mk, mv in study.model_metrics(name, es, m, seed).items():
                    metrics[f"{k}_{mk}"] = mv
    metrics.update(evaluate(study, problem, preds, lyap))
    metrics["train_seconds"] = time.perf_counter() - t0
    metrics["theta"] = {} if model is None else {
        k: float(np.mean(np.asarray(v))) for k, v in values(model).items()
    }  # fmt: skip
    arrays = {}
    if seed == 0:
        for k, p in preds.items():
            arrays[k] = p[0, : cfg.field_steps + 1].astype(np.float32)
    return metrics, arrays


def _train_seeds(study: AbstractStudy, problem: Problem, name: str, opts: dict | None,
                 seeds: list[int], out: Path, resume: bool, lyap: dict[str, float],
                 stamp: str) -> list[tuple[int, float]]:  # fmt: skip
    """`run_one` for each seed in turn, each written to the run cache as it finishes (a
    worker's task in `run_parallel`); returns ``(seed, seconds)`` per seed."""
    cache, times = RunCache(Path(out) / "runs", stamp), []
    for seed in seeds:
        t0 = time.perf_counter()
        metrics, arrays = run_one(study, problem, name, opts, seed, out, resume, False, lyap)
        cache.put(name, seed, metrics, arrays)
        times.append((seed, time.perf_counter() - t0))
    return times


def _pinn(study: AbstractStudy, problem: Problem, seed: int):
    cfg = study.cfg
    preds, conv = {}, {"final_loss": [], "converged": [], "steps": []}
    for k, es in problem.eval_sets.items():
        model = study.pinn_model(es)
        if model is None or cfg.pinn is None:
            return {}, None
        s = es.start
        window = jnp.asarray(es.data[: cfg.pinn_trajectories, : s + 1])
        pc = dataclasses.replace(cfg.pinn, seed=seed)
        pred, info = fit_pinn(model, window, cfg.dt, cfg.main_horizon, pc)
        preds[k] = np.asarray(pred)[:, s:]
        conv["final_loss"] += np.asarray(info["final_loss"]).tolist()
        conv["converged"] += np.asarray(info["converged"]).tolist()
        conv["steps"] += np.asarray(info["lbfgs_iterations"]).tolist()
    final = float(np.mean(conv["final_loss"]))
    return preds, {
        "final_loss": final,
        "converged": bool(np.mean(conv["converged"]) >= 0.5),
        "converged_fraction": float(np.mean(conv["converged"])),
        "steps": float(np.mean(conv["steps"])),
        "criterion": f"Adam {cfg.pinn.adam_steps} steps, then L-BFGS up to "
        f"{cfg.pinn.lbfgs_steps} iterations; {getattr(cfg.pinn, 'criterion', '')}".strip("; "),
    }


# ------------------------------------------------------------------------- aggregation


def _theta_block(study: AbstractStudy, per_seed: list[dict], poorly: set[str]) -> dict:
    prior = {k: p for k, p in named(study.physics()).items() if not p.fixed}
    truth = study.truth_model()
    true = {} if truth is None else values(truth)
    out = {}
    for k, p in prior.items():
        learned = [m["theta"][k] for m in per_seed if k in m.get("theta", {})]
        if not learned:
            continue
        entry = {"initial": float(np.mean(np.asarray(p.value))), "learned": learned}
        if k in true:
            t = float(np.mean(np.asarray(true[k])))
            entry["true"] = t
            entry["rel_error"] = M.summary([M.relative_error(v, t) for v in learned])
        if k in poorly or any(q.startswith(f"{k}[") for q in poorly):  # E[0] of array E
            entry["identifiable"] = False
        out[k] = entry
    return out


def aggregate(study: AbstractStudy, problem: Problem, per_seed: list[dict],
              poorly: set[str] = frozenset()) -> dict:  # fmt: skip
    """Mean ± std over seeds of every metric of one run."""
    keys = sorted(
        {k for m in per_seed for k, v in m.items()
         if isinstance(v, int | float) or (v is None and not k.endswith("horizon"))}
    )  # fmt: skip
    out: dict = {k: M.summary([m.get(k) for m in per_seed]) for k in keys}
    out["horizon_mse"] = {}
    for name in problem.eval_sets:
        rows = [m[f"{name}_horizon"] for m in per_seed if f"{name}_horizon" in m]
        if rows:
            arr = np.asarray(rows, dtype=float)
            with np.errstate(invalid="ignore", over="ignore"):
                out["horizon_mse"][name] = {
                    "steps": list(study.cfg.horizons),
                    "mean": arr.mean(0).tolist(),
                    "std": arr.std(0).tolist(),
                }
    out["theta"] = _theta_block(study, per_seed, set(poorly))
    conv = [m["convergence"] for m in per_seed if m.get("convergence")]
    if conv:
        out["convergence"] = {
            "criterion": conv[0].get("criterion", CONVERGENCE_RULE),
            "final_loss": M.summary([c["final_loss"] for c in conv]),
            "converged": [bool(c["converged"]) for c in conv],
            "steps": M.summary([c["steps"] for c in conv]),
        }
    hist = [m["theta_history"] for m in per_seed if m.get("theta_history")]
    if hist:
        out["theta_history"] = {
            k: [h[k] for h in hist if k in h] for k in out["theta"] if any(k in h for h in hist)
        }
    return out


def _data_efficiency(study: AbstractStudy, problem: Problem, agg: dict) -> dict | None:
    cfg = study.cfg
    n_all = int(problem.train.shape[0])
    sizes = [s for s in cfg.data_sizes if s < n_all] + [n_all]
    if len(sizes) < 2:
        return None
    sets = list(problem.eval_sets)[:2]
    methods = {}
    for m in cfg.data_methods:
        runs = [agg.get(f"abl_data_{s}_{m}") for s in sizes[:-1]] + [agg.get(m)]
        if any(r is None for r in runs):
            continue
        methods[m] = {f"{k}_mse": [r[f"{k}_mse"] for r in runs] for k in sets}
    if not methods:
        return None
    threshold = 2.0 * min(
        r["mean"] for v in methods.values() for r in v["id_mse"] if r["mean"] is not None
    )
    needed = {}
    for m, v in methods.items():
        ok = [s for s, r in zip(sizes, v["id_mse"], strict=True)
              if r["mean"] is not None and r["mean"] <= threshold]  # fmt: skip
        needed[m] = ok[0] if ok else None
    winner: dict = {}
    for k in sets:
        winner[k] = {}
        for i, s in enumerate(sizes):
            best = min(
                ((v[f"{k}_mse"][i]["mean"], m) for m, v in methods.items()
                 if v[f"{k}_mse"][i]["mean"] is not None), default=(None, None)
            )  # fmt: skip
            winner[k][str(s)] = best[1]
    return {
        "sizes": sizes,
        "sets": sets,
        "methods": methods,
        "threshold": {"set": "id", "mse": threshold,
                      "rule": "twice the best in-domain MSE reached at any size"},
        "needed": needed,
        "winner": winner,
    }  # fmt: skip


def _ablations(study: AbstractStudy, agg: dict) -> dict:
    cfg = study.cfg
    main = cfg.identifiable
    lam = {f"{cfg.lambda_physics:g}": agg["hybrid_joint"]}
    for lp in cfg.lambda_sweep:
        if lp != cfg.lambda_physics:
            lam[f"{lp:g}"] = agg[f"abl_lambda_{lp:g}"]
    closure = {f"{main} (main), learned θ_s": agg["hybrid_joint"],
               f"{main} (main), fixed θ_s": agg["hybrid_fixed_theta"]}  # fmt: skip
    for v in dict.fromkeys(cfg.closure_variants):
        if v != main:
            closure[f"{v}, learned θ_s"] = agg[f"abl_closure_{v}_joint"]
            closure[f"{v}, fixed θ_s"] = agg[f"abl_closure_{v}_fixed"]
    out = {
        "strategy": {"joint": agg["hybrid_joint"], "staged": agg["hybrid_staged"],
                     "fixed": agg["hybrid_fixed_theta"]},
        "lambda_physics": {k: lam[k] for k in sorted(lam, key=float)},
        "identifiability": closure,
    }  # fmt: skip
    data = {}
    for name, entry in agg.items():
        if name.startswith("abl_data_"):
            size, method = name[len("abl_data_") :].split("_", 1)
            data[f"{method}, {size} trajectories"] = entry
    if data:
        out["data_efficiency"] = data
    return out


# ------------------------------------------------------------------------------- study


class _WallLedger:
    """The wall time of every invocation that worked on one study folder (``runs/wall.json``),
    updated as each run finishes, so a study killed and resumed reports the time it took in
    all (``wall_seconds_total``), not only that of its last invocation. Time after the last
    finished run of a killed invocation is not counted (its partial training is resumed
    from checkpoints)."""

    def __init__(self, path: Path, t_start: float):
        self.path, self.t_start = path, t_start
        self.earlier: list[float] = []
        if path.exists():
            try:
                self.earlier = [float(x) for x in json.loads(path.read_text())["seconds"]]
            except (ValueError, KeyError, TypeError):  # unreadable: start a new ledger
                self.earlier = []

    def seconds(self) -> list[float]:
        return [*self.earlier, time.perf_counter() - self.t_start]

    def update(self) -> None:
        write_json(self.path, {"seconds": self.seconds()})  # process 0 only

    def total(self) -> float:
        return float(sum(self.seconds()))

    def count(self) -> int:
        return len(self.earlier) + 1


def run_study(study: AbstractStudy, seeds: list[int], out: Path, *, resume: bool = False,
              progress: bool = True, cache_dir: Path | None = None,
              log: Callable[[str], None] = print, jobs: int = 1) -> dict:  # fmt: skip
    """Run every method and ablation of ``study`` over ``seeds``; write results, arrays and
    the report into ``out``. With ``jobs`` > 1 the (run, seed) trainings not yet cached
    run first on that many local worker processes (`run_parallel`; one process only: not
    in a ``--distributed`` run); the results are the same."""
    t_start = time.perf_counter()
    cfg = study.cfg
    out = Path(out)
    if not resume and distributed.is_writer():
        for sub in ("runs", "checkpoints"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    cache = RunCache(out / "runs", config_stamp(cfg))
    ledger = _WallLedger(out / "runs" / "wall.json", t_start)
    cache_dir = cache_dir if cache_dir is not None else out.parent / ".cache"
    problem = study.problem(cache_dir, progress)
    sets = ", ".join(f"{k}: {v.data.shape[0]} ({v.label})" for k, v in problem.eval_sets.items())
    log(f"truth: {problem.train.shape[0]} train / {problem.val.shape[0]} val trajectories; "
        f"evaluation sets {sets}")  # fmt: skip
    lyap = study.lyapunov(problem, progress)
    if lyap:
        log("truth λ₁: " + ", ".join(f"{k} {v:.4f} (Lyapunov time {1 / v:.1f})"
                                      for k, v in lyap.items()))  # fmt: skip
    ident = _identifiability(study, problem)
    poorly = set(ident.get("poorly_identified", [])) if ident else set()

    runs = train_runs(study, int(problem.train.shape[0]))
    extras = study.extra_methods()
    clash = set(extras) & {*REFERENCE, *METHODS, *runs}
    if clash:
        raise ValueError(f"the {study.name} study's baselines reuse engine names {sorted(clash)}.")
    names = [*REFERENCE, *METHODS, *extras, *[n for n in runs if n not in METHODS]]
    data_seeds = seeds if cfg.data_seeds is None else seeds[: cfg.data_seeds]
    abl_seeds = seeds if cfg.ablation_seeds is None else seeds[: cfg.ablation_seeds]

    def seeds_of(name: str) -> list[int]:
        if name.startswith("abl_data_"):
            return data_seeds
        if name.startswith("abl_"):
            return abl_seeds
        if name == "pinn" and cfg.pinn_seeds is not None:
            return seeds[: cfg.pinn_seeds]
        if name in DETERMINISTIC:  # no seed enters it: evaluated once
            return seeds[:1]
        return seeds

    if jobs > 1 and jax.process_count() == 1:
        todo = [(n, runs.get(n), [s for s in seeds_of(n) if cache.get(n, s) is None])
                for n in names]  # fmt: skip
        for stale in dict.fromkeys(cache.stale):
            log(f"{stale}: the cached result was made with another config; recomputing")
        todo = [t for t in todo if t[2]]
        if todo:
            log(f"{sum(len(t[2]) for t in todo)} runs of {len(todo)} methods on "
                f"{min(jobs, len(todo))} worker processes")  # fmt: skip

        def done(name: str, times, _):
            ledger.update()
            log(f"  {name}: " + ", ".join(f"seed {s} {t:.0f} s" for s, t in times))

        tasks = [(n, _train_seeds, (n, opts, ss, out, resume, lyap, cache.stamp))
                 for n, opts, ss in todo]  # fmt: skip
        run_parallel(study, tasks, jobs=jobs, cache_dir=cache_dir, done=done, log=log)
        cache.stale.clear()

    results: dict[str, list[dict]] = {}
    agg: dict[str, dict] = {}  # run name -> mean ± std over seeds
    fields: dict[str, np.ndarray] = {}
    for name in names:
        results[name] = []
        for seed in seeds if name in DETERMINISTIC else seeds_of(name):
            hit = cache.get(name, seed)
            if hit is None and cache.stale[-1:] == [f"{name} (seed {seed})"]:
                log(f"{name} (seed {seed}): the cached result was made with another config; "
                    "recomputing")  # fmt: skip
            if hit is None and name in DETERMINISTIC and results[name]:
                hit = dict(results[name][0]), {}  # no seed enters it: evaluated once
            if hit is None:
                metrics, arr = run_one(study, problem, name, runs.get(name), seed, out, resume,
                                       progress, lyap)  # fmt: skip
                cache.put(name, seed, metrics, arr)
                ledger.update()
            else:
                metrics, arr = hit
            results[name].append(metrics)
            if seed == seeds[0] and name in (*REFERENCE, *METHODS, *extras):
                for k, v in arr.items():
                    fields[f"pred_{k}__{name}"] = v
        if not results[name]:
            continue
        agg[name] = m = aggregate(study, problem, results[name], poorly)
        th = {p: np.round(v["learned"], 4).tolist() for p, v in m["theta"].items()}
        mse = "  ".join(f"{k} {_fmt(m.get(f'{k}_mse'))}" for k in problem.eval_sets)
        log(f"{name:40s} {mse}  θ {th}")

    methods = {}
    for name in (*REFERENCE, *METHODS, *extras):
        if name == "pinn" and not any(m.get("id_mse") is not None for m in results[name]):
            continue  # the PINN does not apply to this study
        methods[name] = {"label": LABELS.get(name) or extras[name], **agg[name]}
        if name in REFERENCE:
            methods[name]["reference"] = True
    ablations = _ablations(study, agg)

    arrays_out: dict[str, np.ndarray] = {"dt": np.asarray(cfg.dt)}
    for k, es in problem.eval_sets.items():
        s = es.start
        arrays_out[f"truth_{k}"] = es.data[0, s : s + cfg.field_steps + 1]
        if "x" in es.context:
            arrays_out[f"x_{k}"] = np.asarray(es.context["x"])
    arrays_out.update(fields)
    uq = None
    if cfg.uq != "none":
        uq, uq_arrays = run_uq(study, problem, seeds[0], out, cfg.uq, progress, log,
                               jobs=jobs, cache_dir=cache_dir)  # fmt: skip
        arrays_out.update(uq_arrays)
    if distributed.is_writer():
        np.savez(out / "arrays.npz", **arrays_out)

    wall = time.perf_counter() - t_start
    ledger.update()
    results_json = {
        "experiment": study.name,
        "preset": cfg.preset,
        "seeds": list(seeds),
        "config": cfg.to_dict(),
        "environment": environment(),
        "main_horizon_steps": cfg.main_horizon,
        "dt": cfg.dt,
        "eval_sets": list(problem.eval_sets),
        "eval_set_labels": {k: v.label for k, v in problem.eval_sets.items()},
        "field_kind": study.field_kind,
        "methods": methods,
        "ablations": ablations,
        "truth": {
            "lyapunov_exponent": lyap,
            "lyapunov_time": {k: 1 / v for k, v in lyap.items() if v > 0},
            "checks": study.truth_checks(problem),
        },
        "wall_seconds": wall,
        "wall_seconds_total": ledger.total(),
        "invocations": ledger.count(),
        "jobs": jobs if jax.process_count() == 1 else 1,
    }
    if ident:
        results_json["identifiability"] = ident
    if uq is not None:
        results_json["uq"] = uq
    de = _data_efficiency(study, problem, agg)
    if de:
        results_json["data_efficiency"] = de
    for k, v in study.study_results(problem, results_json).items():
        if k in results_json:
            raise ValueError(f"the {study.name} study's results block {k!r} reuses an engine key.")
        results_json[k] = v
    results_json["targets"] = _generic_targets(results_json) + study.targets(results_json)
    results_json["notes"] = _generic_notes(study, problem) + study.notes(problem)
    results_json["figures"] = (
        study.figures(out, results_json, arrays_out) if distributed.is_writer() else []
    )
    write_json(out / "results.json", results_json)
    return results_json


def _identifiability(study: AbstractStudy, problem: Problem) -> dict | None:
    """Fisher information of the free θ_s on (a slice of) the training data, at the
    trajectories' times, from the measured components only (`Problem.observed`)."""
    t0 = None if problem.train_t0 is None else np.asarray(problem.train_t0)[:16]
    try:
        res = identifiability_of(study.physics(), jnp.asarray(problem.train[:16, :41]), t0=t0,
                                 observed=problem.observed)  # fmt: skip
    except (ValueError, NotImplementedError):
        return None
    return res.to_dict()


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    return f"{stat['mean']:.3e} ± {stat['std']:.1e}"


def _generic_targets(res: dict) -> list[dict]:
    """Targets every study shares: beat doing nothing; every method converged."""
    methods = res["methods"]
    out = []
    ref = [methods[r]["id_mse"]["mean"] for r in REFERENCE if r in methods]
    best_ref = min((v for v in ref if v is not None), default=None)
    joint = methods.get("hybrid_joint", {}).get("id_mse", {}).get("mean")
    if best_ref is not None and joint is not None:
        out.append({"name": "hybrid_joint in-domain MSE below the best trivial forecast",
                    "value": f"{joint:.3g} vs {best_ref:.3g}", "target": "lower",
                    "pass": bool(joint < best_ref)})  # fmt: skip
    unconverged = [
        m for m, v in methods.items()
        if "convergence" in v and not all(v["convergence"]["converged"])
    ]  # fmt: skip
    out.append({"name": "every trained method meets its convergence criterion on every seed",
                "value": "all" if not unconverged else "not: " + ", ".join(unconverged),
                "target": "all", "pass": not unconverged})  # fmt: skip
    if res.get("preset") == "quick":
        wall = res.get("wall_seconds_total", res.get("wall_seconds", 0.0))
        runs = res.get("invocations", 1)
        how = "" if runs == 1 else f", {runs} invocations (killed and resumed) together"
        how += f", {res.get('jobs', 1)} worker process{'es' if res.get('jobs', 1) > 1 else ''}"
        out.append({"name": "quick preset under 10 minutes (2 cores)",
                    "value": f"{wall / 60:.1f} min (before figures{how})", "target": "< 10",
                    "pass": bool(wall < 600)})  # fmt: skip
    return out + uq_targets(res.get("uq"))


def _generic_notes(study: AbstractStudy, problem: Problem) -> list[str]:
    cfg = study.cfg
    return [
        f"MSE columns are the mean over forecast steps 1..{cfg.main_horizon} "
        f"({cfg.main_horizon * cfg.dt:g} time units) of rollouts from the same start states; "
        f"correlation times are capped at the evaluated span ({cfg.corr_steps * cfg.dt:g}).",
        "persistence repeats the start state; climatology forecasts the training mean. A "
        "method with a larger MSE than these is worse than doing nothing.",
        f"Convergence: {CONVERGENCE_RULE}.",
        f"The PINN is fitted per trajectory on the {cfg.context_steps} states before the "
        f"forecast start (information the other methods do not get), on the first "
        f"{cfg.pinn_trajectories} trajectories of each set"
        + ("" if cfg.pinn_seeds is None else f", for {cfg.pinn_seeds} seed(s)")
        + f" (its cost is per trajectory), and forecasts {cfg.main_horizon} steps; its θ_s "
        "stay at the prior.",
    ]
