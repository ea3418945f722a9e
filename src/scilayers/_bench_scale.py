"""Benchmarks of scale (issue 12): a training step over 1, 2, 4 devices, and the memory and
time of a long-unroll training step per rollout memory policy.

Separate from the speed suite (`scilayers._bench`); run by ``benchmarks/scaling.py``,
``benchmarks/memory.py`` and ``scilayers bench --scale``. The device count of a process is
fixed before JAX starts, so each device count runs in its own subprocess
(``python -m scilayers._bench_scale worker ...``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

#: The KS hybrid both benchmarks train: coarse KS physics (a, b learnable) in ETDRK4 with a
#: CNN closure inside every stage, as the KS study trains it.
SETUP = dict(length=22.0, dt=0.25, closure_width=16, kernel_size=5)


def _problem(n: int, trajectories: int, states: int):
    """``(hybrid, data)``: the KS closure hybrid on ``n`` points and ``trajectories`` truth
    trajectories of ``states`` states (KS with a = b = 1), float32."""
    import jax
    import jax.numpy as jnp

    from . import models, solvers
    from .hybrid import Hybrid
    from .nn import PeriodicCNN1d
    from .params import Param, Positive
    from .solvers import rollout

    physics = models.KuramotoSivashinsky(
        SETUP["length"], n, a=Param(0.8, Positive(), name="a"),
        b=Param(1.25, Positive(), name="b"), c=Param(1.0, fixed=True, name="c"), d=None,
    )  # fmt: skip
    closure = PeriodicCNN1d(width=SETUP["closure_width"], depth=1,
                            kernel_size=SETUP["kernel_size"], activation=jnp.tanh,
                            key=jax.random.key(0))  # fmt: skip
    hybrid = Hybrid(solvers.ETDRK4(physics, SETUP["dt"]), closure, coupling="closure")
    truth = solvers.ETDRK4(models.KuramotoSivashinsky(SETUP["length"], n), SETUP["dt"])
    u0 = jax.vmap(truth.model.initial_condition)(jax.random.split(jax.random.key(1), trajectories))
    burn = jax.vmap(lambda u: rollout(truth, u, 200, check_finite=False)[-1])(u0)
    data = jax.vmap(lambda u: rollout(truth, u, states - 1, check_finite=False))(burn)
    return hybrid, data


def _step_fn(config, hybrid, data, shard: bool):
    """A no-argument function running one compiled training step, and its arguments."""
    import jax
    import jax.numpy as jnp

    from . import distributed
    from .training import (
        compiled_train_step,
        init_opt_state,
        loss_weights,
        split_trainable,
        stages_for,
    )

    stage = stages_for(config)[0]
    trainable, static = split_trainable(hybrid, stage)
    opt = init_opt_state(config, stage, trainable)
    args = (trainable, opt, static, data)
    if shard:
        args = distributed.replicate(args)
    hyper = dict(loss_weights(config), lr_scale=jnp.asarray(1.0))
    fn = compiled_train_step(config, stage, config.horizon)
    full = (*args, jax.random.key(0), hyper)
    return (lambda: jax.block_until_ready(fn(*full))), fn, full


def _median_time(fns: dict, repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Seconds per call of each function: median and spread over ``repeats``, interleaved."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t)
    return {k: _summary(v) for k, v in samples.items()}


def _summary(samples: list[float]) -> dict[str, Any]:
    import numpy as np

    return {"median": float(np.median(samples)), "min": float(np.min(samples)),
            "max": float(np.max(samples)), "samples": [float(x) for x in samples]}  # fmt: skip


# ------------------------------------------------------------------------------ scaling


def scaling_worker(batch: int, horizon: int, n: int, repeats: int) -> dict[str, Any]:
    """In a process with its device count fixed: the time of one sharded training step."""
    import jax

    from .training import TrainConfig

    config = TrainConfig(batch_size=batch, horizon=horizon, shard=True, memory="full")
    hybrid, data = _problem(n, 64, horizon + 41)
    t0 = time.perf_counter()
    run, _, _ = _step_fn(config, hybrid, data, shard=True)
    run()
    compile_s = time.perf_counter() - t0
    t = _median_time({"step": run}, repeats)["step"]
    return {"devices": jax.device_count(), "compile_s": compile_s, "step_s": t}


#: XLA flags that keep each host device to one thread (no intra-op thread pool).
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _worker(d: int, batch: int, horizon: int, n: int, repeats: int,
            single_thread: bool = False) -> dict[str, Any]:  # fmt: skip
    flags = f"--xla_force_host_platform_device_count={d}"
    if single_thread:
        flags = f"{flags} {SINGLE_THREAD}"
    env = dict(os.environ, XLA_FLAGS=flags)
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-m", "scilayers._bench_scale", "worker", str(batch), str(horizon),
           str(n), str(repeats)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling worker with {d} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scaling(devices=(1, 2, 4), batch: int = 64, horizon: int = 20, n: int = 64,
                  repeats: int = 10, rounds: int = 2,
                  single_thread: bool = False) -> dict[str, Any]:  # fmt: skip
    """A training step of the KS hybrid (global batch ``batch``, ``horizon``-step unroll,
    N = ``n``) with its batch split over 1, 2, 4 devices, each count in its own process
    (forced host devices on a CPU). Strong scaling: throughput (windows/s) and parallel
    efficiency ``t_1 / (D · t_D)``. The counts run in ``rounds`` passes, in alternating
    order (1, 2, 4, then 4, 2, 1), and each count's samples are pooled, so that a change
    of machine load during the run does not favour one count. ``single_thread``: each host
    device runs on one thread (`SINGLE_THREAD`), as an independent processor would; by
    default XLA's CPU thread pool also parallelises within a device."""
    samples: dict[int, list[float]] = {d: [] for d in devices}
    compile_s: dict[int, list[float]] = {d: [] for d in devices}
    for r in range(rounds):
        for d in devices if r % 2 == 0 else tuple(reversed(devices)):
            res = _worker(d, batch, horizon, n, repeats, single_thread)
            if res["devices"] != d:
                raise RuntimeError(f"asked for {d} devices, the worker saw {res['devices']}.")
            samples[d] += res["step_s"]["samples"]
            compile_s[d].append(res["compile_s"])
    rows = [{"devices": d, "step_s": _summary(samples[d]), "compile_s": compile_s[d]}
            for d in devices]  # fmt: skip
    t1 = rows[0]["step_s"]["median"]
    for r in rows:
        t = r["step_s"]["median"]
        r["throughput"] = batch / t
        r["speedup"] = t1 / t
        r["efficiency"] = t1 / (r["devices"] * t)
    return {
        "setup": dict(SETUP, n=n, batch=batch, horizon=horizon, repeats=repeats * rounds,
                      cpu_count=os.cpu_count(), single_thread=single_thread),
        "rows": rows,
    }  # fmt: skip


