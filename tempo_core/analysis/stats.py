"""Confidence intervals over prompts: the prompt is the unit of every study statistic (study.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean over units (prompts) with its percentile-bootstrap confidence interval."""
    mean: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        if self.mean is None:
            return "n/a (no prompts)"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def bootstrap_mean(values: list[float], resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """The mean of `values` and its percentile bootstrap interval: `resamples` draws of len(values) units with
    replacement (seeded, so a rerun gives the same interval). None values (a unit without this quantity) are
    left out; fewer than two units give no interval."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return Estimate(None, None, None, 0)
    if len(x) == 1:
        return Estimate(float(x[0]), None, None, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(x.mean()), float(low), float(high), len(x))
