"""Independent parts of a study (each method's trainings, each UQ ensemble) on several
local worker processes.

A study's runs do not depend on one another: each is a function of the config, the truth
and its seed. On a CPU backend one XLA program keeps about one core busy (a training step
of a small hybrid is a chain of small FFTs and matmuls), so a 2-core machine finishes a
study in about half the time when two runs train at once. `run_parallel` does that with
a pool of spawned processes (JAX must not be forked once initialised): each worker builds
the study from its class and config, loads the truth from the data cache the parent has
already filled, and runs the tasks it is given. The engine hands a worker every uncached
seed of one method, trained one after another (so a method's programs compile once per
worker), each written into the run cache as it finishes; the UQ stage hands it one
method's ensemble. The study's own loops then find every result cached and go on as
before. The numbers do not depend on the worker count: the same program runs on the same
inputs (tested).

Not used in a multi-process (``--distributed``) run, where the devices of all processes
already share each step, nor on an accelerator, where one program fills the device.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import jax

#: Largest default worker count (each worker holds the truth and its own compiled programs).
MAX_AUTO_JOBS = 4

_WORKER: dict = {}


def auto_jobs() -> int:
    """Default worker count: the cores this process may use (at most `MAX_AUTO_JOBS`) on a
    CPU backend with one process; 1 otherwise."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_JOBS))


def _init_worker(cls, cfg, data_dir, cache_dir, xla_cache, x64: bool) -> None:
    jax.config.update("jax_enable_x64", x64)
    if xla_cache:
        jax.config.update("jax_compilation_cache_dir", xla_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    study = cls(cfg, data_dir=data_dir)
    _WORKER["study"] = study
    _WORKER["problem"] = study.problem(cache_dir, False)


def _call(fn: Callable, args: tuple):
    """One task in a worker: ``fn(study, problem, *args)``."""
    t0 = time.perf_counter()
    return fn(_WORKER["study"], _WORKER["problem"], *args), time.perf_counter() - t0


def run_parallel(study, tasks: list[tuple[str, Callable, tuple]], *, jobs: int,
                 cache_dir: Path | None, done: Callable[[str, object, float], None],
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
    """Run each task ``(label, fn, args)`` as ``fn(study, problem, *args)`` (``fn`` a
    module-level function, ``args`` picklable) on ``jobs`` spawned worker processes, each
    holding ``study`` rebuilt from its class and config and its problem loaded from
    ``cache_dir`` (filled by this process before). ``done(label, result, seconds)`` is
    called here as each task finishes, in the order they finish. Tasks should write what
    they make to disk themselves (a killed study then keeps what finished). The first
    failure stops the pool and is raised here."""
    if not tasks:
        return
    jobs = max(1, min(jobs, len(tasks)))
    ctx = multiprocessing.get_context("spawn")
    xla_cache = jax.config.jax_compilation_cache_dir
    init = (type(study), study.cfg, study.data_dir, cache_dir, xla_cache,
            bool(jax.config.jax_enable_x64))  # fmt: skip
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=init) as pool:  # fmt: skip
        pending = {pool.submit(_call, fn, args): label for label, fn, args in tasks}
        try:
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    label = pending.pop(fut)
                    result, seconds = fut.result()  # a worker's error is raised here
                    done(label, result, seconds)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
