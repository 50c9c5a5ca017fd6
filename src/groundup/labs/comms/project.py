"""Part 3: the cost of talking between GPUs at cluster scale, projected with groundup.cluster.

Pure data parallelism (every GPU holds a replica, DDP, or a 1/n shard of the model state, FSDP /
ZeRO-3), no tensor or pipeline parallelism. For a model of N parameters:

    compute per step   t_c = F · T_gpu / (peak · MFU)          F = training FLOPs per token
                                                                 (accounting.training_flops_per_token:
                                                                  6N + attention), T_gpu tokens per GPU
    communication      t_x = cluster.comm_seconds_per_step(N, n, ddp|fsdp, B_bus, α)
    step time          t   = cluster.step_seconds(t_c, t_x, overlap)   = t_c + (1 − overlap)·t_x
    efficiency         E   = (ideal time) / t,   ideal = the same tokens at the same MFU with no communication

The link: NVLink inside one 8-GPU node (n ≤ 8), InfiniBand across nodes (n > 8: a ring through
every GPU runs at the slowest link, one 400 Gb/s port per GPU) — groundup.cluster's presets.

Two ways to grow the cluster:
    weak    the batch per GPU is fixed (T_gpu constant): compute per step stays, communication grows
            from 2·1/2 to 2·(n − 1)/n of the gradient bytes and moves from NVLink to InfiniBand;
            E = t_c / t (cluster.scaling_efficiency).
    strong  the global batch is fixed (T_gpu = T_global / n): compute per step falls as 1/n while
            the gradient to reduce does not; E = (t_c(n=1)/n) / t. Past T_global / seq_len GPUs
            each GPU has less than one sequence: pure data parallelism cannot go there (marked).
"""

from __future__ import annotations

from groundup import cluster
from groundup.accounting import DEFAULT_MFU, state_memory, training_flops_per_token, USABLE_MEMORY
from groundup.hardware import PRESETS

GPUS_PER_NODE = 8
GPU = "H100"
# Model shapes (N, layers, width, context): LLaMA 7B (Touvron et al. 2023a, Table 2: 32 layers,
# d 4096; context 4096 as in Llama 2) and Llama-2 70B (Touvron et al. 2023b: 80 layers, d 8192,
# context 4096).
MODELS = {
    "7B": {"n_params": 7e9, "n_layer": 32, "d_model": 4096, "seq_len": 4096,
           "source": "LLaMA 7B shape (Touvron et al. 2023a, Table 2), context 4096"},
    "70B": {"n_params": 70e9, "n_layer": 80, "d_model": 8192, "seq_len": 4096,
            "source": "Llama-2 70B shape (Touvron et al. 2023b), context 4096"},
}
GLOBAL_BATCH_TOKENS = 4 * 2**20  # 4M tokens: Llama 2's global batch (Touvron et al. 2023b, §2.2)
SEQUENCES_PER_GPU = 4  # weak scaling: 4 sequences of 4096 tokens on every GPU (an assumption)
GPU_COUNTS = tuple(2**k for k in range(3, 15))  # 8 … 16384
OVERLAP = 0.0  # communication hidden behind compute: none (all exposed), the pessimistic end
BYTES = 2  # bf16 gradients and parameters on the wire


def interconnect(n_gpus: int) -> cluster.Interconnect:
    """NVLink inside one node, InfiniBand once the ring leaves it."""
    return cluster.NVLINK if n_gpus <= GPUS_PER_NODE else cluster.INFINIBAND


def compute_seconds(model: dict, tokens_per_gpu: float, mfu: float = DEFAULT_MFU, gpu: str = GPU) -> float:
    """t_c = F · T_gpu / (peak · MFU)."""
    f = training_flops_per_token(model["n_params"], model["n_layer"], model["d_model"], model["seq_len"])
    return f * tokens_per_gpu / (PRESETS[gpu].peak_flops * mfu)


def fits(model: dict, n_gpus: int, parallelism: str, gpu: str = GPU) -> bool:
    """Model state (16 bytes per parameter: bf16 weights and gradients, fp32 master and AdamW moments;
    accounting.state_memory) within the usable memory of one GPU: whole under DDP, 1/n under FSDP.
    Activations are not counted (they depend on checkpointing and the micro-batch)."""
    state = state_memory(model["n_params"]).state
    per_gpu = state if parallelism == "ddp" else state / n_gpus
    return per_gpu <= USABLE_MEMORY * PRESETS[gpu].memory_bytes


def point(model: dict, n_gpus: int, parallelism: str, regime: str, mfu: float = DEFAULT_MFU,
          overlap: float = OVERLAP) -> dict:
    """Step time, its parts and the scaling efficiency of one configuration."""
    seq = model["seq_len"]
    tokens = SEQUENCES_PER_GPU * seq if regime == "weak" else GLOBAL_BATCH_TOKENS / n_gpus
    link = interconnect(n_gpus)
    t_c = compute_seconds(model, tokens, mfu)
    t_x = cluster.comm_seconds_per_step(model["n_params"], n_gpus, parallelism, link.bus_bandwidth, link.latency,
                                        grad_bytes=BYTES, param_bytes=BYTES)
    t = cluster.step_seconds(t_c, t_x, overlap)
    return {"n_gpus": n_gpus, "tokens_per_gpu": tokens, "compute_s": t_c, "comm_s": t_x, "step_s": t,
            "efficiency": t_c / t, "exposed_share": (t - t_c) / t, "link": link.name,
            "memory_fits": fits(model, n_gpus, parallelism), "whole_sequences": tokens >= seq}


def projection(mfu: float = DEFAULT_MFU, overlap: float = OVERLAP) -> dict:
    """{regime: {model: {parallelism: [point per GPU count]}}} plus every assumption, for results.json."""
    curves = {regime: {name: {p: [point(m, n, p, regime, mfu, overlap) for n in GPU_COUNTS] for p in cluster.PARALLELISMS}
                       for name, m in MODELS.items()} for regime in ("weak", "strong")}
    hw = PRESETS[GPU]
    return {"curves": curves, "assumptions": {
        "gpu": hw.name, "peak_flops": hw.peak_flops, "gpu_source": hw.source, "mfu": mfu, "overlap": overlap,
        "bytes_on_wire": BYTES, "gpus_per_node": GPUS_PER_NODE, "global_batch_tokens": GLOBAL_BATCH_TOKENS,
        "sequences_per_gpu": SEQUENCES_PER_GPU, "gpu_counts": list(GPU_COUNTS),
        "models": MODELS, "usable_memory": USABLE_MEMORY,
        "links": {k: {"name": v.name, "bus_bandwidth": v.bus_bandwidth, "latency": v.latency, "source": v.source}
                  for k, v in cluster.INTERCONNECTS.items()}}}
