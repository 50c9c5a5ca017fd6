"""Fused CPU kernels for the PyTorch engine: the same math as the plain PyTorch ops, in fewer passes.

On a CPU, PyTorch's eager mode runs each elementwise op as its own pass over memory, and on some
builds its tanh is not vectorised at all: GELU then costs as much as a 128-wide matmul. These kernels
(kernels/cpu.c) do each job in one pass, on float32 tensors on the CPU. The model never calls them:
groundup.engines.torch.kernels.use_kernels swaps fused modules that do into a plain model, and
train.optim.configure_adamw picks the fused update (both switched by train.kernels):

  gelu(x, bias)                 GELU (tanh form) of x + bias, with the   twin: F.gelu(x + bias, approximate="tanh")
                                bias gradient
  causal_attention(qkv, bias,   softmax(Q Kᵀ/√d_k, causal) V per head,  twin: F.scaled_dot_product_attention
                   rope)        read straight from the fused projection  (is_causal=True), apply_rope
                                and its bias, RoPE optional
  layer_norm(x, γ, β, eps)      layer norm, forward and backward         twin: F.layer_norm
  linear(x, W, b)               x·Wᵀ + b and its gradients, as register  twin: F.linear
                                tiles of 8 × 32 (the matrix products)
  int8_linear(x, q, s, b)       x·Ŵᵀ + b, Ŵ = s ⊙ q read as int8 codes   twin: F.linear(x, q·s, b)
  int4_linear(x, q, s, z, g, b) x·Ŵᵀ + b, Ŵ = s·(q − z) read as packed    twin: F.linear(x, dequantized, b)
                                int4 codes, groups of g (no autograd:
                                for decoding; groundup.quantize)
  total_norm(tensors), clip_    ‖g‖₂ over all gradients, clipping        twin: torch.nn.utils.get_total_norm,
                                                                               clip_grads_with_norm_
  adamw_step(…)                 AdamW over all parameters in one pass    twin: torch.optim.AdamW

The C source is compiled on first use with the system's C compiler into the groundup cache and loaded
with ctypes. Without a compiler, on other devices or dtypes, under torch.compile, or with
GROUNDUP_KERNELS=0 in the environment, the plain PyTorch op runs instead — same results to float
rounding (tests/test_kernels.py holds every kernel against its twin, values and gradients). Tensors
smaller than MIN_ELEMENTS (generation's one-token steps) also take the PyTorch op.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from groundup.util.cache import default_cache_dir  # the one groundup cache: $GROUNDUP_CACHE, ~/.cache/groundup

SOURCE = Path(__file__).with_name("cpu.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-tree-loop-distribute-patterns", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]

# Below this many elements a call's fixed cost (autograd Function, ctypes, waking threads) outweighs
# what the kernel saves: one token's layer norm while generating is 128 numbers. Smaller tensors go
# to the PyTorch op.
MIN_ELEMENTS = 1 << 14

_library: ctypes.CDLL | None = None
_load_error: str | None = None


def _cpu_signature() -> str:
    """-march=native builds for this CPU: the library's name includes what CPU it was built for."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL:
    source = SOURCE.read_bytes()
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(source + " ".join([compiler, *FLAGS, _cpu_signature(), sys.platform]).encode()).hexdigest()[:16]
    path = default_cache_dir() / "kernels" / f"groundup_cpu_{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)  # compile aside, then rename: atomic
        os.close(fd)
        try:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed: {result.stderr.strip()[:500]}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(path))
    f32p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.gelu_forward.argtypes = [f32p, f32p, f32p, i64, i32, i32]
    lib.gelu_backward.argtypes = [f32p, f32p, f32p, f32p, f32p, i64, i32, i32]
    lib.attention_forward.argtypes = [f32p, f32p, f32p, i64, i64, f32p, f32p, f32p, f32p, f32p, i32, i32, i32, i32,
                                      f32, i32]
    lib.attention_backward.argtypes = [f32p, f32p, f32p, i64, i64, f32p, f32p, f32p, f32p, f32p, f32p, f32p, f32p,
                                       f32p, f32p, i32, i32, i32, i32, f32, i32]
    lib.layer_norm_forward.argtypes = [f32p, f32p, f32p, f32p, f32p, f32p, i64, i32, f32, i32]
    lib.layer_norm_backward.argtypes = [f32p, f32p, f32p, f32p, f32p, f32p, f32p, f32p, i64, i32, i32]
    lib.sum_of_squares.argtypes = [f32p, f32p, i32, i32]
    lib.sum_of_squares.restype = ctypes.c_double
    lib.scale.argtypes = [f32p, f32p, i32, f32, i32]
    lib.adamw_step.argtypes = [f32p, f32p, f32p, f32p, f32p, i32, f32, f32, f32, f32, f32, f32, f32, i32]
    lib.matmul.argtypes = [i64, i64, i64, f32p, i64, i64, f32p, i64, i64, f32p, f32p, i64, i32]
    lib.linear_backward.argtypes = [i64, i64, i64, f32p, i64, i64, f32p, i64, i64, f32p, f32p, f32p, f32p, i32]
    lib.int8_linear.argtypes = [f32p, f32p, f32p, f32p, f32p, i64, i64, i64, i32]
    lib.int4_linear.argtypes = [f32p, f32p, f32p, f32p, f32p, f32p, f32p, f32p, i64, i64, i64, i64, i32]
    for fn in (lib.int8_linear, lib.int4_linear, lib.gelu_forward, lib.gelu_backward, lib.attention_forward, lib.attention_backward,
               lib.layer_norm_forward, lib.layer_norm_backward, lib.matmul, lib.linear_backward, lib.scale, lib.adamw_step):
        fn.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (the reason is in `unavailable_reason()`)."""
    global _library, _load_error
    if _library is None and _load_error is None:
        if os.environ.get("GROUNDUP_KERNELS", "1") == "0":
            _load_error = "turned off by GROUNDUP_KERNELS=0"
        else:
            try:
                _library = _build()
            except (OSError, subprocess.SubprocessError) as e:
                _load_error = f"could not build the CPU kernels ({e}); using plain PyTorch ops"
    return _library


def unavailable_reason() -> str | None:
    library()
    return _load_error


def enabled() -> bool:
    """True where the kernels are in use (the cause is cached: set GROUNDUP_KERNELS before the first call)."""
    return library() is not None


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _usable(*tensors: torch.Tensor | None) -> bool:
    """True where every tensor given (None: an absent bias, skipped) is a plain float32 CPU tensor and
    the kernels are on."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    if not all(t is None or (type(t) in _PLAIN and t.is_cpu and t.dtype is torch.float32 and t.layout is torch.strided)
               for t in tensors):  # (a tensor subclass such as FSDP's DTensor goes to PyTorch's own op)
        return False
    return enabled()


