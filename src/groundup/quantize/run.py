"""Quantized runs: `groundup quantize` writes one; every loader of runs reads it through load_model.

    groundup quantize --run runs/X --bits 4 --group-size 128 --method gptq --calibration 128 --out runs/X-int4

The new run directory is an ordinary one (config.json, tokenizer.json, a verified checkpoint) whose
model.safetensors holds the packed codes, scales and zero points (formats.py) in place of the
float matrices, and whose state.json carries the recipe under "quantization": bits, method, group
size, calibration sequences and seed, the source run and the SHA-256 of its weights, what stayed
float32, and the validation loss before and after. It has no optimizer state and cannot be trained.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

from groundup.data import BatchSampler
from groundup.errors import CheckpointError, ConfigError, GroundupError
from groundup.model import GPT
from groundup.quantize.gptq import BLOCK, DAMPENING
from groundup.quantize.model import kept_float32, load_quantized, quantizable, quantize_model, weight_bytes
from groundup.train import checkpoint as ckpt
from groundup.train.engine import evaluate
from groundup.train.trainer import fixed_batches, load_data
from groundup.util.device import pick_device

MAX_CALIBRATION = 100_000


def load_model(run_dir: str | os.PathLike, device: str = "auto"):
    """(model, config, state) of a run: a float GPT, or — when state.json carries a quantization
    recipe — the GPT with its QuantizedLinears. Every problem is one CheckpointError."""
    run_dir = Path(run_dir)
    directory, state = ckpt.find_checkpoint(run_dir)
    config = ckpt.read_run_config(run_dir)
    model = GPT(config.model)
    path = directory / ckpt.WEIGHTS
    tensors = ckpt.read_tensors(path)
    if ckpt.QUANTIZATION in state:
        load_quantized(model, tensors, state[ckpt.QUANTIZATION], str(path))
    else:
        model.load_weights(tensors, str(path))
    model.to(pick_device(device))
    model.eval()
    return model, config, state


def calibration_batches(tokens, block_size: int, n: int, seed: int, batch_size: int) -> list[torch.Tensor]:
    """`n` windows of block_size tokens drawn (seeded) from the training split, in batches."""
    sampler = BatchSampler(tokens, block_size, min(batch_size, n), seed=seed, split="train")
    batches, left = [], n
    for k in range(math.ceil(n / min(batch_size, n))):
        x, _ = sampler.batch(k)
        batches.append(torch.from_numpy(x[:left]).long())
        left -= len(batches[-1])
    return batches


def check_arguments(run_dir: Path, out: Path, calibration: int) -> None:
    ckpt.check_run_dir(run_dir)
    if out.exists():
        raise GroundupError(f"--out {out} already exists; choose a new directory (nothing was overwritten)")
    if isinstance(calibration, bool) or not 1 <= calibration <= MAX_CALIBRATION:
        raise ConfigError(f"--calibration must be between 1 and {MAX_CALIBRATION:,} sequences, got {calibration}")


def quantize_run(run_dir, out, bits: int, group_size: int | None = None, method: str = "rtn",
                 calibration: int = 128, seed: int = 0, device: str = "cpu", head: bool = False, say=print) -> dict:
    """Quantize run `run_dir` into the new run directory `out`; returns the recipe written to its
    state.json (with sizes and validation losses)."""
    run_dir, out = Path(run_dir), Path(out)
    check_arguments(run_dir, out, calibration)
    model, config, state = load_model(run_dir, device)
    if ckpt.QUANTIZATION in state:
        raise GroundupError(f"{run_dir} is already quantized ({state[ckpt.QUANTIZATION].get('bits')}-bit); "
                            "quantize the float run it came from")
    source_weights = ckpt.find_checkpoint(run_dir)[0] / ckpt.WEIGHTS
    data = load_data(config)
    dev = next(model.parameters()).device
    val = fixed_batches(data.val, config, config.train.seed + 1, dev, config.train.eval_iters)  # the trainer's val batches
    before_bytes = weight_bytes(model)
    val_before = evaluate(model, val, None, dev)
    calib = (calibration_batches(data.train, config.model.block_size, calibration, seed, config.train.batch_size)
             if method == "gptq" else None)
    calib = [x.to(dev) for x in calib] if calib else None
    n_linear = len(quantizable(model, head))
    quantize_model(model, bits, group_size, method, calib, progress=say, head=head)
    val_after = evaluate(model, val, None, dev)
    recipe = {
        **model.quantization,
        "scheme": ("int8 per output channel, symmetric" if bits == 8 else
                   "int4 group-wise along the input dimension, asymmetric (scale + integer zero point), 2 per byte"),
        "quantized": (f"every nn.Linear in the blocks (attention qkv and output, feed-forward up and down)"
                      + (" and the LM head (a copy; the embedding lookups read the float32 matrix)" if head else "")
                      + f": {n_linear} matrices"),
        "kept_float32": kept_float32(head),
        "calibration": ({"sequences": calibration, "seed": seed, "split": "train", "block_size": config.model.block_size,
                         "dampening": DAMPENING, "act_order": False, "block": BLOCK} if method == "gptq" else None),
        "source": {"run": str(run_dir), "step": state.get("step"), "weights_sha256": state["files"][ckpt.WEIGHTS]},
        "weight_bytes": {"before": before_bytes, "after": weight_bytes(model)},
        "val_loss": {"before": val_before, "after": val_after, "batches": len(val)},
    }
    ckpt.save_checkpoint(out, int(state.get("step", 0)), model.weights(), {}, {ckpt.QUANTIZATION: recipe}, keep=1)
    ckpt.write_run_config(out, config)
    shutil.copyfile(run_dir / ckpt.TOKENIZER, out / ckpt.TOKENIZER)
    file_before, file_after = source_weights.stat().st_size, (out / ckpt.WEIGHTS).stat().st_size
    recipe["file_bytes"] = {"before": file_before, "after": file_after}
    delta = val_after - val_before
    name = f"int{bits}" + (f" g{recipe['group_size']}" if bits == 4 else "") + f" {method}"
    kept = "embeddings kept float32, LM head quantized" if head else "embeddings and LM head kept float32"
    say(f"quantized {run_dir} → {out} ({name}; {n_linear} linear layers, {kept})")
    say(f"weights file {file_before / 1e6:,.2f} MB → {file_after / 1e6:,.2f} MB ({file_before / file_after:.2f}× smaller)")
    say(f"validation loss {val_before:.4f} → {val_after:.4f} nats/token (Δ {delta:+.4f}; "
        f"perplexity × {math.exp(delta):.4f}, {100 * (math.exp(delta) - 1):+.2f}%) on {len(val)} fixed val batches")
    return recipe

