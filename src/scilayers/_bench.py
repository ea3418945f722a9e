"""The benchmark suite behind `scilayers bench` and `benchmarks/run.py`.

Every speed target is a *ratio* of two timings taken in the same process. The candidates
of a figure are timed interleaved (A, B, A, B, …, at least five repetitions, after
compilation and warm-up), so that a burst of load on a shared machine hits both alike; the
figure is the median over repetitions of the per-repetition ratio, shown with its spread
(interquartile range and min–max) and with how many repetitions met the target. Each timed
call is a jitted ``lax.scan`` of many steps ending with ``block_until_ready``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import models, solvers
from .solvers import rollout


@dataclass
class Figure:
    """One benchmark figure: our value, the reference it is compared with, the ratio and
    the target on that ratio (or on the value itself when there is no reference).

    Values are medians over the interleaved repetitions; ``spread`` holds the quantiles of
    ``value`` and ``reference`` (same unit), ``ratio_spread`` those of the per-repetition
    ratio, and ``within`` how many repetitions met the target, out of ``repeats``.
    """

    key: str
    label: str
    value: float
    unit: str
    reference: float | None = None
    reference_label: str = ""
    ratio: float | None = None
    target: float | None = None
    target_text: str = ""
    passed: bool | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    spread: dict[str, dict[str, float]] | None = None
    ratio_spread: dict[str, float] | None = None
    within: int | None = None
    repeats: int | None = None


# --------------------------------------------------------------------------- timing helpers
def _block(x):
    return jax.block_until_ready(x)


def time_samples(
    fns: dict[str, Callable[[], Any]], repeats: int, number: int = 1, warmup: int = 2
) -> dict[str, np.ndarray]:
    """Wall-time samples (s per call) of each function, repeats interleaved.

    Every function is called ``warmup`` times first (compilation and caches). Then, for each
    repeat, each function in turn is called ``number`` times back to back and blocked on; the
    time divided by ``number`` is one sample. Interleaving makes a burst of load on the
    machine hit all candidates alike, so per-repetition ratios stay meaningful; the order is
    reversed every other repetition (A, B, …, B, A, …), so that no candidate always runs
    first after a pause. Many short repetitions beat a few long ones on a shared machine:
    a burst of load then spoils few pairs, and the median ignores them.
    """
    for f in fns.values():
        for _ in range(warmup):
            _block(f())
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for rep in range(repeats):
        for k, f in order if rep % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            out = None
            for _ in range(number):
                out = f()
            _block(out)
            samples[k].append((time.perf_counter() - t0) / number)
    return {k: np.asarray(v) for k, v in samples.items()}


def median_times(
    fns: dict[str, Callable[[], Any]], repeats: int, number: int = 1, warmup: int = 2
) -> dict[str, float]:
    """Median over interleaved repeats of the wall time (s) of one call of each function."""
    return {k: float(np.median(v)) for k, v in time_samples(fns, repeats, number, warmup).items()}


def quantiles(x, scale: float = 1.0) -> dict[str, float]:
    """min, quartiles, median and max of the samples ``x`` (times ``scale``)."""
    x = np.asarray(x, dtype=float) * scale
    q = np.percentile(x, [0, 25, 50, 75, 100])
    return dict(zip(("min", "q25", "median", "q75", "max"), (float(v) for v in q), strict=True))


def _spread(samples: dict[str, np.ndarray], scale: float = 1.0) -> dict[str, dict[str, float]]:
    """The quantiles of each sample set (`quantiles`), to show how noisy the machine was."""
    return {k: quantiles(v, scale) for k, v in samples.items()}


def _ratio_figure(key, label, ours, ref, unit, ref_label, target, note="", scale=1.0, **details):
    """A figure from interleaved samples ``ours`` and ``ref`` (seconds, same length): the
    median per-repetition ratio against ``target``, with spreads. Scalars (a measurement
    that does not vary, such as compiled memory) give a figure without spreads."""
    ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    ratios = ours / ref
    ratio = float(np.median(ratios))
    if ratios.ndim == 0:
        return Figure(
            key=key,
            label=label,
            value=float(ours) * scale,
            unit=unit,
            reference=float(ref) * scale,
            reference_label=ref_label,
            ratio=ratio,
            target=target,
            target_text=f"<= {target:g}x",
            passed=bool(ratio <= target),
            note=note,
            details=details,
        )
    return Figure(
        key=key,
        label=label,
        value=float(np.median(ours)) * scale,
        unit=unit,
        reference=float(np.median(ref)) * scale,
        reference_label=ref_label,
        ratio=ratio,
        target=target,
        target_text=f"<= {target:g}x",
        passed=bool(ratio <= target),
        note=note,
        details=details,
        spread={"value": quantiles(ours, scale), "reference": quantiles(ref, scale)},
        ratio_spread=quantiles(ratios),
        within=int(np.sum(ratios <= target)),
        repeats=len(ratios),
    )


def _initial_batch(model, batch: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), batch)
    return jax.vmap(model.initial_condition)(keys)


# --------------------------------------------------------------------- (a) step throughput
@eqx.filter_jit
def _ours_rollout(step, u0, steps: int):
    return jax.vmap(lambda u: rollout(step, u, steps))(u0)


@eqx.filter_jit
def _ours_step_scan(step, u0, steps: int):
    """``steps`` steps of the (prepared) stepper on the batch, as `rollout` takes them
    (``init_carry`` once, then ``step_carry``), in a bare ``lax.scan`` that stores the state
    after every step: the same harness as `_fft_floor`, so the two differ only by the
    step's work."""
    prepared = step.prepare()
    carry = jax.vmap(prepared.init_carry)(u0)

    def body(c, _):
        c = jax.vmap(prepared.step_carry)(c)
        return c, prepared.carry_output(c)

    return jax.lax.scan(body, carry, None, length=steps)[1]


