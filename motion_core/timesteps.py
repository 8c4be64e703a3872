"""Training timestep samplers: which noise levels a training step sees.

A diffusion model is trained on timesteps ``t ∈ {0, …, T−1}`` (T = the scheduler's
``num_train_timesteps``, 1000 for every model here). Most methods draw them uniformly; some bias the draw:

* Customizing Motion / NewMove ("high-level" sampling, reference/motion_director_and_custom_motion.md
  §2.4) favours high noise, where a video's coarse structure -- its motion -- is decided:
  ``p(t) ∝ 1 − a·cos(π t / T)`` with ``a = 0.5``. Over T = 1000 this gives ``p(0) = 5.0025e-4``,
  ``p(999) = 1.50075e-3``, ``E[t] ≈ 600.9`` and ``P(t ≥ 500) ≈ 0.659``. The "low-level" variant
  ``1 + a·cos(π t / T)`` favours low noise (fine detail).
* MotionMatcher trains on ``t ∈ [500, 1000)`` only: a uniform sampler over a range.

Every sampler draws from a caller's CPU ``torch.Generator`` (the trainer's), so a seed gives the same
timesteps on any device and a resumed run continues the same sequence. The probability vector is exact
(float64) and available for tests and plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError

__all__ = [
    "CosineTimesteps",
    "TIMESTEP_SAMPLERS",
    "TimestepSampler",
    "UniformTimesteps",
    "make_timestep_sampler",
]


class TimestepSampler:
    """Draws integer timesteps ``[n]`` (int64, CPU) from a distribution over ``0..T−1``."""

    name: str = ""

    def probabilities(self, num_train_timesteps: int = 1000) -> torch.Tensor:
        """``p(t)`` for ``t = 0..T−1`` (float64, sums to 1)."""
        raise NotImplementedError

    def sample(self, n: int, num_train_timesteps: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
        total = _check_total(num_train_timesteps)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"number of timesteps to draw must be a positive integer, got {n!r}.")
        p = self.probabilities(total)
        # inverse-CDF sampling with one uniform per draw: reproducible and cheap for any n
        cdf = torch.cumsum(p, 0)
        cdf[-1] = 1.0
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=total - 1).long()

    def mean(self, num_train_timesteps: int = 1000) -> float:
        p = self.probabilities(num_train_timesteps)
        return float((p * torch.arange(p.numel(), dtype=torch.float64)).sum())

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def _check_total(total: Any) -> int:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise InputError(f"num_train_timesteps must be a positive integer, got {total!r}.")
    return total


@dataclass(frozen=True)
class UniformTimesteps(TimestepSampler):
    """Uniform over ``[low, high)`` (``high`` None = T): the default of every method, and MotionMatcher's
    ``[500, 1000)`` with ``low=500``."""

    low: int = 0
    high: int | None = None
    name = "uniform"

    def _range(self, total: int) -> tuple[int, int]:
        high = total if self.high is None else int(self.high)
        low = int(self.low)
        if not 0 <= low < high <= total:
            raise InputError(f"timestep range [{low}, {high}) must lie inside [0, {total}) and not be empty.")
        return low, high

    def probabilities(self, num_train_timesteps: int = 1000) -> torch.Tensor:
        total = _check_total(num_train_timesteps)
        low, high = self._range(total)
        p = torch.zeros(total, dtype=torch.float64)
        p[low:high] = 1.0 / (high - low)
        return p

    def sample(self, n: int, num_train_timesteps: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
        total = _check_total(num_train_timesteps)
        low, high = self._range(total)
        return torch.randint(low, high, (int(n),), generator=generator)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class CosineTimesteps(TimestepSampler):
    """``p(t) ∝ 1 − a·cos(π t / T)`` (``toward="high"``: more high-noise steps, Customizing Motion's
    "high-level" sampling) or ``1 + a·cos(π t / T)`` (``toward="low"``). ``0 ≤ a ≤ 1``; a = 0 is uniform."""

    amplitude: float = 0.5
    toward: str = "high"

    def __post_init__(self) -> None:
        if not (isinstance(self.amplitude, (int, float)) and 0.0 <= float(self.amplitude) <= 1.0):
            raise InputError(f"timestep sampling amplitude must be in [0, 1], got {self.amplitude!r}.")
        if self.toward not in ("high", "low"):
            raise InputError(f"cosine timestep sampling leans 'high' or 'low', not {self.toward!r}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.toward}-level"

    def probabilities(self, num_train_timesteps: int = 1000) -> torch.Tensor:
        total = _check_total(num_train_timesteps)
        t = torch.arange(total, dtype=torch.float64)
        sign = -1.0 if self.toward == "high" else 1.0
        w = 1.0 + sign * float(self.amplitude) * torch.cos(math.pi * t / total)
        return w / w.sum()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "amplitude": float(self.amplitude)}


#: names accepted by :func:`make_timestep_sampler` (the reference's ``train_data.sampling`` values)
TIMESTEP_SAMPLERS = ("uniform", "high", "low")


def make_timestep_sampler(name: str, *, amplitude: float = 0.5, low: int = 0,
                          high: int | None = None) -> TimestepSampler:
    """``"uniform"`` (optionally over ``[low, high)``), ``"high"`` / ``"high-level"`` or ``"low"`` /
    ``"low-level"`` (cosine-biased with ``amplitude``)."""
    key = str(name).strip().lower().replace("_", "-")
    if key == "uniform":
        return UniformTimesteps(low=low, high=high)
    if key in ("high", "high-level"):
        return CosineTimesteps(amplitude=amplitude, toward="high")
    if key in ("low", "low-level"):
        return CosineTimesteps(amplitude=amplitude, toward="low")
    raise InputError(f"Unknown timestep sampling {name!r}: use 'uniform', 'high' (more high-noise steps, "
                     "Customizing Motion's default) or 'low'.")
