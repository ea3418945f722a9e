"""Hybrid couplings, the odd sign/reflection projection, output checks, and the losses."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from _operators import SpectralOperator
from scilayers.hybrid import OddSignReflection
from scilayers.losses import closure_magnitude, physics_loss, physics_of, rollout_loss


class Zero(eqx.Module):
    w: jax.Array

    def __call__(self, u):
        return self.w * jnp.zeros_like(u)


def _ks(n=32, **kw):
    return sl.models.KuramotoSivashinsky(22.0, n, **kw)


@pytest.mark.parametrize("coupling", ["closure", "residual"])
def test_zero_network_reproduces_the_solver(coupling, key):
    step = sl.solvers.ETDRK4(_ks(), 0.25)
    hyb = sl.Hybrid(step, Zero(jnp.ones(())), coupling=coupling)
    u0 = _ks().initial_condition(key)
    np.testing.assert_allclose(sl.rollout(hyb, u0, 20), sl.rollout(step, u0, 20), atol=1e-13)


def test_closure_equals_the_same_term_in_the_physics(key):
    # A closure that is exactly d·(-u_xxx) integrated inside ETDRK4 must equal the KS model
    # whose linear operator contains d: the network term is part of the equation.
    d = 0.3
    net = SpectralOperator(jnp.array([0.0, 0.0, 0.0, -d]), 22.0)
    hyb = sl.Hybrid(sl.solvers.ETDRK4(_ks(n=64), 0.05), net, coupling="closure")
    exact = sl.solvers.ETDRK4(_ks(n=64, d=d), 0.05)
    u0 = _ks(n=64).initial_condition(key)
    a, b = sl.rollout(hyb, u0, 40), sl.rollout(exact, u0, 40)
    # the term is explicit in one and exponential in the other: both 4th order in dt
    assert float(jnp.max(jnp.abs(a - b))) < 1e-4
    assert (
        float(jnp.max(jnp.abs(a - sl.rollout(sl.solvers.ETDRK4(_ks(n=64), 0.05), u0, 40)))) > 1e-2
    )


def test_parameter_coupling_shifts_raw_theta(key):
    step = sl.solvers.ETDRK4(_ks(), 0.25)
    offsets = jnp.array([jnp.log(1.5), 0.0, 0.0, 0.0])  # a is Positive: raw = log a

    class Const(eqx.Module):
        out: jax.Array

        def __call__(self, ctx):
            return self.out

    hyb = sl.Hybrid(step, Const(offsets), coupling="parameter")
    expected = sl.solvers.ETDRK4(_ks(a=1.5), 0.25)
    u0 = _ks().initial_condition(key)
    np.testing.assert_allclose(hyb(u0), expected(u0), atol=1e-12)
    bad = sl.Hybrid(step, Const(jnp.zeros(3)), coupling="parameter")
    with pytest.raises(ValueError, match="one value per free Param"):
        bad(u0)


def test_ks_odd_projection_keeps_only_terms_theta_cannot_express(key):
    length, n = 22.0, 64
    u = _ks(n=n).initial_condition(key)
    even = SpectralOperator(jnp.array([0.0, 0.0, 0.7, 0.0, -0.4]), length)  # a u_xx + b u_xxxx
    odd = SpectralOperator(jnp.array([0.0, 0.0, 0.0, 0.3]), length)  # d u_xxx
    hyb = sl.Hybrid(sl.solvers.ETDRK4(_ks(n=n), 0.25), even, projection=OddSignReflection())
    assert float(jnp.max(jnp.abs(hyb.network_term(u)))) < 1e-12
    hyb = eqx.tree_at(lambda h: h.net, hyb, odd)
    np.testing.assert_allclose(hyb.network_term(u), odd(u), atol=1e-12)

    class Burgers(eqx.Module):  # u u_x is what c parameterises
        def __call__(self, v):
            return v * odd(v)

    hyb = eqx.tree_at(lambda h: h.net, hyb, Burgers())
    assert float(jnp.max(jnp.abs(hyb.network_term(u)))) < 1e-12


def test_ks_odd_projection_symmetries_for_any_network(key):
    net = sl.nn.PeriodicCNN1d(width=8, depth=1, key=key, final_scale=1.0)
    hyb = sl.Hybrid(sl.solvers.ETDRK4(_ks(), 0.25), net, projection=OddSignReflection())
    u = _ks().initial_condition(jax.random.fold_in(key, 1))
    idx = (-jnp.arange(u.shape[0])) % u.shape[0]
    g = hyb.network_term
    assert float(jnp.max(jnp.abs(g(u)))) > 1e-3  # not trivially zero
    np.testing.assert_allclose(g(-u), -g(u), atol=1e-6)
    np.testing.assert_allclose(g(u[idx]), -g(u)[idx], atol=1e-6)


def test_bad_coupling_projection_and_identifiable():
    step = sl.solvers.ETDRK4(_ks(), 0.25)
    zero = Zero(jnp.ones(()))
    with pytest.raises(ValueError, match="unknown coupling"):
        sl.Hybrid(step, zero, coupling="sideways")
    with pytest.raises(ValueError, match="OddSignReflection"):  # the removed string API
        sl.Hybrid(step, zero, symmetry="ks-odd")
    with pytest.raises(ValueError, match="OddSignReflection"):
        sl.Hybrid(step, zero, "closure", 1.0, "ks-odd")
    with pytest.raises(ValueError, match="unknown identifiable"):
        sl.Hybrid(step, zero, identifiable="orthogonl")
    with pytest.raises(ValueError, match="not 'parameter'"):
        sl.Hybrid(step, zero, coupling="parameter", identifiable="orthogonal")
    with pytest.raises(ValueError, match="stepper"):
        sl.Hybrid(lambda u: u, zero)


def test_odd_sign_reflection_reproduces_the_former_ks_odd_projection(key):
    """Reference numbers: the four-term formula of the former ``symmetry="ks-odd"``."""
    net = sl.nn.PeriodicCNN1d(width=8, depth=1, key=key, final_scale=1.0)
    u = _ks(n=64).initial_condition(jax.random.fold_in(key, 2))
    n = u.shape[0]
    idx = (-jnp.arange(n)) % n
    former = 0.25 * (net(u) - net(-u) - net(u[idx])[idx] + net(-u[idx])[idx])
    np.testing.assert_allclose(OddSignReflection()(net, u), former, rtol=1e-14, atol=1e-14)
    hyb = sl.Hybrid(sl.solvers.ETDRK4(_ks(n=64), 0.25), net, projection=OddSignReflection())
    np.testing.assert_allclose(hyb.network_term(u), former, rtol=1e-14, atol=1e-14)


class ThreeState(sl.models.AbstractModel):
    """A 3-component linear ODE ``u' = -k u`` (not a periodic field)."""

    k: sl.Param

    @property
    def state_shape(self):
        return (3,)

    def rhs(self, u):
        return -self.k.value * u

    def initial_condition(self, key):
        return jax.random.normal(key, (3,))


