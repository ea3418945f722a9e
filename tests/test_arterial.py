"""1-D arterial blood flow: Windkessel, tube law, MUSCL network solver, junctions, gradients,
the openBF case reader and `scilayers data arterial`."""

from __future__ import annotations

import math
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import scilayers as sl
from scilayers.cli import app
from scilayers.data import (
    ARTERIAL_CASES,
    arterial_case_path,
    load_arterial_case,
    run_arterial_case,
)
from scilayers.models import (
    MMHG,
    ArterialCase,
    ArterialNetwork,
    OutletSpec,
    VesselSpec,
    Windkessel,
)
from scilayers.solvers import ArterialMUSCL, arterial_stable_dt

RHO = 1060.0
E0, H0, R0 = 4.0e5, 1.0e-3, 0.01


# ------------------------------------------------------------------------- helpers
def linear_speed(E, h0, r, rho=RHO):
    """c0 written out independently of the library: β = (4/3)√π E h0, c0 = √(β/(2ρ√A0))."""
    beta = 4.0 / 3.0 * math.sqrt(math.pi) * E * h0
    return math.sqrt(beta / (2.0 * rho * math.sqrt(math.pi * r * r)))


def impedance(E, h0, r, rho=RHO):
    """Characteristic impedance ρ c0 / A0 (Pa s m^-3)."""
    return rho * linear_speed(E, h0, r, rho) / (math.pi * r * r)


def vessel(label, sn, tn, L, M, r=R0, E=E0, h0=H0, gamma=9.0):
    return VesselSpec(label, sn, tn, L, E, r, r, h0, gamma, 0.0, M)


def pulse(q0, t0=0.06, width=0.02, period=1.0, n=2001):
    t = np.linspace(0.0, period, n)
    return tuple(t), tuple(q0 * np.exp(-(((t - t0) / width) ** 2)))


def cardiac(qmean=8e-5, period=0.8, n=161):
    """A smooth, periodic cardiac-like inflow (m^3/s) with mean `qmean`."""
    t = np.linspace(0.0, period, n)
    s = np.sin(np.pi * np.clip(t / (0.35 * period), 0.0, 1.0)) ** 2
    q = 0.1 + s
    q *= qmean / (np.trapezoid(q, t) / period)
    return tuple(t), tuple(q)


def make_case(vessels, outlets, inflow, mu=4e-3, name="test"):
    t, q = inflow
    return ArterialCase(name, tuple(vessels), tuple(outlets), RHO, mu, t, q)


def networks(kind, M=10, L=0.1, q0=5e-5, closed=True):
    """Small networks: 'single', 'joint' (1-1), 'bifurcation' (1-2), 'loop' (1-2 then 2-1)."""
    R2 = 1e30 if closed else 1e8
    vs = {
        "single": [vessel("v0", 1, 2, L, M)],
        "joint": [vessel("v0", 1, 2, L, M), vessel("v1", 2, 3, L, M, r=0.008)],
        "bifurcation": [vessel("p", 1, 2, L, M), vessel("d1", 2, 3, L, M, r=0.007),
                        vessel("d2", 2, 4, 1.3 * L, M, r=0.006, E=6e5)],
        "loop": [vessel("p", 1, 2, L, M), vessel("a", 2, 3, L, M, r=0.007),
                 vessel("b", 2, 3, 1.3 * L, M, r=0.006), vessel("c", 3, 4, L, M, r=0.009)],
    }[kind]  # fmt: skip
    tn = {v.tn for v in vs}
    sn = {v.sn for v in vs}
    outs = [OutletSpec(i, impedance(v.E, v.h0, v.r_dist), 1e-9, R2)
            for i, v in enumerate(vs) if v.tn in tn - sn]  # fmt: skip
    return make_case(vs, outs, pulse(q0, period=1.0))


@eqx.filter_jit
def _run(solver, u0, samples, every):
    return solver.run(u0, jnp.asarray(0.0), samples, every)


def peak(y, dt):
    """Time (s) and value of the maximum of a sampled signal, refined by a parabola."""
    i = int(np.argmax(y))
    a, b, c = y[i - 1], y[i], y[i + 1]
    d = 0.5 * (a - c) / (a - 2 * b + c)
    return (i + d) * dt, b - 0.25 * (a - c) * d


