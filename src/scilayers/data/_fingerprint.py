"""The code a cached synthetic truth depends on, as a hash for its cache key.

A chaotic truth amplifies round-off: a solver whose operations are merely reordered (a
faster ETDRK4 step, another fusion) produces a different — equally valid — trajectory
after a few dozen Lyapunov times. A cache keyed on the config alone would then serve a
truth the current code does not produce, and "every result is a function of config +
seed" would hold only on machines that happen to hold the old file. So the key also
hashes the source of the layers that generate truth: `models`, `solvers`, `data`, and
the study's own module (or package).
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
_LAYERS = ("models", "solvers", "data")


@functools.cache
def _digest(path: Path) -> str:
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path.parent).as_posix().encode())  # same wherever installed
        h.update(f.read_bytes())
    return h.hexdigest()


def code_fingerprint(module: str | None = None) -> str:
    """A 16-hex-digit hash of the truth-generating source: `scilayers.models`, `solvers`,
    `data`, and ``module`` (a module name such as ``"scilayers.experiments.ks"``; a
    package is hashed whole)."""
    parts = [_digest(_PACKAGE / name) for name in _LAYERS]
    if module is not None:
        file = Path(sys.modules[module].__file__).resolve()
        parts.append(_digest(file.parent if file.name == "__init__.py" else file))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
