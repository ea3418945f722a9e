"""The `scilayers` command line: ``run | report | data | bench | list``.

Every command has ``--help``; bad input exits with code 2 and a one-line reason on stderr.
Studies come from one registry (`scilayers.experiments.STUDIES`): every registered study
gets ``run NAME`` and ``data NAME``, and ``run all`` runs them all; nothing here names a
study.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
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
    from ._compile_cache import use_compilation_cache

    use_compilation_cache()  # $SCILAYERS_XLA_CACHE=off disables it


# ------------------------------------------------------------------------------- data
@data_app.callback()
def _data():
    """Generate synthetic truth data sets (netCDF, seeded, with train/val/test splits)."""


def _study_class(name: str):
    from .experiments import get_study

    try:
        return get_study(name)
    except ValueError as e:
        fail(str(e))


def _make_data_command(name: str):
    def command(
        out: Path = typer.Option(..., "--out", "-o", help="netCDF file to write (atomically)."),
        preset: str = typer.Option("quick", help="The study preset whose truth to write."),
        trajectories: int | None = typer.Option(None, help="In-domain trajectories."),
        seed: int | None = typer.Option(None, help="Seed of the initial states and splits."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    ):
        cls = _study_class(name)
        if preset not in cls.presets:
            fail(f"unknown preset {preset!r} for {name}; choose one of {', '.join(cls.presets)}")
        if trajectories is not None and trajectories < 1:
            fail(f"--trajectories must be >= 1, got {trajectories}")
        if seed is not None and seed < 0:
            fail(f"--seed must be >= 0, got {seed}")
        _check_writable_file(out)
        t0 = time.perf_counter()
        try:
            summary = cls(cls.presets[preset]).write_data(
                out, progress, trajectories=trajectories, seed=seed
            )
        except (ValueError, NotImplementedError, OSError) as e:
            fail(str(e))
        size = out.stat().st_size
        typer.echo(f"wrote {out}: {summary}, {_human_bytes(size)} ({size} bytes)")
        typer.echo(f"wall time {time.perf_counter() - t0:.1f} s")

    command.__doc__ = f"Write the {name} study's truth (netCDF, seeded, with its splits)."
    return command


@data_app.command("arterial")
def data_arterial(
    case: str = typer.Option(
        ..., "--case", help="Case under DATA_DIR/hemodynamics (e.g. boileau2015/uta) or a .yaml."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="netCDF file to write (atomically)."),
    data_dir: Path | None = typer.Option(
        None, help="Folder of real data (default: $SCILAYERS_DATA_DIR)."
    ),
    max_cycles: int | None = typer.Option(
        None, help="Most cardiac cycles (default: the case's 'cycles', at least 10)."
    ),
    rtol: float = typer.Option(
        0.01,
        help="Periodic when the pressure waveform changes by less than this fraction "
        "of the pulse pressure between the last two cycles.",
    ),
    cfl: float | None = typer.Option(None, help="Courant number (default: the case's Ccfl)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
):
    """Run an arterial network case to its periodic state; write its last cycle (netCDF).

    The case is an openBF YAML network with its inflow .dat; the file holds pressure (Pa),
    flow (m3/s) and area (m2) at 5 points along each vessel over the last cardiac cycle.
    """
    import jax

    from .data import write_arterial_case
    from .models import MMHG

    if max_cycles is not None and max_cycles < 1:
        fail(f"--max-cycles must be >= 1, got {max_cycles}")
    if not 0 < rtol < 1:
        fail(f"--rtol must be in (0, 1), got {rtol}")
    if cfl is not None and not 0 < cfl <= 1:
        fail(f"--cfl must be in (0, 1], got {cfl}")
    _check_writable_file(out)
    resolved = _resolve_data_dir(data_dir)
    t0 = time.perf_counter()
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar, jax.enable_x64(True):
        task = bar.add_task(f"{case}: cycle", total=max_cycles)

        def tick(k: int, conv: float) -> None:
            bar.update(task, completed=k, description=f"{case}: cycle {k}, change {conv:.2%}")

        try:
            ds = write_arterial_case(case, out, data_dir=resolved, max_cycles=max_cycles,
                                     rtol=rtol, cfl=cfl, callback=tick)  # fmt: skip
        except (ValueError, FileNotFoundError, OSError) as e:
            fail(str(e))
    p = ds["pressure"].isel(vessel=0, position=0).values / MMHG
    conv = ds.attrs["convergence"]
    state = "periodic" if ds.attrs["converged"] else "NOT periodic"
    change = f"change {conv:.2%}" if conv == conv else "one cycle, no change measured"
    typer.echo(
        f"wrote {out}: {ds.attrs['case']}, {ds.sizes['vessel']} vessel(s), "
        f"{ds.attrs['cycles']} cycles ({state}: {change}), "
        f"dt {ds.attrs['dt']:.3g} s; inlet pressure {p.min():.1f}-{p.max():.1f} mmHg "
        f"(mean {p.mean():.1f})"
    )
    typer.echo(f"wall time {time.perf_counter() - t0:.1f} s")


# -------------------------------------------------------------------------------- run
def _run_one(name: str, preset: str, seeds: int | None, out: Path | None,
             data_dir: Path | None, resume: bool, progress: bool,
             uq: str | None = None, jobs: int | None = None) -> Path:  # fmt: skip
    from .experiments import main
    from .experiments._parallel import auto_jobs

    cls = _study_class(name)
    if preset not in cls.presets:
        fail(f"unknown preset {preset!r} for {name}; choose one of {', '.join(cls.presets)}")
    if seeds is not None and seeds < 1:
        fail(f"--seeds must be >= 1, got {seeds}")
    if jobs is not None and jobs < 1:
        fail(f"--jobs must be >= 1, got {jobs}")
    if uq is not None and uq not in ("none", "ensemble", "bayes"):
        fail(f"unknown --uq {uq!r}; choose none, ensemble or bayes")
    out_dir = out if out is not None else Path("runs") / f"{name}-{preset}"
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir} is a file; pass a folder")
    _check_writable_dir(out_dir)
    t0 = time.perf_counter()
    try:
        results = main(name, preset, seeds=seeds or 3, out=out_dir,
                       data_dir=_resolve_data_dir(data_dir), resume=resume,
                       progress=progress, uq=uq, jobs=jobs or auto_jobs())  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    _print_summary(out_dir, results, time.perf_counter() - t0)
    return out_dir


def _print_summary(out_dir: Path, results: dict, wall: float) -> None:
    """The main table (MSE per evaluation set and method) and where the report is."""
    sets = results.get("eval_sets", ["id", "ood"])
    typer.echo("")
    typer.echo(f"{'method':26s}" + "".join(f"{s.upper() + ' MSE':>14s}" for s in sets))
    for name, entry in results["methods"].items():
        cells = []
        for s in sets:
            mean = entry.get(f"{s}_mse", {}).get("mean")
            cells.append(f"{mean:14.4g}" if mean is not None else f"{'—':>14s}")
        typer.echo(f"{name:26s}" + "".join(cells))
    uq = results.get("uq") or {}
    if uq.get("methods"):
        typer.echo(f"\nuncertainty ({uq['kind']}), at lead {uq['lead']} steps:")
        typer.echo(f"{'method':26s}{'set':>6s}{'PICP90':>9s}{'width90':>10s}{'CRPS':>10s}"
                   f"{'spread/skill':>14s}")  # fmt: skip
        for name, entry in uq["methods"].items():
            for s in sets:
                at = entry.get(s, {}).get("at_lead", {})
                cells = [at.get(k) for k in ("picp_90", "mpiw_90", "crps", "spread_skill")]
                txt = [f"{c:.3g}" if c is not None else "—" for c in cells]
                typer.echo(f"{name:26s}{s:>6s}{txt[0]:>9s}{txt[1]:>10s}{txt[2]:>10s}"
                           f"{txt[3]:>14s}")  # fmt: skip
    failed = [t["name"] for t in results.get("targets", []) if t.get("pass") is False]
    typer.echo(f"targets: {len(results.get('targets', [])) - len(failed)} met"
               + (f", not met: {'; '.join(failed)}" if failed else ""))  # fmt: skip
    typer.echo(f"wall time {wall / 60:.1f} min; report: {out_dir / 'report.md'}")


_DISTRIBUTED_HELP = (
    "Run on every device of every process: start jax.distributed from the environment "
    "(SCILAYERS_COORDINATOR / SCILAYERS_NUM_PROCESSES / SCILAYERS_PROCESS_ID, JAX_*, or "
    "SLURM's variables) and split training batches over all devices; only process 0 writes."
)


_JOBS_HELP = (
    "Local worker processes that train independent (method, seed) runs at once (default: "
    "the usable cores, at most 4, on a CPU backend; 1 on an accelerator or with "
    "--distributed). Results do not depend on it."
)


def _one_job_when_distributed(jobs: int | None) -> int:
    """``--distributed`` shares each training step among all processes' devices: no local
    worker processes besides."""
    if jobs is not None and jobs > 1:
        fail(f"--jobs {jobs} cannot be combined with --distributed (each step already runs "
             "on every device of every process); leave --jobs out")  # fmt: skip
    return 1


def _start_distributed() -> None:
    """``--distributed``: join the run's processes; must come before anything uses JAX."""
    from .distributed import devices_summary, initialize

    try:
        rt = initialize()
    except (ValueError, RuntimeError) as e:
        fail(f"--distributed: {e}")
    typer.echo(f"distributed: process {rt.process_index}: {devices_summary()}", err=True)


