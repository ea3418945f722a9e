"""The `scilayers` command line: help, the registry-generated run/data commands, the
report hand-off and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scilayers import cli
from scilayers.cli import app
from scilayers.data import load_ks

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["data", "--help"],
        ["data", "ks", "--help"],
        ["data", "burgers", "--help"],
        ["run", "--help"],
        ["run", "ks", "--help"],
        ["run", "burgers", "--help"],
        ["run", "all", "--help"],
        ["report", "--help"],
        ["bench", "--help"],
        ["list", "--help"],
    ],
)
def test_help_for_every_command(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bare_invocation_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "data" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("scilayers ")


def test_every_registered_study_has_run_data_and_list_entries():
    """The CLI is generated from the registry: no study is named in cli.py."""
    from scilayers.experiments import STUDIES

    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in STUDIES:
        assert name in result.output
        assert runner.invoke(app, ["run", name, "--help"]).exit_code == 0
        assert runner.invoke(app, ["data", name, "--help"]).exit_code == 0
    source = Path(cli.__file__).read_text()
    for name in STUDIES:
        assert f'"{name}"' not in source, f"cli.py names the {name} study"


def test_data_ks_writes_a_valid_file(tmp_path):
    out = tmp_path / "deep" / "ks.nc"
    args = ["data", "ks", "--trajectories", "4", "--seed", "5", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wall time" in result.output and "bytes" in result.output
    ds = load_ks(out)
    assert ds["u"].shape[0] == 4 and ds["u"].shape[2] == 128  # the quick preset's fine grid
    assert ds.attrs["seed"] == 5 and ds.attrs["length"] == 44.0 and ds.attrs["e"] == 0.02
    assert np.isfinite(ds["u"].values).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trajectories", "0"], "--trajectories must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_data_bad_values_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["data", "ks", "--out", str(tmp_path / "x.nc"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.count("\n") == 1  # one line
    assert not (tmp_path / "x.nc").exists()


def test_data_unwritable_out_exit_2(tmp_path):
    result = runner.invoke(app, ["data", "burgers", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["data", "burgers", "--out", str(blocker / "b.nc")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


def test_unknown_names_exit_2():
    assert runner.invoke(app, ["data", "nope"]).exit_code == 2
    assert runner.invoke(app, ["run", "nope"]).exit_code == 2
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2
    assert runner.invoke(app, ["data", "ks", "--bogus"]).exit_code == 2


def _fake_main(calls):
    def main(study, preset="quick", seeds=3, out=None, data_dir=None, resume=False,
             progress=True, uq=None, jobs=1):  # fmt: skip
        calls.append(dict(study=study, preset=preset, seeds=seeds, out=out, data_dir=data_dir,
                          resume=resume))  # fmt: skip
        if uq is not None:
            calls[-1]["uq"] = uq
        calls[-1]["_jobs"] = jobs
        return {"eval_sets": ["id"], "methods": {"m": {"id_mse": {"mean": 0.5}}},
                "targets": [{"name": "t", "pass": True}]}  # fmt: skip

    return main


def test_run_hands_over_to_the_engine(monkeypatch, tmp_path):
    import scilayers.experiments as ex

    calls = []
    monkeypatch.setattr(ex, "main", _fake_main(calls))
    monkeypatch.setenv("SCILAYERS_DATA_DIR", str(tmp_path))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["run", "ks", "--preset", "full", "--seeds", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    jobs = calls[0].pop("_jobs")
    assert calls == [dict(study="ks", preset="full", seeds=2, out=out,
                          data_dir=tmp_path.resolve(), resume=False)]  # fmt: skip
    from scilayers.experiments._parallel import auto_jobs

    assert jobs == auto_jobs() >= 1  # by default, the usable cores (CPU backend)
    assert "report.md" in result.output and "0.5" in result.output  # summary table + path
    monkeypatch.delenv("SCILAYERS_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "burgers", "--resume"])
    assert result.exit_code == 0, result.output
    assert calls[-1]["seeds"] == 3 and calls[-1]["resume"] is True
    assert str(calls[-1]["out"]) == "runs/burgers-quick" and calls[-1]["data_dir"] is None
    result = runner.invoke(app, ["run", "burgers", "--uq", "ensemble"])
    assert result.exit_code == 0, result.output
    assert calls[-1]["uq"] == "ensemble"
    result = runner.invoke(app, ["run", "burgers", "--uq", "posterior"])
    assert result.exit_code == 2 and "unknown --uq 'posterior'" in result.output
    result = runner.invoke(app, ["run", "burgers", "--jobs", "3"])
    assert result.exit_code == 0, result.output
    assert calls[-1]["_jobs"] == 3


def test_run_all_runs_every_registered_study(monkeypatch, tmp_path):
    import scilayers.experiments as ex

    calls = []
    monkeypatch.setattr(ex, "main", _fake_main(calls))
    result = runner.invoke(app, ["run", "all", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [c["study"] for c in calls] == list(ex.STUDIES)
    assert calls[0]["out"] == tmp_path / f"{calls[0]['study']}-quick"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--data-dir", "/nonexistent/data"], "does not exist"),
    ],
)
def test_run_bad_input_exit_2(monkeypatch, tmp_path, args, message):
    import scilayers.experiments as ex

    calls = []
    monkeypatch.setattr(ex, "main", _fake_main(calls))
    result = runner.invoke(app, ["run", "ks", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output
    assert calls == []


def test_report(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "results.json not found" in result.output
    (tmp_path / "results.json").write_text('{"experiment": "ks", "preset": "quick", "se')
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_optional_module_only_hides_a_missing_module(tmp_path, monkeypatch):
    assert cli._optional_module("scilayers.no_such_module_here") is None
    assert cli._optional_module("json") is json
    # a module that exists but fails to import a dependency is a bug there: not hidden
    (tmp_path / "study_with_broken_import.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        cli._optional_module("study_with_broken_import")


def test_bench_hands_over_and_strict_fails(monkeypatch, tmp_path):
    import scilayers._bench as bench

    seen = {}

    def fake(quick, out, only=None):
        seen.update(quick=quick, out=out, only=only)
        return {"all_passed": False}

    monkeypatch.setattr(bench, "run_benchmarks", fake)
    out = tmp_path / "r.json"
    assert runner.invoke(app, ["bench", "--quick", "--out", str(out)]).exit_code == 0
    assert seen == {"quick": True, "out": out, "only": None}
    assert runner.invoke(app, ["bench", "--only", "ks", "--out", str(out)]).exit_code == 0
    assert seen["only"] == "ks"
    assert runner.invoke(app, ["bench", "--strict", "--out", str(out)]).exit_code == 1
    assert runner.invoke(app, ["bench", "--out", str(tmp_path)]).exit_code == 2
    # an unknown stage is a one-line error naming the stages, before anything runs
    seen.clear()
    res = runner.invoke(app, ["bench", "--only", "stepn64", "--out", str(out)])
    assert res.exit_code == 2 and "step_n64" in res.output and not seen


def test_bench_table_renders(tmp_path):
    from rich.console import Console

    from scilayers._bench import Figure, environment, results_table

    results = {
        "quick": True,
        "environment": environment(),
        "figures": [
            Figure("a", "a. thing", 1.0, "ms", 2.0, "ref", 0.5, 0.85, "<= 0.85x", True).__dict__,
            Figure("d", "d. data", 3.0, "s", target=120.0, target_text="< 120 s").__dict__,
        ],
    }
    console = Console(width=150, record=True)
    console.print(results_table(results))
    text = console.export_text()
    assert "PASS" in text and "n/a" in text and "0.50x" in text


def test_bench_figure_is_the_median_of_interleaved_reps_with_its_spread():
    """A speed figure is the median of the per-repetition ratios, shown with its spread and
    the number of repetitions within the target: one slow repetition moves neither the
    figure nor the verdict."""
    import numpy as np
    from rich.console import Console

    from scilayers._bench import _ratio_figure, environment, results_table

    ours = np.array([1.0, 1.1, 1.2, 5.0, 1.05])  # one repetition hit by load
    fig = _ratio_figure("k", "k. thing", ours, np.ones(5), "ms", "ref", 1.15, scale=1e3)
    assert fig.ratio == pytest.approx(1.1) and fig.passed
    assert (fig.within, fig.repeats) == (3, 5)
    assert fig.ratio_spread["q25"] == pytest.approx(1.05)
    assert fig.ratio_spread["q75"] == pytest.approx(1.2)
    assert fig.spread["value"]["max"] == pytest.approx(5000.0)
    console = Console(width=200, record=True)
    console.print(results_table({"quick": False, "environment": environment(),
                                 "figures": [fig.__dict__]}))  # fmt: skip
    text = console.export_text()
    assert "1.10x" in text and "1.05–1.20" in text and "3/5" in text and "1,000–5,000" in text


def test_bench_stage_selection_and_cpu_reference(tmp_path):
    """`--only` names stages or the 'ks' group; the CPU reference file keeps one entry per
    figure and size, merged across runs."""
    from scilayers._bench import Figure, environment, select_stages, update_reference

    assert select_stages("ks") == ("step_n64", "step_n256", "grad")
    assert select_stages("grad, memory") == ("grad", "memory")
    with pytest.raises(ValueError, match="unknown benchmark stage"):
        select_stages("grad,nope")
    env = environment()
    path = tmp_path / "cpu_reference.json"
    one = Figure("a", "a. x", 2.0, "us/step", 1.0, "floor", 2.0, 1.15, "<= 1.15x", False)
    two = Figure("b", "b. y", 3.0, "ms", 1.5, "forward", 2.0, 3.0, "<= 3x", True)
    update_reference(path, {"quick": False, "environment": env, "figures": [one.__dict__]})
    ref = update_reference(path, {"quick": True, "environment": env, "figures": [two.__dict__]})
    assert set(ref["figures"]) == {"a", "b@quick"}
    assert ref["figures"]["a"]["value"] == 2.0 and ref["figures"]["b@quick"]["reference"] == 1.5
