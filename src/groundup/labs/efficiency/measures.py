"""The lab's figures of merit, as formulas (pure functions: the tests feed them known cases)."""

from __future__ import annotations

import math


def delta(loss: float, base: float) -> dict:
    """Δ validation loss of a changed model against its base, in nats/token, and the perplexity ratio
    exp(L) / exp(L_base) = exp(ΔL) (1.01 = 1% higher perplexity)."""
    d = loss - base
    return {"delta_loss": d, "relative_ppl": math.exp(d)}


def gap_closed(scratch: float, distilled: float, teacher: float) -> float:
    """Share of the teacher–scratch gap a distilled student closes:

        (L_scratch − L_distilled) / (L_scratch − L_teacher)

    0 = no better than the same student trained from scratch; 1 = as good as the teacher; < 0 =
    worse than scratch. NaN when the teacher is no better than scratch (there is no gap to close)."""
    gap = scratch - teacher
    if not gap > 0:
        return math.nan
    return (scratch - distilled) / gap
