"""Priors on scientific parameters, in physical (constrained) space."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import jax.numpy as jnp


class AbstractPrior(abc.ABC):
    """A prior density over the physical value of a parameter."""

    @abc.abstractmethod
    def log_prob(self, value):
        """Log density (up to a constant is not allowed: normalised) at ``value``."""

    @property
    @abc.abstractmethod
    def mode(self) -> float:
        """The most probable value; used as the starting point of a calibration."""


@dataclass(frozen=True)
class Normal(AbstractPrior):
    """Gaussian prior ``N(mean, std**2)``."""

    mean: float
    std: float

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"Normal prior needs std > 0, got {self.std}.")

    def log_prob(self, value):
        z = (value - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std) - 0.5 * math.log(2 * math.pi)

    @property
    def mode(self) -> float:
        return self.mean


@dataclass(frozen=True)
class LogNormal(AbstractPrior):
    """Log-normal prior: ``log(value) ~ N(log(median), sigma**2)``; for positive values."""

    median: float
    sigma: float

    def __post_init__(self):
        if not (self.median > 0 and self.sigma > 0):
            raise ValueError(
                f"LogNormal prior needs median > 0 and sigma > 0, got {self.median}, {self.sigma}."
            )

    def log_prob(self, value):
        logv = jnp.log(value)
        z = (logv - math.log(self.median)) / self.sigma
        return -0.5 * z**2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi) - logv

    @property
    def mode(self) -> float:
        return self.median * math.exp(-(self.sigma**2))
