"""Shared plumbing for studies: environment record, per-run cache, JSON output."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path

import jax
import numpy as np

from ..distributed import agree, is_writer


def environment() -> dict:
    from .. import __version__

    return {
        "scilayers": __version__,
        "jax": jax.__version__,
        "devices": [str(d.platform) for d in jax.devices()],
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "x64": bool(jax.config.jax_enable_x64),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        return _clean(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def save_figure(fig, path: Path, dpi: int) -> str:
    """Write a study's figure to ``path`` (``OUT/figures/NAME``) and close it; returns the
    ``file`` its entry in ``results.json["figures"]`` names (``figures/NAME``)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return f"figures/{Path(path).name}"


def write_json(path: Path, obj) -> None:
    """Atomically write ``obj`` as JSON (NaN/Inf become null); in a multi-process run only
    process 0 writes (`scilayers.distributed.is_writer`)."""
    if not is_writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(_clean(obj), f, indent=1)
    os.replace(tmp, path)


#: Config fields that say which runs a study makes and where, not what any one run
#: computes: a cached run stays valid when only these change (`config_stamp`).
_RUN_SELECTION = frozenset({
    "closure_variants", "lambda_sweep", "data_sizes", "data_methods", "data_seeds",
    "ablation_seeds", "pinn_seeds", "checkpoint_every", "uq", "uq_methods",
})  # fmt: skip


def config_stamp(cfg, *, uq: bool = False) -> str:
    """A short hash of what a cached run of ``cfg`` (a `StudyConfig`) depends on: every
    field but those of `_RUN_SELECTION`, and, for a training run (``uq=False``), but the
    ``uq_*`` fields, which only the ``--uq`` runs read."""
    d = cfg.to_dict()
    keep = {k: v for k, v in d.items()
            if k not in _RUN_SELECTION and (uq or not k.startswith("uq_"))}  # fmt: skip
    text = json.dumps(_clean(keep), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunCache:
    """Finished (run, seed) results on disk, so a killed study resumes without redoing
    them: ``DIR/runs/<name>__seed<k>.json`` (metrics) and ``.npz`` (arrays).

    With a ``stamp`` (`config_stamp`) each result records it, and a result recorded under
    another stamp is not reused — ``--resume`` after a config change (a new preset, a
    new version of a study) recomputes what the change touches instead of mixing old and
    new results. A result without a stamp (written before stamps) is reused."""

    def __init__(self, root: Path, stamp: str | None = None):
        self.root = Path(root)
        self.stamp = stamp
        self.stale: list[str] = []  # runs found under another stamp (recomputed)

    def _paths(self, name: str, seed: int):
        stem = f"{name}__seed{seed}"
        return self.root / f"{stem}.json", self.root / f"{stem}.npz"

    def get(self, name: str, seed: int):
        """The cached ``(metrics, arrays)`` of a run, or ``None``. In a multi-process run
        process 0 decides (`scilayers.distributed.agree`), so every process skips or
        recomputes the same runs; the folder must then be shared by all processes."""
        hit = self._read(name, seed)
        if not agree(hit is not None):
            return None
        if hit is None:
            raise ValueError(
                f"process {jax.process_index()} cannot read {self.root}, where process 0 found "
                f"the finished run {name!r} (seed {seed}): in a multi-process run the output "
                f"folder must be on a file system every process shares."
            )
        return hit

    def _read(self, name: str, seed: int):
        js, nz = self._paths(name, seed)
        if not (js.exists() and nz.exists()):
            return None
        try:
            metrics = json.loads(js.read_text())
            with np.load(nz) as f:
                arrays = {k: f[k] for k in f.files}
        except (json.JSONDecodeError, OSError, ValueError):
            return None  # a partial write: recompute
        found = metrics.pop("config_stamp", None) if isinstance(metrics, dict) else None
        if self.stamp is not None and found is not None and found != self.stamp:
            self.stale.append(f"{name} (seed {seed})")
            return None
        return metrics, arrays

    def put(self, name: str, seed: int, metrics: dict, arrays: dict) -> None:
        if not is_writer():  # process 0 writes for all
            return
        js, nz = self._paths(name, seed)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=nz.name + ".tmp", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, nz)
        write_json(js, metrics if self.stamp is None else {**metrics,
                                                           "config_stamp": self.stamp})
