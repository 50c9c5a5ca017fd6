"""The cost calculator: what training (and running) a model takes in FLOPs, memory, GPUs, days,
dollars and energy.

    groundup cost                                   # reference models + the 1e24/1e25/1e26 bands
    groundup cost --params 7B --tokens 2T --gpu H100 --gpus 256
    groundup cost --model llama3-405b --gpus 16384
    groundup cost --from-run runs/shakespeare_char  # scale a measured run up
    groundup train --plan --config configs/shakespeare_bpe.toml   # will it fit, how long?

The arithmetic, one line each:

    training FLOPs      C = 6·N·D           (2 per parameter per token forward, 4 backward)
      with attention    C = (6·N + 12·n_layer·T·d)·D      (QKᵀ and A·V: PaLM appendix B; causal mask ignored)
    inference FLOPs     2·N (+ 4·n_layer·T·d) per generated token at context T
    model state         16 bytes/parameter: bf16 weights 2 + bf16 gradients 2 + fp32 master weights,
                        Adam m and v 12 (Rajbhandari et al. 2019, ZeRO §3.1; fp32 training: 4+4+8, also 16)
    activations         per layer s·b·h·(34 + 5·a·s/h) bytes in 16-bit (Korthikanti et al. 2022, eq. 2);
                        a fused/flash attention keeps no s×s matrix (drops the 5·a·s/h term);
                        activation checkpointing keeps only each layer's input, 2·s·b·h bytes
    GPU-hours           C / (peak FLOP/s × MFU) / 3600
    days on K GPUs      GPU-hours / K / 24
    dollars             GPU-hours × $/GPU-hour
    energy              GPU-hours × board watts × PUE / 1000   (kWh)

Every assumption (MFU, price, PUE, the hardware figures) is a flag; the defaults and their sources
are in docs/cost.md.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from groundup.errors import ConfigError, GroundupError
from groundup.hardware import PRESETS, Hardware

# ---- assumptions (every one a flag) ----------------------------------------------------------
DEFAULT_MFU = 0.40  # Llama 3 405B reached 38–43% BF16 MFU on 8–16K H100s (Dubey et al. 2024, Table 4)
DEFAULT_PRICE = 2.50  # $/GPU-hour for an H100: an assumption (cloud rental); set --price
DEFAULT_PUE = 1.2  # data-centre power usage effectiveness: an assumption; set --pue
DEFAULT_GPU = "H100"
STATE_BYTES_PER_PARAM = 16  # weights + gradients + AdamW state (ZeRO's 2 + 2 + 12)
USABLE_MEMORY = 0.9  # leave 10% of device memory for the framework, fragmentation, buffers


# ---- FLOPs -----------------------------------------------------------------------------------
def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6·N·D (Kaplan et al. 2020, §2.1)."""
    return 6.0 * n_params * n_tokens


