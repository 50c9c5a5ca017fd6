"""`groundup train --plan`: before training, will it fit in this device's memory, how many FLOPs,
how long (measured by a few real steps when it fits), and what it would cost on a GPU.

The arithmetic is groundup.accounting's; this module only gathers the configuration's figures,
asks the device how much memory it has, and times a few steps."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch

from groundup.accounting import (DEFAULT_GPU, DEFAULT_MFU, DEFAULT_PRICE, DEFAULT_PUE, USABLE_MEMORY, project,
                                 training_flops, training_memory)
from groundup.data import load_corpus
from groundup.hardware import PRESETS, preset_for_device_name
from groundup.model import GPT
from groundup.report.format import human_bytes, human_money, human_time
from groundup.tokenizer import load_tokenizer
from groundup.train.engine import build_engine
from groundup.train.step import train_step
from groundup.util.device import pick_device


def device_memory_bytes(device) -> tuple[float, str]:
    """Memory a run on `device` can use: the GPU's total, or the RAM the OS reports available."""
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
        text = load_corpus(d.corpus, errors=d.errors).text
        return len(set(text)), "distinct characters in the corpus"

    return load_tokenizer(d.tokenizer, pattern=d.pattern).vocab_size, "the tokenizer file"


def _training_step(config, device):
    """One full training step of `config`'s model on random tokens (the engine `groundup train`
    builds, through the one training step), as a function of no arguments."""
    t, m = config.train, config.model
    engine = build_engine(config, device)
    x = torch.randint(0, m.vocab_size, (t.batch_size, m.block_size), device=device)

    def step():
        train_step(engine, [(x, x)] * t.grad_accum_steps, lr=t.learning_rate, grad_clip=t.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def probe_speed(config, device, steps: int = 5, max_seconds: float = 20.0) -> float:
    """Tokens/s of real training steps (forward, backward, AdamW) on random tokens, after one
    warm-up step; stops early after `max_seconds`."""
    t, m = config.train, config.model
    if t.threads:
        torch.set_num_threads(t.threads)
    step = _training_step(config, device)
    step()  # warm-up: allocations, kernel selection
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.perf_counter() - start < max_seconds):
        step()
        done += 1
    return done * t.batch_size * m.block_size * t.grad_accum_steps / (time.perf_counter() - start)


def plan_training(config, probe: bool = True, out=None) -> dict:
    """Print (and return) whether `config` fits this device, its FLOPs and its projected time."""
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
    memory = training_memory(n, m.n_layer, m.n_embd, m.n_head, m.block_size, t.batch_size, vocab,
                             fused_attention=m.attention == "sdpa", mixed_precision=False,
                             activation_bytes_per_value=2 if mixed else 4)
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
