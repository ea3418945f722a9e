"""Results, tables, notes, targets, arrays and figures of the aneurysm study: functions of
the `AneurysmStudy` (they read its config, lattices and scores)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...metrics import summary
from ...models import Carreau
from ...models._rheology import BLOOD_DENSITY, CHO_KENSEY_1991
from ...solvers import tawss_osi
from .._common import environment, save_figure
from ._config import CARREAU, METHODS, REFERENCES, SHEAR_RATES, TRAINED
from ._identifiability import power_law_consistency, viscosity


def assemble(study, seeds, asked, runs, truth, ident, check, cases) -> dict:
    cfg = study.cfg
    names = [c.name for c in cases]
    poorly = set(ident.get("poorly_identified", []))
    methods: dict[str, dict] = {}
    prior = dict(CHO_KENSEY_1991)
    all_keys = list(dict.fromkeys(
        k for per_seed in runs.values() for k in per_seed[0][0]
        if any(k.startswith(f"{s}_") for s in names) and not k.endswith("max_mach")
    ))  # fmt: skip
    for method, per_seed in runs.items():
        entry: dict = {"label": METHODS[method]}
        if method in REFERENCES:
            entry["reference"] = True
        for k in all_keys:  # a metric a method has no value for is left out (—)
            if k in per_seed[0][0]:
                entry[k] = summary([m.get(k) for m, _ in per_seed])
        theta0 = per_seed[0][0].get("theta")
        if theta0 is not None:
            for g in SHEAR_RATES:
                true_mu = viscosity(cfg.true_theta, g)
                entry[f"visc_err_{g:g}"] = summary(
                    [abs(viscosity(m["theta"], g) / true_mu - 1.0) for m, _ in per_seed]
                )
            if set(theta0) == set(CARREAU):
                true_k = power_law_consistency(cfg.true_theta)
                entry["K_err"] = summary([abs(power_law_consistency(m["theta"]) / true_k - 1)
                                          for m, _ in per_seed])  # fmt: skip
        if method in TRAINED:
            entry["train_seconds"] = summary([m["train_seconds"] for m, _ in per_seed])
        theta = per_seed[0][0].get("theta")
        if theta is not None and set(theta) == set(CARREAU):
            entry["theta"] = {}
            for k in CARREAU:
                learned = [m["theta"][k] for m, _ in per_seed]
                true = cfg.true_theta[k]
                entry["theta"][k] = {
                    "true": true, "initial": prior[k], "learned": learned,
                    "rel_error": summary([abs(v - true) / true for v in learned]),
                    "identifiable": k not in poorly,
                }  # fmt: skip
        if "theta_history" in per_seed[0][0] and set(per_seed[0][0]["theta_history"]) == set(
            CARREAU
        ):
            entry["theta_history"] = {
                k: [m["theta_history"][k] for m, _ in per_seed] for k in CARREAU
            }
        if "losses" in per_seed[0][0] and method != "neural_field":
            finals = [m["losses"][-1] if m["losses"] else None for m, _ in per_seed]
            conv = [_plateau(m["losses"]) for m, _ in per_seed]
            entry["convergence"] = {
                "criterion": f"fixed budget of {cfg.iterations} cycles; converged = the loss "
                             "changed < 2 % over the last quarter",
                "final_loss": summary(finals), "converged": conv,
                "steps": summary([len(m["losses"]) for m, _ in per_seed]),
            }  # fmt: skip
        methods[method] = entry
    checks = {}
    for s in names:
        t = truth[s]
        checks[f"{s}_max_mach"] = float(t["mach"])
        checks[f"{s}_shear_rate_sac_median"] = float(t["shear_sac_median"])
        checks[f"{s}_shear_rate_max"] = float(t["shear_wall_max"])
        for k in ("tawss_err", "tawss_mean_err", "rmse_sac", "nmse"):
            if f"{s}_{k}" in check[0]:
                checks[f"coarse_at_true_theta_{s}_{k}"] = check[0][f"{s}_{k}"]
    notes = study_notes(study, seeds, asked, ident, check)
    results = {
        "experiment": study.name,
        "preset": cfg.preset,
        "seeds": list(seeds),
        "config": {
            **cfg.to_dict(),
            "derived": derived(study),
        },
        "environment": environment(),
        "eval_sets": names,
        "field_kind": "2d",
        "methods": methods,
        "truth": {"checks": checks},
        "identifiability": ident,
        "tables": study_tables(study, methods, ident, cases),
        "notes": notes,
    }
    return results


def derived(study) -> dict:
    """Lattice and flow numbers of the training set."""
    cfg = study.cfg
    lat = study.lattice(study.cases()[0])
    step = lat.stepper(Carreau(**cfg.true_theta))
    sc = step.scaling
    mu_ref = float(Carreau(**cfg.true_theta).viscosity(6 * cfg.mean_velocity / cfg.diameter))
    nu = mu_ref / BLOOD_DENSITY
    return {
        "coarse_grid": list(lat.shape), "fine_grid": list(study.lattice(
            study.cases()[0], cfg.refine).shape),
        "dx_m": lat.dx, "dt_s": lat.dt, "steps_per_cycle": lat.steps,
        "reynolds_mean": cfg.mean_velocity * cfg.diameter / nu,
        "womersley": 0.5 * cfg.diameter * math.sqrt(2 * math.pi / cfg.period / nu),
        "mach_peak_centreline": float(sc.mach(study.speed_ref)),
        "tau_at_mu_inf": float(sc.tau(cfg.true_mu_inf)),
        "noise_std_m_s": cfg.noise * study.speed_ref,
        "observed_cells": int(len(study.observation_cells(lat))),
    }  # fmt: skip


def study_tables(study, methods: dict, ident: dict, cases) -> list[dict]:
    cols = ["Method"] + [f"{c.name} TAWSS err (%)" for c in cases] + [
        f"{c.name} sac-mean TAWSS err (%)" for c in cases] + ["ID OSI err"]  # fmt: skip
    rows = []
    for name, e in methods.items():
        row = [name]
        for key in [f"{c.name}_tawss_err" for c in cases] + [
            f"{c.name}_tawss_mean_err" for c in cases
        ]:
            row.append(_pct(e.get(key)))
        osi = e.get("id_osi_err")
        row.append("—" if not osi or osi.get("mean") is None else f"{osi['mean']:.3f}")
        rows.append(row)
    tables = [{
        "title": "Wall shear stress in the sac (the clinical metric)",
        "columns": cols, "rows": rows,
        "caption": "TAWSS err: relative L2 error along the sac wall (profiles smoothed over "
                   "one coarse cell of arc, neck corners left out) against the fine-lattice "
                   "truth; sac-mean: error of the TAWSS averaged over the sac; mean ± std "
                   "over seeds where there are several.",
    }]  # fmt: skip
    rows = []
    true = study.cfg.true_theta
    for name, e in methods.items():
        if "visc_err_1" not in e:
            continue
        row = [name]
        for g in SHEAR_RATES:
            row.append(_pct(e.get(f"visc_err_{g:g}")))
        row.append(_pct(e.get("K_err")))
        rows.append(row)
    mu_true = ", ".join(f"{1e3 * viscosity(true, g):.2f}" for g in SHEAR_RATES)
    tables.append({
        "title": "The blood's viscosity curve",
        "columns": ["Method"] + [f"μ({g:g}/s) err (%)" for g in SHEAR_RATES]
                   + ["K err (%)"],
        "rows": rows,
        "caption": f"Relative error of the learned viscosity μ(γ̇) at shear rates of the sac "
                   f"(~1/s), the thinning range and the vessel wall (~100/s); true values "
                   f"{mu_true} mPa s. K = (μ0 − μ∞) λ^(n−1) is the power-law consistency, "
                   f"the combination of μ0 and λ that shear rates above 1/λ see.",
    })  # fmt: skip
    vecs = ident.get("eigenvectors")
    if vecs:
        params = ident["params"]
        rows = []
        for j, lam in enumerate(ident["eigenvalues"]):
            rows.append([f"{lam:.3g}"] + [f"{vecs[i][j]:+.2f}" for i in range(len(params))])
        tables.append({
            "title": "Fisher information: eigen-directions in log θ_s",
            "columns": ["eigenvalue"] + list(params), "rows": rows,
            "caption": "Eigenvalues of the Fisher information of the observations for "
                       "log θ_s (1/σ² units) and their eigenvectors: a small eigenvalue's "
                       "direction is a combination of parameters the MRI data cannot "
                       "determine (1/√λ is its std in log units).",
        })  # fmt: skip
    return tables


def study_notes(study, seeds, asked, ident, check) -> list[str]:
    cfg = study.cfg
    notes = []
    if len(seeds) < len(asked):
        notes.append(f"The {cfg.preset} preset runs at most {cfg.max_seeds} seed(s); "
                     f"{len(asked)} were asked for, {len(seeds)} run.")  # fmt: skip
    poorly = ident.get("poorly_identified", [])
    rel = ident.get("relative_std", {})
    k_std = ident.get("combinations", {}).get("K", {}).get("relative_std")
    notes.append(
        "Identifiability (Fisher information of the observations at the calibrated θ_s, "
        "one cycle): relative Cramér–Rao std "
        + ", ".join(f"{k} {v:.2g}" for k, v in rel.items() if v is not None)
        + (f", K = (μ0 − μ∞) λ^(n−1) {k_std:.2g}" if k_std is not None else "")
        + (f"; not identified within 10 %: {', '.join(poorly)}" if poorly else "")
        + ". The shear rates of this flow lie almost all above 1/λ, where Carreau is "
        "close to the power law μ∞ + K γ̇^(n−1): the data see μ0 and λ through K, so "
        "their separate values are not measurements (where they land depends on the "
        "optimiser's path and the prior, not on the data)."
    )
    c = check[0]
    if "id_tawss_err" in c:
        notes.append(
            f"Premise: the coarse lattice run at the true θ_s still misses the sac TAWSS "
            f"by {100 * c['id_tawss_err']:.1f} % (sac velocity RMSE "
            f"{1e3 * c['id_rmse_sac']:.2f} mm/s) — what no θ_s can fix and a closure may."
        )
    notes.append(
        "Budgets: every lattice method trains for the same number of cycles "
        f"({cfg.iterations}); sequential_hybrid starts its closure stage from the "
        "calibrated θ_s, so it has seen twice as many cycles as hybrid_joint."
    )
    notes.append(
        "Training starts each cycle from the previous iteration's end state, relaxed by "
        f"{cfg.gn_relax} cycle(s) without gradient after each θ_s step (no gradient "
        "through the initial state: a truncated gradient)."
    )
    notes.append(
        "neural_field and obs_mean describe one geometry: they have no prediction for "
        "ood_sac; on ood_hr they are evaluated at the same phases of the faster cycle."
    )
    if cfg.waveform != "synthetic":
        notes.append(
            f"Inflow: the shape of the {cfg.waveform} inlet waveform (openBF), rescaled to "
            f"a mean of {cfg.mean_velocity} m/s and period {cfg.period} s (a reduced, "
            "low-Reynolds problem for 2 cores; the circle-of-Willis file is the aortic "
            "root's inflow, zero in diastole, so a carotid shape is used)."
        )
    return notes


def study_targets(study, results: dict) -> list[dict]:
    cfg = study.cfg
    methods = results["methods"]
    out = []
    hj = methods.get("hybrid_joint", {})
    theta = hj.get("theta", {})
    if theta:
        errs = {k: theta[k]["rel_error"]["mean"] for k, v in theta.items()
                if v.get("identifiable")}  # fmt: skip
        combos = results.get("identifiability", {}).get("combinations", {})
        if combos.get("K", {}).get("identified") and "K_err" in hj:
            errs["K"] = hj["K_err"]["mean"]
        for g in SHEAR_RATES:
            key = f"visc_err_{g:g}"
            if combos.get(f"mu({g:g}/s)", {}).get("identified") and key in hj:
                errs[f"μ({g:g}/s)"] = hj[key]["mean"]
        worst = max(errs.values()) if errs else None
        out.append({
            "name": "Carreau θ_s, or the viscosities and combinations of them, that the "
                    "data identify (Cramér–Rao std ≤ 10 %) within 10 % (hybrid_joint)",
            "value": ", ".join(f"{k} {100 * v:.1f} %" for k, v in errs.items())
                     or "the data identify no parameter or combination within 10 %",
            "target": "≤ 10 % each",
            "pass": None if worst is None else bool(worst <= 0.10),
        })  # fmt: skip

    def mean(m, key):
        v = methods.get(m, {}).get(key)
        return None if not isinstance(v, dict) else v.get("mean")

    hj_t = mean("hybrid_joint", "id_tawss_err")
    if hj_t is not None:
        out.append({"name": "TAWSS in the sac within 10 % (hybrid_joint, ID)",
                    "value": f"{100 * hj_t:.1f} %", "target": "≤ 10 %",
                    "pass": bool(hj_t <= 0.10)})  # fmt: skip
        for other in ("pure_physics", "sequential_hybrid"):
            o = mean(other, "id_tawss_err")
            if o is not None:
                out.append({"name": f"hybrid_joint TAWSS error below {other} (ID)",
                            "value": f"{100 * hj_t:.1f} % vs {100 * o:.1f} %",
                            "target": "lower", "pass": bool(hj_t < o)})  # fmt: skip
        ood = {s: mean("hybrid_joint", f"{s}_tawss_err") for s in results["eval_sets"][1:]}
        out.append({"name": "OOD TAWSS reported (hybrid_joint)",
                    "value": ", ".join(f"{s} {100 * v:.1f} %" for s, v in ood.items()
                                       if v is not None) or "none",
                    "target": "reported",
                    "pass": bool(ood) and None not in ood.values()})  # fmt: skip
    if cfg.preset == "quick":
        wall = results.get("wall_seconds", math.nan)
        out.append({"name": "quick preset under 10 minutes (this run, incl. cached parts)",
                    "value": f"{wall / 60:.1f} min", "target": "< 10 min",
                    "pass": bool(wall < 600)})  # fmt: skip
    return out


# -- arrays and figures -------------------------------------------------------------------
def report_arrays(study, runs, truth, cases, check_arrays) -> dict[str, np.ndarray]:
    """``arrays.npz``: per set the truth's and each method's speed (seed 0) as
    ``(phase, y, x)`` with NaN outside the fluid (the report's snapshot figures), the
    TAWSS along the sac wall (truth, coarse at the true θ_s, every method, seed 0)
    and the arc length."""
    cfg = study.cfg
    out: dict[str, np.ndarray] = {}
    for case in cases:
        s = case.name
        lat = study.lattice(case)
        valid = truth[s]["valid"]
        sp = np.sqrt(np.sum(truth[s]["vel"] ** 2, axis=1))
        out[f"truth_{s}"] = np.where(valid[None], sp, np.nan).transpose(0, 2, 1)
        out[f"arc_{s}"] = np.asarray(lat.sac_wall(cfg.wall_points).arclength)
        out[f"tawss_truth_{s}"] = np.asarray(tawss_osi(truth[s]["wss"])[0], float)
        if f"tawss_{s}" in check_arrays:
            out[f"tawss_coarse_true_theta_{s}"] = check_arrays[f"tawss_{s}"]
        for method, per_seed in runs.items():
            arr = per_seed[0][1]
            if f"speed_{s}" in arr:
                sp = np.asarray(arr[f"speed_{s}"], float)
                sp = np.where(valid[None], sp, np.nan)
                out[f"pred_{s}__{method}"] = sp.transpose(0, 2, 1)
            if f"tawss_{s}" in arr:
                out[f"tawss_{s}__{method}"] = np.asarray(arr[f"tawss_{s}"], float)
    return out


def draw(study, out: Path, results: dict, arrays: dict, cases) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    entries = []
    from matplotlib.colors import PowerNorm

    cfg = study.cfg
    lat = study.lattice(cases[0])
    truth = arrays["truth_id"]
    inflow = np.nanmean(truth[:, :, :3], axis=(1, 2))
    k = int(np.nanargmax(inflow))
    i0 = max(int((cfg.length / 2 - 1.8 * cfg.sac_radius) / lat.dx), 0)
    i1 = min(int((cfg.length / 2 + 1.8 * cfg.sac_radius) / lat.dx) + 1, truth.shape[2])
    crop = (slice(None), slice(i0, i1))
    panels = [("truth (fine lattice, averaged to coarse cells)", truth[k][crop])]
    for m in ("hybrid_joint", "pure_physics_calibrated", "pure_physics"):
        if f"pred_id__{m}" in arrays:
            panels.append((m, arrays[f"pred_id__{m}"][k][crop]))
    ref = panels[0][1]
    vmax = float(np.nanmax(ref))
    fig, axes = plt.subplots(2, len(panels), figsize=(3.4 * len(panels) + 1.2, 5.6),
                             squeeze=False, layout="constrained")  # fmt: skip
    errs = [np.abs(p - ref) for _, p in panels[1:]]
    emax = max([float(np.nanpercentile(e, 99.5)) for e in errs] or [1.0])
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    enorm = PowerNorm(0.5, vmin=0.0, vmax=emax)
    ext = (i0 * lat.dx * 1e3, i1 * lat.dx * 1e3, 0, ref.shape[0] * lat.dx * 1e3)
    ie = None
    for j, (title, f) in enumerate(panels):
        im = axes[0][j].imshow(f, origin="lower", cmap="viridis", norm=norm, extent=ext)
        axes[0][j].set_title(title, fontsize=8)
        if j:
            ie = axes[1][j].imshow(errs[j - 1], origin="lower", cmap="magma", norm=enorm,
                                   extent=ext)  # fmt: skip
            rms = np.sqrt(np.nanmean(errs[j - 1] ** 2))
            axes[1][j].set_title(f"|error|, RMS {1e3 * rms:.2f} mm/s", fontsize=8)
        else:
            axes[1][j].set_axis_off()
    for ax in axes.flat:
        ax.set_xlabel("x (mm)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="|u| (m/s), √ scale")
    if ie is not None:
        fig.colorbar(ie, ax=list(axes[1]), shrink=0.8, label="|error| (m/s), √ scale")
    fig.suptitle(f"Velocity magnitude at peak inflow (phase {k + 1}/{truth.shape[0]}), "
                 f"seed {results['seeds'][0]}", fontsize=10)  # fmt: skip
    entries.append({"file": save_figure(fig, figs / "aneurysm_velocity.png", dpi=110),
                    "title": "Velocity magnitude: truth, hybrid, calibrated and Newtonian",
                    "caption": "Speed at the phase of peak inflow on the coarse cells; "
                               "bottom: absolute error against the truth."})  # fmt: skip
    fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, case in zip(axes[0], cases, strict=True):
        s = case.name
        arc = arrays[f"arc_{s}"] * 1e3
        ax.plot(arc, arrays[f"tawss_truth_{s}"], "k-", lw=2.2, label="truth (fine)")
        if f"tawss_coarse_true_theta_{s}" in arrays:
            ax.plot(arc, arrays[f"tawss_coarse_true_theta_{s}"], "k:", lw=1.2,
                    label="coarse, true θ_s")  # fmt: skip
        for i, m in enumerate(METHODS):
            key = f"tawss_{s}__{m}"
            if key in arrays:
                ax.plot(arc, arrays[key], "-", color=colours(i), lw=1.2, label=m)
        ax.set_yscale("log")
        ax.set_xlabel("arc length along the sac wall from the proximal neck (mm)")
        ax.set_title(f"{s}: {case.label}", fontsize=9)
    axes[0][0].set_ylabel("TAWSS (Pa)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    entries.append({"file": save_figure(fig, figs / "aneurysm_wss.png", dpi=110),
                    "title": "Time-averaged WSS along the sac wall",
                    "caption": "TAWSS of the last cycle along the sac wall (seed 0): the "
                               "fine-lattice truth, the coarse lattice at the true θ_s "
                               "(what no calibration can beat without a closure) and each "
                               "method, per evaluation set."})  # fmt: skip
    shown = [c for c in cases if f"uq__hybrid_joint__tawss_{c.name}" in arrays]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.0),
                                 squeeze=False, layout="constrained")  # fmt: skip
        for ax, case in zip(axes[0], shown, strict=True):
            arc, true, mean, lo, hi, glo, ghi = arrays[f"uq__hybrid_joint__tawss_{case.name}"]
            ax.fill_between(arc * 1e3, glo, ghi, color="tab:blue", alpha=0.2, lw=0,
                            label="90 % (mean ± 1.645 √(1+1/M) s)")  # fmt: skip
            ax.fill_between(arc * 1e3, lo, hi, color="tab:blue", alpha=0.4, lw=0,
                            label="members' range")  # fmt: skip
            ax.plot(arc * 1e3, mean, color="tab:blue", lw=1.2, label="ensemble mean")
            ax.plot(arc * 1e3, true, "k-", lw=1.8, label="truth (fine)")
            ax.set_yscale("log")
            ax.set_xlabel("arc length along the sac wall (mm)")
            ax.set_title(f"{case.name}: {case.label}", fontsize=9)
        axes[0][0].set_ylabel("TAWSS (Pa), smoothed")
        axes[0][0].legend(fontsize=7)
        entries.append({"file": save_figure(fig, figs / "aneurysm_uq_tawss.png", dpi=110),
                        "title": "Sac TAWSS: the hybrid_joint ensemble's intervals",
                        "caption": "TAWSS along the sac wall (smoothed over one coarse cell "
                                   "of arc, neck corners left out): the fine-lattice truth, "
                                   "the ensemble mean, the members' range and the Gaussian "
                                   "90 % interval, per set (members only: no WSS error term "
                                   "is calibrated)."})  # fmt: skip
    return entries


def _plateau(losses) -> bool:
    if len(losses) < 4:
        return False
    q = max(len(losses) // 4, 2)
    a, b = np.mean(losses[-2 * q : -q]), np.mean(losses[-q:])
    return bool(abs(a - b) <= 0.02 * abs(a))


def _pct(stat) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "—"
    std = stat.get("std") or 0.0
    return (
        f"{100 * stat['mean']:.1f} ± {100 * std:.1f}"
        if len(stat.get("per_seed", [])) > 1
        else f"{100 * stat['mean']:.1f}"
    )
