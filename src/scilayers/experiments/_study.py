"""The study protocol: what a domain supplies so that the engine can run a whole study.

A study is one subclass of `AbstractStudy` plus one line in the registry
(`scilayers.experiments.STUDIES`). The engine (`run_study`) builds the standard methods and
ablations from its hooks, runs seeds, caches each (method, seed), and writes
``results.json``, ``arrays.npz`` and the report. Everything here is domain-free.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import numpy as np

from ..baselines import PINNConfig
from ..params import named, set_values, values
from ..training import TrainConfig


@dataclass(frozen=True)
class StudyConfig:
    """What every study's config holds (a study subclasses it and adds its domain fields).

    **Arguments:**

    - `preset`: the preset's name (recorded in results).
    - `dt`: time between saved (observed) states.
    - `context_steps`: states of every evaluation trajectory before the forecast start;
      the PINN fits them, every other method starts from the last one.
    - `corr_steps`: forecast steps evaluated (for the correlation time and figures).
    - `main_horizon`: steps averaged in the main MSE columns (``1 … main_horizon``).
    - `horizons`: steps at which the MSE curve is recorded.
    - `field_steps`: steps of the first test trajectory kept for the field figures.
    - `identifiable`: how the main hybrids keep θ_s identifiable: ``"orthogonal"`` (the
      library's sensitivity projection), ``"unrestricted"``, or the name of one of the
      study's projections (`AbstractStudy.projections`).
    - `closure_variants`: the closures of the identifiability ablation: ``"unrestricted"``,
      ``"orthogonal"`` or a name of the study's `AbstractStudy.projections` (the main
      closure, `identifiable`, is its reference row and is not trained twice).
    - `lambda_physics`: λ_p of the hybrids (fixed a priori, not tuned on test data);
      `lambda_sweep`: the λ_p ablation.
    - `data_sizes`: training-set sizes (trajectories) of the data-efficiency ablation,
      besides "all"; `data_methods`: the methods it trains; `data_seeds`: how many of the
      seeds it uses (``None``: all); `ablation_seeds`: the same for the other ablations.
    - `pinn`: the PINN's training config (``None``: no PINN); `pinn_trajectories`: how
      many trajectories of each evaluation set the PINN is fitted to (it is fitted per
      trajectory); `pinn_seeds`: how many of the seeds fit a PINN (``None``: all).
    - `checkpoint_every`: training checkpoints (steps) so a killed study resumes.
    - `emulator_steps`: the neural emulator's step budget (``None``: ``train.steps``); it
      is cheap per step and needs more steps to converge, so it gets them.
    - `hybrid_train`: the hybrids' training config (``None``: `train`), for a study whose
      hybrids need another budget than the shared one to reach their plateau (more steps,
      a smaller batch, another network rate): ``hybrid_fixed_theta``, ``hybrid_staged``,
      ``hybrid_joint``, their ablations (so a variant row has the main row's budget) and
      the ``--uq`` hybrid ensembles train with it; the calibration, the sequential hybrid,
      the emulator (and its ensemble) keep `train`.
    - `train`: the training budget every trained method shares (the emulator may get more).
    - `extend_rounds`: how often a main method that has not converged by the engine's rule
      (`scilayers.experiments._engine.CONVERGENCE_RULE`) is trained on, a quarter of its
      budget at a time at its final learning rate (0: never; ablations never are).
    - `uq`: uncertainty quantification (``"none"``, ``"ensemble"`` or ``"bayes"``; the CLI's
      ``--uq``; see `scilayers.experiments._uq`): `uq_methods` get a deep ensemble of
      `uq_members` members (θ_s starts jittered by `uq_jitter` in unconstrained units),
      each rolled out `uq_samples` times with AR(1) model error (5 x 8 = 40 draws: enough
      for a 95 % rank interval, `scilayers.metrics.interval`); scored on the first
      `uq_trajectories` trajectories of each set, each issuing `uq_windows` forecasts
      `main_horizon` steps apart (as many as the set's length allows; more windows, less
      sampling noise in the scores, where one window per trajectory leaves few).
      ``bayes``: NUTS over θ_s of the trained ``hybrid_joint`` on `bayes_trajectories`
      training trajectories cut into windows of `bayes_horizon` steps (`bayes_chains`
      chains, `bayes_warmup` + `bayes_samples` draws), then `uq_members` posterior draws
      as the predictive ensemble.
      `uq_rolling` (forecasts issued in time, `EvalSet.t0`): each forecast's spread is
      recalibrated on the forecasts of its set already verified when it is issued, once
      there are `uq_rolling` of them (the validation windows' calibration before that; 0:
      off) — a rolling EMOS, as weather centres fit theirs.
    """

    preset: str = "quick"
    dt: float = 0.25
    context_steps: int = 20
    corr_steps: int = 200
    main_horizon: int = 40
    horizons: tuple[int, ...] = (4, 10, 20, 40, 80, 160)
    field_steps: int = 160
    identifiable: str = "orthogonal"
    closure_variants: tuple[str, ...] = ("unrestricted", "orthogonal")
    lambda_physics: float = 0.0
    lambda_sweep: tuple[float, ...] = (0.0, 1e-2, 1e-1, 1.0)
    data_sizes: tuple[int, ...] = (1, 4, 16, 64)
    data_methods: tuple[str, ...] = (
        "hybrid_joint",
        "hybrid_fixed_theta",
        "sequential_hybrid",
        "neural_emulator",
    )
    data_seeds: int | None = None
    ablation_seeds: int | None = None
    pinn: PINNConfig | None = field(default_factory=PINNConfig)
    pinn_trajectories: int = 8
    pinn_seeds: int | None = None
    checkpoint_every: int = 100
    emulator_steps: int | None = None
    hybrid_train: TrainConfig | None = None
    extend_rounds: int = 1
    train: TrainConfig = field(default_factory=TrainConfig)
    uq: str = "none"
    uq_methods: tuple[str, ...] = ("hybrid_joint", "neural_emulator")
    uq_members: int = 5
    uq_samples: int = 8
    uq_trajectories: int = 32
    uq_windows: int = 1
    uq_jitter: float = 0.2
    uq_rolling: int = 0
    bayes_trajectories: int = 4
    bayes_horizon: int = 5
    bayes_chains: int = 2
    bayes_warmup: int = 150
    bayes_samples: int = 150

    def __post_init__(self):
        if self.main_horizon > self.corr_steps:
            raise ValueError(
                f"main_horizon={self.main_horizon} must not exceed corr_steps={self.corr_steps}."
            )
        if self.context_steps < 1:
            raise ValueError(f"context_steps must be >= 1, got {self.context_steps}.")
        if self.uq not in ("none", "ensemble", "bayes"):
            raise ValueError(f"uq must be 'none', 'ensemble' or 'bayes', got {self.uq!r}.")
        if self.uq_members < 2 or self.uq_samples < 1:
            raise ValueError(
                f"uq_members must be >= 2 and uq_samples >= 1, got {self.uq_members}, "
                f"{self.uq_samples}."
            )
        if not (isinstance(self.uq_windows, int) and self.uq_windows >= 1):
            raise ValueError(f"uq_windows must be an integer >= 1, got {self.uq_windows!r}.")
        if not (isinstance(self.extend_rounds, int) and self.extend_rounds >= 0):
            raise ValueError(f"extend_rounds must be an integer >= 0, got {self.extend_rounds!r}.")
        if self.hybrid_train is not None and not isinstance(self.hybrid_train, TrainConfig):
            raise ValueError(
                f"hybrid_train must be a TrainConfig (e.g. train.replace(steps=600)) or None, "
                f"got {type(self.hybrid_train).__name__}."
            )
        if any(s < 1 for s in self.data_sizes):
            raise ValueError(f"data_sizes must be positive, got {self.data_sizes}.")

    def replace(self, **changes) -> StudyConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else (
                dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            )
        return out


@dataclass
class EvalSet:
    """A named evaluation set: ``data`` of shape ``(batch, context_steps + corr_steps,
    *state)`` whose forecasts start at index ``start`` (``context_steps - 1``); ``context``
    holds what the study needs to move a model onto it (e.g. the domain length, and ``x``,
    the grid, for figures); ``label`` says in words what was shifted; ``t0`` (optional,
    shape ``(batch,)``) is the time of ``data[:, 0]`` for a time-dependent model (states
    are ``dt`` apart), ``None`` for an autonomous one."""

    name: str
    data: np.ndarray
    start: int
    context: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    t0: np.ndarray | None = None

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:])


@dataclass
class Problem:
    """Truth cut into splits: training and validation trajectories on the training domain,
    and the evaluation sets (the first is in-domain, named ``"id"``). ``train_t0`` and
    ``val_t0`` (optional) are the times of the first state of each trajectory, for a
    time-dependent model; ``info`` holds whatever else the study's hooks need.
    ``observed`` (optional) are the measured components (flat indices into a state): every
    trained method then fits only those (`TrainConfig.observed`), starting from full
    states; evaluation still scores whole states. ``calib`` and ``calib_t0`` (optional) are
    the held-out windows on which ``--uq`` calibrates its error model and spread (default:
    the validation trajectories); a study whose validation windows are shorter than its
    main lead time supplies windows that reach it, from the same held-out period.
    ``calib_noise`` (optional): the standard deviation of the measurement noise in those
    windows (a number or one per state component), which the calibration takes off, since
    forecasts are scored against the noise-free truth."""

    train: np.ndarray
    val: np.ndarray
    eval_sets: dict[str, EvalSet]
    info: dict[str, Any] = field(default_factory=dict)
    train_t0: np.ndarray | None = None
    val_t0: np.ndarray | None = None
    observed: tuple[int, ...] | None = None
    calib: np.ndarray | None = None
    calib_t0: np.ndarray | None = None
    calib_noise: Any = None

    def __post_init__(self):
        if next(iter(self.eval_sets), None) != "id":
            raise ValueError("the first evaluation set must be the in-domain one, named 'id'.")
        if self.calib_t0 is not None and self.calib is None:
            raise ValueError("calib_t0 without calib: pass the calibration windows as well.")

    @property
    def calibration(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The windows (and their start times) that ``--uq`` calibrates on."""
        if self.calib is None:
            return self.val, self.val_t0
        return self.calib, self.calib_t0


class AbstractStudy(abc.ABC):
    """One study: the hooks a domain supplies. The engine does everything else.

    Class attributes: `name` (the CLI name), `title`, `description`, `presets`
    (``{name: StudyConfig}``), `field_kind` (``"1d"``, ``"2d"`` or ``"series"``: how the
    report draws fields). An instance holds the resolved config as ``self.cfg``.

    θ_s are never restated: their prior values are read from the `Param`s of `physics`,
    their true values from the `Param`s of `truth_model` (same names), the learned ones
    from the trained model.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str] = ""
    presets: ClassVar[dict[str, StudyConfig]]
    field_kind: ClassVar[str] = "1d"

    def __init__(self, cfg: StudyConfig, data_dir: Path | None = None):
        self.cfg = cfg
        self.data_dir = data_dir

    # -- truth -----------------------------------------------------------------------------
    @abc.abstractmethod
    def problem(self, cache_dir: Path | None, progress: bool) -> Problem:
        """Generate (or load from ``cache_dir``) the truth and cut it into splits."""

    @abc.abstractmethod
    def truth_model(self, eval_set: EvalSet | None = None):
        """The true equation (true θ_s as `Param`s) on ``eval_set``'s grid (``None``: the
        training grid), for the physics residual and the true θ_s; ``None`` where the
        observed variables have no closed equation with known θ_s (real data, a truth with
        unobserved scales): then neither is reported."""

    def lyapunov(self, problem: Problem, progress: bool) -> dict[str, float]:
        """The truth's leading Lyapunov exponent per evaluation set (``{}``: not chaotic /
        not measured)."""
        del problem, progress
        return {}

    def truth_checks(self, problem: Problem) -> dict[str, Any]:
        """Checks of the truth's premise, recorded in ``results["truth"]["checks"]``."""
        del problem
        return {}

    # -- models ----------------------------------------------------------------------------
    @abc.abstractmethod
    def physics(self, eval_set: EvalSet | None = None):
        """The coarse physics stepper with its mis-specified θ_s prior, on ``eval_set``'s
        domain (``None``: the training domain)."""

    @abc.abstractmethod
    def closure(self, key, odd: bool = False) -> eqx.Module:
        """The hybrid's network (state → tendency); ``odd``: odd by construction."""

    @abc.abstractmethod
    def emulator(self, key) -> eqx.Module:
        """The pure neural emulator's network (state → increment)."""

    def projections(self) -> dict[str, Any]:
        """Symmetry projections this study offers for its closure, by name."""
        return {}

    def move_physics(self, step, eval_set: EvalSet):
        """A trained physics stepper ``step`` moved onto ``eval_set``'s domain: by default
        the study's `physics` there with the learned θ_s (the Params that are free there)
        carried over; fixed Params (a known forcing, a domain size) keep the set's values.
        Override for a stepper that `physics` does not build (a network's bare stepper)."""
        fresh = self.physics(eval_set)
        free = {k for k, p in named(fresh).items() if not p.fixed}
        learned = {k: v for k, v in values(step).items() if k in free}
        return set_values(fresh, **learned)

    def move_network(self, net: eqx.Module, eval_set: EvalSet) -> eqx.Module:
        """A trained network (a hybrid's, an emulator's) moved onto ``eval_set``'s domain,
        its weights unchanged. Default: the network itself, for one that applies on any
        grid (a convolution); a network holding per-cell inputs of its grid overrides."""
        del eval_set
        return net

    def quantities(self) -> np.ndarray | None:
        """Where the state mixes quantities (pressures and flows, say): an integer label
        per state component, state-shaped, naming the quantity it is; ``--uq`` then
        recalibrates each quantity's spread on its own (`scilayers.uq.fit_spread_scale`'s
        ``groups``). ``None`` (default): one quantity."""
        return None

    def pinn_model(self, eval_set: EvalSet):
        """The model whose pointwise residual the PINN uses (θ_s at the prior), or
        ``None`` where a PINN does not apply."""
        from ..baselines import pinn_applicable

        model = self.physics(eval_set).model
        return model if pinn_applicable(model) else None

    # -- study-specific baselines ---------------------------------------------------------
    def extra_methods(self) -> dict[str, str]:
        """The study's own baselines beside the standard methods: name → label (e.g. a
        polynomial closure fitted to the true subgrid tendency, a diurnal climatology).
        Each is run by `extra_method` for every seed and evaluated like the others."""
        return {}

    def extra_method(self, name: str, problem: Problem, seed: int, progress: bool):
        """Build (and train) the baseline ``name`` for ``seed``. Return a model on the
        training domain — a stepper ``(u, t) -> u``, a `Hybrid` or a `NeuralStepper`,
        moved to the other sets like the standard methods — or the forecasts directly,
        ``{set name: (batch, 1 + corr_steps, *state)}`` from each set's start."""
        raise NotImplementedError(f"the {self.name} study has no baseline {name!r}.")

    def model_metrics(self, name: str, eval_set: EvalSet, model, seed: int) -> dict:
        """Metrics of a trained model on one set beyond its forecasts (e.g. the climate
        of long free runs), keyed without the set prefix. Called for the standard methods
        and the study's baselines (not the ablations) whenever a model exists."""
        del name, eval_set, model, seed
        return {}

    def study_results(self, problem: Problem, results: dict) -> dict:
        """Extra top-level blocks of ``results.json`` (e.g. a fitted closure's
        coefficients); must not reuse the engine's keys."""
        del problem, results
        return {}

    # -- study-specific output -----------------------------------------------------------
    def extra_metrics(self, eval_set: EvalSet, pred: np.ndarray, truth: np.ndarray) -> dict:
        """Extra metrics of predictions on one set, keyed without the set prefix."""
        del eval_set, pred, truth
        return {}

    def figures(self, out: Path, results: dict, arrays: dict) -> list[dict]:
        """Draw study-specific figures into ``out/figures``; return their entries."""
        del out, results, arrays
        return []

    def targets(self, results: dict) -> list[dict]:
        """The study's targets: ``{"name", "value", "target", "pass"}``."""
        del results
        return []

    def notes(self, problem: Problem) -> list[str]:
        del problem
        return []

    def write_data(self, out: Path, progress: bool) -> str:
        """Write the study's truth to ``out`` (`scilayers data NAME`); return a summary."""
        raise NotImplementedError(f"the {self.name} study has no data command.")