def _make_run_command(name: str):
    def command(
        preset: str = typer.Option("quick", help="Study size (see `scilayers list`)."),
        seeds: int | None = typer.Option(None, help="Number of seeds (default 3)."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help=f"Output folder (default runs/{name}-PRESET)."
        ),
        data_dir: Path | None = typer.Option(
            None, help="Folder of real data (default: $SCILAYERS_DATA_DIR)."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the finished runs and checkpoints in OUT."
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
        uq: str | None = typer.Option(
            None, "--uq", help="Uncertainty: none, ensemble (deep ensembles with AR(1) model "
            "error) or bayes (NUTS posterior of θ_s); default: the preset's (none).",
        ),
        distributed: bool = typer.Option(False, "--distributed", help=_DISTRIBUTED_HELP),
        jobs: int | None = typer.Option(None, "--jobs", "-j", help=_JOBS_HELP),
    ):
        if distributed:
            jobs = _one_job_when_distributed(jobs)
            _start_distributed()
        _run_one(name, preset, seeds, out, data_dir, resume, progress, uq, jobs)

    return command


@run_app.callback()
def _run():
    """Run a study: every method over seeds; writes DIR/results.json, report.md, figures/."""


def _register() -> None:
    """One command per registered study under `run` and `data`, and `run all`."""
    from .experiments import STUDIES

    for name in STUDIES:
        run_app.command(name, help=f"Run the {name} study; writes OUT/results.json, report.md.")(
            _make_run_command(name)
        )
        data_app.command(name, help=f"Write the {name} study's truth.")(_make_data_command(name))

    @run_app.command("all")
    def run_all(
        preset: str = typer.Option("quick", help="Preset of every study."),
        seeds: int | None = typer.Option(None, help="Number of seeds (default 3)."),
        out: Path = typer.Option(Path("runs"), "--out", "-o", help="Parent folder."),
        data_dir: Path | None = typer.Option(None, help="Folder of real data."),
        resume: bool = typer.Option(False, "--resume", help="Continue finished runs."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
        distributed: bool = typer.Option(False, "--distributed", help=_DISTRIBUTED_HELP),
        jobs: int | None = typer.Option(None, "--jobs", "-j", help=_JOBS_HELP),
    ):
        """Run every registered study at PRESET (into OUT/NAME-PRESET)."""
        if distributed:
            jobs = _one_job_when_distributed(jobs)
            _start_distributed()
        for name in STUDIES:
            _run_one(name, preset, seeds, out / f"{name}-{preset}", data_dir, resume, progress,
                     jobs=jobs)  # fmt: skip


_register()


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
            f"run `scilayers run STUDY --out {directory}` first"
        )
    module = _optional_module("scilayers.report")
    build = getattr(module, "build_report", None) if module is not None else None
    if build is None:
        fail("the report builder is not available yet (scilayers.report.build_report is missing)")
    try:
        result = build(directory)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
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
    only: str = typer.Option(
        None,
        "--only",
        help="Comma-separated stages to run: step_n64, step_n256, grad, memory, data, "
        "train_step, or ks (the KS speed stages); default all.",
    ),
    scale: bool = typer.Option(
        False, "--scale", help="Also the scale benchmarks: a training step over 1, 2, 4 "
        "devices, and peak memory and time per rollout memory policy (OUT_scale.json)."
    ),
):
    """The benchmark suite (speed ratios, gradient cost, memory, data generation) as a table."""
    _check_writable_file(out)
    from ._bench import run_benchmarks, select_stages

    try:
        select_stages(only)
    except ValueError as e:
        fail(str(e))
    results = run_benchmarks(quick=quick, out=out, only=only)
    passed = results["all_passed"]
    if scale:
        from ._bench_scale import run_scale_benchmarks

        res = run_scale_benchmarks(quick=quick, out=out.with_name(f"{out.stem}_scale.json"))
        rows = res["memory"]["rows"]
        passed = passed and all(r["meets_target"] for p, r in rows.items() if p != "full")
    if strict and not passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------- list
@app.command("list")
def list_() -> None:
    """List the registered studies, their presets and what each compares."""
    from rich.console import Console
    from rich.table import Table

    from .experiments import STUDIES, get_study

    table = Table(title="studies (`scilayers run NAME --preset P`, `scilayers data NAME`)")
    for col in ("name", "presets", "description"):
        table.add_column(col)
    for name in STUDIES:
        cls = get_study(name)
        table.add_row(name, ", ".join(cls.presets), cls.description)
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
