"""Per-sample estimators of KL(π ‖ π_ref) from samples y ~ π (Schulman 2020, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html):

    KL(π ‖ π_ref) = E_{y~π}[ log π(y) − log π_ref(y) ]

    k1 = log π(y) − log π_ref(y)                    unbiased; can be negative; high variance
    k3 = (r − 1) − log r,   r = π_ref(y) / π(y)     unbiased (E_π[r] = 1), never negative
                                                    (x − 1 ≥ log x), lower variance when π ≈ π_ref

Both are computed from log-probabilities, per token or per sequence. For a sequence, Σ_t k1_t is the
sequence's k1 (the log-ratios add); Σ_t k3_t (each token's r_t = π_ref(y_t|y_<t) / π(y_t|y_<t)) is
also unbiased for the sequence KL, by the chain rule KL = Σ_t E[KL_t(·|y_<t)] and E[k3_t | y_<t] =
KL_t; that is how groundup.align.rl reports it. Both must be taken on π's OWN samples: on anyone
else's they estimate nothing.

Unbiased is not the same as close on a finite sample: k3's mean relies on rare samples where π is
small and π_ref large (r huge). Once π has moved far from π_ref (nearly deterministic where π_ref is
not), a batch typically holds none of them and k3's sample mean sits well BELOW the KL, while k1 (the
log-ratio itself) does not have that problem. k3 is the better estimator while π ≈ π_ref.
"""

from __future__ import annotations

import math

import torch


def kl_k1(logp_pi, logp_ref) -> torch.Tensor:
    """k1 = log π − log π_ref, elementwise (per sample or per token)."""
    return torch.as_tensor(logp_pi) - torch.as_tensor(logp_ref)


def kl_k3(logp_pi, logp_ref) -> torch.Tensor:
    """k3 = (r − 1) − log r with log r = log π_ref − log π, elementwise; ≥ 0. expm1 keeps it exact
    when π ≈ π_ref (r − 1 is then tiny)."""
    log_r = torch.as_tensor(logp_ref) - torch.as_tensor(logp_pi)
    return torch.expm1(log_r) - log_r


def mean_and_se(values) -> tuple[float, float]:
    """(mean, standard error s/√n) of a sample of estimates: an estimator's spread, to say how close
    its mean should land to the truth."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = v.numel()
    if n == 0:
        raise ValueError("mean_and_se of no values")
    se = float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return float(v.mean()), se


def categorical_kl(p, q) -> float:
    """Exact KL(p ‖ q) = Σ_i p_i (log p_i − log q_i) of two categorical distributions (0·log 0 = 0)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return float(terms.sum())
