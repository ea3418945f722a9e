"""Data parallelism over devices and hosts: a one-axis mesh over ``jax.devices()``, batches
of trajectories and ensemble members split along it, parameters replicated, gradient
reductions left to the compiler; multi-process start-up (`initialize`) from the standard
environment (coordinator, process count, process id; SLURM), and process 0 as the only
writer (`is_writer`).

Depends on nothing else in scilayers: training (``TrainConfig.shard``), ensembles and
truth generation use it."""

from ._mesh import AXIS as AXIS
from ._mesh import batch_mesh as batch_mesh
from ._mesh import batch_sharding as batch_sharding
from ._mesh import check_divisible as check_divisible
from ._mesh import constrain_batch as constrain_batch
from ._mesh import devices_summary as devices_summary
from ._mesh import local_mesh as local_mesh
from ._mesh import pad_batch as pad_batch
from ._mesh import replicate as replicate
from ._mesh import replicated_sharding as replicated_sharding
from ._mesh import shard_batch as shard_batch
from ._mesh import shard_members as shard_members
from ._mesh import sharded_map as sharded_map
from ._mesh import to_host as to_host
from ._mesh import to_local as to_local
from ._mesh import unpad as unpad
from ._runtime import ENV_COORDINATOR as ENV_COORDINATOR
from ._runtime import ENV_NUM_PROCESSES as ENV_NUM_PROCESSES
from ._runtime import ENV_PROCESS_ID as ENV_PROCESS_ID
from ._runtime import ClusterSpec as ClusterSpec
from ._runtime import Runtime as Runtime
from ._runtime import agree as agree
from ._runtime import cluster_spec as cluster_spec
from ._runtime import initialize as initialize
from ._runtime import initialized as initialized
from ._runtime import is_writer as is_writer
