"""The stored low-bit formats: integer codes and the scales (and zero points) that map them back.

int8, per output channel, symmetric (one scale per row of W, shape (N, K) = (out, in)):

    s_n = max_k |W[n, k]| / 127          q[n, k] = clamp(round(W[n, k] / s_n), −127, 127)
    Ŵ[n, k] = s_n · q[n, k]

int4, group-wise along the input dimension, asymmetric (groups of g = 32, 64 or 128 columns; one
scale and one integer zero point per row and group, as in GPTQ's reference quantizer):

    lo = min(0, min W[n, group]),  hi = max(0, max W[n, group])      (0 stays representable)
    s = (hi − lo) / 15,  z = round(−lo / s) ∈ [0, 15]
    q = clamp(round(W / s) + z, 0, 15)          Ŵ = s · (q − z)

Two int4 codes share a byte: column 2j in the low nibble, column 2j + 1 in the high nibble
(byte = q[2j] | q[2j+1] << 4). This packed uint8 (N, K/2) matrix, the float32 scales and the uint8
zero points are what a quantized run's model.safetensors holds; a matmul kernel's own layout is
built from them at load time (groundup.quantize.linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT8_MAX = 127  # symmetric: −127..127 (−128 unused, so that −q is always representable)
INT4_LEVELS = 15  # asymmetric: 0..15
BITS = (8, 4)
GROUP_SIZES = (32, 64, 128)


@dataclass
class QuantizedWeight:
    """One matrix in its stored form. int8: qweight int8 (N, K), scales (N,), zeros None.
    int4: qweight uint8 (N, K/2) two codes per byte, scales (N, K/g), zeros uint8 (N, K/g)."""
    bits: int
    group_size: int | None
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        if self.bits == 8:
            return dequantize_int8(self.qweight, self.scales)
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size)


# ---- int8 -----------------------------------------------------------------------------------------
def int8_scales(w: torch.Tensor) -> torch.Tensor:
    """s_n = max_k |W[n, k]| / 127 (an all-zero row gets s = 1, so its codes are 0)."""
    scale = w.detach().float().abs().amax(dim=1) / INT8_MAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def int8_codes(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q = clamp(round(W / s), −127, 127) as int8 (round half to even, as torch.round)."""
    return torch.round(w.detach().float() / scales[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def quantize_int8(w: torch.Tensor) -> QuantizedWeight:
    scales = int8_scales(w)
    return QuantizedWeight(8, None, int8_codes(w, scales), scales)


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales[:, None]


# ---- int4 -----------------------------------------------------------------------------------------
def int4_params(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of `w` (..., g) over its last dimension:
    s = (hi − lo)/15, z = round(−lo/s), with lo ≤ 0 ≤ hi. Returns (s float32, z uint8)."""
    w = w.detach().float()
    lo = w.amin(dim=-1).clamp(max=0)
    hi = w.amax(dim=-1).clamp(min=0)
    flat = hi == lo  # an all-zero group: any scale works; GPTQ's reference uses the range [−1, 1]
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    scale = (hi - lo) / INT4_LEVELS
    zero = torch.round(-lo / scale).clamp(0, INT4_LEVELS)
    return scale, zero.to(torch.uint8)


def int4_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """q = clamp(round(W / s) + z, 0, 15) (uint8, one code per element; broadcast s and z)."""
    return (torch.round(w.detach().float() / scale) + zero.float()).clamp(0, INT4_LEVELS).to(torch.uint8)


def int4_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) → (N, K/g, g): the groups along the input dimension."""
    n, k = w.shape
    return w.reshape(n, k // group_size, group_size)


def quantize_int4(w: torch.Tensor, group_size: int) -> QuantizedWeight:
    groups = int4_groups(w, group_size)
    scales, zeros = int4_params(groups)
    codes = int4_codes(groups, scales[..., None], zeros[..., None]).reshape(w.shape)
    return QuantizedWeight(4, group_size, pack_int4(codes), scales, zeros)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    codes = int4_groups(unpack_int4(packed), group_size).float()
    return ((codes - zeros[..., None].float()) * scales[..., None]).reshape(packed.shape[0], -1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..15 → (N, K/2) uint8: byte j = codes[2j] | codes[2j+1] << 4."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 → (N, K) codes: the low nibble first, then the high one."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int | None) -> QuantizedWeight:
    """Round to nearest: each weight to its nearest code, independently."""
    return quantize_int8(w) if bits == 8 else quantize_int4(w, group_size)