def test_odd_sign_reflection_rejects_a_state_that_is_not_a_periodic_field():
    step = sl.solvers.Diffrax(ThreeState(sl.Param(1.0)), 0.1)
    with pytest.raises(ValueError, match=r"1-D periodic field.*\(3,\).*orthogonal"):
        sl.Hybrid(step, Zero(jnp.ones(())), projection=OddSignReflection())
    l96 = sl.solvers.Diffrax(sl.models.Lorenz96(k=8), 0.05)
    with pytest.raises(ValueError, match="AbstractProjection"):
        sl.Hybrid(l96, Zero(jnp.ones(())), projection=OddSignReflection())


class Halve(eqx.Module):
    """A wrong closure: returns half the grid."""

    w: jax.Array

    def __call__(self, u):
        return self.w * u[::2]


@pytest.mark.parametrize("coupling", ["closure", "residual"])
@pytest.mark.parametrize("projection", [None, OddSignReflection()])
def test_wrong_closure_output_shape_is_a_clear_error(coupling, projection, key):
    step = sl.solvers.ETDRK4(_ks(), 0.25)
    hyb = sl.Hybrid(step, Halve(jnp.ones(())), coupling=coupling, projection=projection)
    u = _ks().initial_condition(key)
    with pytest.raises(ValueError, match=r"shape \(32,\) to \(16,\).*must return"):
        hyb(u)
    with pytest.raises(ValueError, match=r"shape \(32,\) to \(16,\)"):
        eqx.filter_jit(hyb)(u)
    ode = sl.Hybrid(sl.solvers.Diffrax(ThreeState(sl.Param(1.0)), 0.1), Halve(jnp.ones(())))
    with pytest.raises(ValueError, match=r"shape \(3,\) to \(2,\)"):
        ode(jnp.ones(3))


def test_losses_find_the_physics_by_attributes_only():
    step = sl.solvers.ETDRK4(_ks(), 0.25)
    hyb = sl.Hybrid(sl.solvers.Repeated(step, 2), Zero(jnp.ones(())))
    model, dt = physics_of(hyb)
    assert model is hyb.step.model and dt == 0.5
    assert physics_of(sl.hybrid.NeuralStepper(Zero(jnp.ones(())), (32,))) == (None, None)
    assert physics_of(lambda u: u) == (None, None)


