"""What 10× the capability costs in money: the compute a capability step needs, times how much
less useful each GPU-hour becomes at the larger scale. Pure arithmetic on groundup.cluster.

    money multiplier  M$ = r_C · [MFU₀·E₀·G₀] / [MFU₁·E₁·G₁]

at a fixed price per GPU-hour, since GPU-hours = C / (peak · MFU · E · G) / 3600 (accounting.gpu_hours
with the cluster's useful fraction E·G). r_C = C₁/C₀ is the compute ratio the definition of
"10× capability" asks for (CAPABILITY); index 0 is the base run, 1 the bigger one:

    MFU(n)  = MFU₀ · (1 − μ)^log₁₀(n/n₀)          the MFU falls by a fraction μ per 10× GPUs (assumption)
    E(n)    = compute / (compute + (1 − overlap) · comm)                            cluster.step_seconds
              compute = 6·N·B / n / (peak · MFU(n))     a step of B tokens, spread over n GPUs
              comm    = ring all-reduce of the gradient shard N/m over the d = n/m data-parallel
                        replicas (m = tensor × pipeline GPUs per replica, grown with N so each GPU
                        holds the same N/m), on the inter-node link    cluster.comm_seconds_per_step
    G(n)    = goodput at Young's interval τ = √(2δ·MTBF), MTBF = 3600 / (n · λ), in the exponential
              model (Daly 2006), which stays meaningful when the MTBF shrinks towards the restart
              time (the first-order cluster.goodput would clip to 0)     cluster.goodput_exponential

The base run is Llama 3 405B as published (Dubey et al. 2024): N₀ = 405B, D₀ = 15.6T, 16,384 H100s,
tensor 8 × pipeline 16 = 128 GPUs per replica and 16M tokens per batch (Table 4), 400 TFLOP/s per
GPU there (Table 4: 41% MFU of the 989 TFLOP/s peak; 430 TFLOP/s, 43%, on 8,192 GPUs with the same
parallelism and batch), and its failure rate (419 unexpected interruptions in 54 days, Table 5).
The Table 4 rows are quoted as reproduced from the paper and from Balaji's SC'24 talk at
glennklockwood.com/garden/llama-3.1. The bigger run is compute-optimal (N ∝ C^0.5, Hoffmann et al.
2022) unless the definition fixes N.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from groundup import cluster
from groundup.errors import ConfigError
from groundup.hardware import PRESETS

# ---- the base run: Llama 3 405B ------------------------------------------------------------------
BASE_PARAMS = 405e9  # Dubey et al. 2024, Table 3
BASE_TOKENS = 15.6e12  # §3.3
BASE_GPUS = 16384  # §3.3.1, Table 4
BASE_MODEL_PARALLEL = 8 * 16  # tensor 8 × pipeline 16 GPUs per data-parallel replica (Table 4)
BASE_BATCH_TOKENS = 16e6  # tokens per batch (Table 4)
LLAMA3_TFLOPS_PER_GPU = {8192: 430e12, 16384: 400e12}  # Table 4, tensor 8, pipeline 16, 16M batch
BASE_MFU = LLAMA3_TFLOPS_PER_GPU[BASE_GPUS] / PRESETS["H100"].peak_flops  # 0.404
# MFU lost per 10× GPUs if Llama 3's 8K → 16K step (430 → 400 TFLOP/s, 2× GPUs) continued:
# 1 − (400/430)^(1/log₁₀2) ≈ 0.21
LLAMA3_MFU_DROP_PER_DECADE = 1 - (LLAMA3_TFLOPS_PER_GPU[16384] / LLAMA3_TFLOPS_PER_GPU[8192]) ** (1 / math.log10(2))
CHINCHILLA_N_EXPONENT = 0.5  # N_opt ∝ C^a, a ≈ 0.5 (Hoffmann et al. 2022, Table 2)
KAPLAN_N_EXPONENT = 0.73  # N_opt ∝ C^0.73 (Kaplan et al. 2020, Table 6)
CAPABILITY_STEP = 10.0

# ---- what "10× the capability" means (each one a compute ratio r_C) ---------------------------------
CAPABILITY = {
    "compute": "10× the training compute (capability measured as effective compute): r_C = 10",
    "loss": "the loss reduction the fitted law L = a·C^−α gives for 10× compute, ×10^−α̂, reached under each "
            "seed's (or bootstrap sample's) fit: r_C = 10^(α̂/α)",
    "params-chinchilla": "10× the parameters, trained compute-optimally with N ∝ C^0.5 (Hoffmann et al. 2022, "
                         "D ≈ 20·N): r_C = 10^(1/0.5) = 100",
    "params-kaplan": "10× the parameters with Kaplan et al.'s allocation N ∝ C^0.73 (2020, Table 6): "
                     "r_C = 10^(1/0.73) ≈ 23.4",
}


def compute_ratio(definition: str, alpha: float | None = None, alpha_hat: float | None = None,
                  step: float = CAPABILITY_STEP) -> float:
    """r_C = C₁/C₀ for a capability step of `step`× under one definition (CAPABILITY).

        compute             r_C = step
        loss                r_C = step^(α̂/α): the loss ratio step^−α̂ of the point fit, reached with exponent α
        params-chinchilla   r_C = step^(1/0.5)
        params-kaplan       r_C = step^(1/0.73)"""
    if definition == "compute":
        return step
    if definition == "loss":
        if not (alpha and alpha_hat and alpha > 0 and alpha_hat > 0):
            raise ConfigError("the loss definition needs the fitted exponents α̂ and α (both > 0)")
        return step ** (alpha_hat / alpha)
    if definition == "params-chinchilla":
        return step ** (1 / CHINCHILLA_N_EXPONENT)
    if definition == "params-kaplan":
        return step ** (1 / KAPLAN_N_EXPONENT)
    raise ConfigError(f"unknown capability definition {definition!r}; one of {', '.join(CAPABILITY)}")


def params_ratio(definition: str, r_compute: float, step: float = CAPABILITY_STEP) -> float:
    """N₁/N₀: fixed by the params definitions (step), compute-optimal N ∝ C^0.5 otherwise."""
    return step if definition.startswith("params") else r_compute ** CHINCHILLA_N_EXPONENT


# ---- the assumptions about the cluster --------------------------------------------------------------
@dataclass(frozen=True)
class Assumptions:
    """One scenario. Every field is an assumption the report states; the defaults are 'ideal'
    (MFU constant, no communication, no failures), under which M$ = r_C exactly."""

    mfu_drop_per_decade: float = 0.0  # μ: fraction of MFU lost per 10× GPUs
    communication: bool = False  # count the exposed gradient all-reduce
    overlap: float = 0.5  # fraction of it hidden behind compute
    batch_exponent: float = 1.0  # γ: global batch B₁ = B₀ · r_C^γ (1: the batch per GPU stays; 0: fixed batch)
    failures: bool = False
    checkpoint_seconds: float = 60.0  # δ
    restart_seconds: float = 600.0  # R
    failures_per_gpu_hour: float = cluster.LLAMA3_FAILURES_PER_GPU_HOUR
    same_days: bool = True  # True: n₁ = r_C · n₀ (finish in the same time); False: n₁ = n₀ (take r_C × longer)
    bus_bandwidth: float = cluster.INFINIBAND.bus_bandwidth  # the data-parallel ring crosses nodes
    latency: float = cluster.INFINIBAND.latency

    def __post_init__(self):
        if not 0 <= self.mfu_drop_per_decade < 1:
            raise ConfigError(f"the MFU drop per 10× GPUs is a fraction in [0, 1), got {self.mfu_drop_per_decade!r}")
        if not 0 <= self.overlap <= 1:
            raise ConfigError(f"overlap is a fraction between 0 and 1, got {self.overlap!r}")


IDEAL = Assumptions()


@dataclass(frozen=True)
class Scale:
    """What one run looks like on its cluster, and the fraction of each GPU-hour that is useful."""

    flops: float
    n_params: float
    gpus: int
    replicas: int  # d = data-parallel group size
    batch_tokens: float
    mfu: float
    compute_seconds: float
    comm_seconds: float
    efficiency: float  # E
    goodput: float  # G

    @property
    def useful(self) -> float:
        """MFU · E · G: the fraction of the peak FLOP/s that becomes kept training progress."""
        return self.mfu * self.efficiency * self.goodput


def scale(r_compute: float, r_params: float, a: Assumptions, base_mfu: float = BASE_MFU,
          peak_flops: float = PRESETS["H100"].peak_flops) -> Scale:
    """The run r_C × the base's compute with r_N × its parameters, under assumptions `a` (r_C = r_N = 1: the base)."""
    flops = r_compute * 6 * BASE_PARAMS * BASE_TOKENS
    n_params = r_params * BASE_PARAMS
    gpus = max(1, round(BASE_GPUS * (r_compute if a.same_days else 1.0)))
    model_parallel = BASE_MODEL_PARALLEL * r_params  # the same parameter shard N/m on every GPU
    replicas = max(1, round(gpus / model_parallel))
    batch = BASE_BATCH_TOKENS * r_compute ** a.batch_exponent
    mfu = base_mfu * (1 - a.mfu_drop_per_decade) ** math.log10(gpus / BASE_GPUS)
    compute = 6 * n_params * batch / gpus / (peak_flops * mfu)
    comm = (cluster.comm_seconds_per_step(n_params / model_parallel, replicas, "ddp", a.bus_bandwidth, a.latency)
            if a.communication else 0.0)
    efficiency = compute / cluster.step_seconds(compute, comm, a.overlap)
    goodput = 1.0
    if a.failures:
        mtbf = cluster.mtbf_seconds(gpus, a.failures_per_gpu_hour)
        tau = cluster.young_interval(a.checkpoint_seconds, mtbf)
        goodput = cluster.goodput_exponential(tau, a.checkpoint_seconds, a.restart_seconds, mtbf)
    return Scale(flops, n_params, gpus, replicas, batch, mfu, compute, comm, efficiency, goodput)


