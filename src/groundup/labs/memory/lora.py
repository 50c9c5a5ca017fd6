"""4. LoRA vs full fine-tuning: low-rank adapters (groundup.model.lora) train far fewer parameters;
compare them with full fine-tuning at the same number of steps: gain on B, loss on A, size."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from groundup.labs.memory.common import Base, Settings, fine_tune
from groundup.labs.memory.forgetting import summary
from groundup.model.lora import DEFAULT_TARGETS, add_lora, lora_modules, merge_lora, save_adapters, trainable_parameters, unmerge_lora


def lora_vs_full(base: Base, settings: Settings, full: dict, out: Path, progress: bool = True) -> dict:
    """LoRA on the attention and MLP projections, trained on B for as many steps as `full`."""
    s = settings
    model = copy.deepcopy(base.model)
    adapted = add_lora(model, r=s.lora_r, alpha=s.lora_alpha, targets=DEFAULT_TARGETS)
    start = time.perf_counter()
    curve = fine_tune(model, base, base.data_b.train, full["watch"], s.finetune_steps, s.lora_lr, s.eval_every,
                      s.seed, desc=f"fine-tune (LoRA r={s.lora_r})", progress=progress)
    seconds = time.perf_counter() - start

    # Merge into W + (α/r)·B·A, check it computes the same thing, then unmerge exactly.
    x, _ = full["watch"]["B"][0]
    originals = {n: m.weight.detach().clone() for n, m in lora_modules(model).items()}
    with torch.no_grad():
        unmerged = model(x)[0]
        merge_lora(model)
        merged = model(x)[0]
        unmerge_lora(model)
        restored = all(torch.equal(m.weight, originals[n]) for n, m in lora_modules(model).items())
    adapter_dir = save_adapters(model, out / "adapter", base_run=str(base.run_dir), domain=base.corpus_b)
    adapter_bytes = sum(p.stat().st_size for p in adapter_dir.iterdir() if p.is_file())
    full_bytes = len(st_save({k: v.detach().contiguous().cpu() for k, v in full["model"].weights().items()}))
    return {
        "curve": curve, "seconds": seconds, "lr": s.lora_lr, "r": s.lora_r, "alpha": s.lora_alpha,
        "adapted_matrices": len(adapted), "trainable_parameters": trainable_parameters(model),
        "full_trainable_parameters": full["trainable_parameters"], "adapter_bytes": adapter_bytes,
        "full_weights_bytes": full_bytes, "merge_max_abs_logit_difference": float((merged - unmerged).abs().max()),
        "unmerge_restores_weights_exactly": restored, "adapter_dir": str(adapter_dir), **summary(curve),
    }
