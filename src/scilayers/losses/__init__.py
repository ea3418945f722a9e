"""Data, physics and prior losses."""

from ._losses import closure_magnitude as closure_magnitude
from ._losses import mse as mse
from ._losses import physics_loss as physics_loss
from ._losses import physics_of as physics_of
from ._losses import predict_windows as predict_windows
from ._losses import prior_loss as prior_loss
from ._losses import rollout_loss as rollout_loss
