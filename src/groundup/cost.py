"""`groundup cost`: what training (and running) a model takes in FLOPs, memory, GPUs, days,
dollars and energy.

    groundup cost                                   # reference models + the 1e24/1e25/1e26 bands
    groundup cost --params 7B --tokens 2T --gpu H100 --gpus 256
    groundup cost --model llama3-405b --gpus 16384
    groundup cost --model mixtral-8x7b              # a mixture of experts: 46.7B total, 12.9B active
    groundup cost --from-run runs/shakespeare_char  # scale a measured run up
    groundup cost --params 7B --json                # every figure, full precision, for scripts
    groundup cost --params 7B --gpus 1024 --interconnect infiniband --parallelism fsdp --overlap 0.5 \
        --checkpoint-seconds 60 --restart-seconds 600   # step time with exposed communication, goodput

A calculator, not an experiment: the formulas are groundup.accounting's (each with its source), the
hardware figures groundup.hardware's, the number formats groundup.report.format's. This module holds
the reference models, puts the figures for one question together, and prints them. Each question
builds one dict of figures; the text is formatted from that dict and `--json` prints it as is, so
both always show the same numbers. Every assumption (MFU, price, PUE, the hardware figures) is a
flag; the defaults and their sources are in docs/cost.md.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from groundup.accounting import (
    active_params, DECODE_BYTES_PER_PARAM, DEFAULT_GPU, DEFAULT_MFU, DEFAULT_PRICE, DEFAULT_PUE, STATE_BYTES_PER_PARAM, USABLE_MEMORY,
    TrainingMemory, check_positive, chinchilla_params, decode_tokens_per_s, gpus_for_days, inference_flops_per_token,
    Projection, min_gpus, model_flops_utilization, project, implied_mfu, state_memory, training_flops, training_flops_per_token, training_memory,
)
from groundup import cluster
from groundup.errors import ConfigError, GroundupError
from groundup.hardware import PRESETS, Hardware
from groundup.model import GPT
from groundup.report.format import human, human_bytes, human_energy, human_flops, human_money, human_time, parse_amount, plural
from groundup.train import checkpoint as ckpt
from groundup.util.metrics import read_metrics


def hardware_with(name: str = DEFAULT_GPU, peak_tflops: float | None = None, memory_gb: float | None = None,
                  bandwidth_gbs: float | None = None, watts: float | None = None,
                  host_watts_per_gpu: float | None = None) -> Hardware:
    """A preset from groundup.hardware, with any figure overridden."""
    key = name.upper()
    if key not in PRESETS:
        raise ConfigError(f"unknown GPU {name!r}; presets: {', '.join(PRESETS)} (override any figure with "
                          "--peak-tflops, --memory-gb, --bandwidth-gbs, --watts, --host-watts-per-gpu)")
    hw = PRESETS[key]
    changes = {}
    for flag, attr, unit, value in [("peak-tflops", "peak_flops", 1e12, peak_tflops), ("memory-gb", "memory_bytes", 1e9, memory_gb),
                                    ("bandwidth-gbs", "bandwidth", 1e9, bandwidth_gbs), ("watts", "watts", 1.0, watts)]:
        if value is not None:
            check_positive(**{flag.replace("-", "_"): value})
            changes[attr] = value * unit
    if host_watts_per_gpu is not None:
        if not (isinstance(host_watts_per_gpu, (int, float)) and 0 <= host_watts_per_gpu < float("inf")):
            raise ConfigError(f"--host-watts-per-gpu must be a number ≥ 0 (0: count the GPU boards only), got {host_watts_per_gpu!r}")
        changes["host_watts"] = float(host_watts_per_gpu)
    if changes:
        hw = replace(hw, name=hw.name + " (overridden)", source=hw.source + "; overridden on the command line", **changes)
    return hw


# ---- reference models --------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    name: str
    n_params: float
    n_tokens: float
    n_layer: int
    d_model: int
    n_head: int
    seq_len: int
    vocab: int
    published_flops: float | None  # training FLOPs as the authors state them (None: not published)
    published_gpu_hours: float | None = None
    gpu: str | None = None
    source: str = ""


REFERENCES: dict[str, Reference] = {
    "gpt3-175b": Reference("GPT-3 175B", 175e9, 300e9, 96, 12288, 96, 2048, 50257, 3.14e23,
                           source="Brown et al. 2020, Table D.1: 3.14e23 FLOPs (3,640 PF-days); Table 2.1 architecture"),
    "chinchilla-70b": Reference("Chinchilla 70B", 70e9, 1.4e12, 80, 8192, 64, 2048, 32000, 5.76e23,
                                source="Hoffmann et al. 2022, §4 and Table 3: the Gopher budget, 5.76e23 FLOPs; Table 4 architecture"),
    "llama2-70b": Reference("Llama-2 70B", 70e9, 2.0e12, 80, 8192, 64, 4096, 32000, None, 1_720_320, "A100",
                            source="Touvron et al. 2023, Table 1 (2.0T tokens) and Table 2: 1,720,320 A100-80GB GPU-hours; "
                                   "no FLOP count published"),
    "llama3-405b": Reference("Llama-3 405B", 405e9, 15.6e12, 126, 16384, 128, 8192, 128256, 3.8e25, 30.84e6, "H100",
                             source="Dubey et al. 2024, §3.3: 3.8e25 FLOPs on 15.6T tokens, Table 3 architecture; "
                                    "model card: 30.84M H100-80GB GPU-hours"),
}


@dataclass(frozen=True)
class MoEPreset:
    """A mixture-of-experts model: all N parameters are stored, N_active work on each token
    (accounting.active_params: the shared weights plus k/E of the experts). Training FLOPs and
    batch-1 decoding go by N_active, the memory by N."""

    name: str
    n_experts: int
    experts_per_token: int
    expert_params: float  # every expert's weights, all layers
    shared_params: float  # the rest: attention, embeddings, router, norms
    n_tokens: float | None  # training tokens, where known
    n_layer: int | None
    d_model: int | None
    n_head: int | None
    seq_len: int | None
    vocab: int
    published_flops: float | None
    source: str

    @property
    def n_params(self) -> float:
        return self.expert_params + self.shared_params

    @property
    def n_active(self) -> float:
        return active_params(self.n_params, self.expert_params, self.n_experts, self.experts_per_token)


# Mixtral 8×7B (Jiang et al. 2024, Table 1): 32 layers, d 4096, 32 query / 8 key-value heads of 128,
# SwiGLU experts of hidden 14336, 8 experts, top-2, vocab 32000, untied embeddings.
_MIXTRAL_EXPERTS = 32 * 8 * 3 * 4096 * 14336  # 45.1B: up, gate, down per expert
_MIXTRAL_SHARED = (32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)  # W_Q, W_O; W_K, W_V (grouped-query)
                   + 2 * 32000 * 4096 + 32 * 8 * 4096 + 65 * 4096)  # embeddings + head, routers, RMSNorm gains

MOE_PRESETS: dict[str, MoEPreset] = {
    "mixtral-8x7b": MoEPreset(
        "Mixtral 8×7B", 8, 2, _MIXTRAL_EXPERTS, _MIXTRAL_SHARED, None, 32, 4096, 32, 32768, 32000, None,
        source="Jiang et al. 2024 (Mixtral of Experts), Table 1 architecture; 46.7B total / 12.9B active per token "
               "counted from it (the paper rounds to 47B / 13B); training tokens not published"),
    "gpt4-rumoured": MoEPreset(
        "rumoured 1.8T MoE", 16, 2, 16 * 111e9, 55e9, 13e12, 120, None, None, None, 0, 2.15e25,
        source="a RUMOUR, not published by its makers: SemiAnalysis (Patel & Wong, July 2023) reported a ~1.8T-parameter "
               "model of 120 layers with 16 experts of ~111B MLP parameters each, 2 routed per token, ~55B shared "
               "(attention) parameters, so ~280B active; ~13T training tokens and ~2.15e25 training FLOPs"),
}


def reference_table(mfu: float = DEFAULT_MFU) -> list[dict]:
    """Each reference model: 6·N·D and the count with attention against what its authors published;
    where GPU-hours are published, the MFU they imply."""
    rows = []
    for key, r in REFERENCES.items():
        simple = training_flops(r.n_params, r.n_tokens)
        detailed = training_flops_per_token(r.n_params, r.n_layer, r.d_model, r.seq_len) * r.n_tokens
        row = {"key": key, "name": r.name, "N": r.n_params, "D": r.n_tokens, "flops_6ND": simple, "flops_with_attention": detailed,
               "published_flops": r.published_flops, "source": r.source}
        if r.published_flops:
            row["error_6ND"] = simple / r.published_flops - 1
            row["error_with_attention"] = detailed / r.published_flops - 1
        if r.published_gpu_hours:
            hw = PRESETS[r.gpu]
            flops = r.published_flops or simple
            row["published_gpu_hours"] = r.published_gpu_hours
            row["gpu"] = r.gpu
            row["implied_mfu"] = model_flops_utilization(flops / (r.published_gpu_hours * 3600), hw.peak_flops)
            row["calculator_gpu_hours"] = project(flops, hw, 1, mfu).gpu_hours
        rows.append(row)
    return rows


# ---- validation against published runs ---------------------------------------------------------
@dataclass(frozen=True)
class PublishedRun:
    """A training run whose makers published the hardware time it took. Its FLOPs come from our
    model (6·N·D, and with attention 6·N + 12·L·T·d per token), not from theirs, so the MFU it
    implies tests the FLOP model and the MFU assumption together; where the authors report an MFU
    measured during training, the two can be compared."""

    key: str
    name: str
    n_params: float
    n_tokens: float
    n_layer: int
    d_model: int
    seq_len: int
    gpu: str  # a groundup.hardware preset
    gpu_hours: float
    reported_mfu: tuple[float, float] | None  # (low, high) as the authors state it; None: not reported
    source: str
    caveat: str = ""
    dollars: float | None = None  # the stated price of the run, where one is


# GPT-2 124M as nanoGPT and llm.c train it: 12 layers of 12·768² matrix weights, the LM head tied
# to a 50,304-row embedding (GPT-2's 50,257 padded to a multiple of 64). N counts the matrices.
_GPT2_124M = 12 * 12 * 768 * 768 + 50304 * 768  # 123.6M

PUBLISHED_RUNS: tuple[PublishedRun, ...] = (
    PublishedRun("llama3-405b", "Llama 3.1 405B", 405e9, 15.6e12, 126, 16384, 8192, "H100", 30.84e6, (0.38, 0.43),
                 "Dubey et al. 2024 (The Llama 3 Herd of Models): 15.6T tokens (§3.3), architecture (Table 3), "
                 "38–43% BF16 MFU on 8K–16K H100s (Table 4); Llama 3.1 model card: 30.84M H100-80GB GPU-hours",
                 "the GPU-hours are the whole run (long-context stage, annealing, restarts: 419 unexpected interruptions in one 54-day snapshot, §3.3.4), "
                 "the reported MFU steady-state pre-training at 8K context"),
    PublishedRun("llama2-70b", "Llama 2 70B", 70e9, 2.0e12, 80, 8192, 4096, "A100", 1_720_320, None,
                 "Touvron et al. 2023 (Llama 2), Table 1 (2.0T tokens, 4K context) and Table 2 / the model card: "
                 "1,720,320 A100-80GB GPU-hours; no MFU or FLOP count published",
                 "N is the rounded 70B (grouped-query attention makes the model ≈ 69B)"),
    PublishedRun("nanogpt-124m", "nanoGPT GPT-2 124M", _GPT2_124M, 600_000 * 12 * 1024 * 40, 12, 768, 1024, "A100",
                 4 * 24 * 8, (0.37, 0.37),
                 "nanoGPT README: GPT-2 124M on OpenWebText on one 8×A100-40GB node in about 4 days; "
                 "config/train_gpt2.py: 600,000 iterations × 491,520 tokens = 295B; MFU ≈ 37% on one A100 "
                 "(README / transformer_sizing notebook, same 6N + 12·L·T·d count)",
                 "\"about 4 days\" is rounded and includes evaluation; the 37% is one GPU, not the 8-GPU DDP run"),
    PublishedRun("llmc-124m", "llm.c GPT-2 124M", _GPT2_124M, 10e9, 12, 768, 1024, "A100", 1.5 * 8, None,
                 "llm.c discussion #481 (Karpathy, May 2024): GPT-2 124M on 10B FineWeb tokens in ≈ 90 minutes on "
                 "one 8×A100-80GB SXM node, ≈ $20",
                 "\"≈ 90 minutes\" is rounded", dollars=20.0),
)
NOT_VALIDATED = ("GPT-3 175B: OpenAI published its FLOPs (3.14e23, Brown et al. 2020, Table D.1) but no GPU-hours; "
                 "the V100 count and days quoted elsewhere are third-party estimates (Patterson et al. 2021) we did "
                 "not check against a source, so GPT-3 is not in this table.")


def validation() -> dict:
    """Each published run: our FLOPs, the MFU its measured GPU-hours imply
    (accounting.implied_mfu: C / (GPU-hours·3600·peak)), and the MFU its authors report."""
    rows = []
    for r in PUBLISHED_RUNS:
        hw = PRESETS[r.gpu]
        simple = training_flops(r.n_params, r.n_tokens)
        detailed = training_flops_per_token(r.n_params, r.n_layer, r.d_model, r.seq_len) * r.n_tokens
        row = {"key": r.key, "name": r.name, "N": r.n_params, "D": r.n_tokens, "n_layer": r.n_layer, "d_model": r.d_model,
               "seq_len": r.seq_len, "gpu": r.gpu, "peak_flops": hw.peak_flops, "gpu_hours": r.gpu_hours,
               "flops_6ND": simple, "flops_with_attention": detailed,
               "implied_mfu_6ND": implied_mfu(simple, r.gpu_hours, hw.peak_flops),
               "implied_mfu_with_attention": implied_mfu(detailed, r.gpu_hours, hw.peak_flops),
               "reported_mfu": list(r.reported_mfu) if r.reported_mfu else None, "source": r.source, "caveat": r.caveat}
        if r.dollars:
            row["dollars"] = r.dollars
            row["implied_price"] = r.dollars / r.gpu_hours
        rows.append(row)
    return {"formula": "implied MFU = C / (GPU-hours · 3600 · peak)", "runs": rows, "not_validated": NOT_VALIDATED}


def format_validation(v: dict) -> str:
    lines = [f"the FLOP model against published runs with measured GPU-hours: {v['formula']}",
             f"  {'run':<20} {'GPU':<5} {'GPU-hours':>11} {'6·N·D':>8} {'+attention':>10} {'MFU (6ND)':>9} "
             f"{'MFU (+attn)':>11} {'reported':>9}"]
    for r in v["runs"]:
        rep = r["reported_mfu"]
        reported = "—" if rep is None else (f"{rep[0]:.0%}" if rep[0] == rep[1] else f"{rep[0]:.0%}–{rep[1]:.0%}")
        lines.append(f"  {r['name']:<20} {r['gpu']:<5} {r['gpu_hours']:>11,.0f} {r['flops_6ND']:>8.2e} "
                     f"{r['flops_with_attention']:>10.2e} {r['implied_mfu_6ND']:>9.1%} {r['implied_mfu_with_attention']:>11.1%} "
                     f"{reported:>9}")
    lines.append("")
    for r in v["runs"]:
        price = f" ${r['dollars']:,.0f} → ${r['implied_price']:.2f}/GPU-hour." if "implied_price" in r else ""
        lines.append(f"  {r['name']}: {r['source']}.{price}" + (f" Caveat: {r['caveat']}." if r["caveat"] else ""))
    lines.append(f"  {v['not_validated']}")
    return "\n".join(lines)


# ---- the 1e24 / 1e25 / 1e26 bands --------------------------------------------------------------
BANDS = (1e24, 1e25, 1e26)


def cost_bands(hardware: Hardware, mfu: float = DEFAULT_MFU, price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE,
               days: float = 90.0, tokens_per_param: float = 20.0) -> list[dict]:
    """For each band: the Chinchilla-optimal size (D = 20·N, so N = √(C/120)), the GPUs that finish
    it in `days`, and GPU-hours, dollars and MWh."""
    rows = []
    for flops in BANDS:
        n = chinchilla_params(flops, tokens_per_param)
        gpus = gpus_for_days(flops, hardware, days, mfu)
        p = project(flops, hardware, gpus, mfu, price, pue)
        rows.append({"flops": flops, "N": n, "D": tokens_per_param * n, "gpus": gpus, "days": p.days,
                     "gpu_hours": p.gpu_hours, "dollars": p.dollars, "mwh": p.kwh / 1000})
    return rows


def overview(hardware: Hardware, mfu: float = DEFAULT_MFU, price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE,
             days: float = 90.0) -> dict:
    """What `groundup cost` shows with no model named: the reference models and the bands."""
    return {"mfu": mfu, "references": reference_table(mfu),
            "bands": {"hardware": asdict(hardware), "mfu": mfu, "price": price, "pue": pue, "days": days,
                      "tokens_per_param": 20.0, "rows": cost_bands(hardware, mfu, price, pue, days)}}


def format_overview(o: dict) -> str:
    mfu = o["mfu"]
    lines = ["reference models: the calculator's training FLOPs against the published figures"]
    for r in o["references"]:
        published = human_flops(r["published_flops"]) if r["published_flops"] else "not published"
        line = (f"  {r['name']:<15} N {human(r['N']):>6}  D {human(r['D']):>6}  6ND {human_flops(r['flops_6ND'])}  "
                f"with attention {human_flops(r['flops_with_attention'])}  published {published}")
        if "error_6ND" in r:
            line += f" ({r['error_6ND']:+.1%} / {r['error_with_attention']:+.1%})"
        lines.append(line)
        if "implied_mfu" in r:
            lines.append(f"  {'':<15} published {r['published_gpu_hours']:,.0f} {r['gpu']} GPU-hours → implied MFU "
                         f"{r['implied_mfu']:.0%}; the calculator at {mfu:.0%} MFU says {r['calculator_gpu_hours']:,.0f}")
    b, hw = o["bands"], o["bands"]["hardware"]
    lines += ["",
              f"the commonly quoted bands, on {hw['name']} at {b['mfu']:.0%} MFU, ${b['price']:.2f}/GPU-hour, "
              f"({hw['watts']:.0f} W board + {hw['host_watts']:.0f} W host) per GPU × PUE {b['pue']}, finishing in "
              f"{b['days']:g} days; model sized Chinchilla-optimally "
              f"(D = {b['tokens_per_param']:g}·N):",
              f"  {'FLOPs':>7} {'N':>7} {'D':>7} {'GPUs':>8} {'days':>6} {'GPU-hours':>12} {'dollars':>15} {'MWh':>9}"]
    for r in b["rows"]:
        lines.append(f"  {r['flops']:>7.0e} {human(r['N']):>7} {human(r['D']):>7} {r['gpus']:>8,} {r['days']:>6.1f} "
                     f"{r['gpu_hours']:>12,.0f} {'$' + format(r['dollars'], ',.0f'):>15} {r['mwh']:>9,.0f}")
    return "\n".join(lines)


# ---- one model, the whole story ---------------------------------------------------------------
@dataclass
class Estimate:
    n_params: float
    n_tokens: float
    flops: float
    flops_with_attention: float | None
    inference_flops_per_token: float
    memory: TrainingMemory  # activations 0 when the architecture is not given (activations_counted False)
    memory_checkpointed: TrainingMemory | None
    min_gpus: int | None
    min_gpus_checkpointed: int | None
    projection: Projection
    decode_tokens_per_s: float  # batch-1 generation bound by reading the bf16 weights once per token
    hardware: Hardware
    activations_counted: bool
    notes: list[str] = field(default_factory=list)
    n_active: float | None = None  # a mixture of experts: parameters working on each token (None: all)


def estimate(n_params: float, n_tokens: float, hardware: Hardware, n_gpus: int | None = None, mfu: float = DEFAULT_MFU,
             price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE, n_layer: int | None = None, d_model: int | None = None,
             n_head: int | None = None, seq_len: int | None = None, vocab: int = 0, micro_batch: int = 1,
             days: float | None = None, n_active: float | None = None) -> Estimate:
    """Everything `groundup cost` prints for one (N, D) on one kind of GPU.

    The training state (16 bytes/parameter, mixed precision) needs only N, so the minimum GPU
    count (state sharded across GPUs, ZeRO-3 / FSDP) is always computed. Without the architecture
    the activations are not counted, so that count is a lower bound.

    n_active (a mixture of experts): the parameters each token works with. FLOPs (6·N_active·D) and
    batch-1 decoding (it reads the routed experts' weights) go by N_active; memory holds all N."""
    check_positive(params=n_params, tokens=n_tokens)
    if n_active is not None:
        check_positive(active_params=n_active)
        if n_active > n_params:
            raise ConfigError(f"active parameters ({human(n_active)}) cannot exceed the total ({human(n_params)})")
    working = n_active or n_params
    flops = training_flops(working, n_tokens)
    arch = bool(n_layer and d_model and n_head and seq_len)
    with_attention = training_flops_per_token(working, n_layer, d_model, seq_len) * n_tokens if arch else None
    notes = []
    if arch:
        memory = training_memory(n_params, n_layer, d_model, n_head, seq_len, micro_batch, vocab)
        memory_ckpt = training_memory(n_params, n_layer, d_model, n_head, seq_len, micro_batch, vocab, checkpointing=True)
        need, need_ckpt = min_gpus(memory, hardware.memory_bytes), min_gpus(memory_ckpt, hardware.memory_bytes)
    else:
        memory, memory_ckpt = state_memory(n_params), None
        need, need_ckpt = min_gpus(memory, hardware.memory_bytes), None
        notes.append("give --layers, --d-model, --heads and --context for the attention FLOPs and the activation memory")
    if n_gpus is None:
        n_gpus = gpus_for_days(with_attention or flops, hardware, days, mfu) if days else (need_ckpt or need or 1)
    projection = project(with_attention or flops, hardware, n_gpus, mfu, price, pue)
    floor = need_ckpt if arch else need  # the fewest GPUs that can hold the run at all
    if floor and n_gpus < floor:
        why = ("even with activation checkpointing" if arch else
               f"for its {human_bytes(memory.state)} of training state alone (sharded across GPUs)")
        notes.append(f"{plural(n_gpus, 'GPU')} can't hold this run: it needs at least {floor} {why}")
    if n_active is not None:
        notes.append("a mixture of experts: FLOPs and batch-1 decoding count the active parameters, memory all of them "
                     "(larger decode batches touch more experts per step)")
    return Estimate(n_params, n_tokens, flops, with_attention,
                    inference_flops_per_token(working, n_layer, d_model, seq_len), memory, memory_ckpt,
                    need, need_ckpt, projection, decode_tokens_per_s(working, hardware.bandwidth), hardware, arch, notes,
                    n_active)


def estimate_figures(e: Estimate) -> dict:
    """Every figure `groundup cost` prints for one model, at full precision (what --json prints)."""
    p, m, mc = e.projection, e.memory, e.memory_checkpointed
    return {
        "N": e.n_params, "N_active": e.n_active or e.n_params, "D": e.n_tokens, "tokens_per_param": e.n_tokens / e.n_params,
        "flops_6ND": e.flops, "flops_with_attention": e.flops_with_attention,
        "inference_flops_per_token": e.inference_flops_per_token,
        "decode_bytes_per_param": DECODE_BYTES_PER_PARAM, "decode_tokens_per_s": e.decode_tokens_per_s,
        "hardware": asdict(e.hardware),
        "memory": {"state_bytes_per_param": STATE_BYTES_PER_PARAM, "weights": m.weights, "gradients": m.gradients,
                   "optimizer": m.optimizer, "state": m.state, "activations_counted": e.activations_counted,
                   "activations": m.activations if e.activations_counted else None,
                   "activations_checkpointed": mc.activations if mc else None, "usable_fraction": USABLE_MEMORY},
        "min_gpus": e.min_gpus, "min_gpus_checkpointed": e.min_gpus_checkpointed,
        "gpus": p.n_gpus, "mfu": p.mfu, "gpu_hours": p.gpu_hours, "days": p.days,
        "price": p.price, "dollars": p.dollars, "pue": p.pue, "host_watts_per_gpu": p.host_watts_per_gpu,
        "kwh": p.kwh, "mwh": p.kwh / 1000, "kwh_boards": p.kwh_boards, "mwh_boards": p.kwh_boards / 1000,
        "notes": list(e.notes),
    }


def format_estimate(f: dict) -> str:
    """The text of `groundup cost --params/--model`, from estimate_figures."""
    hw, m = f["hardware"], f["memory"]
    sparse = f["N_active"] != f["N"]
    active = f" ({human(f['N_active'])} active per token)" if sparse else ""
    n = "N_active" if sparse else "N"
    lines = [f"model: {human(f['N'])} parameters{active}, trained on {human(f['D'])} tokens ({f['tokens_per_param']:.1f} tokens/parameter)",
             f"training FLOPs: 6·{n}·D = {human_flops(f['flops_6ND'])}"
             + (f"; with attention (6·{n} + 12·L·T·d per token) = {human_flops(f['flops_with_attention'])}"
                if f["flops_with_attention"] else ""),
             f"inference: {human_flops(f['inference_flops_per_token'])} FLOPs per generated token; batch-1 decoding reads every "
             f"{'active ' if sparse else ''}weight ({f['decode_bytes_per_param']} bytes each) per token: ≤ {f['decode_tokens_per_s']:,.1f} tokens/s on one "
             f"{hw['name']} ({hw['bandwidth'] / 1e9:,.0f} GB/s)"]
    state = (f"memory: weights {human_bytes(m['weights'])} + gradients {human_bytes(m['gradients'])} + optimizer "
             f"{human_bytes(m['optimizer'])} = {human_bytes(m['state'])} of state ({m['state_bytes_per_param']} bytes/parameter")
    where = f"minimum {hw['name']} GPUs ({hw['memory_bytes'] / 1e9:.0f} GB, {m['usable_fraction']:.0%} usable, state sharded: ZeRO-3/FSDP)"
    if m["activations_counted"]:
        lines.append(f"{state}); activations {human_bytes(m['activations'])} per micro-batch "
                     f"({human_bytes(m['activations_checkpointed'])} with activation checkpointing)")
        fits = lambda k: f"{k:,}" if k else "none (activations alone exceed one GPU)"
        lines.append(f"{where}: {fits(f['min_gpus'])} ({fits(f['min_gpus_checkpointed'])} with checkpointing)")
    else:
        lines.append(f"{state}: bf16 weights and gradients, fp32 master weights and Adam m, v); activations not counted "
                     "(the architecture is not given)")
        lines.append(f"{where}: {f['min_gpus']:,} for the training state alone, a lower bound (activations need more)")
    lines += [f"time: {f['gpu_hours']:,.0f} GPU-hours at {f['mfu']:.0%} MFU of {hw['peak_flops'] / 1e12:,.0f} TFLOP/s → "
              f"{f['days']:,.1f} days on {plural(f['gpus'], 'GPU')}",
              f"cost: {human_money(f['dollars'])} at ${f['price']:.2f}/GPU-hour; energy {human_energy(f['kwh'])} "
              f"(({hw['watts']:.0f} W board + {f['host_watts_per_gpu']:.0f} W host) per GPU × PUE {f['pue']}; "
              f"the boards alone {human_energy(f['kwh_boards'])})"]
    lines += [f"note: {n}" for n in f["notes"]]
    return "\n".join(lines)


# ---- on a cluster: communication and failures ------------------------------------------------
DEFAULT_TOKENS_PER_GPU_STEP = 32768  # tokens each GPU processes per optimizer step (8 × 4096): an assumption


def _gpu_counts(n_gpus: int) -> list[int]:
    """1, 8, 64, … (powers of 8) below n_gpus, then n_gpus: the rows of the scaling table."""
    counts, k = [], 1
    while k < n_gpus:
        counts.append(k)
        k *= 8
    return counts + [n_gpus]


def cluster_figures(n_params: float, flops_per_token: float, hardware: Hardware, n_gpus: int, mfu: float,
                    link: cluster.Interconnect, parallelism: cluster.Parallelism = "ddp", overlap: float = 0.0,
                    tokens_per_gpu_step: float = DEFAULT_TOKENS_PER_GPU_STEP, checkpoint_seconds: float | None = None,
                    restart_seconds: float | None = None,
                    failures_per_gpu_hour: float = cluster.LLAMA3_FAILURES_PER_GPU_HOUR) -> dict:
    """One data-parallel step on n GPUs (groundup.cluster, weak scaling: b tokens per GPU per step):

        compute    = flops_per_token · b / (peak · MFU)
        comm       = all-reduce of N bf16 gradients (ddp) or 2 all-gathers + 1 reduce-scatter (fsdp),
                     ring model on the interconnect's bus bandwidth
        step       = compute + (1 − overlap) · comm
        efficiency = compute / step                  (throughput against n × one GPU)
        goodput    = G(τ_Young, δ, R, M) with M = 3600 / (n · λ), τ = √(2δM)   (when δ and R are given),
                     in the exponential model (cluster.goodput_exponential, Daly 2006), which stays above 0
                     where the first-order cluster.goodput (also reported) clips to 0
        GPU-hours on the cluster = GPU-hours at MFU / (efficiency · goodput)

    Only data parallelism is modelled (no tensor or pipeline parallelism); the whole ring runs at
    the one interconnect's bandwidth."""
    check_positive(tokens_per_gpu_step=tokens_per_gpu_step, failures_per_gpu_hour=failures_per_gpu_hour)
    if (checkpoint_seconds is None) != (restart_seconds is None):
        raise ConfigError("give both --checkpoint-seconds and --restart-seconds (or neither) for the goodput")
    compute = flops_per_token * tokens_per_gpu_step / (hardware.peak_flops * mfu)

    def row(n: int) -> dict:
        comm = cluster.comm_seconds_per_step(n_params, n, parallelism, link.bus_bandwidth, link.latency)
        step = cluster.step_seconds(compute, comm, overlap)
        r = {"gpus": n, "comm_seconds": comm, "exposed_comm_seconds": step - compute, "step_seconds": step,
             "efficiency": compute / step}
        if checkpoint_seconds is not None:
            mtbf = cluster.mtbf_seconds(n, failures_per_gpu_hour)
            tau = cluster.young_interval(checkpoint_seconds, mtbf)
            r.update(mtbf_seconds=mtbf, young_interval_seconds=tau,
                     goodput=cluster.goodput_exponential(tau, checkpoint_seconds, restart_seconds, mtbf),
                     goodput_first_order=cluster.goodput(tau, checkpoint_seconds, restart_seconds, mtbf))
        return r

    rows = [row(n) for n in _gpu_counts(n_gpus)]
    here = rows[-1]
    useful = here["efficiency"] * here.get("goodput", 1.0)
    collectives = {"ddp": "1 all-reduce of the bf16 gradients (DDP)",
                   "fsdp": "2 all-gathers of the bf16 parameters + 1 reduce-scatter of the bf16 gradients (FSDP)"}
    failures = (None if checkpoint_seconds is None else
                "Llama 3's rate, 419 unexpected interruptions in 54 days on 16,384 H100s (Dubey et al. 2024, Table 5)"
                if failures_per_gpu_hour == cluster.LLAMA3_FAILURES_PER_GPU_HOUR else "the rate given")
    if failures:
        failures += "; a checkpoint every Young interval √(2·δ·MTBF)"
    return {"interconnect": {"name": link.name, "bus_bandwidth": link.bus_bandwidth, "latency": link.latency,
                             "latency_us": link.latency * 1e6, "source": link.source},
            "parallelism": parallelism, "collectives": collectives[parallelism], "overlap": overlap, "gpus": n_gpus,
            "tokens_per_gpu_step": tokens_per_gpu_step, "flops_per_token": flops_per_token, "compute_seconds": compute,
            "checkpoint_seconds": checkpoint_seconds, "restart_seconds": restart_seconds,
            "failures_per_gpu_hour": failures_per_gpu_hour, "failure_source": failures,
            "scope": "data parallelism only, the whole ring at this one link's bandwidth (NVLink inside an 8-GPU node, "
                     "InfiniBand across nodes)",
            "useful_fraction": useful, "rows": rows}


def format_cluster(c: dict, gpu_hours: float, days: float, dollars: float) -> list[str]:
    """The cluster lines of `groundup cost --interconnect`, from cluster_figures."""
    link, here = c["interconnect"], c["rows"][-1]
    lines = [f"cluster: {plural(c['gpus'], 'GPU')} on {link['name']}, bus bandwidth {link['bus_bandwidth'] / 1e9:,.0f} GB/s "
             f"per GPU each way, α {link['latency_us']:g} µs; per step {c['collectives']}; "
             f"{c['tokens_per_gpu_step']:,.0f} tokens per GPU per step, {c['overlap']:.0%} of the communication hidden",
             f"  step: compute {c['compute_seconds']:,.3f} s + exposed communication {here['exposed_comm_seconds']:,.3f} s "
             f"= {here['step_seconds']:,.3f} s; scaling efficiency {here['efficiency']:.1%}"]
    failures = "goodput" in here
    head = f"  {'GPUs':>8} {'comm':>10} {'step':>10} {'efficiency':>10}"
    lines.append(head + (f" {'MTBF':>12} {'Young τ':>12} {'goodput':>8}" if failures else ""))
    for r in c["rows"]:
        line = (f"  {r['gpus']:>8,} {r['comm_seconds']:>8,.3f} s {r['step_seconds']:>8,.3f} s {r['efficiency']:>10.1%}")
        if failures:
            line += (f" {r['mtbf_seconds'] / 3600:>10,.1f} h {r['young_interval_seconds'] / 60:>8,.1f} min "
                     f"{r['goodput']:>8.1%}")
        lines.append(line)
    lines.append(f"  ({c['scope']})")
    if failures:
        lines.append(f"  failures: {c['failures_per_gpu_hour']:.3g} per GPU-hour, {c['failure_source']}; checkpoint "
                     f"{c['checkpoint_seconds']:,.0f} s, restart {c['restart_seconds']:,.0f} s")
    f = c["useful_fraction"]
    lines.append(f"  with communication{' and failures' if failures else ''}: {f:.1%} of the GPU time is useful → "
                 f"{gpu_hours / f:,.0f} GPU-hours, {days / f:,.1f} days, {human_money(dollars / f)}")
    return lines


# ---- a measured run, scaled up ---------------------------------------------------------------
def measured_speed(run_dir: str | os.PathLike) -> dict:
    """A run's parameter count, FLOPs per token and measured tokens/s (median of its logged
    intervals, the first one — warm-up — left out), from its run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / ckpt.CONFIG).exists():
        raise GroundupError(f"{run_dir} is not a run directory (no config.json); pass one written by `groundup train --out`")
    config = ckpt.read_run_config(run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("tokens_per_s")]
    if not records:
        raise GroundupError(f"{run_dir}/metrics.jsonl has no tokens_per_s records; train the run for at least log_interval steps")
    speeds = [r["tokens_per_s"] for r in (records[1:] or records)]
    with torch.device("meta"):
        model = GPT(config.model)
    mfus = [r["mfu"] for r in records[1:] if "mfu" in r]
    return {"config": config, "N": model.num_params(), "N_non_embedding": model.num_params(non_embedding=True),
            "flops_per_token": model.flops_per_token(), "tokens_per_s": statistics.median(speeds),
            "mfu": statistics.median(mfus) if mfus else None}


def project_from_run(run_dir: str | os.PathLike, n_params: float | None = None, n_tokens: float | None = None,
                     hardware: Hardware | None = None, n_gpus: int = 1, mfu: float | None = None,
                     price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE) -> dict:
    """How long (and how much) a run of N' parameters on D' tokens takes, from a measured run.

    Same device: assume the achieved FLOP/s stays what was measured (flops_per_token × tokens/s);
    bigger matrices usually run at least as efficiently, so this leans pessimistic.
    Another device: its peak × MFU (the run's own MFU if it logged one and --mfu is not given)."""
    m = measured_speed(run_dir)
    c = m["config"]
    tokens_per_step = c.train.batch_size * c.model.block_size * c.train.grad_accum_steps
    run_tokens = c.train.max_steps * tokens_per_step
    achieved = m["flops_per_token"] * m["tokens_per_s"]  # FLOP/s this device reached
    rows = []
    targets = [("this run", m["N"], run_tokens)]
    if n_params or n_tokens:
        targets.append(("target", n_params or m["N"], n_tokens or run_tokens * (n_params or m["N"]) / m["N"]))
    else:  # the claim: 10× the model (with 10× the data, as compute-optimal scaling asks) costs 100×
        targets += [("10× N, 10× D", 10 * m["N"], 10 * run_tokens), ("100× N, 100× D", 100 * m["N"], 100 * run_tokens)]
    for label, n, d in targets:
        flops = training_flops(n, d)
        row = {"label": label, "N": n, "D": d, "flops": flops, "seconds_here": flops / achieved}
        if hardware is not None:
            used_mfu = mfu if mfu is not None else (m["mfu"] or DEFAULT_MFU)
            p = project(flops, hardware, n_gpus, used_mfu, price, pue)
            row.update(gpu=hardware.name, n_gpus=n_gpus, mfu=used_mfu, gpu_hours=p.gpu_hours, days=p.days,
                       seconds_on_gpus=p.days * 86400, dollars=p.dollars, kwh=p.kwh)
        rows.append(row)
    return {"run": str(run_dir), "measured": {k: v for k, v in m.items() if k != "config"}, "achieved_flops": achieved,
            "rows": rows}


def format_from_run(r: dict) -> str:
    meas = r["measured"]
    lines = [f"{r['run']}: {human(meas['N'])} parameters, measured {meas['tokens_per_s']:,.0f} tokens/s "
             f"= {r['achieved_flops'] / 1e9:,.2f} GFLOP/s achieved" + (f" (MFU {meas['mfu']:.1%})" if meas["mfu"] else "")]
    for row in r["rows"]:
        line = (f"  {row['label']:<16} N {human(row['N']):>7}  D {human(row['D']):>7}  {human_flops(row['flops'])} FLOPs  "
                f"here: {human_time(row['seconds_here'])}")
        if "gpu_hours" in row:
            line += (f"  | {row['n_gpus']:,}× {row['gpu']} at {row['mfu']:.0%} MFU: {human_time(row['seconds_on_gpus'])}, "
                     f"{human_money(row['dollars'])}, {human_energy(row['kwh'], 'kWh')}")
        lines.append(line)
    lines.append("  (same device: assumes the measured FLOP/s holds at the larger size; bigger matmuls usually run faster)")
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    what = p.add_argument_group("what to cost (default: the reference models and the 1e24/1e25/1e26 bands)")
    what.add_argument("--model", choices=sorted(REFERENCES) + sorted(MOE_PRESETS),
                      help="a reference model's N, D and architecture (mixtral-8x7b, gpt4-rumoured: mixtures of experts)")
    what.add_argument("--params", help="parameters N, e.g. 7e9 or 7B")
    what.add_argument("--active-params", help="a mixture of experts: parameters active per token, e.g. 12.9B")
    what.add_argument("--tokens", help="training tokens D, e.g. 2T (default with --params: 20·N, Chinchilla-optimal)")
    what.add_argument("--from-run", metavar="RUN_DIR", help="scale a measured run: its tokens/s and parameter count")
    what.add_argument("--layers", type=int, help="n_layer (for the attention FLOPs and activation memory)")
    what.add_argument("--d-model", type=int, help="model width d")
    what.add_argument("--heads", type=int, help="attention heads")
    what.add_argument("--context", type=int, help="sequence length T")
    what.add_argument("--vocab", type=int, default=0, help="vocabulary size (the logits' memory)")
    what.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per forward pass (activation memory)")
    hw = p.add_argument_group("hardware and assumptions (sources in docs/cost.md)")
    hw.add_argument("--gpu", default=DEFAULT_GPU, help=f"preset: {', '.join(PRESETS)} (default {DEFAULT_GPU})")
    hw.add_argument("--gpus", type=int, help="number of GPUs K (default: the minimum that holds the run, or --days)")
    hw.add_argument("--days", type=float, help="pick K to finish in this many days (bands default 90)")
    hw.add_argument("--mfu", type=float, help=f"model FLOPs utilisation, 0–1 (default {DEFAULT_MFU})")
    hw.add_argument("--price", type=float, default=DEFAULT_PRICE, help=f"$ per GPU-hour (default {DEFAULT_PRICE})")
    hw.add_argument("--pue", type=float, default=DEFAULT_PUE, help=f"data-centre PUE (default {DEFAULT_PUE})")
    hw.add_argument("--peak-tflops", type=float, help="override the preset's dense BF16 TFLOP/s")
    hw.add_argument("--memory-gb", type=float, help="override the preset's memory (GB)")
    hw.add_argument("--bandwidth-gbs", type=float, help="override the preset's memory bandwidth (GB/s)")
    hw.add_argument("--watts", type=float, help="override the preset's board power (W)")
    hw.add_argument("--host-watts-per-gpu", type=float,
                    help="the node's power beyond the GPU boards, per GPU (W; default: DGX system power / 8 − board, "
                         "575 W for H100; 0 counts the boards only)")
    cl = p.add_argument_group("on a cluster (groundup.cluster: ring all-reduce, Young's checkpoint interval, goodput)")
    cl.add_argument("--interconnect", choices=sorted(cluster.INTERCONNECTS),
                    help="project the step time: compute at --mfu + the exposed communication on this link (needs --params/--model)")
    cl.add_argument("--parallelism", choices=cluster.PARALLELISMS, default="ddp",
                    help="ddp: all-reduce the gradients; fsdp: all-gather the parameters twice, reduce-scatter the gradients")
    cl.add_argument("--overlap", type=float, default=0.0, help="fraction of the communication hidden behind compute, 0–1 (default 0)")
    cl.add_argument("--tokens-per-gpu-step", type=float, default=DEFAULT_TOKENS_PER_GPU_STEP,
                    help=f"tokens each GPU processes per optimizer step (default {DEFAULT_TOKENS_PER_GPU_STEP:,})")
    cl.add_argument("--bus-bandwidth-gbs", type=float, help="override the interconnect's bus bandwidth (GB/s per GPU, each way)")
    cl.add_argument("--latency-us", type=float, help="override the interconnect's per-collective latency (µs)")
    cl.add_argument("--checkpoint-seconds", type=float, help="time to write a checkpoint δ (with --restart-seconds: goodput)")
    cl.add_argument("--restart-seconds", type=float, help="time to restart after a failure R")
    cl.add_argument("--failures-per-gpu-hour", type=float, default=cluster.LLAMA3_FAILURES_PER_GPU_HOUR,
                    help="failure rate per GPU (default: Llama 3's 419 / (16,384 GPUs · 54 days))")
    p.add_argument("--validate", action="store_true",
                   help="the FLOP model against published runs with measured GPU-hours: the MFU each implies")
    p.add_argument("--json", action="store_true", help="print every figure as JSON, at full precision, instead of text")


def figures(args) -> tuple[dict, str]:
    """The figures the arguments ask for and their text: one library call for the CLI and tests."""
    if getattr(args, "validate", False):
        v = validation()
        return v, format_validation(v)
    hardware = hardware_with(args.gpu, args.peak_tflops, args.memory_gb, args.bandwidth_gbs, args.watts,
                             getattr(args, "host_watts_per_gpu", None))
    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    check_positive(mfu=mfu, price=args.price, pue=args.pue)
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
    if args.from_run:
        n = parse_amount(args.params, "--params") if args.params else None
        d = parse_amount(args.tokens, "--tokens") if args.tokens else None
        r = project_from_run(args.from_run, n, d, hardware, args.gpus or 1, args.mfu, args.price, args.pue)
        return r, format_from_run(r)
    if args.model or args.params:
        return _estimate_from_args(args, hardware, mfu)
    if args.tokens:
        raise ConfigError("--tokens needs --params (or --model)")
    o = overview(hardware, mfu, args.price, args.pue, args.days or 90.0)
    return o, format_overview(o)


def _estimate_from_args(args, hardware: Hardware, mfu: float) -> tuple[dict, str]:
    header, notes = [], []
    active = parse_amount(args.active_params, "--active-params") if getattr(args, "active_params", None) else None
    if args.model:
        r = REFERENCES.get(args.model) or MOE_PRESETS[args.model]
        n = parse_amount(args.params, "--params") if args.params else r.n_params
        if isinstance(r, MoEPreset) and active is None and not args.params:
            active = r.n_active
        d = parse_amount(args.tokens, "--tokens") if args.tokens else r.n_tokens
        if d is None:  # not published: assume 20 tokens per active parameter
            d = 20 * (active or n)
            notes.append(f"{r.name}'s training tokens are not published: D = 20·N_active assumed; give --tokens")
        arch = dict(n_layer=args.layers or r.n_layer, d_model=args.d_model or r.d_model, n_head=args.heads or r.n_head,
                    seq_len=args.context or r.seq_len, vocab=args.vocab or r.vocab)
        header = [f"{r.name}: {r.source}"]
        if isinstance(r, MoEPreset):
            header.append(f"  {r.n_experts} experts, {r.experts_per_token} per token: {human(r.n_params)} parameters, "
                          f"{human(r.n_active)} active (shared + {r.experts_per_token}/{r.n_experts} of the experts)")
            if r.published_flops:
                header.append(f"  reported training FLOPs {human_flops(r.published_flops)} (6·N_active·D here)")
    else:
        n = parse_amount(args.params, "--params")
        d = parse_amount(args.tokens, "--tokens") if args.tokens else 20 * (active or n)
        arch = dict(n_layer=args.layers, d_model=args.d_model, n_head=args.heads, seq_len=args.context, vocab=args.vocab)
    f = estimate_figures(estimate(n, d, hardware, args.gpus, mfu, args.price, args.pue, micro_batch=args.micro_batch,
                                  days=args.days, n_active=active, **arch))
    f["notes"] = notes + f["notes"]
    cluster_lines = []
    if getattr(args, "interconnect", None):
        link = cluster.INTERCONNECTS[args.interconnect]
        if args.bus_bandwidth_gbs is not None:
            check_positive(bus_bandwidth_gbs=args.bus_bandwidth_gbs)
            link = replace(link, name=link.name + " (overridden)", bus_bandwidth=args.bus_bandwidth_gbs * 1e9)
        if args.latency_us is not None:
            if not 0 <= args.latency_us < float("inf"):
                raise ConfigError(f"--latency-us must be a number ≥ 0, got {args.latency_us!r}")
            link = replace(link, latency=args.latency_us * 1e-6)
        flops_per_token = (f["flops_with_attention"] or f["flops_6ND"]) / d
        f["cluster"] = cluster_figures(n, flops_per_token, hardware, f["gpus"], mfu, link, args.parallelism, args.overlap,
                                       args.tokens_per_gpu_step, args.checkpoint_seconds, args.restart_seconds,
                                       args.failures_per_gpu_hour)
        u = f["cluster"]["useful_fraction"]
        f["cluster"].update(gpu_hours=f["gpu_hours"] / u, days=f["days"] / u, dollars=f["dollars"] / u)
        cluster_lines = format_cluster(f["cluster"], f["gpu_hours"], f["days"], f["dollars"])
    elif getattr(args, "checkpoint_seconds", None) is not None or getattr(args, "restart_seconds", None) is not None:
        raise ConfigError("--checkpoint-seconds and --restart-seconds need --interconnect (the cluster projection)")
    if args.model:
        f["model"] = {"key": args.model, "name": r.name, "source": r.source}
        if isinstance(r, MoEPreset):
            f["model"].update(n_experts=r.n_experts, experts_per_token=r.experts_per_token, expert_params=r.expert_params,
                              shared_params=r.shared_params, published_flops=r.published_flops)
    return f, "\n".join(header + [format_estimate(f)] + cluster_lines)


def run(args) -> int:
    data, text = figures(args)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0
