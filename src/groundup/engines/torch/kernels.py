"""One converter puts groundup's fused CPU kernels (groundup.kernels) into a plain GPT:

    model = use_kernels(GPT(config))

The model file says what it computes (nn.Linear, nn.LayerNorm, GELU, attention by its formula or
SDPA); this converter decides where a faster version runs — the pattern of torchtitan's float8
converter, which swaps nn.Linear modules without the model file knowing. Each eligible module is
re-classed in place as its fused twin below: the very same module object, so its parameters (a
tied LM head stays the token embedding), buffers, hooks and state-dict names are exactly what they
were. Each fused forward uses its kernel where the kernel runs (float32 on the CPU, big enough:
groundup.kernels.runs_on) and the plain parent forward elsewhere, so a converted model computes
the same function on any device or dtype (tests/test_kernels.py holds each against its twin).

  nn.Linear                y = x·Wᵀ + b                             → FusedLinear       (kernels.linear)
  nn.LayerNorm             (x − mean)/√(var + ε)·γ + β               → FusedLayerNorm    (kernels.layer_norm)
  FeedForward              W₂·GELU(W₁x + b₁) + b₂: +b₁ and GELU      → FusedFeedForward  (kernels.gelu)
                           in one pass
  CausalSelfAttention      softmax(Q Kᵀ/√d_k, causal) V read from    → FusedCausalSelfAttention
                           the qkv projection in place                 (kernels.causal_attention)

LoRA-wrapped projections (model/lora.py) are not nn.Linear and stay as they are; a feed-forward or
attention whose projection is wrapped takes its plain path. Where the kernels are unavailable (no
C compiler, GROUNDUP_KERNELS=0) the converter changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from groundup import kernels
from groundup.model.attention import CausalSelfAttention, KVCache
from groundup.model.feedforward import FeedForward, gelu


class FusedLinear(nn.Linear):
    """y = x·Wᵀ + b as kernels.linear (register tiles; F.linear where the kernel does not run)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


class FusedLayerNorm(nn.LayerNorm):
    """(x − mean)/√(var + ε)·γ + β over the last dimension as kernels.layer_norm (F.layer_norm
    where the kernel does not run)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class FusedFeedForward(FeedForward):
    """FFN(x) = W₂·GELU(W₁x + b₁) + b₂ with W₁x in the matmul kernel, then + b₁ and GELU in one pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is gelu and type(self.up) is FusedLinear and kernels.runs_on(x, self.up.weight):
            hidden = kernels.gelu(kernels.linear(x, self.up.weight), self.up.bias)  # GELU(W₁x + b₁)
            return self.dropout(self.down(hidden))
        return super().forward(x)  # ReLU, a LoRA-wrapped W₁, off the CPU or float32, a tiny x


class FusedCausalSelfAttention(CausalSelfAttention):
    """softmax(Q Kᵀ/√d_k + causal mask) V in one kernel, reading Q, K and V from the qkv projection
    in place, adding their bias and rotating Q and K (RoPE) as it reads them. Runs for the sdpa path
    without a KV cache or active dropout, with a head size that is a multiple of 16 (the kernel works
    in blocks of 16 floats); everywhere else the parent's forward."""

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        if (self.path != "sdpa" or cache is not None or (self.training and self.dropout)
                or type(self.qkv) is not FusedLinear or not kernels.attention_applies(self.d_k, x, self.qkv.weight)):
            return super().forward(x, cache, layer, start)
        B, T, C = x.shape
        qkv = kernels.linear(x, self.qkv.weight).view(B, T, 3, self.n_head, self.d_k)  # W_QKV x, bias added inside
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.rope else None
        heads = kernels.causal_attention(qkv, self.qkv.bias, rope)  # (B, T, C), heads concatenated
        return self.residual_dropout(self.output(heads))


# plain class → its fused twin (exact types only: a subclass someone wrote is left as it is)
FUSED = {nn.Linear: FusedLinear, nn.LayerNorm: FusedLayerNorm, FeedForward: FusedFeedForward,
         CausalSelfAttention: FusedCausalSelfAttention}


def use_kernels(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear, nn.LayerNorm, FeedForward and CausalSelfAttention in `model` for its
    fused twin, in place (same module objects, same parameters, same names); returns `model`.
    Idempotent; a no-op where the kernels are unavailable (kernels.unavailable_reason() says why)."""
    if not kernels.enabled():
        return model
    for module in model.modules():
        fused = FUSED.get(type(module))
        if fused is not None:
            module.__class__ = fused  # the same object, now with the fused forward
    return model


def without_kernels(model: nn.Module) -> nn.Module:
    """The inverse of use_kernels: every fused module re-classed in place as its plain twin (same
    objects, parameters and names); returns `model`. For code that must see each nn.Linear's own
    forward — e.g. GPTQ's input hooks, which a fused attention or feed-forward would bypass."""
    plain = {fused: base for base, fused in FUSED.items()}
    for module in model.modules():
        base = plain.get(type(module))
        if base is not None:
            module.__class__ = base
    return model
