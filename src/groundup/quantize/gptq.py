"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", Algorithm 1): quantize a layer's weights one input column
at a time, and push each column's rounding error onto the columns not yet quantized, weighted by
the inverse Hessian of the layer's reconstruction error ‖WX − ŴX‖².

    H = 2 X Xᵀ / n           X: the layer's inputs (K × n) on the calibration sequences
    H ← H + λ I,  λ = 0.01 · mean diag(H)                  (dampening)
    U = Cholesky(H⁻¹)ᵀ  (upper)                            the rows of H⁻¹ the updates need
    for each column j (in order; act-order off):
        q_j = quant(w_j)               the group's scale and zero point are fixed when its first
                                       column j is reached, from the weights as updated so far
        e_j = (w_j − q_j) / U[j, j]
        w_{j+1:} ← w_{j+1:} − e_j · U[j, j+1:]           (error compensation)

Columns are processed in blocks of 128 with the block's updates to later columns applied at once
("lazy batch updates"; the same result as column by column, in exact arithmetic).
"""

from __future__ import annotations

import torch

from groundup.quantize.formats import (INT8_MAX, QuantizedWeight, int4_codes, int4_params, int8_scales, pack_int4)

DAMPENING = 0.01
BLOCK = 128


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """H = 2 X Xᵀ / n from inputs (n, K) (rows are tokens)."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    return 2.0 * x.T @ x / x.shape[0]


def inverse_hessian_factor(h: torch.Tensor, dampening: float = DAMPENING) -> torch.Tensor:
    """The upper Cholesky factor of (H + λI)⁻¹, λ = dampening · mean diag(H) (float64)."""
    h = h.double().clone()
    dead = torch.diag(h) == 0  # an input that is always 0: its weight never matters
    h[dead, dead] = 1.0
    damp = dampening * torch.mean(torch.diag(h))
    h += damp * torch.eye(h.shape[0], dtype=h.dtype)
    lower = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def quantize_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None,
                  dampening: float = DAMPENING) -> QuantizedWeight:
    """GPTQ-quantize W (N, K) = (out, in) given H (K, K) of its inputs."""
    W = w.detach().double().clone()
    n, k = W.shape
    W[:, torch.diag(h) == 0] = 0.0
    U = inverse_hessian_factor(h, dampening)
    codes = torch.zeros(n, k, dtype=torch.int16)
    if bits == 8:
        scales = int8_scales(W).double()  # per row, from the whole row, before any update
        zeros = None
    else:
        scales = torch.zeros(n, k // group_size, dtype=torch.float64)
        zeros = torch.zeros(n, k // group_size, dtype=torch.uint8)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        W1 = W[:, b0:b1].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            j = b0 + i
            col = W1[:, i]
            if bits == 8:
                q = torch.round(col / scales).clamp(-INT8_MAX, INT8_MAX)
                dq = q * scales
            else:
                g = j // group_size
                if j % group_size == 0:  # a new group: its parameters from the weights as they are now
                    s, z = int4_params(W1[:, i:i + group_size])  # groups never straddle blocks (g | 128)
                    scales[:, g], zeros[:, g] = s.double(), z
                s, z = scales[:, g], zeros[:, g].double()
                q = int4_codes(col, s, z).double()
                dq = s * (q - z)
            codes[:, j] = q.to(torch.int16)
            err = (col - dq) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    if bits == 8:
        return QuantizedWeight(8, None, codes.to(torch.int8), scales.float())
    return QuantizedWeight(4, group_size, pack_int4(codes.to(torch.uint8)), scales.float(), zeros)
