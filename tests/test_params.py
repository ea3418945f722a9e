"""`Param`, constraints, priors and the θ_s / θ_ml / frozen filters."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

import scilayers as sl
from scilayers.params import (
    Bounded,
    LogNormal,
    Normal,
    Param,
    Positive,
    Unconstrained,
)

EPS = np.finfo(np.float64).eps


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


# --------------------------------------------------------------------------------------
# Constraints: value -> raw -> value and raw -> value -> raw round trips.
# --------------------------------------------------------------------------------------


@given(_floats(-1e6, 1e6))
def test_unconstrained_is_identity(v):
    c = Unconstrained()
    assert float(c.forward(c.inverse(v))) == v
    assert float(c.inverse(v)) == v


@given(_floats(1e-8, 1e8))
def test_positive_value_round_trip(v):
    c = Positive()
    raw = c.inverse(jnp.asarray(v))
    assert math.isclose(float(raw), math.log(v), rel_tol=1e-14, abs_tol=1e-14)
    assert math.isclose(float(c.forward(raw)), v, rel_tol=1e-14)


@given(_floats(-30.0, 30.0))
def test_positive_raw_round_trip_stays_positive(raw):
    c = Positive()
    v = c.forward(jnp.asarray(raw))
    assert c.contains(np.asarray(v))
    assert abs(float(c.inverse(v)) - raw) <= 1e-14 * max(1.0, abs(raw))


@st.composite
def _bounded_and_fraction(draw):
    lo = draw(_floats(-100.0, 100.0))
    width = draw(_floats(0.1, 100.0))
    p = draw(_floats(1e-6, 1 - 1e-6))
    return lo, lo + width, p


@given(_bounded_and_fraction())
def test_bounded_value_round_trip(args):
    lo, hi, p = args
    c = Bounded(lo, hi)
    v = lo + p * (hi - lo)
    back = float(c.forward(c.inverse(jnp.asarray(v))))
    # Absolute error of a few ulps of the bounds: (v - lo) / (hi - lo) loses digits
    # relative to max(|lo|, |hi|), and the logit/sigmoid pair loses at most a few more.
    assert abs(back - v) <= 64 * EPS * (abs(lo) + abs(hi) + (hi - lo))


@given(_bounded_and_fraction(), _floats(-15.0, 15.0))
def test_bounded_raw_maps_inside_and_back(args, raw):
    lo, hi, _ = args
    c = Bounded(lo, hi)
    v = c.forward(jnp.asarray(raw))
    assert c.contains(np.asarray(v)), (lo, hi, raw, float(v))
    # The inverse is ill-conditioned where the sigmoid saturates: d raw / d v = 1/(w p (1-p)).
    p = 1.0 / (1.0 + math.exp(-raw))
    cond = (abs(lo) + abs(hi)) / ((hi - lo) * p * (1 - p))
    assert abs(float(c.inverse(v)) - raw) <= 64 * EPS * (cond + abs(raw))


@pytest.mark.parametrize(
    ("constraint", "inside", "outside"),
    [
        (Unconstrained(), [-1e300, 0.0, 3.0], [np.nan, np.inf, -np.inf]),
        (Positive(), [1e-300, 1.0, 1e300], [0.0, -1.0, np.nan, np.inf]),
        (Bounded(-1.0, 2.0), [-0.999, 0.0, 1.999], [-1.0, 2.0, -5.0, 7.0, np.nan]),
    ],
)
def test_constraint_contains(constraint, inside, outside):
    for v in inside:
        assert constraint.contains(np.asarray(v)), v
        Param(v, constraint)  # accepted at construction
    for v in outside:
        assert not constraint.contains(np.asarray(v)), v
        with pytest.raises(ValueError, match="violates its constraint"):
            Param(v, constraint)


@pytest.mark.parametrize(("lo", "hi"), [(1.0, 1.0), (2.0, 1.0), (0.0, np.inf), (np.nan, 1.0)])
def test_bounded_rejects_bad_bounds(lo, hi):
    with pytest.raises(ValueError, match="needs finite lo < hi"):
        Bounded(lo, hi)


# --------------------------------------------------------------------------------------
# Param
# --------------------------------------------------------------------------------------


def test_param_stores_raw_and_resolves_value():
    p = Param(2.5, Positive(), units="m^2/s", name="nu")
    assert float(p.raw) == pytest.approx(math.log(2.5), rel=1e-15)
    assert float(p.value) == pytest.approx(2.5, rel=1e-15)
    assert p.raw.dtype == jnp.float64
    # The gradient w.r.t. raw is the chain rule through exp: d value / d raw = value.
    g = jax.grad(lambda q: q.value)(p)
    assert float(g.raw) == pytest.approx(2.5, rel=1e-15)


def test_param_string_shorthand():
    assert isinstance(Param(1.0, "positive").constraint, Positive)
    assert isinstance(Param(1.0).constraint, Unconstrained)
    with pytest.raises(ValueError, match=r"unknown constraint 'log'.*Positive\(\)"):
        Param(1.0, "log")


def test_param_constraint_violated_at_construction():
    with pytest.raises(ValueError, match=r"'nu' value -1.0 violates its constraint \(value > 0\)"):
        Param(-1.0, Positive(), name="nu")
    with pytest.raises(ValueError, match="pass a value inside it or change the constraint"):
        Param(-1.0, Positive())


def test_param_array_value():
    v = np.array([0.5, 1.0, 4.0])
    p = Param(v, Positive())
    np.testing.assert_allclose(p.value, v, rtol=1e-15)
    with pytest.raises(ValueError, match="violates its constraint"):
        Param(np.array([1.0, -1.0]), Positive())


def test_fixed_param_blocks_gradient():
    free = Param(3.0)
    fixed = Param(3.0, fixed=True)
    assert float(jax.grad(lambda q: q.value**2)(free).raw) == 6.0
    assert float(jax.grad(lambda q: q.value**2)(fixed).raw) == 0.0


def test_with_value_keeps_metadata():
    p = Param(2.0, Bounded(0.0, 5.0), units="K", prior=Normal(2.0, 1.0), name="T")
    q = p.with_value(3.0)
    assert float(q.value) == pytest.approx(3.0, rel=1e-14)
    assert (q.constraint, q.units, q.prior, q.name) == (p.constraint, p.units, p.prior, p.name)
    with pytest.raises(ValueError, match="violates its constraint"):
        p.with_value(6.0)


def test_param_inside_jit_accepts_tracers():
    # The constraint check needs concrete values; inside jit it is skipped, not an error.
    out = jax.jit(lambda v: Param(v, Positive()).value)(jnp.asarray(0.25))
    assert float(out) == pytest.approx(0.25, rel=1e-15)


# --------------------------------------------------------------------------------------
# Filters: partition / combine and the helpers.
# --------------------------------------------------------------------------------------


class _HybridLike(eqx.Module):
    ks: sl.models.KuramotoSivashinsky
    mlp: eqx.nn.MLP
    scale: Param
    count: int


@pytest.fixture
def hybrid(key):
    return _HybridLike(
        ks=sl.models.KuramotoSivashinsky(a=1.2, b=0.9, c=1.0, d=0.1),
        mlp=eqx.nn.MLP(3, 2, 5, 2, key=key),
        scale=Param(4.0, Positive(), fixed=True),
        count=7,
    )


def _positional(tree):
    """Leaves of a partitioned tree with `None` kept as a placeholder leaf."""
    return jtu.tree_leaves(tree, is_leaf=lambda x: x is None)


def test_partition_puts_every_leaf_in_exactly_one_group(hybrid):
    theta_s, theta_ml, frozen = sl.params.partition(hybrid)
    leaves = _positional(hybrid)  # an absent optional term (e.g. KS's e=None) stays None
    groups = [_positional(t) for t in (theta_s, theta_ml, frozen)]
    assert all(len(g) == len(leaves) for g in groups)
    for i, leaf in enumerate(leaves):
        owners = [g[i] for g in groups if g[i] is not None]
        assert owners == [] if leaf is None else len(owners) == 1 and owners[0] is leaf, i

    ids = lambda tree: {id(x) for x in jtu.tree_leaves(tree)}  # noqa: E731
    ks = hybrid.ks
    assert ids(theta_s) == {id(ks.a.raw), id(ks.b.raw), id(ks.c.raw), id(ks.d.raw)}
    mlp_arrays = jtu.tree_leaves(eqx.filter(hybrid.mlp, eqx.is_inexact_array))
    assert len(mlp_arrays) == 6  # three layers, weight and bias each
    assert ids(theta_ml) == {id(x) for x in mlp_arrays}
    frozen_ids = ids(frozen)
    assert id(hybrid.scale.raw) in frozen_ids  # fixed Param -> frozen
    assert 7 in jtu.tree_leaves(frozen)  # int field -> frozen


def test_combine_restores_model(hybrid):
    parts = sl.params.partition(hybrid)
    back = sl.params.combine(*parts)
    assert jtu.tree_structure(back) == jtu.tree_structure(hybrid)
    for x, y in zip(jtu.tree_leaves(back), jtu.tree_leaves(hybrid), strict=True):
        assert x is y
    # Order of the arguments does not matter.
    back2 = sl.params.combine(parts[2], parts[0], parts[1])
    assert jtu.tree_structure(back2) == jtu.tree_structure(hybrid)


def test_gradient_through_partition_reaches_only_theta_s(hybrid):
    theta_s, theta_ml, frozen = sl.params.partition(hybrid)

    def loss(ts):
        m = sl.params.combine(ts, theta_ml, frozen)
        return m.ks.a.value * m.ks.d.value + m.scale.value

    g = jax.grad(loss)(theta_s)
    # d/d raw_a (e^{raw_a} d) = a d ;  d/d raw_d (a d) = a.
    assert float(g.ks.a.raw) == pytest.approx(1.2 * 0.1, rel=1e-14)
    assert float(g.ks.d.raw) == pytest.approx(1.2, rel=1e-14)
    assert float(g.ks.b.raw) == 0.0


def test_values_by_name(hybrid):
    vals = sl.params.values(hybrid)
    assert set(vals) == {"a", "b", "c", "d", "scale"}
    expected = {"a": 1.2, "b": 0.9, "c": 1.0, "d": 0.1, "scale": 4.0}
    for k, v in expected.items():
        assert float(vals[k]) == pytest.approx(v, rel=1e-14), k


def test_values_disambiguates_duplicate_names():
    pair = (sl.models.KuramotoSivashinsky(a=1.0), sl.models.KuramotoSivashinsky(a=2.0))
    vals = sl.params.values(pair)
    assert set(vals) == {f"{i}.{p}" for i in (0, 1) for p in "abcd"}
    assert float(vals["1.a"]) == pytest.approx(2.0, rel=1e-14)


def test_set_values(hybrid):
    new = sl.params.set_values(hybrid, a=2.0, d=-0.3)
    vals = sl.params.values(new)
    assert float(vals["a"]) == pytest.approx(2.0, rel=1e-14)
    assert float(vals["d"]) == pytest.approx(-0.3, rel=1e-14)
    assert float(vals["b"]) == pytest.approx(0.9, rel=1e-14)
    # The original is untouched and the constraint is kept.
    assert float(sl.params.values(hybrid)["a"]) == pytest.approx(1.2, rel=1e-14)
    assert isinstance(new.ks.a.constraint, Positive)
    for x, y in zip(jtu.tree_leaves(new.mlp), jtu.tree_leaves(hybrid.mlp), strict=True):
        assert x is y
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nu'\]; the model has"):
        sl.params.set_values(hybrid, nu=1.0)
    with pytest.raises(ValueError, match="violates its constraint"):
        sl.params.set_values(hybrid, b=-1.0)


def test_fix_and_free(hybrid):
    fixed = sl.params.fix(hybrid)
    assert all(p.fixed for p in sl.params.named(fixed).values())
    theta_s, _, _ = sl.params.partition(fixed)
    assert jtu.tree_leaves(theta_s) == []
    # raw values are kept bit for bit.
    for p, q in zip(sl.params.named(hybrid).values(), sl.params.named(fixed).values(), strict=True):
        assert np.array_equal(p.raw, q.raw)
    g = eqx.filter_grad(lambda m: m.ks.a.value * m.ks.b.value)(fixed)
    assert float(g.ks.a.raw) == 0.0 and float(g.ks.b.raw) == 0.0
    g = eqx.filter_grad(lambda m: m.ks.a.value * m.ks.b.value)(hybrid)
    assert float(g.ks.a.raw) == pytest.approx(1.2 * 0.9, rel=1e-14)

    freed = sl.params.fix(hybrid, fixed=False)
    assert not any(p.fixed for p in sl.params.named(freed).values())
    assert len(jtu.tree_leaves(sl.params.partition(freed)[0])) == 5


def test_fix_keeps_saturated_raw():
    # raw = 40 resolves to exactly `hi` in float64; fixing must not re-validate the value.
    p = Param(0.5, Bounded(0.0, 1.0))
    p = eqx.tree_at(lambda q: q.raw, p, jnp.asarray(40.0))
    q = sl.params.fix(p)
    assert q.fixed and float(q.raw) == 40.0
    assert not p.fixed  # a new Param; the source is untouched
    assert q.constraint == p.constraint and (q.units, q.prior, q.name) == (p.units, p.prior, p.name)


def test_fix_inside_jit_keeps_raw_and_gradient_off():
    """`fix` works on traced Params (inside jit/grad), so a loss may freeze θ_s itself."""
    p = Param(2.0, Positive(), units="m", name="k")
    g = jax.grad(lambda q: sl.params.fix(q).value ** 2)(p)
    assert float(g.raw) == 0.0
    raw = jax.jit(lambda q: sl.params.fix(q, fixed=False).raw)(sl.params.fix(p))
    assert float(raw) == float(p.raw)


# --------------------------------------------------------------------------------------
# Priors and log_prior
# --------------------------------------------------------------------------------------


def test_prior_densities_match_scipy():
    xs = np.array([0.1, 0.7, 1.0, 3.0])
    n = Normal(0.5, 0.8)
    np.testing.assert_allclose(n.log_prob(xs), scipy.stats.norm(0.5, 0.8).logpdf(xs), rtol=1e-13)
    ln = LogNormal(1.5, 0.4)
    np.testing.assert_allclose(
        ln.log_prob(xs), scipy.stats.lognorm(s=0.4, scale=1.5).logpdf(xs), rtol=1e-13
    )
    assert n.mode == 0.5
    # The mode maximises the density.
    res = scipy.optimize.minimize_scalar(
        lambda v: -scipy.stats.lognorm(s=0.4, scale=1.5).logpdf(v),
        bounds=(0.1, 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert ln.mode == pytest.approx(res.x, rel=1e-6)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Normal(0.0, 0.0), "std > 0"),
        (lambda: LogNormal(-1.0, 1.0), "median > 0 and sigma > 0"),
        (lambda: LogNormal(1.0, 0.0), "median > 0 and sigma > 0"),
    ],
)
def test_prior_rejects_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_log_prior_sums_free_params():
    model = sl.models.KuramotoSivashinsky(
        a=Param(1.3, Positive(), prior=LogNormal(1.0, 0.5)),
        b=Param(0.8, Positive(), prior=LogNormal(1.0, 0.2), fixed=True),
        c=Param(0.6, prior=Normal(1.0, 0.3)),
        d=0.0,  # no prior: contributes 0
    )
    expected = scipy.stats.lognorm(s=0.5, scale=1.0).logpdf(1.3) + scipy.stats.norm(
        1.0, 0.3
    ).logpdf(0.6)
    assert float(sl.params.log_prior(model)) == pytest.approx(expected, rel=1e-13)
    assert float(sl.params.log_prior(sl.models.KuramotoSivashinsky())) == 0.0
    # The gradient reaches raw through the constraint: d/d raw_c of -(c - 1)^2 / (2 0.3^2).
    g = jax.grad(sl.params.log_prior)(model)
    assert float(g.c.raw) == pytest.approx(-(0.6 - 1.0) / 0.3**2, rel=1e-13)
    assert float(g.b.raw) == 0.0
