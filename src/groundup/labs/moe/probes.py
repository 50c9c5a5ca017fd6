"""What a router did, measured: load balance, capacity drops, and how much the chosen expert says
about a token's domain. Pure NumPy on the (N, k) expert indices a sparse layer records
(groundup.model.moe.RoutingStats.expert_indices), so every probe can be tested on hand-built routings.

Load of expert i: the share sᵢ = cᵢ / Σⱼ cⱼ of the k·N top-k assignments it received.

    max/mean          maxᵢ sᵢ / (1/E)                  1 = perfectly even; E/k = every token to the same k experts
    CV                sd(c) / mean(c)                  coefficient of variation of the counts (0 = even)
    effective experts 2^H(s), H(s) = −Σ sᵢ log₂ sᵢ     E when even, k when every token picks the same k

Capacity (Switch, Fedus et al. 2021 §2.2): expert capacity = ⌈capacity_factor · k · N / E⌉ assignments;
the ones past an expert's capacity are dropped. `dropped_assignments` recomputes that count from the
indices alone, as a check on the layer's own count.

Specialisation: every assignment (t, j) is one draw of the pair (expert, domain of token t), so

    P(e, d) = n(e, d) / (k·N),   I(expert; domain) = Σ_{e,d} P(e, d) · log₂( P(e, d) / (P(e)·P(d)) )  bits

(0 when the expert carries no information about the domain; at most H(domain) = 1 bit for two
balanced domains). The plug-in estimate is biased upwards on a finite sample, so it is judged
against a permutation null: the same routing with the domain labels of whole sequences shuffled
across sequences (tokens of one sequence stay together, so the within-sequence correlation of
routing is kept in the null), `permutation_null` times.
"""

from __future__ import annotations

import math

import numpy as np


def counts_per_expert(indices: np.ndarray, n_experts: int) -> np.ndarray:
    """(N, k) expert indices → (E,) assignments per expert."""
    return np.bincount(np.asarray(indices).reshape(-1), minlength=n_experts)


def entropy_bits(p: np.ndarray) -> float:
    """H(p) = −Σ pᵢ log₂ pᵢ of a distribution (zeros contribute 0)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def load_balance(counts) -> dict:
    """{max_over_mean, cv, effective_experts, shares} of one layer's assignment counts (E,)."""
    c = np.asarray(counts, dtype=np.float64)
    E, total = len(c), c.sum()
    if total <= 0:
        raise ValueError("no assignments to measure")
    shares = c / total
    return {"max_over_mean": float(shares.max() * E), "cv": float(c.std(ddof=0) / c.mean()),
            "effective_experts": float(2.0 ** entropy_bits(shares)), "shares": shares.tolist()}


def dropped_assignments(indices: np.ndarray, n_experts: int, capacity_factor: float) -> int:
    """Assignments over capacity under the Switch rule, from the (N, k) indices of one forward:
    capacity = ⌈cf·k·N/E⌉ per expert, so expert e drops max(0, cₑ − capacity) of its cₑ assignments.
    (The ranking — choice rank j first, then token t — decides *which* assignments are dropped, not
    how many.)"""
    indices = np.asarray(indices)
    N, k = indices.shape
    capacity = math.ceil(capacity_factor * k * N / n_experts)
    return int(np.maximum(counts_per_expert(indices, n_experts) - capacity, 0).sum())


def contingency(indices: np.ndarray, labels: np.ndarray, n_experts: int, n_labels: int) -> np.ndarray:
    """n(d, e): assignments of tokens with label d to expert e. indices (N, k), labels (N,)."""
    indices = np.asarray(indices).reshape(len(labels), -1)
    k = indices.shape[1]
    pairs = np.repeat(np.asarray(labels), k) * n_experts + indices.reshape(-1)
    return np.bincount(pairs, minlength=n_labels * n_experts).reshape(n_labels, n_experts)


def mutual_information(table: np.ndarray) -> float:
    """I(expert; domain) in bits from a contingency table n(d, e) (plug-in estimate)."""
    n = np.asarray(table, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        raise ValueError("empty contingency table")
    P = n / total
    Pd, Pe = P.sum(1, keepdims=True), P.sum(0, keepdims=True)
    nz = P > 0
    return float(max(0.0, (P[nz] * np.log2(P[nz] / (Pd @ Pe)[nz])).sum()))


def domain_fractions(table: np.ndarray) -> list[list[float]]:
    """Row d: the fraction of domain d's assignments that went to each expert (rows sum to 1)."""
    n = np.asarray(table, dtype=np.float64)
    return (n / np.maximum(n.sum(1, keepdims=True), 1)).tolist()


def specialised_experts(table: np.ndarray, purity: float = 0.9) -> int:
    """Experts at least `purity` of whose assignments come from one domain, after reweighting the
    domains to equal size (so a 60/40 token mix does not make every expert look 'specialised')."""
    n = np.asarray(table, dtype=np.float64)
    per_domain = n / np.maximum(n.sum(1, keepdims=True), 1)  # P(e | d)
    share = per_domain / np.maximum(per_domain.sum(0, keepdims=True), 1e-300)  # P(d | e) with equal P(d)
    used = n.sum(0) > 0
    return int(((share.max(0) >= purity) & used).sum())


def mi_test(indices: np.ndarray, labels: np.ndarray, n_experts: int, n_labels: int = 2, permutations: int = 200,
            seed: int = 0) -> dict:
    """I(expert; domain) of one layer against its permutation null.

    indices (S, T, k) or (S·T, k): the experts of S sequences of T tokens; labels (S, T).
    The null shuffles whole rows of `labels` across sequences. p = (1 + #{null ≥ observed}) / (1 + n)."""
    labels = np.asarray(labels)
    S, T = labels.shape
    idx = np.asarray(indices).reshape(S * T, -1)
    observed = mutual_information(contingency(idx, labels.reshape(-1), n_experts, n_labels))
    rng = np.random.default_rng(seed)
    null = np.array([mutual_information(contingency(idx, labels[rng.permutation(S)].reshape(-1), n_experts, n_labels))
                     for _ in range(permutations)])
    h = entropy_bits(np.bincount(labels.reshape(-1), minlength=n_labels) / labels.size)
    return {"mi_bits": observed, "h_domain_bits": h, "mi_fraction": observed / h if h > 0 else 0.0,
            "null_mean": float(null.mean()), "null_p95": float(np.quantile(null, 0.95)),
            "null_p99": float(np.quantile(null, 0.99)),
            "p_value": float((1 + (null >= observed).sum()) / (1 + permutations)),
            "excess_bits": float(observed - null.mean())}
