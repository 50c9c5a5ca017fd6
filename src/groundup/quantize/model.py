"""Quantizing a GPT: every nn.Linear in its blocks becomes a QuantizedLinear; the rest stays float32.

What is quantized: the attention's W_QKV and W_O and the feed-forward's W₁ and W₂ of every block —
the matrices a decoding step reads (weight-only: activations stay float32).
What stays float32, by choice: the token embedding and the LM head (tied to it in GPT-2: one
matrix used both ways), learned positions, layer norms and biases. The head's errors land directly
in the logits and it is shared with the embedding, so by default it is kept exact; a quantized
run's recipe lists it under "kept_float32". `head=True` (`--quantize-head`) quantizes the head as
its own copy (the embedding lookups keep reading the float32 matrix): at GPT-2 small's vocabulary
the head is 38.6M of 124M weights, and a decoding step reads all of it.

    quantize_model(model, bits=4, group_size=128, method="gptq", calibration=batches) → model
    load_quantized(model, tensors, recipe, source) → model       (a quantized run's weights)
    weight_bytes(model) → bytes of the tensors a checkpoint stores

GPTQ runs block by block, as in the paper's reference code: the calibration sequences' inputs to
block ℓ are computed with blocks < ℓ already quantized, the Hessians H = 2XXᵀ/n of block ℓ's four
linears are gathered in one pass, and each is quantized with error compensation (gptq.py).
"""

from __future__ import annotations

import torch
from torch import nn

from groundup.engines.torch.kernels import without_kernels
from groundup.errors import CheckpointError, ConfigError
from groundup.model.weights import check_names
from groundup.quantize.formats import BITS, GROUP_SIZES, INT4_LEVELS, INT8_MAX, quantize_rtn
from groundup.quantize.gptq import DAMPENING, hessian, quantize_gptq
from groundup.quantize.linear import QuantizedLinear

METHODS = ("rtn", "gptq")
DEFAULT_GROUP_SIZE = 128
HEAD_KEPT = "lm_head (tied to the token embedding)"


def kept_float32(head: bool) -> list[str]:
    """What a recipe leaves in float32."""
    kept = ["token_embedding", "position_embedding (learned positions)", "layer norms", "biases"]
    return kept if head else kept + [HEAD_KEPT]


def quantizable(model: nn.Module, head: bool = False) -> dict[str, nn.Linear]:
    """The linears that get quantized: every nn.Linear inside the model's blocks, by name (and the
    LM head, with `head`)."""
    linears = {f"blocks.{name}": m for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear) and name}
    if head and isinstance(model.lm_head, nn.Linear):
        linears["lm_head"] = model.lm_head
    return linears


def check_settings(model: nn.Module, bits: int, group_size: int | None, method: str, head: bool = False) -> int | None:
    """Validate a recipe against the model; returns the group size to use (None for int8)."""
    if bits not in BITS:
        raise ConfigError(f"--bits must be 8 or 4, got {bits}")
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if bits == 8:
        if group_size is not None:
            raise ConfigError("--group-size applies to --bits 4 only (int8 has one scale per output channel)")
        return None
    group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")
    linears = quantizable(model, head)
    if not linears:
        raise ConfigError("the model has no linear layers in its blocks to quantize")
    for name, m in linears.items():
        if m.in_features % group_size:
            raise ConfigError(f"--group-size {group_size} does not divide the input width {m.in_features} of {name}; "
                              f"choose a group size that divides {m.in_features}")
    return group_size


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group_size: int | None = None, method: str = "rtn",
                   calibration=None, progress=None, head: bool = False) -> nn.Module:
    """Quantize `model` (a groundup GPT) in place and return it. `calibration` (GPTQ only): an
    iterable of token-id batches (B, T), or (x, y) pairs whose x is used. `progress(message)` is
    called once per block. `head`: quantize the LM head too (a copy, if tied)."""
    group_size = check_settings(model, bits, group_size, method, head)
    without_kernels(model)  # a fused attention / feed-forward reads its weights past the Linear hooks GPTQ needs
    model.eval()
    if method == "rtn":
        for name, linear in quantizable(model, head).items():
            _swap(model, name, QuantizedLinear.from_quantized(quantize_rtn(linear.weight, bits, group_size), linear.bias))
    else:
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in (calibration or [])]
        if not batches:
            raise ConfigError("GPTQ needs calibration sequences (--calibration N with N ≥ 1)")
        _gptq(model, bits, group_size, batches, progress or (lambda message: None), head)
    model.quantization = {"bits": bits, "group_size": group_size, "method": method, "head": head}
    return model


class _Stop(Exception):
    pass


def _block_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the first block receives for each batch (embeddings + positions), by the model's own forward."""
    captured = []

    def grab(module, args):
        captured.append(args[0])
        raise _Stop

    hook = model.blocks[0].register_forward_pre_hook(grab)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        hook.remove()
    return captured


def _gptq_linear(model: nn.Module, name: str, linear: nn.Linear, h: torch.Tensor, bits: int, group_size: int | None) -> None:
    q = quantize_gptq(linear.weight.detach().cpu(), h, bits, group_size, DAMPENING)
    _swap(model, name, QuantizedLinear.from_quantized(q, linear.bias).to(linear.weight.device))