FLOOR_FFTS = 4
"""Round trips ``irfft(rfft(·))`` per step in the FFT floor: an ETDRK4 step makes four
evaluations of the KS nonlinearity, each one inverse FFT of the stage value and one forward
FFT of ``u²``. That is all the FFTs it needs: the inverse FFT of the new state is the next
step's first stage value, carried over (`ETDRK4.init_carry`)."""


@eqx.filter_jit
def _fft_floor(u0, steps: int):
    """The FFT floor: per step, exactly the real FFTs an ETDRK4 KS step must do
    (`FLOOR_FFTS` inverse and forward FFTs on the batch), nothing else, in the same scan
    harness as `_ours_step_scan` (the state stored after every step)."""
    n = u0.shape[-1]

    def body(u, _):
        for _ in range(FLOOR_FFTS):
            u = jnp.fft.irfft(jnp.fft.rfft(u, axis=-1), n, axis=-1)
        return u, u

    _, ys = jax.lax.scan(body, u0, None, length=steps)
    return ys


@eqx.filter_jit
def _exponax_rollout(stepper, u0, steps: int):
    import exponax

    return jax.vmap(exponax.rollout(stepper, steps, include_init=True))(u0)


def bench_step(n: int, batch: int, steps: int, repeats: int, dt: float = 0.05):
    """(a) batch KS step time: our ETDRK4 step vs the bare FFT floor, and our rollout vs
    Exponax's (with and without 2/3 dealiasing). All five programs are timed interleaved."""
    import exponax

    length = 22.0 * n / 64  # same dx as the reference KS setup (L = 22 on 64 points)
    # the standard KS (no dispersive term, d=None), as Exponax's KuramotoSivashinskyConservative
    ks = models.KuramotoSivashinsky(length=length, n=n, d=None)
    u0 = _initial_batch(ks, batch)
    ours = solvers.ETDRK4(ks, dt=dt)
    ours_da = solvers.ETDRK4(ks, dt=dt, dealias=2 / 3)

    def ex(frac):
        return exponax.stepper.KuramotoSivashinskyConservative(
            1, length, n, dt, order=4, dealiasing_fraction=frac
        )

    ex_off, ex_da = ex(None), ex(2 / 3)
    u0c = u0[:, None, :]
    fns = {
        "step": lambda: _ours_step_scan(ours, u0, steps),
        "fft_floor": lambda: _fft_floor(u0, steps),
        "rollout": lambda: _ours_rollout(ours, u0, steps),
        "exponax": lambda: _exponax_rollout(ex_off, u0c, steps),
        "rollout_dealias": lambda: _ours_rollout(ours_da, u0, steps),
        "exponax_dealias": lambda: _exponax_rollout(ex_da, u0c, steps),
    }
    # sanity: both solvers compute the same trajectory (same equation, scheme and dt), and
    # the bare-scan step is the rollout's
    a = np.asarray(_ours_rollout(ours, u0[:4], 20))
    b = np.asarray(_exponax_rollout(ex_off, u0c[:4], 20))[:, :, 0]
    c = np.swapaxes(np.asarray(_ours_step_scan(ours, u0[:4], 20)), 0, 1)
    agree = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    same = float(np.max(np.abs(a[:, 1:] - c)) / np.max(np.abs(a)))
    samples = time_samples(fns, repeats)
    us = 1e6 / steps  # seconds per call -> microseconds per step
    setting = f"B={batch}, L={length:g}, dt={dt:g}, {steps}-step scan, {repeats} interleaved reps"
    common = dict(
        batch=batch,
        n=n,
        length=length,
        dt=dt,
        scan_steps=steps,
        repeats=repeats,
        us_per_step=_spread(samples, us),
        max_rel_diff_vs_exponax=agree,
        max_rel_diff_step_scan_vs_rollout=same,
        rollout_over_step=quantiles(samples["rollout"] / samples["step"]),
    )
    figs = [
        _ratio_figure(
            f"step_n{n}_vs_fft_floor",
            f"a. KS step N={n}: ours vs FFT floor",
            samples["step"],
            samples["fft_floor"],
            "us/step",
            f"{FLOOR_FFTS} rfft + {FLOOR_FFTS} irfft",
            1.15,
            scale=us,
            note=f"{setting}; ETDRK4 step (prepared, carried (û, u)) vs the {2 * FLOOR_FFTS} "
            "FFTs it must do, same scan; no dealiasing",
            **common,
        ),
        _ratio_figure(
            f"step_n{n}_vs_exponax",
            f"a. KS rollout N={n}: ours vs Exponax",
            samples["rollout"],
            samples["exponax"],
            "us/step",
            "Exponax ETDRK4",
            0.85,
            scale=us,
            note=f"{setting}; vmapped rollouts, dealiasing off in both",
            **common,
        ),
        _ratio_figure(
            f"step_n{n}_vs_exponax_dealias",
            f"a. KS rollout N={n}: ours vs Exponax, 2/3 rule",
            samples["rollout_dealias"],
            samples["exponax_dealias"],
            "us/step",
            "Exponax ETDRK4",
            0.85,
            scale=us,
            note=f"{setting}; vmapped rollouts, 2/3 dealiasing in both",
            **common,
        ),
    ]
    med = {k: float(np.median(v)) * us for k, v in samples.items()}
    diag = {f"n{n}_us_per_step_median": med}
    return figs, diag


