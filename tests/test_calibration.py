"""Calibration metrics: closed forms of the CRPS, coverage of calibrated and over-confident
predictions within binomial tolerance, spread–skill, NLL, per-lead-time reductions."""

import json
import math
from statistics import NormalDist

import jax
import numpy as np
import pytest

import scilayers as sl
from scilayers.metrics import EnsemblePrediction, GaussianPrediction

PHI = NormalDist().cdf


def _binomial_tol(p: float, n: int, k: float = 4.0) -> float:
    return k * math.sqrt(p * (1 - p) / n)


def _crps_by_quadrature(cdf, y: float, lo: float, hi: float, n: int = 400_001) -> float:
    """``∫ (F(x) - 1{x >= y})² dx`` on a fine grid (the definition of the CRPS)."""
    left, right = np.linspace(lo, y, n), np.linspace(y, hi, n)  # split at the jump
    return float(np.trapezoid(cdf(left) ** 2, left) + np.trapezoid((1 - cdf(right)) ** 2, right))


def test_crps_gaussian_closed_form():
    """CRPS of N(0, 1) at 0 is 2φ(0) - 1/√π = (√2 - 1)/√π; at other points and scales the
    closed form equals the defining integral ∫(F - H)² by quadrature."""
    assert float(sl.metrics.crps_gaussian(0.0, 0.0, 1.0)) == pytest.approx(
        (math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-14
    )
    vphi = np.vectorize(PHI)
    for mu, sigma, y in [(0.3, 2.0, -1.1), (-1.0, 0.25, -0.9), (5.0, 1.5, 9.0)]:
        got = float(sl.metrics.crps_gaussian(y, mu, sigma))
        cdf = lambda x, mu=mu, sigma=sigma: vphi((x - mu) / sigma)  # noqa: E731
        want = _crps_by_quadrature(cdf, y, mu - 14 * sigma, mu + 14 * sigma + abs(y - mu))
        assert got == pytest.approx(want, rel=1e-6)
    # a point forecast (std = 0) scores its absolute error
    assert float(sl.metrics.crps_gaussian(2.0, -1.0, 0.0)) == 3.0


def test_crps_ensemble_exact_forms(key):
    """The O(M log M) sorted form equals the O(M²) double sum, fair and not; the non-fair
    score is the CRPS of the members' empirical CDF (the defining integral); the fair score
    of draws from N(μ, σ²) averages to the Gaussian closed form."""
    x = np.asarray(jax.random.normal(key, (7, 3)))
    y = np.array([0.1, -2.0, 0.7])
    pair = np.abs(x[:, None] - x[None]).sum(axis=(0, 1))
    skill = np.abs(x - y).mean(0)
    np.testing.assert_allclose(sl.metrics.crps_ensemble(y, x), skill - pair / (2 * 7 * 6),
                               rtol=1e-13)  # fmt: skip
    plain = np.asarray(sl.metrics.crps_ensemble(y, x, fair=False))
    np.testing.assert_allclose(plain, skill - pair / (2 * 49), rtol=1e-13)
    ecdf = lambda s: lambda g: (s[:, None] <= g[None]).mean(0)  # noqa: E731
    for j in range(3):
        want = _crps_by_quadrature(ecdf(x[:, j]), y[j], -8, 8, n=800_001)
        assert plain[j] == pytest.approx(want, abs=1e-4)
    # unbiasedness of the fair form: many small ensembles from the true distribution
    mu, sigma, yv = 0.5, 1.3, -0.4
    draws = mu + sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (4, 50_000)))
    fair = float(np.mean(sl.metrics.crps_ensemble(np.full(50_000, yv), draws)))
    unfair = float(np.mean(sl.metrics.crps_ensemble(np.full(50_000, yv), draws, fair=False)))
    exact = float(sl.metrics.crps_gaussian(yv, mu, sigma))
    assert fair == pytest.approx(exact, rel=0.01)
    assert unfair > exact * 1.05  # the empirical form is biased high for 4 members


