"""Fitting scaling laws, with NumPy alone.

Two laws, both fitted in log space (losses span a small range; their logs weigh every point alike):

    L(C)    = a·C^-α            (+ E, an optional floor)       Kaplan et al. 2020, eq. 1.3
    L(N, D) = E + A/N^α + B/D^β                                  Hoffmann et al. 2022, eq. 2

Both are sums of power-law terms, so their logs are a log-sum-exp:

    log L̂ = LSE(log A − α·log N,  log B − β·log D,  log E)

and, as in Hoffmann et al. (Approach 3), the parameters minimise  Σᵢ Huber_δ(log L̂ᵢ − log Lᵢ)
with δ = 1e-3, by BFGS from the best points of a grid of initialisations. The pure power law
without a floor is a straight line in log-log, fitted in closed form.

Uncertainty comes from the bootstrap: resample the runs with replacement, fit again, and read the
2.5th and 97.5th percentiles of each parameter. With several seeds per grid point the resampling is
two-level (seeds within each point, then the points), so the interval carries the training noise as
well as the choice of grid points.

Identifiability (`recovery_check`): draw synthetic losses from a known L(N, D) on the same grid,
with the same seeds per point and the measured seed-to-seed noise, fit them, and see whether α and β
come back within a tolerance. If they do not, the grid cannot tell α and β apart from noise and
from each other, whatever the real fit prints.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, Approach 3


# ---- the laws --------------------------------------------------------------------------------
@dataclass
class PowerLaw:
    """L(C) = E + a·C^-α (E = 0: a pure power law, a straight line in log-log)."""

    a: float
    alpha: float
    E: float = 0.0

    def __call__(self, C):
        return self.E + self.a * np.asarray(C, dtype=float) ** -self.alpha

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Chinchilla:
    """L(N, D) = E + A/N^α + B/D^β: an irreducible loss E, plus what a finite model (N parameters)
    and finite data (D tokens) each leave on the table."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        with np.errstate(over="ignore"):  # a wild bootstrap fit may overflow: inf, not a warning
            return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def compute_optimal(self, C: float) -> tuple[float, float]:
        """Minimise L(N, D) subject to 6·N·D = C (Hoffmann et al. eq. 4):

            N_opt = G·(C/6)^(β/(α+β)),   D_opt = G⁻¹·(C/6)^(α/(α+β)),   G = (α·A / (β·B))^(1/(α+β))
        """
        a, b = self.alpha, self.beta
        if not (a > 0 and b > 0):  # loss doesn't fall with N (or D): no interior optimum
            return math.nan, math.nan
        G = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        return G * (C / 6.0) ** (b / (a + b)), (C / 6.0) ** (a / (a + b)) / G

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the closed form: a straight line in log-log -------------------------------------------
def fit_power_law(C, L) -> PowerLaw:
    """Least squares on log L = log a − α·log C."""
    x, y = np.log(np.asarray(C, dtype=float)), np.log(np.asarray(L, dtype=float))
    if len(np.unique(x)) < 2:
        raise ValueError("a power law needs at least two distinct x values")
    slope, intercept = np.polyfit(x, y, 1)
    return PowerLaw(a=float(np.exp(intercept)), alpha=float(-slope))


