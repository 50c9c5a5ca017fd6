"""Part 1: goodput against cluster size, from groundup.cluster's first-order model, calibrated on
Llama 3's failure rate.

    λ = 419 unexpected interruptions / (16,384 GPUs · 54 days · 24 h)   per GPU-hour (Llama 3, Table 5)
    M(n) = 1 / (n · λ)                                                   (independent GPUs: rates add)
    τ*(n) = √(2 · δ · M(n))                                              (Young 1974)
    G(n) = [τ / (τ + δ)] · [1 − (R + (τ + δ)/2) / M]  at τ = τ*         (cluster.goodput)

with a stated checkpoint write time δ and restart time R (assumptions, not measurements: the Llama 3
paper gives neither). Pure arithmetic: no training.
"""

from __future__ import annotations

import math

from groundup.cluster import LLAMA3_FAILURES_PER_GPU_HOUR, goodput, mtbf_seconds, young_interval

LLAMA3_GPUS = 16_384


def _bisect(f, lo: float, hi: float, steps: int = 200) -> float:
    """x in [lo, hi] with f(x) = 0, f increasing-or-decreasing with a sign change (bisection)."""
    flo = f(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if (f(mid) > 0) == (flo > 0):
            lo, flo = mid, f(mid)
        else:
            hi = mid
    return (lo + hi) / 2


def sweep(gpus: list[int], checkpoint_seconds: list[float], restart_seconds: float, fixed_interval: float,
          rate: float = LLAMA3_FAILURES_PER_GPU_HOUR) -> dict:
    """Goodput at Young's interval (and at a fixed interval) for each cluster size and checkpoint time."""
    rows = []
    for delta in checkpoint_seconds:
        for n in gpus:
            M = mtbf_seconds(n, rate)
            tau = young_interval(delta, M)
            rows.append({"gpus": n, "checkpoint_s": delta, "mtbf_s": M, "young_interval_s": tau,
                         "goodput_young": goodput(tau, delta, restart_seconds, M),
                         "goodput_fixed": goodput(fixed_interval, delta, restart_seconds, M),
                         "argmax_interval_s": argmax_interval(delta, restart_seconds, M),
                         "goodput_argmax": goodput(argmax_interval(delta, restart_seconds, M), delta, restart_seconds, M),
                         "first_order_ok": tau + delta + restart_seconds < M / 4})
    return {"rows": rows}


def llama3_point(checkpoint_seconds: float, restart_seconds: float, target: float = 0.9,
                 rate: float = LLAMA3_FAILURES_PER_GPU_HOUR) -> dict:
    """At Llama 3's scale: M, τ*, G(τ*), and the largest restart time R that still gives G ≥ target
    at τ* (what their > 90% effective training time requires of restarts, in this model)."""
    M = mtbf_seconds(LLAMA3_GPUS, rate)
    tau = young_interval(checkpoint_seconds, M)
    g = goodput(tau, checkpoint_seconds, restart_seconds, M)
    best = goodput(tau, checkpoint_seconds, 0.0, M)
    max_restart = None
    if best >= target:
        max_restart = _bisect(lambda R: goodput(tau, checkpoint_seconds, R, M) - target, 0.0, M)
    return {"gpus": LLAMA3_GPUS, "failures_per_gpu_hour": rate, "mtbf_s": M, "young_interval_s": tau, "goodput": g,
            "target": target, "max_restart_s_for_target": max_restart, "checkpoint_s": checkpoint_seconds,
            "restart_s": restart_seconds, "interruptions_per_day": 86400 / M}


def argmax_interval(checkpoint_seconds: float, restart_seconds: float, mtbf: float) -> float:
    """The interval maximising cluster.goodput, found numerically (golden-section on log τ): the
    check that Young's √(2δM) is the optimum of the model used, to first order."""
    f = lambda log_tau: -goodput(math.exp(log_tau), checkpoint_seconds, restart_seconds, mtbf)  # noqa: E731
    a, b = math.log(checkpoint_seconds / 100), math.log(mtbf)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)
