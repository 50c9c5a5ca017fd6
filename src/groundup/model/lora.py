"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen weight matrix W (d_out × d_in) gets a trainable update of rank r:

    h = W x + b + (α/r) · B A x          A: (r × d_in),  B: (d_out × r),  r ≪ min(d_in, d_out)

A starts like an nn.Linear weight (Kaiming-uniform with a = √5, as in the paper's loralib and in
peft) and B at zero, so before any training the adapted model computes exactly what the base
model computes. Only A and B train: r·(d_in + d_out) numbers per matrix instead of d_in·d_out.
The scale α/r keeps the size of the update roughly independent of the rank chosen.

    merge()     W ← W + (α/r)·B·A   one matrix again: inference costs what the base model costs
    unmerge()   W ← the original W, bit for bit (the original is kept while merged; subtracting
                (α/r)·B·A again, as peft does, restores W only up to floating-point rounding)

Adapters are saved on their own, small: adapter.safetensors (every lora_A / lora_B) and
adapter_config.json (r, α, which matrices, and a fingerprint of the base weights they belong to).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from groundup.errors import CheckpointError, ConfigError
from groundup.model.weights import check_weights
from groundup.util.files import atomic_write_bytes, atomic_write_json

# The attention and feed-forward projections of every block (GPT weight names end in these).
DEFAULT_TARGETS = ("attention.qkv", "attention.output", "ffn.up", "ffn.down")
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = 1


class LoRALinear(nn.Module):
    """An nn.Linear with its weight and bias frozen and a trainable low-rank update (α/r)·B·A.

    The module keeps the Linear's parameter names (`weight`, `bias`), so a GPT with adapters still
    names its base tensors exactly as before; the adapter adds `lora_A` and `lora_B`."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ConfigError(f"LoRA rank r must be a positive integer, got {r!r}")
        if not alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # W: (d_out, d_in), the same Parameter object, frozen
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))  # A: (r, d_in)
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))  # B: (d_out, r)
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        self._original_weight: torch.Tensor | None = None  # W while merged, for an exact unmerge
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=√5) (nn.Linear's default: U(−1/√d_in, 1/√d_in)); B = 0, so ΔW = 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r)·B·A: (d_out, d_in), the update this adapter adds to W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # W x + b
        if self.merged:
            return out  # W already holds W + ΔW
        # (α/r) · B (A x): two thin matmuls, never the full d_out × d_in update
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (α/r)·B·A. Forward then costs one matmul, as the base model's does."""
        if self.merged:
            return
        self._original_weight = self.weight.detach().clone()
        self.weight.add_(self.delta_weight().to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original W exactly (not W + ΔW − ΔW, which rounding makes differ)."""
        if not self.merged:
            return
        self.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, merged={self.merged}")


def _matches(module_name: str, targets) -> bool:
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, targets=DEFAULT_TARGETS,
             dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of `model` and wrap each nn.Linear whose name ends in one of `targets`
    in a LoRALinear. Afterwards only the adapters' A and B require gradients. Returns the names
    of the adapted modules."""
    targets = tuple(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and _matches(name, targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r, alpha, dropout))
            adapted.append(name)
    if not adapted:
        raise ConfigError(f"no nn.Linear in the model matches the LoRA targets {list(targets)}; "
                          f"GPT's projections are {list(DEFAULT_TARGETS)}")
    return adapted


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter matrix by name: '<module>.lora_A' (r, d_in) and '<module>.lora_B' (d_out, r)."""
    tensors = {}
    for name, m in lora_modules(model).items():
        tensors[f"{name}.lora_A"] = m.lora_A
        tensors[f"{name}.lora_B"] = m.lora_B
    return tensors


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of the model's base (non-adapter) tensors, as if unmerged."""
    originals = {f"{name}.weight": m._original_weight for name, m in lora_modules(model).items() if m.merged}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith((".lora_A", ".lora_B")):
            continue
        tensor = originals.get(name, tensor)
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_adapters(model: nn.Module, directory: str | os.PathLike, **info) -> Path:
    """Write adapter.safetensors + adapter_config.json into `directory` (each atomically)."""
    modules = lora_modules(model)
    if not modules:
        raise ConfigError("the model has no LoRA adapters to save; call add_lora(model, ...) first")
    first = next(iter(modules.values()))
    directory = Path(directory)
    data = st_save({k: v.detach().contiguous().cpu() for k, v in adapter_tensors(model).items()},
                   metadata={"format": "pt"})
    atomic_write_bytes(directory / ADAPTER_WEIGHTS, data)
    config = {"format": ADAPTER_FORMAT, "r": first.r, "alpha": first.alpha, "dropout": first.lora_dropout.p,
              "modules": list(modules), "base_sha256": base_fingerprint(model),
              "adapter_sha256": hashlib.sha256(data).hexdigest(), **info}
    atomic_write_json(directory / ADAPTER_CONFIG, config)
    return directory


def load_adapters(model: nn.Module, directory: str | os.PathLike, check_base: bool = True) -> dict:
    """Add the saved adapters to `model` (which must be the base they were trained on) and load
    their weights. Returns the adapter config."""
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.exists():
            raise CheckpointError(f"{path} is missing; save adapters with groundup.model.lora.save_adapters")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config_path} is corrupt (not valid JSON)") from None
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{config_path} is not a groundup adapter config (format {ADAPTER_FORMAT})")
    data = weights_path.read_bytes()
    if config.get("adapter_sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise CheckpointError(f"{weights_path} is corrupt or truncated (checksum mismatch)")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{weights_path} cannot be read as safetensors ({e})") from None
    if not lora_modules(model):
        names = config.get("modules") or []
        add_lora(model, int(config["r"]), float(config["alpha"]), targets=names, dropout=float(config.get("dropout", 0.0)))
    if check_base and config.get("base_sha256") and config["base_sha256"] != base_fingerprint(model):
        raise CheckpointError(f"the adapters in {directory} were trained on different base weights "
                              "(fingerprint mismatch); load them onto the model they were trained from")
    expected = adapter_tensors(model)
    check_weights(tensors, expected, str(weights_path))
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name])
    return config
