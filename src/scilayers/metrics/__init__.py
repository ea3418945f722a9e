"""Metrics: rollout errors, correlation time, physics residual, θ_s error, summaries;
calibration of probabilistic predictions (coverage, width, CRPS, NLL, spread–skill)."""

from ._calibration import CALIBRATION_KEYS as CALIBRATION_KEYS
from ._calibration import EnsemblePrediction as EnsemblePrediction
from ._calibration import GaussianPrediction as GaussianPrediction
from ._calibration import as_gaussian as as_gaussian
from ._calibration import calibration as calibration
from ._calibration import crps as crps
from ._calibration import crps_ensemble as crps_ensemble
from ._calibration import crps_gaussian as crps_gaussian
from ._calibration import gaussian_nll as gaussian_nll
from ._calibration import interval as interval
from ._calibration import moments as moments
from ._calibration import mpiw as mpiw
from ._calibration import nll as nll
from ._calibration import picp as picp
from ._calibration import pit as pit
from ._calibration import reliability as reliability
from ._calibration import spread_skill as spread_skill
from ._lyapunov import lyapunov_exponent as lyapunov_exponent
from ._metrics import correlation as correlation
from ._metrics import correlation_time as correlation_time
from ._metrics import diverged_fraction as diverged_fraction
from ._metrics import mse_by_step as mse_by_step
from ._metrics import normalised as normalised
from ._metrics import physics_residual as physics_residual
from ._metrics import relative_error as relative_error
from ._metrics import rollout_mse as rollout_mse
from ._metrics import summary as summary
