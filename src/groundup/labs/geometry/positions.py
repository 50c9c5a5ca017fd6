"""Sinusoidal positions are a rotation: a shift by k positions is one fixed linear map M_k.

With ω_i = 10000^(−2i/C) and PE[pos] = (sin(pos·ω_0), cos(pos·ω_0), sin(pos·ω_1), cos(pos·ω_1), …),
the angle-addition formulas give, for every pair (2i, 2i+1),

    sin((pos+k)ω) =  cos(kω)·sin(pos·ω) + sin(kω)·cos(pos·ω)
    cos((pos+k)ω) = −sin(kω)·sin(pos·ω) + cos(kω)·cos(pos·ω)

so PE[pos+k] = M_k · PE[pos] with M_k block-diagonal, one 2×2 rotation [[cos kω_i, sin kω_i],
[−sin kω_i, cos kω_i]] per frequency, the same M_k for every pos. And the dot product

    PE[p] · PE[q] = Σ_i sin(pω_i)sin(qω_i) + cos(pω_i)cos(qω_i) = Σ_i cos((q − p)·ω_i)

depends on q − p alone. A table with neither property (a learned table, here at its random
initialisation) is the control: least squares finds no M_k that works for every pos, and its dot
products change with p at a fixed offset.
"""

from __future__ import annotations

import numpy as np
from groundup.model.positional import sinusoidal_table


def frequencies(n_embd: int) -> np.ndarray:
    """ω_i = 10000^(−2i/C), i = 0 … C/2 − 1 (float64)."""
    return 10000.0 ** (-np.arange(0, n_embd, 2, dtype=np.float64) / n_embd)


def sinusoidal_table_f64(block_size: int, n_embd: int) -> np.ndarray:
    """(T, C) in float64: PE[pos, 2i] = sin(pos·ω_i), PE[pos, 2i+1] = cos(pos·ω_i)."""
    angles = np.arange(block_size, dtype=np.float64)[:, None] * frequencies(n_embd)  # (T, C/2)
    table = np.empty((block_size, n_embd), dtype=np.float64)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table


def shift_map(k: int, n_embd: int) -> np.ndarray:
    """M_k (C × C): block-diagonal, block i = [[cos kω_i, sin kω_i], [−sin kω_i, cos kω_i]]."""
    M = np.zeros((n_embd, n_embd), dtype=np.float64)
    for i, w in enumerate(frequencies(n_embd)):
        c, s = np.cos(k * w), np.sin(k * w)
        M[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[c, s], [-s, c]]
    return M


def shift_errors(table: np.ndarray, maps) -> np.ndarray:
    """For each offset k = 0 … T−1: max over pos of |PE[pos+k] − M_k·PE[pos]| (elementwise),
    with maps(k) → M_k."""
    T = table.shape[0]
    return np.array([np.abs(table[k:] - table[: T - k] @ maps(k).T).max() for k in range(T)])


LSTSQ_OFFSETS = (1, 2, 3, 5, 8, 16, 32, 64, 128, 256)


def least_squares_shift_residuals(table: np.ndarray, offsets=LSTSQ_OFFSETS) -> np.ndarray:
    """For each offset k in `offsets`: the best single linear map M_k for all pos, by least
    squares (PE[k:] ≈ PE[:T−k]·M_kᵀ), and its relative residual ‖PE[k:] − PE[:T−k]·M_kᵀ‖_F / ‖PE[k:]‖_F.
    Meaningful only when T − k > C (more equations than unknowns per row of M_k)."""
    T, C = table.shape
    if T - max(offsets) <= C:
        raise ValueError(f"least squares needs T − k > C: T = {T}, k up to {max(offsets)}, C = {C}")
    residuals = []
    for k in offsets:
        source, target = table[: T - k], table[k:]
        M_t, *_ = np.linalg.lstsq(source, target, rcond=None)  # (C, C) = M_kᵀ
        residuals.append(np.linalg.norm(target - source @ M_t) / np.linalg.norm(target))
    return np.array(residuals)


def dot_by_offset(table: np.ndarray, max_offset: int) -> dict:
    """For each offset d = 0 … max_offset, the dot products PE[p]·PE[p+d] over every p: their mean
    and their spread (max − min over p), each divided by the mean squared norm PE·PE (so a random
    table and the sinusoids compare on one scale)."""
    T = table.shape[0]
    gram = table @ table.T  # (T, T): PE[p]·PE[q]
    scale = float(np.mean(np.diag(gram)))
    mean, spread = [], []
    for d in range(max_offset + 1):
        dots = np.diagonal(gram, offset=d)  # PE[p]·PE[p+d], p = 0 … T−1−d
        mean.append(float(dots.mean()) / scale)
        spread.append(float(dots.max() - dots.min()) / scale)
    return {"mean": mean, "spread": spread, "scale": scale}


def random_table(block_size: int, n_embd: int, seed: int, std: float = 0.02) -> np.ndarray:
    """A learned position table at initialisation: N(0, std²) entries (GPT-2's init), float64."""
    return np.random.default_rng(seed).normal(0.0, std, size=(block_size, n_embd))


def measure(seed: int, block_size: int = 512, n_embd: int = 64, max_offset: int = 128) -> dict:
    """The rotation and the offset-only dot product, for the sinusoids and for a random table."""
    sinusoids = sinusoidal_table_f64(block_size, n_embd)
    control = random_table(block_size, n_embd, seed)
    formula = shift_errors(sinusoids, lambda k: shift_map(k, n_embd))
    model_table = sinusoidal_table(block_size, n_embd).double().numpy()  # what the model adds (float32)
    offsets = [k for k in LSTSQ_OFFSETS if block_size - k >= 2 * n_embd]  # at least twice as many equations as unknowns
    sin_dots, rnd_dots = dot_by_offset(sinusoids, max_offset), dot_by_offset(control, max_offset)
    return {
        "shift_max_error": float(formula.max()),  # max over pos, k of |PE(pos+k) − M_k·PE(pos)|, float64
        "shift_max_error_model_table": float(shift_errors(model_table, lambda k: shift_map(k, n_embd)).max()),
        "model_table_vs_formula": float(np.abs(model_table - sinusoids).max()),
        "formula_map_on_random_table": float(np.abs(
            control[1:] - control[:-1] @ shift_map(1, n_embd).T).max() / np.abs(control).max()),
        "lstsq_residual_sinusoidal_max": float(least_squares_shift_residuals(sinusoids, offsets).max()),
        "lstsq_residual_random_min": float(least_squares_shift_residuals(control, offsets).min()),
        "dot_spread_sinusoidal_max": float(max(sin_dots["spread"])),
        "dot_spread_random_min": float(min(rnd_dots["spread"][1:])),
        "dot_spread_random_mean": float(np.mean(rnd_dots["spread"][1:])),
        "dot_mean_sinusoidal": sin_dots["mean"],
        "dot_mean_random": rnd_dots["mean"],
        "dot_spread_sinusoidal": sin_dots["spread"],
        "dot_spread_random": rnd_dots["spread"],
    }

