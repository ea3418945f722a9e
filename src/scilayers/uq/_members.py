"""Ensemble members as one stacked model: stacking, indexing, θ_s draws and θ_s spread."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree

from ..params import LogNormal, Normal, Param, is_param, named, scientific
from ..params import values as param_values

THETA_INIT = ("prior", "jitter", "keep")


def stack_members(models: Sequence[PyTree]) -> PyTree:
    """One model whose every array has a leading member axis, from models of one structure
    (the same class and static fields; only array values differ). `member` undoes it;
    `jax.vmap` / ``eqx.filter_vmap`` map over it."""
    models = list(models)
    if not models:
        raise ValueError("stack_members needs at least one model.")
    parts = [eqx.partition(m, eqx.is_array) for m in models]
    first_static = parts[0][1]
    for i, (_, static) in enumerate(parts[1:], start=1):
        same = jtu.tree_structure(static) == jtu.tree_structure(first_static) and bool(
            eqx.tree_equal(static, first_static)
        )
        if not same:
            raise ValueError(
                f"ensemble member {i} differs from member 0 in its structure or static fields "
                f"(class, grid, dt, network sizes, functions); members may differ only in "
                f"array values: build them all with the same function and settings."
            )
    arrays = jtu.tree_map(lambda *xs: jnp.stack(xs), *[a for a, _ in parts])
    return eqx.combine(arrays, first_static)


def count_members(members: PyTree) -> int:
    """The number of members of a stacked model (the leading axis of its arrays)."""
    sizes = {int(jnp.shape(x)[0]) for x in jtu.tree_leaves(members) if eqx.is_array(x)
             and jnp.ndim(x) > 0}  # fmt: skip
    if len(sizes) != 1:
        raise ValueError(
            f"not a stacked ensemble: its arrays have leading axes of sizes {sorted(sizes)}; "
            f"build one with stack_members, init_members or train_ensemble."
        )
    return sizes.pop()


def member(members: PyTree, i: int) -> PyTree:
    """Member ``i`` of a stacked model, as an ordinary model."""
    m = count_members(members)
    if not -m <= i < m:
        raise ValueError(f"member index {i} is out of range for an ensemble of {m} members.")
    return jtu.tree_map(lambda x: x[i] if eqx.is_array(x) else x, members)


def _sample_prior(prior, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
    z = jax.random.normal(key, shape)
    if isinstance(prior, Normal):
        return prior.mean + prior.std * z
    if isinstance(prior, LogNormal):
        return prior.median * jnp.exp(prior.sigma * z)
    raise ValueError(
        f"cannot draw from a prior of type {type(prior).__name__}; use theta='jitter' (a "
        f"perturbation of the unconstrained value) or a Normal/LogNormal prior."
    )


def _draw_param(p: Param, key: PRNGKeyArray, how: str, jitter: float) -> Param:
    if p.fixed or how == "keep":
        return p
    shape = jnp.shape(p.raw)
    if how == "prior" and p.prior is not None:
        for attempt in range(100):
            value = _sample_prior(p.prior, jax.random.fold_in(key, attempt), shape)
            if p.constraint.contains(np.asarray(value)):
                return eqx.tree_at(lambda q: q.raw, p, p.constraint.inverse(value))
        raise ValueError(
            f"Param {p.name!r}: 100 draws from its prior {p.prior} all fell outside its "
            f"constraint ({p.constraint.describe()}); give it a prior inside the constraint "
            f"(e.g. LogNormal for a positive Param) or use theta='jitter'."
        )
    raw = p.raw + jitter * jax.random.normal(key, shape, dtype=jnp.result_type(p.raw))
    return eqx.tree_at(lambda q: q.raw, p, raw)


def draw_theta(
    model: PyTree, key: PRNGKeyArray, theta: str = "prior", jitter: float = 0.1
) -> PyTree:
    """``model`` with new initial values of its free `Param`s (θ_s), for an ensemble member.

    **Arguments:**

    - `model`: any model holding `Param`s.
    - `key`: the PRNG key of the draws (each Param gets its own, folded from this one).
    - `theta`: ``"prior"`` (default): a free Param with a ``Normal`` or ``LogNormal`` prior
      is drawn from it (a draw outside the constraint is redrawn), one without a prior is
      jittered as with ``"jitter"``; ``"jitter"``: the unconstrained value is moved by
      ``jitter · N(0, 1)`` (for a positive Param a relative change of about ``jitter``);
      ``"keep"``: unchanged. Fixed Params are never changed.
    - `jitter`: the standard deviation of the jitter, in unconstrained units (default 0.1).
    """
    if theta not in THETA_INIT:
        raise ValueError(f"unknown theta={theta!r}; choose one of {THETA_INIT}.")
    if not (np.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter}.")
    leaves, treedef = jtu.tree_flatten(model, is_leaf=is_param)
    new = [
        _draw_param(x, jax.random.fold_in(key, i), theta, jitter) if is_param(x) else x
        for i, x in enumerate(leaves)
    ]
    return jtu.tree_unflatten(treedef, new)


def init_members(
    build: Callable[[PRNGKeyArray], PyTree] | PyTree,
    key: PRNGKeyArray,
    members: int,
    *,
    theta: str = "prior",
    jitter: float = 0.1,
) -> PyTree:
    """The initial members of a deep ensemble, stacked (`stack_members`): each with its own
    network initialisation θ_ml and its own θ_s draw (`draw_theta`).

    **Arguments:**

    - `build`: a function ``key -> model`` that builds one member with fresh network
      weights from ``key`` (e.g. ``lambda k: sl.Hybrid(step, sl.nn.MLP(..., key=k))``); or
      a model, which every member then starts from (members differ only in θ_s).
    - `key`: the ensemble's PRNG key; member ``i`` uses ``jax.random.fold_in(key, i)``.
    - `members`: the ensemble size ``M`` (>= 1).
    - `theta`, `jitter`: how each member's θ_s starts (see `draw_theta`; default: drawn
      from the Params' priors).

    Members are built one by one (cheap); training them (`train_ensemble`) is one compiled
    program over all members.
    """
    if not (isinstance(members, int | np.integer) and members >= 1):
        raise ValueError(f"members must be a positive integer, got {members!r}.")
    is_model = isinstance(build, eqx.Module)
    if not is_model and not callable(build):
        raise ValueError(
            f"build must be a function key -> model or a model, got {type(build).__name__}."
        )
    out = []
    for i in range(int(members)):
        kb, kt = jax.random.split(jax.random.fold_in(key, i))
        model = build if is_model else build(kb)
        out.append(draw_theta(model, kt, theta, jitter))
    return stack_members(out)


def theta_vector(model: PyTree) -> tuple[Array, Callable[[Array], PyTree]]:
    """``(raw, rebuild)``: the unconstrained values of the free `Param`s of ``model`` as one
    flat vector (in tree order), and the function that puts a vector back, returning the
    model with those raw values. The coordinates in which `unscented_rollout` and
    `posterior_theta` work."""
    theta_s, rest = eqx.partition(model, scientific(model), is_leaf=is_param)
    flat, unravel = ravel_pytree(theta_s)

    def rebuild(vec: Array) -> PyTree:
        return eqx.combine(unravel(vec), rest, is_leaf=is_param)

    return flat, rebuild


def theta_names(model: PyTree) -> list[str]:
    """One label per entry of `theta_vector`: the Param's name (`scilayers.params.named`),
    with ``[i]`` for the entries of an array Param."""
    out = []
    for name, p in named(model).items():
        if p.fixed:
            continue
        size = int(np.size(p.raw))
        out += [name] if np.ndim(p.raw) == 0 else [f"{name}[{i}]" for i in range(size)]
    return out


def theta_gaussian(members: PyTree) -> tuple[Array, Array]:
    """``(mean, cov)`` of the unconstrained θ_s vector (`theta_vector`) across the members
    of a stacked ensemble (unbiased covariance; needs 2 or more members): the θ_s
    uncertainty an ensemble implies, for `unscented_rollout`."""
    m = count_members(members)
    if m < 2:
        raise ValueError(f"theta_gaussian needs at least 2 members, got {m}.")
    vecs = jax.vmap(lambda i: theta_vector(member_at(members, i))[0])(jnp.arange(m))
    return jnp.mean(vecs, axis=0), jnp.atleast_2d(jnp.cov(vecs, rowvar=False))


def member_at(members: PyTree, i) -> PyTree:
    """Member ``i`` (a traced index is fine, e.g. under ``jax.vmap``) of a stacked model."""
    return jtu.tree_map(lambda x: x[i] if eqx.is_array(x) else x, members)


def theta_spread(members: PyTree) -> dict[str, dict]:
    """The spread of θ_s across the members of a stacked ensemble, by Param name (as in
    `scilayers.params.named`), in physical units: ``{"mean", "std", "members"}`` (std with
    ``ddof=1``, 0 for one member); plain floats, or lists for an array Param (JSON-ready).
    Fixed Params are left out."""
    count_members(members)
    vals = param_values(members)
    out = {}
    for name, p in named(members).items():
        if p.fixed:
            continue
        v = np.asarray(vals[name], dtype=np.float64)
        std = v.std(axis=0, ddof=1) if v.shape[0] > 1 else np.zeros(v.shape[1:])
        out[name] = {"mean": v.mean(axis=0).tolist(), "std": std.tolist(), "members": v.tolist()}
    return out
