"""Wall-clock timing of a repeated call: median, 90th percentile, mean, best."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Timing", "summarise", "time_calls"]


@dataclass(frozen=True)
class Timing:
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def summarise(samples_ms: Sequence[float]) -> Timing:
    if not samples_ms:
        raise ValueError("no samples to summarise")
    values = np.asarray(samples_ms, dtype=np.float64)
    return Timing(len(values), float(np.median(values)), float(np.percentile(values, 90)), float(values.mean()),
                  float(values.min()))


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed (caches, lazy init), then time ``runs`` calls one by one."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return summarise(samples)
