"""Mixture of experts: a sparse feed-forward layer in which a router sends each token to k of E
expert FFNs (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021; Mixtral, Jiang et al. 2024).

On the N = B·T tokens x (N × C) of a batch:

    logits = x W_routerᵀ                       (N × E), in float32 even under bf16 autocast
    p      = softmax(logits)                    router probabilities
    g, idx = top-k of p per token               gates and chosen experts (N × k)
    g      = g / Σⱼ g                           with normalize_gates (Mixtral; Switch keeps raw p)
    y_e(x) = W_down,e · act(W_up,e x + b_up,e) + b_down,e
             (swiglu: W_down,e · (silu(W_gate,e x) ⊙ W_up,e x))
    y(t)   = Σⱼ g[t, j] · y_{idx[t, j]}(x_t)

Capacity (dropless = false, as Switch): each expert computes at most
capacity = ⌈capacity_factor · k · N / E⌉ assignments. Assignments (t, j) are ranked by choice rank j
first, then token index t, so every token's first choice is served before anyone's second choice;
an assignment past its expert's capacity contributes 0 (the residual connection carries the token)
and is counted in `stats.dropped`.

Auxiliary losses (per sparse layer, on all N tokens, before drops; GPT.aux_loss() sums them):

    balance = α · E · Σᵢ fᵢ · Pᵢ     fᵢ = (top-k assignments to expert i) / N  (Σ f = k, no gradient)
                                     Pᵢ = mean_t p[t, i]                     (Switch, eq. 4)
    z       = β · mean_t (logsumexp_e logits[t, e])²                         (ST-MoE, Zoph et al. 2022)

The balance term is HF transformers' Mixtral `load_balancing_loss_func` on one layer, times α. Both
are computed on the tokens of one forward: per micro-batch and, under torchrun, per rank (as Switch
does); f·P is not linear in the batch, so the balance term of a split batch differs slightly from
that of the whole.

The experts are stacked tensors — up.weight (E, H, C), down.weight (E, C, H) — applied in one
batched product per projection: assignments are sorted by expert, then either
`torch._grouped_mm` multiplies each expert's contiguous group by its matrix, or (float64, shapes it
does not take) the groups are padded to the largest and multiplied with one torch.bmm. No loop runs
over tokens or experts. An expert that receives no tokens still gets a (zero) gradient, so DDP and
FSDP synchronise every parameter on every step.

What the trainer and the labs read after a forward (also through GPT: moe_layers(), aux_loss(),
routing_stats(), routing_summary()):

    layer.aux_loss   this layer's balance + z loss, a scalar with gradient
    layer.stats      RoutingStats: tokens_per_expert (E,), dropped, entropy, expert_indices (N, k), capacity
    layer.route(x)   (logits, p, gates, indices) for x (N × C), without running the experts
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from groundup.config import ModelConfig
from groundup.model.feedforward import ACTIVATIONS


@dataclass
class RoutingStats:
    """What a sparse layer's router did in its last forward (all detached, on the model's device).

    tokens_per_expert  (E,) int64   top-k assignments per expert, before drops (sums to k·N)
    dropped            ()  int64    assignments dropped for capacity (0 when dropless)
    entropy            ()  float32  mean over tokens of the router entropy H(p) = −Σᵢ pᵢ log pᵢ (nats)
    expert_indices     (N, k) int64 the chosen experts per token, in the flattened B·T order
    capacity           int or None  assignments each expert may compute (None: dropless)
    """

    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor
    entropy: torch.Tensor
    expert_indices: torch.Tensor
    capacity: int | None

    @property
    def assignments(self) -> int:
        """k · N: every routed (token, choice) pair."""
        return self.expert_indices.numel()


class ExpertLinear(nn.Module):
    """E independent linear maps stacked: weight (E, out, in), bias (E, out). The batched
    counterpart of nn.Linear, applied by `expert_matmul` to tokens grouped by expert."""

    def __init__(self, n_experts: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n_experts, out_features)) if bias else None

    def extra_repr(self) -> str:
        E, out_features, in_features = self.weight.shape
        return f"experts={E}, in_features={in_features}, out_features={out_features}, bias={self.bias is not None}"


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient (torch._grouped_mm's backward rejects
    the stride-0 gradients that e.g. .sum() produces)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert matmuls run in: the autocast dtype when autocast is on, else x's."""
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_mm_applies(device: torch.device, dtype: torch.dtype, *widths: int) -> bool:
    """torch._grouped_mm runs here: fp32/bf16/fp16 on the CPU, bf16 on CUDA (not float64), every
    row stride (each width) a multiple of 16 bytes."""
    if not hasattr(torch, "_grouped_mm") or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if device.type == "cuda" and (dtype != torch.bfloat16 or torch.cuda.get_device_capability(device) < (9, 0)):
        return False  # the CUDA kernels take bf16, on Hopper and later
    if device.type not in ("cpu", "cuda"):
        return False
    if torch.compiler.is_compiling() and dtype != torch.bfloat16:
        return False  # torch.compile's shape propagation (fake tensors) takes bf16 only, as on CUDA
    per_16_bytes = 128 // torch.finfo(dtype).bits  # elements in 16 bytes
    return all(w % per_16_bytes == 0 for w in widths)


