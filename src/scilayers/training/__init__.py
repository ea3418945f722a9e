"""Training: `fit` with joint / staged / fixed strategies, checkpoints and resume."""

from ._config import STRATEGIES as STRATEGIES
from ._config import TrainConfig as TrainConfig
from ._fit import FitResult as FitResult
from ._fit import TrainingDiverged as TrainingDiverged
from ._fit import fit as fit
from ._fit import load_checkpoint as load_checkpoint
from ._fit import make_loss as make_loss
from ._fit import make_train_step as make_train_step
from ._fit import sample_windows as sample_windows
from ._fit import save_checkpoint as save_checkpoint
from ._fit import stages_for as stages_for