# ---- Huber loss on a log-sum-exp of power-law terms ---------------------------------------
def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """½r² for |r| ≤ δ, δ·(|r| − ½δ) beyond: quadratic near the fit, linear for outliers."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(r, -delta, delta)


def _lse_objective(params: np.ndarray, log_x: np.ndarray, log_L: np.ndarray, delta: float):
    """params = [c_1..c_K, p_1..p_K, e]; terms t_k = c_k − p_k·log x_k, plus e (the floor).
    Returns Σ Huber(LSE(t) − log L) and its gradient."""
    K = log_x.shape[1]
    c, p, e = params[:K], params[K : 2 * K], params[2 * K]
    terms = np.concatenate([c - p * log_x, np.full((len(log_x), 1), e)], axis=1)  # (n, K+1)
    top = terms.max(axis=1, keepdims=True)
    w = np.exp(terms - top)
    total = w.sum(axis=1, keepdims=True)
    lse = (top + np.log(total))[:, 0]
    w = w / total  # softmax: ∂LSE/∂t_k
    r = lse - log_L
    g_r = huber_grad(r, delta)  # (n,)
    grad = np.concatenate([(g_r[:, None] * w[:, :K]).sum(0),              # ∂/∂c_k = w_k
                           -(g_r[:, None] * w[:, :K] * log_x).sum(0),     # ∂/∂p_k = −w_k·log x_k
                           [(g_r * w[:, K]).sum()]])                      # ∂/∂e = w_floor
    return float(huber(r, delta).sum()), grad


def _grid_objective(grid: np.ndarray, log_x: np.ndarray, log_L: np.ndarray, delta: float) -> np.ndarray:
    """The objective at many parameter vectors at once: grid (G, 2K+1) → (G,)."""
    K = log_x.shape[1]
    c, p, e = grid[:, None, :K], grid[:, None, K : 2 * K], grid[:, None, 2 * K :]
    terms = np.concatenate([c - p * log_x[None], np.broadcast_to(e, (len(grid), len(log_x), 1))], axis=2)
    top = terms.max(axis=2, keepdims=True)
    lse = (top + np.log(np.exp(terms - top).sum(axis=2, keepdims=True)))[..., 0]
    return huber(lse - log_L[None], delta).sum(axis=1)


def minimize_bfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0, max_iter: int = 1000,
                  gtol: float = 1e-10, ftol: float = 1e-15) -> tuple[np.ndarray, float]:
    """BFGS with a backtracking (Armijo) line search. `fun(x)` returns (f, ∇f).

    The inverse-Hessian estimate H is updated from each step s and gradient change y:
        H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ,   ρ = 1 / (yᵀ s)
    """
    x = np.asarray(x0, dtype=float).copy()
    f, g = fun(x)
    n = len(x)
    H = np.eye(n)
    for _ in range(max_iter):
        if np.linalg.norm(g) < gtol:
            break
        direction = -H @ g
        slope = g @ direction
        if slope >= 0:  # not a descent direction: restart from steepest descent
            H, direction, slope = np.eye(n), -g, -(g @ g)
        t = 1.0
        while True:
            x_new = x + t * direction
            f_new, g_new = fun(x_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-14:
                return x, f
        s, y = x_new - x, g_new - g
        sy = s @ y
        if sy > 1e-16:
            rho = 1.0 / sy
            I = np.eye(n)
            H = (I - rho * np.outer(s, y)) @ H @ (I - rho * np.outer(y, s)) + rho * np.outer(s, s)
        done = abs(f - f_new) <= ftol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x, f


def fit_lse(log_x: np.ndarray, log_L: np.ndarray, starts: np.ndarray, delta: float = HUBER_DELTA,
            n_best: int = 8) -> np.ndarray:
    """Minimise the Huber objective from the `n_best` best of `starts` (rows of parameters)."""
    values = _grid_objective(starts, log_x, log_L, delta)
    best_x, best_f = None, math.inf
    for i in np.argsort(values)[:n_best]:
        x, f = minimize_bfgs(lambda p: _lse_objective(p, log_x, log_L, delta), starts[i])
        if f < best_f:
            best_x, best_f = x, f
    return best_x


# The grid of initialisations Hoffmann et al. use: exponents 0..2, log E −1..1, log A and log B 0..25.
_EXPONENTS = [0.0, 0.5, 1.0, 1.5, 2.0]
_LOG_FLOORS = [-1.0, -0.5, 0.0, 0.5, 1.0]
_LOG_COEFFS = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


def chinchilla_starts() -> np.ndarray:
    """(4500, 5) rows of [log A, log B, α, β, log E] in fit_lse's layout."""
    return np.array([[a, b, alpha, beta, e] for a, b, alpha, beta, e in
                     itertools.product(_LOG_COEFFS, _LOG_COEFFS, _EXPONENTS, _EXPONENTS, _LOG_FLOORS)])