def attention_flops_per_token(n_layer: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token that 6·N leaves out: QKᵀ and attention·V, each 2·T·d per token per
    layer forward, ×3 for forward + backward = 12·n_layer·T·d (no discount for the causal mask)."""
    return 12.0 * n_layer * seq_len * d_model


def training_flops_per_token(n_params: float, n_layer: int | None = None, d_model: int | None = None,
                             seq_len: int | None = None) -> float:
    """6·N, plus the attention term when the architecture is known."""
    extra = attention_flops_per_token(n_layer, d_model, seq_len) if n_layer and d_model and seq_len else 0.0
    return 6.0 * n_params + extra


def inference_flops_per_token(n_params: float, n_layer: int | None = None, d_model: int | None = None,
                              context: int | None = None) -> float:
    """Forward only: 2·N, plus 4·n_layer·T·d to attend over a context of T cached keys and values."""
    extra = 4.0 * n_layer * context * d_model if n_layer and d_model and context else 0.0
    return 2.0 * n_params + extra


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


def activation_bytes(n_layer: int, d_model: int, n_head: int, seq_len: int, batch: int, vocab: int = 0,
                     fused_attention: bool = True, checkpointing: bool = False, bytes_per_value: int = 2) -> float:
    """Activations stored for the backward pass (Korthikanti et al. 2022, eq. 1–2, no parallelism):

        per layer:  s·b·h·(34 + 5·a·s/h)  bytes in 16-bit   (s context, b batch, h width, a heads)

    `fused_attention`: SDPA / FlashAttention recomputes the s×s scores, dropping 5·a·s²·b.
    `checkpointing`: keep only every layer's input (2·s·b·h) and recompute one layer at a time.
    `bytes_per_value` 4 (fp32 training) doubles everything. The LM head's logits add s·b·V values
    (kept in fp32 for the loss: 4 bytes each)."""
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
                    mixed_precision: bool = True) -> TrainingMemory:
    """Model state plus activations for one micro-batch of `batch` sequences.

    mixed precision (bf16 compute, ZeRO §3.1): weights 2, gradients 2, fp32 master + Adam m + v 12
    fp32 (our CPU trainer):                    weights 4, gradients 4, Adam m + v 8
    Both are 16 bytes per parameter."""
    if mixed_precision:
        weights, grads, opt, act = 2, 2, 12, 2
    else:
        weights, grads, opt, act = 4, 4, 8, 4
    return TrainingMemory(weights * n_params, grads * n_params, opt * n_params,
                          activation_bytes(n_layer, d_model, n_head, seq_len, batch, vocab, fused_attention, checkpointing, act))


def min_gpus(memory: TrainingMemory, gpu_memory_bytes: float, usable: float = USABLE_MEMORY) -> int | None:
    """The fewest GPUs that hold the run with model state fully sharded (ZeRO-3 / FSDP) and one
    micro-batch of activations per GPU: the smallest K with state/K + activations ≤ usable·memory.
    None when the activations alone don't fit (use checkpointing or a smaller micro-batch)."""
    room = usable * gpu_memory_bytes - memory.activations
    if room <= 0:
        return None
    return max(1, math.ceil(memory.state / room))


# ---- time, money, energy ---------------------------------------------------------------------
@dataclass
class Projection:
    flops: float
    gpu: str
    n_gpus: int
    mfu: float
    gpu_hours: float
    days: float
    dollars: float
    kwh: float
    price: float
    pue: float


def project(flops: float, hardware: Hardware, n_gpus: int, mfu: float = DEFAULT_MFU,
            price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE) -> Projection:
    """GPU-hours = C / (peak·MFU) / 3600; days = GPU-hours / K / 24; $ = GPU-hours·price;
    kWh = GPU-hours·watts·PUE / 1000 (GPUs at board power the whole time; CPUs, network and
    storage are not counted beyond what PUE adds)."""
    _check_positive(mfu=mfu, n_gpus=n_gpus, price=price, pue=pue)
    if mfu > 1:
        raise ConfigError(f"MFU is a fraction of peak, between 0 and 1; got {mfu}")
    gpu_hours = flops / (hardware.peak_flops * mfu) / 3600.0
    return Projection(flops, hardware.name, n_gpus, mfu, gpu_hours, gpu_hours / n_gpus / 24.0, gpu_hours * price,
                      gpu_hours * hardware.watts * pue / 1000.0, price, pue)


def gpus_for_days(flops: float, hardware: Hardware, days: float, mfu: float = DEFAULT_MFU) -> int:
    """The GPU count that finishes `flops` in `days` at this MFU."""
    return math.ceil(flops / (hardware.peak_flops * mfu) / 3600.0 / (days * 24.0))


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name.replace('_', ' ')} must be a positive number, got {value!r}")


