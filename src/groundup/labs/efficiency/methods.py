"""What the efficiency lab needs from the quantizer and the distillation loss, in one place.

The lab calls only these four functions, so swapping in the project's tools (groundup.quantize,
the distillation loss in groundup.train) changes this file alone:

    quantize(model, bits, method, group_size, calibration, seed) → (quantized copy, weight bytes)
    distillation_loss(teacher, kind, temperature, alpha)          → loss(model, (x, y)) for train_step
    teacher_samples(teacher, prompts, length, seed)                → token windows the teacher wrote
    weight_bytes(model)                                            → bytes of the weights as stored (fp32)

IMPLEMENTATION records which code produced the numbers (results.json carries it). Until the
quantize and distill branches land, these are the lab's own stand-ins, written from the papers:

Quantization (weight-only, every nn.Linear inside the blocks; the tied token embedding / LM head,
layer norms and biases stay fp32 — a stated choice, as llama.cpp keeps its output matrix at higher
precision):
    int8, per output channel, symmetric:  s_o = max_i |W_oi| / 127,  q = clamp(round(W/s), −127, 127)
    int4, per group of g input columns, asymmetric:
        s = (max − min) / 15,  z = round(−min / s),  q = clamp(round(W/s) + z, 0, 15),  Ŵ = s·(q − z)
    RTN rounds every weight to its nearest grid point. GPTQ (Frantar et al. 2022, Algorithm 1)
    quantizes column by column and pushes each column's error onto the columns not yet quantized
    through the inverse of the calibration Hessian H = 2·X·Xᵀ (+ 1% mean-diagonal damping):
        δ = (w_i − q_i) / [H⁻¹]_ii,   W[:, i+1:] −= δ · [H⁻¹]_{i, i+1:}   (H⁻¹ as its upper Cholesky factor)
    The stand-in collects every layer's H in one pass of the full-precision model (the paper
    quantizes layer by layer, feeding each the outputs of the already-quantized layers before it),
    and stores the dequantized weights Ŵ in fp32 (fake quantization): its losses are those of the
    int8/int4 model, its decode speed is fp32's. Bytes count what a packed file would hold: 1 byte
    per int8 weight + an fp32 scale per row; ½ byte per int4 weight + an fp32 scale and a 1-byte zero
    point per group.

Distillation (Hinton et al. 2015), per position, p^T = softmax(z/T):
    forward KL   L = α·T²·KL(p_teacher^T ‖ p_student^T) + (1 − α)·CE(student, y)
    reverse KL   L = α·T²·KL(p_student^T ‖ p_teacher^T) + (1 − α)·CE(student, y)
Sequence-level (Kim & Rush 2016): cross-entropy on windows whose continuation the teacher sampled.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from groundup.errors import GroundupError

IMPLEMENTATION = {"quantize": "lab stand-in (groundup/labs/efficiency/methods.py)",
                  "distill": "lab stand-in (groundup/labs/efficiency/methods.py)"}
METHODS = ("rtn", "gptq")
BITS = (8, 4)
GPTQ_DAMP = 0.01  # fraction of the mean diagonal added to H (Frantar et al. 2022 use 1%)


# ---- bytes ---------------------------------------------------------------------------------------
def weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter at its stored dtype (a tied matrix counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def quantized_linear_bytes(out_features: int, in_features: int, bits: int, group_size: int) -> int:
    """What a packed int8 / int4 matrix holds: the integers, and its scales (and int4 zero points)."""
    if bits == 8:
        return out_features * in_features + 4 * out_features
    groups = out_features * math.ceil(in_features / group_size)
    return math.ceil(out_features * in_features / 2) + groups * (4 + 1)


def quantized_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The matrices that get quantized: every nn.Linear inside the transformer blocks."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")}


# ---- the grids ---------------------------------------------------------------------------------
def _int8_rows(W: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8 round-to-nearest, dequantized."""
    s = W.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    return torch.clamp(torch.round(W / s), -127, 127) * s


