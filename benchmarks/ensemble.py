"""Deep-ensemble training cost: M members trained as one vectorised program
(`scilayers.uq.train_ensemble`) against M separate `scilayers.fit` runs of the same
members, same config and seeds, measured in the same process and interleaved.

Both sides train exactly the same models (the test suite checks that member i of the
ensemble equals ``fit(member i)`` to round-off). The ratio is what a user gains: the
members vectorised, and each segment of steps one ``lax.scan`` (where `fit` returns to
Python every step for its history, NaN guard, validation and checkpoints). Compilation
is excluded by a warm-up of each side; the median of ``--reps`` interleaved repetitions is
reported with its min–max.

Usage: python benchmarks/ensemble.py [--members 5] [--steps 100] [--reps 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import scilayers as sl


def _problem(key):
    """A two-scale-like Lorenz-96 calibration: K = 8, a hybrid closure (MLP) with the
    damping θ_s learned, trajectories from the true damping 1.8."""
    truth = sl.models.Lorenz96(8, forcing=sl.Param(20.0, fixed=True),
                               damping=sl.Param(1.8, "positive"))  # fmt: skip
    step = sl.solvers.Diffrax(truth, 0.05)
    u0 = 20.0 * jax.random.uniform(key, (16, 8))
    data = jax.vmap(lambda u: sl.rollout(step, u, 60))(u0)

    def build(k):
        model = sl.models.Lorenz96(8, forcing=sl.Param(20.0, fixed=True),
                                   damping=sl.Param(1.0, "positive"))  # fmt: skip
        net = sl.nn.MLP(8, 8, width=32, depth=2, key=k)
        return sl.Hybrid(sl.solvers.Diffrax(model, 0.05), net, coupling="closure")

    return build, data


def run(members: int, steps: int, reps: int) -> dict:
    build, data = _problem(jax.random.key(0))
    cfg = sl.TrainConfig(steps=steps, batch_size=8, horizon=5, lr_theta=2e-2, lr_net=1e-3)
    init = sl.uq.init_members(build, jax.random.key(1), members, theta="jitter")
    seeds = list(range(members))

    def ensemble():
        res = sl.uq.train_ensemble(init, data, cfg, seeds=seeds)
        jax.block_until_ready(jax.tree_util.tree_leaves(res.models))

    def loop():
        for i in range(members):
            m = sl.uq.member(init, i)
            res = sl.fit(m, data, cfg.replace(seed=seeds[i]), progress=False)
            jax.block_until_ready(jax.tree_util.tree_leaves(res.model))

    ensemble(), loop()  # compile both
    times: dict[str, list[float]] = {"ensemble": [], "loop": []}
    for _ in range(reps):
        for name, fn in (("ensemble", ensemble), ("loop", loop)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ratio = [e / lp for e, lp in zip(times["ensemble"], times["loop"], strict=True)]
    return {
        "members": members,
        "steps": steps,
        "reps": reps,
        "device": str(jax.devices()[0].platform),
        "ensemble_seconds": {"median": float(np.median(times["ensemble"])),
                             "min": min(times["ensemble"]), "max": max(times["ensemble"])},
        "loop_seconds": {"median": float(np.median(times["loop"])),
                         "min": min(times["loop"]), "max": max(times["loop"])},
        "ratio": {"median": float(np.median(ratio)), "min": min(ratio), "max": max(ratio)},
        "target": "ensemble clearly cheaper than M separate runs (ratio < 1)",
        "pass": bool(max(ratio) < 1.0),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    res = run(args.members, args.steps, args.reps)
    e, lp, r = res["ensemble_seconds"], res["loop_seconds"], res["ratio"]
    print(f"ensemble of {res['members']} members, {res['steps']} steps, {res['reps']} "
          f"interleaved repetitions ({res['device']}):")  # fmt: skip
    def span(d):
        return f"{d['median']:.2f} s (min {d['min']:.2f}, max {d['max']:.2f})"

    print(f"  one vectorised program : {span(e)}")
    print(f"  {res['members']} separate fits       : {span(lp)}")
    print(f"  ratio ensemble / loop  : {r['median']:.2f} (min {r['min']:.2f}, max {r['max']:.2f}) "
          f"-> {'PASS' if res['pass'] else 'FAIL'} ({res['target']})")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