def _truth(model, key, count=4, steps=30, dt=0.25):
    step = sl.solvers.ETDRK4(model, dt)
    u0 = jax.vmap(model.initial_condition)(jax.random.split(key, count))
    warm = jax.vmap(lambda u: sl.rollout(step, u, 200)[-1])(u0)
    return jax.vmap(lambda u: sl.rollout(step, u, steps))(warm)


@pytest.mark.slow
def test_physics_loss_vanishes_for_the_true_model_only(key):
    data = _truth(_ks(n=64), key)
    right = sl.solvers.ETDRK4(_ks(n=64), 0.25)
    wrong = sl.solvers.ETDRK4(_ks(n=64, a=0.8), 0.25)
    small, big = physics_loss(right, data), physics_loss(wrong, data)
    assert float(small) < 1e-3 * float(big)  # O(dt²) time-difference error only
    # the gradient in a agrees with central finite differences
    g = jax.grad(lambda m: physics_loss(sl.solvers.ETDRK4(m, 0.25), data))(_ks(n=64, a=0.8))
    h = 1e-6
    fd = (
        physics_loss(sl.solvers.ETDRK4(_ks(n=64, a=0.8 + h), 0.25), data)
        - physics_loss(sl.solvers.ETDRK4(_ks(n=64, a=0.8 - h), 0.25), data)
    ) / (2 * h)
    np.testing.assert_allclose(g.a.raw / 0.8, fd, rtol=1e-5)


def test_rollout_loss_is_zero_on_own_trajectories_and_closure_magnitude(key):
    model = _ks(n=64)
    data = _truth(model, key, steps=10)
    step = sl.solvers.ETDRK4(model, 0.25)
    loss, pred = rollout_loss(step, data)
    assert float(loss) < 1e-20 and pred.shape == data.shape
    net = SpectralOperator(jnp.array([0.0, 0.0, 0.0, 0.3]), 22.0)
    hyb = sl.Hybrid(step, net)
    states = data[:, 0]
    expected = jnp.mean(jax.vmap(net)(states) ** 2)
    np.testing.assert_allclose(closure_magnitude(hyb, states), expected, rtol=1e-12)
    assert float(closure_magnitude(step, states)) == 0.0


def test_odd_network_takes_the_two_call_projection_with_the_same_result(key):
    """A bias-free tanh CNN is odd; the projection then needs two calls, and equals the
    four-call projection of the same network."""
    odd = sl.nn.PeriodicCNN1d(
        width=8, depth=1, activation=jnp.tanh, use_bias=False, key=key, final_scale=1.0
    )
    assert odd.is_odd
    u = _ks().initial_condition(jax.random.fold_in(key, 1))
    np.testing.assert_allclose(odd(-u), -odd(u), atol=1e-12)
    hyb = sl.Hybrid(sl.solvers.ETDRK4(_ks(), 0.25), odd, projection=OddSignReflection())
    fast = hyb.network_term(u)
    n = u.shape[0]
    idx = (-jnp.arange(n)) % n
    four = 0.25 * (odd(u) - odd(-u) - odd(u[idx])[idx] + odd(-u[idx])[idx])
    np.testing.assert_allclose(fast, four, atol=1e-12)
    assert not sl.nn.PeriodicCNN1d(width=8, depth=1, activation=jnp.tanh, key=key).is_odd