def runs_on(*tensors: torch.Tensor | None) -> bool:
    """True where the layer kernels (linear, gelu, layer_norm, causal_attention) run on these tensors:
    float32 on the CPU (see _usable), the first of them with at least MIN_ELEMENTS elements."""
    return tensors[0].numel() >= MIN_ELEMENTS and _usable(*tensors)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _ptr_or_none(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        x = x.contiguous()
        y = torch.empty_like(x)
        cols = x.shape[-1]
        library().gelu_forward(_ptr(x), _ptr_or_none(bias), _ptr(y), x.numel() // cols, cols, torch.get_num_threads())
        ctx.save_for_backward(x, bias)
        return y

    @staticmethod
    @once_differentiable  # (the C backward is not itself differentiable: a second derivative raises)
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dy = dy.contiguous()
        cols = x.shape[-1]
        dx = torch.empty_like(x)
        dbias = torch.empty_like(bias) if bias is not None else None
        library().gelu_backward(_ptr(x), _ptr_or_none(bias), _ptr(dy), _ptr(dx), _ptr_or_none(dbias),
                                x.numel() // cols, cols, torch.get_num_threads())
        return dx, dbias


def gelu(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """GELU, tanh form (as GPT-2), of x (+ bias over the last dimension):
    0.5·z·(1 + tanh(√(2/π)·(z + 0.044715·z³))), z = x + bias."""
    if runs_on(x, bias):
        return _Gelu.apply(x, bias)
    return F.gelu(x if bias is None else x + bias, approximate="tanh")


class _CausalAttention(torch.autograd.Function):
    """qkv: (B, T, 3, H, d) — the fused projection's output, read in place — its bias (3·H·d) or None,
    and RoPE's cos and sin for positions 0..T-1 (T, d/2) or None. Returns (B, T, H·d)."""

    @staticmethod
    def forward(ctx, qkv, bias, cos, sin):
        qkv = qkv.contiguous()
        B, T, _, H, d = qkv.shape
        out = qkv.new_empty(B, T, H * d)
        lse = qkv.new_empty(B, H, T)
        row, batch, scale = 3 * H * d, T * 3 * H * d, d ** -0.5
        base = _ptr(qkv)
        library().attention_forward(base, base + 4 * H * d, base + 8 * H * d, row, batch, _ptr_or_none(bias),
                                    _ptr_or_none(cos), _ptr_or_none(sin), _ptr(out), _ptr(lse), B, T, H, d, scale,
                                    torch.get_num_threads())
        ctx.save_for_backward(qkv, bias, cos, sin, out, lse)
        return out

    @staticmethod
    @once_differentiable  # (the C backward is not itself differentiable: a second derivative raises)
    def backward(ctx, dout):
        qkv, bias, cos, sin, out, lse = ctx.saved_tensors
        B, T, _, H, d = qkv.shape
        dout = dout.contiguous()
        dqkv = torch.empty_like(qkv)  # every element is written: dQ rows, dK and dV rows, all heads
        dbias = torch.empty_like(bias) if bias is not None else None
        row, batch, scale = 3 * H * d, T * 3 * H * d, d ** -0.5
        base, grad = _ptr(qkv), _ptr(dqkv)
        library().attention_backward(base, base + 4 * H * d, base + 8 * H * d, row, batch, _ptr_or_none(bias),
                                     _ptr_or_none(cos), _ptr_or_none(sin), _ptr(out), _ptr(dout), _ptr(lse), grad,
                                     grad + 4 * H * d, grad + 8 * H * d, _ptr_or_none(dbias), B, T, H, d, scale,
                                     torch.get_num_threads())
        return dqkv, dbias, None, None


def attention_applies(head_size: int, *tensors: torch.Tensor) -> bool:
    """True where causal_attention can run on these tensors (float32 on the CPU, head size a multiple
    of 16: the kernel works in blocks of 16 floats) and is worth it (the first has ≥ MIN_ELEMENTS)."""
    return head_size % 16 == 0 and runs_on(*tensors)


def causal_attention(qkv: torch.Tensor, bias: torch.Tensor | None = None,
                     rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Causal self-attention straight from the fused projection: qkv (B, T, 3, H, d) without its bias,
    plus the bias (3·H·d) or None, and for RoPE the (cos, sin) tables of positions 0..T-1, each
    (T, d/2) → heads concatenated (B, T, H·d). Only where attention_applies."""
    cos, sin = (t.contiguous() for t in rope) if rope is not None else (None, None)
    if not attention_applies(qkv.shape[-1], qkv, bias, cos, sin):
        raise ValueError("causal_attention needs float32 CPU tensors and a head size that is a multiple of 16")
    return _CausalAttention.apply(qkv, bias, cos, sin)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x = x.contiguous()
        C = x.shape[-1]
        N = x.numel() // C
        y, mean, rstd = torch.empty_like(x), x.new_empty(N), x.new_empty(N)
        library().layer_norm_forward(_ptr(x), _ptr(weight), _ptr_or_none(bias), _ptr(y),
                                     _ptr(mean), _ptr(rstd), N, C, eps, torch.get_num_threads())
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable  # (the C backward is not itself differentiable: a second derivative raises)
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        C = x.shape[-1]
        dx, dweight = torch.empty_like(x), torch.empty_like(weight)
        dbias = torch.empty_like(weight) if ctx.has_bias else None
        library().layer_norm_backward(_ptr(x), _ptr(weight), _ptr(mean), _ptr(rstd), _ptr(dy), _ptr(dx), _ptr(dweight),
                                      _ptr_or_none(dbias), x.numel() // C, C, torch.get_num_threads())
        return dx, dweight, dbias, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Layer norm over the last dimension: (x − mean)/√(var + eps)·γ + β."""
    if weight is not None and runs_on(x, weight, bias):
        return _LayerNorm.apply(x, weight, bias, eps)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


class _Linear(torch.autograd.Function):
    """y = x·Wᵀ + b over the last dimension of x; backward dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        wt = weight.t()
        y = x.new_empty(x2.shape[0], weight.shape[0])
        library().matmul(y.shape[0], y.shape[1], x2.shape[1], _ptr(x2), x2.stride(0), x2.stride(1), _ptr(wt),
                         wt.stride(0), wt.stride(1), _ptr_or_none(bias), _ptr(y), y.shape[1], torch.get_num_threads())
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable  # (the C backward is not itself differentiable: a second derivative raises)
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]).contiguous()
        wants_x, wants_w, wants_b = ctx.needs_input_grad
        dx = x.new_empty(x2.shape) if wants_x else None
        dweight = weight.new_empty(weight.shape) if wants_w else None
        dbias = weight.new_empty(weight.shape[0]) if ctx.has_bias and wants_b else None
        library().linear_backward(x2.shape[0], x2.shape[1], weight.shape[0], _ptr(x2), x2.stride(0), x2.stride(1),
                                  _ptr(weight), weight.stride(0), weight.stride(1), _ptr(dy2), _ptr_or_none(dx),
                                  _ptr_or_none(dweight), _ptr_or_none(dbias), torch.get_num_threads())
        return dx.view(x.shape) if dx is not None else None, dweight, dbias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x·Wᵀ + b over the last dimension of x (F.linear): W (out × in), b (out) or None."""
    if x.dim() >= 2 and runs_on(x, weight, bias):
        return _Linear.apply(x, weight, bias if bias is None or bias.is_contiguous() else bias.contiguous())
    return F.linear(x, weight, bias)


# ---- many tensors in one call: gradient norm, clipping, AdamW ------------------------------------
def _pointers(tensors) -> tuple[ctypes.Array, ctypes.Array]:
    ptrs = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])
    sizes = (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])
    return ptrs, sizes


def applies(tensors) -> bool:
    """True where the many-tensor kernels below can take these tensors (contiguous float32 on the CPU)."""
    return bool(tensors) and _usable(*tensors) and all(t.is_contiguous() for t in tensors)


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """‖x‖₂ over every element of every tensor (summed in float64), as a float32 0-dim tensor; None
    where the kernel does not apply."""
    if not applies(tensors):
        return None
    ptrs, sizes = _pointers(tensors)
    return torch.tensor(library().sum_of_squares(ptrs, sizes, len(tensors), torch.get_num_threads()) ** 0.5,
                        dtype=torch.float32)


def clip_(tensors: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> bool:
    """Scale every tensor in place by min(1, max_norm / (norm + 1e-6)) (torch.nn.utils.
    clip_grads_with_norm_'s rule); False (nothing done) where the kernel does not apply."""
    if not applies(tensors):
        return False
    factor = max_norm / (float(norm) + 1e-6)
    if factor < 1.0:
        ptrs, sizes = _pointers(tensors)
        library().scale(ptrs, sizes, len(tensors), factor, torch.get_num_threads())
    return True


def tensor_pointers(params, exp_avgs, exp_avg_sqs) -> tuple:
    """The addresses adamw_step needs, made once: parameters and moments are updated in place."""
    params, sizes = _pointers(params)
    return params, _pointers(exp_avgs)[0], _pointers(exp_avg_sqs)[0], sizes


def adamw_step(pointers: tuple, grads: list[torch.Tensor], *, step: int, lr: float, beta1: float, beta2: float,
               eps: float, weight_decay: float) -> None:
    """One AdamW update in place (torch.optim.AdamW's formula) of the parameters and moments that
    `pointers` (from tensor_pointers) names, with these gradients (checked with `applies`)."""
    params, exp_avgs, exp_avg_sqs, sizes = pointers
    library().adamw_step(params, _pointers(grads)[0], exp_avgs, exp_avg_sqs, sizes, len(grads), lr, beta1, beta2, eps,
                         weight_decay, 1 - beta1 ** step, (1 - beta2 ** step) ** 0.5, torch.get_num_threads())


# ---- low-bit weight-only products (groundup.quantize: decoding reads the codes, not floats) ----------
def lowbit_runs_on(x: torch.Tensor) -> bool:
    """True where int8_linear / int4_linear run: float32 on the CPU with the kernels on (any size)."""
    return _usable(x)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) float32 · (s ⊙ q)ᵀ + b with q (N, K) int8, s (N,): y[m, n] = s[n]·Σ_k x[m, k]·q[n, k] + b[n]."""
    x = x.contiguous()
    M, K = x.shape
    N = q.shape[0]
    y = x.new_empty(M, N)
    library().int8_linear(_ptr(x), _ptr(q), _ptr(scales), _ptr_or_none(bias), _ptr(y), M, N, K, torch.get_num_threads())
    return y


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) float32 · Ŵᵀ + b with Ŵ[n, k] = s[n, k/g]·(q[n, k] − z[n, k/g]), q packed two per byte
    (packed (N, K/2) uint8: column 2j in the low nibble), s float32 and z uint8 (N, K/g)."""
    x = x.contiguous()
    M, K = x.shape
    N = packed.shape[0]
    pairs = x.view(M, K // 2, 2)
    even, odd = pairs[..., 0].contiguous(), pairs[..., 1].contiguous()
    group_sums = x.view(M, K // group_size, group_size).sum(-1).contiguous()
    y = x.new_empty(M, N)
    library().int4_linear(_ptr(even), _ptr(odd), _ptr(group_sums), _ptr(packed), _ptr(scales), _ptr(zeros),
                          _ptr_or_none(bias), _ptr(y), M, N, K, group_size, torch.get_num_threads())
    return y
