"""Shared jaxtyping aliases used in signatures across scilayers."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float, PyTree

State: TypeAlias = Float[Array, " n"] | PyTree
Field: TypeAlias = Float[Array, " n"]
Trajectory: TypeAlias = Float[Array, " time n"]
Batch: TypeAlias = Float[Array, " batch time n"]
ScalarLike: TypeAlias = float | Float[ArrayLike, ""]