def expert_matmul(x: torch.Tensor, layer: ExpertLinear, *, experts: torch.Tensor, offsets: torch.Tensor,
                  slots: torch.Tensor, width: int, method: str, dtype: torch.dtype) -> torch.Tensor:
    """Rows of x (M × in, sorted by expert: expert e owns rows offsets[e-1]..offsets[e]) times their
    expert's Wᵀ, plus its bias → (M × out), computed in `dtype`.

    method: "grouped" (torch._grouped_mm over the groups) or "padded" (scatter into (E, width, in)
    at (expert, slot), one torch.bmm, gather back; slots are the rows' positions within their
    group, width > every slot)."""
    x, weight = x.to(dtype), layer.weight.to(dtype)
    if method == "grouped":
        y = _ContiguousGrad.apply(torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets))
    elif method == "padded":
        E, out_features, in_features = weight.shape
        padded = x.new_zeros(E, width, in_features).index_put((experts, slots), x)  # (E, width, in)
        y = torch.bmm(padded, weight.transpose(1, 2))[experts, slots]  # (M, out)
    else:
        raise ValueError(f"unknown expert matmul method {method!r}; use auto, grouped or padded")
    if layer.bias is not None:
        y = y + layer.bias.to(dtype)[experts]
    return y


class MixtureOfExperts(nn.Module):
    """The sparse FFN of one block: router (E × C), experts up/gate (E, H, C) and down (E, C, H).

    After each forward: `aux_loss` (the balance + z terms of this layer, a scalar with gradient, fp32)
    and `stats` (RoutingStats, detached). `method` chooses the batched expert product ("auto",
    "grouped", "padded"; benchmarks/moe.py measures them)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C, H, E = config.n_embd, config.expert_size, config.n_experts
        self.n_experts, self.top_k = E, config.experts_per_token
        self.normalize_gates = config.normalize_gates
        self.dropless, self.capacity_factor = config.dropless, config.capacity_factor
        self.balance_coef, self.z_coef = config.balance_loss, config.router_z_loss
        self.swiglu = config.activation == "swiglu"
        self.activation = ACTIVATIONS[config.activation]
        self.router = nn.Linear(C, E, bias=False)  # W_router: C → E
        self.up = ExpertLinear(E, C, H, config.bias)  # W_up,e: C → H
        self.gate = ExpertLinear(E, C, H, config.bias) if self.swiglu else None  # W_gate,e (swiglu)
        self.down = ExpertLinear(E, H, C, config.bias)  # W_down,e: H → C
        self.dropout = nn.Dropout(config.dropout)
        self.method = "auto"
        self.aux_loss: torch.Tensor | None = None
        self.stats: RoutingStats | None = None

    def capacity(self, n_tokens: int) -> int | None:
        """Assignments each expert may compute: ⌈capacity_factor · k · N / E⌉, None when dropless."""
        if self.dropless:
            return None
        return math.ceil(self.capacity_factor * self.top_k * n_tokens / self.n_experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N × C) → router logits (N × E), probabilities p (N × E), gates (N × k), expert
        indices (N × k). In float32 whatever the autocast (float64 stays float64): small logit
        differences decide the routing, and bf16 keeps 8 bits of them."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.to(dtype), self.router.weight.to(dtype))
        probs = logits.softmax(dim=-1)
        gates, indices = probs.topk(self.top_k, dim=-1)  # (N, k), largest first
        if self.normalize_gates:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return logits, probs, gates, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C), tokens in row-major B·T order
        N, E, k = x.shape[0], self.n_experts, self.top_k
        logits, probs, gates, indices = self.route(x)

        # Assignments in priority order (choice rank j first, then token t), grouped by expert.
        by_priority = indices.t().reshape(-1)  # (k·N,): assignment a = j·N + t
        order = torch.argsort(by_priority, stable=True)  # sorted by expert, priority kept within each
        experts = by_priority[order]
        counts = torch.bincount(by_priority, minlength=E)  # (E,) before drops
        starts = torch.cumsum(counts, 0) - counts
        slots = torch.arange(k * N, device=x.device) - starts[experts]  # position within the expert's queue
        capacity = self.capacity(N)
        if capacity is not None:
            keep = slots < capacity
            order, experts, slots = order[keep], experts[keep], slots[keep]
            kept = torch.clamp(counts, max=capacity)
            width = capacity
        else:
            kept = counts
            width = None
        tokens = order % N
        rank = order // N
        offsets = torch.cumsum(kept, 0).to(torch.int32)
        dtype = _compute_dtype(x)
        method = self.method
        if method == "auto":
            method = "grouped" if grouped_mm_applies(x.device, dtype, *self.up.weight.shape[1:]) else "padded"
        if method == "padded" and width is None:
            width = int(kept.max())  # the largest group

        grouped = dict(experts=experts, offsets=offsets, slots=slots, width=width, method=method, dtype=dtype)
        xs = x[tokens]  # (M, C), sorted by expert
        hidden = expert_matmul(xs, self.up, **grouped)
        if self.swiglu:
            hidden = self.activation(expert_matmul(xs, self.gate, **grouped)) * hidden
        else:
            hidden = self.activation(hidden)
        out = expert_matmul(hidden, self.down, **grouped)  # (M, C)
        out = out * gates[tokens, rank].to(out.dtype)[:, None]
        y = out.new_zeros(N, shape[-1]).index_add(0, tokens, out)

        self.aux_loss = self.auxiliary_loss(logits, probs, counts)
        with torch.no_grad():
            entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1).mean()
            self.stats = RoutingStats(tokens_per_expert=counts.detach(), dropped=(counts - kept).sum(),
                                      entropy=entropy, expert_indices=indices.detach(), capacity=capacity)
        return self.dropout(y.reshape(shape))

    def auxiliary_loss(self, logits: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """α·E·Σᵢ fᵢ·Pᵢ + β·mean_t(logsumexp_e logits)², fp32 (float64 for float64 inputs)."""
        loss = logits.new_zeros(())
        if self.balance_coef:
            f = counts.to(probs.dtype) / probs.shape[0]  # fraction of tokens per expert (Σ f = k), no gradient
            P = probs.mean(dim=0)  # mean router probability per expert
            loss = loss + self.balance_coef * self.n_experts * (f * P).sum()
        if self.z_coef:
            loss = loss + self.z_coef * torch.logsumexp(logits, dim=-1).square().mean()
        return loss
