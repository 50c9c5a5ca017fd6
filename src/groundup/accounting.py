"""What a model costs, as arithmetic: FLOPs, memory, GPU-hours, dollars and energy.

Every formula the project uses for these lives here, once; the model (`GPT.flops_per_token`), the
trainer's MFU, the attention-cost lab, `groundup train --plan` and `groundup cost` all call it.
It imports nothing from model/, train/ or labs/: it sits at the bottom of the layering.

    training FLOPs per token   6·N + 12·n_layer·T·d    (2 per weight forward, 4 backward; PaLM App. B)
    inference FLOPs per token  2·N + 4·n_layer·T·d     (forward only, attending over T cached tokens)
    training FLOPs             C = 6·N·D               (Kaplan et al. 2020, §2.1)
    model state                16 bytes/parameter      (ZeRO §3.1: bf16 w 2 + bf16 g 2 + fp32 master, m, v 12;
                                                        fp32 training: w 4 + g 4 + m, v 8, also 16)
    activations                s·b·h·(34 + 5·a·s/h) bytes per layer, 16-bit (Korthikanti et al. 2022, eq. 2)
    GPU-hours                  C / (peak FLOP/s · MFU) / 3600
    dollars                    GPU-hours · $/GPU-hour
    energy                     GPU-hours · (board watts + host watts per GPU) · PUE / 1000   (kWh)
    implied MFU                C / (GPU-hours · 3600 · peak)   (the GPU-hours line solved for MFU)

Conventions: N counts the weights that multiply activations (for our GPT: every matrix in the blocks
plus the LM head; embedding lookups, biases and norm gains do no matmul). The attention term counts
QKᵀ and A·V over the full T×T square (the causal mask is not discounted), as PaLM and nanoGPT do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from groundup.errors import ConfigError
from groundup.hardware import Hardware

# ---- assumptions (every one a flag of `groundup cost`; sources in docs/cost.md) ----------------
DEFAULT_MFU = 0.40  # Llama 3 405B reached 38–43% BF16 MFU on 8–16K H100s (Dubey et al. 2024, Table 4)
DEFAULT_PRICE = 2.50  # $/GPU-hour for an H100: an assumption (cloud rental)
DEFAULT_PUE = 1.2  # data-centre power usage effectiveness: an assumption
DEFAULT_GPU = "H100"
STATE_BYTES_PER_PARAM = 16  # weights + gradients + AdamW state, either precision (see state_memory)
USABLE_MEMORY = 0.9  # leave 10% of device memory for the framework, fragmentation, buffers
DECODE_BYTES_PER_PARAM = 2  # batch-1 generation reads every bf16 weight once per token


# ---- FLOPs -----------------------------------------------------------------------------------
def weight_flops_per_token(n_params: float, backward: bool = True) -> float:
    """2·N forward (one multiply and one add per weight), 6·N with the backward pass, which costs
    twice the forward (gradients for the activations and for the weights). Kaplan et al. 2020, §2.1."""
    return (6.0 if backward else 2.0) * n_params


def attention_flops_per_token(n_layer: int, d_model: int, seq_len: int, backward: bool = True) -> float:
    """What 2·N leaves out: QKᵀ and A·V, each 2·T·d per token per layer forward, so 4·n_layer·T·d,
    and 12·n_layer·T·d with the backward pass (PaLM, Chowdhery et al. 2022, App. B; no discount for
    the causal mask). At inference T is the context the new token attends over."""
    return (12.0 if backward else 4.0) * n_layer * seq_len * d_model


def training_flops_per_token(n_params: float, n_layer: int | None = None, d_model: int | None = None,
                             seq_len: int | None = None) -> float:
    """6·N + 12·n_layer·T·d; just 6·N when the architecture is not given."""
    extra = attention_flops_per_token(n_layer, d_model, seq_len) if n_layer and d_model and seq_len else 0.0
    return weight_flops_per_token(n_params) + extra


def inference_flops_per_token(n_params: float, n_layer: int | None = None, d_model: int | None = None,
                              context: int | None = None) -> float:
    """Forward only: 2·N + 4·n_layer·T·d for a token attending over a context of T cached keys and
    values; just 2·N when the architecture is not given."""
    extra = attention_flops_per_token(n_layer, d_model, context, backward=False) if n_layer and d_model and context else 0.0
    return weight_flops_per_token(n_params, backward=False) + extra


def active_params(n_params: float, expert_params: float, n_experts: int, experts_per_token: int) -> float:
    """Parameters that work on each token of a mixture-of-experts model: all N but the experts,
    plus k/E of the expert weights (each token visits k of E experts; the router counts in full).
    With E = 0 (dense) every parameter is active. Mixtral 8×7B: 46.7B total, 12.9B active."""
    if not n_experts:
        return n_params
    return n_params - expert_params * (1 - experts_per_token / n_experts)


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6·N·D (Kaplan et al. 2020, §2.1)."""
    return 6.0 * n_params * n_tokens


