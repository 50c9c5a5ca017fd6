"""What a cluster adds to the cost of a step: communication between GPUs, and failures.

Pure arithmetic in SI units (seconds, bytes, bytes/s), no torch; the comms and failures labs, the
wall lab and `groundup cost --gpus` all call it.

Communication: the ring model, in the conventions of nccl-tests (NVIDIA, doc/PERFORMANCE.md). For a
collective on a buffer of S bytes over n ranks, the *algorithm bandwidth* is S/t; the *bus
bandwidth* multiplies it by the fraction of the buffer each rank must send, so that it can be
compared with a link's peak whatever n is:

    all-reduce       t = α + (S / B_bus) · 2(n − 1)/n        busbw = (S/t) · 2(n − 1)/n
    reduce-scatter   t = α + (S / B_bus) ·  (n − 1)/n        busbw = (S/t) ·  (n − 1)/n
    all-gather       t = α + (S / B_bus) ·  (n − 1)/n        busbw = (S/t) ·  (n − 1)/n

S is always the full (unsharded) buffer: the gradient for an all-reduce, the gathered parameters
for an all-gather (nccl-tests count `count · nranks` elements there). B_bus is unidirectional, per
GPU: a link sold as "900 GB/s bidirectional" gives B_bus ≤ 450 GB/s. α is a per-collective latency.

Failures: a first-order goodput model with Young's (1974) checkpoint interval τ = √(2·δ·M), the
failure rate calibrated from Llama 3's 419 unexpected interruptions in 54 days on 16,384 H100s
(Dubey et al. 2024, §3.3.4, Table 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from groundup.errors import ConfigError

Parallelism = Literal["ddp", "fsdp"]
PARALLELISMS = ("ddp", "fsdp")

# Llama 3 (Dubey et al. 2024, §3.3.4 and Table 5): 419 unexpected interruptions during a 54-day
# snapshot of pre-training on 16,384 H100 GPUs (466 in all, 47 of them planned).
LLAMA3_FAILURES_PER_GPU_HOUR = 419 / (16384 * 54 * 24)


# ---- checks -----------------------------------------------------------------------------------
def _check_ranks(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of GPUs (ranks) must be a whole number ≥ 1, got {n!r}")
    return n


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name.replace('_', ' ')} must be a positive number, got {value!r}")


def _check_nonnegative(**values) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{name.replace('_', ' ')} must be a number ≥ 0, got {value!r}")


def _check_fraction(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ConfigError(f"{name} is a fraction between 0 and 1, got {value!r}")


# ---- collectives (ring model, nccl-tests conventions) --------------------------------------------
def ring_allreduce_seconds(message_bytes: float, n: int, bus_bandwidth: float, latency: float = 0.0) -> float:
    """All-reduce of S bytes over n ranks: t = α + (S / B_bus) · 2(n − 1)/n; 0 for n = 1.

    A ring all-reduce is a reduce-scatter then an all-gather: each rank sends (and receives)
    2(n − 1) chunks of S/n bytes (nccl-tests doc/PERFORMANCE.md, "allreduce")."""
    _check_ranks(n)
    _check_nonnegative(message_bytes=message_bytes, latency=latency)
    _check_positive(bus_bandwidth=bus_bandwidth)
    if n == 1:
        return 0.0
    return latency + message_bytes / bus_bandwidth * 2 * (n - 1) / n


def bus_bandwidth(message_bytes: float, seconds: float, n: int) -> float:
    """The bus bandwidth of a measured all-reduce: busbw = algbw · 2(n − 1)/n = (S / t) · 2(n − 1)/n
    (nccl-tests doc/PERFORMANCE.md). The inverse of ring_allreduce_seconds with α = 0."""
    _check_ranks(n)
    _check_nonnegative(message_bytes=message_bytes)
    _check_positive(seconds=seconds)
    return message_bytes / seconds * 2 * (n - 1) / n


def reduce_scatter_seconds(message_bytes: float, n: int, bus_bandwidth: float, latency: float = 0.0) -> float:
    """Reduce-scatter of a full buffer of S bytes (each rank keeps the reduced S/n): each rank sends
    n − 1 chunks of S/n, so t = α + (S / B_bus) · (n − 1)/n; 0 for n = 1 (nccl-tests
    doc/PERFORMANCE.md, "reducescatter": busbw = algbw · (n − 1)/n with S the full size)."""
    _check_ranks(n)
    _check_nonnegative(message_bytes=message_bytes, latency=latency)
    _check_positive(bus_bandwidth=bus_bandwidth)
    if n == 1:
        return 0.0
    return latency + message_bytes / bus_bandwidth * (n - 1) / n


def all_gather_seconds(message_bytes: float, n: int, bus_bandwidth: float, latency: float = 0.0) -> float:
    """All-gather into a full buffer of S bytes (each rank contributes S/n): each rank receives
    n − 1 chunks of S/n, so t = α + (S / B_bus) · (n − 1)/n; 0 for n = 1 (nccl-tests
    doc/PERFORMANCE.md, "allgather"). The mirror image of a reduce-scatter: the same chunks travel the
    other way, so the same time."""
    return reduce_scatter_seconds(message_bytes, n, bus_bandwidth, latency)


def comm_seconds_per_step(n_params: float, n_gpus: int, parallelism: Parallelism, bus_bandwidth: float,
                          latency: float = 0.0, grad_bytes: int = 2, param_bytes: int = 2) -> float:
    """Communication of one data-parallel optimizer step of a model of N parameters on n GPUs:

        ddp   one all-reduce of the gradients:                   AR(N · grad_bytes)
              = α + (N·g / B) · 2(n − 1)/n
        fsdp  (ZeRO-3) all-gather the parameters for the forward, again for the backward, and
              reduce-scatter the gradients:                       2·AG(N · param_bytes) + RS(N · grad_bytes)
              = 3α + (N·(2p + g) / B) · (n − 1)/n   — 1.5× DDP's volume at p = g
              (Rajbhandari et al. 2020, ZeRO §7.2.2: 3Ψ against 2Ψ)

    The latency α is counted once per collective (real frameworks split these into per-layer or
    per-bucket calls, each paying α; with gradient-sized messages the bandwidth term dominates).
    bf16 gradients and parameters (2 bytes) by default."""
    if parallelism not in PARALLELISMS:
        raise ConfigError(f"parallelism must be one of {', '.join(PARALLELISMS)}, got {parallelism!r}")
    _check_nonnegative(n_params=n_params)
    _check_positive(grad_bytes=grad_bytes, param_bytes=param_bytes)
    if parallelism == "ddp":
        return ring_allreduce_seconds(n_params * grad_bytes, n_gpus, bus_bandwidth, latency)
    return (2 * all_gather_seconds(n_params * param_bytes, n_gpus, bus_bandwidth, latency)
            + reduce_scatter_seconds(n_params * grad_bytes, n_gpus, bus_bandwidth, latency))


# ---- interconnects ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Interconnect:
    """A link between GPUs as the ring model sees it: the peak unidirectional bus bandwidth per GPU
    (bytes/s; compare with nccl-tests' busbw) and a per-collective latency α (seconds)."""

    name: str
    bus_bandwidth: float
    latency: float
    source: str = ""


GB = 1e9
# NVLink 4 (H100 SXM, inside one 8-GPU node through NVSwitch): 900 GB/s *bidirectional* per GPU
# (NVIDIA H100 Tensor Core GPU datasheet, 2023: "NVLink: 900GB/s"; 18 links × 50 GB/s), so 450 GB/s
# each way: the peak for bus bandwidth. Measured point-to-point reaches ~83% of it (749 of 900 GB/s
# bidirectional, NVIDIA/nccl issue #1264), so real busbw is lower than this preset.
# (The MLCommons inference v4.1 system description of NVIDIA's H200 SXM ×8 lists the same link:
# "18x 4th Gen NVLink, 900GB/s".)
# InfiniBand NDR (between nodes): 400 Gb/s per port (NVIDIA's NDR transceiver specifications, e.g.
# MMS4X00-NS400: "400Gb/s"), one ConnectX-7 port per GPU in a DGX H100 (NVIDIA DGX H100 datasheet,
# 2023; the DGX BasePOD deployment guide configures eight InfiniBand compute interfaces per DGX H100),
# so 400/8 = 50 GB/s per GPU each way. A ring across nodes runs at the slowest link: this one. Llama 3
# ran on 400 Gb/s links between GPUs too (RoCE for 405B, InfiniBand for the smaller models; Dubey
# et al. 2024, §3.3.1).
# Latencies are assumptions (order of a small-message collective), not published figures; they
# matter only for small messages.
NVLINK = Interconnect("NVLink 4 (H100 SXM, intra-node)", 450 * GB, 10e-6,
                      "NVIDIA H100 datasheet: 900 GB/s bidirectional per GPU → 450 GB/s each way; α assumed")
INFINIBAND = Interconnect("InfiniBand NDR (inter-node, one 400 Gb/s port per GPU)", 400e9 / 8, 20e-6,
                          "NVIDIA DGX H100 datasheet: 8 × ConnectX-7 400 Gb/s → 50 GB/s per GPU each way; α assumed")
INTERCONNECTS: dict[str, Interconnect] = {"nvlink": NVLINK, "infiniband": INFINIBAND}


# ---- step time and scaling --------------------------------------------------------------------
def step_seconds(compute_seconds: float, comm_seconds: float, overlap: float = 0.0) -> float:
    """Wall time of a step: compute + (1 − overlap) · comm — the communication not hidden behind
    compute is exposed. overlap = 0: nothing hidden (a fully serial step); 1: all hidden."""
    _check_nonnegative(compute_seconds=compute_seconds, comm_seconds=comm_seconds)
    _check_fraction("overlap", overlap)
    return compute_seconds + (1.0 - overlap) * comm_seconds


def scaling_efficiency(n_gpus: int, compute_seconds: float, n_params: float, parallelism: Parallelism,
                       bus_bandwidth: float, latency: float = 0.0, overlap: float = 0.0,
                       grad_bytes: int = 2, param_bytes: int = 2) -> float:
    """Weak scaling (a fixed batch per GPU, so compute_seconds per step is the same on every GPU
    count): throughput on n GPUs over n × the throughput of one,

        E(n) = (n · tokens / step_seconds) / (n · tokens / compute_seconds)
             = compute / (compute + (1 − overlap) · comm(n))         ∈ (0, 1],  E(1) = 1."""
    _check_positive(compute_seconds=compute_seconds)
    comm = comm_seconds_per_step(n_params, n_gpus, parallelism, bus_bandwidth, latency, grad_bytes, param_bytes)
    return compute_seconds / step_seconds(compute_seconds, comm, overlap)


# ---- failures and checkpoints -------------------------------------------------------------------
def mtbf_seconds(n_gpus: int, failures_per_gpu_hour: float) -> float:
    """Mean time between failures of the whole job, failures independent across GPUs (rates add):
    M = 1 / (n · λ) hours = 3600 / (n · λ) seconds, λ in failures per GPU-hour."""
    _check_ranks(n_gpus)
    _check_positive(failures_per_gpu_hour=failures_per_gpu_hour)
    return 3600.0 / (n_gpus * failures_per_gpu_hour)


def young_interval(checkpoint_seconds: float, mtbf_seconds: float) -> float:
    """Young's (1974) optimal checkpoint interval, to first order: τ = √(2 · δ · M), δ the time to
    write a checkpoint and M the mean time between failures (valid when δ ≪ M)."""
    _check_positive(checkpoint_seconds=checkpoint_seconds, mtbf_seconds=mtbf_seconds)
    return math.sqrt(2.0 * checkpoint_seconds * mtbf_seconds)


def goodput(interval: float, checkpoint_seconds: float, restart_seconds: float, mtbf_seconds: float) -> float:
    """Expected fraction of wall time spent on work that is kept, first-order model:

    work runs in segments of τ seconds, each followed by a checkpoint of δ seconds; failures arrive
    at rate 1/M (Poisson); each costs the restart R plus, on average, half a segment of lost work
    and checkpointing, (τ + δ)/2. Per unit of wall time, failures waste (R + (τ + δ)/2)/M, and of
    what remains the fraction τ/(τ + δ) is work:

        G = [τ / (τ + δ)] · [1 − (R + (τ + δ)/2) / M],   clipped at 0.

    For δ, R ≪ τ ≪ M, G ≈ 1 − δ/τ − τ/(2M) − R/M, maximised at τ = √(2δM) (Young 1974); the exact
    maximiser of this G is τ* = √(2δ(M − R)) − δ (set dG/ds = 0 with s = τ + δ). The model
    is first order: it ignores failures during a restart and a second failure within one segment,
    so it is meant for τ + δ + R well below M."""
    _check_positive(interval=interval, mtbf_seconds=mtbf_seconds)
    _check_nonnegative(checkpoint_seconds=checkpoint_seconds, restart_seconds=restart_seconds)
    segment = interval + checkpoint_seconds
    return max(0.0, interval / segment * (1.0 - (restart_seconds + segment / 2.0) / mtbf_seconds))


def goodput_exponential(interval: float, checkpoint_seconds: float, restart_seconds: float, mtbf_seconds: float) -> float:
    """Goodput without the first-order approximation, for Poisson failures at rate 1/M that can
    strike at any time, restarts included (Daly 2006, "A higher order estimate of the optimum
    checkpoint interval", the exponential model): a segment of τ work + δ checkpoint takes on
    average

        E[T] = M · e^(R/M) · (e^((τ + δ)/M) − 1)          so   G = τ / E[T]   (never below 0).

    Expanding to first order in (τ + δ)/M and R/M gives goodput()'s formula; unlike it, this one
    stays meaningful when M is no longer large against τ + δ + R (G falls towards 0 but never
    crosses it)."""
    _check_positive(interval=interval, mtbf_seconds=mtbf_seconds)
    _check_nonnegative(checkpoint_seconds=checkpoint_seconds, restart_seconds=restart_seconds)
    m = mtbf_seconds
    expected = m * math.exp(restart_seconds / m) * math.expm1((interval + checkpoint_seconds) / m)
    return interval / expected
