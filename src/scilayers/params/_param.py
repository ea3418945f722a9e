"""`Param`: a learnable scientific parameter, and filters that split a model by role."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from ._constraints import AbstractConstraint, Positive, Unconstrained
from ._priors import AbstractPrior


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Param(eqx.Module):
    """A learnable scientific parameter θ_s.

    The value is stored unconstrained in ``raw`` and resolved with :attr:`value` inside the
    differentiated function, so gradients and optimiser steps act on the unconstrained
    coordinate and the physical value always satisfies its constraint.

    **Arguments:**

    - `value`: the initial physical value (scalar or array).
    - `constraint`: ``Positive()``, ``Bounded(lo, hi)``, ``Unconstrained()`` (default) or the
      shorthand strings ``"positive"``/``None``.
    - `units`: physical units, for reports (e.g. ``"m^2/s"``).
    - `prior`: an optional prior (``Normal``, ``LogNormal``) on the physical value.
    - `fixed`: if true, the parameter is never trained (it lands in the frozen group).
    - `name`: optional display name; by default the attribute name in the model.
    """

    raw: Array
    constraint: AbstractConstraint = eqx.field(static=True)
    units: str = eqx.field(static=True)
    prior: AbstractPrior | None = eqx.field(static=True)
    fixed: bool = eqx.field(static=True)
    name: str | None = eqx.field(static=True)

    def __init__(
        self,
        value: Any,
        constraint: AbstractConstraint | str | None = None,
        *,
        units: str = "",
        prior: AbstractPrior | None = None,
        fixed: bool = False,
        name: str | None = None,
    ):
        if constraint is None:
            constraint = Unconstrained()
        elif constraint == "positive":
            constraint = Positive()
        elif isinstance(constraint, str):
            raise ValueError(
                f"unknown constraint {constraint!r}; use Positive(), Bounded(lo, hi) or None."
            )
        value = jnp.asarray(value, dtype=jnp.result_type(float))
        if _is_concrete(value) and not constraint.contains(np.asarray(value)):
            label = f" {name!r}" if name else ""
            raise ValueError(
                f"Param{label} value {np.asarray(value)} violates its constraint "
                f"({constraint.describe()}); pass a value inside it or change the constraint."
            )
        self.raw = constraint.inverse(value)
        self.constraint = constraint
        self.units = units
        self.prior = prior
        self.fixed = fixed
        self.name = name

    @property
    def value(self) -> Array:
        """The physical value, resolved from ``raw`` through the constraint."""
        v = self.constraint.forward(self.raw)
        return jax.lax.stop_gradient(v) if self.fixed else v

    def log_prior(self) -> Array:
        """Log prior density of the current value (0 if there is no prior)."""
        if self.prior is None:
            return jnp.zeros(())
        return jnp.sum(self.prior.log_prob(self.value))

    def with_value(self, value) -> Param:
        """A copy with a new physical value (constraint, prior and units kept)."""
        return Param(
            value,
            self.constraint,
            units=self.units,
            prior=self.prior,
            fixed=self.fixed,
            name=self.name,
        )


def is_param(x) -> bool:
    """Whether ``x`` is a :class:`Param` (use as ``is_leaf`` in tree maps)."""
    return isinstance(x, Param)


def resolve(x):
    """The physical value of a `Param`, or ``x`` itself for a plain number or array."""
    return x.value if isinstance(x, Param) else x


# Packages whose modules are networks: every floating-point array inside one is θ_ml.
NETWORK_PACKAGES = ("equinox.nn", "scilayers.nn")


def as_param(x, constraint: AbstractConstraint | str | None = None, **kwargs) -> Param:
    """``x`` as a `Param`: a `Param` is returned unchanged (``constraint`` and ``kwargs``
    are then ignored), anything else becomes ``Param(x, constraint, **kwargs)``.

    What a model's ``__init__`` uses so that a coefficient can be given either as a number
    (learned, with the model's default constraint) or as a ready `Param` (e.g.
    ``Param(0.9, fixed=True)``)."""
    return x if is_param(x) else Param(x, constraint, **kwargs)


def is_network(x) -> bool:
    """Whether ``x`` is a network module by class: an `eqx.Module` defined in ``equinox.nn``
    or ``scilayers.nn`` (see `network` for the whole rule)."""
    if not isinstance(x, eqx.Module) or is_param(x):
        return False
    module = type(x).__module__
    return any(module == p or module.startswith(p + ".") for p in NETWORK_PACKAGES)


def _field_of(path) -> str | None:
    return path[0].name if path and isinstance(path[0], jtu.GetAttrKey) else None


def _roles(node, in_net: bool = False, float_owners: tuple[type, ...] = ()):
    """``node`` with every leaf replaced by its role (a `Param` counts as one leaf):
    ``"scientific"``, ``"network"``, ``"frozen"``, or ``"plain"`` for a frozen
    floating-point leaf that looks like it was meant to be learned (an inexact array outside
    `Param`s and networks, or a Python float held directly by an instance of
    ``float_owners``)."""
    if is_param(node):
        return "frozen" if node.fixed else "scientific"
    in_net = in_net or is_network(node)
    is_module = isinstance(node, eqx.Module)
    net_fields = tuple(getattr(type(node), "network_fields", ())) if is_module else ()
    owns_floats = is_module and bool(float_owners) and isinstance(node, float_owners)

    def role(path, x):
        inside = in_net or _field_of(path) in net_fields
        if is_param(x):
            return "frozen" if x.fixed else "scientific"
        if isinstance(x, eqx.Module):
            return _roles(x, inside, float_owners)
        if eqx.is_inexact_array(x):
            return "network" if inside else "plain"
        if isinstance(x, float) and owns_floats and not inside and len(path) == 1:
            return "plain"
        return "frozen"

    return jtu.tree_map_with_path(
        role, node, is_leaf=lambda x: x is not node and isinstance(x, eqx.Module)
    )


def _spec(model: PyTree, role: str) -> PyTree:
    roles = ("frozen", "plain") if role == "frozen" else (role,)
    return jtu.tree_map(lambda r: r in roles, _roles(model))


def scientific(model: PyTree) -> PyTree:
    """Filter spec selecting the raw values of free `Param`s (θ_s)."""
    return _spec(model, "scientific")


def network(model: PyTree) -> PyTree:
    """Filter spec selecting the weights of networks (θ_ml): the floating-point arrays
    inside a network module and nothing else.

    A network module is an instance of a class from ``equinox.nn`` or ``scilayers.nn``
    (`is_network`), or anything held in a field that its owner declares as a network with
    the class attribute ``network_fields`` (``Hybrid`` and ``NeuralStepper`` declare
    ``network_fields = ("net",)``, so a custom network passed as ``net`` is θ_ml). A
    floating-point array anywhere else (a plain ``jnp`` array stored in a model) is
    frozen: wrap it in ``Param(...)`` to learn it as θ_s, or declare its field in
    ``network_fields`` to train it as a network weight. `unlearned` lists such arrays, and
    `fit` warns about them.
    """
    return _spec(model, "network")


def frozen(model: PyTree) -> PyTree:
    """Filter spec selecting everything else: fixed `Param`s, floating-point arrays outside
    `Param`s and networks (see `network`), integers, non-arrays."""
    return _spec(model, "frozen")


def unlearned(model: PyTree, float_owners: tuple[type, ...] = ()) -> list[str]:
    """Dotted paths of the floating-point leaves of ``model`` that no group trains although
    they look like coefficients: inexact arrays outside `Param`s and networks (see
    `network`), and Python floats held directly as fields by an instance of one of
    ``float_owners`` (`fit` passes the scientific model class). Each is frozen; wrap it in
    ``Param(...)`` to learn it or ``Param(..., fixed=True)`` to say it is a constant."""
    flat = jtu.tree_flatten_with_path(_roles(model, float_owners=float_owners))[0]
    return [".".join(_key_name(k) for k in path) or "<root>" for path, r in flat if r == "plain"]


def partition(model: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """Split ``model`` into ``(theta_s, theta_ml, frozen)``; `combine` undoes it.

    Every leaf lands in exactly one of the three trees (the others hold ``None`` there).
    """
    theta_s, rest = eqx.partition(model, scientific(model), is_leaf=is_param)
    theta_ml, fro = eqx.partition(rest, network(model), is_leaf=is_param)
    return theta_s, theta_ml, fro


def combine(*trees: PyTree) -> PyTree:
    """Inverse of `partition`."""
    return eqx.combine(*trees, is_leaf=is_param)


def _key_name(k) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def named(model: PyTree) -> dict[str, Param]:
    """All `Param`s of ``model`` by name.

    A parameter's name is its ``name`` if set, else its attribute name; if two parameters
    would share a name, both get their full dotted path instead.
    """
    leaves = jtu.tree_flatten_with_path(model, is_leaf=is_param)[0]
    found = [(path, p) for path, p in leaves if is_param(p)]
    short = [p.name or (_key_name(path[-1]) if path else "param") for path, p in found]
    out: dict[str, Param] = {}
    for (path, p), s in zip(found, short, strict=True):
        name = s if short.count(s) == 1 else ".".join(_key_name(k) for k in path)
        out[name] = p
    return out


def values(model: PyTree) -> dict[str, Array]:
    """The resolved physical values θ_s of every `Param` in ``model``, by name."""
    return {k: p.value for k, p in named(model).items()}


def log_prior(model: PyTree) -> Array:
    """Sum of the log priors of all free `Param`s of ``model``."""
    total = jnp.zeros(())
    for p in named(model).values():
        if not p.fixed:
            total = total + p.log_prior()
    return total


def set_values(model: PyTree, **new_values) -> PyTree:
    """A copy of ``model`` with the named `Param`s set to new physical values."""
    params = named(model)
    unknown = set(new_values) - set(params)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; the model has {sorted(params)}.")
    for key, v in new_values.items():
        old = params[key]
        index = next(i for i, p in enumerate(_params(model)) if p is old)
        # `eqx.tree_at` calls `where` on a rebuilt copy of the tree, where `old` no longer
        # exists by identity; locate the parameter by its position instead.
        model = eqx.tree_at(lambda m, i=index: _params(m)[i], model, old.with_value(v))
        params = named(model)
    return model


def _params(model) -> list[Param]:
    return [x for x in jtu.tree_leaves(model, is_leaf=is_param) if is_param(x)]


def _refixed(p: Param, fixed: bool) -> Param:
    """``p`` rebuilt with ``fixed`` and its ``raw`` kept bit for bit.

    The constructor takes a physical value and validates it; going through ``p.value``
    would fail for a saturated raw (a `Bounded` raw of 40 resolves to exactly ``hi``). So
    the new Param is built at the constraint's centre (``forward(0)``, always inside it)
    and its ``raw`` then replaced.
    """
    centre = p.constraint.forward(jnp.zeros_like(p.raw))
    q = Param(centre, p.constraint, units=p.units, prior=p.prior, fixed=fixed, name=p.name)
    return eqx.tree_at(lambda q: q.raw, q, p.raw)


def fix(model: PyTree, fixed: bool = True) -> PyTree:
    """A copy of ``model`` in which every `Param` is fixed (or freed, with ``fixed=False``);
    raw values are kept bit for bit."""
    return jtu.tree_map(lambda x: _refixed(x, fixed) if is_param(x) else x, model, is_leaf=is_param)
