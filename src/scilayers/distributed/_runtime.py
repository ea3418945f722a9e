"""Multi-process start-up (`initialize`) and the few decisions processes must share.

Every process runs the same program (JAX's multi-controller model); they meet in the
collectives XLA inserts. Only process 0 writes (`is_writer`); a decision that depends on
files (is a run cached? is there a checkpoint?) is taken by process 0 and broadcast
(`agree`), so no process skips work another one does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

#: Environment variables read by `initialize` (JAX's own ``JAX_COORDINATOR_ADDRESS``,
#: ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are read when these are unset).
ENV_COORDINATOR = "SCILAYERS_COORDINATOR"
ENV_NUM_PROCESSES = "SCILAYERS_NUM_PROCESSES"
ENV_PROCESS_ID = "SCILAYERS_PROCESS_ID"
_JAX_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_OURS = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


@dataclass(frozen=True)
class ClusterSpec:
    """What the environment says about the processes of this run: ``source`` (``"env"``
    for `ENV_COORDINATOR` & co., ``"jax-env"`` for ``JAX_*``, or the name of a cluster JAX
    detects, e.g. ``"slurm"``), the coordinator's ``host:port``, the process count and this
    process's id (``None`` where JAX's cluster detection fills them in)."""

    source: str
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None


@dataclass(frozen=True)
class Runtime:
    """The run as `initialize` set it up: its `ClusterSpec` (``None``: a single process),
    this process's index, the process count and the device counts."""

    spec: ClusterSpec | None
    process_index: int
    process_count: int
    device_count: int
    local_device_count: int

    @property
    def multi_process(self) -> bool:
        return self.process_count > 1


_STATE: dict[str, Runtime] = {}


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer.") from None


def _explicit(names: tuple[str, str, str], source: str) -> ClusterSpec | None:
    values = [os.environ.get(n) for n in names]
    if all(v is None for v in values):
        return None
    missing = [n for n, v in zip(names, values, strict=True) if v is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not set: a multi-process run needs all of {', '.join(names)} "
            f"(coordinator host:port, process count, this process's id 0..count-1)."
        )
    coordinator, n, pid = values[0], _int(names[1], values[1]), _int(names[2], values[2])
    if ":" not in coordinator:
        raise ValueError(f"{names[0]}={coordinator!r} must be host:port, e.g. 10.0.0.1:12345.")
    if n < 1 or not 0 <= pid < n:
        raise ValueError(f"{names[2]}={pid} must lie in 0..{n - 1} ({names[1]}={n}).")
    return ClusterSpec(source, coordinator, n, pid)


def _detected_cluster() -> tuple[str, int] | None:
    """``(name, process count)`` of a cluster that JAX's own detectors find (SLURM, Open
    MPI, Kubernetes, ...), or ``None``."""
    try:  # JAX's detectors; not public API, so a failure falls back to SLURM's variables
        from jax._src import clusters

        for env in clusters.ClusterEnv._cluster_types:
            if getattr(env, "opt_in_only_method", False) or not env.is_env_present():
                continue
            return str(getattr(env, "name", "") or env.__name__), int(env.get_process_count())
    except Exception:  # noqa: BLE001 - any change inside JAX: use the documented variables
        names = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                 "SLURM_LOCALID")  # fmt: skip
        if all(n in os.environ for n in names):
            return "slurm", _int("SLURM_NTASKS", os.environ["SLURM_NTASKS"])
    return None


def cluster_spec() -> ClusterSpec | None:
    """The multi-process layout the environment describes, or ``None`` for one process.

    In order: `ENV_COORDINATOR`, `ENV_NUM_PROCESSES`, `ENV_PROCESS_ID` (all three, or
    none); JAX's ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
    a cluster JAX detects (SLURM: ``SLURM_JOB_ID``, ``SLURM_NTASKS``, ``SLURM_PROCID``, ...;
    the coordinator is the job's first node) with more than one task. A SLURM job of one
    task is a single process that sees all its node's devices: no start-up is needed (and
    JAX's SLURM set-up would restrict it to one GPU)."""
    spec = _explicit(_OURS, "env") or _explicit(_JAX_ENV, "jax-env")
    if spec is not None:
        return spec
    detected = _detected_cluster()
    if detected is None or detected[1] <= 1:
        return None
    return ClusterSpec(detected[0], None, None, None)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Runtime:
    """Start this process's part of a multi-process run (``jax.distributed.initialize``)
    from the arguments or the environment (`cluster_spec`); a single process when neither
    describes one. Call it first, before anything else uses JAX; calling it again returns
    the same `Runtime`.

    After it, ``jax.devices()`` lists the devices of every process, `batch_mesh` spans
    them, and `is_writer` is true on process 0 only. On CPU, cross-process collectives
    use gloo.

    **Arguments:** `coordinator_address` (``host:port`` of process 0), `num_processes`,
    `process_id`: all three or none; they take precedence over the environment.

    **Returns:** the `Runtime` (process index and count, device counts).
    """
    if "runtime" in _STATE:
        return _STATE["runtime"]
    given = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError(
                "initialize needs coordinator_address, num_processes and process_id together "
                "(or none of them, to read the environment)."
            )
        spec = ClusterSpec("arguments", coordinator_address, int(num_processes), int(process_id))
    else:
        spec = cluster_spec()
    if spec is not None:
        if jax.distributed.is_initialized():
            log.info("jax.distributed was already initialised; using it")
        else:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            kwargs = {}
            if spec.coordinator_address is not None:  # else JAX's cluster detection
                kwargs = {
                    "coordinator_address": spec.coordinator_address,
                    "num_processes": spec.num_processes,
                    "process_id": spec.process_id,
                }
            jax.distributed.initialize(**kwargs)
    runtime = Runtime(
        spec=spec,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
    )
    _STATE["runtime"] = runtime
    log.info(
        "scilayers.distributed: process %d of %d, %d device(s) (%d local)",
        runtime.process_index, runtime.process_count, runtime.device_count,
        runtime.local_device_count,
    )  # fmt: skip
    return runtime


def initialized() -> bool:
    """Whether this process called `initialize` (then training in the study engine is
    sharded over every device: ``TrainConfig.shard``)."""
    return "runtime" in _STATE


def is_writer() -> bool:
    """Whether this process writes results, reports and checkpoints: process 0 only (every
    process when there is one)."""
    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """Process 0's ``flag``, on every process (a broadcast; with one process, ``flag``).
    For decisions that read files, which processes could otherwise see at different
    moments: a collective, so every process must call it at the same point."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))
