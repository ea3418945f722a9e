"""Sensitivities ``∂(·)/∂θ_s`` of a model or stepper, and the projection off them."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from ..params import Param, Unconstrained, is_param, named


def _free(leaf) -> bool:
    return is_param(leaf) and not leaf.fixed


def free_names(tree: PyTree) -> tuple[str, ...]:
    """Names of the free `Param` entries of ``tree``, in the order of `value_form`'s vector
    (an array `Param` ``w`` of size 3 gives ``w[0], w[1], w[2]``)."""
    out = []
    for name, p in named(tree).items():
        if p.fixed:
            continue
        size = int(jnp.size(p.raw))
        out.extend([name] if jnp.ndim(p.raw) == 0 else [f"{name}[{i}]" for i in range(size)])
    return tuple(out)


def value_form(tree: PyTree) -> tuple[Array | None, Callable[[Array], PyTree]]:
    """``(θ, rebuild)``: the physical values of the free `Param`s of ``tree`` as one flat,
    stop-gradient'ed vector, and ``rebuild(θ')``, the tree with those values replaced.

    ``rebuild`` puts each value into an unconstrained `Param` (``raw = value``), so
    derivatives of a function of ``rebuild(θ')`` are taken in physical coordinates with no
    constraint transform (a saturated `Bounded` value keeps a finite sensitivity). ``θ`` is
    ``None`` when ``tree`` has no free `Param`.
    """
    leaves, treedef = jtu.tree_flatten(tree, is_leaf=is_param)
    slots = [(i, leaf) for i, leaf in enumerate(leaves) if _free(leaf)]
    if not slots:
        return None, lambda theta: tree
    theta = jnp.concatenate([jnp.ravel(jax.lax.stop_gradient(p.value)) for _, p in slots])

    def rebuild(values: Array) -> PyTree:
        new, offset = list(leaves), 0
        for i, p in slots:
            shape = jnp.shape(p.raw)
            size = int(jnp.size(p.raw))
            value = values[offset : offset + size].reshape(shape)
            new[i] = Param(value, Unconstrained(), units=p.units, name=p.name)
            offset += size
        return jtu.tree_unflatten(treedef, new)

    return theta, rebuild


def forward_mode(tree: PyTree, reverse: bool = False) -> PyTree:
    """``tree`` with every Diffrax adjoint replaced by one that supports forward-mode
    autodiff, which sensitivities use (the default adjoints are reverse-mode only):
    ``diffrax.ForwardMode()``, or with ``reverse=True`` (the sensitivities are themselves
    differentiated in reverse mode, e.g. inside a training loss) ``diffrax.DirectAdjoint()``,
    which supports both at a higher compile cost."""

    def is_adjoint(x):
        return isinstance(x, diffrax.AbstractAdjoint)

    def swap(x):
        if not is_adjoint(x):
            return x
        return diffrax.DirectAdjoint() if reverse else diffrax.ForwardMode()

    return jtu.tree_map(swap, tree, is_leaf=is_adjoint)


def sensitivity(tree: PyTree, fn: Callable[[PyTree], Array]) -> Array | None:
    r"""``J[..., i] = ∂ fn(tree) / ∂θ_i`` over the free `Param` values ``θ`` of ``tree``.

    One forward-mode pass (``jax.jacfwd``: a batch of ``p`` JVPs sharing one primal) at
    ``θ`` held fixed: no gradient flows from ``J`` back to θ_s (see `value_form`);
    gradients through the other inputs of ``fn`` (the state) are kept. Shape
    ``(*fn_output, p)``; ``None`` when ``tree`` has no free `Param`.
    """
    theta, rebuild = value_form(tree)
    if theta is None:
        return None
    return jax.jacfwd(lambda th: fn(rebuild(th)))(theta)


def _removal(jw: Array, gw: Array, eps: float | None) -> Array:
    """Coefficients ``c`` with ``gw − jw c`` the regularised, refined least-squares residual
    of the real vector ``gw`` against the columns of the real matrix ``jw`` (N, p)."""
    p = jw.shape[-1]
    dtype = jnp.result_type(gw, jw)
    eps = float(np.sqrt(np.finfo(dtype).eps)) if eps is None else float(eps)
    norm = jnp.sqrt(jnp.sum(jw**2, axis=0) + float(np.finfo(dtype).tiny))
    q = jw / norm[None, :]
    factor = jsl.cho_factor(q.T @ q + eps * jnp.eye(p, dtype=dtype))
    c1 = jsl.cho_solve(factor, q.T @ gw)
    c2 = jsl.cho_solve(factor, q.T @ (gw - q @ c1))  # one step of iterative refinement
    return (c1 + c2) / norm


def orthogonalize(g: Array, jac: Array | None, eps: float | None = None) -> Array:
    r"""``g`` without its least-squares component along the columns ``J_i`` of ``jac``:

    $$g_\perp = g - Q\,(Q^\top Q + \varepsilon I)^{-1} Q^\top g,\qquad
    Q_{:,i} = J_i / \lVert J_i \rVert,$$

    applied twice (one step of iterative refinement). Normalising the columns makes the
    projection invariant to the units and the size of each θ_i and of the state (the Gram
    matrix ``QᵀQ`` has unit diagonal, so ``trace(QᵀQ)/p = 1`` and ``ε`` is relative). The
    default ``ε = √(machine epsilon)`` (1.5e-8 in float64, 3.5e-4 in float32) keeps the
    solve well posed when two sensitivities are (nearly) collinear, e.g. redundant θ_s;
    after the refinement a direction whose Gram eigenvalue is ``λ`` keeps a fraction
    ``(ε/(λ+ε))²`` of its component, i.e. ``⟨g_⊥, J_i⟩ ≈ 0`` to ~1e-14 relative for
    well-separated sensitivities. A zero column (no sensitivity at this state) is ignored.
    Smooth in ``g`` and ``jac``, so gradients pass through.

    **Arguments:** `g` of any shape; `jac` of shape ``(*g.shape, p)`` (``None``: no θ_s,
    ``g`` is returned); `eps` as above.
    """
    if jac is None:
        return g
    p = jac.shape[-1]
    if jac.shape[:-1] != g.shape:
        raise ValueError(
            f"orthogonalize: sensitivities of shape {jac.shape} do not match a term of "
            f"shape {g.shape}; expected {(*g.shape, p)}."
        )
    jm, flat = jac.reshape(-1, p), g.reshape(-1)
    return (flat - jm @ _removal(jm, flat, eps)).reshape(g.shape)


def orthogonalize_rfft(g_hat: Array, jac_hat: Array | None, n: int, eps=None) -> Array:
    """`orthogonalize` for real fields of ``n`` points given by their ``rfft``s (``g_hat``
    of shape ``(m,)``, ``jac_hat`` of shape ``(m, p)``), with the inner product of the
    fields (Parseval: weight 2 on every mode but the mean and the Nyquist mode, whose
    imaginary parts ``irfft`` ignores). Same result as projecting the ``irfft``s, with no
    transform: a spectral stage gets the closure's projection for free of FFTs."""
    if jac_hat is None:
        return g_hat
    m = g_hat.shape[0]
    w = np.full(m, 2.0)
    w[0] = 1.0
    wi = w.copy()
    wi[0] = 0.0
    if n % 2 == 0:
        w[-1], wi[-1] = 1.0, 0.0
    sw, swi = jnp.asarray(np.sqrt(w)), jnp.asarray(np.sqrt(wi))

    def real(x):  # (m, ...) complex -> (2m, ...) real, weighted
        shape = (m,) + (1,) * (x.ndim - 1)
        return jnp.concatenate([x.real * sw.reshape(shape), x.imag * swi.reshape(shape)])

    return g_hat - jac_hat @ _removal(real(jac_hat), real(g_hat), eps)
