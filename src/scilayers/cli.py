"""The `scilayers` command line: ``run | report | data | bench | list``.

Every command has ``--help``; bad input exits with code 2 and a one-line reason on stderr.
Studies live in ``scilayers.experiments.<name>`` (a module with ``main(preset=, seeds=,
out=, data_dir=)``), reports in ``scilayers.report.build_report(dir)``; the commands here
find them at call time and say so plainly when one is not there yet.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(
    name="scilayers",
    help="Scientific solvers as differentiable layers: studies, reports, data and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Generate synthetic truth data sets.", no_args_is_help=True)
run_app = typer.Typer(
    help="Run a study (trains every method over seeds, writes DIR/results.json, report, figures).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(run_app, name="run")


@dataclass(frozen=True)
class Experiment:
    """A study the CLI knows: its module, presets and a one-line description."""

    name: str
    title: str
    module: str
    presets: tuple[str, ...] = ("quick", "full")
    description: str = ""


EXPERIMENTS: dict[str, Experiment] = {
    "ks": Experiment(
        "ks",
        "KS",
        "scilayers.experiments.ks",
        description="Kuramoto–Sivashinsky: learn θ_s (a, b, c, d) jointly with a closure",
    ),
}
DATA_GENERATORS = {"ks": "Kuramoto–Sivashinsky truth (`scilayers data ks`)"}


# ----------------------------------------------------------------------------- helpers
def fail(message: str) -> NoReturn:
    """Print ``error: message`` (one line) to stderr and exit with code 2."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(2)