# --------------------------------------------------------------------- Windkessel
def test_windkessel_steady_inflow_and_time_constant():
    """A steady inflow Q charges the capacitor as P_c = p_out + Q R2 (1 - exp(-t/(R2 C)));
    the pressure tends to p_out + Q (R1 + R2)."""
    R1, C, R2, pout, Q = 2e7, 1e-8, 1.5e8, 700.0, 9e-5
    wk = Windkessel(R1, C, R2, p_out=pout, inflow=Q)
    tau = R2 * C
    assert float(wk.time_constant()) == pytest.approx(tau, rel=1e-14)
    step = sl.solvers.Diffrax(wk, dt=tau / 20, substeps=4)
    traj = sl.rollout(step, wk.initial_condition(), n=400, t0=0.0)
    t = np.arange(401) * tau / 20
    exact = pout + Q * R2 * (1.0 - np.exp(-t / tau))
    np.testing.assert_allclose(np.asarray(traj[:, 0]), exact, rtol=1e-8, atol=1e-8 * Q * R2)
    p_end = float(wk.pressure(traj[-1], t[-1]))
    assert p_end == pytest.approx(pout + Q * (R1 + R2), rel=1e-8)
    # the decay rate read off the trajectory is 1/(R2 C)
    rate = -np.polyfit(t[:200], np.log(pout + Q * R2 - np.asarray(traj[:200, 0])), 1)[0]
    assert rate == pytest.approx(1.0 / tau, rel=1e-6)


def test_vessel_with_windkessel_periodic_mean_pressure():
    """A single vessel with a Windkessel reaches a periodic state whose mean pressure equals
    the mean flow times R1 + R2 (within 1 %)."""
    t, q = cardiac(qmean=8e-5, period=0.8)
    R1, C, R2 = impedance(E0, H0, R0), 3e-9, 1.2e8
    case = make_case([vessel("aorta", 1, 2, 0.15, 15)], [OutletSpec(0, R1, C, R2)], (t, q))
    ds = run_arterial_case(case, rtol=1e-3, samples=200, max_cycles=30)
    assert ds.attrs["converged"] == 1 and ds.attrs["convergence"] <= 1e-3
    qbar = 8e-5
    assert float(ds.flow.isel(vessel=0, position=0).mean()) == pytest.approx(qbar, rel=2e-3)
    for pos in (0, -1):
        pmean = float(ds.pressure.isel(vessel=0, position=pos).mean())
        assert pmean == pytest.approx(qbar * (R1 + R2), rel=0.01)


# ------------------------------------------------------------------- single vessel
@pytest.mark.parametrize("r_dist", [0.005, 0.004])
def test_steady_viscous_pressure_drop(r_dist):
    """Steady flow with a Poiseuille profile (γ = 2) through a uniform and a tapered vessel:
    the pressure drop is that of the steady 1-D equations (friction K_R = 2(γ+2)πμ/ρ and,
    tapered, the A0(x), β/A0(x) terms), integrated independently; for the uniform vessel it
    is Poiseuille's law 8μQL/(πR⁴) = 8πμQL/A² up to u²/c²."""
    from scipy.integrate import solve_ivp

    rp, L, E, h0, mu, Q = 0.005, 0.2, 4e5, 5e-4, 0.04, 5e-5
    t = tuple(np.linspace(0.0, 1.0, 11))
    v = VesselSpec("v", 1, 2, L, E, rp, r_dist, h0, 2.0, 0.0, 20)
    case = make_case([v], [OutletSpec(0, 2e7, 1e-10, 8e7)], (t, tuple(Q for _ in t)), mu=mu)
    net = ArterialNetwork(case)
    solver = ArterialMUSCL(net)
    u, _, _ = _run(solver, net.initial_state(), 1, int(0.8 / solver.dt))
    A, Qe = (np.asarray(x) for x in eqx.filter_jit(type(solver).boundary_states)(solver, u, 0.8))
    np.testing.assert_allclose(Qe, Q, rtol=1e-5)  # steady: the outflow is the inflow
    np.testing.assert_allclose(net.split(u)[1], Q, rtol=1e-3)  # every cell, to O(dx²)
    beta = 4.0 / 3.0 * math.sqrt(math.pi) * E * h0
    KR = 2.0 * (2.0 + 2.0) * math.pi * mu / RHO
    dR = (r_dist - rp) / L

    def rhs(x, a):  # (A/ρ) dp/dx + d(Q²/A)/dx = -K_R Q/A, p = (β/A0)(√A - √A0)
        R = rp + dR * x
        A0 = math.pi * R * R
        K, dK, dsA0 = beta / A0, -2.0 * beta * dR / (math.pi * R**3), math.sqrt(math.pi) * dR
        dp_dx_at_A = dK * (np.sqrt(a) - np.sqrt(A0)) - K * dsA0
        c2 = K * np.sqrt(a) / (2.0 * RHO)
        return (-KR * Q / a - a / RHO * dp_dx_at_A) / (c2 - (Q / a) ** 2)

    a_end = solve_ivp(rhs, (0.0, L), [A[0]], rtol=1e-12, atol=1e-18).y[0, -1]
    A0p, A0d = math.pi * rp**2, math.pi * r_dist**2
    p0 = beta * (np.sqrt(A[0]) - np.sqrt(A0p)) / A0p
    drop = p0 - beta * (np.sqrt(A[1]) - np.sqrt(A0d)) / A0d
    exact = p0 - beta * (np.sqrt(a_end) - np.sqrt(A0d)) / A0d
    assert drop == pytest.approx(exact, rel=3e-3)
    if r_dist == rp:
        poiseuille = 8.0 * math.pi * mu * Q * L / (A[0] * A[1])  # at the actual area
        assert drop == pytest.approx(poiseuille, rel=0.03)