def fit_chinchilla(N, D, L, delta: float = HUBER_DELTA, starts: np.ndarray | None = None, n_best: int = 8) -> Chinchilla:
    """L(N, D) = E + A/N^α + B/D^β by Huber loss on log L (Hoffmann et al. 2022, Approach 3),
    by BFGS from the `n_best` best of `starts` (default: Hoffmann's grid of initialisations)."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    log_x = np.stack([np.log(N), np.log(D)], axis=1)
    p = fit_lse(log_x, np.log(L), chinchilla_starts() if starts is None else starts, delta, n_best)
    with np.errstate(over="ignore"):
        return Chinchilla(E=float(np.exp(p[4])), A=float(np.exp(p[0])), alpha=float(p[2]), B=float(np.exp(p[1])), beta=float(p[3]))


def fit_power_law_with_floor(C, L, delta: float = HUBER_DELTA, starts: np.ndarray | None = None) -> PowerLaw:
    """L(C) = E + a·C^-α by Huber loss on log L."""
    C, L = np.asarray(C, dtype=float), np.asarray(L, dtype=float)
    if starts is None:
        starts = np.array([[c, alpha, e] for c in np.linspace(0, 10, 11) for alpha in [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
                           for e in np.log(np.linspace(0.05, 0.95, 7) * L.min())])
    p = fit_lse(np.log(C)[:, None], np.log(L), starts, delta)
    return PowerLaw(a=float(np.exp(p[0])), alpha=float(p[1]), E=float(np.exp(p[2])))


def chinchilla_params(fit: Chinchilla) -> np.ndarray:
    """A fit as a start vector for fit_lse (to warm-start bootstrap refits)."""
    return np.array([math.log(fit.A), math.log(fit.B), fit.alpha, fit.beta, math.log(fit.E)])


# ---- uncertainty -----------------------------------------------------------------------------
def bootstrap(n: int, refit: Callable[[np.ndarray], dict | None], n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Call `refit(indices)` on `n_boot` resamples (with replacement) of range(n); each returns a
    dict of numbers, or None when the resample can't be fitted (too few distinct points). Returns
    every key's values as an array."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for _ in range(n_boot):
        result = refit(rng.integers(0, n, n))
        if result is None:
            continue
        for k, v in result.items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of the bootstrap samples."""
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_seeds_and_points(values: list, refit: Callable[[np.ndarray, np.ndarray], dict | None], n_boot: int,
                               seed: int = 0) -> dict[str, np.ndarray]:
    """A two-level bootstrap over grid points that each hold one loss per seed.

    Each resample: (1) within every point i, draw its kᵢ seed losses with replacement and average
    them, L̄ᵢ* = mean of the draw; (2) draw n point indices with replacement. `refit(idx, means)`
    gets those indices and the resampled means of all points (index means[idx]) and returns a dict
    of numbers, or None when it cannot fit (too few distinct points). Returns every key's values.
    A point with one seed keeps its loss in step (1): only the point-level resampling moves it."""
    rng = np.random.default_rng(seed)
    values = [np.asarray(v, dtype=float) for v in values]
    n = len(values)
    out: dict[str, list] = {}
    for _ in range(n_boot):
        means = np.array([v[rng.integers(0, len(v), len(v))].mean() for v in values])
        result = refit(rng.integers(0, n, n), means)
        if result is None:
            continue
        for k, v in result.items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def recovery_check(law: Chinchilla, N, D, seeds_per_point, noise_sd: float,
                   fit: Callable[[np.ndarray, np.ndarray, np.ndarray], Chinchilla | None] = None,
                   n_draws: int = 8, tolerance: float = 0.05, seed: int = 0) -> dict:
    """Can this grid, at this noise, recover α and β? For each of `n_draws` draws: at every point
    i, kᵢ = seeds_per_point[i] losses law(Nᵢ, Dᵢ) + σ·εᵢⱼ (ε standard normal, σ = noise_sd, in
    nats), averaged as the lab averages its seeds; fit; record α̂ − α and β̂ − β. The grid is
    `identifiable` when every draw is fitted and every |α̂ − α| and |β̂ − β| ≤ tolerance."""
    fit = fit or (lambda n, d, l: fit_chinchilla(n, d, l))
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    k = np.broadcast_to(np.asarray(seeds_per_point, dtype=int), N.shape)
    truth = law(N, D)
    rng = np.random.default_rng(seed)
    d_alpha, d_beta, failed = [], [], 0
    for _ in range(n_draws):
        L = np.array([t + noise_sd * rng.standard_normal(kk).mean() for t, kk in zip(truth, k)])
        est = fit(N, D, L) if np.all(L > 0) else None
        if est is None or not (math.isfinite(est.alpha) and math.isfinite(est.beta)):
            failed += 1
            continue
        d_alpha.append(est.alpha - law.alpha)
        d_beta.append(est.beta - law.beta)
    worst_a = float(np.max(np.abs(d_alpha))) if d_alpha else math.inf
    worst_b = float(np.max(np.abs(d_beta))) if d_beta else math.inf
    return {"draws": n_draws, "failed_fits": failed, "tolerance": tolerance, "noise_sd": float(noise_sd),
            "alpha_errors": [float(x) for x in d_alpha], "beta_errors": [float(x) for x in d_beta],
            "max_alpha_error": worst_a, "max_beta_error": worst_b,
            "identifiable": bool(failed == 0 and worst_a <= tolerance and worst_b <= tolerance)}