def hardware_with(name: str = DEFAULT_GPU, peak_tflops: float | None = None, memory_gb: float | None = None,
                  bandwidth_gbs: float | None = None, watts: float | None = None) -> Hardware:
    """A preset from groundup.hardware, with any figure overridden."""
    key = name.upper()
    if key not in PRESETS:
        raise ConfigError(f"unknown GPU {name!r}; presets: {', '.join(PRESETS)} (override any figure with "
                          "--peak-tflops, --memory-gb, --bandwidth-gbs, --watts)")
    hw = PRESETS[key]
    changes = {}
    for flag, attr, unit, value in [("peak-tflops", "peak_flops", 1e12, peak_tflops), ("memory-gb", "memory_bytes", 1e9, memory_gb),
                                    ("bandwidth-gbs", "bandwidth", 1e9, bandwidth_gbs), ("watts", "watts", 1.0, watts)]:
        if value is not None:
            _check_positive(**{flag.replace("-", "_"): value})
            changes[attr] = value * unit
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
            row["published_gpu_hours"] = r.published_gpu_hours
            row["gpu"] = r.gpu
            row["implied_mfu"] = (r.published_flops or simple) / (r.published_gpu_hours * 3600 * hw.peak_flops)
            row["calculator_gpu_hours"] = project(r.published_flops or simple, hw, 1, mfu).gpu_hours
        rows.append(row)
    return rows


# ---- the 1e24 / 1e25 / 1e26 bands --------------------------------------------------------------
BANDS = (1e24, 1e25, 1e26)


def cost_bands(hardware: Hardware, mfu: float = DEFAULT_MFU, price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE,
               days: float = 90.0, tokens_per_param: float = 20.0) -> list[dict]:
    """For each band: the Chinchilla-optimal size (D = 20·N, so N = √(C/120)), the GPUs that finish
    it in `days`, and GPU-hours, dollars and MWh."""
    rows = []
    for flops in BANDS:
        n = math.sqrt(flops / (6 * tokens_per_param))
        gpus = gpus_for_days(flops, hardware, days, mfu)
        p = project(flops, hardware, gpus, mfu, price, pue)
        rows.append({"flops": flops, "N": n, "D": tokens_per_param * n, "gpus": gpus, "days": p.days,
                     "gpu_hours": p.gpu_hours, "dollars": p.dollars, "mwh": p.kwh / 1000})
    return rows