def test_network_params_are_theta_s():
    case = networks("bifurcation")
    net = ArterialNetwork(case)
    names = sl.params.named(net)
    assert {k for k, p in names.items() if not p.fixed} == {"E", "R1", "C", "R2"}
    assert names["inflow"].fixed  # the waveform is data, never trained
    assert names["E"].value.shape == (3,) and names["R1"].value.shape == (2,)
    with pytest.raises(ValueError, match=r"E must have shape \(3,\)"):
        ArterialNetwork(case, E=np.ones(2) * 4e5)
    with pytest.raises(ValueError, match="violates its constraint"):
        ArterialNetwork(case, R2=np.array([1e8, -1.0]))


def test_inflow_waveform_is_data_shared_by_one_program():
    case = networks("bifurcation")
    t, q = np.asarray(case.inflow_time), np.asarray(case.inflow_flow)
    net = ArterialNetwork(case)
    fast = ArterialNetwork(case, inflow=(0.75 * t, 1.5 * q))
    # the same periodic waveform, time-scaled and amplified
    for s in (0.1, 0.37, 0.74, 1.3):
        assert float(fast.inflow(0.75 * s)) == pytest.approx(1.5 * float(net.inflow(s)), rel=1e-12)
    assert float(fast.period) == pytest.approx(0.75 * case.period)
    assert float(fast.mean_inflow()) == pytest.approx(1.5 * float(net.mean_inflow()), rel=1e-12)
    # same static structure: a jitted function of the network compiles once for both
    assert jax.tree.structure(net) == jax.tree.structure(fast)
    traces = []

    @eqx.filter_jit
    def at(m, s):
        traces.append(1)
        return m.inflow(s)

    at(net, 0.2), at(fast, 0.2)
    assert len(traces) == 1
    with pytest.raises(ValueError, match="times increasing from 0"):
        ArterialNetwork(case, inflow=(t[::-1], q))
    with pytest.raises(ValueError, match="NaN"):
        ArterialNetwork(case, inflow=(t, np.where(t > 0.5, np.nan, q)))


def test_cfl_violation_is_an_error_and_default_dt_is_stable():
    net = ArterialNetwork(networks("single", M=10, L=0.1))
    c0 = linear_speed(E0, H0, R0)
    dx = 0.01
    assert float(net.wave_speed0()[0]) == pytest.approx(c0, rel=1e-12)
    dt = arterial_stable_dt(net, cfl=0.9)
    assert dt == pytest.approx(0.9 * dx / (1.6 * c0), rel=1e-12)
    assert ArterialMUSCL(net).dt == pytest.approx(dt)
    with pytest.raises(ValueError, match="violates the CFL condition"):
        ArterialMUSCL(net, dt=1.05 * dx / c0)
    with pytest.raises(ValueError, match="too long for the Windkessel"):
        stiff = networks("single", M=10, L=0.1)
        ArterialMUSCL(ArterialNetwork(stiff, C=np.array([1e-14])), dt=0.5 * dx / c0)


