"""1. Frozen weights: once trained, generating text changes nothing. Hash every weight tensor
(SHA-256) before and after generating from many prompts, and look for gradients, grad mode and
optimizers during generation."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import torch

from groundup.labs.memory.common import weight_hashes
from groundup.model import GPT
from groundup.sample import SamplingSettings, generate
from groundup.tokenizer import Tokenizer
from groundup.train import checkpoint as ckpt


def frozen_weights(model: GPT, tokenizer: Tokenizer, val_tokens: np.ndarray, n_prompts: int = 20,
                   new_tokens: int = 60, seed: int = 0, weights_file: Path | None = None) -> dict:
    """Generate from `n_prompts` prompts (windows of held-out text) and check that nothing about the
    weights moved: every tensor's SHA-256, the weights file on disk, gradients, grad mode, optimizers."""
    before = weight_hashes(model)
    file_before = ckpt.sha256_bytes(weights_file.read_bytes()) if weights_file and weights_file.exists() else None
    seen_modes = set()

    def record_mode(module, inputs):
        seen_modes.add((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

    hook = model.register_forward_pre_hook(record_mode)
    rng = np.random.default_rng(seed)
    prompt_len = min(32, model.config.block_size // 2)
    samples, generated = [], 0
    try:
        for i in range(n_prompts):
            start = int(rng.integers(0, len(val_tokens) - prompt_len))
            prompt = [int(t) for t in val_tokens[start:start + prompt_len]]
            settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.8, top_k=40, seed=seed + i)
            ids = list(generate(model, prompt, settings))
            generated += len(ids)
            if i < 2:
                samples.append({"prompt": tokenizer.decode(prompt), "continuation": tokenizer.decode(ids)})
    finally:
        hook.remove()
    after = weight_hashes(model)
    params = {id(p) for p in model.parameters()}
    optimizers = [o for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer)  # type(): no proxies
                  and any(id(p) in params for group in o.param_groups for p in group["params"])]
    file_after = ckpt.sha256_bytes(weights_file.read_bytes()) if file_before else None
    return {
        "tensors": len(before),
        "parameters": model.num_params(),
        "prompts": n_prompts,
        "tokens_generated": generated,
        "changed_tensors": sorted(n for n in before if before[n] != after[n]),
        "hashes_equal": before == after,
        "weights_file_sha256_equal": (file_before == file_after) if file_before else None,
        "tensors_with_grad": sum(p.grad is not None for p in model.parameters()),
        "grad_enabled_during_generation": any(grad for grad, _ in seen_modes),
        "inference_mode_during_generation": all(inference for _, inference in seen_modes) and bool(seen_modes),
        "optimizers_holding_the_weights": len(optimizers),
        "example_hash": {k: before[k] for k in list(before)[:1]},
        "samples": samples,
    }