# ---- human-friendly numbers ---------------------------------------------------------------------
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_amount(text: str | float, what: str = "value") -> float:
    """'70B', '1.4T', '350M', '3e23', 1e9 → a float."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgtp]?)\s*", str(text), re.IGNORECASE)
        if not m:
            raise ConfigError(f"{what}: expected a number such as 7e9, 70B, 1.4T or 350M; got {text!r}")
        value = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return value


def human(x: float, unit: str = "") -> str:
    """1.23e9 → '1.23 B' style, for counts of parameters and tokens."""
    for scale, name in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{name}{unit}"
    return f"{x:.3g}{unit}"


def human_bytes(x: float) -> str:
    for scale, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {name}"
    return f"{x:.0f} B"


def human_money(dollars: float) -> str:
    if dollars >= 100:
        return f"${dollars:,.0f}"
    return f"${dollars:.2f}" if dollars >= 0.01 else f"${dollars:.2g}"


def human_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


# ---- one model, the whole story ---------------------------------------------------------------
@dataclass
class Estimate:
    n_params: float
    n_tokens: float
    flops: float
    flops_with_attention: float | None
    inference_flops_per_token: float
    memory: TrainingMemory | None
    memory_checkpointed: TrainingMemory | None
    min_gpus: int | None
    min_gpus_checkpointed: int | None
    projection: Projection
    decode_tokens_per_s: float  # batch-1 generation bound by reading the bf16 weights once per token
    hardware: Hardware
    notes: list[str] = field(default_factory=list)


def estimate(n_params: float, n_tokens: float, hardware: Hardware, n_gpus: int | None = None, mfu: float = DEFAULT_MFU,
             price: float = DEFAULT_PRICE, pue: float = DEFAULT_PUE, n_layer: int | None = None, d_model: int | None = None,
             n_head: int | None = None, seq_len: int | None = None, vocab: int = 0, micro_batch: int = 1,
             days: float | None = None) -> Estimate:
    """Everything `groundup cost` prints for one (N, D) on one kind of GPU."""
    _check_positive(params=n_params, tokens=n_tokens)
    flops = training_flops(n_params, n_tokens)
    arch = bool(n_layer and d_model and n_head and seq_len)
    with_attention = training_flops_per_token(n_params, n_layer, d_model, seq_len) * n_tokens if arch else None
    memory = memory_ckpt = None
    need = need_ckpt = None
    notes = []
    if arch:
        memory = training_memory(n_params, n_layer, d_model, n_head, seq_len, micro_batch, vocab)
        memory_ckpt = training_memory(n_params, n_layer, d_model, n_head, seq_len, micro_batch, vocab, checkpointing=True)
        need, need_ckpt = min_gpus(memory, hardware.memory_bytes), min_gpus(memory_ckpt, hardware.memory_bytes)
    else:
        notes.append("give --layers, --d-model, --heads and --context for the attention FLOPs and the activation memory")
    if n_gpus is None:
        n_gpus = gpus_for_days(with_attention or flops, hardware, days, mfu) if days else (need_ckpt or need or 1)
    projection = project(with_attention or flops, hardware, n_gpus, mfu, price, pue)
    if need_ckpt and n_gpus < need_ckpt:
        notes.append(f"{n_gpus} GPUs can't hold this run: it needs at least {need_ckpt} even with activation checkpointing")
    decode = hardware.bandwidth / (2.0 * n_params)
    return Estimate(n_params, n_tokens, flops, with_attention,
                    inference_flops_per_token(n_params, n_layer, d_model, seq_len), memory, memory_ckpt,
                    need, need_ckpt, projection, decode, hardware, notes)


def format_estimate(e: Estimate) -> str:
    p = e.projection
    hw = e.hardware
    lines = [f"model: {human(e.n_params)} parameters, trained on {human(e.n_tokens)} tokens ({e.n_tokens / e.n_params:.1f} tokens/parameter)",
             f"training FLOPs: 6·N·D = {e.flops:.3g}"
             + (f"; with attention (6·N + 12·L·T·d per token) = {e.flops_with_attention:.3g}" if e.flops_with_attention else ""),
             f"inference: {e.inference_flops_per_token:.3g} FLOPs per generated token; batch-1 decoding reads every weight "
             f"(2 bytes each) per token: ≤ {e.decode_tokens_per_s:,.1f} tokens/s on one {hw.name} ({hw.bandwidth / 1e9:,.0f} GB/s)"]
    if e.memory:
        m, mc = e.memory, e.memory_checkpointed
        lines.append(f"memory: weights {human_bytes(m.weights)} + gradients {human_bytes(m.gradients)} + optimizer "
                     f"{human_bytes(m.optimizer)} = {human_bytes(m.state)} of state (16 bytes/parameter); activations "
                     f"{human_bytes(m.activations)} per micro-batch ({human_bytes(mc.activations)} with activation checkpointing)")
        fits = lambda k: f"{k:,}" if k else "none (activations alone exceed one GPU)"
        lines.append(f"minimum {hw.name} GPUs ({hw.memory_bytes / 1e9:.0f} GB, state sharded): {fits(e.min_gpus)} "
                     f"({fits(e.min_gpus_checkpointed)} with checkpointing)")
    lines += [f"time: {p.gpu_hours:,.0f} GPU-hours at {p.mfu:.0%} MFU of {hw.peak_flops / 1e12:,.0f} TFLOP/s → "
              f"{p.days:,.1f} days on {p.n_gpus:,} GPUs",
              f"cost: {human_money(p.dollars)} at ${p.price:.2f}/GPU-hour; energy {p.kwh / 1000:,.1f} MWh "
              f"({hw.watts:.0f} W per GPU × PUE {p.pue})"]
    lines += [f"note: {n}" for n in e.notes]
    return "\n".join(lines)


# ---- a measured run, scaled up ---------------------------------------------------------------
def measured_speed(run_dir: str | os.PathLike) -> dict:
    """A run's parameter count, FLOPs per token and measured tokens/s (median of its logged
    intervals, the first one — warm-up — left out), from its run directory."""
    import statistics

    import torch

    from groundup.model import GPT
    from groundup.train import checkpoint as ckpt
    from groundup.util.metrics import read_metrics

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
                       dollars=p.dollars, kwh=p.kwh)
        rows.append(row)
    return {"run": str(run_dir), "measured": {k: v for k, v in m.items() if k != "config"}, "achieved_flops": achieved,
            "rows": rows}


# ---- pre-flight for `groundup train --plan` ----------------------------------------------------
def device_memory_bytes(device) -> tuple[float, str]:
    """Memory a run on `device` can use: the GPU's total, or the RAM the OS reports available."""
    import torch

    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory), f"{torch.cuda.get_device_name(device)} memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "total RAM"
    except (ValueError, OSError, AttributeError):
        return math.inf, "RAM (unknown size)"


