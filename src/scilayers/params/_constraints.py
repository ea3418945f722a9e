"""Constraints: bijections between an unconstrained raw value and a physical value."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np


class AbstractConstraint(abc.ABC):
    """A bijection from the real line onto the admissible set of a parameter.

    Parameters are *stored* unconstrained (``raw``) and *resolved* to their physical value
    by :meth:`forward` inside the function being differentiated, so an optimiser never
    leaves the admissible set.
    """

    @abc.abstractmethod
    def forward(self, raw):
        """Map an unconstrained raw value to the physical value."""

    @abc.abstractmethod
    def inverse(self, value):
        """Map a physical value to its unconstrained raw value."""

    @abc.abstractmethod
    def contains(self, value) -> bool:
        """Whether a concrete value lies inside the admissible set."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A human-readable description of the admissible set."""


@dataclass(frozen=True)
class Unconstrained(AbstractConstraint):
    """Any real value: the identity map."""

    def forward(self, raw):
        return raw

    def inverse(self, value):
        return value

    def contains(self, value) -> bool:
        return bool(np.all(np.isfinite(value)))

    def describe(self) -> str:
        return "any finite real value"


@dataclass(frozen=True)
class Positive(AbstractConstraint):
    """Strictly positive values, stored as ``log(value)``.

    The log parameterisation makes gradient steps relative (a step changes the value by a
    fraction of itself), which suits physical coefficients spanning decades.
    """

    def forward(self, raw):
        return jnp.exp(raw)

    def inverse(self, value):
        return jnp.log(value)

    def contains(self, value) -> bool:
        return bool(np.all(np.asarray(value) > 0) and np.all(np.isfinite(value)))

    def describe(self) -> str:
        return "value > 0"


@dataclass(frozen=True)
class Bounded(AbstractConstraint):
    """Values in the open interval ``(lo, hi)``, stored through a logit."""

    lo: float
    hi: float

    def __post_init__(self):
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(
                f"Bounded(lo={self.lo}, hi={self.hi}) needs finite lo < hi; swap or fix the bounds."
            )

    def forward(self, raw):
        return self.lo + (self.hi - self.lo) * (1.0 / (1.0 + jnp.exp(-raw)))

    def inverse(self, value):
        p = (value - self.lo) / (self.hi - self.lo)
        return jnp.log(p) - jnp.log1p(-p)

    def contains(self, value) -> bool:
        v = np.asarray(value)
        return bool(np.all(v > self.lo) and np.all(v < self.hi))

    def describe(self) -> str:
        return f"{self.lo} < value < {self.hi}"