def test_picp_of_the_true_distribution_is_nominal(key):
    """Truth drawn from the predicted distribution: coverage at 50/90/95 % is nominal within
    four binomial standard deviations, for a Gaussian and for a large ensemble; the mean
    width of the Gaussian 90 % interval is 2·1.645σ."""
    n = 20_000
    k1, k2, k3 = jax.random.split(key, 3)
    mean = np.asarray(jax.random.normal(k1, (n,)))
    std = np.exp(np.asarray(jax.random.normal(k2, (n,))) * 0.3)
    truth = mean + std * np.asarray(jax.random.normal(k3, (n,)))
    gauss = GaussianPrediction(mean, std)
    for level in (0.5, 0.9, 0.95):
        assert abs(sl.metrics.picp(truth, gauss, level) - level) < _binomial_tol(level, n)
    assert sl.metrics.mpiw(gauss, 0.9) == pytest.approx(2 * 1.6448536 * std.mean(), rel=1e-6)

    m, n = 400, 2000
    members = mean[:n] + std[:n] * np.asarray(jax.random.normal(jax.random.fold_in(key, 9),
                                                                (m, n)))  # fmt: skip
    ens = EnsemblePrediction(members)
    for level in (0.5, 0.9, 0.95):
        # the empirical quantiles of M members add a little spread to the binomial noise
        assert abs(sl.metrics.picp(truth[:n], ens, level) - level) < _binomial_tol(level, n) + 0.01


def test_a_small_calibrated_ensemble_covers_nominally(key):
    """Twenty members and the truth drawn from one distribution: the 50 % and 90 %
    intervals cover 0.50 and 0.90 (rank positions (M + 1)p). Linear-interpolation
    quantiles would cover (M + 1 - 2(1 + (M - 1)(1 - level)/2))/(M + 1): 0.45 and 0.81.
    Too few members for 95 % ((M + 1)·0.025 < 1): [min, max], covering (M - 1)/(M + 1)."""
    m, n = 20, 40_000
    draws = np.asarray(jax.random.normal(key, (m + 1, n)))
    truth, ens = draws[0], EnsemblePrediction(draws[1:])
    for level in (0.5, 0.9):
        assert abs(sl.metrics.picp(truth, ens, level) - level) < _binomial_tol(level, n)
    lo, hi = sl.metrics.interval(ens, 0.95)
    np.testing.assert_array_equal(lo, draws[1:].min(0))
    np.testing.assert_array_equal(hi, draws[1:].max(0))
    want = (m - 1) / (m + 1)
    assert abs(sl.metrics.picp(truth, ens, 0.95) - want) < _binomial_tol(want, n)


def test_a_too_narrow_ensemble_under_covers(key):
    """Members with half the true spread cover the 90 % interval with probability
    2Φ(0.5·1.645) - 1 ≈ 0.59, and their spread–skill ratio is about 0.5."""
    n, m = 5000, 200
    k1, k2 = jax.random.split(key)
    truth = np.asarray(jax.random.normal(k1, (n,)))
    narrow = EnsemblePrediction(0.5 * np.asarray(jax.random.normal(k2, (m, n))))
    want = 2 * PHI(0.5 * NormalDist().inv_cdf(0.95)) - 1
    got = sl.metrics.picp(truth, narrow, 0.9)
    assert abs(got - want) < _binomial_tol(want, n) + 0.01 and got < 0.65
    assert sl.metrics.spread_skill(truth, narrow) == pytest.approx(0.5, abs=0.03)


def test_spread_skill_of_a_small_calibrated_ensemble_is_one(key):
    """Five members and the truth all drawn from one distribution: with the (1 + 1/M)
    correction the ratio is 1 (the plain ratio would be √(5/6) ≈ 0.91)."""
    draws = np.asarray(jax.random.normal(key, (6, 40_000)))
    truth, members = draws[0], EnsemblePrediction(draws[1:])
    assert sl.metrics.spread_skill(truth, members) == pytest.approx(1.0, abs=0.02)