def attention_layer_flops(seq_len: int, d_model: int, batch: int = 1, backward: bool = True) -> dict[str, float]:
    """One attention layer on `batch` sequences of T tokens, split by how it grows with T:

        linear     projections Q, K, V, W^O: 4·d² weights → 8·T·d² per sequence forward
        quadratic  QKᵀ and A·V:                            4·T²·d per sequence forward

    ×3 with the backward pass. The quadratic term overtakes the linear one at T = 2·d."""
    tokens = batch * seq_len
    return {"linear": tokens * weight_flops_per_token(4 * d_model * d_model, backward),
            "quadratic": tokens * attention_flops_per_token(1, d_model, seq_len, backward)}


def chinchilla_params(flops: float, tokens_per_param: float = 20.0) -> float:
    """The compute-optimal size for a budget C with D = r·N (Hoffmann et al. 2022: r ≈ 20):
    C = 6·N·(r·N)  ⇒  N = √(C / (6·r))."""
    return math.sqrt(flops / (6 * tokens_per_param))


# ---- memory ----------------------------------------------------------------------------------
@dataclass
class TrainingMemory:
    """Bytes needed to train, in the four places they live."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def state(self) -> float:
        """Everything but the activations: what ZeRO-3 / FSDP can shard across GPUs."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.state + self.activations


def state_memory(n_params: float, mixed_precision: bool = True) -> TrainingMemory:
    """Weights, gradients and AdamW state, 16 bytes per parameter either way; activations 0 (not
    counted: they need the architecture, see training_memory).

        mixed precision (bf16 compute, ZeRO §3.1): weights 2, gradients 2, fp32 master + Adam m + v 12
        fp32 (our trainer keeps fp32 weights):     weights 4, gradients 4, Adam m + v 8"""
    weights, grads, opt = (2, 2, 12) if mixed_precision else (4, 4, 8)
    return TrainingMemory(weights * n_params, grads * n_params, opt * n_params, 0.0)


def activation_bytes(n_layer: int, d_model: int, n_head: int, seq_len: int, batch: int, vocab: int = 0,
                     fused_attention: bool = True, checkpointing: bool = False, bytes_per_value: int = 2) -> float:
    """Activations stored for the backward pass (Korthikanti et al. 2022, eq. 1–2, no parallelism):

        per layer:  s·b·h·(34 + 5·a·s/h)  bytes in 16-bit   (s context, b batch, h width, a heads)

    `fused_attention`: SDPA / FlashAttention recomputes the s×s scores, dropping 5·a·s²·b.
    `checkpointing`: keep only every layer's input (2·s·b·h) and recompute one layer at a time
    (Korthikanti §4, full recomputation). `bytes_per_value` 4 (fp32 training) doubles everything.
    The LM head's logits add s·b·V values (kept in fp32 for the loss: 4 bytes each)."""
    s, b, h, a = seq_len, batch, d_model, n_head
    scale = bytes_per_value / 2
    per_layer = s * b * h * 34 + (0 if fused_attention else 5 * a * s * s * b)
    if checkpointing:
        stored = n_layer * 2 * s * b * h + per_layer  # layer inputs + one layer being recomputed
    else:
        stored = n_layer * per_layer
    return scale * stored + 4.0 * s * b * vocab


def training_memory(n_params: float, n_layer: int, d_model: int, n_head: int, seq_len: int, batch: int,
                    vocab: int = 0, fused_attention: bool = True, checkpointing: bool = False,
                    mixed_precision: bool = True, activation_bytes_per_value: int | None = None) -> TrainingMemory:
    """Model state (state_memory) plus activations (activation_bytes) for one micro-batch of `batch`
    sequences. Activations are 16-bit under mixed precision, fp32 otherwise, unless
    `activation_bytes_per_value` says (fp32 weights under autocast: state fp32, activations 2)."""
    per_value = activation_bytes_per_value or (2 if mixed_precision else 4)
    state = state_memory(n_params, mixed_precision)
    state.activations = activation_bytes(n_layer, d_model, n_head, seq_len, batch, vocab, fused_attention,
                                         checkpointing, per_value)
    return state