def _plan_vocab(config) -> tuple[int, str]:
    """The vocabulary size without training anything new (a BPE vocabulary is at most its target)."""
    if config.model.vocab_size:
        return config.model.vocab_size, "configured"
    d = config.data
    if d.tokenizer == "bpe":
        return d.bpe_vocab_size, "the BPE target size"
    if d.tokenizer == "char":
        from groundup.data import load_corpus

        text = load_corpus(d.corpus, errors=d.errors).text
        return len(set(text)), "distinct characters in the corpus"
    from groundup.tokenizer import load_tokenizer

    return load_tokenizer(d.tokenizer, pattern=d.pattern).vocab_size, "the tokenizer file"


def probe_speed(config, device, steps: int = 5, max_seconds: float = 20.0) -> float:
    """Tokens/s of real training steps (forward, backward, AdamW) on random tokens, after one
    warm-up step; stops early after `max_seconds`."""
    import time

    import torch

    from groundup.engines.torch.kernels import use_kernels
    from groundup.model import GPT
    from groundup.train.optim import configure_adamw
    from groundup.util.device import autocast, autocast_dtype, param_dtype

    t, m = config.train, config.model
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(0)
    model = GPT(m).to(device=device, dtype=param_dtype(t.dtype))
    if t.kernels:
        use_kernels(model)  # as groundup train does
    optimizer = configure_adamw(model, t, device)
    amp = autocast_dtype(device, t.dtype)
    x = torch.randint(0, m.vocab_size, (t.batch_size, m.block_size), device=device)

    def step():
        for _ in range(t.grad_accum_steps):
            with autocast(device, amp):
                _, loss = model(x, x)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: allocations, kernel selection
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.perf_counter() - start < max_seconds):
        step()
        done += 1
    return done * t.batch_size * m.block_size * t.grad_accum_steps / (time.perf_counter() - start)