def _optional_module(name: str):
    """Import ``name``, or return None if that module (or a parent) does not exist.

    An ImportError raised *inside* an existing module is a bug there and propagates.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise


def _check_writable_file(path: Path, what: str = "--out") -> Path:
    """Fail (exit 2) unless ``path`` can be created or replaced as a file."""
    if path.exists() and path.is_dir():
        fail(f"{what} {path} is a directory; pass a file name such as {path / 'ks.nc'}")
    _check_writable_dir(path.parent, what, target=path)
    return path


def _check_writable_dir(path: Path, what: str = "--out", target: Path | None = None) -> Path:
    """Fail (exit 2) unless the folder ``path`` exists and is writable or can be created."""
    target = target or path
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        fail(f"cannot write {what} {target}: {probe} is a file, not a folder")
    try:  # os.access is not enough (root, read-only or virtual file systems): try it
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        fail(f"cannot write {what} {target}: the folder {probe} is not writable ({e.strerror})")
    return path


def _resolve_data_dir(value: Path | None) -> Path | None:
    from .data import DATA_DIR_ENV, data_dir

    if value is None and not os.environ.get(DATA_DIR_ENV):
        return None
    try:
        return data_dir(value)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _version_callback(value: bool):
    if value:
        from . import __version__

        typer.echo(f"scilayers {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
):
    """Scientific solvers as differentiable layers: studies, reports, data and benchmarks."""


# ------------------------------------------------------------------------------- data
@data_app.callback()
def _data():
    """Generate synthetic truth data sets (netCDF, seeded, with train/val/test splits)."""


@data_app.command("ks")
def data_ks(
    out: Path = typer.Option(..., "--out", "-o", help="netCDF file to write (atomically)."),
    trajectories: int = typer.Option(1000, help="In-domain trajectories."),
    steps: int = typer.Option(1000, help="Saved steps after the burn-in (steps+1 states)."),
    n: int = typer.Option(64, "--n", help="Grid points (even)."),
    length: float = typer.Option(22.0, help="Domain length L."),
    seed: int = typer.Option(0, help="Seed of the initial conditions and the splits."),
    a: float = typer.Option(1.0, help="θ_s: anti-diffusion coefficient (> 0)."),
    b: float = typer.Option(1.0, help="θ_s: hyper-diffusion coefficient (> 0)."),
    c: float = typer.Option(1.0, help="θ_s: convection coefficient."),
    d: float = typer.Option(0.0, help="θ_s: dispersion coefficient."),
    dt_save: float = typer.Option(0.25, help="Time between saved states."),
    substeps: int = typer.Option(5, help="ETDRK4 steps per saved step (dt = dt_save/substeps)."),
    burn_in: float = typer.Option(100.0, help="Discarded spin-up time (a multiple of dt)."),
    batch_size: int = typer.Option(250, help="Trajectories per compiled batch."),
    ood_fraction: float = typer.Option(0.1, help="OOD trajectories as a fraction (0: none)."),
    ood_length_factor: float = typer.Option(
        2.0, help="OOD domain = length x factor, at the same dx."
    ),
    figures: Path | None = typer.Option(
        None, help="Also write space–time plots (PNG) of a few trajectories to this folder."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Kuramoto–Sivashinsky truth: u(trajectory, time, x), splits and an OOD group."""
    from .data import KSDataConfig

    for name, value in (
        ("--trajectories", trajectories),
        ("--steps", steps),
        ("--substeps", substeps),
        ("--batch-size", batch_size),
    ):
        if value < 1:
            fail(f"{name} must be >= 1, got {value}")
    if seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    if n < 4 or n % 2:
        fail(f"--n must be an even integer >= 4, got {n}")
    try:
        config = KSDataConfig(
            trajectories=trajectories, steps=steps, n=n, length=length, a=a, b=b, c=c, d=d,
            dt_save=dt_save, substeps=substeps, burn_in=burn_in, batch_size=batch_size,
            seed=seed, ood_fraction=ood_fraction, ood_length_factor=ood_length_factor,
        )  # fmt: skip
    except ValueError as e:
        fail(str(e))
    _check_writable_file(out)
    if figures is not None:
        _check_writable_dir(figures, "--figures")

    from .data import generate_ks, plot_spacetime, save_dataset

    t0 = time.perf_counter()
    try:
        ds = generate_ks(config, progress=progress)
    except ValueError as e:
        fail(str(e))
    t_gen = time.perf_counter() - t0
    try:
        save_dataset(ds, out)
    except (ValueError, OSError) as e:
        fail(f"cannot write {out}: {e}")
    wall = time.perf_counter() - t0
    size = out.stat().st_size
    typer.echo(
        f"wrote {out}: {config.trajectories} trajectories x {config.steps + 1} states x {config.n}"
        f" points (+{config.ood_trajectories} OOD on {config.ood_n}), "
        f"{_human_bytes(size)} ({size} bytes)"
    )
    steady, steady_ood = ds.attrs["steady_trajectories"], ds.attrs["ood_steady_trajectories"]
    if steady > 0 or steady_ood > 0:
        typer.echo(
            f"note: {steady} in-domain and {steady_ood} OOD trajectories settled on steady "
            "states (equilibria or travelling waves), not chaos; see attrs['steady_rule']"
        )
    if figures is not None:
        paths = [plot_spacetime(ds, figures / "ks_spacetime.png")]
        if "u_ood" in ds:
            paths.append(plot_spacetime(ds, figures / "ks_ood_spacetime.png", variable="u_ood"))
        typer.echo("figures: " + ", ".join(str(p) for p in paths))
    typer.echo(f"wall time {wall:.1f} s (generation {t_gen:.1f} s)")