def money_multiplier(definition: str, a: Assumptions, alpha: float | None = None, alpha_hat: float | None = None,
                     step: float = CAPABILITY_STEP) -> dict:
    """M$ = r_C · useful₀ / useful₁, with each factor: r_C · (MFU₀/MFU₁) · (E₀/E₁) · (G₀/G₁)."""
    r_c = compute_ratio(definition, alpha, alpha_hat, step)
    base, big = scale(1.0, 1.0, a), scale(r_c, params_ratio(definition, r_c, step), a)
    return {"compute_ratio": r_c, "mfu_factor": base.mfu / big.mfu, "comm_factor": base.efficiency / big.efficiency,
            "failure_factor": base.goodput / big.goodput, "multiplier": r_c * base.useful / big.useful,
            "gpus": big.gpus, "mfu": big.mfu, "efficiency": big.efficiency, "goodput": big.goodput,
            "base_efficiency": base.efficiency, "base_goodput": base.goodput}


LLAMA3_EFFECTIVE_TRAINING = 0.90  # "higher than 90% effective training time" (Dubey et al. 2024, §3.3.4)


def calibrated_checkpoint_seconds(restart_seconds: float, target: float = LLAMA3_EFFECTIVE_TRAINING,
                                  failures_per_gpu_hour: float = cluster.LLAMA3_FAILURES_PER_GPU_HOUR) -> float:
    """The checkpoint time δ that gives the base run (16,384 GPUs, Young's interval) goodput `target`
    with restarts of R seconds: bisection on δ (goodput falls as δ grows)."""
    mtbf = cluster.mtbf_seconds(BASE_GPUS, failures_per_gpu_hour)

    def g(delta: float) -> float:
        return cluster.goodput_exponential(cluster.young_interval(delta, mtbf), delta, restart_seconds, mtbf)

    lo, hi = 1e-6, mtbf
    if g(lo) < target:
        raise ConfigError(f"no checkpoint time gives {target:.0%} goodput with {restart_seconds:g} s restarts")
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) >= target else (lo, mid)
    return lo


