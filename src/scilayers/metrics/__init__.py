"""Metrics: rollout errors, correlation time, physics residual, θ_s error, summaries."""

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
