"""Repeated data as effective data: Muennighoff et al. 2023, "Scaling Data-Constrained Language
Models", eq. 5 (NumPy alone).

U unique tokens seen for E epochs count as

    D' = U + U·R*·(1 − e^(−R/R*)),      R = E − 1 (the repetitions beyond the first epoch)

effective tokens. For R ≪ R* a repeated token is worth almost a fresh one (D' ≈ U·E); as R grows
the value of each further repetition decays like e^(−R/R*) and D' saturates at U·(1 + R*). R* is
the "half-life" of repetition: after R* repetitions the repeats carry 1 − 1/e ≈ 63% of all the
value they can ever add. (The paper's R_D is "the number of repetitions", epochs − 1: a single
epoch has R = 0 and D' = U = D.)

The lab fits it in two stages, on one fixed model trained on a fixed token budget D:

  1. the loss-vs-data law on unique data (runs with D_k ≤ D fresh tokens, each trained for one
     epoch with its own schedule):   L(D) = E + B/D^β   (least squares, E ≥ 0: fit_data_law)
  2. R* from the repeated runs (U = D/E unique tokens, E epochs):  the R* that minimises
         Σᵢ (log L(D'(Uᵢ, Rᵢ, R*)) − log Lᵢ)²,    over log R* (a grid, then BFGS: labs/fit.py)

The interval is a two-level bootstrap over seeds within each point and over the points
(labs/fit.bootstrap_seeds_and_points), refitting both stages each time.

`recover_r_star` is the identifiability check: losses drawn from a known L and R* on the lab's own
grid, with its seeds and noise; the fit must bring R* back within a tolerance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from groundup.labs.fit import bootstrap_seeds_and_points, interval, minimize_bfgs

R_STAR_BOUNDS = (0.05, 1e4)  # the fit's search range for R* (an estimate at an end is censored)


def effective_data(U, R, r_star):
    """D' = U + U·R*·(1 − e^(−R/R*)) (Muennighoff et al. 2023, eq. 5); R = epochs − 1."""
    U, R = np.asarray(U, dtype=float), np.asarray(R, dtype=float)
    return U + U * r_star * (1.0 - np.exp(-R / r_star))


def repetitions(epochs):
    """R = epochs − 1: the repetitions beyond the first pass (the paper's R_D)."""
    return np.asarray(epochs, dtype=float) - 1.0


