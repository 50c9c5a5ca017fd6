"""The learning-rate schedule shared by both engines: linear warmup, then cosine decay to min_lr.

    lr(s) = lr_max · (s + 1) / warmup                                  for s < warmup
    lr(s) = min_lr + ½ (1 + cos(π · (s − warmup) / (decay − warmup))) (lr_max − min_lr)   until decay
    lr(s) = min_lr                                                     after
"""

from __future__ import annotations

import math


def learning_rate(step: int, lr_max: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    if step < warmup_steps:
        return lr_max * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr_max - min_lr)


def lr_at(step: int, train_config) -> float:
    t = train_config
    return learning_rate(step, t.learning_rate, t.min_lr, t.warmup_steps, t.decay_steps)