def plan_training(config, probe: bool = True, out=None) -> dict:
    """`groundup train --plan`: before training, will it fit in this device's memory, how many
    FLOPs, how long (measured by a few real steps when it fits), what it would cost on a GPU."""
    import torch

    from groundup.hardware import preset_for_device_name
    from groundup.model import GPT
    from groundup.util.device import pick_device

    out = out or sys.stdout
    t = config.train
    vocab, vocab_source = _plan_vocab(config)
    config = config.replace(vocab_size=vocab)
    m = config.model
    with torch.device("meta"):
        model = GPT(m)
    n, n_ne = model.num_params(), model.num_params(non_embedding=True)
    tokens_per_step = t.batch_size * m.block_size * t.grad_accum_steps
    tokens = t.max_steps * tokens_per_step
    flops_per_token = model.flops_per_token()
    device = pick_device(t.device)
    mixed = device.type == "cuda" and t.dtype in ("auto", "bfloat16", "float16")
    # The trainer keeps fp32 weights even under autocast: 4 + 4 + 8 bytes/parameter; activations
    # are 16-bit under autocast, fp32 otherwise.
    memory = TrainingMemory(4 * n, 4 * n, 8 * n, activation_bytes(m.n_layer, m.n_embd, m.n_head, m.block_size, t.batch_size,
                                                                  vocab, fused_attention=m.attention == "sdpa",
                                                                  bytes_per_value=2 if mixed else 4))
    available, what = device_memory_bytes(device)
    fits = memory.total <= USABLE_MEMORY * available
    result = {"N": n, "N_non_embedding": n_ne, "vocab_size": vocab, "tokens": tokens, "flops_6ND": training_flops(n_ne, tokens),
              "flops": flops_per_token * tokens, "memory": memory.total, "device": str(device), "device_memory": available,
              "fits": fits, "tokens_per_s": None, "seconds": None}
    print(f"plan: {m.n_layer} layers × {m.n_embd} wide, {m.n_head} heads, context {m.block_size}, vocab {vocab:,} ({vocab_source}) "
          f"→ {n / 1e6:.2f}M parameters ({n_ne / 1e6:.2f}M non-embedding)", file=out)
    print(f"tokens: {t.max_steps:,} steps × {tokens_per_step:,} tokens = {tokens:,}; FLOPs: {result['flops']:.3g} "
          f"({flops_per_token:,.0f} per token = 6·N + 12·L·T·d, N counting the LM head)", file=out)
    print(f"memory: weights {human_bytes(memory.weights)} + gradients {human_bytes(memory.gradients)} + AdamW "
          f"{human_bytes(memory.optimizer)} + activations {human_bytes(memory.activations)} (batch {t.batch_size} × {m.block_size}) "
          f"≈ {human_bytes(memory.total)}; {device}: {human_bytes(available)} {what} → "
          + ("fits" if fits else "DOES NOT FIT (smaller batch_size/block_size, or a bigger device)"), file=out)
    if t.engine != "torch":
        print("speed: the probe measures the torch engine only; run a few steps of this engine to time it", file=out)
    elif fits and probe:
        speed = probe_speed(config, device)
        result["tokens_per_s"], result["seconds"] = speed, tokens / speed
        print(f"speed: measured {speed:,.0f} tokens/s over a few real training steps on {device} → about "
              f"{human_time(tokens / speed)} for {t.max_steps:,} steps (plus evaluation every {t.eval_interval} steps)", file=out)
    hw = preset_for_device_name(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    hw = hw or PRESETS[DEFAULT_GPU]
    p = project(result["flops"], hw, 1, DEFAULT_MFU, DEFAULT_PRICE, DEFAULT_PUE)
    print(f"on one {hw.name} at {DEFAULT_MFU:.0%} MFU it would take {human_time(p.gpu_hours * 3600)} and cost "
          f"{human_money(p.dollars)} at ${DEFAULT_PRICE:.2f}/GPU-hour (small models reach far lower MFU in practice)", file=out)
    result["gpu_projection"] = {"gpu": hw.name, "hours": p.gpu_hours, "dollars": p.dollars}
    return result


# ---- CLI ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    what = p.add_argument_group("what to cost (default: the reference models and the 1e24/1e25/1e26 bands)")
    what.add_argument("--model", choices=sorted(REFERENCES), help="a reference model's N, D and architecture")
    what.add_argument("--params", help="parameters N, e.g. 7e9 or 7B")
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


def run(args) -> int:
    hardware = hardware_with(args.gpu, args.peak_tflops, args.memory_gb, args.bandwidth_gbs, args.watts)
    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    _check_positive(mfu=mfu, price=args.price, pue=args.pue)
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
    if args.from_run:
        return _print_from_run(args, hardware)
    if args.model or args.params:
        return _print_estimate(args, hardware, mfu)
    if args.tokens:
        raise ConfigError("--tokens needs --params (or --model)")
    _print_references(mfu)
    print()
    _print_bands(hardware, mfu, args.price, args.pue, args.days or 90.0)
    return 0


def _print_estimate(args, hardware: Hardware, mfu: float) -> int:
    if args.model:
        r = REFERENCES[args.model]
        n = parse_amount(args.params, "--params") if args.params else r.n_params
        d = parse_amount(args.tokens, "--tokens") if args.tokens else r.n_tokens
        arch = dict(n_layer=args.layers or r.n_layer, d_model=args.d_model or r.d_model, n_head=args.heads or r.n_head,
                    seq_len=args.context or r.seq_len, vocab=args.vocab or r.vocab)
        print(f"{r.name}: {r.source}")
    else:
        n = parse_amount(args.params, "--params")
        d = parse_amount(args.tokens, "--tokens") if args.tokens else 20 * n
        arch = dict(n_layer=args.layers, d_model=args.d_model, n_head=args.heads, seq_len=args.context, vocab=args.vocab)
    e = estimate(n, d, hardware, args.gpus, mfu, args.price, args.pue, micro_batch=args.micro_batch, days=args.days, **arch)
    print(format_estimate(e))
    return 0


def _print_references(mfu: float) -> None:
    print("reference models: the calculator's training FLOPs against the published figures")
    for r in reference_table(mfu):
        published = f"{r['published_flops']:.3g}" if r["published_flops"] else "not published"
        line = (f"  {r['name']:<15} N {human(r['N']):>6}  D {human(r['D']):>6}  6ND {r['flops_6ND']:.3g}  "
                f"with attention {r['flops_with_attention']:.3g}  published {published}")
        if "error_6ND" in r:
            line += f" ({r['error_6ND']:+.1%} / {r['error_with_attention']:+.1%})"
        print(line)
        if "implied_mfu" in r:
            print(f"  {'':<15} published {r['published_gpu_hours']:,.0f} {r['gpu']} GPU-hours → implied MFU {r['implied_mfu']:.0%}; "
                  f"the calculator at {mfu:.0%} MFU says {r['calculator_gpu_hours']:,.0f}")


def _print_bands(hardware: Hardware, mfu: float, price: float, pue: float, days: float) -> None:
    print(f"the commonly quoted bands, on {hardware.name} at {mfu:.0%} MFU, ${price:.2f}/GPU-hour, "
          f"{hardware.watts:.0f} W × PUE {pue}, finishing in {days:g} days; model sized Chinchilla-optimally (D = 20·N):")
    print(f"  {'FLOPs':>7} {'N':>7} {'D':>7} {'GPUs':>8} {'days':>6} {'GPU-hours':>12} {'dollars':>15} {'MWh':>9}")
    for b in cost_bands(hardware, mfu, price, pue, days):
        print(f"  {b['flops']:>7.0e} {human(b['N']):>7} {human(b['D']):>7} {b['gpus']:>8,} {b['days']:>6.1f} "
              f"{b['gpu_hours']:>12,.0f} {'$' + format(b['dollars'], ',.0f'):>15} {b['mwh']:>9,.0f}")


def _print_from_run(args, hardware: Hardware) -> int:
    n = parse_amount(args.params, "--params") if args.params else None
    d = parse_amount(args.tokens, "--tokens") if args.tokens else None
    r = project_from_run(args.from_run, n, d, hardware, args.gpus or 1, args.mfu, args.price, args.pue)
    meas = r["measured"]
    print(f"{r['run']}: {human(meas['N'])} parameters, measured {meas['tokens_per_s']:,.0f} tokens/s "
          f"= {r['achieved_flops'] / 1e9:,.2f} GFLOP/s achieved" + (f" (MFU {meas['mfu']:.1%})" if meas["mfu"] else ""))
    for row in r["rows"]:
        line = (f"  {row['label']:<16} N {human(row['N']):>7}  D {human(row['D']):>7}  {row['flops']:.3g} FLOPs  "
                f"here: {human_time(row['seconds_here'])}")
        if "gpu_hours" in row:
            line += (f"  | {row['n_gpus']:,}× {row['gpu']} at {row['mfu']:.0%} MFU: {human_time(row['days'] * 86400)}, "
                     f"{human_money(row['dollars'])}, {row['kwh']:.3g} kWh")
        print(line)
    print("  (same device: assumes the measured FLOP/s holds at the larger size; bigger matmuls usually run faster)")
    return 0