def min_gpus(memory: TrainingMemory, gpu_memory_bytes: float, usable: float = USABLE_MEMORY) -> int | None:
    """The fewest GPUs that hold the run with model state fully sharded (ZeRO-3 / FSDP) and one
    micro-batch of activations per GPU: the smallest K with state/K + activations ≤ usable·memory.
    None when the activations alone don't fit (use checkpointing or a smaller micro-batch)."""
    room = usable * gpu_memory_bytes - memory.activations
    if room <= 0:
        return None
    return max(1, math.ceil(memory.state / room))


# ---- speed -----------------------------------------------------------------------------------
def model_flops_utilization(achieved_flops_per_s: float, peak_flops: float) -> float:
    """MFU = achieved model FLOP/s / peak FLOP/s (PaLM, Chowdhery et al. 2022, App. B); the trainer
    measures achieved = FLOPs per token × tokens/s."""
    return achieved_flops_per_s / peak_flops


def decode_tokens_per_s(n_params: float, bandwidth: float, bytes_per_param: float = DECODE_BYTES_PER_PARAM) -> float:
    """Batch-1 generation reads every weight once per token, so it can go no faster than
    memory bandwidth / (bytes per parameter · N)."""
    return bandwidth / (bytes_per_param * n_params)


# ---- time, money, energy ---------------------------------------------------------------------
def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """GPU-hours = C / (peak · MFU) / 3600."""
    return flops / (peak_flops * mfu) / 3600.0


def implied_mfu(flops: float, gpu_hours: float, peak_flops: float) -> float:
    """The MFU a run of C FLOPs that took `gpu_hours` implies: gpu_hours solved for MFU,
    MFU = C / (GPU-hours · 3600 · peak). Above 1 means the FLOP count or the hours are wrong."""
    return flops / (gpu_hours * 3600.0 * peak_flops)


def energy_kwh(gpu_hours: float, board_watts: float, host_watts_per_gpu: float = 0.0, pue: float = DEFAULT_PUE) -> float:
    """kWh = GPU-hours · (board W + host W per GPU) · PUE / 1000.

    The node's CPUs, memory, network and fans (host_watts_per_gpu: a DGX H100 draws ≈ 10.2 kW for
    8 GPUs of 700 W, so 575 W per GPU besides the board) and the data centre's cooling and power
    conversion (PUE = facility energy / IT energy) on top of the GPU boards, all at full power for
    the whole run."""
    return gpu_hours * (board_watts + host_watts_per_gpu) * pue / 1000.0


@dataclass
class Projection:
    flops: float
    gpu: str
    n_gpus: int
    mfu: float
    gpu_hours: float
    days: float
    dollars: float
    kwh: float  # the whole node (boards + host) × PUE
    price: float
    pue: float
    host_watts_per_gpu: float = 0.0
    kwh_boards: float = 0.0  # the GPU boards alone × PUE, for comparison with card-only estimates


def project(flops: float, hardware: Hardware, n_gpus: int, mfu: float = DEFAULT_MFU,
            price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE, host_watts_per_gpu: float | None = None) -> Projection:
    """GPU-hours = C / (peak·MFU) / 3600; days = GPU-hours / K / 24; $ = GPU-hours·price;
    kWh = energy_kwh(GPU-hours, board W, host W per GPU, PUE): the whole node at full power the
    whole time, times PUE. host_watts_per_gpu None: the hardware preset's (DGX power / 8 − board)."""
    host = hardware.host_watts if host_watts_per_gpu is None else host_watts_per_gpu
    check_positive(mfu=mfu, n_gpus=n_gpus, price=price, pue=pue)
    if host < 0 or not math.isfinite(host):
        raise ConfigError(f"host watts per GPU must be a number ≥ 0, got {host!r}")
    if mfu > 1:
        raise ConfigError(f"MFU is a fraction of peak, between 0 and 1; got {mfu}")
    hours = gpu_hours(flops, hardware.peak_flops, mfu)
    return Projection(flops, hardware.name, n_gpus, mfu, hours, hours / n_gpus / 24.0, hours * price,
                      energy_kwh(hours, hardware.watts, host, pue), price, pue, host,
                      energy_kwh(hours, hardware.watts, 0.0, pue))


def gpus_for_days(flops: float, hardware: Hardware, days: float, mfu: float = DEFAULT_MFU) -> int:
    """The GPU count that finishes `flops` in `days` at this MFU: ⌈GPU-hours / (24·days)⌉."""
    return math.ceil(gpu_hours(flops, hardware.peak_flops, mfu) / (days * 24.0))


def check_positive(**values) -> None:
    """Raise ConfigError naming the first value that is not a finite positive number."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name.replace('_', ' ')} must be a positive number, got {value!r}")
