"""Session-wide test configuration: float64, strict rank promotion, seeded keys."""

import os
from pathlib import Path

# The suite is dominated by XLA compilation of many small programs, not by running them:
# LLVM's backend optimisations off compile them about a quarter faster (measured on the
# training and rollout tests, 2 cores). Set XLA_FLAGS=--xla_backend_optimization_level=N
# to test at another level. Must precede JAX's backend start-up (subprocesses inherit it).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest
from hypothesis import settings

from scilayers._compile_cache import use_compilation_cache

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


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: a whole-suite process otherwise
    accumulates thousands of CPU executables (each with its own memory mappings), and XLA
    crashed compiling late in the run (segfault/abort inside backend_compile)."""
    yield
    jax.clear_caches()