# ------------------------------------------------------------------- (b) gradient cost
def _loss_fn(static, steps: int, memory: str, checkpoint_every: int | None = None):
    def loss(params, u0, ref):
        step = eqx.combine(params, static)
        traj = jax.vmap(
            lambda u: rollout(step, u, steps, memory=memory, checkpoint_every=checkpoint_every)
        )(u0)
        return jnp.mean((traj - ref) ** 2)

    return loss


def _truth(n, length, dt, substeps, u0, steps, a=1.1):
    truth = solvers.ETDRK4(models.KuramotoSivashinsky(length=length, n=n, a=a), dt=dt)
    step = truth if substeps == 1 else solvers.Repeated(truth, substeps)
    return _ours_rollout(step, u0, steps)


def bench_grad(batch: int, steps: int, repeats: int, number: int, n: int = 64):
    """(b) reverse-mode gradient of a rollout loss w.r.t. θ_s, relative to the forward."""
    ks = models.KuramotoSivashinsky(length=22.0, n=n, a=1.0, d=None)
    step = solvers.ETDRK4(ks, dt=0.25)
    u0 = _initial_batch(ks, batch, seed=1)
    ref = _truth(n, 22.0, 0.25, 1, u0, steps)
    params, static = eqx.partition(step, eqx.is_inexact_array)
    loss = _loss_fn(static, steps, "full")
    fwd = jax.jit(loss)
    grad = jax.jit(jax.grad(loss))
    # the same pair for the bare FFT floor: how much of the ratio is intrinsic to FFT + scan
    floor_fwd = jax.jit(lambda u: jnp.mean(_fft_floor(u, steps) ** 2))
    floor_grad = jax.jit(jax.grad(lambda u: jnp.mean(_fft_floor(u, steps) ** 2)))

    # diagnostic: the gradient with respect to the initial state only (θ_s held fixed)
    u0_grad = jax.jit(jax.grad(loss, argnums=1))
    samples = time_samples(
        {
            "forward": lambda: fwd(params, u0, ref),
            "grad": lambda: grad(params, u0, ref),
            "floor_forward": lambda: floor_fwd(u0),
            "floor_grad": lambda: floor_grad(u0),
            "u0_grad": lambda: u0_grad(params, u0, ref),
        },
        repeats,
        number,
    )
    ms = 1e3
    fig = _ratio_figure(
        "grad_vs_forward",
        f"b. gradient of a {steps}-step rollout loss",
        samples["grad"],
        samples["forward"],
        "ms",
        "forward",
        3.0,
        scale=ms,
        note=f"d(loss)/dθ_s, B={batch}, N={n}, ETDRK4 dt=0.25, memory='full', MSE to a "
        f"reference trajectory; {repeats} interleaved reps of {number} calls",
        ms=_spread(samples, ms),
        fft_floor_grad_vs_forward=quantiles(samples["floor_grad"] / samples["floor_forward"]),
        u0_only_grad_vs_forward=quantiles(samples["u0_grad"] / samples["forward"]),
    )
    diag = {
        "forward_ms": float(np.median(samples["forward"])) * ms,
        "grad_ms": float(np.median(samples["grad"])) * ms,
        "fft_floor_grad_vs_forward": float(
            np.median(samples["floor_grad"] / samples["floor_forward"])
        ),
        "u0_only_grad_vs_forward": float(np.median(samples["u0_grad"] / samples["forward"])),
    }
    return [fig], diag