def _gptq(model: nn.Module, bits: int, group_size: int | None, batches: list[torch.Tensor], progress, head: bool) -> None:
    hidden = _block_inputs(model, batches)
    for layer, block in enumerate(model.blocks):
        linears = {name: m for name, m in quantizable(model).items() if name.startswith(f"blocks.{layer}.")}
        sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in linears.items()}
        counts = dict.fromkeys(linears, 0)

        def accumulate(name):
            def hook(module, args):
                x = args[0].reshape(-1, args[0].shape[-1]).double().cpu()
                sums[name] += x.T @ x
                counts[name] += x.shape[0]
            return hook

        hooks = [m.register_forward_pre_hook(accumulate(name)) for name, m in linears.items()]
        try:
            for x in hidden:
                block(x, None, layer, 0)
        finally:
            for h in hooks:
                h.remove()
        for name, linear in linears.items():
            _gptq_linear(model, name, linear, 2.0 * sums[name] / counts[name], bits, group_size)  # H = 2 X Xᵀ / n
        hidden = [block(x, None, layer, 0) for x in hidden]  # the next block sees this one quantized
        progress(f"GPTQ: block {layer + 1}/{len(model.blocks)} quantized")
    if head:  # the head's inputs: the final norm of the (quantized) last block's outputs
        x = torch.cat([model.final_norm(h).reshape(-1, h.shape[-1]) for h in hidden])
        _gptq_linear(model, "lm_head", model.lm_head, hessian(x.cpu()), bits, group_size)
        progress("GPTQ: LM head quantized")


# ---- loading ------------------------------------------------------------------------------------
def check_recipe(recipe, source: str) -> tuple[int, int | None, bool]:
    """(bits, group_size, head) from a stored recipe, or CheckpointError."""
    if not isinstance(recipe, dict):
        raise CheckpointError(f"{source}: 'quantization' must be a JSON object describing the recipe")
    bits, group = recipe.get("bits"), recipe.get("group_size")
    if bits not in BITS or (bits == 8 and group is not None) or (bits == 4 and group not in GROUP_SIZES):
        raise CheckpointError(f"{source}: unsupported quantization recipe bits={bits!r}, group_size={group!r}; "
                              "expected bits 8 (no group size) or bits 4 with group size 32, 64 or 128")
    head = recipe.get("head", False)
    if not isinstance(head, bool):
        raise CheckpointError(f"{source}: the recipe's 'head' must be true or false, got {head!r}")
    return bits, group, head


def shell(model: nn.Module, bits: int, group_size: int | None, head: bool = False) -> nn.Module:
    """Replace the quantizable linears with empty QuantizedLinears of the same shapes (to load into)."""
    for name, m in quantizable(model, head).items():
        if m.in_features % (group_size or 1):
            raise CheckpointError(f"group size {group_size} does not divide the input width {m.in_features} of {name}; "
                                  "the quantized weights do not match their config")
        _swap(model, name, QuantizedLinear(m.in_features, m.out_features, bits, group_size, m.bias is not None))
    return model


def match_quantization(target: nn.Module, source: nn.Module) -> nn.Module:
    """Give `target` (the same architecture) empty QuantizedLinears wherever `source` has them, so
    that `target.load_state_dict(source.state_dict())` fits (e.g. the server's inspection model)."""
    for name, m in source.named_modules():
        if isinstance(m, QuantizedLinear):
            _swap(target, name, QuantizedLinear(m.in_features, m.out_features, m.bits, m.group_size, m.bias is not None))
    return target


def check_quantized_weights(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Every expected tensor present, nothing extra, each with its exact shape and dtype; codes and
    zero points in range; scales positive and finite; float tensors finite. CheckpointError names
    the first tensor that is wrong."""
    check_names(tensors, expected, source, "the quantized weights do not match their recipe and config")
    for name, ref in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
            raise CheckpointError(f"{source}: tensor {name!r} is {t.dtype} {tuple(t.shape)}, but the recipe and config imply "
                                  f"{ref.dtype} {tuple(ref.shape)}; the quantized weights do not match")
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or infinite values")
        if name.endswith(".scales") and not bool((t > 0).all()):
            raise CheckpointError(f"{source}: tensor {name!r} holds a scale ≤ 0; the file is corrupt")
        if t.dtype == torch.int8 and int(t.min()) < -INT8_MAX:
            raise CheckpointError(f"{source}: tensor {name!r} holds the code −128, outside int8's symmetric range −127..127")
        if name.endswith(".zeros") and int(t.max()) > INT4_LEVELS:
            raise CheckpointError(f"{source}: tensor {name!r} holds a zero point above {INT4_LEVELS}; the file is corrupt")


def load_quantized(model: nn.Module, tensors: dict[str, torch.Tensor], recipe, source: str) -> nn.Module:
    """Turn a float GPT into the quantized one `tensors` (a quantized run's weights) describe."""
    bits, group, head = check_recipe(recipe, source)
    shell(model, bits, group, head)
    expected = model.weights()
    check_quantized_weights(tensors, expected, source)
    with torch.no_grad():
        for name, t in expected.items():
            t.copy_(tensors[name])
    model.quantization = {"bits": bits, "group_size": group, "method": recipe.get("method"), "head": head}
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the tensors a checkpoint stores (a tied LM head counted once)."""
    return sum(t.numel() * t.element_size() for t in model.weights().values())
