"""Uncertainty: deep ensembles trained as one vectorised program, heteroscedastic heads,
propagation over rollouts with temporally correlated model error (AR(1) ensembles and the
unscented transform), a Bayesian posterior over θ_s by NUTS through the solver, and the
``uq`` block of ``results.json``. Calibration metrics live in `scilayers.metrics`."""

from ._bayes import Posterior as Posterior
from ._bayes import SBCResult as SBCResult
from ._bayes import posterior_theta as posterior_theta
from ._bayes import simulation_based_calibration as simulation_based_calibration
from ._block import uq_block as uq_block
from ._ensemble import EnsembleResult as EnsembleResult
from ._ensemble import ensemble_rollout as ensemble_rollout
from ._ensemble import train_ensemble as train_ensemble
from ._hetero import Heteroscedastic as Heteroscedastic
from ._hetero import nll_loss as nll_loss
from ._hetero import variance_split as variance_split
from ._members import count_members as count_members
from ._members import draw_theta as draw_theta
from ._members import init_members as init_members
from ._members import member as member
from ._members import stack_members as stack_members
from ._members import theta_gaussian as theta_gaussian
from ._members import theta_names as theta_names
from ._members import theta_spread as theta_spread
from ._members import theta_vector as theta_vector
from ._propagation import AR1 as AR1
from ._propagation import Forecast as Forecast
from ._propagation import Unscented as Unscented
from ._propagation import compare_propagation as compare_propagation
from ._propagation import ensemble_forecast as ensemble_forecast
from ._propagation import fit_ar1 as fit_ar1
from ._propagation import one_step_residuals as one_step_residuals
from ._propagation import unscented_rollout as unscented_rollout
from ._recalibrate import SpreadScale as SpreadScale
from ._recalibrate import fit_spread_scale as fit_spread_scale
