"""What the efficiency lab needs from the quantizer and the distillation loss, in one place:

    quantize(model, bits, method, group_size, calibration) → (quantized copy, weight bytes)
        groundup.quantize.quantize_model on a copy: every nn.Linear in the blocks becomes a
        QuantizedLinear (int8 per output channel, symmetric; int4 per group of g input columns,
        asymmetric, two codes per byte; RTN, or GPTQ block by block on the calibration windows),
        multiplied by torch's own int8/int4 CPU kernels; the token embedding / tied LM head, norms
        and biases stay float32 (the quantizer's stated choice). Bytes: groundup.quantize.weight_bytes,
        the tensors a quantized checkpoint stores (codes, scales, zero points and the float32 rest).
    distillation_loss(teacher, kind, temperature, alpha) → loss(model, (x, y)) for train_step
        groundup.train.distill.distill_loss (Hinton et al. 2015):
        α·T²·KL(p_teacher^T ‖ p_student^T) + (1 − α)·CE  (reverse: KL(p_student^T ‖ p_teacher^T)).
    teacher_samples(teacher, prompts, length, seed) → windows the teacher wrote (sequence level,
        Kim & Rush 2016), sampled at temperature 1 for a whole batch of corpus prompts at once
        (groundup.sample.generate_batch). `groundup distill --sequence-level` draws its samples one
        sequence at a time from <|endoftext|> with groundup.sample.generate instead: batch-1
        sampling would take most of the lab's time budget.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from groundup.model import GPT
from groundup.quantize import quantize_model, weight_bytes
from groundup.quantize.model import quantizable
from groundup.sample import generate_batch
from groundup.train.distill import distill_loss

IMPLEMENTATION = {"quantize": "groundup.quantize.quantize_model (QuantizedLinear: torch's int8/int4 CPU kernels)",
                  "distill": "groundup.train.distill.distill_loss"}
METHODS = ("rtn", "gptq")
KINDS = ("forward", "reverse")

__all__ = ["IMPLEMENTATION", "METHODS", "distillation_loss", "plain_copy", "quantize", "quantized_layers", "teacher_samples",
           "weight_bytes"]


def quantized_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The matrices the quantizer replaces: every nn.Linear inside the blocks, by name."""
    return quantizable(model)


def plain_copy(model: GPT) -> GPT:
    """The same weights in a new plain GPT, without the fused CPU kernels a training engine swaps
    in: quantize_model works in place, so it gets this copy and the trained model stays as it is,
    and the float baseline every quantized copy is compared with is computed the same plain way
    (fused and plain rounding differ by ~1e-6)."""
    plain = GPT(model.config)
    plain.load_weights({k: v.detach() for k, v in model.weights().items()}, "the lab's model")
    return plain.to(model.token_embedding.weight.device).eval()


def quantize(model: GPT, bits: int, method: str, group_size: int | None = None,
             calibration: list[torch.Tensor] | None = None) -> tuple[nn.Module, int]:
    """A quantized plain copy of `model` (the original is untouched) and its weight bytes."""
    q = quantize_model(plain_copy(model), bits, group_size if bits == 4 else None, method, calibration)
    return q, weight_bytes(q)


def distillation_loss(teacher: nn.Module, kind: str = "forward", temperature: float = 2.0, alpha: float = 0.5):
    """The training step's loss(model, batch) distilling `teacher` (frozen) into the model trained."""
    if kind not in KINDS:
        raise ValueError(f"distillation kind must be one of {KINDS}, got {kind!r}")
    return distill_loss(teacher, temperature, alpha, reverse=kind == "reverse")


def teacher_samples(teacher: nn.Module, prompts: np.ndarray, length: int, seed: int) -> np.ndarray:
    """Each prompt (n, P) continued by the teacher to `length` tokens at temperature 1, the whole
    batch at once (groundup.sample.generate_batch). Returns (n, length) int64."""
    return generate_batch(teacher, torch.as_tensor(prompts), length, seed, temperature=1.0).numpy()