def test_linear_wave_speed():
    """A small pulse travels at c0 = √(β √A0 / (2 ρ A0)) (within 0.5 %; the issue asks 2 %;
    measured: 0.01 %)."""
    L, M = 1.0, 200
    case = make_case([vessel("v", 1, 2, L, M)],
                     [OutletSpec(0, impedance(E0, H0, R0), 1e-6, 1e9)],
                     pulse(1e-7, t0=0.06, width=0.02), mu=1e-9)  # fmt: skip
    net = ArterialNetwork(case)
    solver = ArterialMUSCL(net)
    n = int(0.32 / solver.dt)
    _, probes, cmax = _run(solver, net.initial_state("rest"), n, 1)
    p = np.asarray(probes[:, 0, 0, :])  # (time, position 0, .25, .5, .75, 1)
    t = np.arange(n) * solver.dt

    def arrival(y):
        # the time centroid of the pulse: for a conservative scheme it moves at the wave
        # speed even where the limiter clips the crest (which delays the crest itself)
        w = np.abs(t - t[np.argmax(y)]) < 0.08
        return np.sum(t[w] * y[w]) / np.sum(y[w])

    c = 0.5 * L / (arrival(p[:, 3]) - arrival(p[:, 1]))
    assert c == pytest.approx(linear_speed(E0, H0, R0), rel=5e-3)
    assert float(cmax) < 0.9


@pytest.mark.parametrize("kind", ["single", "joint", "bifurcation", "loop"])
def test_mass_conservation_and_junction_conditions(kind):
    """Closed outlets (R2 → ∞): vessel volume + Σ C P_c changes by exactly the inflow volume
    (the trapezoid of Q_in over each step, as SSP-RK2 integrates it) — to round-off in one
    vessel, through joints, bifurcations and conjunctions to the Newton tolerance. At every
    junction the solved end states conserve mass and total pressure (not pressure alone)."""
    net = ArterialNetwork(networks(kind, closed=True))
    solver = ArterialMUSCL(net)
    n = 150
    u0 = net.initial_state("rest")
    u, _, _ = _run(solver, u0, 1, n)
    C = np.asarray(net.C.value)

    def stored(v):
        return float(net.volume(v)) + float(np.sum(C * np.asarray(net.split(v)[2])))

    tq, qq = np.asarray(net.case.inflow_time), np.asarray(net.case.inflow_flow)
    t = np.arange(n) * solver.dt
    inflow = float(
        np.sum(0.5 * solver.dt * (np.interp(t, tq, qq) + np.interp(t + solver.dt, tq, qq)))
    )
    assert inflow > 0.01 * float(net.volume(u0))  # a sizeable volume came in
    err = abs(stored(u) - stored(u0) - inflow) / inflow
    assert err < (1e-12 if kind == "single" else 1e-9)
    if kind == "single":  # the stepper is a scilayers stepper: `rollout` gives the same run
        traj = sl.rollout(solver, u0, n, t0=0.0)
        for a, b in zip(net.split(traj[-1]), net.split(u), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * float(jnp.abs(b).max()))

    A, Q = (
        np.asarray(x)
        for x in eqx.filter_jit(type(solver).boundary_states)(solver, u, n * solver.dt)
    )
    assert np.abs(Q).max() > 1e-7  # waves are still running
    assert Q[2 * net.topology.inlet] == pytest.approx(float(net.inflow(n * solver.dt)), rel=1e-14)
    A0 = np.pi * net.layout.end_radius**2
    p = np.asarray(net.beta()).repeat(2) * (np.sqrt(A) - np.sqrt(A0)) / A0
    ptot = p + 0.5 * RHO * (Q / A) ** 2
    for _n, vessels, signs, _nodes in net.topology.junctions:
        for vv, ss in zip(vessels, signs, strict=True):
            e = [2 * v + (s > 0) for v, s in zip(vv, ss, strict=True)]
            assert abs(np.dot(ss, Q[e])) < 1e-9 * np.abs(Q[e]).max()
            assert np.ptp(ptot[e]) < 1e-9 * np.abs(ptot[e]).max()
            assert np.ptp(p[e]) > 1e-6 * np.abs(p[e]).max()