# -------------------------------------------------------------------------------- run
def _make_run_command(exp: Experiment):
    def command(
        preset: str = typer.Option(
            exp.presets[0], help=f"Study size: one of {', '.join(exp.presets)}."
        ),
        seeds: int | None = typer.Option(None, help="Number of seeds (default: the preset's)."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help=f"Output folder (default runs/{exp.name}-PRESET)."
        ),
        data_dir: Path | None = typer.Option(
            None, help="Folder of real data (default: $SCILAYERS_DATA_DIR)."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the checkpoints in OUT (if supported)."
        ),
    ):
        module = _optional_module(exp.module)
        if module is None:
            fail(f"the {exp.title} study is not available yet ({exp.module} is missing)")
        presets = tuple(getattr(module, "PRESETS", exp.presets))
        if preset not in presets:
            fail(f"unknown preset {preset!r} for {exp.name}; choose one of {', '.join(presets)}")
        if seeds is not None and seeds < 1:
            fail(f"--seeds must be >= 1, got {seeds}")
        out_dir = out if out is not None else Path("runs") / f"{exp.name}-{preset}"
        if out_dir.exists() and not out_dir.is_dir():
            fail(f"--out {out_dir} is a file; pass a folder")
        _check_writable_dir(out_dir)
        main = getattr(module, "main", None)
        if main is None:
            fail(f"{exp.module} has no main(); the {exp.title} study is not available yet")
        kwargs = {"preset": preset, "seeds": seeds, "out": out_dir, "data_dir": None}
        kwargs["data_dir"] = _resolve_data_dir(data_dir)
        params = inspect.signature(main).parameters
        if resume:
            if "resume" not in params:
                fail(f"the {exp.title} study does not support --resume")
            kwargs["resume"] = True
        # leave out None values for which main() has its own default
        kwargs = {
            k: v
            for k, v in kwargs.items()
            if not (v is None and k in params and params[k].default is not inspect.Parameter.empty)
        }
        main(**kwargs)

    command.__doc__ = f"{exp.description or exp.title}. Writes OUT/results.json, report, figures."
    return command


@run_app.callback()
def _run():
    """Run a study: every method over seeds; writes DIR/results.json, report.md, figures/."""


for _exp in EXPERIMENTS.values():
    run_app.command(_exp.name)(_make_run_command(_exp))


# ----------------------------------------------------------------------------- report
@app.command("report")
def report(
    directory: Path = typer.Argument(..., metavar="DIR", help="A study's output folder."),
):
    """Rebuild DIR/report.md and DIR/figures/ from DIR/results.json."""
    if not directory.is_dir():
        fail(f"{directory} is not a folder; pass the --out folder of `scilayers run`")
    if not (directory / "results.json").is_file():
        fail(
            f"{directory / 'results.json'} not found; "
            f"run `scilayers run ks --out {directory}` first"
        )
    module = _optional_module("scilayers.report")
    build = getattr(module, "build_report", None) if module is not None else None
    if build is None:
        fail("the report builder is not available yet (scilayers.report.build_report is missing)")
    result = build(directory)
    if result is not None:
        typer.echo(f"wrote {result}")


# ------------------------------------------------------------------------------ bench
@app.command("bench")
def bench(
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes (say so in the table)."),
    out: Path = typer.Option(
        Path("benchmarks/results.json"), "--out", "-o", help="Where to write the JSON results."
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 if a target fails."),
):
    """The benchmark suite (speed ratios, gradient cost, memory, data generation) as a table."""
    _check_writable_file(out)
    from ._bench import run_benchmarks

    results = run_benchmarks(quick=quick, out=out)
    if strict and not results["all_passed"]:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------- list
@app.command("list")
def list_() -> None:
    """List the studies (with presets and availability) and the data generators."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="studies (`scilayers run NAME --preset P`)")
    for col in ("name", "presets", "available", "description"):
        table.add_column(col)
    for exp in EXPERIMENTS.values():
        available = _optional_module(exp.module) is not None
        table.add_row(
            exp.name,
            ", ".join(exp.presets),
            "yes" if available else "not yet",
            exp.description,
        )
    console = Console()
    console.print(table)
    data = Table(title="data generators (`scilayers data NAME`)")
    data.add_column("name")
    data.add_column("description")
    for name, desc in DATA_GENERATORS.items():
        data.add_row(name, desc)
    console.print(data)


if __name__ == "__main__":  # pragma: no cover
    app()
