"""Training: `fit` with joint / staged / fixed strategies, checkpoints and resume; the
pieces of one training step for callers that drive it themselves (benchmarks, ensembles);
`online_fit`, which updates a model on a sliding window as observations arrive."""

from ._config import EXECUTION_FIELDS as EXECUTION_FIELDS
from ._config import MEMORY_CHOICES as MEMORY_CHOICES
from ._config import STRATEGIES as STRATEGIES
from ._config import TrainConfig as TrainConfig
from ._fit import EXTENDABLE as EXTENDABLE
from ._fit import FitResult as FitResult
from ._fit import Stage as Stage
from ._fit import Trainable as Trainable
from ._fit import TrainingDiverged as TrainingDiverged
from ._fit import Trajectories as Trajectories
from ._fit import combine_trainable as combine_trainable
from ._fit import compiled_train_step as compiled_train_step
from ._fit import fit as fit
from ._fit import init_opt_state as init_opt_state
from ._fit import load_checkpoint as load_checkpoint
from ._fit import loss_weights as loss_weights
from ._fit import make_loss as make_loss
from ._fit import make_train_step as make_train_step
from ._fit import memory_plan as memory_plan
from ._fit import read_checkpoint_meta as read_checkpoint_meta
from ._fit import sample_timed_windows as sample_timed_windows
from ._fit import sample_windows as sample_windows
from ._fit import save_checkpoint as save_checkpoint
from ._fit import split_trainable as split_trainable
from ._fit import stages_for as stages_for
from ._hessian import ThetaHessian as ThetaHessian
from ._hessian import theta_hessian as theta_hessian
from ._memory import MemoryPlan as MemoryPlan
from ._memory import plan_memory as plan_memory
from ._memory import rollout_memory as rollout_memory
from ._memory import step_memory as step_memory
from ._online import ONLINE_STRATEGIES as ONLINE_STRATEGIES
from ._online import OnlineConfig as OnlineConfig
from ._online import OnlineResult as OnlineResult
from ._online import online_fit as online_fit
