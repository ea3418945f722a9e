"""Session-wide test configuration: float64, strict rank promotion, seeded keys."""

import inspect
import os
from pathlib import Path

# The suite is dominated by XLA compilation of many small programs, not by running them:
# LLVM's backend optimisations off compile them about a third faster (a KS hybrid's
# training step: 4-5 s against 6.5 s at level 1 and 7.7 s at the default). A test whose
# run time dominates is marked `optimized` and compiles at level 1 instead (the README's
# example runs 324 s at level 0, 42 s at level 1, 50 s at the default). Set
# XLA_FLAGS=--xla_backend_optimization_level=N to test everything at one level. Must
# precede JAX's backend start-up (subprocesses inherit it).
# (pytest-xdist's workers inherit the flag from the controller: _SCILAYERS_SUITE_LEVEL
# says that the suite chose it, not the user)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["_SCILAYERS_SUITE_LEVEL"] = "0"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest
from hypothesis import settings

from scilayers._compile_cache import use_compilation_cache

_LEVEL_SET = "_SCILAYERS_SUITE_LEVEL" not in os.environ  # XLA_FLAGS named a level: keep it

# Numerical tests compare against closed forms and peer implementations at 1e-10 and
# below, which needs float64. Rank promotion must be explicit in library code.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Compiled programs shared across tests (and runs) by XLA's persistent cache, as the CLI
# does: many tests train the same small models. SCILAYERS_XLA_CACHE=off disables it.
use_compilation_cache(Path(__file__).resolve().parent.parent / ".pytest_cache" / "xla")

# JAX dispatch and compilation make example timings erratic; deadlines would flake.
settings.register_profile("scilayers", deadline=None, max_examples=50)
settings.load_profile("scilayers")


@pytest.fixture
def key():
    """A fixed PRNG key, so every test is reproducible."""
    return jax.random.key(20240611)


@pytest.fixture(autouse=True)
def _optimized(request, monkeypatch):
    """Tests marked `optimized` compile at backend optimisation level 1 (per compilation,
    through the compile options' overrides), the rest at the suite's level 0. Where JAX no
    longer has the hook, or XLA_FLAGS chose a level, every test compiles alike."""
    from jax._src import compiler

    hook = getattr(compiler, "get_compile_options", None)
    takes = hook is not None and "env_options_overrides" in inspect.signature(hook).parameters
    if _LEVEL_SET or not takes or request.node.get_closest_marker("optimized") is None:
        yield
        return

    def get_compile_options(*args, env_options_overrides=None, **kwargs):
        overrides = {"xla_backend_optimization_level": 1, **(env_options_overrides or {})}
        return hook(*args, env_options_overrides=overrides, **kwargs)

    monkeypatch.setattr(compiler, "get_compile_options", get_compile_options)
    yield


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: a whole-suite process otherwise
    accumulates thousands of CPU executables (each with its own memory mappings), and XLA
    crashed compiling late in the run (segfault/abort inside backend_compile)."""
    yield
    jax.clear_caches()