@dataclass
class DataLaw:
    """L(D) = E + B/D^β: the loss of the lab's fixed model after D fresh tokens."""

    E: float
    B: float
    beta: float

    def __call__(self, D):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return self.E + self.B * np.asarray(D, dtype=float) ** -self.beta

    def inverse(self, L):
        """The D at which the law reaches loss L: D = (B/(L − E))^(1/β) (inf at or below the floor)."""
        L = np.asarray(L, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(L > self.E, (self.B / (L - self.E)) ** (1.0 / self.beta), np.inf)

    def to_dict(self) -> dict:
        return asdict(self)


def _law_given_beta(D: np.ndarray, L: np.ndarray, betas: np.ndarray):
    """For each β: the least-squares E, B of L = E + B·D^−β (linear in E and B), E clipped at 0
    (then B through the origin). Returns (E, B, sum of squared residuals), each (len(betas),)."""
    X = D[None, :] ** -betas[:, None]  # (G, n)
    xm, lm = X.mean(1, keepdims=True), L.mean()
    B = ((X - xm) * (L - lm)).sum(1) / ((X - xm) ** 2).sum(1)
    E = lm - B * xm[:, 0]
    neg = E < 0
    B = np.where(neg, (X * L).sum(1) / (X * X).sum(1), B)
    E = np.where(neg, 0.0, E)
    sse = ((E[:, None] + B[:, None] * X - L[None, :]) ** 2).sum(1)
    return E, B, np.where(B > 0, sse, np.inf)


def fit_data_law(D, L) -> DataLaw:
    """L(D) = E + B/D^β, least squares in L with E ≥ 0, by variable projection: for a given β the law
    is linear in E and B (closed form); β is the best of a grid of 300 values in [0.005, 3], refined
    by BFGS (labs/fit.minimize_bfgs, central-difference gradient). Closed-form inner fits make the
    bootstrap's hundreds of refits cheap."""
    D, L = np.asarray(D, dtype=float), np.asarray(L, dtype=float)
    if len(np.unique(D)) < 3:
        raise ValueError("L(D) = E + B/D^β needs at least three distinct budgets")
    grid = np.geomspace(0.005, 3.0, 300)
    _, _, sse = _law_given_beta(D, L, grid)
    b0 = math.log(grid[int(np.argmin(sse))])

    def f(x: float) -> float:
        return float(_law_given_beta(D, L, np.array([math.exp(x)]))[2][0])

    def fun(p):
        h = 1e-6
        return f(p[0]), np.array([(f(p[0] + h) - f(p[0] - h)) / (2 * h)])

    x, _ = minimize_bfgs(fun, np.array([b0]), max_iter=100)
    beta = math.exp(float(np.clip(x[0], math.log(grid[0]), math.log(grid[-1]))))
    if not f(math.log(beta)) <= f(b0):
        beta = math.exp(b0)
    E, B, _ = _law_given_beta(D, L, np.array([beta]))
    return DataLaw(E=float(E[0]), B=float(B[0]), beta=beta)


def _r_star_objective(law: DataLaw, U, R, L, effective: Callable):
    logL = np.log(np.asarray(L, dtype=float))

    def f(x: float) -> float:
        pred = law(effective(U, R, math.exp(x)))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.log(pred) - logL
        return float(np.sum(r * r)) if np.all(np.isfinite(r)) else math.inf

    return f


def fit_r_star(law: DataLaw, U, R, L, effective: Callable = effective_data, bounds=R_STAR_BOUNDS) -> dict:
    """R* minimising Σ (log L(D'(U, R, R*)) − log L)² with the law held fixed: the best of a grid of
    200 values of log R* over `bounds`, refined by BFGS (central-difference gradient). Returns
    {r_star, censored}: censored when the optimum sits at an end of the range (the data only say
    R* is below 0.05 or beyond 10⁴: repetition worthless, or as good as fresh data)."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    f = _r_star_objective(law, U, R, L, effective)
    grid = np.linspace(lo, hi, 200)
    U, R, logL = np.asarray(U, dtype=float), np.asarray(R, dtype=float), np.log(np.asarray(L, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):  # every grid value at once: (200, points)
        r = np.log(law(effective(U[None, :], R[None, :], np.exp(grid)[:, None]))) - logL[None, :]
    values = np.where(np.all(np.isfinite(r), axis=1), np.sum(r * r, axis=1), np.inf)
    if not np.any(np.isfinite(values)):
        return {"r_star": math.nan, "censored": False}
    x0 = grid[int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))]

    def fun(p):
        x = float(np.clip(p[0], lo, hi))
        h = 1e-5
        return f(x), np.array([(f(x + h) - f(x - h)) / (2 * h)])

    x, _ = minimize_bfgs(fun, np.array([x0]), max_iter=100)
    x = float(np.clip(x[0], lo, hi))
    if not f(x) <= f(x0):
        x = x0
    censored = x <= grid[1] or x >= grid[-2]
    return {"r_star": math.exp(x), "censored": bool(censored)}


def fit_effective(unique_D, unique_L, U, R, L, effective: Callable = effective_data) -> dict:
    """Both stages: the law on the unique-data runs, then R* on the repeated runs."""
    law = fit_data_law(unique_D, unique_L)
    return {"law": law.to_dict(), **fit_r_star(law, U, R, L, effective)}


def bootstrap_effective(unique_D, unique_losses: list, U, R, repeated_losses: list, n_boot: int, seed: int = 0,
                        effective: Callable = effective_data) -> dict:
    """A two-level bootstrap (seeds within each point, then points) of both stages. The points are
    the unique runs followed by the repeated runs; a resample with fewer than 3 distinct unique
    budgets (the law has 3 parameters) or no repeated run is skipped. Returns the 95% percentile
    intervals of R*, E, B and β, the samples of R*, and how many resamples were fitted."""
    unique_D, U, R = (np.asarray(v, dtype=float) for v in (unique_D, U, R))
    k = len(unique_D)

    def refit(idx, means):
        u = np.unique(idx[idx < k])
        r = idx[idx >= k] - k
        if len(u) < 3 or len(r) == 0:
            return None
        law = fit_data_law(unique_D[idx[idx < k]], means[idx[idx < k]])
        fit = fit_r_star(law, U[r], R[r], means[k:][r], effective)
        return {"r_star": fit["r_star"], "censored": float(fit["censored"]), "E": law.E, "B": law.B, "beta": law.beta}

    samples = bootstrap_seeds_and_points(list(unique_losses) + list(repeated_losses), refit, n_boot, seed)
    if not samples:
        return {"fitted": 0}
    out = {"fitted": int(len(samples["r_star"])), "censored_share": float(np.mean(samples["censored"]))}
    for key in ("r_star", "E", "B", "beta"):
        out[f"{key}_ci95"] = list(interval(samples[key]))
    out["r_star_samples"] = [float(x) for x in samples["r_star"]]
    return out


def measured_effective_data(law: DataLaw, L) -> np.ndarray:
    """The unique-data budget the law needs to reach loss L: D'_measured = L⁻¹(L), model-free in R*."""
    return law.inverse(L)


def recover_r_star(law: DataLaw, r_star: float, unique_D, U, R, seeds_per_point: int, noise_sd: float,
                   n_draws: int = 8, tolerance: float = 0.25, seed: int = 0,
                   effective_true: Callable = effective_data, effective_fit: Callable = effective_data) -> dict:
    """Can this grid, at this noise, recover R*? Each draw: every point's `seeds_per_point` losses
    law(D) + σ·ε (unique runs) and law(D'(U, R, R*)) + σ·ε (repeated runs, D' from
    `effective_true`), averaged over the seeds as the lab does; both stages fitted (D' from
    `effective_fit`: pass a broken one to see the check fail). `recovered` when every draw's
    |R̂*/R* − 1| ≤ tolerance."""
    unique_D, U, R = (np.asarray(v, dtype=float) for v in (unique_D, U, R))
    rng = np.random.default_rng(seed)
    true_unique, true_rep = law(unique_D), law(effective_true(U, R, r_star))
    errors, failed = [], 0
    for _ in range(n_draws):
        lu = true_unique + noise_sd * rng.standard_normal((seeds_per_point, len(unique_D))).mean(0)
        lr = true_rep + noise_sd * rng.standard_normal((seeds_per_point, len(U))).mean(0)
        fit = fit_effective(unique_D, lu, U, R, lr, effective_fit)
        if not math.isfinite(fit["r_star"]):
            failed += 1
            continue
        errors.append(fit["r_star"] / r_star - 1.0)
    worst = float(np.max(np.abs(errors))) if errors else math.inf
    return {"r_star": r_star, "draws": n_draws, "failed_fits": failed, "noise_sd": float(noise_sd),
            "tolerance": tolerance, "relative_errors": [float(e) for e in errors], "max_relative_error": worst,
            "recovered": bool(failed == 0 and worst <= tolerance)}
