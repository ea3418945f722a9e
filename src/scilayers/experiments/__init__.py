"""Studies: each one implementation of the study protocol (`AbstractStudy`), run by one
engine (`run_study`). Adding a study is one module and one line in `STUDIES`."""

from __future__ import annotations

import importlib
from pathlib import Path

from ._engine import run_study as run_study
from ._study import AbstractStudy as AbstractStudy
from ._study import EvalSet as EvalSet
from ._study import Problem as Problem
from ._study import StudyConfig as StudyConfig

#: The registry: study name → ``"module:Class"`` (imported when used).
STUDIES: dict[str, str] = {
    "ks": "scilayers.experiments.ks:KSStudy",
    "burgers": "scilayers.experiments.burgers:BurgersStudy",
    "lorenz96": "scilayers.experiments.lorenz96:Lorenz96Study",
    "era5": "scilayers.experiments.era5:ERA5Study",
    "hemodynamics": "scilayers.experiments.hemodynamics:HemodynamicsStudy",
    "aneurysm": "scilayers.experiments.aneurysm:AneurysmStudy",
}


def get_study(name: str) -> type[AbstractStudy]:
    """The study class registered as ``name``."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}.")
    module, cls = STUDIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def main(
    study: str,
    preset: str = "quick",
    seeds: int = 3,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log=print,
    uq: str | None = None,
    jobs: int = 1,
) -> dict:
    """Run the study ``study`` at ``preset`` over ``seeds`` seeds, write ``out`` and the
    report (what ``scilayers run STUDY`` does); ``uq`` (``"none"``, ``"ensemble"``,
    ``"bayes"``; default: the preset's) adds the uncertainty block; ``jobs`` > 1 trains
    independent (run, seed) pairs on that many local worker processes."""
    cls = get_study(study)
    if preset not in cls.presets:
        raise ValueError(f"unknown preset {preset!r} for {study}; choose one of "
                         f"{', '.join(cls.presets)}.")  # fmt: skip
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}.")
    out = Path(out) if out is not None else Path("runs") / f"{study}-{preset}"
    cfg = cls.presets[preset]
    if uq is not None:
        cfg = cfg.replace(uq=uq)
    instance = cls(cfg, data_dir=None if data_dir is None else Path(data_dir))
    runner = getattr(instance, "run", None)  # a study outside the forecast protocol
    if callable(runner):
        results = runner(list(range(seeds)), out, resume=resume, progress=progress, log=log)
    else:
        results = run_study(instance, list(range(seeds)), out, resume=resume,
                            progress=progress, log=log, jobs=jobs)  # fmt: skip
    from ..distributed import is_writer
    from ..report import build_report

    if is_writer():  # one report, by process 0
        build_report(out)
    return results
