"""Baselines trained with the same data, budget and optimiser as the hybrids."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..hybrid import Hybrid, NeuralStepper
from ..params import fix
from ..training import FitResult, TrainConfig, fit


def pure_physics(step):
    """The solver at its current (prior) θ_s: no training at all."""
    return step


def calibrate(step, data, config: TrainConfig, **fit_kwargs) -> FitResult:
    """Calibrate θ_s of a bare stepper by gradient descent through the solver (no network)."""
    return fit(step, data, config.replace(strategy="joint"), **fit_kwargs)


def sequential_hybrid(
    step,
    net,
    data,
    config: TrainConfig,
    *,
    calibrate_fraction: float = 0.5,
    checkpoint_dir=None,
    **fit_kwargs,
) -> FitResult:
    """Calibrate θ_s first, then fit a post-hoc residual network on the calibrated model's
    one-step errors (``u_{n+1} ≈ Φ_dt(u_n; θ̂_s) + N(Φ_dt(u_n))``), θ_s frozen.

    The two stages share the step budget of ``config`` (``calibrate_fraction`` for the
    first). ``checkpoint_dir`` gets one sub-folder per stage; other keyword arguments go
    to `fit`. Returns a `FitResult` whose history concatenates both stages.
    """
    if not 0 < calibrate_fraction < 1:
        raise ValueError(f"calibrate_fraction must be in (0, 1), got {calibrate_fraction}.")
    t0 = time.perf_counter()
    n_cal = max(1, round(config.steps * calibrate_fraction))

    def ckpt(stage):
        return {} if checkpoint_dir is None else {"checkpoint_dir": Path(checkpoint_dir) / stage}

    cal = calibrate(step, data, config.replace(steps=n_cal), **fit_kwargs, **ckpt("calibrate"))
    hybrid = Hybrid(fix(cal.model), net, coupling="residual")
    post_config = config.replace(
        strategy="fixed", steps=config.steps - n_cal, horizon=1, horizon_schedule=()
    )
    post = fit(hybrid, data, post_config, **fit_kwargs, **ckpt("residual"))
    history = {}
    for k in set(cal.history) | set(post.history):
        a, b = cal.history.get(k), post.history.get(k)
        if a is None or b is None:
            history[k] = a if b is None else b
        else:
            history[k] = np.concatenate([a, b])
    return FitResult(post.model, history, config, time.perf_counter() - t0)


def neural_emulator(net, state_shape, data, config: TrainConfig, **fit_kwargs) -> FitResult:
    """A pure network time stepper ``u_{n+1} = u_n + N(u_n)``, no physics, trained with the
    same unrolled loss and budget."""
    return fit(NeuralStepper(net, tuple(state_shape)), data, config, **fit_kwargs)