MFU_DROPS = (0.0, 0.1, 0.2, 0.3)
BATCH_EXPONENTS = (1.0, 0.5, 0.0)
CALIBRATED_RESTART = 600.0
FAILURE_SETTINGS = {"none": None,
                    "R 10 min, δ for 90% at 16K GPUs": (calibrated_checkpoint_seconds(CALIBRATED_RESTART), CALIBRATED_RESTART),
                    "δ 60 s, R 10 min": (60.0, 600.0), "δ 5 min, R 30 min": (300.0, 1800.0)}


# ---- the scenarios the lab reports ----------------------------------------------------------------
def named_scenarios() -> dict[str, Assumptions]:
    """The rows of the report's main table: each factor alone, then together, then the fixed cluster."""
    comm = dict(communication=True, batch_exponent=0.5)
    fail = dict(failures=True)
    return {
        "ideal (MFU constant, no communication, no failures)": IDEAL,
        "MFU −10% per 10× GPUs": replace(IDEAL, mfu_drop_per_decade=0.10),
        "MFU falls as Llama 3's did from 8K to 16K GPUs, continued (−21% per 10× GPUs)":
            replace(IDEAL, mfu_drop_per_decade=LLAMA3_MFU_DROP_PER_DECADE),
        "exposed all-reduce, batch ∝ C^0.5, half hidden": replace(IDEAL, **comm),
        "exposed all-reduce, fixed 16M batch, none hidden": replace(IDEAL, communication=True, batch_exponent=0.0, overlap=0.0),
        "failures, calibrated to Llama 3's 90% (R 10 min)":
            replace(IDEAL, failures=True, checkpoint_seconds=FAILURE_SETTINGS["R 10 min, δ for 90% at 16K GPUs"][0],
                    restart_seconds=CALIBRATED_RESTART),
        "failures (δ 60 s, R 10 min)": replace(IDEAL, **fail),
        "failures (δ 5 min, R 30 min)": replace(IDEAL, failures=True, checkpoint_seconds=300.0, restart_seconds=1800.0),
        "all three, moderate (MFU −10%, batch ∝ C^0.5, δ 60 s, R 10 min)": replace(IDEAL, mfu_drop_per_decade=0.10, **comm, **fail),
        "all three, harsh (MFU −21%, fixed batch, none hidden, δ 5 min, R 30 min)":
            replace(IDEAL, mfu_drop_per_decade=LLAMA3_MFU_DROP_PER_DECADE, communication=True, batch_exponent=0.0, overlap=0.0, failures=True,
                    checkpoint_seconds=300.0, restart_seconds=1800.0),
        "all three moderate, same cluster (r_C × longer)":
            replace(IDEAL, mfu_drop_per_decade=0.10, **comm, **fail, same_days=False),
    }


def sweep_scenarios() -> list[tuple[dict, Assumptions]]:
    """The full grid: MFU drop × batch growth × failure costs × (same days, same cluster), with the
    all-reduce half hidden. Each item: (labels, assumptions)."""
    out = []
    for same_days in (True, False):
        for fail_name, fail in FAILURE_SETTINGS.items():
            for gamma in BATCH_EXPONENTS:
                for mu in MFU_DROPS:
                    a = replace(IDEAL, mfu_drop_per_decade=mu, communication=True, batch_exponent=gamma,
                                failures=fail is not None, same_days=same_days,
                                **({} if fail is None else {"checkpoint_seconds": fail[0], "restart_seconds": fail[1]}))
                    out.append(({"mfu_drop_per_decade": mu, "batch_exponent": gamma, "failures": fail_name,
                                 "same_days": same_days}, a))
    return out


def describe(a: Assumptions) -> dict:
    return asdict(a)