def scaling_table(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        f"Training step of the KS closure hybrid, N={s['n']}, global batch {s['batch']}, "
        f"{s['horizon']}-step unroll, split over D devices ({s['cpu_count']} CPU cores"
        f"{', one thread per device' if s.get('single_thread') else ''}; "
        f"median of {s['repeats']})",
        "",
        "| devices | step (ms) | spread (ms) | windows/s | speedup | efficiency |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        t = r["step_s"]
        lines.append(
            f"| {r['devices']} | {t['median'] * 1e3:.1f} | {t['min'] * 1e3:.1f}–"
            f"{t['max'] * 1e3:.1f} | {r['throughput']:.0f} | {r['speedup']:.2f} | "
            f"{r['efficiency']:.0%} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- memory


def bench_memory_policies(n: int = 256, batch: int = 64, horizon: int = 200,
                          repeats: int = 5) -> dict[str, Any]:  # fmt: skip
    """A training step of the KS hybrid with a ``horizon``-step unroll at N = ``n``, batch
    ``batch``, per rollout memory policy: XLA's peak memory of the compiled step
    (`scilayers.training.step_memory`), the estimate `fit` chooses by
    (`scilayers.training.plan_memory`), and the step time (median of ``repeats``,
    interleaved). Target: ``checkpoint`` or ``recursive`` at <= 1/5 of ``full``'s peak and
    <= 1.5x its time."""
    import jax

    from .solvers import MEMORY_POLICIES
    from .training import TrainConfig, plan_memory, step_memory
    from .training._memory import state_struct

    hybrid, data = _problem(n, batch, horizon + 21)
    rows: dict[str, dict[str, Any]] = {}
    fns = {}
    for policy in MEMORY_POLICIES:
        config = TrainConfig(batch_size=batch, horizon=horizon, memory=policy)
        run, fn, args = _step_fn(config, hybrid, data, shard=False)
        t0 = time.perf_counter()
        measured = step_memory(fn, *args)
        compile_s = time.perf_counter() - t0
        windows = jax.ShapeDtypeStruct((batch, horizon + 1, n), data.dtype)
        est = plan_memory(hybrid, state_struct(windows), horizon, batch, policy)
        rows[policy] = {"measured_mb": measured, "estimate_mb": est.estimates_mb[policy],
                        "compile_s": compile_s}  # fmt: skip
        fns[policy] = run
    times = _median_time(fns, repeats)
    full = rows["full"]
    for policy, r in rows.items():
        r["step_s"] = times[policy]
        r["peak_vs_full"] = r["measured_mb"]["peak"] / full["measured_mb"]["peak"]
        r["temp_vs_full"] = r["measured_mb"]["temporaries"] / full["measured_mb"]["temporaries"]
        r["time_vs_full"] = times[policy]["median"] / times["full"]["median"]
        r["meets_target"] = bool(r["peak_vs_full"] <= 0.2 and r["time_vs_full"] <= 1.5)
    return {
        "setup": dict(SETUP, n=n, batch=batch, horizon=horizon, repeats=repeats,
                      dtype=str(data.dtype), backend=jax.default_backend()),
        "rows": rows,
    }  # fmt: skip


def memory_table(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        f"Training step of the KS closure hybrid, {s['horizon']}-step unroll, N={s['n']}, "
        f"batch {s['batch']}, {s['dtype']} on {s['backend']} (XLA memory_analysis; time: "
        f"median of {s['repeats']}). Target: <= 1/5 of full's peak at <= 1.5x its time.",
        "",
        "| policy | peak (MiB) | temporaries (MiB) | estimate (MiB) | peak / full | "
        "step (s) | time / full | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for policy, r in res["rows"].items():
        m, t = r["measured_mb"], r["step_s"]
        verdict = "—" if policy == "full" else ("met" if r["meets_target"] else "not met")
        lines.append(
            f"| {policy} | {m['peak']:.1f} | {m['temporaries']:.1f} | {r['estimate_mb']:.1f} | "
            f"{r['peak_vs_full']:.3f} | {t['median']:.2f} ({t['min']:.2f}–{t['max']:.2f}) | "
            f"{r['time_vs_full']:.2f} | {verdict} |"
        )
    return "\n".join(lines)


def run_scale_benchmarks(quick: bool = False, out: str | os.PathLike | None = None) -> dict:
    """Both benchmarks, printed as Markdown tables (``quick``: smaller sizes, said so);
    written as JSON to ``out`` when given."""
    if quick:
        scaling = bench_scaling(batch=32, horizon=10, repeats=5)
        memory = bench_memory_policies(n=128, batch=16, horizon=100, repeats=3)
    else:
        scaling = bench_scaling()
        memory = bench_memory_policies()
    print(scaling_table(scaling) + "\n")
    print(memory_table(memory))
    res = {"quick": quick, "scaling": scaling, "memory": memory}
    if out is not None:
        from pathlib import Path

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        b, h, n, r = map(int, sys.argv[2:6])
        print(json.dumps(scaling_worker(b, h, n, r)))
    else:
        run_scale_benchmarks(quick="--quick" in sys.argv)
