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
        (lambda r: r["methods"]["hybrid_joint"]["theta"]["a"].pop("true"), "'true'"),
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
