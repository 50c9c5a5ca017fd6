"""The α–β (latency–bandwidth) model of a ring all-reduce, fitted to measured times.

A ring all-reduce of S bytes over n ranks sends every byte around the ring twice, less the rank's own
share (a reduce-scatter, then an all-gather, each of n − 1 steps of S/n bytes):

    t(S, n) = α + β · S · 2(n − 1)/n          β = 1 / B_bus

where B_bus is the *bus bandwidth* as nccl-tests define it (NVIDIA nccl-tests, doc/PERFORMANCE.md:
busbw = algbw · 2(n − 1)/n, algbw = S / t). The same formula is groundup.cluster.ring_allreduce_seconds;
the lab fits its two constants to what it measures.

The fit is linear least squares on x = S · 2(n − 1)/n ("bus bytes") with *relative* residuals,

    minimise Σᵢ ((α + β·xᵢ − tᵢ) / tᵢ)²        (weighted least squares, weights 1/tᵢ²)

because the sizes span four orders of magnitude: plain least squares would fit the largest messages
and leave α to the noise of the biggest times. The misfit of a point is (fitted − measured)/measured.
"""

from __future__ import annotations

import math

import numpy as np


def ring_factor(n: int) -> float:
    """2(n − 1)/n: the bytes each rank sends in a ring all-reduce, per byte of the message."""
    return 2 * (n - 1) / n


def bus_bytes(message_bytes: float, n: int) -> float:
    """S · 2(n − 1)/n."""
    return message_bytes * ring_factor(n)


def fit_alpha_beta(points: list[tuple[float, int, float]], factor=ring_factor) -> dict:
    """Fit t = α + β·S·factor(n) to [(S bytes, n ranks, t seconds), …] (one n or several: a joint fit).

    Returns {alpha (s), beta (s/byte), bus_bandwidth (bytes/s; None if β ≤ 0), misfit: [relative
    misfit per point, in the order given], rms_misfit, max_misfit}. `factor` is the per-n byte factor
    (the ring's 2(n − 1)/n; the tests pass another to show the fit notices)."""
    if len(points) < 2:
        raise ValueError("the α–β fit needs at least two points")
    S = np.array([p[0] for p in points], dtype=float)
    n = [p[1] for p in points]
    t = np.array([p[2] for p in points], dtype=float)
    if np.any(t <= 0):
        raise ValueError("every measured time must be positive")
    x = S * np.array([factor(k) for k in n])
    A = np.stack([np.ones_like(x), x], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    misfit = (alpha + beta * x - t) / t
    return {"alpha": float(alpha), "beta": float(beta), "bus_bandwidth": float(1 / beta) if beta > 0 else None,
            "misfit": [float(m) for m in misfit], "rms_misfit": float(math.sqrt(np.mean(misfit**2))),
            "max_misfit": float(np.max(np.abs(misfit)))}


def predict(fit: dict, message_bytes: float, n: int, calls: int = 1) -> float:
    """calls·α + β·S·2(n − 1)/n: S bytes all-reduced in `calls` operations (DDP's buckets); 0 for n = 1."""
    if n <= 1:
        return 0.0
    return calls * fit["alpha"] + fit["beta"] * bus_bytes(message_bytes, n)