def test_gaussian_nll_and_pit(key):
    """Expected NLL of N(0, 1) under itself is ½ log(2π) + ½; PIT of the true distribution
    is uniform (Kolmogorov–Smirnov distance below 1.63/√n, p ≈ 0.01) and the reliability
    diagram lies on the diagonal."""
    n = 20_000
    truth = np.asarray(jax.random.normal(key, (n,)))
    pred = GaussianPrediction(np.zeros(n), np.ones(n))
    assert sl.metrics.nll(truth, pred) == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5,
                                                        abs=4 * math.sqrt(0.5 / n))  # fmt: skip
    u = np.sort(sl.metrics.pit(truth, pred))
    ks = np.max(np.abs(u - (np.arange(1, n + 1) - 0.5) / n))
    assert ks < 1.63 / math.sqrt(n)
    rel = sl.metrics.reliability(truth, pred)
    np.testing.assert_allclose(rel["observed"], rel["nominal"], atol=_binomial_tol(0.5, n))
    # an ensemble's PIT is the fraction of members below the truth
    ens = EnsemblePrediction(np.array([[0.0], [1.0], [2.0], [3.0]]))
    np.testing.assert_allclose(sl.metrics.pit(np.array([1.5]), ens), [0.5])


def test_by_step_reduces_over_everything_but_lead_time(key):
    """Per lead time (axis 1): spread growing with lead while the error does not makes the
    coverage rise step by step; the mean over equal-sized steps is the pooled value;
    `calibration` gives the seven results.json keys, JSON-ready."""
    batch, time, n = 200, 4, 8
    truth = np.asarray(jax.random.normal(key, (batch, time, n)))
    std = np.broadcast_to(np.array([0.25, 0.5, 1.0, 2.0])[None, :, None], truth.shape)
    pred = GaussianPrediction(np.zeros_like(truth), std)
    cov = sl.metrics.picp(truth, pred, 0.9, by_step=True)
    assert cov.shape == (time,) and np.all(np.diff(cov) > 0)
    assert cov.mean() == pytest.approx(sl.metrics.picp(truth, pred, 0.9), rel=1e-12)
    np.testing.assert_allclose(sl.metrics.spread_skill(truth, pred, by_step=True),
                               [0.25, 0.5, 1.0, 2.0], rtol=0.06)  # fmt: skip
    out = sl.metrics.calibration(truth, pred)
    assert tuple(out) == sl.metrics.CALIBRATION_KEYS
    json.dumps(out)
    steps = sl.metrics.calibration(truth, pred, by_step=True)
    assert all(len(v) == time for v in steps.values())
    # a zero spread makes the NLL infinite: written as null
    point = GaussianPrediction(np.zeros_like(truth), np.zeros_like(truth))
    assert sl.metrics.calibration(truth, point)["nll"] is None


def test_as_gaussian_matches_spread_skill_and_needs_two_members(key):
    members = np.asarray(jax.random.normal(key, (3, 10)))
    g = sl.metrics.as_gaussian(EnsemblePrediction(members))
    np.testing.assert_allclose(g.std**2, members.var(0, ddof=1) * 4 / 3, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 members"):
        sl.metrics.as_gaussian(EnsemblePrediction(members[:1]))


def test_bad_predictions_are_clear_errors():
    truth = np.zeros((2, 3))
    with pytest.raises(ValueError, match="members on axis 0"):
        sl.metrics.picp(truth, EnsemblePrediction(np.zeros((2, 3, 5))))
    with pytest.raises(ValueError, match="truth's shape"):
        sl.metrics.crps(truth, GaussianPrediction(np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="EnsemblePrediction"):
        sl.metrics.nll(truth, np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        sl.metrics.picp(truth, GaussianPrediction(truth, truth + 1), 90)
    with pytest.raises(ValueError, match="batch axis"):
        sl.metrics.crps(np.zeros(3), GaussianPrediction(np.zeros(3), np.ones(3)), by_step=True)