# --------------------------------------------------------------------- (c) peak memory
def _memory(loss, params, u0, ref) -> dict[str, int]:
    compiled = jax.jit(jax.grad(loss)).lower(params, u0, ref).compile()
    m = compiled.memory_analysis()
    out = {
        "temp": int(m.temp_size_in_bytes),
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
    }
    out["peak_estimate"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def bench_memory(batch: int, steps: int, n: int = 64, substeps: int = 5, dt_save: float = 0.25):
    """(c) compiled memory of the gradient of a long rollout loss, per memory policy.

    The stepper is the one a KS study trains: ``Repeated(ETDRK4(dt_save/substeps),
    substeps)``, with the loss (MSE) on every saved state, as the truth is stored. The figure
    is XLA's ``temp_size_in_bytes`` (the working memory of the gradient computation, which is
    what the policy controls); arguments (θ_s, u0, the reference trajectory) and outputs are
    the same for all policies and reported separately.
    """
    ks = models.KuramotoSivashinsky(length=22.0, n=n)
    step = solvers.Repeated(solvers.ETDRK4(ks, dt=dt_save / substeps), substeps)
    u0 = _initial_batch(ks, batch, seed=2)
    ref = jnp.zeros((batch, steps + 1, n), dtype=u0.dtype)
    params, static = eqx.partition(step, eqx.is_inexact_array)
    mem = {p: _memory(_loss_fn(static, steps, p), params, u0, ref) for p in solvers.MEMORY_POLICIES}
    # diagnostic: one ETDRK4 step per saved state (dt = dt_save): the trajectory dominates
    plain = solvers.ETDRK4(ks, dt=dt_save)
    p2, s2 = eqx.partition(plain, eqx.is_inexact_array)
    mem_plain = {p: _memory(_loss_fn(s2, steps, p), p2, u0, ref) for p in solvers.MEMORY_POLICIES}
    traj_bytes = batch * (steps + 1) * n * u0.dtype.itemsize
    mib = 1 / 2**20
    figs = []
    for policy in ("checkpoint", "recursive"):
        figs.append(
            _ratio_figure(
                f"memory_{policy}_vs_full",
                f"c. gradient memory, {policy} vs full",
                mem[policy]["temp"],
                mem["full"]["temp"],
                "MiB",
                "full",
                0.1,
                scale=mib,
                note=f"XLA temp bytes of grad; {steps} saved steps x {substeps} ETDRK4 substeps, "
                f"B={batch}, N={n}, MSE on all saved states; the trajectory and its cotangent "
                f"are {2 * traj_bytes * mib:.1f} MiB of it",
                bytes=mem,
                trajectory_bytes=traj_bytes,
            )
        )
    diag = {
        "policy_bytes": mem,
        "trajectory_bytes": traj_bytes,
        "plain_etdrk4_dt_save_policy_bytes": mem_plain,
        "plain_ratio_checkpoint": mem_plain["checkpoint"]["temp"] / mem_plain["full"]["temp"],
        "plain_ratio_recursive": mem_plain["recursive"]["temp"] / mem_plain["full"]["temp"],
    }
    return figs, diag


# ------------------------------------------------------------------- (d) data generation
def bench_data(trajectories: int, steps: int, full_size: bool):
    """(d) wall time of `generate_ks` (compile included, file writing excluded)."""
    from .data import KSDataConfig, generate_ks

    config = KSDataConfig(trajectories=trajectories, steps=steps)
    t0 = time.perf_counter()
    ds = generate_ks(config, progress=False)
    wall = time.perf_counter() - t0
    size = trajectories + config.ood_trajectories
    label = f"d. generate_ks {trajectories} x {steps} saved steps, N=64"
    target = 120.0
    note = (
        f"+{config.ood_trajectories} OOD trajectories (N={config.ood_n}); burn-in "
        f"{config.burn_in:g}, dt={config.dt:g}, {config.substeps} substeps/save; compile "
        "included, file writing excluded"
    )
    if not full_size:
        note = "QUICK SIZE (the target is for 1000 x 1000); " + note
    return [
        Figure(
            key="data_generation",
            label=label,
            value=wall,
            unit="s",
            target=target,
            target_text=f"< {target:g} s",
            passed=bool(wall < target) if full_size else None,
            note=note,
            details={"trajectories_total": size, "bytes": int(ds["u"].nbytes)},
        )
    ], {}


# -------------------------------------------------------------------------- the suite
def environment() -> dict[str, Any]:
    from . import __version__

    return {
        "scilayers": __version__,
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "x64": bool(jax.config.jax_enable_x64),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------ (e) one joint training step
# The KS hybrid as the study trains it, pinned here (built from public models, solvers,
# nn, hybrid and training) so that figure (e) stays comparable across study changes.
TRAIN_STEP_SETUP = dict(length=22.0, n=64, dt=0.25, closure_width=16, kernel_size=5)


def _ks_closure_hybrid(key, length, n, dt, closure_width, kernel_size):
    """The coarse KS physics (``a, b`` learnable and positive, ``c`` known, no dispersive
    term) in ETDRK4, with a bias-free ``tanh`` CNN closure (odd by construction) inside
    every stage, projected onto KS-odd operators; and the physics-only stepper."""
    from .hybrid import Hybrid, OddSignReflection
    from .nn import PeriodicCNN1d
    from .params import Param, Positive

    physics = models.KuramotoSivashinsky(
        length,
        n,
        a=Param(0.8, Positive(), name="a"),
        b=Param(1.25, Positive(), name="b"),
        c=Param(1.0, fixed=True, name="c"),
        d=None,
    )
    step = solvers.ETDRK4(physics, dt)
    closure = PeriodicCNN1d(
        width=closure_width,
        depth=1,
        kernel_size=kernel_size,
        activation=jnp.tanh,
        use_bias=False,
        key=key,
    )
    hybrid = Hybrid(step, closure, coupling="closure", projection=OddSignReflection())
    return hybrid, step


def bench_train_step(batch: int = 32, horizon: int = 20, repeats: int = 10):
    """(e) one joint training step of the KS hybrid (`_ks_closure_hybrid`) on a batch of
    windows, N=64; the physics-only step (same loss, no network) is measured alongside for
    scale."""
    from .training import (
        TrainConfig,
        compiled_train_step,
        init_opt_state,
        loss_weights,
        split_trainable,
        stages_for,
    )

    setup = TRAIN_STEP_SETUP
    tc = TrainConfig(steps=200, batch_size=batch, horizon=horizon, lr_theta=3e-2, lr_net=2e-3)
    hybrid, physics = _ks_closure_hybrid(jax.random.key(0), **setup)
    data = _ours_rollout(physics, _initial_batch(physics.model, 64), 60)
    stage = stages_for(tc)[0]

    def make(m):
        trainable, static = split_trainable(m, stage)
        opt = init_opt_state(tc, stage, trainable)
        f = compiled_train_step(tc, stage, horizon)
        hyper = dict(loss_weights(tc), lr_scale=jnp.asarray(1.0))
        return lambda: f(trainable, opt, static, data, jax.random.key(0), hyper)

    samples = time_samples({"hybrid": make(hybrid), "physics": make(physics)}, repeats)
    t = {k: float(np.median(v)) for k, v in samples.items()}
    ms = 1e3
    target = 100.0
    fig = Figure(
        key="joint_train_step",
        label="e. joint training step (KS hybrid)",
        value=t["hybrid"] * ms,
        unit="ms",
        reference=t["physics"] * ms,
        reference_label="physics-only step",
        ratio=float(np.median(samples["hybrid"] / samples["physics"])),
        target=target,
        target_text=f"<= {target:g} ms",
        passed=bool(t["hybrid"] * ms <= target),
        note=f"B={batch}, {horizon}-step unroll, N={setup['n']}, odd closure CNN width "
        f"{setup['closure_width']} in each of ETDRK4's 4 nonlinear evaluations, KS-odd "
        f"projection (2 network calls each); {repeats} interleaved reps",
        details={"seconds": t},
        spread={
            "value": quantiles(samples["hybrid"], ms),
            "reference": quantiles(samples["physics"], ms),
        },
        ratio_spread=quantiles(samples["hybrid"] / samples["physics"]),
        within=int(np.sum(samples["hybrid"] * ms <= target)),
        repeats=repeats,
    )
    return [fig], {"hybrid_ms": t["hybrid"] * ms, "physics_ms": t["physics"] * ms}


STAGES = ("step_n64", "step_n256", "grad", "memory", "data", "train_step")
"""The stages of the suite, in order; ``only=`` picks a subset (``ks`` names the KS speed
stages ``step_n64``, ``step_n256`` and ``grad``)."""

_STAGE_GROUPS = {"ks": ("step_n64", "step_n256", "grad")}


def select_stages(only) -> tuple[str, ...]:
    if only is None:
        return STAGES
    names = [only] if isinstance(only, str) else list(only)
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    picked = {s for n in names for s in _STAGE_GROUPS.get(n, (n,))}
    unknown = sorted(picked - set(STAGES))
    if unknown or not picked:
        raise ValueError(
            f"unknown benchmark stage(s) {unknown or names}; choose from "
            f"{', '.join(STAGES)} or {', '.join(_STAGE_GROUPS)}."
        )
    return tuple(s for s in STAGES if s in picked)


def run_benchmarks(
    quick: bool = False,
    out: str | os.PathLike | None = "benchmarks/results.json",
    console=None,
    only: str | list[str] | None = None,
    cpu_reference: str | os.PathLike | None = "auto",
) -> dict[str, Any]:
    """Run the suite, print a Rich table and (unless ``out`` is None) write JSON results.

    ``only`` runs a subset of `STAGES` (names, comma-separated or a list; ``"ks"`` for the
    KS speed stages). On a CPU backend the medians are also merged into
    ``cpu_reference`` (``"auto"``: ``cpu_reference.json`` next to ``out``; ``None``: not
    written), keyed by figure and size, for `benchmarks/gpu.sh` to compute device speedups
    against.
    """
    from rich.console import Console

    selected = select_stages(only)
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    # many short interleaved repetitions (see `time_samples`): a call is 20-100 ms
    if quick:
        sizes = dict(batch=250, steps=(40, 16), repeats=7, grad_repeats=7, data=(100, 200))
    else:
        sizes = dict(batch=1000, steps=(50, 20), repeats=15, grad_repeats=15, data=(1000, 1000))
    env = environment()
    figures: list[Figure] = []
    diagnostics: dict[str, Any] = {}
    stages: dict[str, Callable[[], tuple[list[Figure], dict]]] = {
        "step_n64": lambda: bench_step(64, sizes["batch"], sizes["steps"][0], sizes["repeats"]),
        "step_n256": lambda: bench_step(256, sizes["batch"], sizes["steps"][1], sizes["repeats"]),
        "grad": lambda: bench_grad(32, 50, sizes["grad_repeats"], number=5),
        "memory": lambda: bench_memory(32, 2000),
        "data": lambda: bench_data(*sizes["data"], full_size=not quick),
        "train_step": lambda: bench_train_step(repeats=sizes["repeats"]),
    }
    # a spinner on a terminal; one line per stage in a log file or pipe
    live = console.is_terminal
    with console.status("benchmarking…") if live else contextlib.nullcontext() as status:
        for name in selected:
            if live:
                status.update(f"benchmarking: {name}")
            else:
                console.print(f"benchmarking: {name}", highlight=False)
            t0 = time.perf_counter()
            figs, diag = stages[name]()
            figures += figs
            diagnostics[name] = {**diag, "stage_seconds": time.perf_counter() - t0}
    results = {
        "suite": "scilayers bench",
        "quick": quick,
        "stages": list(selected),
        "environment": {
            **env,
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "figures": [asdict(f) for f in figures],
        "diagnostics": diagnostics,
        "all_passed": all(f.passed for f in figures if f.passed is not None),
    }
    console.print(results_table(results))
    if out is not None:
        out = Path(out)
        _write_json(out, results)
        console.print(f"results written to {out}")
        if cpu_reference == "auto":
            cpu_reference = out.with_name("cpu_reference.json")
    if cpu_reference not in (None, "auto") and env["backend"] == "cpu":
        update_reference(cpu_reference, results)
        console.print(f"CPU reference figures merged into {cpu_reference}")
    return results


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def reference_key(figure_key: str, quick: bool) -> str:
    """The key of a figure in a reference file: its key, marked when measured at the quick
    sizes (a device run is compared only with a reference of the same sizes)."""
    return f"{figure_key}@quick" if quick else figure_key


def update_reference(path: str | os.PathLike, results: dict[str, Any]) -> dict[str, Any]:
    """Merge the medians of ``results`` into the reference file ``path`` (created if
    absent): one entry per figure (`reference_key`), with its value, reference, unit,
    spread, date and machine; entries of stages not run are kept."""
    path = Path(path)
    ref = json.loads(path.read_text()) if path.exists() else {}
    env = results["environment"]
    machine = {k: env.get(k) for k in ("backend", "devices", "cpu_count", "jax", "platform")}
    entries = ref.setdefault("figures", {})
    for f in results["figures"]:
        entries[reference_key(f["key"], results["quick"])] = {
            "label": f["label"],
            "unit": f["unit"],
            "value": f["value"],
            "reference": f["reference"],
            "reference_label": f["reference_label"],
            "spread": f.get("spread"),
            "date": env["date"],
            "load_average_1_5_15min": env.get("load_average_1_5_15min"),
            "machine": machine,
        }
    ref["note"] = (
        "CPU reference figures (medians) written by `scilayers bench` on a CPU backend; "
        "benchmarks/gpu.sh divides them by the same figures measured on a device."
    )
    _write_json(path, ref)
    return ref


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _with_range(value, q, unit: str) -> str:
    text = f"{_fmt(value)} {unit}"
    if q:
        text += f"\n[dim]{_fmt(q['min'])}–{_fmt(q['max'])}[/dim]"
    return text


def results_table(results: dict[str, Any]):
    """A Rich table of the figures in ``results``: medians with their min–max range, the
    median per-repetition ratio with its interquartile range, and the verdict with the
    number of repetitions that met the target."""
    from rich.table import Table

    env = results["environment"]
    title = (
        f"scilayers bench{' --quick' if results['quick'] else ''} — jax {env['jax']}, "
        f"{env['backend']} x{len(env['devices'])}, {env['cpu_count']} cores"
    )
    load = env.get("load_average_1_5_15min")
    if load:
        title += f", load average {load[0]:.1f} at start"
    table = Table(title=title, show_lines=True)
    for col, kw in (
        ("figure", {"ratio": 1}),
        ("ours (median, min–max)", {"justify": "right"}),
        ("reference (median, min–max)", {"justify": "right"}),
        ("ratio (median, IQR)", {"justify": "right"}),
        ("target", {"justify": "right"}),
        ("result (reps within)", {"justify": "center"}),
    ):
        table.add_column(col, **kw)
    for f in results["figures"]:
        spread = f.get("spread") or {}
        ours = _with_range(f["value"], spread.get("value"), f["unit"])
        ref = (
            _with_range(f["reference"], spread.get("reference"), f["unit"])
            + f"\n({f['reference_label']})"
            if f["reference"] is not None
            else "-"
        )
        ratio = f"{f['ratio']:.2f}x" if f["ratio"] is not None else "-"
        rs = f.get("ratio_spread")
        if rs and f.get("target_text", "").endswith("x"):
            ratio += f"\n[dim]{rs['q25']:.2f}–{rs['q75']:.2f}[/dim]"
        result = {True: "[green]PASS", False: "[red]FAIL", None: "[yellow]n/a"}[f["passed"]]
        if f.get("within") is not None and f["passed"] is not None:
            result += f"\n[dim]{f['within']}/{f['repeats']}[/dim]"
        label = f["label"] + (f"\n[dim]{f['note']}[/dim]" if f["note"] else "")
        table.add_row(label, ours, ref, ratio, f["target_text"], result)
    return table


def results_markdown(results: dict[str, Any]) -> str:
    """The figures of ``results`` as a Markdown table (medians with min–max, the median
    per-repetition ratio with its interquartile range, the verdict with the repetitions
    within the target), for the README."""

    def rng(q):
        return f" ({_fmt(q['min'])}–{_fmt(q['max'])})" if q else ""

    rows = [
        "| figure | ours: median (min–max) | reference: median (min–max) "
        "| ratio: median (IQR) | target | result |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for f in results["figures"]:
        spread = f.get("spread") or {}
        ours = f"{_fmt(f['value'])}{rng(spread.get('value'))} {f['unit']}"
        ref = "-"
        if f["reference"] is not None:
            ref = (
                f"{_fmt(f['reference'])}{rng(spread.get('reference'))} {f['unit']} "
                f"({f['reference_label']})"
            )
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        rs = f.get("ratio_spread")
        if rs and f["ratio"] is not None and f.get("target_text", "").endswith("x"):
            ratio += f" ({rs['q25']:.2f}–{rs['q75']:.2f})"
        result = {True: "PASS", False: "FAIL", None: "n/a"}[f["passed"]]
        if f.get("within") is not None and f["passed"] is not None:
            result += f" {f['within']}/{f['repeats']}"
        rows.append(f"| {f['label']} | {ours} | {ref} | {ratio} | {f['target_text']} | {result} |")
    return "\n".join(rows) + "\n"