def _convergence_errors(limiter):
    """L1 and L∞ errors of A and Q against a 16× finer grid, for a smooth nonlinear pulse
    (peak velocity ~0.16 m/s) through a vessel with a Windkessel, at fixed Courant number."""
    c0 = linear_speed(E0, H0, R0)
    out = {}
    base, L = 25, 0.4
    dt0 = 0.4 * (L / base) / c0
    n0 = int(round(0.15 / dt0))
    for M in (25, 50, 100, 400):
        r = M // base
        case = make_case([vessel("v", 1, 2, L, M)],
                         [OutletSpec(0, 2 * impedance(E0, H0, R0), 1e-8, 2e8)],
                         pulse(5e-5, t0=0.05, width=0.02))  # fmt: skip
        net = ArterialNetwork(case)
        u, _, _ = _run(ArterialMUSCL(net, dt0 / r, limiter=limiter), net.initial_state("rest"),
                       1, n0 * r)  # fmt: skip
        out[M] = [np.asarray(x) for x in net.split(u)[:2]]
    errs = []
    for M in (25, 50, 100):
        k = 400 // M
        row = []
        for f in range(2):
            ref = out[400][f].reshape(M, k).mean(axis=1)
            scale = np.ptp(ref)
            row += [np.mean(np.abs(out[M][f] - ref)) / scale,
                    np.max(np.abs(out[M][f] - ref)) / scale]  # fmt: skip
        errs.append(row)
    return np.array(errs)


@pytest.mark.parametrize(
    ("limiter", "l1", "linf"),
    [("mc", 1.8, 1.5), pytest.param("central", 1.8, 1.7, marks=pytest.mark.slow)],
)
def test_muscl_second_order_convergence(limiter, l1, linf):
    """Error vs a 16x finer grid on a smooth problem falls as dx² (fitted slope of
    log error over log dx, grids of 25, 50, 100 cells)."""
    errs = _convergence_errors(limiter)
    dx = np.log([1 / 25, 1 / 50, 1 / 100])
    orders = [np.polyfit(dx, np.log(errs[:, j]), 1)[0] for j in range(4)]
    assert orders[0] > l1 and orders[2] > l1, orders  # L1 of A and Q
    assert orders[1] > linf and orders[3] > linf, orders  # L∞ of A and Q
    assert errs[-1, 0] < 2e-3


def test_bifurcation_reflection_and_transmission():
    """A small pulse meets a bifurcation: reflected and transmitted pressure amplitudes
    follow linear theory, R = (Y0 - ΣYd)/(Y0 + ΣYd), T = 1 + R, with Y = A0/(ρ c0)."""
    rp, rd, L, M = 0.01, 0.006, 1.0, 200
    zd = impedance(E0, H0, rd)
    case = make_case(
        [vessel("p", 1, 2, L, M, r=rp), vessel("d1", 2, 3, L, M, r=rd),
         vessel("d2", 2, 4, L, M, r=rd)],
        [OutletSpec(1, zd, 1e-6, 1e9), OutletSpec(2, zd, 1e-6, 1e9)],
        pulse(1e-7, t0=0.08, width=0.02), mu=1e-9,
    )  # fmt: skip
    net = ArterialNetwork(case)
    solver = ArterialMUSCL(net)
    dt = solver.dt
    _, probes, _ = _run(solver, net.initial_state("rest"), int(0.45 / dt), 1)
    p = np.asarray(probes[:, 0])  # (time, vessel, position)
    Y0 = math.pi * rp**2 / (RHO * linear_speed(E0, H0, rp))
    Yd = math.pi * rd**2 / (RHO * linear_speed(E0, H0, rd))
    R = (Y0 - 2 * Yd) / (Y0 + 2 * Yd)
    split = int(0.28 / dt)
    t_inc, a_inc = peak(p[:split, 0, 2], dt)
    t_ref, a_ref = peak(p[split:, 0, 2], dt)
    _, a_tr = peak(p[:, 1, 2], dt)
    assert t_ref + split * dt - t_inc == pytest.approx(L / linear_speed(E0, H0, rp), rel=5e-3)
    assert a_ref / a_inc == pytest.approx(R, abs=0.01)
    assert a_tr / a_inc == pytest.approx(1 + R, rel=0.01)
    np.testing.assert_allclose(p[:, 1], p[:, 2], rtol=1e-10, atol=1e-12 * a_inc)


