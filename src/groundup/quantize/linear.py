"""QuantizedLinear: y = x·Ŵᵀ + b with Ŵ held as low-bit codes, multiplied without rebuilding Ŵ.

A decoding step on the CPU is bound by reading the weights, so the matmul reads the codes directly
with PyTorch's own CPU kernels:

  int8   torch._weight_int8pack_mm(x, q (N, K) int8, s (N,))         y = x · (s ⊙ q)ᵀ
  int4   aten._weight_int4pack_mm_for_cpu(x, packed, g, sz)          y = x · Ŵᵀ,
         Ŵ[n, k] = (q[n, k] − 8) · s[n, k/g] + m[n, k/g]             (tinygemm's convention: a
                                                                      float offset m around code 8)
         packed = aten._convert_weight_to_int4pack_for_cpu(q int32 (N, K), 2), sz = (K/g, N, 2)

Our stored zero point z is an integer code (Ŵ = s · (q − z)), so m = s · (8 − z) gives the same
Ŵ. The kernel layout is built from the stored tensors the first time it is needed (and again if
they are replaced or changed in place). Off the CPU, or for inputs that are not float32, Ŵ is dequantized and
multiplied with F.linear: the same function, slower. The buffers `qweight`, `scales`, `zeros`
(int4) and `bias` are the module's state dict: exactly what a quantized run stores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groundup.quantize.formats import QuantizedWeight, dequantize_int4, dequantize_int8, unpack_int4

INT4_MIDPOINT = 8  # tinygemm's codes are centred on 8
INNER_K_TILES = 2


def int4_kernel_layout(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed weight, scales_and_zeros) for aten._weight_int4pack_mm_for_cpu from our stored form."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(qweight).to(torch.int32), INNER_K_TILES)
    offsets = scales * (INT4_MIDPOINT - zeros.float())
    return packed, torch.stack([scales, offsets], dim=-1).transpose(0, 1).contiguous()


class QuantizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features))
            self.zeros = None
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, groups))
            self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernel = None  # ([(tensor, version) it was built from], packed, scales_and_zeros)

    @classmethod
    def from_quantized(cls, q: QuantizedWeight, bias: torch.Tensor | None) -> "QuantizedLinear":
        n = q.qweight.shape[0]
        k = q.qweight.shape[1] * (2 if q.bits == 4 else 1)
        module = cls(k, n, q.bits, q.group_size, bias is not None)
        module.qweight, module.scales = q.qweight.contiguous(), q.scales.float().contiguous()
        if q.bits == 4:
            module.zeros = q.zeros.contiguous()
        if bias is not None:
            module.bias = bias.detach().float().clone()
        return module.to(q.qweight.device)

    def dequantize(self) -> torch.Tensor:
        """Ŵ (N, K) in float32: the reference the fast path must match."""
        if self.bits == 8:
            return dequantize_int8(self.qweight, self.scales)
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).contiguous()
        if self.bits == 8:
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, *self._int4_kernel_args())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _int4_kernel_args(self):
        source = (self.qweight, self.scales, self.zeros)
        stamp = [(t, t._version) for t in source]  # replaced (assign) or changed in place (copy_)
        if self._kernel is None or any(a is not b or u != v for (a, u), (b, v) in zip(self._kernel[0], stamp)):
            self._kernel = (stamp, *int4_kernel_layout(*source))
        return self._kernel[1], self.group_size, self._kernel[2]

    def _apply(self, fn, recurse=True):  # .to(device) etc.: the kernel layout is rebuilt on demand
        self._kernel = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}, bias={self.bias is not None}"
