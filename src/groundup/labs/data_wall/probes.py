"""What a generation of synthetic text kept of the real data: its tail and its diversity. Pure NumPy
on token ids, so every probe can be tested on hand-built samples.

The tail is defined once, by the REAL training text: with cᵥ the count of token v there, sort the
tokens that occur by count, rarest first, and take the longest prefix whose total share
Σ cᵥ / Σ c stays ≤ `tail_share` (2% by default): the rare set 𝓡. Then

    tail mass of a sample      m = (# sampled tokens in 𝓡) / (# sampled tokens)
    tail mass ratio            m / m_real      1 = the tail kept, 0 = the tail gone (Shumailov et
                                               al. 2024: the tails vanish first), > 1 = more tail
                                               than real text (a uniform sampler scores ≫ 1)
    rare types kept            |{v ∈ 𝓡 : v occurs in the sample}| / |𝓡|
    rare-token loss            mean cross-entropy on held-out real positions whose target is in 𝓡
                               (computed by the lab from per-position losses: `masked_mean`)

Diversity: the distinct-n ratio (Li et al. 2016's distinct-n, within rows)

    distinct-n = |{distinct n-grams}| / (# n-grams)

over the rows of a sample (n-grams do not cross rows); it depends on the sample's size, so the lab
compares samples of one size only.
"""

from __future__ import annotations

import numpy as np


def token_counts(tokens, vocab_size: int) -> np.ndarray:
    """cᵥ for v < vocab_size."""
    return np.bincount(np.asarray(tokens, dtype=np.int64).reshape(-1), minlength=vocab_size)[:vocab_size]


def rare_set(counts, tail_share: float) -> np.ndarray:
    """Boolean mask (V,) of 𝓡: the rarest occurring tokens whose total share is ≤ tail_share."""
    counts = np.asarray(counts, dtype=float)
    if not 0 < tail_share < 1:
        raise ValueError(f"tail_share must be in (0, 1), got {tail_share}")
    present = np.flatnonzero(counts > 0)
    order = present[np.argsort(counts[present], kind="stable")]
    share = np.cumsum(counts[order]) / counts.sum()
    mask = np.zeros(len(counts), dtype=bool)
    mask[order[share <= tail_share]] = True
    return mask


def tail_mass(tokens, rare: np.ndarray) -> float:
    """Share of the tokens that fall in the rare set."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    return float(rare[tokens].mean())


def rare_types_kept(tokens, rare: np.ndarray) -> float:
    """Share of the rare set's tokens that occur at least once in `tokens`."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    seen = np.zeros(len(rare), dtype=bool)
    seen[tokens] = True
    return float((seen & rare).sum() / rare.sum()) if rare.any() else float("nan")


def distinct_ngrams(rows, n: int) -> float:
    """|distinct n-grams| / |n-grams| over the rows of a (rows, length) array (none cross rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] < n:
        raise ValueError(f"distinct_ngrams needs (rows, length ≥ {n}), got {rows.shape}")
    grams = np.lib.stride_tricks.sliding_window_view(rows, n, axis=1).reshape(-1, n)
    return float(len(np.unique(grams, axis=0)) / len(grams))


def masked_mean(values, mask) -> float:
    """Mean of `values` where `mask` holds (NaN if it never does)."""
    values, mask = np.asarray(values, dtype=float).reshape(-1), np.asarray(mask, dtype=bool).reshape(-1)
    return float(values[mask].mean()) if mask.any() else float("nan")