# ------------------------------------------------------------------------ gradients
def test_gradients_match_finite_differences():
    """d/dθ of a pressure functional through the whole solver (Newton solves included) vs
    central finite differences, for E per vessel and R1, C, R2 per outlet."""
    vs = [vessel("p", 1, 2, 0.06, 6, r=0.008), vessel("d1", 2, 3, 0.06, 6, r=0.006, E=6e5),
          vessel("d2", 2, 4, 0.05, 5, r=0.005, E=8e5)]  # fmt: skip
    outs = [OutletSpec(1, 1.5e8, 1e-10, 2e9), OutletSpec(2, 2e8, 8e-11, 3e9)]
    case = make_case(vs, outs, cardiac(qmean=2e-5, period=0.5, n=101))
    net0 = ArterialNetwork(case)
    dt = arterial_stable_dt(net0, cfl=0.8)
    theta0 = {k: jnp.log(jnp.asarray(getattr(net0, k).value)) for k in ("E", "R1", "C", "R2")}

    def J(theta):
        net = ArterialNetwork(case, **{k: jnp.exp(v) for k, v in theta.items()})
        _, probes, _ = ArterialMUSCL(net, dt).run(
            net.initial_state("rest"), jnp.asarray(0.0), 30, 4
        )
        return jnp.mean((probes[:, 0] / 1e3) ** 2)

    grad = jax.jit(jax.grad(J))(theta0)
    Jj = jax.jit(J)
    h = 1e-5
    for k, v in theta0.items():
        for i in range(v.shape[0]):
            e = jnp.zeros_like(v).at[i].set(h)
            fd = (Jj({**theta0, k: v + e}) - Jj({**theta0, k: v - e})) / (2 * h)
            g = float(grad[k][i])
            assert abs(g) > 1e-6, (k, i)  # every parameter matters to the functional
            assert g == pytest.approx(float(fd), rel=1e-4, abs=1e-9), (k, i)


# ---------------------------------------------------------------------------- reader
TOY_YAML = """\
project_name: toy
inlet_file: "toy_inlet.dat"
blood:
  rho: 1060.0
  mu: 4.0e-3
solver:
  Ccfl: 0.9
  cycles: 10
  jump: 50
  convergence_tolerance: 1.0
network:
  - label: parent
    sn: 1
    tn: 2
    L: 10.0e-2
    E: 400.0e3
    R0: 1.0e-2
    h0: 1.0e-3
    gamma_profile: 9
  - label: d1
    sn: 2
    tn: 3
    L: 8.0e-2
    E: 500.0e3
    R0: 0.7e-2
    gamma profile: 2
    R1: 3.0e7
    R2: 3.0e9
    Cc: 1.0e-10
  - label: d2
    sn: 2
    tn: 4
    L: 8.0e-2
    E: 500.0e3
    Rp: 0.7e-2
    Rd: 0.6e-2
    M: 12
    R1: 3.0e9
    Cc: 1.0e-10
"""


@pytest.fixture
def toy(tmp_path):
    """A three-vessel case in the openBF format: YAML and inflow .dat."""
    (tmp_path / "toy.yaml").write_text(TOY_YAML)
    t, q = cardiac(qmean=1.2e-5, period=0.8, n=81)
    np.savetxt(tmp_path / "toy_inlet.dat", np.column_stack([t, q]))
    return tmp_path / "toy.yaml"


def test_reader_parses_openbf_fields(toy):
    case = load_arterial_case(toy)
    assert case.name == "toy" and case.labels == ("parent", "d1", "d2")
    p, d1, d2 = case.vessels
    assert (p.E, p.r_prox, p.r_dist, p.h0, p.n_cells) == (400e3, 0.01, 0.01, 1e-3, 100)
    assert p.gamma_profile == 9 and d1.gamma_profile == 2  # "gamma profile" spelling too
    # no h0: Avolio's fit of the mean radius, as openBF
    r = 0.007
    assert d1.h0 == pytest.approx(
        r * (0.2802 * math.exp(-505.3 * r) + 0.1324 * math.exp(-11.14 * r))
    )
    assert (d2.r_prox, d2.r_dist, d2.n_cells) == (0.007, 0.006, 12)
    assert len(case.outlets) == 2 and case.outlets[0] == OutletSpec(1, 3e7, 1e-10, 3e9)
    # R1 and Cc only (openBF's two-element form): R1 = ρc0/A0, R2 = R1_given − R1
    z0 = impedance(500e3, d2.h0, 0.006)
    assert case.outlets[1].R1 == pytest.approx(z0, rel=1e-12)
    assert case.outlets[1].R2 == pytest.approx(3e9 - z0, rel=1e-12)
    assert (case.samples, case.cfl, case.max_cycles) == (50, 0.9, 10)
    assert case.period == pytest.approx(0.8)


