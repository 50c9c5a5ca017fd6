"""QuantizedLinear: y = x·Ŵᵀ + b with Ŵ held as low-bit codes, multiplied without rebuilding Ŵ.

A decoding step on the CPU is bound by reading the weights, so the product must read the codes
directly. Three paths, by what x is:

  float32, CPU, ≤ 16 rows       groundup.kernels.int8_linear / int4_linear: read the stored codes
  (decoding)                    (int8 (N, K); int4 packed (N, K/2)), convert them in registers
  bfloat16, CPU                 PyTorch's own kernels (the ones torchao builds on):
                                  int8  torch._weight_int8pack_mm(x, q (N, K) int8, s (N,))
                                  int4  aten._weight_int4pack_mm_for_cpu(x, packed, g, sz), with
                                        Ŵ = (q − 8)·s + m  (tinygemm's convention: a float offset m
                                        around code 8), so m = s·(8 − z) for our integer zero point z;
                                        packed = aten._convert_weight_to_int4pack_for_cpu(q int32, 2)
  anything else                 Ŵ dequantized, then F.linear (many rows at once: the prompt,
  (prefill, GPU, float64, …)    evaluation — the dequantization is paid once per call, over all rows)

Why not PyTorch's kernels for float32: in torch 2.13's CPU build their float32 path is not
vectorised — at GPT-2-small's 768 → 2304 with one row, _weight_int8pack_mm takes ~2.7 ms in
float32 against ~0.19 ms in bfloat16 and ~0.13 ms for the plain float32 F.linear
(benchmarks/quantize.py); the bfloat16 path rounds x and y to bfloat16. So groundup's own
float32 kernels run the decoding step, and PyTorch's serve bfloat16 inputs.

The int4 kernel layout is built from the stored tensors the first time it is needed (and again if
they are replaced or changed in place). The buffers `qweight`, `scales`, `zeros` (int4) and `bias`
are the module's state dict: exactly what a quantized run stores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groundup import kernels
from groundup.quantize.formats import QuantizedWeight, dequantize_int4, dequantize_int8, unpack_int4

INT4_MIDPOINT = 8  # tinygemm's codes are centred on 8
INNER_K_TILES = 2
KERNEL_ROWS = 16  # up to this many rows of x: the code-reading kernels; more: dequantize once and F.linear


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
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= KERNEL_ROWS and kernels.lowbit_runs_on(x2):
            if self.bits == 8:
                y = kernels.int8_linear(x2, self.qweight, self.scales, self.bias)
            else:
                y = kernels.int4_linear(x2, self.qweight, self.scales, self.zeros, self.group_size, self.bias)
        elif x2.device.type == "cpu" and x2.dtype == torch.bfloat16:
            y = self.torch_kernel(x2.contiguous())
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
        else:
            y = F.linear(x2, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return y.reshape(*shape[:-1], self.out_features)

    def torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) · Ŵᵀ by PyTorch's own low-bit CPU kernel (no bias); x float32 or bfloat16."""
        if self.bits == 8:
            return torch._weight_int8pack_mm(x, self.qweight, self.scales.to(x.dtype))
        packed, group, scales_and_zeros = self._int4_kernel_args()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros.to(x.dtype))

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
