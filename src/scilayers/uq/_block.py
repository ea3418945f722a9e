"""The ``uq`` block of ``results.json``: calibration per evaluation set and lead time."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..metrics import EnsemblePrediction, GaussianPrediction, calibration, reliability

Prediction = GaussianPrediction | EnsemblePrediction


def _drop_initial(pred: Prediction) -> Prediction:
    if isinstance(pred, EnsemblePrediction):
        return EnsemblePrediction(np.asarray(pred.samples)[:, :, 1:])
    if isinstance(pred, GaussianPrediction):
        return GaussianPrediction(np.asarray(pred.mean)[:, 1:], np.asarray(pred.std)[:, 1:])
    raise ValueError(
        f"a prediction must be a GaussianPrediction or an EnsemblePrediction, got "
        f"{type(pred).__name__}."
    )


def _at(pred: Prediction, step: int) -> Prediction:
    if isinstance(pred, EnsemblePrediction):
        return EnsemblePrediction(np.asarray(pred.samples)[:, :, step])
    return GaussianPrediction(np.asarray(pred.mean)[:, step], np.asarray(pred.std)[:, step])


def uq_block(
    sets: Mapping[str, tuple],
    *,
    lead: int | None = None,
    skip_initial: bool = True,
    theta: Mapping | None = None,
    by_step: bool = True,
    reliability_diagram: bool = True,
) -> dict:
    """The ``uq`` entry of one method in ``results.json``: calibration metrics of its
    probabilistic predictions on every evaluation set.

    **Arguments:**

    - `sets`: by set name (``"id"``, ``"ood"``, …) a pair ``(truth, prediction)``: the true
      trajectories ``(batch, time, *state)`` and a `scilayers.metrics.GaussianPrediction` /
      `EnsemblePrediction` of them (e.g. ``Forecast.prediction()``, ``as_gaussian`` of an
      `ensemble_rollout`, ``Unscented.prediction()`` stacked over the batch).
    - `lead`: the main lead time, in steps from the initial state (default ``None``: none);
      its metrics are reported under ``"at_lead"``.
    - `skip_initial`: drop step 0 (the shared, known initial state) before scoring
      (default true).
    - `theta`: an optional θ_s summary to attach as ``"theta"`` (`theta_spread` of an
      ensemble, or `Posterior.summary`).
    - `by_step`: add ``"by_step"`` and ``"steps"`` (the metrics per lead time; default
      true).
    - `reliability_diagram`: add ``"reliability"`` (`scilayers.metrics.reliability`,
      pooled over lead times; default true).

    **Returns:** ``{set: {"picp_50", "picp_90", "picp_95", "mpiw_90", "crps", "nll",
    "spread_skill", "by_step": {key: [per lead time]}, "steps": [lead times], "at_lead":
    {...}, "reliability": {...}}}`` (plain floats and lists; non-finite values as
    ``None``), plus ``"theta"`` when given. The seven scalar metrics pool all scored lead
    times; ``by_step`` lists them per lead time.
    """
    out: dict = {}
    for name, pair in sets.items():
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(
                f"sets[{name!r}] must be a pair (truth, prediction), got {type(pair).__name__}."
            )
        truth, pred = np.asarray(pair[0], dtype=np.float64), pair[1]
        if truth.ndim < 2:
            raise ValueError(
                f"sets[{name!r}]: truth must have shape (batch, time, *state), got {truth.shape}."
            )
        time_steps = truth.shape[1]
        first = 1 if skip_initial else 0
        if time_steps <= first:
            raise ValueError(f"sets[{name!r}]: no lead time left to score (time={time_steps}).")
        scored_truth = truth[:, first:]
        scored = _drop_initial(pred) if skip_initial else pred
        block = calibration(scored_truth, scored)
        if by_step:
            block["by_step"] = calibration(scored_truth, scored, by_step=True)
            block["steps"] = list(range(first, time_steps))
        if lead is not None:
            if not first <= lead < time_steps:
                raise ValueError(
                    f"lead={lead} is outside the scored lead times [{first}, {time_steps - 1}]."
                )
            at = calibration(truth[:, lead], _at(pred, lead))
            block["at_lead"] = {"step": int(lead), **at}
        if reliability_diagram:
            block["reliability"] = reliability(scored_truth, scored)
        out[name] = block
    if theta is not None:
        out["theta"] = dict(theta)
    return out
