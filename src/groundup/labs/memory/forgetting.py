"""3. Fine-tuning and forgetting: pretrain on domain A, fine-tune every weight on domain B, and
follow the validation loss on A and on B."""

from __future__ import annotations

import copy
import time

from groundup.labs.memory.common import Base, Settings, fine_tune, val_batches
from groundup.model.lora import trainable_parameters


def forgetting(base: Base, settings: Settings, progress: bool = True) -> dict:
    """Fine-tune every weight of a copy of the base model on domain B; follow val loss on A and B."""
    s = settings
    watch = {"A": val_batches(base, base.data_a, s.seed + 11), "B": val_batches(base, base.data_b, s.seed + 12)}
    model = copy.deepcopy(base.model)
    start = time.perf_counter()
    curve = fine_tune(model, base, base.data_b.train, watch, s.finetune_steps, s.finetune_lr, s.eval_every,
                      s.seed, desc="fine-tune (full)", progress=progress)
    return {"curve": curve, "seconds": time.perf_counter() - start, "lr": s.finetune_lr,
            "trainable_parameters": trainable_parameters(model), "model": model, "watch": watch,
            **summary(curve)}


def summary(curve: list[dict]) -> dict:
    first, last = curve[0], curve[-1]
    return {"A_before": first["A"], "A_after": last["A"], "B_before": first["B"], "B_after": last["B"],
            "A_increase": last["A"] - first["A"], "B_decrease": first["B"] - last["B"]}
