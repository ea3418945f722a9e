"""Tests for scilayers.report: report.md contents (numbers, best-in-bold, θ_s, ablations,
targets), valid PNG figures, graceful skipping of absent arrays, and input errors."""

from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest

from scilayers.report import build_report
from scilayers.report._format import fmt_number, fmt_stat
from scilayers.report._load import Stat

METHODS = ("pure_physics", "neural_emulator", "hybrid_joint")
FIGURES = (
    "spacetime_id.png",
    "spacetime_ood.png",
    "error_growth.png",
    "theta_trajectories.png",
    "ablations.png",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stat(mean, std, n=3):
    return {"mean": mean, "std": std, "per_seed": [mean] * n}


def _results() -> dict:
    """Three methods with hand-picked numbers: hybrid_joint is best on ID MSE and on
    correlation time (higher is better), pure_physics has the lowest physics residual."""
    horizon = {"steps": [4, 10, 20, 40], "mean": [1e-4, 1e-3, 1e-2, 1e-1], "std": [1e-5] * 4}

    def method(id_mse, ood_mse, corr, residual, theta=None, label=None):
        out = {
            "id_mse": _stat(*id_mse),
            "ood_mse": _stat(*ood_mse),
            "id_nmse": _stat(id_mse[0] * 2, id_mse[1]),
            "ood_nmse": None,
            "id_corr_time": _stat(*corr),
            "ood_corr_time": _stat(corr[0] / 2, corr[1]),
            "physics_residual": residual if residual is None else _stat(*residual),
            "train_seconds": _stat(12.0, 1.0),
            "theta": theta or {},
            "horizon_mse": {"id": horizon, "ood": horizon},
        }
        if label:
            out["label"] = label
        return out

    theta = {
        "a": {
            "true": 1.0,
            "initial": 0.8,
            "learned": [1.01, 0.99, 1.0],
            "rel_error": {"mean": 0.02, "std": 0.01, "per_seed": [0.01, 0.03, 0.02]},
        },
        "b": {
            "true": 2.0,
            "initial": 2.5,
            "learned": [2.1, 2.0, 1.9],
            "rel_error": {"mean": 0.04, "std": 0.02, "per_seed": [0.05, 0.0, 0.07]},
        },
    }
    results = {
        "experiment": "ks",
        "preset": "quick",
        "seeds": [0, 1, 2],
        "config": {"truth": {"length": 22.0, "n": 128}, "prior": {"a": 0.8}, "horizon": 40},
        "environment": {"scilayers": "0.1.0", "jax": "0.4.35", "devices": ["cpu"]},
        "main_horizon_steps": 40,
        "dt": 0.25,
        "methods": {
            "pure_physics": method((0.5, 0.05), (0.9, 0.1), (2.5, 0.1), (3e-5, 1e-6)),
            "neural_emulator": method((2e-3, 1e-4), (0.7, 0.2), (6.0, 0.4), None),
            "hybrid_joint": method(
                (1.234e-4, 5.6e-6),
                (4e-3, 1e-3),
                (7.25, 0.5),
                (2e-4, 1e-5),
                theta,
                label="Hybrid, joint θ_s",
            ),
        },
        "ablations": {
            "strategy": {
                "fixed": {"id_mse": _stat(3e-3, 1e-4), "ood_mse": _stat(0.03, 0.01)},
                "joint": {"id_mse": _stat(1e-3, 1e-4), "ood_mse": _stat(0.01, 0.002)},
            }
        },
        "targets": [
            {"name": "theta within 5 %", "value": "max 3.1 %", "target": "<= 5 %", "pass": True},
            {"name": "OOD gain over emulator", "value": "1.2x", "target": ">= 2x", "pass": False},
        ],
        "uq": {"picp_90": 0.87},
        "reference": {"physics_residual_truth": 1.5e-6},
        "notes": ["A note the experiment wants in the report."],
    }
    # an all-NaN metric (summary of NaN seeds) and a horizon curve with no finite value
    emulator = results["methods"]["neural_emulator"]
    emulator["train_seconds"] = {"mean": None, "std": None, "per_seed": [None, None, None]}
    emulator["horizon_mse"]["ood"] = {"steps": [4, 10, 20, 40], "mean": [], "std": []}
    return results


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n_t, n_x = 41, 32
    x = np.linspace(0.0, 22.0, n_x, endpoint=False)
    t = np.arange(n_t)[:, None] * 0.25
    truth = np.sin(2 * np.pi * x[None, :] / 22.0 + 0.1 * t)
    arrays = {"dt": np.array(0.25), "x_id": x, "x_ood": x, "theta_true__a": np.array(1.0)}
    for split, amp in (("id", 1.0), ("ood", 1.5)):
        arrays[f"spacetime_truth_{split}"] = amp * truth
        for k, name in enumerate(METHODS):
            noise = rng.standard_normal((n_t, n_x)) * 0.3 / (k + 1)
            arrays[f"spacetime_{name}_{split}"] = amp * truth + noise
    for param, true, start in (("a", 1.0, 0.8), ("b", 2.0, 2.5)):
        history = np.full((3, 60), np.nan)
        for seed in range(3):
            steps = 60 - 10 * seed  # early stopping: NaN padding at the end
            history[seed, :steps] = true + (start - true) * np.exp(-np.arange(steps) / 10)
        arrays[f"theta__hybrid_joint__{param}"] = history
    return arrays


def _write_run(directory, results=None, arrays=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results or _results()), encoding="utf-8")
    if arrays is not False:
        np.savez(directory / "arrays.npz", **(arrays or _arrays()))
    return directory


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A full run folder and its report, built once for the module."""
    run = _write_run(tmp_path_factory.mktemp("run"))
    path = build_report(run)
    return run, path.read_text(encoding="utf-8")


def _row(report: str, name: str) -> list[str]:
    """The cells of the first table row whose first cell mentions ``name``."""
    for line in report.splitlines():
        if line.startswith("| ") and f"`{name}`" in line.split(" | ")[0]:
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError(f"no table row for {name}")


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (1.0, "1.00"),
        (0.8, "0.800"),
        (12.345, "12.3"),
        (0.0123, "0.0123"),
        (1.234e-4, "1.23e-4"),
        (-5.6e-6, "-5.60e-6"),
        (1234.5, "1230"),
        (2.5e7, "2.50e7"),
        (math.nan, "—"),
        (None, "—"),
        (math.inf, "∞"),
    ],
)
def test_fmt_number_three_significant_digits(value, text):
    assert fmt_number(value) == text


def test_fmt_stat_mean_pm_std_and_missing():
    assert fmt_stat(Stat(1.234e-4, 5.6e-6)) == "1.23e-4 ± 5.60e-6"
    assert fmt_stat(Stat(0.2, math.nan)) == "0.200"  # std unknown: the mean alone
    assert fmt_stat(Stat(0.8, 1e-17)) == "0.800 ± 0"  # rounding noise is no spread
    assert fmt_stat(Stat(math.nan, math.nan)) == "—"
    assert fmt_stat(Stat(0.02, 0.01), scale=100.0) == "2.00 ± 1.00"
    assert fmt_stat(Stat(0.3, 0.0, (0.3,))) == "0.300"  # one seed: no spread to show


# --- report.md --------------------------------------------------------------------------


def test_report_names_every_method_and_known_numbers(built):
    run, report = built
    assert report.startswith("# ks: results (preset `quick`)")
    for name in METHODS:
        assert f"`{name}`" in report
    assert "Hybrid, joint θ_s (`hybrid_joint`)" in report  # the label is used with the name
    assert "1.23e-4 ± 5.60e-6" in report  # hybrid_joint ID MSE
    assert "3 seeds (0, 1, 2)" in report
    assert "40 steps (t = 10.0)" in report
    assert "- **truth**: length=22, n=128" in report


def test_best_value_per_column_is_bold(built):
    _, report = built
    header = _row_header(report)
    joint, physics, emulator = (
        _row(report, m) for m in ("hybrid_joint", "pure_physics", "neural_emulator")
    )
    id_mse, corr, residual = (
        header.index(h) for h in ("ID MSE", "ID corr. time", "Physics residual")
    )
    # lower is better for MSE: hybrid_joint's 1.234e-4 beats 2e-3 and 0.5
    assert joint[id_mse] == "**1.23e-4 ± 5.60e-6**"
    assert physics[id_mse] == "0.500 ± 0.0500"
    assert emulator[id_mse] == "2.00e-3 ± 1.00e-4"
    # higher is better for correlation time: 7.25 beats 6.0 and 2.5
    assert joint[corr] == "**7.25 ± 0.500**"
    assert emulator[corr] == "6.00 ± 0.400"
    # null metric renders as a dash and never wins; the lowest residual is pure physics
    assert emulator[residual] == "—"
    assert emulator[header.index("Train s")] == "—"
    assert physics[residual] == "**3.00e-5 ± 1.00e-6**"
    assert joint[residual] == "2.00e-4 ± 1.00e-5"
    # a column no method has (ood_nmse is null everywhere) is left out
    assert "OOD nMSE" not in header


def _row_header(report: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith("| Method | ID MSE"):
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError("no main table")


def test_theta_table_and_mean_relative_error(built):
    _, report = built
    assert "| Hybrid, joint θ_s (`hybrid_joint`) | `a` | 1.00 | 0.800 | 1.00 ± 8.16e-3 |" in report
    assert "| `b` | 2.00 | 2.50 | 2.00 ± 0.0816 | 4.00 ± 2.00 |" in report
    # main table: per-seed mean over a and b = [3, 1.5, 4.5] % → 3.00 ± 1.22
    header = _row_header(report)
    joint = _row(report, "hybrid_joint")
    assert joint[header.index("θ_s rel. error (%)")] == "3.00 ± 1.22"
    assert _row(report, "pure_physics")[header.index("θ_s rel. error (%)")] == "—"


def test_ablation_table_targets_notes_environment(built):
    _, report = built
    assert "### strategy" in report
    assert "| joint | **1.00e-3 ± 1.00e-4** | **0.0100 ± 2.00e-3** |" in report
    assert "| fixed | 3.00e-3 ± 1.00e-4 | 0.0300 ± 0.0100 |" in report
    assert "- ✅ theta within 5 %: max 3.1 % (target <= 5 %)" in report
    assert "- ❌ OOD gain over emulator: 1.2x (target >= 2x)" in report
    assert "1 of 2 targets met." in report
    assert "- A note the experiment wants in the report." in report
    assert "- **jax**: 0.4.35" in report
    assert "| `picp_90` | 0.870 |" in report
    assert "| `reference.physics_residual_truth` | 1.50e-6 |" in report  # unknown keys kept
    assert "Figure skipped" not in report


def test_every_figure_is_a_valid_nontrivial_png_and_embedded(built):
    run, report = built
    for name in FIGURES:
        path = run / "figures" / name
        assert path.is_file(), name
        assert path.stat().st_size > 5_000, name
        width, height = _png_size(path)
        assert width > 300 and height > 200, (name, width, height)
        assert f"](figures/{name})" in report


# --- absent inputs ----------------------------------------------------------------------


def test_missing_arrays_skips_array_figures_with_a_note(built, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(built[0], run)  # figures of an earlier build are present
    (run / "arrays.npz").unlink()
    report = build_report(run).read_text(encoding="utf-8")
    for name in ("spacetime_id.png", "spacetime_ood.png", "theta_trajectories.png"):
        assert f"](figures/{name})" not in report
        assert f"**Figure skipped** (`figures/{name}`" in report
        assert not (run / "figures" / name).exists()  # the stale figure is removed
    assert "there is no `arrays.npz`" in report
    # the figures drawn from results.json alone are still there
    for name in ("error_growth.png", "ablations.png"):
        assert f"](figures/{name})" in report
        assert (run / "figures" / name).stat().st_size > 5_000


def test_one_absent_array_skips_only_its_figure(tmp_path):
    results = _results()
    results["methods"] = {"hybrid_joint": results["methods"]["hybrid_joint"]}
    results["ablations"] = {}
    arrays = {k: v for k, v in _arrays().items() if "ood" not in k}
    run = _write_run(tmp_path / "run", results=results, arrays=arrays)
    report = build_report(run).read_text(encoding="utf-8")
    assert "`arrays.npz` has no `spacetime_truth_ood`" in report
    assert not (run / "figures" / "spacetime_ood.png").exists()
    assert (run / "figures" / "spacetime_id.png").stat().st_size > 5_000


def test_missing_results_json_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"results\.json.*scilayers run"):
        build_report(tmp_path)


def test_malformed_json_is_a_value_error(tmp_path):
    (tmp_path / "results.json").write_text('{"experiment": "ks",', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_report(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda r: r.pop("methods"), "'methods'"),
        (lambda r: r.pop("experiment"), "'experiment'"),
        (lambda r: r["methods"]["pinn"].__setitem__("id_mse", {"mean": 1.0}), "'std'"),
        (lambda r: r["targets"][0].pop("pass"), "'pass'"),
    ],
)
def test_missing_key_is_a_value_error_naming_it(tmp_path, mutate, key):
    results = _results()
    results["methods"]["pinn"] = {"id_mse": _stat(1.0, 0.1)}
    mutate(results)
    _write_run(tmp_path, results=results, arrays=False)
    with pytest.raises(ValueError, match=key):
        build_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


# --- the study protocol: eval sets, reference rows, truth, convergence, ... -----------------

SETS = ("id", "ood_f16", "ood_f24")
DE_SIZES = (1, 4, 16, 64, 96)


def _protocol_results() -> dict:
    """A results.json of the generic engine with hand-picked numbers.

    MSE per set (persistence and climatology are reference forecasts):

    ================  ======  =======  =======
    method            id      ood_f16  ood_f24
    ================  ======  =======  =======
    pure_physics      0.5     0.9      1.2
    neural_emulator   2e-3    0.7      3.0      ← worse than persistence at ood_f24
    hybrid_joint      1e-4    0.02     0.3      ← best method everywhere
    persistence       0.8     0.5      2.0
    climatology       1.0     0.01     2.5      ← lowest of all at ood_f16, still not bold
    ================  ======  =======  =======
    """
    mse = {
        "pure_physics": (0.5, 0.9, 1.2),
        "neural_emulator": (2e-3, 0.7, 3.0),
        "hybrid_joint": (1e-4, 0.02, 0.3),
        "persistence": (0.8, 0.5, 2.0),
        "climatology": (1.0, 0.01, 2.5),
    }
    horizon = {"steps": [1, 5, 10], "mean": [1e-3, 1e-2, 1e-1], "std": [1e-4] * 3}
    methods: dict = {}
    for name, values in mse.items():
        entry: dict = {f"{s}_mse": _stat(v, v / 10) for s, v in zip(SETS, values, strict=True)}
        entry |= {f"{s}_nmse": _stat(2 * v, v / 5) for s, v in zip(SETS, values, strict=True)}
        entry |= {
            f"{s}_corr_time": _stat(5.0 / (1 + v), 0.1) for s, v in zip(SETS, values, strict=True)
        }
        entry |= {
            f"{s}_corr_time_lyap": _stat(0.1 / (1 + v), 0.01)
            for s, v in zip(SETS, values, strict=True)
        }
        entry["ood_f24_diverged"] = _stat(0.0, 0.0)
        entry["horizon_mse"] = {s: horizon for s in SETS}
        methods[name] = entry
    for name in ("persistence", "climatology"):
        methods[name]["reference"] = True
    methods["pure_physics"]["physics_residual"] = _stat(1e-5, 1e-6)
    methods["pure_physics"]["physics_residual_ood_f16"] = _stat(2e-5, 1e-6)
    methods["neural_emulator"]["ood_f24_diverged"] = _stat(1 / 3, 0.47)
    joint = methods["hybrid_joint"]
    joint["theta"] = {
        "a": {"true": 1.0, "initial": 0.8, "learned": [1.01, 0.99, 1.0], "rel_error": 0.01}
    }
    joint["theta_history"] = {  # seeds stopped early at different steps
        "a": [list(1.0 - 0.2 * np.exp(-np.arange(n) / 8.0)) for n in (60, 45, 30)]
    }
    joint["convergence"] = {
        "criterion": "relative loss change < 1e-4 over 100 steps",
        "final_loss": _stat(3.2e-4, 1e-5),
        "converged": [True, True, False],
        "steps": _stat(1200.0, 150.0),
    }
    methods["pure_physics"]["convergence"] = {
        "criterion": "relative loss change < 1e-4 over 100 steps",
        "final_loss": _stat(0.45, 0.01),
        "converged": [True, True, True],
        "steps": _stat(300.0, 20.0),
    }
    params = ["a", "b", "c"]
    correlation = [[1.0, 0.1, -0.2], [0.1, 1.0, 0.97], [-0.2, 0.97, 1.0]]
    de_id = {  # hybrid wins 4–64, the emulator (diverged at 1) overtakes at 96
        "pure_physics": [0.5] * 5,
        "hybrid_joint": [0.9, 0.05, 0.01, 5e-4, 4e-4],
        "neural_emulator": [None, 2.0, 0.3, 2e-3, 2e-4],
    }
    de_ood = {"pure_physics": [0.9] * 5, "hybrid_joint": [1.0, 0.5, 0.1, 0.05, 0.04],
              "neural_emulator": [None, 3.0, 2.0, 1.5, 1.0]}  # fmt: skip

    def series(values):
        return [
            {"mean": v, "std": None if v is None else v / 10, "per_seed": [v, v, v]} for v in values
        ]

    results = {
        "experiment": "burgers",
        "preset": "quick",
        "seeds": [0, 1, 2],
        "eval_sets": list(SETS),
        "field_kind": "1d",
        "main_horizon_steps": 10,
        "dt": 0.1,
        "methods": methods,
        "truth": {
            "lyapunov_exponent": {"id": 0.05, "ood_f16": 0.08, "ood_f24": 0.1},
            "lyapunov_time": {"id": 20.0},
            "checks": {
                "dominant Fourier amplitude coefficient of variation": 0.034,
                "spectrum": "inertial range present",
            },
        },
        "identifiability": {
            "params": params,
            "fisher": [[4e4, 1.0, 0.0], [1.0, 0.5, 0.4], [0.0, 0.4, 0.125]],
            "eigenvalues": [0.125, 0.5, 4e4],
            "condition_number": 3.2e5,
            "relative_std": {"a": 0.01, "b": 0.4, "c": 0.5},
            "correlation": correlation,
            "poorly_identified": ["b", "c"],
        },
        "data_efficiency": {
            "sizes": list(DE_SIZES),
            "sets": ["id", "ood_f16"],
            "methods": {
                m: {"id_mse": series(de_id[m]), "ood_f16_mse": series(de_ood[m])} for m in de_id
            },
            "threshold": {"set": "id", "mse": 1e-3},
            "needed": {"pure_physics": None, "hybrid_joint": 64, "neural_emulator": 96},
            "winner": {
                "id": {
                    "1": "pure_physics",
                    "4": "hybrid_joint",
                    "16": "hybrid_joint",
                    "64": "hybrid_joint",
                    "96": "neural_emulator",
                },
                "ood_f16": {str(n): "hybrid_joint" for n in DE_SIZES} | {"1": "pure_physics"},
            },  # fmt: skip
        },
        "ablations": {
            "strategy": {
                "fixed": {"id_mse": _stat(3e-3, 1e-4), "ood_f16_mse": _stat(0.05, 0.01)},
                "joint": {"id_mse": _stat(1e-3, 1e-4), "ood_f16_mse": _stat(0.02, 0.002)},
            }
        },
        "figures": [
            {
                "file": "figures/shock_position.png",
                "title": "Shock position",
                "caption": "Where the shock is, per method.",
            },
            {"file": "figures/never_drawn.png", "title": "Never drawn", "caption": "—"},
        ],  # fmt: skip
    }
    return results


def _fields(kind: str, sets=SETS, methods=("pure_physics", "hybrid_joint", "persistence")):
    """``truth_{set}`` and ``pred_{set}__{method}`` of the given field kind."""
    rng = np.random.default_rng(1)
    shape = {"1d": (21, 16), "2d": (12, 8, 10), "series": (30, 6)}[kind]
    t = np.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    base = np.sin(0.3 * t + np.linspace(0, 3, int(np.prod(shape[1:]))).reshape(shape[1:]))
    arrays = {"dt": np.array(0.1)}
    for s in sets:
        arrays[f"truth_{s}"] = base
        if kind == "1d":
            arrays[f"x_{s}"] = np.linspace(0, 2 * np.pi, shape[1], endpoint=False)
        for k, m in enumerate(methods):
            arrays[f"pred_{s}__{m}"] = base + 0.2 * (k + 1) * rng.standard_normal(shape)
    return arrays


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """A run of the generic engine (all new blocks), built once for the module."""
    run = _write_run(tmp_path_factory.mktemp("protocol"), _protocol_results(), _fields("1d"))
    (run / "figures").mkdir()
    (run / "figures" / "shock_position.png").write_bytes(PNG_SIGNATURE + b"study figure")
    report = build_report(run).read_text(encoding="utf-8")
    return run, report


def _main_header(report: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith("| Method | ID MSE"):
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError("no main table")


def _main_rows(report: str) -> list[list[str]]:
    """The rows of the main table (first table after '## Main results')."""
    lines = report.split("## Main results", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Method"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def test_main_columns_follow_eval_sets_in_the_protocol_order(protocol):
    header = _main_header(protocol[1])
    order = [
        "ID MSE", "OOD f16 MSE", "OOD f24 MSE", "ID nMSE", "OOD f24 nMSE", "ID corr. time",
        "ID corr. time (Lyap.)", "OOD f24 corr. time (Lyap.)", "Physics residual",
        "Physics residual (OOD f16)", "θ_s rel. error (%)",
    ]  # fmt: skip
    positions = [header.index(h) for h in order]
    assert positions == sorted(positions)
    assert "OOD MSE" not in header  # only the sets the run names
    assert "Train s" not in header  # no method recorded it
    # a metric outside the main set goes to the other table, not lost
    assert "ood_f24_diverged" in protocol[1].split("### Other metrics", 1)[1]


def test_reference_rows_sit_below_a_divider_and_are_never_bold(protocol):
    _, report = protocol
    header = _main_header(report)
    rows = _main_rows(report)
    names = [r[0] for r in rows]
    divider = names.index("*reference forecasts*")
    assert names[divider + 1 :] == ["*`persistence`*", "*`climatology`*"]
    assert all(c == "" for c in rows[divider][1:])  # a divider, not a row of numbers
    for row in rows[divider + 1 :]:
        assert not any("**" in cell for cell in row[1:]), row
    # climatology has the lowest OOD f16 MSE of all rows, yet the method hybrid_joint is bold
    f16 = header.index("OOD f16 MSE")
    climatology = rows[names.index("*`climatology`*")]
    assert climatology[f16] == "0.0100 ± 1.00e-3"
    joint = _row(report, "hybrid_joint")
    assert joint[f16] == "**0.0200 ± 2.00e-3** †"
    assert "worse than doing nothing" in report


def test_dagger_marks_exactly_the_methods_worse_than_the_best_reference(protocol):
    _, report = protocol
    header = _main_header(report)
    heads = ("ID", "OOD f16", "OOD f24")
    idx = {s: header.index(f"{h} MSE") for s, h in zip(SETS, heads, strict=True)}
    expected = {  # (method, set): worse than the best reference at that set?
        ("pure_physics", "id"): False,  # 0.5 < persistence 0.8
        ("neural_emulator", "id"): False,
        ("hybrid_joint", "id"): False,
        ("pure_physics", "ood_f16"): True,  # every method loses to climatology's 0.01
        ("neural_emulator", "ood_f16"): True,
        ("hybrid_joint", "ood_f16"): True,
        ("pure_physics", "ood_f24"): False,  # 1.2 < persistence 2.0
        ("neural_emulator", "ood_f24"): True,  # 3.0 > 2.0
        ("hybrid_joint", "ood_f24"): False,
    }
    for (method, split), worse in expected.items():
        assert _row(report, method)[idx[split]].endswith("†") is worse, (method, split)
    for ref in ("persistence", "climatology"):
        assert not any("†" in c for c in _row(report, ref))
    # the nMSE columns carry no mark: † is about MSE only
    assert "†" not in _row(report, "neural_emulator")[header.index("OOD f24 nMSE")]
    assert "On OOD f24, `neural_emulator` is worse than the best reference forecast." in report
    assert "(and 2 reference forecasts)" in report


def test_truth_section_near_the_top_with_lyapunov_times_and_checks(protocol):
    _, report = protocol
    assert report.index("## Truth") < report.index("## Main results")
    assert "| `id` (ID) | 0.0500 | 20.0 |" in report
    assert "| `ood_f16` (OOD f16) | 0.0800 | 12.5 |" in report  # 1/λ₁ when not given
    assert "| `ood_f24` (OOD f24) | 0.100 | 10.0 |" in report
    assert "- dominant Fourier amplitude coefficient of variation: 0.0340" in report
    assert "- spectrum: inertial range present" in report


def test_convergence_table_counts_converged_seeds(protocol):
    _, report = protocol
    section = report.split("## Training convergence", 1)[1].split("\n## ", 1)[0]
    assert _row(section, "hybrid_joint")[3] == "2/3"
    assert _row(section, "pure_physics")[3] == "3/3"
    assert _row(section, "hybrid_joint")[2] == "**3.20e-4 ± 1.00e-5**"  # lowest final loss
    assert "relative loss change < 1e-4 over 100 steps" in _row(section, "hybrid_joint")[1]
    assert "Not converged in every seed: `hybrid_joint` (2/3)" in section
    with pytest.raises(AssertionError):
        _row(section, "neural_emulator")  # no convergence recorded: no row


def test_identifiability_section(protocol):
    _, report = protocol
    section = report.split("## Identifiability of θ_s", 1)[1].split("\n## ", 1)[0]
    assert "Condition number of the Fisher information matrix: **3.20e5**" in section
    assert "Poorly identified: `b` and `c`." in section
    assert "| `a` | 0.0100 | yes |" in section
    assert "| `b` | 0.400 | **no** (poorly identified) |" in section
    assert "| `b` | 0.100 | 1.00 | **0.970** |" in section  # strong correlation in bold
    assert "| `a` | 1.00 | 0.100 | -0.200 |" in section  # the diagonal is never bold


def test_data_efficiency_table_winners_and_needed(protocol):
    run, report = protocol
    section = report.split("## Data efficiency", 1)[1].split("\n## ", 1)[0]
    table = section.split("### ID MSE", 1)[1]
    assert "| Method | 1 | 4 | 16 | 64 | 96 | needed for MSE ≤ 1.00e-3 |" in table
    emulator = _row(table, "neural_emulator")
    assert emulator[1] == "diverged" and emulator[-1] == "96"
    assert _row(table, "pure_physics")[-1] == "not within 96"
    assert _row(table, "hybrid_joint")[2] == "**0.0500 ± 5.00e-3**"
    assert (
        "**ID**: `pure_physics` is best with 1 trajectory; `hybrid_joint` with 4, 16 and 64 "
        "trajectories; `neural_emulator` with 96 trajectories." in section
    )
    assert (
        "**OOD f16**: `pure_physics` is best with 1 trajectory; `hybrid_joint` with 4, 16"
        in section
    )
    assert "`pure_physics` needs more than 96 trajectories" in section
    assert "`hybrid_joint` needs 64 trajectories" in section
    assert "](figures/data_efficiency.png)" in section
    assert (run / "figures" / "data_efficiency.png").stat().st_size > 5_000


def test_data_efficiency_winner_and_needed_are_worked_out_when_not_recorded():
    from scilayers.report._load import parse_results

    raw = _protocol_results()
    given = parse_results(raw).data_efficiency
    del raw["data_efficiency"]["winner"], raw["data_efficiency"]["needed"]
    computed = parse_results(raw).data_efficiency
    assert computed.winner == given.winner
    assert computed.winner["id"] == (
        "pure_physics", "hybrid_joint", "hybrid_joint", "hybrid_joint", "neural_emulator"
    )  # fmt: skip
    assert computed.needed == given.needed


def test_study_figures_embedded_and_a_missing_one_noted(protocol):
    run, report = protocol
    section = report.split("## Study figures", 1)[1].split("\n## ", 1)[0]
    assert "![Shock position](figures/shock_position.png)" in section
    assert "*Where the shock is, per method.*" in section
    assert (
        "> **Figure skipped** (`figures/never_drawn.png`, Never drawn): the file does not "
        "exist." in section
    )
    assert (run / "figures" / "shock_position.png").is_file()  # never removed by the build


def test_protocol_figures_are_drawn_and_embedded(protocol):
    run, report = protocol
    names = [f"spacetime_{s}.png" for s in SETS]
    names += ["error_growth.png", "theta_trajectories.png", "ablations.png"]
    for name in names:
        path = run / "figures" / name
        assert path.stat().st_size > 5_000, name
        width, height = _png_size(path)
        assert width > 300 and height > 200, (name, width, height)
        assert f"](figures/{name})" in report
    # θ_s histories came from results.json: arrays.npz has no theta__ key
    with np.load(run / "arrays.npz") as npz:
        assert not any(k.startswith("theta__") for k in npz.files)
    assert report.count("Figure skipped") == 1  # only the study figure never drawn
    # ablation table columns follow the eval sets too
    assert "| joint | **1.00e-3 ± 1.00e-4** | **0.0200 ± 2.00e-3** |" in report


def test_theta_history_without_arrays_still_draws(tmp_path):
    results = _protocol_results()
    results.pop("data_efficiency")
    run = _write_run(tmp_path / "run", results, arrays=False)
    report = build_report(run).read_text(encoding="utf-8")
    assert "](figures/theta_trajectories.png)" in report
    assert "**Figure skipped** (`figures/spacetime_id.png`" in report
    assert "## Data efficiency" not in report


@pytest.mark.parametrize(("kind", "stem"), [("2d", "snapshots"), ("series", "series")])
def test_field_figures_of_2d_and_series_runs(tmp_path, kind, stem):
    results = _protocol_results()
    results |= {"field_kind": kind, "eval_sets": ["id", "ood"]}
    for key in ("ablations", "data_efficiency", "identifiability", "figures"):
        results.pop(key)
    arrays = _fields(kind, sets=("id",))
    arrays["pred_id__neural_emulator"] = np.zeros((5, 3))  # wrong shape: left out, said so
    run = _write_run(tmp_path / "run", results, arrays)
    report = build_report(run).read_text(encoding="utf-8")
    path = run / "figures" / f"{stem}_id.png"
    assert f"](figures/{stem}_id.png)" in report
    width, height = _png_size(path)
    assert path.stat().st_size > 5_000 and width > 300 and height > 200
    assert "`pred_id__neural_emulator` has shape (5, 3)" in report
    assert f"**Figure skipped** (`figures/{stem}_ood.png`" in report
    assert "`arrays.npz` has no `truth_ood`" in report


def test_old_results_have_no_protocol_sections(built):
    _, report = built
    for heading in ("## Truth", "## Training convergence", "## Identifiability",
                    "## Data efficiency", "## Study figures"):  # fmt: skip
        assert heading not in report
    assert "reference forecasts" not in report and "†" not in report


# --- truncated or invalid input: one-line ValueError naming the file ---------------------


def _truncated(text: str) -> str:
    return text[: len(text) // 2]


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        (lambda p: p.write_text(_truncated(json.dumps(_results())), "utf-8"), "not valid JSON"),
        (lambda p: p.write_text("", "utf-8"), "is empty"),
        (lambda p: p.write_bytes(b'{"experiment": "\xff\xfe"}'), "not UTF-8"),
        (lambda p: p.write_text("[1, 2]", "utf-8"), "top level should be an object"),
        (lambda p: _dump(p, eval_sets="id"), "eval_sets should be a list of strings"),
        (lambda p: _dump(p, field_kind="3d"), "field_kind should be one of"),
        (
            lambda p: _dump(p, identifiability={"params": ["a", "b"], "correlation": [[1.0]]}),
            "identifiability.correlation should be a 2 x 2 matrix",
        ),
        (
            lambda p: _dump(
                p,
                data_efficiency={"sizes": [1, 4], "methods": {"m": {"id_mse": [_stat(1.0, 0.1)]}}},
            ),
            "data_efficiency.methods.m.id_mse should be a list of 2",
        ),
        (
            lambda p: _dump(p, figures=[{"title": "no file"}]),
            "figures[0] is missing the key 'file'",
        ),
    ],  # fmt: skip
)
def test_invalid_results_json_is_a_one_line_value_error_naming_the_file(tmp_path, write, problem):
    write(tmp_path / "results.json")
    with pytest.raises(ValueError) as info:
        build_report(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "results.json") in message
    assert problem in message
    assert not (tmp_path / "report.md").exists()


def _dump(path, **changes):
    path.write_text(json.dumps(_results() | changes), encoding="utf-8")


def test_truncated_arrays_npz_is_a_one_line_value_error(tmp_path):
    run = _write_run(tmp_path / "run")
    data = (run / "arrays.npz").read_bytes()
    (run / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        build_report(run)
    assert "\n" not in str(info.value)
    assert str(run / "arrays.npz") in str(info.value)


def test_cli_report_of_a_truncated_results_json_exits_2_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from scilayers.cli import app

    (tmp_path / "results.json").write_text(_truncated(json.dumps(_results())), "utf-8")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "not valid JSON" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_theta_without_a_true_value_is_reported_as_effective(tmp_path):
    """An effective θ_s (no closed truth, e.g. a closure study) has no "true": the report
    shows a dash there and no relative error, instead of refusing the results."""
    results = _results()
    results["methods"]["hybrid_joint"]["theta"]["a"].pop("true")
    results["methods"]["hybrid_joint"]["theta"]["a"].pop("rel_error", None)
    _write_run(tmp_path, results=results, arrays=False)
    report = build_report(tmp_path).read_text()
    row = next(line for line in report.splitlines() if "`hybrid_joint`" in line and "`a`" in line)
    assert "| — |" in row