def _int4_params(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit grid of each row of W (a group of columns): scale s and zero point z."""
    lo = W.amin(dim=1, keepdim=True).clamp(max=0)
    hi = W.amax(dim=1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 15).clamp_min(1e-12)
    return s, torch.round(-lo / s)


def _int4_apply(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (torch.clamp(torch.round(w / s) + z, 0, 15) - z) * s


def rtn(W: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest on the int8 (per row) or int4 (per group of columns) grid; returns Ŵ."""
    if bits == 8:
        return _int8_rows(W)
    out = torch.empty_like(W)
    for g in range(0, W.shape[1], group_size):
        block = W[:, g : g + group_size]
        s, z = _int4_params(block)
        out[:, g : g + group_size] = _int4_apply(block, s, z)
    return out


def gptq(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """GPTQ (Frantar et al. 2022, Algorithm 1 without lazy batching) of W (out, in) given the
    calibration Hessian H (in, in). Grids: as rtn(), int4 group scales fitted to the (already
    error-compensated) columns of each group when the group is reached. Returns Ŵ."""
    W = W.clone().double()
    H = H.clone().double()
    dead = torch.diag(H) == 0  # inputs never active in calibration: their weights don't matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += GPTQ_DAMP * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    if bits == 8:
        s8 = W.abs().amax(dim=1).clamp_min(1e-12) / 127  # per-row scale, from the original row
    for i in range(W.shape[1]):
        w = W[:, i]
        if bits == 8:
            q = torch.clamp(torch.round(w / s8), -127, 127) * s8
        else:
            if i % group_size == 0:
                s, z = _int4_params(W[:, i : i + group_size])
            q = _int4_apply(w[:, None], s, z)[:, 0]
        Q[:, i] = q
        err = (w - q) / Hinv[i, i]
        W[:, i + 1 :] -= err[:, None] * Hinv[i, i + 1 :][None, :]
    return Q.float()


def layer_hessians(model: nn.Module, calibration: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """H = 2/n · Σ x·xᵀ over every input row x of each quantized layer, on the calibration windows."""
    layers = quantized_layers(model)
    H = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in layers.items()}
    count = {name: 0 for name in layers}

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            H[name] += 2 * x.T @ x
            count[name] += x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for x in calibration:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: H[name] / max(1, count[name]) for name in layers}


def quantize(model: nn.Module, bits: int, method: str, group_size: int, calibration: list[torch.Tensor] | None = None,
             seed: int = 0) -> tuple[nn.Module, int]:
    """A quantized copy of `model` and its weight bytes. `calibration`: token windows (GPTQ only;
    the caller draws them with `seed`, so RTN ignores both)."""
    if bits not in BITS:
        raise GroundupError(f"bits must be one of {BITS}, got {bits}")
    if method not in METHODS:
        raise GroundupError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gptq" and not calibration:
        raise GroundupError("GPTQ needs calibration windows")
    q = copy.deepcopy(model).eval()
    layers = quantized_layers(q)
    hessians = layer_hessians(q, calibration) if method == "gptq" else {}
    total = weight_bytes(q)
    with torch.no_grad():
        for name, m in layers.items():
            W = m.weight.detach().float()
            m.weight.copy_(rtn(W, bits, group_size) if method == "rtn" else gptq(W, hessians[name], bits, group_size))
            total += quantized_linear_bytes(m.out_features, m.in_features, bits, group_size) - m.weight.numel() * 4
    return q, total


# ---- distillation ---------------------------------------------------------------------------------
def kl_per_token(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over positions of KL(p^T ‖ q^T) = Σ_v p_v (log p_v − log q_v), p^T = softmax(z/T)."""
    log_p = F.log_softmax(p_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(q_logits.float() / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def distillation_loss(teacher: nn.Module, kind: str = "forward", temperature: float = 2.0, alpha: float = 0.5):
    """loss(model, (x, y)) = α·T²·KL + (1 − α)·CE, KL forward (teacher ‖ student) or reverse."""
    if kind not in ("forward", "reverse"):
        raise GroundupError(f"distillation kind must be 'forward' or 'reverse', got {kind!r}")
    teacher.eval()

    def loss(model, batch):
        x, y = batch
        with torch.no_grad():
            t_logits = teacher(x)[0]
        s_logits, ce = model(x, y)
        kl = (kl_per_token(t_logits, s_logits, temperature) if kind == "forward"
              else kl_per_token(s_logits, t_logits, temperature))
        return alpha * temperature**2 * kl + (1 - alpha) * ce

    return loss


@torch.no_grad()
def teacher_samples(teacher: nn.Module, prompts: np.ndarray, length: int, seed: int) -> np.ndarray:
    """Each prompt (n, P) continued by the teacher, sampled at temperature 1, to `length` tokens
    (batched, with the KV cache). Returns (n, length) int64."""
    teacher.eval()
    generator = torch.Generator().manual_seed(seed)
    out = torch.as_tensor(prompts, dtype=torch.long)
    cache = teacher.new_cache(out.shape[0])
    logits = teacher(out, cache=cache, start=0)[0][:, -1]
    while out.shape[1] < length:
        token = torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)
        out = torch.cat([out, token], dim=1)
        if out.shape[1] < length:
            logits = teacher(token, cache=cache, start=out.shape[1] - 1)[0][:, -1]
    return out.numpy()