def _one_line_error(exc_type, fn, *names):
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for n in names:
        assert str(n) in msg, (n, msg)
    return msg


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda s: s.replace("    E: 400.0e3\n", ""), ["'E'", "parent", "network[0]"]),
        (lambda s: s.replace("    R0: 0.7e-2\n", ""), ["'R0'", "d1"]),
        (lambda s: s.replace("  mu: 4.0e-3\n", ""), ["'mu'", "blood"]),
        (lambda s: s.replace("L: 8.0e-2", "L: eight", 1), ["'L'", "eight", "d1"]),
        (lambda s: s.replace("sn: 2\n    tn: 3", "sn: 2.5\n    tn: 3"), ["'sn'", "d1"]),
        (lambda s: s.replace("L: 10.0e-2", "L: -1.0"), ["'L'", "> 0"]),
        (lambda s: s.replace("    Cc: 1.0e-10\n", "", 1), ["'Cc'", "d1"]),
        (lambda s: s.replace("gamma_profile: 9", "gamma_profil: 9"), ["'gamma_profil'"]),
        (lambda s: s.replace("network:", "network:\n  - [1, 2"), ["not valid YAML", "line"]),
        (lambda s: s.replace("sn: 2\n    tn: 4", "sn: 5\n    tn: 4"), ["one inlet vessel"]),
        (lambda s: s.replace("    R2: 3.0e9\n    Cc: 1.0e-10\n", "", 1), ["'Cc'"]),
    ],
)
def test_reader_malformed_file_is_one_line_naming_file_and_field(toy, edit, names):
    toy.write_text(edit(TOY_YAML))
    _one_line_error(ValueError, lambda: load_arterial_case(toy), str(toy), *names)


def test_reader_missing_files_and_bad_inflow(toy, tmp_path):
    _one_line_error(FileNotFoundError, lambda: load_arterial_case(tmp_path / "nope.yaml"),
                    str(tmp_path / "nope.yaml"))  # fmt: skip
    dat = tmp_path / "toy_inlet.dat"
    good = dat.read_text()
    dat.write_text(good + "0.9 abc\n")
    _one_line_error(ValueError, lambda: load_arterial_case(toy), str(dat), "line 82")
    dat.write_text("0.0 1e-6\n0.5 2e-6\n0.5 1e-6\n")
    _one_line_error(ValueError, lambda: load_arterial_case(toy), str(dat), "repeats 0.5")
    dat.write_text("0.0 1e-6\n0.5 2e-6\n0.4 1e-6\n0.8 1e-6\n")  # out of order: sorted
    assert load_arterial_case(toy).inflow_time == (0.0, 0.4, 0.5, 0.8)
    dat.unlink()
    _one_line_error(FileNotFoundError, lambda: load_arterial_case(toy), str(dat), "inlet_file")