def test_losses_do_not_import_the_composition_layer():
    """Layering (docs/design.md): losses depend on models, never on hybrid."""
    import ast
    import pathlib

    folder = pathlib.Path(sl.losses.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "hybrid" not in (node.module or ""), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any("hybrid" in a.name for a in node.names), path.name


@pytest.mark.slow
def test_data_orthogonal_projection_is_orthogonal_on_the_reference_states(key):
    """`DataOrthogonal`: over the reference states the projected closure has no component
    along any θ_s sensitivity (a change of θ_s cannot mimic it), a closure that is already
    orthogonal there is unchanged, a rollout's prepared coefficients give the same step,
    and bad input is refused."""
    import equinox as eqx

    kr, kn = jax.random.split(key)
    model = sl.models.Lorenz96(8, forcing=sl.Param(20.0, fixed=True), advection=1.0,
                               damping=1.0)  # fmt: skip
    ref = 3.0 + 5.0 * jax.random.normal(kr, (32, 8))
    proj = sl.hybrid.DataOrthogonal(model, ref)
    jac = jax.vmap(proj._jac)(ref)  # (R, 8, 2): [advection term, -u]
    np.testing.assert_allclose(jac[..., 1], -ref, rtol=1e-12)
    net = sl.nn.PeriodicCNN1d(width=8, depth=1, kernel_size=3, key=kn, final_scale=1.0)
    g = jax.vmap(lambda u: proj(net, u))(ref)
    inner = jnp.einsum("rs,rsi->i", g, jac) / len(ref)
    scale = jnp.sqrt(jnp.mean(g**2) * jnp.mean(jac**2, axis=(0, 1)))
    assert float(jnp.max(jnp.abs(inner) / scale)) < 1e-6
    # already orthogonal: projecting again changes nothing
    again = jax.vmap(lambda u: proj(lambda v: proj(net, v), u))(ref)
    np.testing.assert_allclose(again, g, atol=1e-8 * float(jnp.abs(g).max()))
    # a linear damping closure is removed entirely (θ_s would have to say it)
    lin = jax.vmap(lambda u: proj(lambda v: -0.7 * v, u))(ref)
    assert float(jnp.abs(lin).max()) < 1e-6
    hybrid = sl.Hybrid(sl.solvers.Diffrax(model, 0.05), net, coupling="closure", projection=proj)
    np.testing.assert_allclose(hybrid.prepare()(ref[0]), hybrid(ref[0]), rtol=1e-12)
    assert sl.params.unlearned(hybrid) == []
    grads = eqx.filter_grad(lambda h: jnp.sum(sl.rollout(h, ref[0], 3)[-1] ** 2))(hybrid)
    assert float(jnp.abs(grads.net.layers[0].weight).sum()) > 0
    with pytest.raises(ValueError, match="shape"):
        sl.hybrid.DataOrthogonal(model, ref[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        sl.hybrid.DataOrthogonal(model, ref.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="no free Param"):
        sl.hybrid.DataOrthogonal(sl.models.Lorenz96(8, forcing=sl.Param(8.0, fixed=True)), ref)


def test_data_orthogonal_projection_moves_to_a_longer_domain(key):
    """`DataOrthogonal.moved_to`: on KS twice as long (twice the points) the moved
    projection removes ``J(u) c`` with the new grid's sensitivities (``-u_xx``, ``-u_xxxx``
    there, by FFT) and the coefficients ``c`` fitted on the training references; the
    unmoved projection refuses the new states; other θ_s are refused; a hybrid moved by
    the study engine steps on the new domain."""
    from scilayers.experiments import get_study
    from scilayers.experiments._engine import transfer
    from scilayers.experiments._study import EvalSet

    def ks(length, n):
        a, b = sl.Param(0.8, "positive", name="a"), sl.Param(1.25, "positive", name="b")
        c = sl.Param(1.0, fixed=True, name="c")
        return sl.models.KuramotoSivashinsky(length, n, a=a, b=b, c=c, d=None)

    kr, kn, ku = jax.random.split(key, 3)
    short, long = ks(44.0, 64), ks(88.0, 128)
    ref = jax.vmap(short.initial_condition)(jax.random.split(kr, 16))
    proj = sl.hybrid.DataOrthogonal(short, ref)
    net = sl.nn.PeriodicCNN1d(width=4, depth=1, key=kn, final_scale=1.0)
    moved = proj.moved_to(long)
    c = proj.coefficients(net)
    np.testing.assert_array_equal(moved.coefficients(net), c)  # fitted where trained
    u = long.initial_condition(ku)
    k = 2 * jnp.pi * jnp.fft.rfftfreq(128, 88.0 / 128)
    uxx = jnp.fft.irfft(-(k**2) * jnp.fft.rfft(u), 128)
    uxxxx = jnp.fft.irfft(k**4 * jnp.fft.rfft(u), 128)
    removed = -(c[0] * -uxx + c[1] * -uxxxx)
    tol = 1e-9 * float(jnp.abs(removed).max())
    np.testing.assert_allclose(moved(net, u) - net(u), removed, atol=tol)
    assert float(jnp.abs(removed).max()) > 1e-6  # something was removed
    with pytest.raises(ValueError, match="moved_to"):
        proj.check(long)
    with pytest.raises(ValueError, match="free θ_s"):
        proj.moved_to(sl.params.fix(long, True))
    # the engine moves a KS hybrid with this closure onto the study's 2x domain
    study = get_study("ks")(get_study("ks").presets["quick"])
    hybrid = sl.Hybrid(sl.solvers.ETDRK4(short, 0.25), net, projection=proj)
    es = EvalSet("ood", np.zeros((1, 2, 128)), 0, {"length": 88.0, "n": 128}, "L = 88")
    out = transfer(study, hybrid, es)
    assert out.step.model.n == 128 and out.projection.model.n == 128
    traj = sl.rollout(out, u, 4)
    assert traj.shape == (5, 128) and bool(jnp.all(jnp.isfinite(traj)))
