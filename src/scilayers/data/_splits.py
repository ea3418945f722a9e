"""Seeded train/val/test splits over trajectories."""

from __future__ import annotations

import numpy as np
import xarray as xr

SPLITS = ("train", "val", "test")

SPLIT_RULE = (
    "perm = numpy.random.default_rng(seed).permutation(N); the first round(train_fraction*N) "
    "trajectories of perm are 'train', the next round(val_fraction*N) are 'val', the rest "
    "'test'"
)


def assign_splits(
    count: int, seed: int, train_fraction: float = 0.8, val_fraction: float = 0.1
) -> np.ndarray:
    """Label ``count`` trajectories ``"train"``, ``"val"`` or ``"test"`` by a seeded permutation.

    The rule (also stored in every dataset's ``split_rule`` attribute): draw
    ``perm = numpy.random.default_rng(seed).permutation(count)``; the first
    ``round(train_fraction · count)`` entries of ``perm`` are train, the next
    ``round(val_fraction · count)`` are val and the remaining ones test. The labels depend only
    on ``(count, seed, fractions)``, never on how the trajectories were batched.

    **Returns:** an array of ``count`` strings, indexed by trajectory.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    if not (0 <= train_fraction and 0 <= val_fraction and train_fraction + val_fraction <= 1):
        raise ValueError(
            f"need 0 <= train_fraction, val_fraction and train + val <= 1, got "
            f"train={train_fraction}, val={val_fraction}."
        )
    n_train = int(round(train_fraction * count))
    n_val = min(int(round(val_fraction * count)), count - n_train)
    perm = np.random.default_rng(seed).permutation(count)
    labels = np.empty(count, dtype="<U5")
    labels[perm[:n_train]] = "train"
    labels[perm[n_train : n_train + n_val]] = "val"
    labels[perm[n_train + n_val :]] = "test"
    return labels


def select_split(ds: xr.Dataset, split: str) -> xr.Dataset:
    """The trajectories of ``ds`` labelled ``split`` (``"train"``, ``"val"`` or ``"test"``).

    Only the in-domain variables are filtered (they share the ``trajectory`` dimension); the
    out-of-domain group ``u_ood`` is kept whole, since it is never used for tuning.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
    if "split" not in ds.coords and "split" not in ds:
        raise ValueError(
            "the dataset has no 'split' variable; create it with scilayers.data.generate_ks "
            "or `scilayers data ks`."
        )
    return ds.isel(trajectory=np.flatnonzero(np.asarray(ds["split"].values) == split))