def test_case_name_needs_a_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("SCILAYERS_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="--data-dir DIR or set SCILAYERS_DATA_DIR"):
        arterial_case_path("boileau2015/uta")
    _one_line_error(FileNotFoundError, lambda: arterial_case_path("boileau2015/uta", tmp_path),
                    str(tmp_path), "boileau2015/uta")  # fmt: skip


def _real_data_dir() -> Path:
    value = os.environ.get("SCILAYERS_DATA_DIR")
    if not value:
        pytest.skip("no real data: SCILAYERS_DATA_DIR is unset (e.g. ../shared/data)")
    path = Path(value)
    if not (path / "hemodynamics").is_dir():
        pytest.skip(f"{path} has no hemodynamics/ folder")
    return path


@pytest.mark.parametrize("name", ARTERIAL_CASES)
def test_every_shipped_case_loads(name):
    import yaml

    root = _real_data_dir()
    case = load_arterial_case(name, root)
    path = arterial_case_path(name, root)
    raw = yaml.safe_load(path.read_text())
    assert len(case.vessels) == len(raw["network"])
    assert case.labels == tuple(v["label"] for v in raw["network"])
    ends = [v.tn for v in case.vessels]
    starts = [v.sn for v in case.vessels]
    terminals = [i for i, v in enumerate(case.vessels) if v.tn not in starts]
    assert sorted(o.vessel for o in case.outlets) == terminals
    assert all(o.R1 > 0 and o.R2 > 0 and o.C > 0 for o in case.outlets)
    assert sum(1 for v in case.vessels if v.sn not in ends) == 1
    net = ArterialNetwork(case)
    assert 0 < arterial_stable_dt(net) < 1e-3
    if name == "boileau2015/uta":
        v = case.vessels[0]
        assert (v.E, v.r_prox, v.h0, v.length) == (400e3, 9.87e-3, 0.82e-3, 24.137e-2)
        assert case.outlets[0] == OutletSpec(0, 1.1752e7, 1.0163e-8, 1.1167e8)
        assert case.period == pytest.approx(0.955)


# ------------------------------------------------------------------------------- CLI
@pytest.mark.optimized  # run-bound: compiled with optimisation (conftest.py)
def test_cli_data_arterial_writes_last_cycle(toy, tmp_path):
    out = tmp_path / "toy.nc"
    result = CliRunner().invoke(
        app, ["data", "arterial", "--case", str(toy), "--out", str(out), "--no-progress",
              "--max-cycles", "40"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "periodic" in result.output and "mmHg" in result.output
    ds = xr.load_dataset(out)
    for name, units in (("pressure", "Pa"), ("flow", "m3 s-1"), ("area", "m2")):
        assert ds[name].dims == ("vessel", "position", "time")
        assert ds[name].attrs["units"] == units
    assert list(ds.vessel.values) == ["parent", "d1", "d2"]
    np.testing.assert_allclose(ds.position, [0, 0.25, 0.5, 0.75, 1.0])
    assert ds.sizes["time"] == 50
    for key in ("cycles", "convergence", "dt", "case", "converged", "max_courant"):
        assert key in ds.attrs
    assert ds.attrs["case"] == "toy" and ds.attrs["convergence"] <= 0.01
    assert 0 < ds.attrs["max_courant"] <= 0.9
    # mass: the two outlets drain the mean inflow; the inlet flow is the prescribed one
    q = ds.flow.mean("time")
    assert float(q.sel(vessel="parent", position=0.0)) == pytest.approx(1.2e-5, rel=0.01)
    total = float(q.sel(vessel="d1", position=1.0) + q.sel(vessel="d2", position=1.0))
    assert total == pytest.approx(1.2e-5, rel=0.02)
    p = ds.pressure.sel(vessel="parent", position=0.0)
    assert 20 * MMHG < float(p.min()) < float(p.max()) < 250 * MMHG


def test_cli_data_arterial_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["data", "arterial", "--case", str(tmp_path / "missing.yaml"),
                            "--out", str(tmp_path / "x.nc")])  # fmt: skip
    assert r.exit_code == 2 and "missing.yaml" in r.output and "does not exist" in r.output
    r = runner.invoke(app, ["data", "arterial", "--case", "x.yaml", "--out",
                            str(tmp_path / "x.nc"), "--rtol", "2"])  # fmt: skip
    assert r.exit_code == 2 and "--rtol" in r.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [("boileau2015/uta", (70, 80), (112, 125)), ("boileau2015/cca", (78, 88), (118, 130))],
)
def test_cli_boileau_cases_reach_published_pressure_range(name, lo, hi, tmp_path):
    """The Boileau et al. (2015) single-vessel benchmarks: inlet pressure over the periodic
    cycle within the published range (UTA roughly 75-120 mmHg, CCA 85-125 mmHg)."""
    root = _real_data_dir()
    out = tmp_path / "case.nc"
    r = CliRunner().invoke(app, ["data", "arterial", "--case", name, "--out", str(out),
                                 "--data-dir", str(root), "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    ds = xr.load_dataset(out)
    assert ds.attrs["converged"] == 1
    p = ds.pressure.isel(vessel=0, position=0).values / MMHG
    assert lo[0] < p.min() < lo[1] and hi[0] < p.max() < hi[1], (p.min(), p.max())
